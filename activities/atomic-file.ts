/**
 * fleetgate's one way to write a whole file on disk: reports, report pages, pack files, the gateway's
 * routes, the workflow bundle cache and the create-once key and identity files all go through here.
 *
 * The bytes go to a temporary file beside the target, created exclusively (O_CREAT|O_EXCL, and
 * O_NOFOLLOW where the platform has it) under a random name, fsynced, then renamed over the target (or,
 * with `replace: false`, hard-linked into place so that an existing file is never replaced) and the
 * directory fsynced. A reader sees the old file or the new one, never half of one; a failure removes the
 * temporary file.
 *
 * It must never follow a symbolic link: not at a temporary name (an exclusive create fails on any
 * existing entry, a link included, and another random name is drawn), and not at the target (rename and
 * link replace or refuse a link at the target, they never write through it). It must never write a
 * temporary file anywhere but the target's directory, and never leave one behind on failure.
 */
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  constants,
  fchmodSync,
  fsyncSync,
  linkSync,
  openSync,
  promises as fs,
  renameSync,
  rmSync,
  writeSync,
} from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export interface AtomicWriteOptions {
  /**
   * Permission bits of the file. Given, the file gets exactly these (e.g. 0o600 for a secret: set on the
   * temporary file before any byte is written); absent, 0o666 less the process's umask, as writeFile.
   */
  mode?: number;
  /** fsync the file before it is renamed into place and the directory after. Default true. */
  durable?: boolean;
  /**
   * false: create the file only when it does not exist (hard link into place; an existing target is
   * left alone and the call answers 'exists'). Default true: replace the target.
   */
  replace?: boolean;
  /** The random part of temporary names (tests make it deterministic); default 8 random bytes as hex. */
  randomName?: () => string;
}

/** How many temporary names are tried before giving up (each taken name is another process's, or planted). */
const NAME_ATTEMPTS = 16;

/** O_NOFOLLOW where the platform has it (0 elsewhere: O_EXCL alone already refuses an existing link). */
const NOFOLLOW = constants.O_NOFOLLOW ?? 0;
const CREATE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | NOFOLLOW;

/** A temporary name beside `target`: `.<name>.<random>.tmp`, hidden, never a name a caller writes. */
export function tempNameOf(target: string, random: string): string {
  return join(dirname(target), `.${basename(target)}.${random}.tmp`);
}

function defaultRandom(): string {
  return randomBytes(8).toString('hex');
}

function isCode(err: unknown, code: string): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === code;
}

function noFreeName(target: string): Error {
  return new Error(
    `cannot create a temporary file beside ${target}: ${NAME_ATTEMPTS} candidate names were all taken; ` +
      `remove the stray .${basename(target)}.*.tmp entries from ${dirname(target)} and try again`,
  );
}

/**
 * Writes `data` to `path` atomically (see the module comment). Answers 'written', or 'exists' with
 * `replace: false` when the target was there (it is left unchanged).
 */
export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  options: AtomicWriteOptions = {},
): Promise<'written' | 'exists'> {
  const random = options.randomName ?? defaultRandom;
  const durable = options.durable ?? true;
  let tmp = '';
  let handle: FileHandle | undefined;
  for (let attempt = 0; handle === undefined; attempt++) {
    if (attempt === NAME_ATTEMPTS) throw noFreeName(path);
    tmp = tempNameOf(path, random());
    try {
      handle = await fs.open(tmp, CREATE_FLAGS, options.mode ?? 0o666);
    } catch (err) {
      if (!isCode(err, 'EEXIST') && !isCode(err, 'ELOOP')) throw err;
    }
  }
  try {
    try {
      if (options.mode !== undefined) await handle.chmod(options.mode);
      await handle.writeFile(data);
      if (durable) await handle.sync();
    } finally {
      await handle.close();
    }
    let outcome: 'written' | 'exists' = 'written';
    if (options.replace === false) {
      try {
        await fs.link(tmp, path);
      } catch (err) {
        if (!isCode(err, 'EEXIST')) throw err;
        outcome = 'exists';
      }
      await fs.rm(tmp, { force: true });
    } else {
      await fs.rename(tmp, path);
    }
    if (durable && outcome === 'written') await syncDir(dirname(path));
    return outcome;
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
}

/** `writeFileAtomic` for callers that cannot wait (process start-up, a cache written once). */
export function writeFileAtomicSync(
  path: string,
  data: string | Uint8Array,
  options: AtomicWriteOptions = {},
): 'written' | 'exists' {
  const random = options.randomName ?? defaultRandom;
  const durable = options.durable ?? true;
  let tmp = '';
  let fd: number | undefined;
  for (let attempt = 0; fd === undefined; attempt++) {
    if (attempt === NAME_ATTEMPTS) throw noFreeName(path);
    tmp = tempNameOf(path, random());
    try {
      fd = openSync(tmp, CREATE_FLAGS, options.mode ?? 0o666);
    } catch (err) {
      if (!isCode(err, 'EEXIST') && !isCode(err, 'ELOOP')) throw err;
    }
  }
  try {
    try {
      if (options.mode !== undefined) fchmodSync(fd, options.mode);
      const bytes = typeof data === 'string' ? Buffer.from(data) : data;
      for (let off = 0; off < bytes.length;) off += writeSync(fd, bytes, off, bytes.length - off);
      if (durable) fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    let outcome: 'written' | 'exists' = 'written';
    if (options.replace === false) {
      try {
        linkSync(tmp, path);
      } catch (err) {
        if (!isCode(err, 'EEXIST')) throw err;
        outcome = 'exists';
      }
      rmSync(tmp, { force: true });
    } else {
      renameSync(tmp, path);
    }
    if (durable && outcome === 'written') syncDirSync(dirname(path));
    return outcome;
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}

async function syncDir(dir: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await fs.open(dir, constants.O_RDONLY);
    await handle.sync();
  } catch {
    // Some filesystems cannot fsync a directory; the rename itself is still atomic.
  } finally {
    await handle?.close();
  }
}

function syncDirSync(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, constants.O_RDONLY);
    fsyncSync(fd);
  } catch {
    // As in syncDir.
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
