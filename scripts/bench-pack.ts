/**
 * The pack verification bench of `npm run bench` (scripts/bench.ts): `verifyPackDir` of
 * activities/pack.ts (signature, signer, file set, streamed sha256 of every file, config identity) on a
 * pack with a 100 MB model, against `sha256sum` of the same files in a child process. Goal: at most 1.5x
 * the time of sha256sum. The files are read once before timing, so both run from the page cache; runs
 * alternate and the best of each is kept.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createPublicKey } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  generateSigningKey,
  hashFile,
  keyIdOf,
  listFiles,
  signManifest,
  verifyPackDir,
} from '../activities/pack';
import type { BenchRow } from './bench-shadow';

const MODEL_MB = Number(process.env.FLEETGATE_BENCH_PACK_MB ?? 100);

export async function packBench(): Promise<BenchRow> {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-bench-pack-'));
  try {
    // The model's bytes are never parsed by the verification: random bytes of the size stand in for it.
    writeFileSync(join(dir, 'model.onnx'), randomBytes(MODEL_MB * 2 ** 20));
    mkdirSync(join(dir, 'golden'));
    writeFileSync(join(dir, 'golden', 'inputs.f32'), randomBytes(64 * 8 * 4));
    writeFileSync(join(dir, 'golden', 'outputs.f32'), randomBytes(64 * 2 * 4));
    const identity = { name: 'bench-model', version: '1.0.0', release: 1 };
    writeFileSync(
      join(dir, 'inference_config.json'),
      JSON.stringify({
        apiVersion: 'fleetgate/v1',
        kind: 'InferenceConfig',
        ...identity,
        inputs: [{ name: 'features', type: 'float32', shape: ['batch', 8] }],
        outputs: [{ name: 'probs', type: 'float32', shape: ['batch', 2] }],
        classes: ['clear', 'hazard'],
        golden: { inputs: 'golden/inputs.f32', outputs: 'golden/outputs.f32', rows: 64, tolerance: 1e-5 },
      }),
    );
    const files: Record<string, string> = {};
    for (const f of await listFiles(dir)) files[f] = await hashFile(join(dir, f));
    const manifest = Buffer.from(
      JSON.stringify({
        apiVersion: 'fleetgate/v1',
        kind: 'ModelPack',
        ...identity,
        model: 'model.onnx',
        files,
        trainingDataHash: '0'.repeat(64),
        codeHash: '0'.repeat(64),
        compatibleSkus: ['hw3'],
      }),
    );
    writeFileSync(join(dir, 'manifest.json'), manifest);
    const key = generateSigningKey();
    writeFileSync(join(dir, 'manifest.sig'), JSON.stringify(signManifest(manifest, key.privatePem)));
    const trust = new Map([[keyIdOf(createPublicKey(key.publicPem)), createPublicKey(key.publicPem)]]);

    const names = Object.keys(files);
    const verify = async () => {
      await verifyPackDir(dir, 'bench', trust);
    };
    const sha256sum = async () => {
      execFileSync('sha256sum', names, { cwd: dir, stdio: ['ignore', 'ignore', 'inherit'] });
    };
    await sha256sum(); // page cache
    await verify();
    let v = Infinity;
    let s = Infinity;
    for (let i = 0; i < 5; i++) {
      for (const [fn, set] of i % 2 === 0
        ? ([
            [verify, (ms: number) => (v = Math.min(v, ms))],
            [sha256sum, (ms: number) => (s = Math.min(s, ms))],
          ] as const)
        : ([
            [sha256sum, (ms: number) => (s = Math.min(s, ms))],
            [verify, (ms: number) => (v = Math.min(v, ms))],
          ] as const)) {
        const t0 = process.hrtime.bigint();
        await fn();
        set(Number(process.hrtime.bigint() - t0) / 1e6);
      }
    }
    console.log(
      `pack verification (${MODEL_MB} MB model, best of 5): verifyPackDir ${v.toFixed(0)} ms, sha256sum ` +
        `${s.toFixed(0)} ms, ratio ${(v / s).toFixed(2)}x of sha256sum (goal <= 1.5x)`,
    );
    return {
      name: `pack verification (${MODEL_MB} MB)`,
      subject: 'verifyPackDir',
      baseline: 'sha256sum',
      subjectMs: v,
      baselineMs: s,
      speedup: s / v,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (require.main === module) {
  void packBench();
}
