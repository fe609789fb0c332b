/**
 * `fleetgate drift`: scheduled drift checks of the production models' input features, as Temporal
 * Schedules that start driftCheckWorkflow (workflows/drift.ts).
 *
 *   drift schedule --every 1h [--policy F] [--fleet M] [--id ID] [--cohorts a,b]   create or update
 *   drift list                                                                      the schedules
 *   drift check | drift run --now [same flags]                                      one check, now
 *   drift show ID [--limit N] [--json]                                              recent results
 *   drift delete ID
 *
 * A client only: the request is validated here with the workflow's own zod schema before anything is
 * sent; results are read from the object store the workers write them to, and their strings are escaped
 * (cli/terminal.ts) before they are printed. It must never print a vehicle identifier (there is none in
 * a drift result) or a secret.
 */
import { basename, extname } from 'node:path';
import { parseArgs } from 'node:util';
import {
  type Client,
  ScheduleAlreadyRunning,
  ScheduleNotFoundError,
  ScheduleOverlapPolicy,
  type ScheduleOptions,
} from '@temporalio/client';
import { parseDuration } from '../policies/duration';
import { DriftCheckRequest, DriftPolicy, type DriftCheckRequestInput } from '../policies/drift-schema';
import { Policy, formatIssues } from '../policies/schema';
import { fmt } from '../policies/drift';
import type { DriftCheckOutcome } from '../workflows/drift';
import type { DriftCheckResult } from '../activities/drift';
import type * as DriftActivitiesModule from '../activities/drift';
import { loadConfig, loadStoreConfig, openObjectStore } from '../workers/config';
import { CliError, connect, DEFAULT_FLEET, readPolicyFile, timestamp, UsageError } from './main';
import { safeStrings } from './terminal';

export const DRIFT_WORKFLOW_TYPE = 'driftCheckWorkflow';
/** Shortest interval between checks: a check draws thousands of frames per cohort. */
export const MIN_EVERY_MS = 60_000;

export const DRIFT_HELP = `Usage: fleetgate drift <schedule|list|check|run --now|show|delete> [options]

Drift checks compare, per cohort and feature, the inputs production sees now with the reference stored
when production was registered (PSI, Kolmogorov-Smirnov, Jensen-Shannon); see docs/operations.md.

  drift schedule --every DURATION [options]   create or update the Temporal Schedule of the checks
  drift list                                  the drift schedules: interval, next check, last checks
  drift check [options]                       one check now, waiting for it; prints the table
  drift run --now [options]                   the same
  drift show ID [--limit N] [--json]          recent results of schedule ID (from the object store)
  drift delete ID                             delete schedule ID (its results are kept)

Options of schedule, check and run:
  --every DURATION     interval between checks, e.g. 1h, 30m (schedule only; at least 1m)
  --policy FILE        a rollout policy whose "drift" section (and "cohorts") the checks use;
                       the drift defaults when absent
  --fleet MANIFEST     fleet manifest, as the worker sees it (default ${DEFAULT_FLEET})
  --id ID              schedule id (default drift-<manifest file name>); results are kept under it
  --cohorts a,b        cohorts to check (default: the policy's, else all of the fleet)
  --time-scale N       simulated fleet time per real second (default 1)
Exit code of check: 0 when no cohort drifted, 1 when one did, 2 on invalid input.`;

export interface DriftFlags {
  policy?: string;
  fleet?: string;
  id?: string;
  cohorts?: string;
  timeScale?: string;
}

/** The schedule id of these flags. */
export function scheduleIdOf(flags: DriftFlags): string {
  if (flags.id) return flags.id;
  const fleet = flags.fleet ?? DEFAULT_FLEET;
  return `drift-${basename(fleet, extname(fleet)).replace(/[^A-Za-z0-9._-]/g, '-')}`;
}

/** The workflow's input for these flags, validated with its own schema; problems name flag and value. */
export function driftRequest(flags: DriftFlags): DriftCheckRequestInput {
  let drift: unknown = {};
  let policyCohorts: string[] | undefined;
  if (flags.policy) {
    const read = readPolicyFile(flags.policy);
    if (!read.ok) throw new CliError(`invalid policy ${flags.policy}: ${read.problems.join('; ')}`, 2);
    const parsed = Policy.safeParse(read.policy);
    if (!parsed.success) {
      throw new CliError(
        `invalid policy ${flags.policy}:\n${formatIssues(parsed.error, read.policy, 'policy')
          .split('\n')
          .map((l) => `  ${l}`)
          .join('\n')}`,
        2,
      );
    }
    drift = (read.policy as { drift?: unknown }).drift ?? {};
    policyCohorts = parsed.data.cohorts;
  }
  let timeScale: number | undefined;
  if (flags.timeScale !== undefined) {
    timeScale = Number(flags.timeScale);
    if (!(Number.isFinite(timeScale) && timeScale > 0)) {
      throw new UsageError(`--time-scale must be a positive number (got "${flags.timeScale}")`);
    }
  }
  const cohorts =
    flags.cohorts !== undefined
      ? flags.cohorts
          .split(',')
          .map((c) => c.trim())
          .filter((c) => c !== '')
      : policyCohorts;
  if (cohorts !== undefined && cohorts.length === 0) {
    throw new UsageError(
      `--cohorts needs at least one cohort name, e.g. --cohorts hw3/eu,hw4/us (got "${flags.cohorts}")`,
    );
  }
  const raw = {
    scheduleId: scheduleIdOf(flags),
    fleet: { manifest: flags.fleet ?? DEFAULT_FLEET, ...(timeScale !== undefined ? { timeScale } : {}) },
    ...(cohorts ? { cohorts } : {}),
    policy: drift,
  };
  const parsed = DriftCheckRequest.safeParse(raw);
  if (!parsed.success) {
    const lines = formatIssues(parsed.error, raw)
      .split('\n')
      .map((l) => `  ${l.replace(/^scheduleId:/, '--id:').replace(/^policy\./, 'policy.drift.')}`);
    throw new CliError(`invalid drift check:\n${lines.join('\n')}`, 2);
  }
  // The input as given (defaults are the workflow's to apply), validated.
  return raw as DriftCheckRequestInput;
}

/** Parses "--every" into milliseconds; at least MIN_EVERY_MS. */
export function everyMs(every: string | undefined): number {
  if (every === undefined) throw new UsageError('"drift schedule" needs --every, e.g. --every 1h');
  const ms = parseDuration(every);
  if (ms === undefined || ms < MIN_EVERY_MS) {
    throw new UsageError(`--every must be a duration of at least 1m such as "30m" or "1h" (got "${every}")`);
  }
  return ms;
}

/**
 * The schedule of the checks. Overlap SKIP: a check still running when the next is due makes that one
 * skip (two checks of one schedule never run at once, and a slow check never queues a backlog). Catch-up
 * window of one interval: after an outage only the latest missed check runs, not one per missed interval.
 */
export function driftScheduleOptions(
  request: DriftCheckRequestInput,
  every: number,
  taskQueue: string,
): ScheduleOptions {
  return {
    scheduleId: request.scheduleId,
    spec: { intervals: [{ every }] },
    action: {
      type: 'startWorkflow',
      workflowType: DRIFT_WORKFLOW_TYPE,
      workflowId: request.scheduleId,
      taskQueue,
      args: [request],
    },
    policies: { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: every, pauseOnFailure: false },
    memo: { fleet: request.fleet.manifest },
  };
}

/** Creates the schedule, or updates it in place when it exists. */
export async function upsertDriftSchedule(
  client: Client,
  options: ScheduleOptions,
): Promise<'created' | 'updated'> {
  try {
    await client.schedule.create(options);
    return 'created';
  } catch (err) {
    if (!(err instanceof ScheduleAlreadyRunning)) throw err;
  }
  await client.schedule.getHandle(options.scheduleId).update((previous) => ({
    ...previous,
    spec: options.spec,
    action: options.action,
    policies: { ...previous.policies, ...options.policies },
    state: previous.state,
  }));
  return 'updated';
}

const VERDICT_MARK: Record<string, string> = { ok: 'ok', warn: 'WARN', drift: 'DRIFT' };

/** The per-cohort and feature table of a check. */
export function renderDriftTable(raw: Pick<DriftCheckOutcome, 'cohorts'>): string {
  const o = safeStrings(raw);
  const rows: string[][] = [['cohort', 'feature', 'psi', 'ks', 'ks p', 'js (bits)', 'verdict']];
  for (const c of o.cohorts) {
    for (const f of c.features) {
      rows.push([
        c.cohort,
        f.feature,
        fmt(f.psi),
        fmt(f.ks),
        fmt(f.ksPValue),
        fmt(f.js),
        VERDICT_MARK[f.verdict]!,
      ]);
    }
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const lines = rows.map((r) =>
    r
      .map((cell, i) => cell.padEnd(widths[i]!))
      .join('  ')
      .trimEnd(),
  );
  for (const c of o.cohorts) if (c.verdict !== 'ok') lines.push(`${VERDICT_MARK[c.verdict]}: ${c.reason}`);
  return lines.join('\n');
}

function renderResult(raw: DriftCheckResult): string {
  const r = safeStrings(raw);
  const head = `${r.at}  ${r.checkId}  ${VERDICT_MARK[r.verdict]}  (fleet time ${r.simAt})`;
  const cohorts = r.cohorts.map((c) =>
    `  ${c.cohort}: ${VERDICT_MARK[c.verdict]}  ${c.verdict === 'ok' ? '' : c.reason}`.trimEnd(),
  );
  return [head, ...cohorts].join('\n');
}

function flagsOf(values: Record<string, string | boolean | undefined>): DriftFlags {
  const s = (k: string) => (typeof values[k] === 'string' ? (values[k] as string) : undefined);
  return {
    policy: s('policy'),
    fleet: s('fleet'),
    id: s('id'),
    cohorts: s('cohorts'),
    timeScale: s('time-scale'),
  };
}

function parse(
  args: string[],
  options: Record<string, { type: 'string' | 'boolean' }>,
): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const p = parseArgs({
      args,
      options: { help: { type: 'boolean', short: 'h' }, ...options },
      allowPositionals: true,
      strict: true,
    });
    return { values: p.values as Record<string, string | boolean | undefined>, positionals: p.positionals };
  } catch (err) {
    throw new UsageError(`${(err as Error).message.split(/\.\s|\n/)[0]} (see "fleetgate drift --help")`);
  }
}

const REQUEST_OPTIONS: Record<string, { type: 'string' }> = {
  policy: { type: 'string' },
  fleet: { type: 'string' },
  id: { type: 'string' },
  cohorts: { type: 'string' },
  'time-scale': { type: 'string' },
};

function onePositional(command: string, positionals: string[]): string {
  if (positionals.length !== 1)
    throw new UsageError(`"drift ${command}" takes one argument, the schedule id`);
  return positionals[0]!;
}

export async function driftCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === undefined || sub === '--help' || sub === '-h' || sub === 'help') {
    console.log(DRIFT_HELP);
    return sub === undefined ? 2 : 0;
  }
  switch (sub) {
    case 'schedule': {
      const p = parse(rest, { ...REQUEST_OPTIONS, every: { type: 'string' } });
      if (p.values.help) return help();
      if (p.positionals.length > 0)
        throw new UsageError('"drift schedule" takes no arguments; name it with --id');
      const every = everyMs(p.values.every as string | undefined);
      const request = driftRequest(flagsOf(p.values));
      const s = await connect();
      try {
        const done = await upsertDriftSchedule(
          s.client,
          driftScheduleOptions(request, every, s.config.taskQueue),
        );
        console.log(
          `drift schedule "${request.scheduleId}" ${done}: a check every ${p.values.every} of ${request.fleet.manifest} ` +
            `(overlap: skip; catch-up window: one interval); results: fleetgate drift show ${request.scheduleId}`,
        );
      } finally {
        await s.close();
      }
      return 0;
    }
    case 'list': {
      const p = parse(rest, {});
      if (p.values.help) return help();
      const s = await connect();
      try {
        let n = 0;
        for await (const sch of s.client.schedule.list()) {
          if (sch.action?.workflowType !== DRIFT_WORKFLOW_TYPE) continue;
          n++;
          const every =
            sch.spec?.intervals?.map((i) => `${Math.round(Number(i.every) / 60_000)}m`).join(', ') ?? '?';
          const last = sch.info.recentActions.at(-1);
          console.log(
            `${sch.scheduleId}  every ${every}${sch.state.paused ? '  (paused)' : ''}  next ${sch.info.nextActionTimes[0]?.toISOString() ?? '-'}` +
              `  last ${last ? last.takenAt.toISOString() : '-'}`,
          );
        }
        if (n === 0) console.log('no drift schedules; create one with "fleetgate drift schedule --every 1h"');
      } finally {
        await s.close();
      }
      return 0;
    }
    case 'check':
    case 'run': {
      const p = parse(rest, { ...REQUEST_OPTIONS, now: { type: 'boolean' }, json: { type: 'boolean' } });
      if (p.values.help) return help();
      if (sub === 'run' && !p.values.now)
        throw new UsageError(
          '"drift run" needs --now (one check now); to schedule checks use "drift schedule"',
        );
      const request = driftRequest(flagsOf(p.values));
      const s = await connect();
      try {
        const outcome: DriftCheckOutcome = await s.client.workflow.execute(DRIFT_WORKFLOW_TYPE, {
          taskQueue: s.config.taskQueue,
          workflowId: `${request.scheduleId}-now-${timestamp(new Date(), '-')}`,
          args: [request],
        });
        if (p.values.json) console.log(JSON.stringify(outcome, null, 2));
        else {
          console.log(renderDriftTable(outcome));
          if (outcome.held) {
            console.log(
              `held: ${outcome.held.paused.length ? outcome.held.paused.join(', ') : 'no rollout'} paused` +
                (outcome.held.refused.length
                  ? `; refused: ${outcome.held.refused.map((r) => `${r.rolloutId} (${r.why})`).join(', ')}`
                  : ''),
            );
          }
          console.log(`result stored at ${outcome.resultKey}`);
        }
        return outcome.verdict === 'drift' ? 1 : 0;
      } finally {
        await s.close();
      }
    }
    case 'show': {
      const p = parse(rest, { limit: { type: 'string' }, json: { type: 'boolean' } });
      if (p.values.help) return help();
      const id = onePositional(sub, p.positionals);
      const limit = p.values.limit === undefined ? 10 : Number(p.values.limit);
      if (!(Number.isInteger(limit) && limit >= 1))
        throw new UsageError(`--limit must be a whole number ≥ 1 (got "${String(p.values.limit)}")`);
      const { recentDriftChecks } = require('../activities/drift') as typeof DriftActivitiesModule;
      const store = openObjectStore(loadStoreConfig(), loadConfig().dataDir);
      const results = await recentDriftChecks(store, id, limit);
      if (p.values.json) console.log(JSON.stringify(results, null, 2));
      else if (results.length === 0) console.log(`no results of drift schedule "${id}" yet`);
      else console.log(results.map(renderResult).join('\n'));
      return 0;
    }
    case 'delete': {
      const p = parse(rest, {});
      if (p.values.help) return help();
      const id = onePositional(sub, p.positionals);
      const s = await connect();
      try {
        await s.client.schedule.getHandle(id).delete();
      } catch (err) {
        if (err instanceof ScheduleNotFoundError)
          throw new CliError(`no drift schedule "${id}"; see "fleetgate drift list"`);
        throw err;
      } finally {
        await s.close();
      }
      console.log(`drift schedule "${id}" deleted; its results are kept (fleetgate drift show ${id})`);
      return 0;
    }
    default:
      throw new UsageError(`unknown command "drift ${sub}" (see "fleetgate drift --help")`);
  }
}

function help(): number {
  console.log(DRIFT_HELP);
  return 0;
}

/** Defaults of the drift section, for the docs and tests. */
export const DRIFT_DEFAULTS = DriftPolicy.parse({});
