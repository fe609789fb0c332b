/**
 * Micro-batching of inference: one `MicroBatcher` per model digest gathers the rows of concurrent
 * requests until `maxBatch` rows are waiting or `maxDelayMs` have passed since the first of them (0, the
 * gateway's default: at the end of the current turn of the event loop when the model is idle, so batches
 * form from the rows submitted in that turn and those that arrive while a run is in flight), runs the model once on them all and hands each request its own rows of the output.
 *
 * Memory is bounded: every submission takes its rows from a `RowBudget` (the served path has one, shadow
 * mirroring another) and gives them back once its batch has run; a submission the budget cannot hold is
 * refused at once with `QueueFullError`, never queued. One batch runs at a time per digest: rows that
 * arrive meanwhile form the next one.
 */
import type { ModelRunner } from '../activities/deps';

/** Rows waiting or running, across the batchers that share it, at most `max`. */
export class RowBudget {
  private used = 0;
  constructor(readonly max: number) {}
  get rows(): number {
    return this.used;
  }
  /** Takes `n` rows when they fit; false (nothing taken) when they do not. */
  tryTake(n: number): boolean {
    if (this.used + n > this.max) return false;
    this.used += n;
    return true;
  }
  release(n: number): void {
    this.used = Math.max(0, this.used - n);
  }
}

/** The budget could not hold a submission's rows: answer 429 (or drop a shadow). */
export class QueueFullError extends Error {
  override name = 'QueueFullError';
  constructor(
    readonly rows: number,
    readonly queued: number,
    readonly max: number,
  ) {
    super(`the queue holds ${queued} of at most ${max} rows; ${rows} more do not fit`);
  }
}

export interface BatchResult {
  /** This submission's outputs, row-major [rows, outputsPerRow]. */
  probs: Float32Array;
  outputsPerRow: number;
  /** Rows in the batch this submission ran in. */
  batchRows: number;
  /** Wall time of the model run, ms. */
  runMs: number;
}

export interface MicroBatcherOptions {
  runner: Pick<ModelRunner, 'run'>;
  digest: string;
  /** Features per row. */
  features: number;
  maxBatch: number;
  maxDelayMs: number;
  /** Called once per model run with its number of rows (metrics, tracing). */
  onBatch?: (rows: number, runMs: number) => void;
}

interface Pending {
  features: Float32Array;
  rows: number;
  budget: RowBudget;
  at: number;
  resolve: (r: BatchResult) => void;
  reject: (err: unknown) => void;
}

export class MicroBatcher {
  private pending: Pending[] = [];
  private pendingRows = 0;
  private running = false;
  private timer: NodeJS.Timeout | undefined;
  private idleWaiters: (() => void)[] = [];
  /** While draining, batches run at once instead of waiting for more rows. */
  private urgent = false;
  /** A batch is to start at the end of this turn. */
  private starting = false;

  constructor(private readonly opts: MicroBatcherOptions) {
    if (!(opts.maxBatch >= 1)) throw new Error(`maxBatch must be at least 1 (got ${opts.maxBatch})`);
  }

  get digest(): string {
    return this.opts.digest;
  }

  /** Rows waiting for a batch (not counting the one running). */
  get queuedRows(): number {
    return this.pendingRows;
  }

  /**
   * Queues `rows` rows (`features` is row-major [rows, features]) and resolves with their outputs.
   * Throws QueueFullError at once, queuing nothing, when `budget` cannot hold them.
   */
  submit(features: Float32Array, rows: number, budget: RowBudget): Promise<BatchResult> {
    if (features.length !== rows * this.opts.features) {
      return Promise.reject(
        new Error(`expected ${rows} x ${this.opts.features} features, got ${features.length} values`),
      );
    }
    if (!budget.tryTake(rows)) {
      return Promise.reject(new QueueFullError(rows, budget.rows, budget.max));
    }
    return new Promise<BatchResult>((resolve, reject) => {
      this.pending.push({ features, rows, budget, at: Date.now(), resolve, reject });
      this.pendingRows += rows;
      this.schedule();
    });
  }

  /** Runs what is queued without waiting for more rows, and resolves once nothing is queued or running. */
  drain(): Promise<void> {
    this.urgent = true;
    this.schedule();
    return this.idle();
  }

  /** Resolves once nothing is queued or running. */
  idle(): Promise<void> {
    if (!this.running && this.pending.length === 0) return Promise.resolve();
    return new Promise((res) => this.idleWaiters.push(res));
  }

  private schedule(): void {
    if (this.running || this.starting || this.pending.length === 0) return;
    const waited = Date.now() - this.pending[0]!.at;
    if (this.urgent || this.pendingRows >= this.opts.maxBatch || waited >= this.opts.maxDelayMs) {
      this.clearTimer();
      // At the end of this turn, not at once: rows submitted in the same turn (the mirrors of the
      // requests one batch answered) run in one batch instead of the first alone and the rest a whole
      // loop iteration later.
      this.starting = true;
      process.nextTick(() => {
        this.starting = false;
        if (!this.running && this.pending.length > 0) void this.runBatch();
      });
      return;
    }
    if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        if (!this.running && this.pending.length > 0) void this.runBatch();
      }, this.opts.maxDelayMs - waited);
    }
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Takes submissions up to maxBatch rows (a single larger submission runs alone) and runs them once. */
  private async runBatch(): Promise<void> {
    this.running = true;
    const batch: Pending[] = [];
    let rows = 0;
    while (this.pending.length > 0) {
      const next = this.pending[0]!;
      if (batch.length > 0 && rows + next.rows > this.opts.maxBatch) break;
      batch.push(this.pending.shift()!);
      rows += next.rows;
    }
    this.pendingRows -= rows;
    const cols = this.opts.features;
    let input: Float32Array;
    if (batch.length === 1) input = batch[0]!.features;
    else {
      input = new Float32Array(rows * cols);
      let at = 0;
      for (const p of batch) {
        input.set(p.features, at);
        at += p.features.length;
      }
    }
    try {
      const { probs, elapsedMs } = await this.opts.runner.run(this.opts.digest, input, rows);
      if (probs.length % rows !== 0 || probs.length === 0) {
        throw new Error(
          `model ${this.opts.digest.slice(0, 12)} gave ${probs.length} outputs for ${rows} rows`,
        );
      }
      const per = probs.length / rows;
      this.opts.onBatch?.(rows, elapsedMs);
      let row = 0;
      for (const p of batch) {
        p.resolve({
          probs: probs.slice(row * per, (row + p.rows) * per),
          outputsPerRow: per,
          batchRows: rows,
          runMs: elapsedMs,
        });
        row += p.rows;
      }
    } catch (err) {
      for (const p of batch) p.reject(err);
    } finally {
      for (const p of batch) p.budget.release(p.rows);
      this.running = false;
    }
    if (this.pending.length > 0) this.schedule();
    else {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }
}
