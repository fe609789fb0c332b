/**
 * The onnxruntime-backed ModelRunner: loads a registered model by digest and runs it on CPU.
 *
 * One InferenceSession is cached per (digest, runtime settings). Model bytes come from the object
 * store's content-addressed blobs and are checked against their digest before a session is built, so
 * what runs is exactly what was registered. Built only in `workers/` (and tests): workflows never see it.
 */
import { createHash } from 'node:crypto';
import * as ort from 'onnxruntime-node';
import type { IoContract, TensorSpec } from '../activities/contracts';
import type { ModelRunner, RunnerSettings } from '../activities/deps';
import { ErrorType, fail } from '../errors';

export const INPUT_NAME = 'features';
export const OUTPUT_NAME = 'probs';

/** Key of a model's bytes in the object store. */
export function blobKey(digest: string): string {
  return `blobs/sha256/${digest}`;
}

export class OnnxModelRunner implements ModelRunner {
  private readonly sessions = new Map<string, Promise<ort.InferenceSession>>();
  /** Model sizes by digest: a digest's bytes never change, so they are read once. */
  private readonly sizes = new Map<string, number>();

  /** `load` returns the bytes stored under a digest, or undefined when there are none. */
  constructor(private readonly load: (digest: string) => Promise<Buffer | undefined>) {}

  private session(digest: string, settings: RunnerSettings = {}): Promise<ort.InferenceSession> {
    const threads = settings.intraOpThreads ?? 1;
    const opt = settings.graphOptimization ?? 'all';
    const key = `${digest}|${threads}|${opt}`;
    let s = this.sessions.get(key);
    if (!s) {
      s = (async () => {
        const bytes = await this.load(digest);
        if (!bytes) throw fail(ErrorType.NotFound, `model ${digest.slice(0, 12)} is not in the object store`);
        const actual = createHash('sha256').update(bytes).digest('hex');
        if (actual !== digest) {
          throw fail(
            ErrorType.DigestMismatch,
            `stored model ${digest.slice(0, 12)} hashes to ${actual.slice(0, 12)}`,
          );
        }
        return ort.InferenceSession.create(new Uint8Array(bytes), {
          intraOpNumThreads: threads,
          interOpNumThreads: 1,
          executionMode: 'sequential',
          graphOptimizationLevel: opt,
        });
      })();
      s.catch(() => this.sessions.delete(key));
      this.sessions.set(key, s);
    }
    return s;
  }

  async run(digest: string, features: Float32Array, rows: number, settings?: RunnerSettings) {
    const session = await this.session(digest, settings);
    const cols = rows === 0 ? 0 : features.length / rows;
    const input = new ort.Tensor('float32', features, [rows, cols]);
    const started = process.hrtime.bigint();
    const out = await session.run({ [session.inputNames[0] ?? INPUT_NAME]: input });
    const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
    const tensor = out[session.outputNames[0] ?? OUTPUT_NAME];
    if (!tensor) throw fail(ErrorType.ContractMismatch, `model ${digest.slice(0, 12)} produced no output`);
    // The output's data is a buffer of its own, made for this run: no copy is needed.
    const probs = tensor.data as Float32Array;
    input.dispose();
    return { probs, elapsedMs };
  }

  async modelBytes(digest: string): Promise<number> {
    const known = this.sizes.get(digest);
    if (known !== undefined) return known;
    const bytes = await this.load(digest);
    if (!bytes) throw fail(ErrorType.NotFound, `model ${digest.slice(0, 12)} is not in the object store`);
    this.sizes.set(digest, bytes.length);
    return bytes.length;
  }

  async contract(digest: string): Promise<IoContract> {
    const session = await this.session(digest);
    return { inputs: session.inputMetadata.map(spec), outputs: session.outputMetadata.map(spec) };
  }

  async close(): Promise<void> {
    const all = [...this.sessions.values()];
    this.sessions.clear();
    await Promise.all(all.map(async (p) => (await p.catch(() => undefined))?.release()));
  }
}

function spec(m: ort.InferenceSession.ValueMetadata): TensorSpec {
  if (!m.isTensor) return { name: m.name, type: 'non-tensor', shape: [] };
  return {
    name: m.name,
    type: m.type,
    shape: m.shape.map((d) => (typeof d === 'number' && d >= 0 ? d : String(d))),
  };
}
