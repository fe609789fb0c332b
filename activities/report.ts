/**
 * Writes the report of a finished rollout to `<data dir>/reports/<rolloutId>.json`, and beside it
 * `<rolloutId>.html`, the same report as one self-contained page (activities/report-html.ts).
 *
 * The report holds the decision per cohort, the statistics and boundaries of every look and the whole
 * decision log. Each file is written atomically (activities/atomic-file.ts: an exclusive temp file under
 * a random name, then a rename; never through a link), so a reader never sees half a report and a
 * retried activity writes the same files again. The JSON is the record: it is written
 * first, and a page that cannot be rendered never fails the activity. Never holds a raw vehicle
 * identifier.
 */
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { writeFileAtomic as writeAtomic } from './atomic-file';
import type { ReportInput } from './contracts';
import { renderReportHtml } from './report-html';

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

export function createReportActivities({ dataDir }: { dataDir: string }) {
  return {
    async writeReport(input: ReportInput): Promise<{ path: string; htmlPath?: string }> {
      const path = reportPath(dataDir, input.rolloutId);
      await writeFileAtomic(path, JSON.stringify(input.report, null, 2) + '\n');
      let html: string;
      try {
        html = renderReportHtml(input.report);
      } catch {
        return { path };
      }
      const htmlPath = reportHtmlPath(dataDir, input.rolloutId);
      await writeFileAtomic(htmlPath, html);
      return { path, htmlPath };
    },
  };
}
