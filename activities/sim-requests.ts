/**
 * Window requests for the simulated fleet in a process of its own (FLEETGATE_TELEMETRY=simulator, read
 * by `fleetgate fleet simulate`): before a batch waits for the fleet's watermarks, the feed publishes to
 * the object store one JSON object per window,
 *
 *   sim-requests/<fleet>/<rolloutId>/<phase>/<fromMs>-<toMs>.json
 *
 * holding what a real vehicle knows by itself and the simulated one must be told: the window (the
 * parsed fleet manifest, the rollout, phase, cohorts, times, candidate digest, versions, shadow share and
 * upload filter) and, per cohort, its units (the OTA channel's pseudonyms) with the model each runs now,
 * and in shadow which of them run the candidate beside production (keyed by the pseudonym key here, so
 * the process needs no key). The process sends the window's records to the ingestion endpoint (or writes
 * them as files into the landing zone) and then writes `<fromMs>-<toMs>.sent.json` beside the request:
 * a batch stops waiting when that receipt is there and every landing file it names has been read by the
 * worker (a row of `landing_files`, events/landing.ts), or when FLEETGATE_WATERMARK_WAIT has passed. The
 * watermarks alone never end the wait: they are kept per fleet and cohort and never go back, so a
 * time-scaled rollout leaves them ahead of a later rollout's windows (and the landing zone carries
 * none). Label requests go to the labelers as files (activities/label-queue.ts), as for a real fleet.
 *
 * Only the simulated fleet reads these objects. Writing is idempotent (write-once keys; a retried batch
 * keeps the request first written). It must never write a raw vehicle id or the pseudonym key, and never
 * decide anything: the batch reads only what arrived through ingestion.
 */
import { z } from 'zod';
import type { DuckDBConnection } from '@duckdb/node-api';
import { ApplicationFailure } from '@temporalio/common';
import { ErrorType } from '../errors';
import { shadowTargets } from '../fleet/assignment';
import { FleetManifest } from '../policies/schema';
import { exclusive, rows } from './db';
import type { LabelRequestOut, ObjectStore, OtaChannel, TelemetryFeed, TelemetryWindow } from './deps';
import { progress } from './heartbeat';
import { StoreLabelQueue } from './label-queue';
import { LANDING_TABLE } from '../events/landing';

/** The prefix of every window request. */
export const SIM_REQUEST_PREFIX = 'sim-requests/';
/** The version of the request objects. */
export const SIM_REQUEST_SCHEMA = 'fleetgate/sim-window/v1';
/** How often a batch looks at the receipt and the landing files it names while it waits. */
const WAIT_POLL_MS = 250;

/** The key of a window's request. */
export function windowRequestKey(
  w: Pick<TelemetryWindow, 'rolloutId' | 'phase' | 'fromMs' | 'toMs'> & { fleet: string },
): string {
  return `${SIM_REQUEST_PREFIX}${w.fleet}/${w.rolloutId}/${w.phase}/${w.fromMs}-${w.toMs}.json`;
}

/** Whether a key of the prefix is a window request (not a receipt). */
export function isWindowRequestKey(key: string): boolean {
  return key.startsWith(SIM_REQUEST_PREFIX) && /\/\d+-\d+\.json$/.test(key);
}

/** The key of the receipt the simulated fleet writes once it sent a window's records. */
export function receiptKey(requestKey: string): string {
  return requestKey.replace(/\.json$/, '.sent.json');
}

/**
 * A window's receipt: the request it answers and, when the records went into the landing zone, the keys
 * of the files written (as the worker's landing-zone reader records them).
 */
export const WindowReceipt = z
  .object({ request: z.string().optional(), files: z.array(z.string().min(1)).optional() })
  .passthrough();
export type WindowReceipt = z.infer<typeof WindowReceipt>;

/** The landing files a receipt names, or none (sent over HTTP, or a receipt of another shape). */
export function receiptFiles(bytes: Buffer): string[] {
  try {
    const r = WindowReceipt.safeParse(JSON.parse(bytes.toString('utf8')));
    return r.success ? (r.data.files ?? []) : [];
  } catch {
    return [];
  }
}

/** Of `keys`, those the worker's landing-zone reader has not recorded yet (all while it has no table). */
export async function landingFilesUnread(conn: DuckDBConnection, keys: readonly string[]): Promise<string[]> {
  if (keys.length === 0) return [];
  let read: Set<string>;
  try {
    const found = await exclusive(conn, () =>
      rows(conn, `SELECT key FROM ${LANDING_TABLE} WHERE key IN (${keys.map(() => '?').join(', ')})`, [
        ...keys,
      ]),
    );
    read = new Set(found.map((r) => String(r.key)));
  } catch (err) {
    // No landing-zone reader has opened this database yet: nothing is read.
    if (/does not exist/i.test(String((err as Error)?.message))) return [...keys];
    throw err;
  }
  return keys.filter((k) => !read.has(k));
}

const Digest = z.string().regex(/^[0-9a-f]{64}$/, 'a sha256 digest: 64 lowercase hex digits');

/** A cohort's units in a window request: `model[i]` indexes `models` for unit i; `shadow` indexes units. */
const RequestCohort = z
  .object({
    name: z.string().min(1),
    units: z.array(z.string().min(1)),
    models: z.array(Digest),
    model: z.array(z.number().int().min(0)),
    shadow: z.array(z.number().int().min(0)).optional(),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.model.length !== c.units.length) {
      ctx.addIssue({ code: 'custom', path: ['model'], message: 'one model index per unit' });
    }
    if (c.model.some((m) => m >= c.models.length)) {
      ctx.addIssue({ code: 'custom', path: ['model'], message: 'a model index beyond models' });
    }
    if ((c.shadow ?? []).some((s) => s >= c.units.length)) {
      ctx.addIssue({ code: 'custom', path: ['shadow'], message: 'a shadow index beyond units' });
    }
  });

export const WindowRequest = z
  .object({
    schema: z.literal(SIM_REQUEST_SCHEMA),
    rolloutId: z.string().min(1),
    phase: z.enum(['shadow', 'canary']),
    manifest: FleetManifest,
    cohorts: z.array(RequestCohort).min(1),
    fromMs: z.number().int(),
    toMs: z.number().int(),
    startMs: z.number().int(),
    candidateDigest: Digest,
    versions: z.record(z.string(), z.string()).optional(),
    share: z.number().gt(0).max(1).optional(),
    edge: z
      .object({
        sample: z.number(),
        lowConfidence: z.number(),
        perVehiclePerDay: z.number().optional(),
      })
      .strict()
      .optional(),
  })
  .strict()
  .superRefine((r, ctx) => {
    const names = new Set(r.manifest.cohorts.map((c) => c.name));
    r.cohorts.forEach((c, i) => {
      if (!names.has(c.name)) {
        ctx.addIssue({
          code: 'custom',
          path: ['cohorts', i, 'name'],
          message: 'not a cohort of the manifest',
        });
      }
      if (r.phase === 'shadow' && c.shadow === undefined) {
        ctx.addIssue({
          code: 'custom',
          path: ['cohorts', i, 'shadow'],
          message: 'a shadow window names its units',
        });
      }
    });
    if (!(r.toMs > r.fromMs)) ctx.addIssue({ code: 'custom', path: ['toMs'], message: 'after fromMs' });
  });
export type WindowRequest = z.infer<typeof WindowRequest>;

/**
 * A window's request: the window, and per cohort its units with the model each runs and, in shadow, the
 * units running the candidate (in the order `shadowTargets` gives them, which the simulation draws over).
 */
export function windowRequestOf(
  w: TelemetryWindow,
  inventories: ReadonlyMap<string, { vehicles: string[]; digests: string[] }>,
  key: Buffer,
): WindowRequest {
  return {
    schema: SIM_REQUEST_SCHEMA,
    rolloutId: w.rolloutId,
    phase: w.phase,
    manifest: w.manifest,
    cohorts: w.cohorts.map((c) => {
      const inv = inventories.get(c.name) ?? { vehicles: [], digests: [] };
      const models = [...new Set(inv.digests)];
      const index = new Map(models.map((d, i) => [d, i]));
      const position = new Map(inv.vehicles.map((v, i) => [v, i]));
      return {
        name: c.name,
        units: inv.vehicles,
        models,
        model: inv.digests.map((d) => index.get(d)!),
        ...(w.phase === 'shadow'
          ? {
              shadow: shadowTargets(inv.vehicles, key, w.rolloutId, w.share ?? 1).map((u) =>
                position.get(u)!,
              ),
            }
          : {}),
      };
    }),
    fromMs: w.fromMs,
    toMs: w.toMs,
    startMs: w.startMs,
    candidateDigest: w.candidateDigest,
    ...(w.versions ? { versions: w.versions } : {}),
    ...(w.share !== undefined ? { share: w.share } : {}),
    ...(w.edge ? { edge: w.edge } : {}),
  };
}

export interface SimulatorFeedDeps {
  store: ObjectStore;
  /** The fleet database: the OTA channel's units and the ingested watermarks. */
  conn: DuckDBConnection;
  ota: OtaChannel;
  /** The pseudonym key: which units run a shadow is keyed by it (fleet/assignment.ts). */
  key: Buffer;
  /** How long a batch waits for the watermarks or the receipt (FLEETGATE_WATERMARK_WAIT). */
  watermarkWaitMs: number;
}

/** The feed of FLEETGATE_TELEMETRY=simulator: window requests out, then the wait; label requests as files. */
export class SimulatorFeed implements TelemetryFeed {
  private readonly labels: StoreLabelQueue;

  constructor(private readonly deps: SimulatorFeedDeps) {
    this.labels = new StoreLabelQueue(deps.store);
  }

  /**
   * Publishes the window's request, then waits until the simulated fleet's receipt of the window is
   * there and the worker has read every landing file it names, or the wait ran out; the batch then
   * reads what is there (what comes later is counted, late, in the next one).
   */
  async produce(w: TelemetryWindow): Promise<void> {
    const { store, conn, ota, key } = this.deps;
    const fleet = w.manifest.name;
    const inventories = new Map<string, { vehicles: string[]; digests: string[] }>();
    await exclusive(conn, async () => {
      for (const c of w.cohorts) inventories.set(c.name, await ota.inventory(fleet, c.name));
    });
    const requestKey = windowRequestKey({ ...w, fleet });
    const body = Buffer.from(JSON.stringify(windowRequestOf(w, inventories, key)));
    try {
      await store.putIfAbsent(requestKey, body);
    } catch (err) {
      // A retried batch after a wave moved units: the request first written stands (it may be sent).
      if (!(err instanceof ApplicationFailure && err.type === ErrorType.ImmutableConflict)) throw err;
    }
    const deadline = Date.now() + this.deps.watermarkWaitMs;
    for (;;) {
      const receipt = await store.get(receiptKey(requestKey));
      let step = "waiting for the simulated fleet's receipt of the window";
      if (receipt !== undefined) {
        const files = receiptFiles(receipt);
        const unread = await landingFilesUnread(conn, files);
        if (unread.length === 0) return;
        step = `waiting for the worker to read ${unread.length} of the window's ${files.length} landing-zone file(s)`;
      }
      if (Date.now() >= deadline) return;
      progress({ step, toMs: w.toMs });
      await new Promise((r) => setTimeout(r, Math.min(WAIT_POLL_MS, Math.max(0, deadline - Date.now()))));
    }
  }

  requestLabels(fleet: string, requests: readonly LabelRequestOut[]): Promise<void> {
    return this.labels.requestLabels(fleet, requests);
  }
}
