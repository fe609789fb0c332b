/**
 * The gateway's routes, saved in `<stateDir>/routes.json` so weights, candidates and generations survive
 * a restart. Every save is atomic and durable before the admin call that made it is answered: the JSON is
 * written to a temporary file (created exclusively under a random name, activities/atomic-file.ts),
 * fsynced, renamed over routes.json and the directory fsynced, so a reader
 * (or a restart after a crash) sees the old routes or the new ones, never a mix.
 *
 * Routes hold model digests, salts and weights only: no caller identifier.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { CohortRoute } from './api';
import { writeFileAtomic } from '../activities/atomic-file';
import { formatIssues } from '../policies/schema';

export const ROUTES_FILE = 'routes.json';

const RoutesFile = z
  .object({
    apiVersion: z.literal('fleetgate/v1'),
    kind: z.literal('GatewayRoutes'),
    routes: z.record(z.string(), CohortRoute),
  })
  .strict();

export class RoutesStore {
  readonly file: string;
  /** Saves run one after another, in call order. */
  private chain: Promise<void> = Promise.resolve();

  constructor(readonly stateDir: string) {
    this.file = join(stateDir, ROUTES_FILE);
  }

  /** The saved routes, or undefined when none were saved; throws, naming the file, on a damaged one. */
  load(): Record<string, CohortRoute> | undefined {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new Error(
        `${this.file} is not JSON (${(err as Error).message}); restore it or remove it to start from the config's routes`,
        { cause: err },
      );
    }
    const parsed = RoutesFile.safeParse(raw);
    if (!parsed.success) {
      throw new Error(
        `${this.file} is not a saved routes file:\n${formatIssues(parsed.error, raw)}\n` +
          "restore it or remove it to start from the config's routes",
      );
    }
    return parsed.data.routes;
  }

  /** Writes the routes atomically and durably; resolves once they are on disk. */
  save(routes: Record<string, CohortRoute>): Promise<void> {
    const body =
      JSON.stringify({ apiVersion: 'fleetgate/v1', kind: 'GatewayRoutes', routes }, null, 2) + '\n';
    const next = this.chain.then(() => this.write(body));
    this.chain = next.catch(() => undefined);
    return next;
  }

  private async write(body: string): Promise<void> {
    mkdirSync(this.stateDir, { recursive: true });
    await writeFileAtomic(this.file, body, { mode: 0o600 });
  }
}
