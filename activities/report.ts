/**
 * Writes the report of a finished rollout to `<data dir>/reports/<rolloutId>.json`, and beside it
 * `<rolloutId>.html`, the same report as one self-contained page (activities/report-html.ts); and, when
 * given the object store, the same bytes under `reports/<rolloutId>.json` and `reports/<rolloutId>.html`
 * of the store, where the CLI's read commands find them from any machine (cli/report.ts).
 *
 * The report holds the decision per cohort, the statistics and boundaries of every look and the whole
 * decision log. Each file is written atomically (activities/atomic-file.ts: an exclusive temp file under
 * a random name, then a rename; never through a link), so a reader never sees half a report and a
 * retried activity writes the same files again. The JSON is the record: it is written
 * first, and a page that cannot be rendered never fails the activity. In the store a key that already
 * holds the same bytes is left alone (a retry writes nothing new) and other bytes (a later run under the
 * same id) are replaced by compare-and-swap, as the local file is. A store that cannot be written fails
 * the attempt, so Temporal retries it; on the last attempt of the retry policy the local files stand
 * alone and the result says the store was not written, rather than failing a rollout that has ended.
 * Never holds a raw vehicle identifier.
 */
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Context } from '@temporalio/activity';
import { writeFileAtomic as writeAtomic } from './atomic-file';
import type { ReportInput } from './contracts';
import type { ObjectStore } from './deps';
import { renderReportHtml } from './report-html';
import { sha256 } from './store';
import { ErrorType } from '../errors';

/** Where the store keeps reports: `reports/<rolloutId>.json` (the record) and `.html` (its page). */
export const REPORTS_PREFIX = 'reports/';

/** The store key of a rollout's report JSON. */
export function reportKey(rolloutId: string): string {
  return `${REPORTS_PREFIX}${rolloutId}.json`;
}

/** The store key of a rollout's report page. */
export function reportHtmlKey(rolloutId: string): string {
  return `${REPORTS_PREFIX}${rolloutId}.html`;
}

export function reportPath(dataDir: string, rolloutId: string): string {
  return join(dataDir, 'reports', `${rolloutId}.json`);
}

/** The HTML page beside a report. */
export function reportHtmlPath(dataDir: string, rolloutId: string): string {
  return join(dataDir, 'reports', `${rolloutId}.html`);
}

/** Writes `text` to `path` atomically (activities/atomic-file.ts), creating its directory. */
export async function writeFileAtomic(path: string, text: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await writeAtomic(path, text);
}

/**
 * Puts `body` at `key`: nothing when the key holds these bytes already, else a compare-and-swap from
 * what is there (absent or an earlier run's report). A swap that loses to a concurrent writer is read
 * again once.
 */
export async function putReport(store: ObjectStore, key: string, body: Buffer): Promise<void> {
  const wanted = sha256(body);
  for (let round = 0; ; round++) {
    const current = await store.etag(key);
    if (current === wanted) return;
    try {
      await store.compareAndSwap(key, current, body);
      return;
    } catch (err) {
      if (round > 0 || (err as { type?: string }).type !== ErrorType.PointerConflict) throw err;
    }
  }
}

/** True inside the last attempt the activity's retry policy allows (false outside an activity). */
function lastAttempt(): boolean {
  let info;
  try {
    info = Context.current().info;
  } catch {
    return false;
  }
  const max = info.retryPolicy?.maximumAttempts;
  return typeof max === 'number' && max > 0 && info.attempt >= max;
}

export interface ReportDeps {
  dataDir: string;
  /** The object store that also keeps every report (reports/<rolloutId>.json|.html); none: local only. */
  store?: ObjectStore;
}

export interface WrittenReport {
  path: string;
  htmlPath?: string;
  /** The store key of the JSON when the store holds the report. */
  storeKey?: string;
  /** Why the store does not hold it (the last attempt could not write it); the local files do. */
  storeError?: string;
}

export function createReportActivities({ dataDir, store }: ReportDeps) {
  return {
    async writeReport(input: ReportInput): Promise<WrittenReport> {
      const path = reportPath(dataDir, input.rolloutId);
      const json = JSON.stringify(input.report, null, 2) + '\n';
      await writeFileAtomic(path, json);
      let html: string | undefined;
      try {
        html = renderReportHtml(input.report);
      } catch {
        html = undefined;
      }
      const htmlPath = html === undefined ? undefined : reportHtmlPath(dataDir, input.rolloutId);
      if (html !== undefined) await writeFileAtomic(htmlPath!, html);
      const written: WrittenReport = { path, ...(htmlPath ? { htmlPath } : {}) };
      if (!store) return written;
      const key = reportKey(input.rolloutId);
      try {
        await putReport(store, key, Buffer.from(json));
        if (html !== undefined) await putReport(store, reportHtmlKey(input.rolloutId), Buffer.from(html));
      } catch (err) {
        if (!lastAttempt()) throw err;
        const why = (err as Error).message ?? String(err);
        Context.current().log.warn(
          `report of ${input.rolloutId} written to ${path} only: the object store refused it on the last attempt (${why})`,
        );
        return { ...written, storeError: why };
      }
      return { ...written, storeKey: key };
    },
  };
}
