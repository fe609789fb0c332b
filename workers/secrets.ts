/**
 * The pseudonym key: the secret behind every vehicle pseudonym (HMAC-SHA256 of the raw identifier).
 *
 * It comes from the environment (FLEETGATE_PSEUDONYM_KEY, hex, at least 32 bytes) or from
 * `<dataDir>/secrets/pseudonym.key`, which is created once with 32 random bytes and mode 0600 and then
 * reused, so the same vehicle keeps the same pseudonym across restarts. This module must never log,
 * return in an error, or write anywhere else the key's bytes.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomicSync } from '../activities/atomic-file';
import { ErrorType, fail } from '../errors';

export const PSEUDONYM_KEY_ENV = 'FLEETGATE_PSEUDONYM_KEY';
export const MIN_KEY_BYTES = 32;

/** Path of the key file under a data directory. */
export function pseudonymKeyPath(dataDir: string): string {
  return join(dataDir, 'secrets', 'pseudonym.key');
}

/** The pseudonym key from the environment, or from the data directory (created on first use). */
export function loadPseudonymKey(dataDir: string, env: NodeJS.ProcessEnv = process.env): Buffer {
  const fromEnv = env[PSEUDONYM_KEY_ENV]?.trim();
  if (fromEnv) {
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(fromEnv) || fromEnv.length < MIN_KEY_BYTES * 2) {
      throw fail(
        ErrorType.InvalidInput,
        `${PSEUDONYM_KEY_ENV} must be hex of at least ${MIN_KEY_BYTES} bytes (got ${fromEnv.length} characters)`,
      );
    }
    return Buffer.from(fromEnv, 'hex');
  }
  const file = pseudonymKeyPath(dataDir);
  mkdirSync(join(dataDir, 'secrets'), { recursive: true, mode: 0o700 });
  createOnce(file, () => randomBytes(MIN_KEY_BYTES));
  const key = readFileSync(file);
  if (key.length < MIN_KEY_BYTES) {
    throw fail(
      ErrorType.InvalidInput,
      `pseudonym key file ${file} holds ${key.length} bytes; at least ${MIN_KEY_BYTES} are needed`,
    );
  }
  return key;
}

/**
 * Creates `file` (mode 0600) with `contents()` unless it exists: written whole under a private name
 * (created exclusively, random), then linked into place (activities/atomic-file.ts, `replace: false`).
 * Linking fails when the file exists, so exactly one of several racing processes creates it and no
 * reader ever sees it partly written.
 */
export function createOnce(file: string, contents: () => string | Buffer): void {
  if (existsSync(file)) return;
  writeFileAtomicSync(file, contents(), { mode: 0o600, replace: false });
}
