/**
 * Sample size, power and rollout planning: how many observations (or how much exposure) per arm a
 * two-arm comparison needs, the power a given size has, and, for a policy and a fleet, how many
 * labeled events each cohort's arms reach by the end of each wave, the smallest error-rate harm the
 * gate can detect in that time, and warnings when the policy cannot detect its own margin.
 *
 * Normal approximations throughout (stated per formula); planning is an estimate, the gate's tests
 * stay exact or always-valid. Pure and deterministic: it takes parsed objects, never reads files. It
 * must never import node modules or third-party values, read the clock or a random source, do I/O, or
 * put NaN or ±Infinity in a result (a quantity that does not exist is null). Invalid input to
 * `sampleSize` and `power` gives undefined.
 */
import { parseDuration } from './duration';
import { familyLevel } from './engine';
import type { FleetManifest, Policy } from './schema';
import { normalQuantile, standardNormalCdf } from './special';

export type PlanKind = 'proportion' | 'mean' | 'rate';

export interface DesignInput {
  /**
   * proportion: error rates (baseline p₁, alternative p₂ = p₁ + mde); mean: a continuous metric with
   * standard deviation `sd`; rate: events per unit of exposure (baseline λ₁, alternative λ₂ = λ₁ + mde).
   */
  kind: PlanKind;
  /** Production's value: a proportion in (0, 1), a rate > 0, or (for means) any number. */
  baseline: number;
  /** The difference to detect, in the metric's units (absolute, not relative); not 0. */
  mde: number;
  /** Standard deviation of one observation; required for 'mean'. */
  sd?: number;
  /** Level of the test. */
  alpha: number;
  /** Two-sided (2, default) or one-sided (1) test. */
  sides?: 1 | 2;
  /**
   * For 'proportion': 'pooled' (default) puts the pooled rate p̄ = (p₁ + p₂)/2 under the null, as R's
   * `power.prop.test` and Fleiss do; 'unpooled' uses p₁q₁ + p₂q₂ for both terms.
   */
  variance?: 'pooled' | 'unpooled';
}

export interface SampleSizeInput extends DesignInput {
  /** Wanted power, in (0, 1). */
  power: number;
}

export interface PowerInput extends DesignInput {
  /** Observations per arm; for 'rate', exposure per arm. */
  nPerArm: number;
}

export interface SampleSizeResult {
  /** Observations per arm, rounded up; for 'rate', the exposure per arm (not rounded). */
  nPerArm: number;
  /** The unrounded solution of the formula. */
  exact: number;
  /** For 'rate': expected events per arm at that exposure, [baseline arm, alternative arm]. */
  expectedEvents?: [number, number];
}

interface Design {
  /** z quantile for the level: z_{1−α/sides}. */
  zAlpha: number;
  /** Effect size terms: n = ((zα·null + zβ·alt) / effect)², power = Φ((√n·effect − zα·null)/alt). */
  effect: number;
  nullSd: number;
  altSd: number;
}

/**
 * Every kind reduces to a standardized difference: with n per arm the statistic has mean √n·effect
 * and standard deviation altSd under the alternative, and the critical value is zα·nullSd, so
 *
 *   n = ((zα·nullSd + zβ·altSd) / effect)²   and   power = Φ((√n·effect − zα·nullSd) / altSd).
 *
 * proportion, pooled:   effect = |p₂ − p₁|, nullSd = √(2 p̄ q̄), altSd = √(p₁q₁ + p₂q₂)
 * proportion, unpooled: effect = |p₂ − p₁|, nullSd = altSd = √(p₁q₁ + p₂q₂)
 * mean:                 effect = |Δ|, nullSd = altSd = σ√2
 * rate:                 effect = |√λ₂ − √λ₁|, nullSd = altSd = √½ (square-root transform: for a count
 *                       X ~ Poisson(μ), √X is about N(√μ, ¼), so √X₂ − √X₁ over exposure t per arm
 *                       is about N(√t(√λ₂ − √λ₁), ½)); t = (zα + zβ)² / (2(√λ₂ − √λ₁)²).
 */
function design(input: DesignInput): Design | undefined {
  const { kind, baseline, mde, alpha } = input;
  const sides = input.sides ?? 2;
  if (!(alpha > 0 && alpha < 1) || (sides !== 1 && sides !== 2) || !(mde !== 0 && Number.isFinite(mde))) {
    return undefined;
  }
  if (!Number.isFinite(baseline)) return undefined;
  const zAlpha = normalQuantile(1 - alpha / sides);
  if (kind === 'proportion') {
    const p1 = baseline;
    const p2 = baseline + mde;
    if (!(p1 > 0 && p1 < 1 && p2 > 0 && p2 < 1)) return undefined;
    const alt = Math.sqrt(p1 * (1 - p1) + p2 * (1 - p2));
    const bar = (p1 + p2) / 2;
    const nul = input.variance === 'unpooled' ? alt : Math.sqrt(2 * bar * (1 - bar));
    return { zAlpha, effect: Math.abs(mde), nullSd: nul, altSd: alt };
  }
  if (kind === 'mean') {
    const sd = input.sd;
    if (sd === undefined || !(sd > 0 && Number.isFinite(sd))) return undefined;
    return { zAlpha, effect: Math.abs(mde), nullSd: sd * Math.SQRT2, altSd: sd * Math.SQRT2 };
  }
  const l1 = baseline;
  const l2 = baseline + mde;
  if (!(l1 > 0 && l2 > 0)) return undefined;
  return {
    zAlpha,
    effect: Math.abs(Math.sqrt(l2) - Math.sqrt(l1)),
    nullSd: Math.SQRT1_2,
    altSd: Math.SQRT1_2,
  };
}

/** Observations (or exposure) per arm for the wanted power; see `design` for the formulas. */
export function sampleSize(input: SampleSizeInput): SampleSizeResult | undefined {
  const d = design(input);
  if (d === undefined || !(input.power > 0 && input.power < 1)) return undefined;
  const zBeta = normalQuantile(input.power);
  const root = (d.zAlpha * d.nullSd + zBeta * d.altSd) / d.effect;
  const exact = root * root;
  if (!Number.isFinite(exact)) return undefined;
  if (input.kind === 'rate') {
    return {
      nPerArm: exact,
      exact,
      expectedEvents: [exact * input.baseline, exact * (input.baseline + input.mde)],
    };
  }
  // A hair of tolerance so that a formula landing on an integer is not pushed up by rounding error.
  return { nPerArm: Math.ceil(exact - 1e-9), exact };
}

/** Power of the test with nPerArm observations (or exposure) per arm; see `design` for the formulas. */
export function power(input: PowerInput): number | undefined {
  const d = design(input);
  if (d === undefined || !(input.nPerArm >= 0 && Number.isFinite(input.nPerArm))) return undefined;
  return standardNormalCdf((Math.sqrt(input.nPerArm) * d.effect - d.zAlpha * d.nullSd) / d.altSd);
}

export interface PlanInput {
  /** A parsed policy (defaults filled in by the schema). */
  policy: Policy;
  /** A parsed fleet manifest. */
  fleet: FleetManifest;
  /** Fleet time per unit of policy time (a simulated fleet's clock runs faster); 1 unless given. */
  timeScale?: number;
  /** Production's error rate assumed for the error_rate metric; 0.1 unless given. */
  baselineErrorRate?: number;
  /** Wanted power to detect the margin; 0.8 unless given. */
  power?: number;
}

export interface WavePlan {
  wave: number;
  percent: number;
  /** Fleet hours the wave is held. */
  hours: number;
  /** Labels requested in each arm from the start of the canary to the end of this wave (rounded). */
  candidate: number;
  production: number;
}

export interface CohortPlan {
  cohort: string;
  vehicles: number;
  waves: WavePlan[];
  /** Labeled events per arm at the final analysis: requested by the end of the last wave × coverage. */
  labeledPerArm: { candidate: number; production: number };
  /**
   * Smallest error-rate harm (candidate minus production) the gate's mSPRT detects with the wanted
   * power at the final analysis; null when no harm up to 1 − baseline can be.
   */
  mde: number | null;
  /** The same for a single fixed-sample two-sided z-test at the metric's α (what one look would give). */
  mdeFixedSample: number | null;
  /** The error_rate metric's margin; null when the policy has no error_rate metric. */
  margin: number | null;
  /** mde ≤ margin; null without an error_rate metric. */
  detectable: boolean | null;
  /** How many times longer every hold would have to be for mde ≤ margin (null when not needed or never). */
  holdScaleNeeded: number | null;
}

export interface RolloutPlan {
  cohorts: CohortPlan[];
  warnings: string[];
  assumptions: {
    baselineErrorRate: number;
    power: number;
    alphaPerMetric: number;
    mixtureSd: number;
    timeScale: number;
    labeledPerVehicleHour: number;
    coverage: number;
  };
}

/** How many of n vehicles a share in [0, 1] reaches, as the fleet assigns waves: ceil(share · n). */
function vehiclesReached(n: number, share: number): number {
  return Math.min(n, Math.max(0, Math.ceil(share * n - 1e-9)));
}

/** Half-width of the mSPRT confidence sequence at variance v (see `msprt` in ./stats). */
function msprtHalfWidth(v: number, tau: number, alpha: number): number {
  const tau2 = tau * tau;
  return Math.sqrt(((2 * v * (v + tau2)) / tau2) * (Math.log(1 / alpha) + 0.5 * Math.log1p(tau2 / v)));
}

/**
 * Smallest δ in (0, 1 − p₀) with `reaches(δ)` true, by bisection; null when even the largest is not
 * enough. `reaches` is increasing in δ over the range that matters.
 */
function smallestEffect(p0: number, reaches: (delta: number) => boolean): number | null {
  let hi = 1 - p0 - 1e-9;
  if (!reaches(hi)) return null;
  let lo = 0;
  for (let i = 0; i < 100 && hi - lo > 1e-9; i++) {
    const mid = 0.5 * (lo + hi);
    if (reaches(mid)) hi = mid;
    else lo = mid;
  }
  return hi;
}

/**
 * Minimum detectable error-rate harm with nc labeled events in the candidate arm and np in production,
 * baseline p₀, at level α and the wanted power. With V(δ) = (p₀+δ)(1−p₀−δ)/nc + p₀(1−p₀)/np:
 *
 *   gate (mSPRT):  δ − zβ√V(δ) ≥ h(V(δ)), h the half-width of the confidence sequence at level α
 *                  (harm is declared when θ̂ − h > 0; θ̂ ~ N(δ, V)); one final look, so conservative
 *   fixed sample:  δ ≥ (z_{1−α/2} + zβ)√V(δ)
 */
export function minimumDetectableEffect(args: {
  nCandidate: number;
  nProduction: number;
  baseline: number;
  alpha: number;
  power: number;
  tau: number;
}): { mde: number | null; mdeFixedSample: number | null } {
  const { nCandidate: nc, nProduction: np, baseline: p0, alpha, tau } = args;
  if (!(nc > 0 && np > 0) || !(p0 > 0 && p0 < 1)) return { mde: null, mdeFixedSample: null };
  const zBeta = normalQuantile(args.power);
  const zHalf = normalQuantile(1 - alpha / 2);
  const variance = (delta: number): number => ((p0 + delta) * (1 - p0 - delta)) / nc + (p0 * (1 - p0)) / np;
  const mde = smallestEffect(p0, (delta) => {
    const v = variance(delta);
    return delta - zBeta * Math.sqrt(v) >= msprtHalfWidth(v, tau, alpha);
  });
  const mdeFixedSample = smallestEffect(p0, (delta) => delta >= (zHalf + zBeta) * Math.sqrt(variance(delta)));
  return { mde, mdeFixedSample };
}

function round(x: number, digits: number): number {
  const f = Math.pow(10, digits);
  return Math.round(x * f) / f;
}

/**
 * Plans a rollout of `policy` on `fleet`. Per cohort in scope:
 *
 * - each wave holds `percent` of the cohort's vehicles (ceil, as the fleet assigns them) on the
 *   candidate and the rest on production for `hold` × timeScale hours; labels are requested at
 *   eventsPerVehicleHour × labels.rate per vehicle-hour, scaled down when labelWait.dailyBudget is
 *   below what the fleet in scope asks for a day (with a warning); counts accumulate over the waves, as
 *   the gate's analysis does. Extra looks and approval waits are not counted.
 * - the final analysis sees labelWait.coverage of the labels requested by the end of the last wave;
 * - the minimum detectable effect is for error_rate at `baselineErrorRate`, at the level the engine
 *   tests the first guardrail of a cohort with (the cohort's share of α, see `familyLevel`, over the
 *   number of guardrails: Holm's first step), the mSPRT with τ = analysis.mixtureSd. For a
 *   group-sequential design, the labels the rollout reaches are compared with plannedPerArm.
 *
 * Warnings: a policy cohort missing from the fleet; a wave ending with fewer labeled candidate events
 * than minLabeledPerArm (the gate will extend the wave, then hold); an error_rate margin below the
 * minimum detectable effect (with the hold scale that would be needed); no error_rate metric.
 */
export function planRollout(input: PlanInput): RolloutPlan {
  const { policy, fleet } = input;
  const timeScale = input.timeScale ?? 1;
  const baseline = input.baselineErrorRate ?? 0.1;
  const wantedPower = input.power ?? 0.8;
  const { mixtureSd, minLabeledPerArm, metrics } = policy.analysis;
  const names = policy.cohorts ?? fleet.cohorts.map((c) => c.name);
  const guardrails = metrics.filter((m) => m.role !== 'success').length;
  const alphaPerMetric = familyLevel(policy, names.length) / Math.max(1, guardrails);
  const coverage = policy.labelWait.coverage;
  // The canary asks for a `labels.rate` sample of every vehicle's events; a daily label budget below that
  // demand caps the requests, and the plan counts only the share it lets through.
  const dailyBudget = policy.labelWait.dailyBudget;
  const inScope = new Set(policy.cohorts ?? fleet.cohorts.map((c) => c.name));
  const fleetVehicles = fleet.cohorts.filter((c) => inScope.has(c.name)).reduce((n, c) => n + c.vehicles, 0);
  const demandPerDay = fleetVehicles * fleet.eventsPerVehicleHour * fleet.labels.rate * 24;
  const budgetShare =
    dailyBudget !== undefined && demandPerDay > dailyBudget ? dailyBudget / demandPerDay : 1;
  const labeledPerVehicleHour = fleet.eventsPerVehicleHour * fleet.labels.rate * budgetShare;
  const errorMetric = metrics.find((m) => m.name === 'error_rate');
  const margin = errorMetric?.margin ?? null;
  const warnings: string[] = [];
  const assumptions = {
    baselineErrorRate: baseline,
    power: wantedPower,
    alphaPerMetric,
    mixtureSd,
    timeScale,
    labeledPerVehicleHour,
    coverage,
  };
  if (!(timeScale > 0 && Number.isFinite(timeScale))) {
    return { cohorts: [], warnings: [`timeScale must be positive (got ${timeScale})`], assumptions };
  }
  if (!(baseline > 0 && baseline < 1) || !(wantedPower > 0 && wantedPower < 1)) {
    return {
      cohorts: [],
      warnings: [`baselineErrorRate and power must be in (0, 1) (got ${baseline} and ${wantedPower})`],
      assumptions,
    };
  }
  if (errorMetric === undefined) {
    warnings.push('the policy has no error_rate metric: no minimum detectable effect is planned');
  }
  if (budgetShare < 1) {
    warnings.push(
      `labelWait.dailyBudget ${dailyBudget} is below the about ${Math.round(demandPerDay)} sample labels a day ` +
        `the canary asks for: the plan counts ${round(budgetShare * 100, 1)}% of them (shadow requests, ` +
        'which come first, leave even fewer)',
    );
  }

  const byName = new Map(fleet.cohorts.map((c) => [c.name, c]));
  const hoursOf = policy.waves.map((w) => ((parseDuration(w.hold) ?? 0) / 3_600_000) * timeScale);
  const cohorts: CohortPlan[] = [];

  for (const name of names) {
    const spec = byName.get(name);
    if (spec === undefined) {
      warnings.push(`cohort ${name} of policy ${policy.name} is not in fleet ${fleet.name}`);
      continue;
    }
    const counts = (scale: number): { waves: WavePlan[]; candidate: number; production: number } => {
      let candidate = 0;
      let production = 0;
      const waves = policy.waves.map((w, i): WavePlan => {
        const onCandidate = vehiclesReached(spec.vehicles, w.percent / 100);
        const hours = hoursOf[i]! * scale;
        candidate += onCandidate * hours * labeledPerVehicleHour;
        production += (spec.vehicles - onCandidate) * hours * labeledPerVehicleHour;
        return { wave: i + 1, percent: w.percent, hours: round(hours, 3), candidate, production };
      });
      return { waves, candidate: candidate * coverage, production: production * coverage };
    };
    const planned = counts(1);
    const mdeAt = (scale: number): number | null => {
      const c = scale === 1 ? planned : counts(scale);
      return minimumDetectableEffect({
        nCandidate: c.candidate,
        nProduction: c.production,
        baseline,
        alpha: alphaPerMetric,
        power: wantedPower,
        tau: mixtureSd,
      }).mde;
    };
    const { mde, mdeFixedSample } = minimumDetectableEffect({
      nCandidate: planned.candidate,
      nProduction: planned.production,
      baseline,
      alpha: alphaPerMetric,
      power: wantedPower,
      tau: mixtureSd,
    });

    for (const w of planned.waves) {
      if (w.candidate < minLabeledPerArm) {
        warnings.push(
          `${name}: wave ${w.wave} (${w.percent}%) ends with about ${Math.floor(w.candidate)} labels requested ` +
            `in the candidate arm, below minLabeledPerArm ${minLabeledPerArm}: the gate will extend the wave, then hold`,
        );
      }
    }

    const plannedPerArm = policy.analysis.plannedPerArm;
    if (policy.analysis.design !== 'msprt' && plannedPerArm !== undefined) {
      const reached = Math.floor(Math.min(planned.candidate, planned.production));
      if (reached < plannedPerArm) {
        warnings.push(
          `${name}: the rollout reaches about ${reached} labeled events per arm, below plannedPerArm ${plannedPerArm}: ` +
            `the ${policy.analysis.design} design never spends its whole alpha; lower plannedPerArm or hold longer`,
        );
      } else if (planned.waves.length > 0 && planned.waves[0]!.candidate >= plannedPerArm) {
        warnings.push(
          `${name}: the first wave alone reaches plannedPerArm ${plannedPerArm}: later looks reuse the final boundary; raise plannedPerArm`,
        );
      }
    }

    let detectable: boolean | null = null;
    let holdScaleNeeded: number | null = null;
    if (margin !== null) {
      detectable = mde !== null && mde <= margin;
      if (!detectable) {
        const reaches = (scale: number): boolean => {
          const m = mdeAt(scale);
          return m !== null && m <= margin;
        };
        if (margin > 0 && reaches(1e6)) {
          let lo = 1;
          let hi = 1e6;
          while (hi / lo > 1.01) {
            const mid = Math.sqrt(lo * hi);
            if (reaches(mid)) hi = mid;
            else lo = mid;
          }
          holdScaleNeeded = round(hi, 2);
        }
        const shown = mde === null ? 'no harm at all' : `only harms of ${mde.toFixed(4)} or more`;
        const fix =
          holdScaleNeeded === null
            ? 'no hold length is enough at these shares'
            : `holds about ${holdScaleNeeded}x longer would be needed, or higher shares or label rate`;
        warnings.push(
          `${name}: cannot detect the error_rate margin ${margin} with power ${wantedPower} within the policy's ` +
            `time: with about ${Math.floor(planned.candidate)} candidate and ${Math.floor(planned.production)} ` +
            `production labels (baseline ${baseline}, alpha ${round(alphaPerMetric, 6)} per metric) the gate detects ` +
            `${shown}` +
            (mdeFixedSample === null ? '' : ` (a single fixed-sample test: ${mdeFixedSample.toFixed(4)})`) +
            `; ${fix}`,
        );
      }
    }

    cohorts.push({
      cohort: name,
      vehicles: spec.vehicles,
      waves: planned.waves.map((w) => ({
        ...w,
        candidate: Math.round(w.candidate),
        production: Math.round(w.production),
      })),
      labeledPerArm: { candidate: Math.round(planned.candidate), production: Math.round(planned.production) },
      mde: mde === null ? null : round(mde, 6),
      mdeFixedSample: mdeFixedSample === null ? null : round(mdeFixedSample, 6),
      margin,
      detectable,
      holdScaleNeeded,
    });
  }
  return { cohorts, warnings, assumptions };
}
