/**
 * The gateway's routes, saved in `<stateDir>/routes.json` so weights, candidates and generations survive
 * a restart. Every save is atomic and durable before the admin call that made it is answered: the JSON is
 * written to a temporary file (created exclusively under a random name, activities/atomic-file.ts),
 * fsynced, renamed over routes.json and the directory fsynced, so a reader
 * (or a restart after a crash) sees the old routes or the new ones, never a mix.
 *
 * Routes hold model digests, salts and weights only: no caller identifier.
 *
 * Cohort names are keys that a request once named, so they are kept in a `Map` and never looked up on a
 * plain object (where `constructor` or `__proto__` would answer with what every object inherits). A
 * loaded entry whose name is not a cohort name, or whose route is damaged for a cohort this gateway
 * does not serve, is dropped and reported (`onDrop`), never a reason to refuse to start: it must never
 * be possible for a request to leave a file behind that stops the next start.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { COHORT, CohortRoute } from './api';
import { writeFileAtomic } from '../activities/atomic-file';
import { formatIssues } from '../policies/schema';

export const ROUTES_FILE = 'routes.json';

/** The file's envelope; each route is checked on its own (see `load`). */
const RoutesFile = z
  .object({
    apiVersion: z.literal('fleetgate/v1'),
    kind: z.literal('GatewayRoutes'),
    routes: z.record(z.string(), z.unknown()),
  })
  .strict();

/** A saved entry that `load` left out, and why (one line, with what to do). */
export interface DroppedRoute {
  /** The entry's name as it stands in the file, shortened (a name is never a caller's id). */
  cohort: string;
  message: string;
}

export interface LoadOptions {
  /**
   * Whether this gateway serves a cohort. A damaged route of a served cohort refuses the load (it is
   * named, never silently replaced); one of a cohort not served is dropped. Default: every cohort served.
   */
  serves?: (cohort: string) => boolean;
  /** Told of every entry left out. */
  onDrop?: (dropped: DroppedRoute) => void;
}

/** A name as a message shows it: JSON, cut to 64 characters. */
export function shownName(name: string): string {
  const s = JSON.stringify(name);
  return s.length <= 64 ? s : `${s.slice(0, 60)}..."`;
}

export class RoutesStore {
  readonly file: string;
  /** Saves run one after another, in call order. */
  private chain: Promise<void> = Promise.resolve();

  constructor(readonly stateDir: string) {
    this.file = join(stateDir, ROUTES_FILE);
  }

  /**
   * The saved routes by cohort, or undefined when none were saved; throws, naming the file, on a damaged
   * file or a damaged route of a served cohort. Entries whose name is not a cohort name (`__proto__`,
   * `toString`, ...) and damaged routes of cohorts not served are left out and told to `onDrop`.
   */
  load(opts: LoadOptions = {}): Map<string, CohortRoute> | undefined {
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
    // The names as JSON.parse made them (own keys; zod's record would skip a "__proto__" unseen).
    const entries = (raw as { routes: Record<string, unknown> }).routes;
    const serves = opts.serves ?? (() => true);
    const out = new Map<string, CohortRoute>();
    const drop = (cohort: string, why: string) =>
      opts.onDrop?.({
        cohort: cohort.length <= 64 ? cohort : `${cohort.slice(0, 61)}...`,
        message:
          `${this.file}: the route saved as ${shownName(cohort)} ${why}; it is left out and goes at the ` +
          'next route change (edit the file to keep it)',
      });
    for (const name of Object.keys(entries)) {
      if (!COHORT.test(name)) {
        drop(name, 'is not a cohort name (lowercase letters, digits and "-")');
        continue;
      }
      const value = entries[name]; // an own key of the parsed JSON
      const route = CohortRoute.safeParse(value);
      if (route.success) {
        out.set(name, route.data);
        continue;
      }
      if (serves(name)) {
        throw new Error(
          `${this.file} is not a saved routes file:\n${formatIssues(route.error, value, `routes.${name}`)}\n` +
            "restore it or remove it to start from the config's routes",
        );
      }
      drop(name, `is damaged (${route.error.issues.length} problem(s)) and its cohort is not served`);
    }
    return out;
  }

  /** Writes the routes atomically and durably; resolves once they are on disk. */
  save(routes: ReadonlyMap<string, CohortRoute>): Promise<void> {
    const body =
      JSON.stringify(
        { apiVersion: 'fleetgate/v1', kind: 'GatewayRoutes', routes: Object.fromEntries(routes) },
        null,
        2,
      ) + '\n';
    const next = this.chain.then(() => this.write(body));
    this.chain = next.catch(() => undefined);
    return next;
  }

  private async write(body: string): Promise<void> {
    mkdirSync(this.stateDir, { recursive: true });
    await writeFileAtomic(this.file, body, { mode: 0o600 });
  }
}
