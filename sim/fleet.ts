/**
 * The simulated fleet's vehicles: their raw ids (`<fleet>-<cohortIndex>-<i>`), built, hashed into
 * keyed pseudonyms (fleet/pseudonym.ts) and dropped, one cohort at a time.
 *
 * Raw identifiers exist in memory only inside `simVehicles` while a cohort is generated: this module must
 * never log, store or return one. Pseudonyms, assignment and manifests are production code (fleet/);
 * this module holds only what simulates vehicles, and production code never imports it.
 *
 * Activity-side only (node:crypto); workflows never import it.
 */
import type { CohortSpec, FleetManifest } from '../policies/schema';
import { FastHmac } from '../fleet/hmac';
import { PSEUDONYM_CHARS } from '../fleet/pseudonym';

export interface SimCohort {
  cohort: CohortSpec;
  cohortIndex: number;
  /** Pseudonyms of the cohort's vehicles, in generation order. */
  pseudonyms: string[];
}

/**
 * The simulated vehicles of a fleet, one cohort at a time. Raw ids (`<fleet>-<cohortIndex>-<i>`) are
 * built here, hashed at once, and dropped.
 */
export function* simVehicles(manifest: FleetManifest, key: Buffer): Generator<SimCohort> {
  const mac = new FastHmac(key);
  for (const [cohortIndex, cohort] of manifest.cohorts.entries()) {
    const pseudonyms = new Array<string>(cohort.vehicles);
    for (let i = 0; i < cohort.vehicles; i++)
      pseudonyms[i] = mac.hex(`${manifest.name}-${cohortIndex}-${i}`, PSEUDONYM_CHARS);
    yield { cohort, cohortIndex, pseudonyms };
  }
}
