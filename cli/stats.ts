/**
 * `fleetgate stats`: the statistics engine from the command line, for planning a policy and checking
 * its numbers without a server: group-sequential boundaries, sample sizes, the exact rate-ratio test,
 * and a seeded simulation of false alarms, power and samples to a decision for each sequential design.
 *
 * A thin shell over the pure modules of policies/: it parses and checks flags, calls them and prints
 * (a short table, or JSON with --json). It never touches Temporal, the network or the data directory.
 * A bad flag gives one line naming the flag, the value and what is allowed, and exit code 2.
 */
import { parseArgs } from 'node:util';
import { makeRng } from '../policies/rng';
import { MAX_LOOKS, boundaries, type Design } from '../policies/gsd';
import { sampleSize } from '../policies/planning';
import { rateRatioTest } from '../policies/rates';
import { normalQuantile } from '../policies/special';
import { diffOfProportions, msprt } from '../policies/stats';

/** Where the command writes; the process's stdout and stderr unless a caller captures them. */
export interface StatsIo {
  out(text: string): void;
  err(text: string): void;
}

const PROCESS_IO: StatsIo = {
  out: (text) => void process.stdout.write(text.endsWith('\n') ? text : `${text}\n`),
  err: (text) => void process.stderr.write(text.endsWith('\n') ? text : `${text}\n`),
};

/** A mistake in how the command was called: exit code 2. */
class StatsUsageError extends Error {
  override name = 'StatsUsageError';
}

const GSD_DESIGNS = ['obf', 'pocock', 'ld-obf', 'ld-pocock'] as const;
const SIM_DESIGNS = [...GSD_DESIGNS, 'msprt', 'naive'] as const;
type SimDesign = (typeof SIM_DESIGNS)[number];
const KINDS = ['proportion', 'mean', 'rate'] as const;

/** Simulation constants: a binary metric with this error rate, a look every LOOK_SIZE samples per arm. */
export const SIM_BASELINE = 0.1;
export const SIM_LOOK_SIZE = 100;
const SIM_TAU = 0.05;
const MAX_RUNS = 1_000_000;

// ---- help ---------------------------------------------------------------------------------------

const USAGE = `Usage: fleetgate stats <command> [options] [--json]      (fleetgate stats <command> --help)

  boundaries     group-sequential boundaries on the Z scale and the alpha spent by each look
  sample-size    samples per arm to detect a minimum effect with a given power
  rate-ratio     exact test and interval for the ratio of two event rates with exposure
  simulate       seeded simulation: false-alarm rate or power, and samples to a decision

Pure computations: no server, no data directory. --json prints one JSON object.`;

const HELP: Record<string, string> = {
  boundaries: `Usage: fleetgate stats boundaries --design D --looks K --alpha A --sides 1|2 [--info t1,...,tK] [--json]

  --design D     obf | pocock (boundaries for K planned looks) or ld-obf | ld-pocock (Lan-DeMets
                 alpha spending, O'Brien-Fleming-type or Pocock-type)
  --looks K      number of looks, 1 to ${MAX_LOOKS}
  --alpha A      total type I error, in (0, 0.5] (both sides together when --sides 2)
  --sides 1|2    one-sided (reject when Z >= b) or two-sided (reject when |Z| >= b)
  --info LIST    information fractions of the looks, increasing, in (0, 1]; k/K unless given
JSON: {"boundaries":[b1,...],"cumulativeAlpha":[a1,...]}`,
  'sample-size': `Usage: fleetgate stats sample-size --kind proportion|mean|rate --baseline B --mde D [--sd S]
                                  --alpha A --power W [--sides 1|2] [--json]

  --kind         proportion (error rate), mean (latency, needs --sd) or rate (events per unit exposure)
  --baseline B   production's value: a proportion in (0, 1), a mean, or a rate > 0
  --mde D        minimum detectable effect, candidate minus production (not 0)
  --sd S         standard deviation per observation, for --kind mean only
  --alpha A      type I error, in (0, 0.5]
  --power W      power at the minimum effect, in (0, 1)
  --sides 1|2    one- or two-sided test (default 2)
JSON: {"nPerArm":N}`,
  'rate-ratio': `Usage: fleetgate stats rate-ratio --events X1,X2 --exposure T1,T2 [--alpha A] [--sides 1|2] [--json]

Exact conditional test of the rate ratio (X1/T1) / (X2/T2), candidate over production, with its
Clopper-Pearson interval.
  --events X1,X2     event counts, candidate then production: integers >= 0
  --exposure T1,T2   exposures (vehicle-hours, say): numbers > 0
  --alpha A          level, in (0, 0.5] (default 0.05)
  --sides 1|2        2 (default): R != 1; 1: harm, R > 1
JSON: {"rateRatio":R,"ci":[lo,hi],"p":P}   (rateRatio null without events; ${Number.MAX_VALUE} stands for
an unbounded end)`,
  simulate: `Usage: fleetgate stats simulate --design D (--aa | --effect E) --runs N [--looks K] [--alpha A]
                               [--sides 1|2] [--seed S] [--json]

Simulates a two-arm binary metric with production error rate ${SIM_BASELINE} and a look every ${SIM_LOOK_SIZE} samples
per arm, up to ${SIM_LOOK_SIZE}*K, and stops at the first look that rejects "no difference".
  --design D     obf | pocock | ld-obf | ld-pocock: the design's boundaries on the Z statistic of the
                 difference of proportions (pooled variance); msprt: the engine's mSPRT (mixture sd
                 ${SIM_TAU}); naive: a fixed-sample z-test repeated at every look (inflates false alarms)
  --aa           no effect (A/A): reports the false-alarm rate
  --effect E     candidate error rate ${SIM_BASELINE} + E: reports the power
  --runs N       simulated experiments, 1 to ${MAX_RUNS}
  --looks K      looks, 1 to ${MAX_LOOKS} (default 10)
  --alpha A      level, in (0, 0.5] (default 0.05)
  --sides 1|2    2 (default): any difference; 1: the candidate is worse
  --seed S       seed of the random numbers (default "fleetgate"); the same seed gives the same result
Samples to a decision: samples per arm at the look that rejected, or ${SIM_LOOK_SIZE}*K when none did.
JSON: {"design":..,"runs":..,"looks":..,"alpha":..,"sides":..,"effect":..,"falseAlarmRate" or "power":..,
       "meanSamplesPerArm":..,"medianSamplesPerArm":..}`,
};

// ---- flags --------------------------------------------------------------------------------------

type Values = Record<string, string | boolean | undefined>;

function parse(sub: string, args: string[], options: Record<string, { type: 'string' | 'boolean' }>) {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: { help: { type: 'boolean', short: 'h' }, json: { type: 'boolean' }, ...options },
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    const message = (err as Error).message;
    const first = message.split(/\.\s|\n/)[0];
    const dash = /Option '(--[\w-]+)' argument is ambiguous/.exec(message);
    if (dash)
      throw new StatsUsageError(`${dash[1]}: write a value that starts with "-" as ${dash[1]}=-VALUE`);
    throw new StatsUsageError(`${first} (see "fleetgate stats ${sub} --help")`);
  }
  if (parsed.positionals.length > 0) {
    throw new StatsUsageError(
      `"stats ${sub}" takes no arguments, got "${parsed.positionals[0]}" (see "fleetgate stats ${sub} --help")`,
    );
  }
  return parsed.values as Values;
}

function bad(flag: string, value: string, allowed: string): StatsUsageError {
  return new StatsUsageError(`--${flag} "${value}" is not allowed: ${allowed}`);
}

function raw(values: Values, flag: string, sub: string, required: boolean): string | undefined {
  const v = values[flag];
  if (typeof v === 'string') return v;
  if (required)
    throw new StatsUsageError(`"stats ${sub}" needs --${flag} (see "fleetgate stats ${sub} --help")`);
  return undefined;
}

/** A finite number, or undefined when the flag is absent and not required. */
function num(
  values: Values,
  flag: string,
  sub: string,
  opts: { required?: boolean; allowed: string; ok: (x: number) => boolean },
): number | undefined {
  const v = raw(values, flag, sub, opts.required ?? false);
  if (v === undefined) return undefined;
  const x = v.trim() === '' ? NaN : Number(v);
  if (!Number.isFinite(x) || !opts.ok(x)) throw bad(flag, v, opts.allowed);
  return x;
}

function oneOf<T extends string>(
  values: Values,
  flag: string,
  sub: string,
  choices: readonly T[],
  fallback?: T,
): T {
  const v = raw(values, flag, sub, fallback === undefined);
  if (v === undefined) return fallback!;
  if (!(choices as readonly string[]).includes(v)) throw bad(flag, v, `use one of ${choices.join(', ')}`);
  return v as T;
}

function list(values: Values, flag: string, sub: string, required: boolean): number[] | undefined {
  const v = raw(values, flag, sub, required);
  if (v === undefined) return undefined;
  return v.split(',').map((part) => (part.trim() === '' ? NaN : Number(part)));
}

const ALPHA = { allowed: 'a number in (0, 0.5]', ok: (x: number) => x > 0 && x <= 0.5 };
const SIDES = { allowed: 'use 1 or 2', ok: (x: number) => x === 1 || x === 2 };

function sidesOf(values: Values, sub: string, required: boolean): 1 | 2 {
  return (num(values, 'sides', sub, { ...SIDES, required }) ?? 2) as 1 | 2;
}

function looksOf(values: Values, sub: string, required: boolean): number | undefined {
  return num(values, 'looks', sub, {
    required,
    allowed: `an integer from 1 to ${MAX_LOOKS}`,
    ok: (x) => Number.isInteger(x) && x >= 1 && x <= MAX_LOOKS,
  });
}

// ---- formatting ---------------------------------------------------------------------------------

function fmt(x: number | null, digits = 4): string {
  if (x === null) return '-';
  if (x >= Number.MAX_VALUE) return 'inf';
  if (x !== 0 && (Math.abs(x) < 1e-4 || Math.abs(x) >= 1e6)) return x.toExponential(2);
  return x.toFixed(digits);
}

function tableOf(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padStart(widths[i]!))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

// ---- subcommands --------------------------------------------------------------------------------

function boundariesCommand(args: string[], io: StatsIo): number {
  const sub = 'boundaries';
  const values = parse(sub, args, {
    design: { type: 'string' },
    looks: { type: 'string' },
    alpha: { type: 'string' },
    sides: { type: 'string' },
    info: { type: 'string' },
  });
  if (values.help) return help(sub, io);
  const design = oneOf(values, 'design', sub, GSD_DESIGNS);
  const looks = looksOf(values, sub, true)!;
  const alpha = num(values, 'alpha', sub, { ...ALPHA, required: true })!;
  const sides = sidesOf(values, sub, true);
  const info = list(values, 'info', sub, false);
  if (info) {
    const text = String(values.info);
    if (info.length !== looks) throw bad('info', text, `give ${looks} fractions, one per look`);
    const valid = info.every(
      (t, i) => Number.isFinite(t) && t > 0 && t <= 1 && (i === 0 || t > info[i - 1]!),
    );
    if (!valid) throw bad('info', text, 'fractions must increase strictly and lie in (0, 1]');
  }
  const result = boundaries({ design, looks, alpha, sides, ...(info ? { info } : {}) });
  if (values.json) {
    io.out(JSON.stringify({ boundaries: result.boundaries, cumulativeAlpha: result.cumulativeAlpha }));
    return 0;
  }
  io.out(
    `${design}, ${looks} look(s), alpha ${alpha} ${sides === 2 ? 'two-sided (reject |Z| >= b)' : 'one-sided (reject Z >= b)'}`,
  );
  io.out(
    tableOf(
      ['look', 'info', 'boundary', 'cumulative alpha'],
      result.boundaries.map((b, k) => [
        String(k + 1),
        fmt(result.info[k] ?? null, 3),
        fmt(b, 3),
        fmt(result.cumulativeAlpha[k] ?? null, 5),
      ]),
    ),
  );
  return 0;
}

function sampleSizeCommand(args: string[], io: StatsIo): number {
  const sub = 'sample-size';
  const values = parse(sub, args, {
    kind: { type: 'string' },
    baseline: { type: 'string' },
    mde: { type: 'string' },
    sd: { type: 'string' },
    alpha: { type: 'string' },
    power: { type: 'string' },
    sides: { type: 'string' },
  });
  if (values.help) return help(sub, io);
  const kind = oneOf(values, 'kind', sub, KINDS);
  const baselineRule =
    kind === 'proportion'
      ? { allowed: 'a proportion in (0, 1)', ok: (x: number) => x > 0 && x < 1 }
      : kind === 'rate'
        ? { allowed: 'a rate > 0', ok: (x: number) => x > 0 }
        : { allowed: 'a finite number', ok: () => true };
  const baseline = num(values, 'baseline', sub, { ...baselineRule, required: true })!;
  const mdeRule =
    kind === 'proportion'
      ? {
          allowed: `a difference other than 0 with ${baseline} + mde in (0, 1)`,
          ok: (x: number) => x !== 0 && baseline + x > 0 && baseline + x < 1,
        }
      : kind === 'rate'
        ? {
            allowed: `a difference other than 0 with ${baseline} + mde > 0`,
            ok: (x: number) => x !== 0 && baseline + x > 0,
          }
        : { allowed: 'a number other than 0', ok: (x: number) => x !== 0 };
  const mde = num(values, 'mde', sub, { ...mdeRule, required: true })!;
  const sd = num(values, 'sd', sub, {
    required: kind === 'mean',
    allowed: 'a standard deviation > 0',
    ok: (x) => x > 0,
  });
  if (sd !== undefined && kind !== 'mean') throw bad('sd', String(values.sd), 'only with --kind mean');
  const alpha = num(values, 'alpha', sub, { ...ALPHA, required: true })!;
  const power = num(values, 'power', sub, {
    required: true,
    allowed: 'a probability in (0, 1)',
    ok: (x) => x > 0 && x < 1,
  })!;
  const sides = sidesOf(values, sub, false);
  const result = sampleSize({
    kind,
    baseline,
    mde,
    ...(sd !== undefined ? { sd } : {}),
    alpha,
    power,
    sides,
  });
  if (!result)
    throw new StatsUsageError(
      'no sample size exists for these values (see "fleetgate stats sample-size --help")',
    );
  if (values.json) {
    io.out(JSON.stringify({ nPerArm: result.nPerArm }));
    return 0;
  }
  const unit = kind === 'rate' ? ' (units of exposure)' : '';
  io.out(
    `${kind}: baseline ${baseline}, minimum effect ${mde}${sd !== undefined ? `, sd ${sd}` : ''}, alpha ${alpha} ` +
      `${sides === 2 ? 'two-sided' : 'one-sided'}, power ${power}`,
  );
  io.out(`per arm${unit}: ${result.nPerArm}`);
  return 0;
}

function rateRatioCommand(args: string[], io: StatsIo): number {
  const sub = 'rate-ratio';
  const values = parse(sub, args, {
    events: { type: 'string' },
    exposure: { type: 'string' },
    alpha: { type: 'string' },
    sides: { type: 'string' },
  });
  if (values.help) return help(sub, io);
  const events = list(values, 'events', sub, true)!;
  if (events.length !== 2 || !events.every((x) => Number.isInteger(x) && x >= 0)) {
    throw bad('events', String(values.events), 'two integers >= 0, candidate then production, as X1,X2');
  }
  const exposure = list(values, 'exposure', sub, true)!;
  if (exposure.length !== 2 || !exposure.every((t) => Number.isFinite(t) && t > 0)) {
    throw bad('exposure', String(values.exposure), 'two numbers > 0, candidate then production, as T1,T2');
  }
  const alpha = num(values, 'alpha', sub, ALPHA) ?? 0.05;
  const sides = sidesOf(values, sub, false);
  const result = rateRatioTest({
    events: [events[0]!, events[1]!],
    exposure: [exposure[0]!, exposure[1]!],
    alpha,
    sides,
  });
  if (!result) throw new StatsUsageError('the rate-ratio test cannot use these counts and exposures');
  if (values.json) {
    io.out(JSON.stringify({ rateRatio: result.rateRatio, ci: result.ci, p: result.p }));
    return 0;
  }
  io.out(
    `rates: candidate ${fmt(events[0]! / exposure[0]!)}, production ${fmt(events[1]! / exposure[1]!)} per unit exposure`,
  );
  io.out(
    `rate ratio ${fmt(result.rateRatio, 3)}  ${Math.round((1 - alpha) * 1000) / 10}% CI [${fmt(result.ci[0], 3)}, ${fmt(result.ci[1], 3)}]  ` +
      `p = ${fmt(result.p)} (${sides === 2 ? 'two-sided' : 'one-sided, harm'})`,
  );
  return 0;
}

export interface SimulationInput {
  design: SimDesign;
  /** Absolute increase of the candidate's error rate over SIM_BASELINE; 0 for A/A. */
  effect: number;
  runs: number;
  looks: number;
  alpha: number;
  sides: 1 | 2;
  seed: string | number;
}

export interface SimulationResult {
  /** Share of runs that rejected at some look. */
  rejectionRate: number;
  /** Per run, samples per arm at the rejecting look, or SIM_LOOK_SIZE·looks when none rejected. */
  meanSamplesPerArm: number;
  medianSamplesPerArm: number;
}

/**
 * The simulation behind `stats simulate`. Every run draws its looks from one seeded stream in the same
 * order whatever the design, so two designs with the same seed see the same data.
 */
export function simulate(input: SimulationInput): SimulationResult {
  const { design, effect, runs, looks, alpha, sides } = input;
  const rng = makeRng(input.seed);
  const pProd = SIM_BASELINE;
  const pCand = SIM_BASELINE + effect;
  // Z boundaries per look for the group-sequential designs and the naive test.
  let zBounds: number[] | undefined;
  if (design === 'naive') {
    const z = normalQuantile(1 - alpha / sides);
    zBounds = Array.from({ length: looks }, () => z);
  } else if (design !== 'msprt') {
    zBounds = boundaries({ design: design as Design, looks, alpha, sides }).boundaries;
  }
  const samples: number[] = [];
  let rejections = 0;
  for (let run = 0; run < runs; run++) {
    let xc = 0;
    let xp = 0;
    let decidedAt = looks;
    let rejected = false;
    for (let k = 1; k <= looks; k++) {
      for (let i = 0; i < SIM_LOOK_SIZE; i++) {
        if (rng() < pCand) xc++;
        if (rng() < pProd) xp++;
      }
      const n = k * SIM_LOOK_SIZE;
      if (rejects(design, zBounds?.[k - 1], xc, xp, n, alpha, sides)) {
        rejected = true;
        decidedAt = k;
        break;
      }
    }
    if (rejected) rejections++;
    samples.push(decidedAt * SIM_LOOK_SIZE);
  }
  samples.sort((a, b) => a - b);
  const mid = Math.floor(samples.length / 2);
  const median = samples.length % 2 === 1 ? samples[mid]! : (samples[mid - 1]! + samples[mid]!) / 2;
  return {
    rejectionRate: rejections / runs,
    meanSamplesPerArm: samples.reduce((a, b) => a + b, 0) / runs,
    medianSamplesPerArm: median,
  };
}

/** Whether one look rejects "no difference", candidate xc of n against production xp of n. */
function rejects(
  design: SimDesign,
  bound: number | undefined,
  xc: number,
  xp: number,
  n: number,
  alpha: number,
  sides: 1 | 2,
): boolean {
  if (design === 'msprt') {
    const diff = diffOfProportions({ x: xc, n }, { x: xp, n });
    if (!diff) return false;
    const test = msprt({ estimate: diff.estimate, variance: diff.variance, tau: SIM_TAU, alpha });
    return test.lambda >= test.boundary && (sides === 2 || diff.estimate > 0);
  }
  const pooled = (xc + xp) / (2 * n);
  const variance = (pooled * (1 - pooled) * 2) / n;
  if (!(variance > 0) || bound === undefined) return false;
  const z = (xc / n - xp / n) / Math.sqrt(variance);
  return sides === 2 ? Math.abs(z) >= bound : z >= bound;
}

function simulateCommand(args: string[], io: StatsIo): number {
  const sub = 'simulate';
  const values = parse(sub, args, {
    design: { type: 'string' },
    aa: { type: 'boolean' },
    effect: { type: 'string' },
    runs: { type: 'string' },
    looks: { type: 'string' },
    alpha: { type: 'string' },
    sides: { type: 'string' },
    seed: { type: 'string' },
  });
  if (values.help) return help(sub, io);
  const design = oneOf(values, 'design', sub, SIM_DESIGNS);
  const hasEffect = typeof values.effect === 'string';
  if (Boolean(values.aa) === hasEffect) {
    throw new StatsUsageError(
      `"stats simulate" needs exactly one of --aa or --effect E (see "fleetgate stats simulate --help")`,
    );
  }
  const effect = hasEffect
    ? num(values, 'effect', sub, {
        allowed: `a change of the error rate with ${SIM_BASELINE} + E in [0, 1]`,
        ok: (x) => SIM_BASELINE + x >= 0 && SIM_BASELINE + x <= 1,
      })!
    : 0;
  const runs = num(values, 'runs', sub, {
    required: true,
    allowed: `an integer from 1 to ${MAX_RUNS}`,
    ok: (x) => Number.isInteger(x) && x >= 1 && x <= MAX_RUNS,
  })!;
  const looks = looksOf(values, sub, false) ?? 10;
  const alpha = num(values, 'alpha', sub, ALPHA) ?? 0.05;
  const sides = sidesOf(values, sub, false);
  const seedText = raw(values, 'seed', sub, false) ?? 'fleetgate';
  const seed = /^\d+$/.test(seedText) ? Number(seedText) : seedText;
  const result = simulate({ design, effect, runs, looks, alpha, sides, seed });
  const rateKey = values.aa ? 'falseAlarmRate' : 'power';
  if (values.json) {
    io.out(
      JSON.stringify({
        design,
        runs,
        looks,
        alpha,
        sides,
        effect,
        [rateKey]: result.rejectionRate,
        meanSamplesPerArm: result.meanSamplesPerArm,
        medianSamplesPerArm: result.medianSamplesPerArm,
      }),
    );
    return 0;
  }
  io.out(
    `${design}: ${looks} look(s) of ${SIM_LOOK_SIZE} per arm, error rate ${SIM_BASELINE} vs ${fmt(SIM_BASELINE + effect, 3)}, ` +
      `alpha ${alpha} ${sides === 2 ? 'two-sided' : 'one-sided'}, ${runs} runs, seed ${seedText}`,
  );
  io.out(
    tableOf(
      [values.aa ? 'false-alarm rate' : 'power', 'mean samples/arm', 'median samples/arm'],
      [[fmt(result.rejectionRate), fmt(result.meanSamplesPerArm, 1), fmt(result.medianSamplesPerArm, 0)]],
    ),
  );
  return 0;
}

// ---- dispatch -----------------------------------------------------------------------------------

function help(sub: string | undefined, io: StatsIo): number {
  io.out(sub && HELP[sub] ? HELP[sub] : USAGE);
  return 0;
}

const SUBCOMMANDS: Record<string, (args: string[], io: StatsIo) => number> = {
  boundaries: boundariesCommand,
  'sample-size': sampleSizeCommand,
  'rate-ratio': rateRatioCommand,
  simulate: simulateCommand,
};

/**
 * Runs `fleetgate stats <args>`; returns the exit code: 0, 2 for a usage error (one line on `io.err`),
 * 1 for anything else. Never throws.
 */
export function runStats(args: string[], io: StatsIo = PROCESS_IO): number {
  const [sub, ...rest] = args;
  try {
    if (sub === undefined) {
      io.err(USAGE);
      return 2;
    }
    if (sub === '--help' || sub === '-h' || sub === 'help') return help(rest[0], io);
    const run = SUBCOMMANDS[sub];
    if (!run) {
      throw new StatsUsageError(
        `unknown command "stats ${sub}": use one of ${Object.keys(SUBCOMMANDS).join(', ')} (see "fleetgate stats --help")`,
      );
    }
    return run(rest, io);
  } catch (err) {
    if (err instanceof StatsUsageError) {
      io.err(`fleetgate: ${err.message}`);
      return 2;
    }
    if (process.env.FLEETGATE_DEBUG === '1') io.err(String((err as Error).stack ?? err));
    io.err(`fleetgate: stats ${sub}: ${(err as Error).message ?? String(err)}`);
    return 1;
  }
}

/** The `stats` entry of the command table of cli/main.ts. */
export async function statsCommand(args: string[]): Promise<number> {
  return runStats(args);
}
