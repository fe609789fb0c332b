/**
 * `fleetgate simulate`: the dry run an operator makes before a real rollout. Runs the real
 * `rolloutWorkflow`, with the real activities (onnxruntime, DuckDB, the simulated fleet), against a
 * scenario (policies/scenario.ts) on the time-skipping test server, so weeks of rollout take seconds, and
 * sets each cohort's decision beside its ground truth (sim/truth.ts).
 *
 * Each run has a fresh temporary data directory that is also its worker's root: the scenario's model
 * packs are copied into it and its fleet manifest written there, so a scenario can live anywhere and a
 * run never touches the operator's data directory. The directory is removed afterwards.
 *
 * A dry run answers what the data alone decides: wave gates and the promotion gate of the policy are
 * approved at once by its reviewers; escalations are left unanswered, so they end held when they time out.
 */
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, extname, join, resolve } from 'node:path';
import YAML from 'yaml';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type * as Testing from '@temporalio/testing';
import { DefaultLogger, Runtime, Worker, type WorkflowBundle } from '@temporalio/worker';
import { Policy, formatIssues, type FleetManifest, type PolicyInput } from '../policies/schema';
import { Scenario, scenarioFleet, type Scenario as ScenarioT } from '../policies/scenario';
import { parseDuration } from '../policies/duration';
import {
  approveUpdate,
  statusQuery,
  WORKFLOW_TYPE,
  type CohortState,
  type DecisionLogEntry,
  type RolloutResult,
} from '../workflows/definitions';
import { groundTruth, type CohortTruth, type TruthLabel } from '../sim/truth';
import { openSimWorld, type SimWorld } from '../sim/world';
import { createActivities, openServices, quietRuntime, trustFixtureSigner } from '../workers/worker';
import { createRegistryActivities } from '../activities/registry';
import { getWorkflowBundle } from '../workers/bundle';
import { temporalTestServer } from '../workers/tools';

/** A scenario, its policy and its fleet, read and validated, with every path made absolute. */
export interface LoadedScenario {
  file: string;
  scenario: ScenarioT;
  policy: Policy;
  policyFile: string;
  productionPack: string;
  candidatePack: string;
}

/** A problem with the scenario or its files: the CLI prints it and exits with code 2. */
export class ScenarioError extends Error {
  override name = 'ScenarioError';
}

export interface CohortOutcome {
  cohort: string;
  sku: string;
  /** The final state of the cohort: promoted, rolled_back, held, rejected (or aborted). */
  decision: CohortState;
  truth: TruthLabel;
  /** Simulated time of the decision-log entry that settled the cohort, ISO 8601. */
  decidedAt: string;
  /** Simulated hours from the start of the rollout to `decidedAt`. */
  decidedAfterHours: number;
  /**
   * What settled the cohort: the statistical analysis, the bench, the shadow gate, the delivery (installs
   * failed), a reviewer, or (other) the end of the rollout.
   */
  cause: 'analysis' | 'bench' | 'shadow' | 'delivery' | 'reviewer' | 'other';
  /**
   * The decision against the truth. ok: promoted and not regressed, or stopped and regressed; missed:
   * promoted while regressed; false-alarm: rolled back by the analysis while not regressed; n/a: stopped
   * for another reason (held, a failed delivery, ...) while not regressed.
   */
  check: 'ok' | 'missed' | 'false-alarm' | 'n/a';
  /** The workflow's one line about the cohort. */
  headline?: string;
}

export interface SimulationRun {
  scenario: string;
  seed: number;
  rolloutId: string;
  outcome: RolloutResult['outcome'];
  reason: string;
  simulatedStart: string;
  simulatedEnd: string;
  simulatedHours: number;
  wallMs: number;
  cohorts: CohortOutcome[];
}

export interface SimulationReport extends SimulationRun {
  description: string;
  policy: string;
  truth: CohortTruth[];
}

export interface MultiSimulationReport {
  scenario: string;
  description: string;
  policy: string;
  seeds: number[];
  runs: SimulationRun[];
  truth: CohortTruth[];
  summary: {
    runs: number;
    runsWithRollback: number;
    /** Share of runs in which any cohort was rolled back. */
    rollbackShare: number;
    alpha: number;
    /** Per cohort, how many runs ended in each decision. */
    decisions: Record<string, Partial<Record<CohortState, number>>>;
    wallMs: number;
  };
}

export interface SimulateOptions {
  /** Replaces the scenario's policy (a path relative to the working directory). */
  policyFile?: string;
  /** Replaces the scenario's seed. */
  seed?: number;
  /** Runs this many seeds, seed..seed+N-1 (default 1). */
  seeds?: number;
  /** A time-skipping environment to use (tests share one); otherwise one is started and stopped. */
  env?: TestWorkflowEnvironment;
  /** Progress lines (a run finished), e.g. to stderr. */
  progress?: (line: string) => void;
}

// ---- loading ------------------------------------------------------------------------------------

function readStructured(file: string, what: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ScenarioError(
      `${what} ${file}: ${code === 'ENOENT' ? 'the file does not exist' : `cannot read it (${code ?? err})`}`,
    );
  }
  try {
    return extname(file).toLowerCase() === '.json' ? JSON.parse(text) : YAML.parse(text);
  } catch (err) {
    throw new ScenarioError(`${what} ${file}: ${(err as Error).message.split('\n')[0]}`);
  }
}

/** Reads and validates a scenario file and its policy; every problem names the file and the path. */
export function loadScenario(file: string, policyOverride?: string): LoadedScenario {
  const abs = resolve(file);
  const raw = readStructured(abs, 'scenario');
  const parsed = Scenario.safeParse(raw);
  if (!parsed.success) {
    throw new ScenarioError(`invalid scenario ${file}:\n${indent(formatIssues(parsed.error, raw))}`);
  }
  const scenario = parsed.data;
  try {
    scenarioFleet(scenario);
  } catch (err) {
    throw new ScenarioError(
      `invalid scenario ${file}: ${(err as Error).message.replace(/^invalid scenario fleet:\n/, '\n')}`,
    );
  }
  const here = dirname(abs);
  const policyFile = policyOverride ? resolve(policyOverride) : resolve(here, scenario.policy);
  const policyRaw = readStructured(policyFile, 'policy');
  const policy = Policy.safeParse(policyRaw);
  if (!policy.success) {
    throw new ScenarioError(
      `invalid policy ${policyFile}:\n${indent(formatIssues(policy.error, policyRaw, 'policy'))}`,
    );
  }
  const pack = (p: string, field: string) => {
    const dir = resolve(here, p);
    if (!existsSync(join(dir, 'manifest.json'))) {
      throw new ScenarioError(
        `scenario ${file}: ${field} "${p}" is not a model pack (no ${join(dir, 'manifest.json')}); paths are relative to the scenario file`,
      );
    }
    return dir;
  };
  return {
    file: abs,
    scenario,
    policy: policy.data,
    policyFile,
    productionPack: pack(scenario.production, 'production'),
    candidatePack: pack(scenario.candidate, 'candidate'),
  };
}

function indent(lines: string): string {
  return lines
    .split('\n')
    .map((l) => `  ${l}`)
    .join('\n');
}

// ---- running ------------------------------------------------------------------------------------

let runs = 0;

/** Starts the time-skipping test server (the pinned binary; never downloads). */
export async function startTestServer(): Promise<TestWorkflowEnvironment> {
  let testing: typeof Testing;
  try {
    testing = require('@temporalio/testing') as typeof Testing;
  } catch {
    throw new ScenarioError(
      'fleetgate simulate needs @temporalio/testing: run "npm install" (dev dependencies)',
    );
  }
  try {
    // Errors only: the test server does not advertise every capability, and the SDK warns about it.
    Runtime.install({
      logger: new DefaultLogger('ERROR'),
      telemetryOptions: { logging: { filter: { core: 'ERROR', other: 'ERROR' }, forward: {} } },
    });
  } catch {
    quietRuntime(); // a runtime exists already in this process
  }
  return testing.TestWorkflowEnvironment.createTimeSkipping({
    server: { executable: { type: 'existing-path', path: temporalTestServer() } },
  });
}

/**
 * One worker for a series of runs: creating a worker costs about a second, a world a tenth of that. It
 * serves one world at a time; its activities call the current world's.
 */
export class SimWorker {
  private current?: Record<string, (...args: unknown[]) => Promise<unknown>>;
  private constructor(
    private readonly worker: Worker,
    readonly taskQueue: string,
    private readonly running: Promise<void>,
  ) {}

  static async create(
    env: TestWorkflowEnvironment,
    bundle: WorkflowBundle,
    first: SimWorld,
  ): Promise<SimWorker> {
    const taskQueue = `simulate-${process.pid}-${++runs}`;
    const names = Object.keys(createActivities(first.services));
    const holder: { self?: SimWorker } = {};
    const activities = Object.fromEntries(
      names.map((name) => [
        name,
        (...args: unknown[]) => {
          const f = holder.self?.current?.[name];
          if (!f) throw new Error(`simulate: no world is being served (activity ${name})`);
          return f(...args);
        },
      ]),
    );
    const worker = await Worker.create({
      connection: env.nativeConnection,
      taskQueue,
      workflowBundle: bundle,
      activities,
      maxConcurrentActivityTaskExecutions: 4,
    });
    const running = worker.run();
    running.catch(() => undefined); // surfaced by `serve`
    holder.self = new SimWorker(worker, taskQueue, running);
    return holder.self;
  }

  /** Runs `fn` with this worker serving `world`; fails when the worker stops. */
  async serve<T>(world: SimWorld, fn: () => Promise<T>): Promise<T> {
    this.current = profiled(createActivities(world.services)) as typeof this.current;
    try {
      return await Promise.race([
        fn(),
        this.running.then(
          () => {
            throw new Error('simulate: the worker stopped');
          },
          (err: unknown) => {
            throw new Error(`simulate: the worker failed: ${(err as Error).message}`, { cause: err });
          },
        ),
      ]);
    } finally {
      this.current = undefined;
    }
  }

  async close(): Promise<void> {
    if (this.worker.getState() === 'RUNNING') this.worker.shutdown();
    await this.running.catch(() => undefined);
  }
}

/** Runs one seed of a scenario: a fresh world served by `sim` (created on first use), the workflow. */
export async function simulateOnce(
  env: TestWorkflowEnvironment,
  bundle: WorkflowBundle,
  loaded: LoadedScenario,
  seed: number,
  truth: CohortTruth[],
  shared?: { worker?: SimWorker },
): Promise<SimulationRun> {
  const sim = shared ?? {};
  const { scenario, policy } = loaded;
  const started = Date.now();
  const dataDir = mkdtempSync(join(tmpdir(), 'fleetgate-sim-'));
  const fleet: FleetManifest = scenarioFleet(scenario, seed);
  cpSync(loaded.productionPack, join(dataDir, 'packs', 'production'), { recursive: true });
  cpSync(loaded.candidatePack, join(dataDir, 'packs', 'candidate'), { recursive: true });
  writeFileSync(join(dataDir, 'fleet.json'), JSON.stringify(fleet, null, 2));
  let world: SimWorld | undefined;
  try {
    world = await openSimWorld({
      dataDir,
      root: dataDir,
      fleet: 'fleet.json',
      production: 'packs/production',
      by: 'simulate',
    });
    const worker = (sim.worker ??= await SimWorker.create(env, bundle, world));
    const rolloutId = `sim-${scenario.name}-s${seed}`.slice(0, 100);
    const workflowId = `${rolloutId}-${process.pid}-${++runs}`;
    const request = {
      rolloutId,
      candidate: { pack: 'packs/candidate' },
      fleet: { manifest: 'fleet.json', timeScale: scenario.timeScale },
      policy: policy as PolicyInput,
      requestedBy: 'simulate',
    };
    const result = await worker.serve(world, async () => {
      const handle = await env.client.workflow.start(WORKFLOW_TYPE, {
        taskQueue: worker.taskQueue,
        workflowId,
        args: [request],
      });
      try {
        if (policy.waves.some((w) => w.approval) || policy.promotion?.approval)
          await approveWaveGates(env, handle, policy);
        return (await handle.result()) as RolloutResult;
      } catch (err) {
        await handle.terminate('simulation failed').catch(() => undefined);
        throw err;
      }
    });
    const report = JSON.parse(readFileSync(result.reportPath!, 'utf8')) as {
      decisions: DecisionLogEntry[];
      startedAt: string;
      finishedAt: string;
    };
    const startMs = Date.parse(report.startedAt);
    const toSim = (iso: string) => startMs + (Date.parse(iso) - startMs) * scenario.timeScale;
    const endMs = toSim(report.finishedAt);
    const skuOf = new Map(fleet.cohorts.map((c) => [c.name, c.sku]));
    const truthOf = new Map(truth.map((t) => [t.cohort, t.truth]));
    const cohorts = result.cohorts.map((c): CohortOutcome => {
      const entry = settlingEntry(report.decisions, c.cohort, skuOf.get(c.cohort)!);
      const at = entry ? (entry.dataAsOf ? Date.parse(entry.dataAsOf) : toSim(entry.at)) : endMs;
      const t = truthOf.get(c.cohort) ?? 'neutral';
      const by = causeOf(entry);
      return {
        cohort: c.cohort,
        sku: skuOf.get(c.cohort)!,
        decision: c.state,
        truth: t,
        decidedAt: new Date(at).toISOString(),
        decidedAfterHours: round((at - startMs) / 3_600_000, 2),
        cause: by,
        check: check(c.state, t, by),
        headline: c.headline,
      };
    });
    return {
      scenario: scenario.name,
      seed,
      rolloutId,
      outcome: result.outcome,
      reason: result.reason,
      simulatedStart: new Date(startMs).toISOString(),
      simulatedEnd: new Date(endMs).toISOString(),
      simulatedHours: round((endMs - startMs) / 3_600_000, 2),
      wallMs: Date.now() - started,
      cohorts,
    };
  } finally {
    if (world) await world.close();
    else rmSync(dataDir, { recursive: true, force: true });
    if (!shared) await sim.worker?.close();
  }
}

function profiled<T extends object>(acts: T): T {
  if (!process.env.FLEETGATE_SIM_PROFILE) return acts;
  return Object.fromEntries(
    Object.entries(acts).map(([k, f]) => [
      k,
      async (...args: unknown[]) => {
        const t = Date.now();
        try {
          return await (f as (...a: unknown[]) => Promise<unknown>)(...args);
        } finally {
          console.error(`activity ${k}: ${Date.now() - t} ms`);
        }
      },
    ]),
  ) as T;
}

/**
 * Approves each wave gate and the promotion gate of the policy as soon as it opens, by as many of the
 * reviewers who may approve it (the initiator left out where the gate excludes it) as it needs.
 */
async function approveWaveGates(
  env: TestWorkflowEnvironment,
  handle: Awaited<ReturnType<TestWorkflowEnvironment['client']['workflow']['start']>>,
  policy: Policy,
): Promise<void> {
  const shortest = Math.min(...policy.waves.map((w) => parseDuration(w.hold)! / w.looks));
  const step = Math.max(60_000, Math.min(3_600_000, Math.floor(shortest / 2)));
  const approved = new Set<string>();
  for (;;) {
    const s = await handle.query(statusQuery);
    if (s.phase === 'done' || s.outcome) return;
    const gate = s.pendingGate;
    const ours = gate?.kind === 'wave' || gate?.kind === 'promotion';
    if (gate && ours && !approved.has(`${gate.gate}@${gate.openedAt}`)) {
      approved.add(`${gate.gate}@${gate.openedAt}`);
      for (const reviewer of (gate.reviewers ?? policy.reviewers).slice(0, gate.required)) {
        await handle.executeUpdate(approveUpdate, {
          args: [{ gate: gate.gate, reviewer, comment: 'approved by fleetgate simulate' }],
        });
      }
      continue;
    }
    await env.sleep(step);
  }
}

/**
 * The decision-log entry that settled a cohort: its last entry (promoted, rollback, withdraw, shadow
 * fail, ...); without one (a bench failure is logged per SKU), the last failing entry naming its SKU or
 * the cohort; else none (the end of the rollout).
 */
function settlingEntry(log: DecisionLogEntry[], cohort: string, sku: string): DecisionLogEntry | undefined {
  for (let i = log.length - 1; i >= 0; i--) if (log[i]!.cohort === cohort) return log[i];
  const names = new RegExp(`(^|[^a-z0-9/._-])(${escape(sku)}|${escape(cohort)})([^a-z0-9/._-]|$)`);
  for (let i = log.length - 1; i >= 0; i--) {
    const e = log[i]!;
    if (/fail|reject|abort|revert/.test(e.action) && names.test(e.reason)) return e;
  }
  return undefined;
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

function causeOf(e: DecisionLogEntry | undefined): CohortOutcome['cause'] {
  if (!e) return 'other';
  if (e.phase === 'bench') return 'bench';
  if (e.phase === 'shadow') return 'shadow';
  if (/installs failed/.test(e.reason)) return 'delivery';
  if (e.by || /escalation rejected/.test(e.reason)) return 'reviewer';
  return e.metrics && e.metrics.length > 0 ? 'analysis' : 'other';
}

function check(
  decision: CohortState,
  truth: TruthLabel,
  cause: CohortOutcome['cause'],
): CohortOutcome['check'] {
  if (decision === 'promoted') return truth === 'regressed' ? 'missed' : 'ok';
  if (truth === 'regressed') return 'ok';
  return decision === 'rolled_back' && cause === 'analysis' ? 'false-alarm' : 'n/a';
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** The ground truth of a scenario: independent of the seed and of the rollout. */
export async function scenarioTruth(loaded: LoadedScenario): Promise<CohortTruth[]> {
  const dataDir = mkdtempSync(join(tmpdir(), 'fleetgate-truth-'));
  const fleet = scenarioFleet(loaded.scenario);
  cpSync(loaded.productionPack, join(dataDir, 'packs', 'production'), { recursive: true });
  cpSync(loaded.candidatePack, join(dataDir, 'packs', 'candidate'), { recursive: true });
  writeFileSync(join(dataDir, 'fleet.json'), JSON.stringify(fleet, null, 2));
  trustFixtureSigner(dataDir);
  const services = await openServices(dataDir, dataDir, { kind: 'simulated' });
  try {
    const registry = createRegistryActivities(services);
    const production = await registry.registerCandidate({ rolloutId: 'truth', packDir: 'packs/production' });
    const candidate = await registry.registerCandidate({ rolloutId: 'truth', packDir: 'packs/candidate' });
    return await groundTruth({
      runner: services.runner,
      fleet,
      policy: loaded.policy,
      production: { digest: production.digest, version: production.version },
      candidate: { digest: candidate.digest, version: candidate.version },
      frames: loaded.scenario.truth.frames,
      key: `truth|${loaded.scenario.name}`,
    });
  } finally {
    await services.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

/** `fleetgate simulate` without the printing: one seed. */
export async function simulate(file: string, opts: SimulateOptions = {}): Promise<SimulationReport> {
  const multi = await simulateSeeds(file, { ...opts, seeds: 1 });
  const [run] = multi.runs;
  return { ...run!, description: multi.description, policy: multi.policy, truth: multi.truth };
}

/** `fleetgate simulate --seeds N` without the printing. */
export async function simulateSeeds(
  file: string,
  opts: SimulateOptions = {},
): Promise<MultiSimulationReport> {
  const loaded = loadScenario(file, opts.policyFile);
  const first = opts.seed ?? loaded.scenario.seed;
  const n = opts.seeds ?? 1;
  if (!(Number.isInteger(n) && n >= 1))
    throw new ScenarioError(`--seeds must be a whole number ≥ 1 (got ${n})`);
  const seeds = Array.from({ length: n }, (_, i) => first + i);
  const started = Date.now();
  const truth = await scenarioTruth(loaded);
  const env = opts.env ?? (await startTestServer());
  try {
    const bundle = await getWorkflowBundle();
    // One after another: concurrent rollouts on one time-skipping server were slower in total (the
    // server skips time only when every workflow waits), and the machine has few cores to share.
    const results: SimulationRun[] = [];
    const sim: { worker?: SimWorker } = {};
    try {
      for (const seed of seeds) {
        const r = await simulateOnce(env, bundle, loaded, seed, truth, sim);
        results.push(r);
        opts.progress?.(
          `seed ${seed}: ${r.outcome}; ${r.cohorts.map((c) => `${c.cohort} ${c.decision}`).join(', ')} (${(r.wallMs / 1000).toFixed(1)} s)`,
        );
      }
    } finally {
      await sim.worker?.close();
    }
    const decisions: MultiSimulationReport['summary']['decisions'] = {};
    for (const r of results) {
      for (const c of r.cohorts) {
        const d = (decisions[c.cohort] ??= {});
        d[c.decision] = (d[c.decision] ?? 0) + 1;
      }
    }
    const withRollback = results.filter((r) => r.cohorts.some((c) => c.decision === 'rolled_back')).length;
    return {
      scenario: loaded.scenario.name,
      description: loaded.scenario.description,
      policy: loaded.policy.name,
      seeds,
      runs: results,
      truth,
      summary: {
        runs: n,
        runsWithRollback: withRollback,
        rollbackShare: withRollback / n,
        alpha: loaded.policy.analysis.alpha,
        decisions,
        wallMs: Date.now() - started,
      },
    };
  } finally {
    if (!opts.env) await env.teardown();
  }
}

// ---- printing -----------------------------------------------------------------------------------

/** "3d 4h" from hours. */
export function formatHours(h: number): string {
  const d = Math.floor(h / 24);
  const rest = Math.round(h - d * 24);
  return d > 0 ? `${d}d ${rest}h` : `${rest}h`;
}

/** The short table of one run. */
export function renderRun(r: SimulationReport): string {
  const lines = [
    `scenario ${r.scenario} (seed ${r.seed}, policy ${r.policy}): ${r.outcome} after ${formatHours(r.simulatedHours)} simulated, ${(r.wallMs / 1000).toFixed(1)} s wall`,
    `  ${r.reason}`,
    '',
    'cohort            sku     decision      truth       decided after   by          check',
  ];
  for (const c of r.cohorts) {
    lines.push(
      `${c.cohort.padEnd(18)}${c.sku.padEnd(8)}${c.decision.padEnd(14)}${c.truth.padEnd(12)}${formatHours(c.decidedAfterHours).padEnd(16)}${c.cause.padEnd(12)}${c.check}`,
    );
  }
  lines.push('', 'ground truth (offline evaluation):');
  for (const t of r.truth) lines.push(`  ${t.cohort}: ${t.reason}`);
  return lines.join('\n');
}

/** The short table of many seeds. */
export function renderMulti(m: MultiSimulationReport): string {
  const s = m.summary;
  const lines = [
    `scenario ${m.scenario} (policy ${m.policy}), seeds ${m.seeds[0]}..${m.seeds[m.seeds.length - 1]}: ${(s.wallMs / 1000).toFixed(1)} s wall`,
    `runs with any rollback: ${s.runsWithRollback}/${s.runs} = ${(s.rollbackShare * 100).toFixed(1)}% (alpha ${s.alpha})`,
    '',
    'cohort            truth       decisions',
  ];
  for (const t of m.truth) {
    const d = s.decisions[t.cohort] ?? {};
    lines.push(
      `${t.cohort.padEnd(18)}${t.truth.padEnd(12)}${Object.entries(d)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')}`,
    );
  }
  return lines.join('\n');
}
