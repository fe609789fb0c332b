/**
 * The input frames of fleetgate's fixture models: their layout (`Frames`, `FrameConditions`) and the
 * deterministic, seeded process that draws them. Production code uses it for inputs it must make up on
 * purpose: the hardware bench's golden inputs (activities/inference.ts) when a pack has no golden set;
 * the simulator (sim/) draws its fleet's and its callers' frames with it.
 *
 * A frame is 8 float32 features; its ground truth is a hazard (1) or not (0), with prior 0.3.
 * Features 0-3 come from a camera, features 4-7 from a radar. At night the camera's signal fades and its
 * noise grows; the radar does not care. `scripts/make_models.py` trains the fixture models on the same
 * process, so a model that leans on the camera regresses in cohorts that drive at night.
 *
 * Two further conditions, which the fixture models never saw in training (the script trains on dry,
 * nominal frames only and reads back only the day/night constants):
 * - rain: drops on the lens and spray blur the image, so the camera's signal falls to RAIN_CAMERA_SIGNAL
 *   of what it would be and its noise grows by RAIN_CAMERA_NOISE; a radar's millimetre waves pass rain
 *   nearly unchanged (RAIN_RADAR_NOISE, a little clutter). Rain at night compounds both.
 * - sensorNoise: worn, dirty or miscalibrated sensors; multiplies the noise of every feature.
 * A frame is in rain with probability `rainShare`; that draw is made only when rainShare > 0, and
 * sensorNoise 1 multiplies by exactly 1, so dry nominal conditions give the same frames, bit for bit, as
 * before these conditions existed.
 *
 * The frame's width and classes are the model contract (policies/model-contract.ts); the seeded draws
 * are policies/rng.ts. Deterministic: the same seed gives the same frames on every machine. Pure: it must
 * never do I/O, read a clock or draw from an unseeded source.
 */
import { FEATURES } from './model-contract';
import { gaussian } from './rng';

export const HAZARD_PRIOR = 0.3;
export const CAMERA_WEIGHTS = [1.0, 0.8, 0.6, 0.4] as const;
export const RADAR_WEIGHTS = [1.0, 0.8, 0.6, 0.4] as const;
export const CAMERA_SIGNAL = { day: 0.9, night: 0.25 } as const;
export const CAMERA_NOISE = { day: 1.0, night: 2.5 } as const;
export const RADAR_SIGNAL = 0.6;
export const RADAR_NOISE = 1.0;
/** Rain: factor of the camera's signal (a blurred image keeps about 40% of its contrast). */
export const RAIN_CAMERA_SIGNAL = 0.4;
/** Rain: factor of the camera's noise (drops and spray). */
export const RAIN_CAMERA_NOISE = 1.8;
/** Rain: factor of the radar's noise (a little clutter from the drops; radar is little affected). */
export const RAIN_RADAR_NOISE = 1.1;

export interface Frames {
  count: number;
  /** Row-major [count, FEATURES]. */
  features: Float32Array;
  /** Ground truth per frame: 1 hazard, 0 none. */
  labels: Uint8Array;
  /** 1 when the frame was captured at night. */
  night: Uint8Array;
  /** 1 when the frame was captured in rain. */
  rain: Uint8Array;
}

/** The conditions frames are drawn under. */
export interface FrameConditions {
  /** Share of frames at night, in [0, 1]. */
  nightShare: number;
  /** Share of frames in rain, in [0, 1] (default 0). */
  rainShare?: number;
  /** Multiplier of every sensor's noise, > 0 (default 1). */
  sensorNoise?: number;
}

/**
 * Draws `count` frames, each at night with probability `nightShare` (a number, as before the other
 * conditions existed) or under the given conditions.
 */
export function generateFrames(
  rng: () => number,
  count: number,
  conditions: number | FrameConditions,
): Frames {
  const c = typeof conditions === 'number' ? { nightShare: conditions } : conditions;
  return generateFramesWith(rng, count, () => c);
}

/**
 * Draws `count` frames, frame i under `conditionsOf(i)` (conditions that change during a window: drift).
 * Per frame, in this order: the class, night, rain (only when rainShare > 0), 4 camera and 4 radar
 * noise draws.
 */
export function generateFramesWith(
  rng: () => number,
  count: number,
  conditionsOf: (i: number) => FrameConditions,
): Frames {
  const features = new Float32Array(count * FEATURES);
  const labels = new Uint8Array(count);
  const night = new Uint8Array(count);
  const rain = new Uint8Array(count);
  for (let i = 0; i < count; i++) {
    const { nightShare, rainShare = 0, sensorNoise = 1 } = conditionsOf(i);
    const y = rng() < HAZARD_PRIOR ? 1 : 0;
    const isNight = rng() < nightShare;
    const isRain = rainShare > 0 && rng() < rainShare;
    const s = 2 * y - 1;
    labels[i] = y;
    night[i] = isNight ? 1 : 0;
    rain[i] = isRain ? 1 : 0;
    let camSignal: number = isNight ? CAMERA_SIGNAL.night : CAMERA_SIGNAL.day;
    let camNoise: number = isNight ? CAMERA_NOISE.night : CAMERA_NOISE.day;
    let radarNoise: number = RADAR_NOISE;
    if (isRain) {
      camSignal *= RAIN_CAMERA_SIGNAL;
      camNoise *= RAIN_CAMERA_NOISE;
      radarNoise *= RAIN_RADAR_NOISE;
    }
    camNoise *= sensorNoise;
    radarNoise *= sensorNoise;
    const o = i * FEATURES;
    for (let j = 0; j < 4; j++)
      features[o + j] = camSignal * s * CAMERA_WEIGHTS[j]! + camNoise * gaussian(rng);
    for (let j = 0; j < 4; j++)
      features[o + 4 + j] = RADAR_SIGNAL * s * RADAR_WEIGHTS[j]! + radarNoise * gaussian(rng);
  }
  return { count, features, labels, night, rain };
}
