/**
 * Writes the report of a finished rollout to `<data dir>/reports/<rolloutId>.json`.
 *
 * The report holds the decision per cohort, the statistics and boundaries of every look and the whole
 * decision log. Written atomically (temp file, then rename), so a reader never sees half a report and a
 * retried activity writes the same file again. Never holds a raw vehicle identifier.
 */
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ReportInput } from './contracts';

export function reportPath(dataDir: string, rolloutId: string): string {
  return join(dataDir, 'reports', `${rolloutId}.json`);
}

export function createReportActivities({ dataDir }: { dataDir: string }) {
  return {
    async writeReport(input: ReportInput): Promise<{ path: string }> {
      const path = reportPath(dataDir, input.rolloutId);
      await mkdir(join(dataDir, 'reports'), { recursive: true });
      const tmp = `${path}.${process.pid}.tmp`;
      await writeFile(tmp, JSON.stringify(input.report, null, 2) + '\n');
      await rename(tmp, path);
      return { path };
    },
  };
}
