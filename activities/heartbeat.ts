/**
 * Heartbeats of fleetgate's activities: a worker that dies while running one is noticed within the
 * activity's heartbeat timeout (seconds; see workflows/rollout.ts), not when its start-to-close timeout
 * ends, and a cancellation (an abort) reaches the running activity at its next heartbeat.
 *
 * `heartbeating` wraps every activity of the worker (the composition root applies it): it heartbeats at
 * once and then every `HEARTBEAT_EVERY_MS` while the activity runs, carrying the latest progress the
 * activity reported with `progress()`. A retry reads that progress with `resumeFrom()` and goes on from
 * there where the activity can (the gateway's request batches, activities/service.ts); where its work is
 * one transaction it starts over, and the details tell the operator how far the lost attempt got.
 *
 * It must never change what an activity returns or throws, and does nothing outside an activity (unit
 * tests call the factories' functions directly).
 */
import { Context } from '@temporalio/activity';
import { CancelledFailure } from '@temporalio/common';

/** How often a running activity heartbeats. The SDK throttles sends to 80% of the heartbeat timeout. */
export const HEARTBEAT_EVERY_MS = 1_000;

/** What an activity reports of its progress: the step it is at, and what a retry needs to resume. */
export interface Progress {
  step: string;
  [detail: string]: unknown;
}

const latest = new WeakMap<Context, Progress>();

function current(): Context | undefined {
  try {
    return Context.current();
  } catch {
    return undefined;
  }
}

/** Records the running activity's progress and heartbeats it now; a no-op outside an activity. */
export function progress(p: Progress): void {
  const ctx = current();
  if (!ctx) return;
  latest.set(ctx, p);
  ctx.heartbeat(p);
}

/**
 * The progress the previous attempt of this activity last heartbeated (undefined on a first attempt,
 * outside an activity, or when it reported none).
 */
export function resumeFrom<P extends Progress>(): P | undefined {
  const details = current()?.info.heartbeatDetails as unknown;
  return details && typeof details === 'object' && 'step' in details ? (details as P) : undefined;
}

/**
 * Throws the cancellation when the running activity has been cancelled (an abort): called before a
 * change is committed, so a cancelled delivery changes nothing. A no-op outside an activity.
 */
export function throwIfCancelled(what: string): void {
  const ctx = current();
  if (ctx?.cancellationSignal.aborted) {
    throw new CancelledFailure(`${what} cancelled before it was committed: nothing was changed`);
  }
}

type AnyActivity = (...args: never[]) => Promise<unknown>;

/** Each activity of `activities`, heartbeating while it runs (see the module comment). */
export function heartbeating<T extends Record<string, AnyActivity>>(activities: T): T {
  const wrapped: Record<string, AnyActivity> = {};
  for (const [name, fn] of Object.entries(activities)) {
    wrapped[name] = async (...args: never[]) => {
      const ctx = current();
      if (!ctx) return fn(...args);
      // Until the activity reports its own progress, the previous attempt's is carried on.
      const carried = (ctx.info.heartbeatDetails as Progress | undefined) ?? { step: 'running' };
      const beat = () => ctx.heartbeat(latest.get(ctx) ?? carried);
      beat();
      const timer = setInterval(beat, HEARTBEAT_EVERY_MS);
      timer.unref();
      try {
        return await fn(...args);
      } finally {
        clearInterval(timer);
      }
    };
  }
  return wrapped as T;
}
