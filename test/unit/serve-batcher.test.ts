/**
 * The gateway's micro-batcher on its own, with a fake runner that records each run: batches close at
 * maxBatch rows or maxDelayMs after their first row (mock timers: no wall-clock timing), each request
 * gets its own rows of the output, and a full row budget refuses at once without queuing.
 */
import assert from 'node:assert/strict';
import { describe, it, mock } from 'node:test';
import { MicroBatcher, QueueFullError, RowBudget } from '../../serve/batcher';

const FEATURES = 3;

/** A runner whose output row i is [sum of row i, rows of the batch]; it records the rows of each run. */
function fakeRunner(gate?: Promise<void>) {
  const runs: number[] = [];
  return {
    runs,
    async run(_digest: string, features: Float32Array, rows: number) {
      runs.push(rows);
      if (gate) await gate;
      const probs = new Float32Array(rows * 2);
      for (let r = 0; r < rows; r++) {
        let s = 0;
        for (let c = 0; c < FEATURES; c++) s += features[r * FEATURES + c]!;
        probs[r * 2] = s;
        probs[r * 2 + 1] = rows;
      }
      return { probs, elapsedMs: 0 };
    },
  };
}

const rowsOf = (...values: number[]) => Float32Array.from(values.flatMap((v) => [v, 0, 0]));

describe('MicroBatcher', () => {
  it('runs once maxBatch rows wait, without waiting for the delay, and splits the outputs', async () => {
    const runner = fakeRunner();
    const b = new MicroBatcher({ runner, digest: 'd', features: FEATURES, maxBatch: 4, maxDelayMs: 60_000 });
    const budget = new RowBudget(100);
    const results = await Promise.all([
      b.submit(rowsOf(1, 2), 2, budget),
      b.submit(rowsOf(3), 1, budget),
      b.submit(rowsOf(4), 1, budget),
    ]);
    assert.deepEqual(runner.runs, [4]);
    assert.deepEqual(Array.from(results[0]!.probs), [1, 4, 2, 4]);
    assert.deepEqual(Array.from(results[1]!.probs), [3, 4]);
    assert.deepEqual(Array.from(results[2]!.probs), [4, 4]);
    assert.equal(results[0]!.batchRows, 4);
    assert.equal(budget.rows, 0, 'rows go back to the budget once their batch ran');
  });

  it('never puts more than maxBatch rows in a batch: the rest form the next one', async () => {
    const runner = fakeRunner();
    const b = new MicroBatcher({ runner, digest: 'd', features: FEATURES, maxBatch: 4, maxDelayMs: 0 });
    const budget = new RowBudget(100);
    await Promise.all(Array.from({ length: 10 }, (_, i) => b.submit(rowsOf(i), 1, budget)));
    assert.ok(
      runner.runs.every((n) => n <= 4),
      `batches ${runner.runs.join(', ')}`,
    );
    assert.equal(
      runner.runs.reduce((a, n) => a + n, 0),
      10,
    );
  });

  it('a request larger than maxBatch runs alone, whole', async () => {
    const runner = fakeRunner();
    const b = new MicroBatcher({ runner, digest: 'd', features: FEATURES, maxBatch: 2, maxDelayMs: 0 });
    const r = await b.submit(rowsOf(1, 2, 3, 4, 5), 5, new RowBudget(100));
    assert.deepEqual(runner.runs, [5]);
    assert.equal(r.probs.length, 10);
  });

  it('waits maxDelayMs after the first row, then runs what it has', async () => {
    mock.timers.enable({ apis: ['setTimeout', 'Date'] });
    try {
      const runner = fakeRunner();
      const b = new MicroBatcher({ runner, digest: 'd', features: FEATURES, maxBatch: 32, maxDelayMs: 5 });
      const budget = new RowBudget(100);
      const p1 = b.submit(rowsOf(1), 1, budget);
      mock.timers.tick(3);
      const p2 = b.submit(rowsOf(2), 1, budget);
      await Promise.resolve();
      assert.deepEqual(runner.runs, [], 'nothing runs before the delay');
      mock.timers.tick(2);
      const [r1, r2] = await Promise.all([p1, p2]);
      assert.deepEqual(runner.runs, [2]);
      assert.deepEqual(Array.from(r1.probs), [1, 2]);
      assert.deepEqual(Array.from(r2.probs), [2, 2]);
    } finally {
      mock.timers.reset();
    }
  });

  it('refuses at once, queuing nothing, when the budget cannot hold the rows; the budget is shared', async () => {
    let open!: () => void;
    const runner = fakeRunner(new Promise<void>((res) => (open = res)));
    const budget = new RowBudget(3);
    const a = new MicroBatcher({ runner, digest: 'a', features: FEATURES, maxBatch: 1, maxDelayMs: 0 });
    const c = new MicroBatcher({ runner, digest: 'c', features: FEATURES, maxBatch: 1, maxDelayMs: 0 });
    const held = [a.submit(rowsOf(1, 2), 2, budget), c.submit(rowsOf(3), 1, budget)];
    await assert.rejects(c.submit(rowsOf(4), 1, budget), (err: unknown) => {
      assert.ok(err instanceof QueueFullError);
      assert.equal(err.queued, 3);
      assert.equal(err.max, 3);
      return true;
    });
    assert.equal(budget.rows, 3, 'the refused rows were not taken');
    open();
    await Promise.all(held);
    assert.equal(budget.rows, 0);
    await c.submit(rowsOf(5), 1, budget);
  });

  it('a failed run fails every request of its batch and returns their rows', async () => {
    const budget = new RowBudget(10);
    const b = new MicroBatcher({
      runner: { run: () => Promise.reject(new Error('boom')) },
      digest: 'd',
      features: FEATURES,
      maxBatch: 8,
      maxDelayMs: 0,
    });
    const rs = await Promise.allSettled([b.submit(rowsOf(1), 1, budget), b.submit(rowsOf(2), 1, budget)]);
    assert.ok(rs.every((r) => r.status === 'rejected' && (r.reason as Error).message === 'boom'));
    assert.equal(budget.rows, 0);
  });

  it('drain runs what is queued without waiting for the delay', async () => {
    const runner = fakeRunner();
    const b = new MicroBatcher({ runner, digest: 'd', features: FEATURES, maxBatch: 32, maxDelayMs: 60_000 });
    const p = b.submit(rowsOf(1), 1, new RowBudget(10));
    await b.drain();
    assert.deepEqual(runner.runs, [1]);
    await p;
  });

  it('rejects features that are not rows x features long', async () => {
    const b = new MicroBatcher({
      runner: fakeRunner(),
      digest: 'd',
      features: FEATURES,
      maxBatch: 4,
      maxDelayMs: 0,
    });
    await assert.rejects(b.submit(new Float32Array(4), 1, new RowBudget(10)), /expected 1 x 3 features/);
  });
});
