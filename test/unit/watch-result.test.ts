/**
 * The CLI's wait for a rollout's result (`resultUntil`, cli/progress.ts) around a stand-in workflow
 * handle: a long wait is made of rounds, each on an abort signal of its own, so the listeners the SDK
 * leaves on a signal (one per call, never removed) do not pile up; stopping ends the wait at once.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { WorkflowHandle } from '@temporalio/client';
import { resultUntil } from '../../cli/progress';
import type { RolloutResult } from '../../workflows/definitions';

/** A handle whose result arrives after `rounds` long polls; each poll leaves a listener on its signal. */
function standIn(rounds: number) {
  const signals: AbortSignal[] = [];
  let current: AbortSignal | undefined;
  let polls = 0;
  const result = { outcome: 'completed' } as RolloutResult;
  const handle = {
    client: {
      async withAbortSignal<T>(signal: AbortSignal, fn: () => Promise<T>): Promise<T> {
        signals.push(signal);
        current = signal;
        return fn();
      },
    },
    result(): Promise<RolloutResult> {
      const signal = current!;
      return new Promise((resolve, reject) => {
        // What the SDK does per call: a listener that is never removed.
        signal.addEventListener('abort', () => reject(new Error('CANCELLED')));
        if (++polls > rounds) resolve(result);
      });
    },
  };
  return { handle: handle as unknown as WorkflowHandle, signals, result };
}

describe('waiting for a rollout result', () => {
  it('waits in rounds, each on a fresh signal, and returns the result', async () => {
    const { handle, signals, result } = standIn(5);
    const got = await resultUntil(handle, new AbortController().signal, 5);
    assert.equal(got, result);
    assert.equal(signals.length, 6);
    assert.equal(new Set(signals).size, 6, 'no signal is used twice');
    for (const s of signals.slice(0, -1)) assert.ok(s.aborted);
  });

  it('ends the wait when stopped', async () => {
    const { handle } = standIn(Infinity);
    const stop = new AbortController();
    const waiting = resultUntil(handle, stop.signal, 60_000);
    setTimeout(() => stop.abort(), 5);
    await assert.rejects(waiting, /CANCELLED/);
  });

  it('passes on a failure of the workflow', async () => {
    const handle = {
      client: { withAbortSignal: (_: AbortSignal, fn: () => Promise<unknown>) => fn() },
      result: () => Promise.reject(new Error('workflow terminated')),
    } as unknown as WorkflowHandle;
    await assert.rejects(resultUntil(handle, new AbortController().signal, 5), /terminated/);
  });
});
