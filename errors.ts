/**
 * The one module of fleetgate's error types.
 *
 * Every failure that crosses the activity/workflow boundary is an `ApplicationFailure` whose `type` is
 * one of `ErrorType`. Retry policies take `nonRetryableErrorTypes` from here, so a digest mismatch or an
 * invalid policy is never retried, while a flaky store or a busy server is.
 *
 * This module must stay free of side effects: workflows import it.
 */
import { ApplicationFailure } from '@temporalio/common';

export const ErrorType = {
  /** Input failed its zod schema (policy, rollout request, manifest). */
  InvalidInput: 'InvalidInput',
  /** A model pack's files do not match the sha256 digests of its manifest. */
  DigestMismatch: 'DigestMismatch',
  /** The candidate's ONNX inputs/outputs (names, element types, shapes) differ from production's. */
  ContractMismatch: 'ContractMismatch',
  /** A write-once record already exists with different content. */
  ImmutableConflict: 'ImmutableConflict',
  /** A compare-and-swap on a pointer found another value than expected. */
  PointerConflict: 'PointerConflict',
  /** Something the rollout refers to does not exist (pack, record, pointer, fleet manifest). */
  NotFound: 'NotFound',
  /** A model failed its bench on a hardware SKU. */
  BenchFailed: 'BenchFailed',
  /** A pack's manifest signature does not verify against the key it names, or is missing or malformed. */
  BadSignature: 'BadSignature',
  /** A pack is signed by a key the registry does not trust. */
  UntrustedSigner: 'UntrustedSigner',
  /** A file is in the pack but not in its manifest, or in the manifest but not in the pack. */
  FileSetMismatch: 'FileSetMismatch',
  /** A pack's files come from different releases (a file, or inference_config.json, of another release). */
  MixedRelease: 'MixedRelease',
  /** A pack's release counter is not above production's: a rollback (freeze) attack or a stale pack. */
  ReleaseRollback: 'ReleaseRollback',
  /** A semantic-version major bump over production without the rollout's explicit approval. */
  MajorBumpUnapproved: 'MajorBumpUnapproved',
  /**
   * A pack path, or a file named in it, that leaves the pack (.., absolute, a link outside); a rollout's
   * manifest path that leaves the worker's directory (activities/confine.ts).
   */
  PathEscape: 'PathEscape',
  /**
   * A request to a running rollout that its state refuses (no gate pending, another gate, a reviewer not
   * in the policy, already paused, an ended rollout): asking again unchanged gets the same answer.
   */
  Refused: 'Refused',
  /** A transient failure of a dependency: retried. */
  Unavailable: 'Unavailable',
} as const;
export type ErrorType = (typeof ErrorType)[keyof typeof ErrorType];

/** Types that no retry can fix. Used by every retry policy in fleetgate. */
export const nonRetryableErrorTypes: string[] = [
  ErrorType.InvalidInput,
  ErrorType.DigestMismatch,
  ErrorType.ContractMismatch,
  ErrorType.ImmutableConflict,
  ErrorType.PointerConflict,
  ErrorType.NotFound,
  ErrorType.BenchFailed,
  ErrorType.BadSignature,
  ErrorType.UntrustedSigner,
  ErrorType.FileSetMismatch,
  ErrorType.MixedRelease,
  ErrorType.ReleaseRollback,
  ErrorType.MajorBumpUnapproved,
  ErrorType.PathEscape,
  ErrorType.Refused,
];

/** Builds a non-retryable failure of a known type, keeping the cause chain. */
export function fail(type: ErrorType, message: string, details?: unknown, cause?: Error): ApplicationFailure {
  return ApplicationFailure.create({
    type,
    message,
    nonRetryable: nonRetryableErrorTypes.includes(type),
    details: details === undefined ? undefined : [details],
    cause,
  });
}
