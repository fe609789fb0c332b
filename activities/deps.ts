/**
 * Interfaces of what activities depend on. `workers/` builds the real implementations and hands them
 * to the activity factories; unit tests of code around them may hand fakes.
 */
import type { IoContract } from './contracts';

/** Object store: content-addressed blobs, write-once records, pointers moved by compare-and-swap. */
export interface ObjectStore {
  /** Bytes at key, or undefined. */
  get(key: string): Promise<Buffer | undefined>;
  /**
   * Writes only if the key is absent (if-none-match). Returns 'created', or 'exists' when the same
   * bytes are already there; throws ImmutableConflict when different bytes are.
   */
  putIfAbsent(key: string, body: Buffer): Promise<'created' | 'exists'>;
  /**
   * Replaces the value at key when its current etag equals `expectedEtag` (null: key must be absent).
   * Returns the new etag; throws PointerConflict otherwise.
   */
  compareAndSwap(key: string, expectedEtag: string | null, body: Buffer): Promise<string>;
  /** Current etag (sha256 of the bytes) of key, or null when absent. */
  etag(key: string): Promise<string | null>;
  /** Keys under a prefix, sorted. */
  list(prefix: string): Promise<string[]>;
}

/** Runs registered models with onnxruntime, one cached session per (digest, settings). */
export interface ModelRunner {
  /** Class probabilities [rows, 2] of `features` [rows, FEATURES], and the wall time of the run. */
  run(
    digest: string,
    features: Float32Array,
    rows: number,
    settings?: RunnerSettings,
  ): Promise<{ probs: Float32Array; elapsedMs: number }>;
  /** Input/output contract read from the ONNX file. */
  contract(digest: string): Promise<IoContract>;
  close(): Promise<void>;
}
export interface RunnerSettings {
  intraOpThreads?: number;
  graphOptimization?: 'disabled' | 'basic' | 'extended' | 'all';
}
