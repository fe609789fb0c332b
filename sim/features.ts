/**
 * The simulated fleet's features for the drift checks (the `FeatureSource` of activities/drift.ts that
 * the composition root hands them): frames drawn under a cohort's conditions, the manifest's drift
 * applied from its time on for the current ones, and the cohort's own conditions, before any drift, for
 * the reference stored when production is registered.
 *
 * Seeded by the request's seed only, so a retried check and every writer of a reference draw the same
 * frames. It must never read a clock or an unseeded source, and returns features only, never a vehicle.
 */
import type { FeatureSource } from '../activities/drift';
import { conditionsAt } from '../activities/fleet';
import { generateFrames, type FrameConditions } from '../policies/frames';
import { makeRng } from '../policies/rng';

export const simulatedFeatures: FeatureSource = {
  async currentFeatures({ manifest, cohort, simAtMs, originMs, count, seed }) {
    const conditions = conditionsAt(manifest, cohort, originMs)(simAtMs);
    const f = generateFrames(makeRng(seed), count, conditions);
    return { count: f.count, features: f.features };
  },
  async referenceFeatures({ cohort, count, seed }) {
    const conditions: FrameConditions = {
      nightShare: cohort.nightShare,
      rainShare: cohort.rainShare,
      sensorNoise: cohort.sensorNoise,
    };
    const f = generateFrames(makeRng(seed), count, conditions);
    return { count: f.count, features: f.features, conditions };
  },
};
