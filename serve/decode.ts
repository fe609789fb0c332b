/**
 * The gateway's decoding of model outputs into answers: each row's probabilities, its class (the arm's
 * threshold on class 1 of a two-class model, argmax otherwise) and label, and the checks around the
 * model on either side of it: features that float32 cannot hold are refused before the model runs, and
 * outputs that are not finite are an error after it.
 *
 * It must never turn a NaN or Infinity output into a class: a comparison with NaN is false, so an
 * unchecked argmax or threshold answers class 0 ("clear" for the hazard detector) for a model that
 * answered nothing. Both checks throw; the gateway answers 400 for the first and 500 for the second.
 */
import { FLOAT32_MAX, type PredictOutput } from './api';

/** What decoding needs of a served model. */
export interface DecodeModel {
  classes: readonly string[];
  /** The model config's threshold of class 1 (two-class models), when it sets one. */
  threshold?: number;
  scale: number;
  offset: number;
  features: number;
}

/** A model output (probability or logit) that is NaN or +-Infinity: the request fails, with no class. */
export class NonFiniteOutputError extends Error {
  override name = 'NonFiniteOutputError';
  constructor(
    readonly row: number,
    readonly column: number,
    readonly value: number,
  ) {
    super(
      `the model output ${String(value)} for row ${row}, output ${column}: not a finite number, so no class ` +
        'is given; check the model and its inputs',
    );
  }
}

/** A feature that is beyond float32 range once preprocessed: refused before the model runs. */
export class FeatureRangeError extends Error {
  override name = 'FeatureRangeError';
  constructor(
    /** Where it is in the request, as the JSON path of its value (`inputs.<row>.<column>`). */
    readonly field: string,
    readonly value: number,
    /** The raw values the model's preprocessing keeps within float32 range. */
    readonly min: number,
    readonly max: number,
  ) {
    super(
      `${field}: ${String(value)} is beyond float32 range after the model's preprocessing; send a number ` +
        `from about ${min} to ${max}`,
    );
  }
}

/** Throws NonFiniteOutputError at the first output of `probs` that is not finite. */
export function checkFinite(probs: ArrayLike<number>, per: number): void {
  for (let i = 0; i < probs.length; i++) {
    const v = probs[i]!;
    if (!Number.isFinite(v)) throw new NonFiniteOutputError(Math.floor(i / per), i % per, v);
  }
}

/**
 * Outputs of the rows of one request: probabilities, class and label. `per` is the outputs per row.
 * Throws NonFiniteOutputError, giving no output at all, when any output is not finite.
 */
export function decodeOutputs(
  probs: Float32Array,
  per: number,
  model: Pick<DecodeModel, 'classes' | 'threshold'>,
  threshold: number | undefined,
): PredictOutput[] {
  checkFinite(probs, per);
  const t = threshold ?? model.threshold;
  const out: PredictOutput[] = [];
  for (let r = 0; r * per < probs.length; r++) {
    const p = Array.from(probs.subarray(r * per, (r + 1) * per));
    let cls: number;
    if (per === 2 && t !== undefined) cls = p[1]! >= t ? 1 : 0;
    else {
      cls = 0;
      for (let i = 1; i < p.length; i++) if (p[i]! > p[cls]!) cls = i;
    }
    out.push({ probs: p, class: cls, label: model.classes[cls] ?? String(cls) });
  }
  return out;
}

/** The raw feature values whose preprocessed value `v * scale + offset` float32 holds, to 6 digits. */
function rawRange(scale: number, offset: number): { min: number; max: number } {
  if (scale === 0) return { min: -FLOAT32_MAX, max: FLOAT32_MAX };
  const a = (-FLOAT32_MAX - offset) / scale;
  const b = (FLOAT32_MAX - offset) / scale;
  const bound = (x: number) => Math.max(-FLOAT32_MAX, Math.min(FLOAT32_MAX, x));
  const lo = bound(Math.min(a, b));
  const hi = bound(Math.max(a, b));
  const round = (x: number) => (Math.abs(x) === FLOAT32_MAX ? x : Number(x.toPrecision(6)));
  return { min: round(lo), max: round(hi) };
}

/**
 * The request's rows as the model's float32 input, row-major, after its preprocessing
 * (`v * scale + offset`). Throws FeatureRangeError for the first value float32 cannot hold (a feature
 * beyond float32 range, or one the preprocessing takes beyond it).
 */
export function preprocessRows(inputs: number[][], model: DecodeModel): Float32Array {
  const x = new Float32Array(inputs.length * model.features);
  let i = 0;
  for (let r = 0; r < inputs.length; r++) {
    const row = inputs[r]!;
    for (let c = 0; c < row.length; c++) {
      const v = row[c]!;
      x[i] = v * model.scale + model.offset;
      if (!Number.isFinite(x[i]!)) {
        const { min, max } = rawRange(model.scale, model.offset);
        throw new FeatureRangeError(`inputs.${r}.${c}`, v, min, max);
      }
      i++;
    }
  }
  return x;
}
