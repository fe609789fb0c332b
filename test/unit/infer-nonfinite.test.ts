/**
 * The fleet's inference path (`infer` of activities/fleet.ts) with real onnxruntime on a fixture model:
 * a model that outputs NaN answers no class. The batch fails with InvalidInput (the rollout compensates
 * and ends); no event is read as "clear".
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { ArmColumns, infer } from '../../activities/fleet';
import { FEATURES } from '../../policies/model-contract';
import { OnnxModelRunner } from '../../workers/model-runner';
import { ErrorType } from '../../errors';
import type { Sku } from '../../policies/schema';
import { ROOT } from '../support';

const model = readFileSync(join(ROOT, 'models', 'production', 'model.onnx'));
const sku: Sku = {
  name: 'hw3',
  speedFactor: 1,
  latencyBudgetMs: 500,
  intraOpThreads: 1,
  graphOptimization: 'all',
  installFailureRate: 0,
  slowdown: [],
};

function frames(value: number, count = 4) {
  return {
    count,
    features: new Float32Array(count * FEATURES).fill(value),
    labels: new Uint8Array(count),
    night: new Uint8Array(count),
    rain: new Uint8Array(count),
  };
}

test('infer: finite outputs become classes; NaN outputs fail the batch as InvalidInput, never a class', async () => {
  const runner = new OnnxModelRunner(() => Promise.resolve(model));
  const digest = createHash('sha256').update(model).digest('hex');
  try {
    const ok = new ArmColumns(4);
    await infer(runner, digest, frames(0.5), null, sku, ok);
    assert.ok([...ok.pred].every((p) => p === 0 || p === 1));
    assert.ok([...ok.conf].every((c) => Number.isFinite(c)));

    // Every feature at float32's largest value: the fixture's logistic regression outputs NaN.
    for (const idx of [null, [0, 2, 3]]) {
      const out = new ArmColumns(4);
      const err = await infer(runner, digest, frames(3.4028234663852886e38), idx, sku, out).then(
        () => assert.fail('a NaN output was read as a class'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof ApplicationFailure);
      assert.equal(err.type, ErrorType.InvalidInput);
      assert.equal(err.nonRetryable, true);
      assert.match(err.message, /non-finite value\(s\) \(NaN or Infinity\)/);
      assert.ok(
        [...out.pred].every((p) => p === 255),
        'no class was written',
      );
    }
  } finally {
    await runner.close();
  }
});
