/**
 * The reviewer's and the operator's commands around a running rollout: `fleetgate gate show` (the pending
 * gate with everything a reviewer decides on: its cohorts, their evidence and latest statistics against
 * their boundaries, the approvals so far and the candidate digest to approve), and the operator controls
 * `pause`, `resume` and `rollback` (one cohort's emergency rollback).
 *
 * A client only: it reads the status query and sends the validated updates of workflows/definitions.ts
 * through activities/controls.ts; a validator's refusal prints `fleetgate: refused: <why>` and exits 1.
 * `renderGate` is pure (status in, text out). Strings of a status, a receipt or a refusal are escaped
 * (cli/terminal.ts) before they are printed. It never prints a vehicle id (statuses carry none).
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { MetricResult } from '../policies/decide';
import { statusQuery, type RolloutStatus } from '../workflows/definitions';
import { createRolloutControls, type ControlOutcome } from '../activities/controls';
import { CliError, defaultRequester, UsageError, update, withSession } from './main';
import { GATE_HELP } from './gate-help';
import { safeStrings, safeText } from './terminal';

type Options = NonNullable<ParseArgsConfig['options']>;
type Values = Record<string, string | boolean | undefined>;

function parse(
  command: string,
  args: string[],
  options: Options,
): { help: true } | { help: false; id: string; values: Values } {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: { help: { type: 'boolean', short: 'h' }, ...options },
      allowPositionals: true,
    });
  } catch (err) {
    throw new UsageError(`${(err as Error).message.split(/\.\s|\n/)[0]} (see "fleetgate ${command} --help")`);
  }
  const values = parsed.values as Values;
  if (values.help) return { help: true };
  if (parsed.positionals.length !== 1)
    throw new UsageError(
      `"${command}" takes one argument (the rollout id) (see "fleetgate ${command} --help")`,
    );
  return { help: false, id: parsed.positionals[0]!, values };
}

function text(values: Values, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' && v.trim() ? v : undefined;
}

function needed(command: string, values: Values, name: string): string {
  const v = text(values, name);
  if (!v) throw new UsageError(`"${command}" needs --${name} (see "fleetgate ${command} --help")`);
  return v;
}

function num(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  return a !== 0 && (a < 0.001 || a >= 1e5) ? x.toExponential(2) : Number(x.toPrecision(4)).toString();
}

function signed(x: number): string {
  return `${x > 0 ? '+' : ''}${num(x)}`;
}

/** One metric: `error_rate noninferior: estimate +0.004 CI [-0.01, 0.018] margin 0.02; Λ 3.1 boundary 40`. */
export function metricLine(m: MetricResult): string {
  const stat = m.test === 'exact-poisson' ? 'rate ratio' : m.test && m.test !== 'msprt' ? 'Z' : 'Λ';
  return (
    `${m.metric} ${m.verdict}: estimate ${signed(m.estimate)} CI [${num(m.ci[0])}, ${num(m.ci[1])}] ` +
    `margin ${num(m.margin)}; ${stat} ${num(m.lambda)} boundary ${num(m.boundary)} ` +
    `(n ${m.nCandidate}/${m.nProduction})`
  );
}

/** The pending gate of a status as text, or why there is none. */
export function renderGate(raw: RolloutStatus): string {
  const status = safeStrings(raw);
  const g = status.pendingGate;
  if (!g)
    return `rollout ${status.rolloutId}: no gate is pending (phase ${status.phase}, wave ${status.wave}/${status.waves})`;
  const kind = g.kind ?? 'wave';
  const what =
    kind === 'wave'
      ? `before wave ${g.wave}`
      : kind === 'promotion'
        ? 'before the final promotion'
        : `in wave ${g.wave}`;
  const lines = [`gate "${g.gate}" of ${status.rolloutId}: ${kind} gate ${what}`];
  if (status.candidate) {
    lines.push(`candidate  ${status.candidate.name}@${status.candidate.version}`);
  }
  const digest = g.digest ?? status.candidate?.digest;
  if (digest) lines.push(`digest     ${digest}`);
  const who = g.approvals.length > 0 ? ` (${g.approvals.join(', ')})` : '';
  lines.push(`approvals  ${g.approvals.length}/${g.required} from distinct reviewers${who}`);
  if (g.reviewers) {
    const left = g.reviewers.filter((r) => !g.approvals.includes(r));
    lines.push(
      `may approve ${left.join(', ') || '(nobody left)'}${g.excludeInitiator ? ' (the initiator is excluded)' : ''}`,
    );
  }
  lines.push(`opened     ${g.openedAt}`);
  lines.push(`deadline   ${g.deadline}`);
  if (status.paused)
    lines.push(`paused     by ${status.paused.by} since ${status.paused.since}: ${status.paused.reason}`);
  const cohorts =
    g.cohorts ??
    status.cohorts.filter((c) => c.state === 'canary' || c.state === 'escalated').map((c) => c.cohort);
  if (g.evidence?.length) {
    lines.push('evidence');
    for (const e of g.evidence) lines.push(`  ${e}`);
  }
  lines.push('latest statistics');
  for (const name of cohorts) {
    const c = status.cohorts.find((x) => x.cohort === name);
    if (!c) continue;
    lines.push(`  ${c.cohort} (${c.state}, wave ${c.wave}/${status.waves}, ${c.vehicles} on candidate)`);
    if (!c.metrics?.length) lines.push('    no look yet');
    for (const m of c.metrics ?? []) lines.push(`    ${metricLine(m)}`);
  }
  const d = digest ? ` --digest ${digest.slice(0, 12)}` : '';
  lines.push(`approve    fleetgate approve ${status.rolloutId} --gate ${g.gate} --reviewer NAME${d}`);
  lines.push(
    `reject     fleetgate reject ${status.rolloutId} --gate ${g.gate} --reviewer NAME --reason TEXT${d}`,
  );
  return lines.join('\n');
}

async function readStatus(id: string): Promise<RolloutStatus> {
  return withSession(async (s) => {
    try {
      return await s.client.withDeadline(Date.now() + 10_000, () =>
        s.client.workflow.getHandle(id).query(statusQuery),
      );
    } catch (err) {
      throw new CliError(`cannot read the status of ${id}: ${(err as Error).message.split('\n')[0]}`);
    }
  });
}

export async function gateCommand(args: string[]): Promise<number> {
  if (args[0] !== 'show') {
    if (args[0] === undefined || args[0] === '--help' || args[0] === '-h') {
      console.log(GATE_HELP['gate show']);
      return args[0] === undefined ? 2 : 0;
    }
    throw new UsageError(`unknown command "gate ${args[0]}": use "gate show"`);
  }
  const p = parse('gate show', args.slice(1), { json: { type: 'boolean' } });
  if (p.help) return help('gate show');
  const status = await readStatus(p.id);
  if (p.values.json) {
    const cohorts = status.cohorts.filter(
      (c) => !status.pendingGate?.cohorts || status.pendingGate.cohorts.includes(c.cohort),
    );
    console.log(
      JSON.stringify(
        {
          rolloutId: status.rolloutId,
          phase: status.phase,
          candidate: status.candidate,
          pendingGate: status.pendingGate ?? null,
          cohorts,
        },
        null,
        2,
      ),
    );
  } else {
    console.log(renderGate(status));
  }
  return status.pendingGate ? 0 : 1;
}

function help(command: string): number {
  console.log(GATE_HELP[command]);
  return 0;
}

/** Sends one control; a refusal becomes `refused: <why>` (exit 1). */
async function control<T>(
  id: string,
  timeoutMs: number,
  send: (c: ReturnType<typeof createRolloutControls>) => Promise<ControlOutcome<T>>,
): Promise<T> {
  const outcome = await withSession((s) =>
    update(s, id, timeoutMs, () => send(createRolloutControls({ client: s.client }))),
  );
  if (!outcome.ok) throw new CliError(`refused: ${safeText(outcome.refused)}`);
  return safeStrings(outcome.receipt);
}

export async function pauseCommand(args: string[]): Promise<number> {
  const p = parse('pause', args, { reason: { type: 'string' }, by: { type: 'string' } });
  if (p.help) return help('pause');
  const reason = needed('pause', p.values, 'reason');
  const by = text(p.values, 'by') ?? defaultRequester();
  const r = await control(p.id, 30_000, (c) => c.pause(p.id, { by, reason }));
  console.log(
    `paused ${p.id} in phase ${r.phase} as ${r.by}: it holds at its next safe point until "fleetgate resume ${p.id}"`,
  );
  return 0;
}

export async function resumeCommand(args: string[]): Promise<number> {
  const p = parse('resume', args, { reason: { type: 'string' }, by: { type: 'string' } });
  if (p.help) return help('resume');
  const by = text(p.values, 'by') ?? defaultRequester();
  const reason = text(p.values, 'reason');
  const r = await control(p.id, 30_000, (c) => c.resume(p.id, { by, ...(reason ? { reason } : {}) }));
  console.log(`resumed ${p.id} in phase ${r.phase} as ${r.by}`);
  return 0;
}

export async function rollbackCommand(args: string[]): Promise<number> {
  const p = parse('rollback', args, {
    cohort: { type: 'string' },
    reason: { type: 'string' },
    by: { type: 'string' },
  });
  if (p.help) return help('rollback');
  const cohort = needed('rollback', p.values, 'cohort');
  const reason = needed('rollback', p.values, 'reason');
  const by = text(p.values, 'by') ?? defaultRequester();
  console.error(`fleetgate: rolling back ${cohort} of ${p.id}; waiting for its compensations…`);
  const r = await control(p.id, 600_000, (c) => c.rollbackCohort(p.id, { cohort, by, reason }));
  console.log(
    `rolled back ${r.cohort} of ${p.id}: ${r.state}, ${r.compensations} compensation(s) run; the other cohorts go on`,
  );
  return 0;
}
