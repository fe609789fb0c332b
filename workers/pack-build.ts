/**
 * Builds and signs model packs (`fleetgate model pack` and `fleetgate model sign`; docs/registry.md).
 *
 * `buildPack` completes a directory holding an ONNX model and a manifest draft: it reads the model's
 * input/output contract from onnxruntime, draws golden inputs (seeded by the model's digest), records the
 * outputs onnxruntime gives for them, writes inference_config.json and the golden files, and rewrites
 * the manifest's `files` with the sha256 of every file of the pack. `signPack` writes manifest.sig.
 *
 * It writes only inside the pack directory it is given, and never through a symbolic link: a link at a
 * file it writes or removes (the config, the golden files, manifest.json, manifest.sig), or at a
 * directory on the way to one, is refused (PathEscape) before anything is written, and every file is
 * written through activities/atomic-file.ts (exclusive temporary file beside it, then a rename), so a
 * link planted meanwhile is replaced, never followed.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { ErrorType, fail } from '../errors';
import { InferenceConfig, ModelManifest, formatIssues } from '../policies/schema';
import { MANIFEST, SIGNATURE, hashFile, listFiles, signManifest } from '../activities/pack';
import { writeFileAtomic } from '../activities/atomic-file';
import { gaussian, makeRng } from '../policies/rng';

export const CONFIG = 'inference_config.json';
export const GOLDEN_INPUTS = 'golden/inputs.f32';
export const GOLDEN_OUTPUTS = 'golden/outputs.f32';

export interface BuildOptions {
  /** Output class names, in output order; default: the existing config's, else class0, class1, ... */
  classes?: string[];
  /** Golden rows; default 64. */
  goldenRows?: number;
  /** Tolerance of the golden outputs; default 1e-5. */
  tolerance?: number;
}

/**
 * Completes the pack in `dir` from its manifest.json draft (every field but `files` and `config` set).
 * Returns the manifest written. Refuses a draft that does not parse, with every problem named.
 */
export async function buildPack(dir: string, options: BuildOptions = {}): Promise<ModelManifest> {
  // Everything this writes or removes, checked before anything is read or written.
  for (const f of [GOLDEN_INPUTS, GOLDEN_OUTPUTS, CONFIG, MANIFEST, SIGNATURE]) await refuseLinks(dir, f);
  const manifestFile = path.join(dir, MANIFEST);
  let draft: Record<string, unknown>;
  try {
    draft = JSON.parse(await fs.readFile(manifestFile, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw fail(
      ErrorType.InvalidInput,
      `${manifestFile}: a manifest draft is needed (${(err as Error).message}); write name, version, release, ` +
        'model, trainingDataHash, codeHash and compatibleSkus (see docs/registry.md)',
    );
  }
  const modelName = typeof draft.model === 'string' ? draft.model : 'model.onnx';
  const modelFile = path.join(dir, ...modelName.split('/'));
  const modelBytes = await fs.readFile(modelFile).catch(() => {
    throw fail(
      ErrorType.NotFound,
      `${modelFile}: the manifest's model file is missing; put the ONNX file there`,
    );
  });
  const digest = createHash('sha256').update(modelBytes).digest('hex');

  const session = await ort.InferenceSession.create(new Uint8Array(modelBytes), {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    executionMode: 'sequential',
  });
  try {
    const spec = (m: ort.InferenceSession.ValueMetadata) => {
      if (!m.isTensor) {
        throw fail(
          ErrorType.ContractMismatch,
          `${modelName}: ${m.name} is not a tensor; packs hold tensor models`,
        );
      }
      return {
        name: m.name,
        type: m.type as string,
        shape: m.shape.map((d) => (typeof d === 'number' && d >= 0 ? d : String(d))),
      };
    };
    const inputs = session.inputMetadata.map(spec);
    const outputs = session.outputMetadata.map(spec);
    const input = inputs[0]!;
    const output = outputs[0]!;
    const features = input.shape[1];
    const classesOut = output.shape[1];
    if (
      inputs.length !== 1 ||
      input.type !== 'float32' ||
      input.shape.length !== 2 ||
      typeof features !== 'number'
    ) {
      throw fail(
        ErrorType.ContractMismatch,
        `${modelName}: fleetgate packs a model with one float32 input [batch, features]; this one takes ` +
          `${JSON.stringify(inputs)}`,
      );
    }
    if (output.type !== 'float32' || output.shape.length !== 2 || typeof classesOut !== 'number') {
      throw fail(
        ErrorType.ContractMismatch,
        `${modelName}: the first output must be float32 [batch, classes]; this one is ${JSON.stringify(output)}`,
      );
    }

    const previous = await readConfig(dir);
    const classes =
      options.classes ?? previous?.classes ?? Array.from({ length: classesOut }, (_, i) => `class${i}`);
    if (classes.length !== classesOut) {
      throw fail(
        ErrorType.InvalidInput,
        `classes: ${classes.length} names (${classes.join(', ')}) for a model with ${classesOut} outputs; give one name per output`,
      );
    }
    const rows = options.goldenRows ?? 64;
    const rng = makeRng(`golden|${digest}`);
    const golden = new Float32Array(rows * features);
    for (let i = 0; i < golden.length; i++) golden[i] = gaussian(rng);
    const result = await session.run({ [input.name]: new ort.Tensor('float32', golden, [rows, features]) });
    const expected = result[output.name]!.data as Float32Array;

    await writePackFile(dir, GOLDEN_INPUTS, le(golden));
    await writePackFile(dir, GOLDEN_OUTPUTS, le(expected));
    const config: InferenceConfig = InferenceConfig.parse({
      apiVersion: 'fleetgate/v1',
      kind: 'InferenceConfig',
      name: draft.name,
      version: draft.version,
      release: draft.release,
      inputs,
      outputs,
      preprocessing: previous?.preprocessing ?? { scale: 1, offset: 0 },
      classes,
      thresholds: previous?.thresholds ?? {},
      golden: { inputs: GOLDEN_INPUTS, outputs: GOLDEN_OUTPUTS, rows, tolerance: options.tolerance ?? 1e-5 },
    });
    await writePackFile(dir, CONFIG, JSON.stringify(config, null, 2) + '\n');

    const files: Record<string, string> = {};
    for (const f of await listFiles(dir)) {
      if (f === MANIFEST || f === SIGNATURE) continue;
      files[f] = await hashFile(path.join(dir, ...f.split('/')));
    }
    const candidate = { ...draft, config: CONFIG, files };
    const parsed = ModelManifest.safeParse(candidate);
    if (!parsed.success) {
      throw fail(
        ErrorType.InvalidInput,
        `${manifestFile}: the draft is incomplete:\n${formatIssues(parsed.error, candidate, 'manifest')}`,
      );
    }
    await writePackFile(dir, MANIFEST, JSON.stringify(parsed.data, null, 2) + '\n');
    // A signature over an older manifest no longer holds: remove it, the pack must be signed again.
    await refuseLinks(dir, SIGNATURE);
    await fs.rm(path.join(dir, SIGNATURE), { force: true });
    return parsed.data;
  } finally {
    await session.release();
  }
}

/** Signs the pack's manifest.json with an ed25519 private key (PEM); returns the signer's key id. */
export async function signPack(dir: string, privatePem: string | Buffer): Promise<string> {
  // The manifest signed must be the pack's own, and the signature must land in the pack.
  await refuseLinks(dir, MANIFEST);
  await refuseLinks(dir, SIGNATURE);
  const manifestBytes = await fs.readFile(path.join(dir, MANIFEST));
  const sig = signManifest(manifestBytes, privatePem);
  await writePackFile(dir, SIGNATURE, JSON.stringify(sig, null, 2) + '\n');
  return sig.keyId;
}

/**
 * Refuses (PathEscape) when the pack file `rel` ('/'-separated, inside `dir`), or a directory on the way
 * to it below `dir`, is a symbolic link. Entries that do not exist yet pass.
 */
export async function refuseLinks(dir: string, rel: string): Promise<void> {
  const segments = rel.split('/');
  for (let i = 1; i <= segments.length; i++) {
    const name = segments.slice(0, i).join('/');
    let stat;
    try {
      stat = await fs.lstat(path.join(dir, ...segments.slice(0, i)));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    if (stat.isSymbolicLink()) {
      throw fail(
        ErrorType.PathEscape,
        `model pack ${dir}: ${name} is a symbolic link; a pack's files are written in the pack, never through a ` +
          `link (it could overwrite a file outside the pack): remove the symlink ${name} from the pack and run ` +
          'the command again',
        { dir, file: name },
      );
    }
  }
}

/**
 * Writes the pack file `rel` whole (activities/atomic-file.ts), creating its directories one by one, after
 * refusing a link at it or on the way to it.
 */
async function writePackFile(dir: string, rel: string, data: string | Uint8Array): Promise<void> {
  await refuseLinks(dir, rel);
  const segments = rel.split('/');
  for (let i = 1; i < segments.length; i++) {
    try {
      await fs.mkdir(path.join(dir, ...segments.slice(0, i)));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  await refuseLinks(dir, rel);
  await writeFileAtomic(path.join(dir, ...segments), data);
}

async function readConfig(dir: string): Promise<InferenceConfig | undefined> {
  try {
    const parsed = InferenceConfig.safeParse(JSON.parse(await fs.readFile(path.join(dir, CONFIG), 'utf8')));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/** Little-endian bytes of a float32 array. */
function le(values: Float32Array): Buffer {
  const out = Buffer.alloc(values.length * 4);
  for (let i = 0; i < values.length; i++) out.writeFloatLE(values[i]!, i * 4);
  return out;
}
