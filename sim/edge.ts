/**
 * The shadow filter that runs on each vehicle: which of the events the two models ran on are uploaded,
 * and with what weight the analysis counts each uploaded one.
 *
 * A vehicle cannot upload everything it sees. It keeps every event that matters (the two models
 * disagree, or the less confident of them is below `lowConfidence`) and a seeded `sample` share of the
 * rest. A per-vehicle upload budget caps what one vehicle sends in a window: a vehicle whose would-be
 * uploads exceed it sends a seeded uniform subset of exactly `budget` of them. Every uploaded event
 * carries the inverse of its probability of being uploaded (1 / sample for an ordinary one, times
 * would-be / budget on a capped vehicle), so that weighted sums over the uploads are unbiased estimates
 * of sums over every event the vehicles ran. The counters are what a vehicle reports alongside its
 * uploads (a few integers per window), exact for every event.
 *
 * Pure and deterministic for a given `rng`: the simulation replays a batch bit for bit. The counters'
 * shape is the shadow activity's contract (`EdgeCounters`, activities/contracts.ts).
 */
import type { EdgeCounters } from '../activities/contracts';

export interface EdgeSettings {
  /** Share of ordinary (not priority) events uploaded, in (0, 1]. */
  sample: number;
  /** An event whose less confident model is below this is a priority event. */
  lowConfidence: number;
  /** Most uploads per vehicle in this window; null for no cap. */
  budget: number | null;
}

export interface EdgeEvents {
  n: number;
  /** Per event: index of its vehicle among `vehicles` vehicles. */
  vehicle: Uint32Array;
  vehicles: number;
  predCandidate: Uint8Array;
  predProduction: Uint8Array;
  confCandidate: Float32Array;
  confProduction: Float32Array;
}

export interface EdgeResult {
  /** Per event: 1 when uploaded. */
  keep: Uint8Array;
  /** Per event: 1 when a priority event (uploaded or not). */
  priority: Uint8Array;
  /** Per uploaded event: inverse probability of its upload (0 for events not uploaded). */
  weight: Float64Array;
  /** Per vehicle: 1 when its would-be uploads exceeded its budget. */
  overBudgetVehicles: Uint8Array;
  counters: EdgeCounters;
}

export function edgeFilter(events: EdgeEvents, settings: EdgeSettings, rng: () => number): EdgeResult {
  const { n, vehicle } = events;
  const { sample, lowConfidence, budget } = settings;
  if (!(sample > 0 && sample <= 1)) throw new RangeError(`sample must be in (0, 1] (got ${sample})`);
  if (budget !== null && !(Number.isInteger(budget) && budget >= 1)) {
    throw new RangeError(`budget must be a whole number of uploads, at least 1 (got ${budget})`);
  }
  const keep = new Uint8Array(n);
  const priority = new Uint8Array(n);
  const weight = new Float64Array(n);
  let disagreements = 0;
  let priorities = 0;
  for (let i = 0; i < n; i++) {
    const disagree = events.predCandidate[i] !== events.predProduction[i];
    const low = Math.min(events.confCandidate[i]!, events.confProduction[i]!) < lowConfidence;
    if (disagree) disagreements++;
    if (disagree || low) {
      priority[i] = 1;
      priorities++;
      keep[i] = 1;
      weight[i] = 1;
    } else if (sample >= 1 || rng() < sample) {
      keep[i] = 1;
      weight[i] = 1 / sample;
    }
  }
  // Group each vehicle's would-be uploads (counting sort by vehicle, in event order within a vehicle).
  const per = new Uint32Array(events.vehicles + 1);
  const seen = new Uint8Array(events.vehicles);
  for (let i = 0; i < n; i++) {
    seen[vehicle[i]!] = 1;
    if (keep[i]) per[vehicle[i]! + 1]!++;
  }
  let active = 0;
  for (let v = 0; v < events.vehicles; v++) {
    active += seen[v]!;
    per[v + 1]! += per[v]!;
  }
  let overBudget = 0;
  const overBudgetVehicles = new Uint8Array(events.vehicles);
  let uploaded = 0;
  if (budget === null) {
    for (let i = 0; i < n; i++) uploaded += keep[i]!;
  } else {
    const start = per.slice(0, events.vehicles);
    const order = new Uint32Array(per[events.vehicles]!);
    const fill = per.slice(0, events.vehicles);
    for (let i = 0; i < n; i++) if (keep[i]) order[fill[vehicle[i]!]!++] = i;
    for (let v = 0; v < events.vehicles; v++) {
      const lo = start[v]!;
      const count = per[v + 1]! - lo;
      if (count <= budget) {
        uploaded += count;
        continue;
      }
      overBudget++;
      overBudgetVehicles[v] = 1;
      // A seeded uniform subset of `budget` of the `count`: a partial Fisher-Yates shuffle.
      for (let j = 0; j < budget; j++) {
        const k = j + Math.floor(rng() * (count - j));
        const t = order[lo + j]!;
        order[lo + j] = order[lo + k]!;
        order[lo + k] = t;
      }
      const scale = count / budget;
      for (let j = 0; j < count; j++) {
        const i = order[lo + j]!;
        if (j < budget) weight[i]! *= scale;
        else {
          keep[i] = 0;
          weight[i] = 0;
        }
      }
      uploaded += budget;
    }
  }
  return {
    keep,
    priority,
    weight,
    overBudgetVehicles,
    counters: { vehicles: active, evaluated: n, priority: priorities, disagreements, uploaded, overBudget },
  };
}

/**
 * A vehicle's upload budget in a window of `windowMs`: the daily budget times the window's share of a
 * day, rounded down, and at least 1.
 */
export function windowBudget(perVehiclePerDay: number, windowMs: number): number {
  return Math.max(1, Math.floor((perVehiclePerDay * windowMs) / 86_400_000));
}
