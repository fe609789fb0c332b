/**
 * Label requests handed to labelers through the object store, for a fleet whose labels come back through
 * ingestion (FLEETGATE_TELEMETRY=ingested): each batch's requests are one NDJSON file,
 * `label-requests/<fleet>/<yyyy>/<MM>/<dd>/<HH>/<digest>.ndjson` (the UTC hour of the batch's first
 * request; the digest of the file's bytes), one line per event to label:
 *
 *   {"schema":"fleetgate/v1","eventId":"...","requestedAt":1767225600000,"reason":"sample"}
 *
 * A labeler (a labeling vendor's job, a review tool) lists the prefix, labels the events and sends each
 * label to `POST /v1/labels/{fleet}` or the landing zone (docs/events.md). Writing is idempotent: the same
 * requests make the same file, written once. It must never write a record's contents beyond the event id
 * the fleet itself chose, and never a raw unit id (requests carry none).
 */
import { createHash } from 'node:crypto';
import { SCHEMA_VERSION } from '../events/contract';
import type { LabelRequestOut, ObjectStore } from './deps';

/** The prefix of the request files of a fleet. */
export function labelRequestPrefix(fleet: string): string {
  return `label-requests/${fleet}/`;
}

/** The label requests as files in the object store. */
export class StoreLabelQueue {
  constructor(private readonly store: ObjectStore) {}

  async requestLabels(fleet: string, requests: readonly LabelRequestOut[]): Promise<void> {
    if (requests.length === 0) return;
    const body = Buffer.from(
      requests
        .map((r) =>
          JSON.stringify({
            schema: SCHEMA_VERSION,
            eventId: r.eventId,
            requestedAt: r.requestedAtMs,
            ...(r.reason ? { reason: r.reason } : {}),
          }),
        )
        .join('\n') + '\n',
    );
    // A loop, not Math.min(...): a batch may ask for more labels than a call takes arguments.
    let first = Infinity;
    for (const r of requests) first = Math.min(first, r.requestedAtMs);
    const hour = new Date(first).toISOString();
    const path = `${hour.slice(0, 4)}/${hour.slice(5, 7)}/${hour.slice(8, 10)}/${hour.slice(11, 13)}`;
    const digest = createHash('sha256').update(body).digest('hex').slice(0, 32);
    await this.store.putIfAbsent(`${labelRequestPrefix(fleet)}${path}/${digest}.ndjson`, body);
  }
}
