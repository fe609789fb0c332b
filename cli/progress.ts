/**
 * The live progress view of a rollout, drawn from its status query: the phases with a mark each, the
 * current wave and look, a pending gate and its approvals, one row per cohort and the last decision.
 *
 * `renderStatus` and `renderResult` are pure (status in, text out). `ProgressView` draws them: on a
 * terminal it redraws in place with ANSI cursor movement; elsewhere (a pipe, a log file, CI) it prints one
 * line per phase change, gate and new decision-log entry, with no control codes. `watch` polls a
 * workflow until it closes.
 *
 * Every string of a status, a result or an error comes from outside (reasons, comments, names, the
 * decision log): the renderers escape its control characters and bidi overrides (cli/terminal.ts) before
 * painting it, so only the palette's own colour codes reach the terminal.
 *
 * It must never print a raw vehicle id (statuses carry none) or change the workflow: it only queries.
 */
import { setTimeout as delay } from 'node:timers/promises';
import type { WorkflowHandle } from '@temporalio/client';
import {
  statusQuery,
  type CohortStatus,
  type DecisionLogEntry,
  type Phase,
  type RolloutResult,
  type RolloutStatus,
} from '../workflows/definitions';
import { safeStrings, safeText } from './terminal';

/** The phases shown, in pipeline order. `rollback` and `done` are states around them. */
export const PHASES: readonly Phase[] = [
  'register',
  'bench',
  'shadow',
  'canary',
  'label-wait',
  'analysis',
  'promote',
];

export interface RenderOptions {
  color: boolean;
}

type Paint = (s: string) => string;
interface Palette {
  green: Paint;
  red: Paint;
  yellow: Paint;
  cyan: Paint;
  dim: Paint;
  bold: Paint;
}

function palette(color: boolean): Palette {
  const sgr =
    (open: number, close: number): Paint =>
    (s) =>
      color ? `\x1b[${open}m${s}\x1b[${close}m` : s;
  return {
    green: sgr(32, 39),
    red: sgr(31, 39),
    yellow: sgr(33, 39),
    cyan: sgr(36, 39),
    dim: sgr(2, 22),
    bold: sgr(1, 22),
  };
}

const ESC = '\u001b';
const SGR_OR_CSI = `${ESC}\\[[0-9;]*[A-Za-z]`;

/** Text without ANSI control sequences. */
export function stripAnsi(s: string): string {
  return s.replace(new RegExp(SGR_OR_CSI, 'g'), '');
}

function visibleLength(s: string): number {
  return [...stripAnsi(s)].length;
}

function padEnd(s: string, width: number): string {
  return s + ' '.repeat(Math.max(0, width - visibleLength(s)));
}

/** Cuts a line to `width` visible characters, keeping its control sequences intact. */
export function truncateLine(line: string, width: number): string {
  if (width <= 1 || visibleLength(line) <= width) return line;
  const control = new RegExp(SGR_OR_CSI, 'y');
  let out = '';
  let shown = 0;
  let i = 0;
  while (i < line.length && shown < width - 1) {
    control.lastIndex = i;
    const m = line[i] === ESC ? control.exec(line) : null;
    if (m) {
      out += m[0];
      i += m[0].length;
      continue;
    }
    const ch = String.fromCodePoint(line.codePointAt(i)!);
    out += ch;
    i += ch.length;
    shown++;
  }
  return out + '…' + (line.includes(ESC) ? `${ESC}[0m` : '');
}

/**
 * The phase the pipeline is in or stopped at. During a cohort's rollback, and once the rollout is done,
 * the status says `rollback` / `done`; the last decision tells which pipeline phase that happened in.
 */
function pipelinePhase(status: RolloutStatus): Phase {
  if (PHASES.includes(status.phase)) return status.phase;
  const last = status.lastDecision?.phase;
  if (last && PHASES.includes(last)) return last;
  if (status.wave > 0) return 'canary';
  if (status.benches.length > 0) return 'shadow';
  return 'register';
}

function phaseLine(status: RolloutStatus, p: Palette): string {
  const at = pipelinePhase(status);
  const atIndex = PHASES.indexOf(at);
  const finished = status.phase === 'done';
  const completed = finished && status.outcome === 'completed';
  return PHASES.map((name, i) => {
    if (completed || i < atIndex) return `${p.green('✓')} ${name}`;
    if (i > atIndex) return p.dim(`· ${name}`);
    if (finished) return `${p.red('✗')} ${name}`;
    const extra = status.phase === 'rollback' ? p.yellow(' (rolling back)') : '';
    return `${p.cyan('▶')} ${p.bold(name)}${extra}`;
  }).join('  ');
}

/** What a pending gate holds up: a wave, the promotion, or (escalation) the cohorts the data could not decide. */
function gateWhat(g: NonNullable<RolloutStatus['pendingGate']>): string {
  if (g.kind === 'escalation') return `for ${(g.cohorts ?? []).join(', ')} (escalated)`;
  if (g.kind === 'promotion') return `before promoting ${(g.cohorts ?? []).join(', ')}`;
  return `before wave ${g.wave}`;
}

/** A gate's quorum: `1/2 approval(s) (bob) from distinct reviewers; may approve: carol`. */
export function gateQuorum(raw: NonNullable<RolloutStatus['pendingGate']>): string {
  const g = safeStrings(raw);
  const who = g.approvals.length > 0 ? ` (${g.approvals.join(', ')})` : '';
  const left = g.reviewers?.filter((r) => !g.approvals.includes(r));
  const may = left ? `; may approve: ${left.join(', ') || 'nobody left'}` : '';
  const initiator = g.excludeInitiator ? ', initiator excluded' : '';
  return `${g.approvals.length}/${g.required} approval(s)${who} from distinct reviewers${may}${initiator}`;
}

/** `paused by ops since 2026-…: why`, for a paused rollout. */
export function pausedLine(raw: NonNullable<RolloutStatus['paused']>): string {
  const paused = safeStrings(raw);
  return `paused by ${paused.by} since ${shortTime(paused.since)}: ${paused.reason} (holds at its next safe point until resumed)`;
}

function stateText(state: CohortStatus['state'], p: Palette): string {
  switch (state) {
    case 'promoted':
      return p.green(state);
    case 'rolled_back':
    case 'rejected':
    case 'aborted':
      return p.red(state);
    case 'held':
    case 'escalated':
      return p.yellow(state);
    case 'canary':
    case 'shadow':
      return p.cyan(state);
    default:
      return p.dim(state);
  }
}

function table(rows: string[][]): string[] {
  const widths: number[] = [];
  for (const row of rows)
    row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, visibleLength(cell))));
  return rows.map((row) =>
    row
      .map((cell, i) => (i === row.length - 1 ? cell : padEnd(cell, widths[i]!)))
      .join('  ')
      .trimEnd(),
  );
}

function cohortTable(cohorts: CohortStatus[], waves: number, p: Palette): string[] {
  const head = ['cohort', 'state', 'wave', 'on candidate', 'headline'].map(p.dim);
  const rows = cohorts.map((c) => [
    c.cohort,
    stateText(c.state, p),
    `${c.wave}/${waves}`,
    String(c.vehicles),
    c.headline ?? p.dim('—'),
  ]);
  return table([head, ...rows]);
}

/** One line of a decision-log entry: `#12 canary w2 look 1 hw3/eu rollback: why`. */
export function decisionLine(raw: DecisionLogEntry): string {
  const d = safeStrings(raw);
  const where = [d.phase, d.wave ? `w${d.wave}` : '', d.look ? `look ${d.look}` : '', d.cohort ?? '']
    .filter(Boolean)
    .join(' ');
  return `#${d.seq} ${where} ${d.action}: ${d.reason}`;
}

function shortTime(iso: string): string {
  return iso.replace('T', ' ').replace(/:\d\d(\.\d+)?Z$/, 'Z');
}

/**
 * An activity the server has in flight for a rollout (from `describe()`): what `status` shows so an
 * operator sees why a rollout waits (a worker that died, a dependency that fails) even when no worker
 * answers the status query.
 */
export interface InFlight {
  activity: string;
  state: 'scheduled' | 'started' | 'cancel requested' | 'paused' | 'unknown';
  attempt: number;
  scheduledAt?: string;
  startedAt?: string;
  lastHeartbeatAt?: string;
  lastFailure?: string;
  worker?: string;
}

type Timestamp = { seconds?: unknown; nanos?: number | null } | null | undefined;
function iso(ts: Timestamp): string | undefined {
  if (!ts || ts.seconds === undefined || ts.seconds === null) return undefined;
  const ms = Number(ts.seconds) * 1000 + Math.floor((ts.nanos ?? 0) / 1e6);
  return ms > 0 ? new Date(ms).toISOString() : undefined;
}

/** The pending activities of `describe().raw`, as `InFlight` (innermost failure message). */
export function inFlightOf(
  pending:
    | readonly {
        activityType?: { name?: string | null } | null;
        state?: number | null;
        attempt?: number | null;
        scheduledTime?: Timestamp;
        lastStartedTime?: Timestamp;
        lastHeartbeatTime?: Timestamp;
        lastFailure?: { message?: string | null; cause?: unknown } | null;
        lastWorkerIdentity?: string | null;
      }[]
    | null
    | undefined,
): InFlight[] {
  const states = ['unknown', 'scheduled', 'started', 'cancel requested', 'paused'] as const;
  return (pending ?? []).map((a) => {
    let failure: string | undefined;
    for (let f = a.lastFailure as { message?: string | null; cause?: unknown } | null | undefined; f;) {
      if (f.message) failure = f.message;
      f = f.cause as typeof f;
    }
    const out: InFlight = {
      activity: a.activityType?.name ?? '?',
      state: states[a.state ?? 0] ?? 'unknown',
      attempt: a.attempt ?? 1,
    };
    const scheduledAt = iso(a.scheduledTime);
    const startedAt = iso(a.lastStartedTime);
    const lastHeartbeatAt = iso(a.lastHeartbeatTime);
    if (scheduledAt) out.scheduledAt = scheduledAt;
    if (startedAt) out.startedAt = startedAt;
    if (lastHeartbeatAt) out.lastHeartbeatAt = lastHeartbeatAt;
    if (failure) out.lastFailure = failure;
    if (a.lastWorkerIdentity) out.worker = a.lastWorkerIdentity;
    return out;
  });
}

/** One line per activity in flight: `activity collectTelemetry started, attempt 2, ...`. */
export function inFlightLines(raw: readonly InFlight[], now = Date.now()): string[] {
  const list = safeStrings(raw);
  const ago = (t?: string) => (t ? `${Math.max(0, Math.round((now - Date.parse(t)) / 1000))} s ago` : '');
  return list.map((a) => {
    const parts = [`activity ${a.activity} ${a.state}`, `attempt ${a.attempt}`];
    if (a.state === 'started' && a.startedAt) parts.push(`started ${ago(a.startedAt)}`);
    if (a.state === 'scheduled' && a.scheduledAt)
      parts.push(`scheduled ${ago(a.scheduledAt)}, no worker took it yet`);
    if (a.lastHeartbeatAt) parts.push(`last heartbeat ${ago(a.lastHeartbeatAt)}`);
    if (a.worker) parts.push(`on ${a.worker}`);
    if (a.lastFailure) parts.push(`last failure: ${a.lastFailure}`);
    return parts.join(', ');
  });
}

/** The whole status as text; no control codes unless `color`. */
export function renderStatus(
  raw: RolloutStatus,
  opts: RenderOptions,
  inFlight: readonly InFlight[] = [],
): string {
  const status = safeStrings(raw);
  const p = palette(opts.color);
  const lines: string[] = [];
  const cand = status.candidate
    ? `${status.candidate.name}@${status.candidate.version} (${status.candidate.digest.slice(0, 12)})`
    : 'registering…';
  lines.push(
    `${p.bold(`rollout ${status.rolloutId}`)}  candidate ${cand}  fleet time ${shortTime(status.simNow)}`,
  );
  lines.push(phaseLine(status, p));

  const where: string[] = [];
  if (status.waves > 0) where.push(`wave ${status.wave}/${status.waves}`);
  if (status.wave > 0 && status.look > 0) where.push(`look ${status.look}`);
  if (status.outcome) {
    const paint = status.outcome === 'completed' ? p.green : p.red;
    where.push(`outcome ${paint(status.outcome)}`);
  }
  lines.push(where.join('  '));

  if (status.benches.length > 0) {
    const benches = status.benches.map(
      (b) => `${b.sku} p95 ${b.p95Ms.toFixed(2)}/${b.budgetMs} ms ${b.passed ? p.green('✓') : p.red('✗')}`,
    );
    lines.push(`bench  ${benches.join('  ')}`);
  }

  if (status.paused) lines.push(p.yellow(`⏸ ${pausedLine(status.paused)}`));
  if (status.waitingOn) {
    const w = status.waitingOn;
    lines.push(
      `waiting on ${w.what} since ${shortTime(w.since)}${w.until ? `, until ${shortTime(w.until)}` : ''}`,
    );
  }
  for (const l of inFlightLines(inFlight)) lines.push(`  ${l}`);

  const g = status.pendingGate;
  if (g) {
    lines.push(
      p.yellow(`gate "${g.gate}" pending ${gateWhat(g)}: ${gateQuorum(g)}`) +
        `  deadline ${shortTime(g.deadline)}` +
        (g.digest ? `  digest ${g.digest.slice(0, 12)}` : ''),
    );
    for (const e of g.evidence ?? []) lines.push(`  ${p.dim('evidence')} ${e}`);
  }

  lines.push('');
  if (status.cohorts.length > 0) lines.push(...cohortTable(status.cohorts, status.waves, p));
  else lines.push(p.dim('cohorts: not known before registration'));
  lines.push('');
  lines.push(status.lastDecision ? `last ${decisionLine(status.lastDecision)}` : p.dim('no decision yet'));
  return lines.join('\n');
}

/** A finished rollout: outcome, reason, the decision and headline of every cohort, the report. */
export function renderResult(raw: RolloutResult, opts: RenderOptions): string {
  const result = safeStrings(raw);
  const p = palette(opts.color);
  const paint = result.outcome === 'completed' ? p.green : p.red;
  const lines = [
    `outcome ${paint(result.outcome)}${result.rejectedAt ? ` in ${result.rejectedAt}` : ''}: ${result.reason}`,
  ];
  const rows = result.cohorts.map((c) => ['  ' + c.cohort, stateText(c.state, p), c.headline ?? '']);
  lines.push(...table(rows));
  if (result.reportPath) lines.push(`report ${result.reportPath}`);
  return lines.join('\n');
}

/** Something that can be written to; a TTY stream also says so and has a width. */
export interface Output {
  write(s: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

/** Draws successive statuses: redrawn in place on a terminal, as new lines elsewhere. */
export class ProgressView {
  private readonly live: boolean;
  private readonly color: boolean;
  private drawn = 0;
  private lastText = '';
  private lastFull = '';
  private problem?: string;
  // Line mode: what has been printed already.
  private seenSeq = 0;
  private seenPhase?: string;
  private seenGate?: string;
  private seenPause?: string;
  private readonly seenCohort = new Map<string, string>();

  constructor(
    private readonly out: Output = process.stdout,
    opts: { live?: boolean; color?: boolean } = {},
  ) {
    this.live = opts.live ?? Boolean(out.isTTY);
    this.color = opts.color ?? (this.live && !process.env.NO_COLOR);
  }

  update(status: RolloutStatus): void {
    this.problem = undefined;
    if (this.live) this.draw(renderStatus(status, { color: this.color }));
    else this.lines(status);
  }

  /** A line printed above the live view (or as one line), e.g. what the demo does on its own. */
  note(line: string): void {
    if (!this.live) {
      this.out.write(line + '\n');
      return;
    }
    this.erase();
    this.out.write(line + '\n');
    this.paint(this.lastText);
  }

  /** Why the status could not be read; shown until the next successful update. */
  trouble(raw: string): void {
    const message = safeText(raw);
    if (this.problem === message) return;
    this.problem = message;
    if (this.live) this.draw(this.lastText);
    else this.out.write(`status unavailable: ${message}\n`);
  }

  /** Leaves the last drawing in place. */
  finish(): void {
    this.drawn = 0;
  }

  private draw(text: string): void {
    const problem = this.problem && palette(this.color).yellow(`status unavailable: ${this.problem}`);
    const full = problem ? [text, problem].filter(Boolean).join('\n') : text;
    if (this.drawn > 0 && full === this.lastFull) return;
    this.erase();
    this.paint(text, full);
  }

  private paint(text: string, full = text): void {
    this.lastText = text;
    this.lastFull = full;
    if (!full) return;
    const width = this.out.columns ?? 0;
    const rows = full.split('\n').map((l) => (width > 0 ? truncateLine(l, width) : l));
    this.out.write(rows.join('\n') + '\n');
    this.drawn = rows.length;
  }

  private erase(): void {
    if (this.drawn > 0) this.out.write(`${ESC}[${this.drawn}A\r${ESC}[0J`);
    this.drawn = 0;
  }

  private lines(raw: RolloutStatus): void {
    const status = safeStrings(raw);
    const phase = `${status.phase}|${status.wave}`;
    const phaseChanged = phase !== this.seenPhase;
    this.seenPhase = phase;
    if (phaseChanged && status.phase !== 'done') {
      const wave = status.phase === 'canary' && status.wave > 0 ? ` wave ${status.wave}/${status.waves}` : '';
      this.out.write(`phase ${status.phase}${wave}\n`);
    }
    const pause = status.paused ? `${status.paused.by}|${status.paused.since}` : undefined;
    if (pause !== this.seenPause) {
      this.out.write(status.paused ? `${pausedLine(status.paused)}\n` : this.seenPause ? 'resumed\n' : '');
    }
    this.seenPause = pause;
    const g = status.pendingGate;
    const gate = g ? `${g.gate}|${g.approvals.length}` : undefined;
    if (g && gate !== this.seenGate) {
      this.out.write(`gate "${g.gate}" pending ${gateWhat(g)}: ${gateQuorum(g)}\n`);
      for (const e of g.evidence ?? []) this.out.write(`  evidence ${e}\n`);
    }
    this.seenGate = gate;
    for (const c of status.cohorts) {
      const line = `${c.cohort}: ${c.state}, wave ${c.wave}/${status.waves}, ${c.vehicles} on candidate${c.headline ? `: ${c.headline}` : ''}`;
      if (this.seenCohort.get(c.cohort) !== line) this.out.write(`  ${line}\n`);
      this.seenCohort.set(c.cohort, line);
    }
    const recent = status.recentDecisions ?? (status.lastDecision ? [status.lastDecision] : []);
    const fresh = recent.filter((d) => d.seq > this.seenSeq);
    if (fresh.length > 0) {
      const skipped = fresh[0]!.seq - this.seenSeq - 1;
      if (skipped > 0) this.out.write(`(${skipped} earlier decision(s) are in the report)\n`);
      for (const d of fresh) this.out.write(decisionLine(d) + '\n');
      this.seenSeq = fresh[fresh.length - 1]!.seq;
    }
    if (phaseChanged && status.phase === 'done')
      this.out.write(`done: outcome ${status.outcome ?? 'unknown'}\n`);
  }
}

export interface WatchOptions {
  out?: Output;
  /** Redraw in place (default: when `out` is a TTY). */
  live?: boolean;
  color?: boolean;
  intervalMs?: number;
  /** Longest wait for one status query (default 5 s). */
  queryTimeoutMs?: number;
  /** Stops watching (the workflow keeps running). */
  signal?: AbortSignal;
  /** Called with every status read, before the next poll; awaited. */
  onStatus?: (status: RolloutStatus, view: ProgressView) => void | Promise<void>;
  view?: ProgressView;
}

/** Thrown by `watch` when its signal fires. */
export class WatchInterrupted extends Error {
  override name = 'WatchInterrupted';
  constructor() {
    super('stopped watching');
  }
}

/**
 * Polls the status query every `intervalMs` (500 ms) and draws it, until the workflow closes; returns
 * its RolloutResult. A workflow that fails (invalid input, terminated) throws with the cause's message.
 */
export async function watch(handle: WorkflowHandle, opts: WatchOptions = {}): Promise<RolloutResult> {
  const view = opts.view ?? new ProgressView(opts.out, { live: opts.live, color: opts.color });
  const interval = opts.intervalMs ?? 500;
  const queryTimeout = opts.queryTimeoutMs ?? 5000;
  const stop = new AbortController();
  const onAbort = () => stop.abort();
  opts.signal?.addEventListener('abort', onAbort, { once: true });

  let settled: { ok: true; value: RolloutResult } | { ok: false; error: unknown } | undefined;
  const closed = resultUntil(handle, stop.signal).then(
    (value) => (settled = { ok: true, value }),
    (error: unknown) => (settled = { ok: false, error }),
  );

  let last: RolloutStatus | undefined;
  try {
    while (!settled) {
      if (opts.signal?.aborted) throw new WatchInterrupted();
      try {
        const status = await handle.client.withDeadline(Date.now() + queryTimeout, () =>
          handle.query(statusQuery),
        );
        last = status;
        view.update(status);
        await opts.onStatus?.(status, view);
      } catch (err) {
        if (settled) break;
        if (opts.signal?.aborted) throw new WatchInterrupted();
        view.trouble(queryProblem(err, queryTimeout));
      }
      await Promise.race([
        delay(interval, undefined, { signal: stop.signal }).catch(() => undefined),
        closed,
      ]);
    }
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
  if (opts.signal?.aborted) throw new WatchInterrupted();
  const end = settled!;
  if (!end.ok) {
    view.finish();
    throw new Error(`rollout ${handle.workflowId} failed: ${causeMessage(end.error)}`);
  }
  const result = end.value;
  if (last) {
    view.update({
      ...last,
      phase: 'done',
      outcome: result.outcome,
      cohorts: result.cohorts,
      pendingGate: undefined,
    });
  }
  view.finish();
  return result;
}

/** How long one wait for the result uses one abort signal (see `resultUntil`). */
export const RESULT_ROUND_MS = 60_000;

/**
 * The workflow's result, or an AbortError once `stop` fires. The SDK adds an abort listener to the
 * signal of every call it makes under `withAbortSignal` and never removes it, and the wait for the result
 * is a long poll repeated every few seconds: on one signal a day-long watch would pile up thousands of
 * listeners. Each round of `RESULT_ROUND_MS` has a signal of its own, dropped with its listeners.
 */
export async function resultUntil(
  handle: WorkflowHandle,
  stop: AbortSignal,
  roundMs = RESULT_ROUND_MS,
): Promise<RolloutResult> {
  for (;;) {
    const round = new AbortController();
    const onStop = () => round.abort(stop.reason);
    stop.addEventListener('abort', onStop, { once: true });
    const timer = setTimeout(() => round.abort(), roundMs);
    try {
      return (await handle.client.withAbortSignal(round.signal, () => handle.result())) as RolloutResult;
    } catch (err) {
      // The round ended without a result: wait again on a fresh signal.
      if (stop.aborted || !round.signal.aborted) throw err;
    } finally {
      clearTimeout(timer);
      stop.removeEventListener('abort', onStop);
    }
  }
}

function queryProblem(err: unknown, timeoutMs: number): string {
  const msg = causeMessage(err);
  if (/deadline/i.test(msg)) {
    return `no answer within ${Math.round(timeoutMs / 1000)} s; is a fleetgate worker running on this task queue?`;
  }
  return msg;
}

/** The innermost message of an error chain (the ApplicationFailure that says what went wrong). */
export function causeMessage(err: unknown): string {
  let e: unknown = err;
  while (e instanceof Error && (e as { cause?: unknown }).cause instanceof Error)
    e = (e as { cause?: unknown }).cause;
  return e instanceof Error ? e.message : String(e);
}
