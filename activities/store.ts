/**
 * The ObjectStore on a local directory: fleetgate's default store for artifacts, registry records and
 * stage pointers.
 *
 * Every write is atomic (a temp file renamed into place), so a reader sees either the old bytes or the
 * new ones. `putIfAbsent` is write-once (a hard link that fails when the key exists); `compareAndSwap`
 * holds a per-key lock file created with O_EXCL, so callers in several processes on one machine (or on a
 * shared filesystem with working O_EXCL) never both win. Keys are '/'-separated and never leave the root.
 *
 * It must never overwrite a write-once key, never write outside its root and never hold a lock longer
 * than one swap.
 */
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs, type Dirent, type Stats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ObjectStore } from './deps';
import { ErrorType, fail } from '../errors';

/** Internal directories (temp files, locks) live under names no key can take. */
const TMP_DIR = '.tmp';
const LOCK_DIR = '.locks';

export interface LocalObjectStoreOptions {
  /** How long `compareAndSwap` waits for a busy lock before failing with Unavailable. Default 10 s. */
  lockTimeoutMs?: number;
  /** A lock older than this is considered abandoned and broken. Default 30 s. */
  staleLockMs?: number;
  /** fsync files before renaming them into place. Default true. */
  durable?: boolean;
}

export class LocalObjectStore implements ObjectStore {
  readonly root: string;
  private readonly lockTimeoutMs: number;
  private readonly staleLockMs: number;
  private readonly durable: boolean;

  constructor(rootDir: string, options: LocalObjectStoreOptions = {}) {
    this.root = path.resolve(rootDir);
    this.lockTimeoutMs = options.lockTimeoutMs ?? 10_000;
    this.staleLockMs = options.staleLockMs ?? 30_000;
    this.durable = options.durable ?? true;
  }

  async get(key: string): Promise<Buffer | undefined> {
    const file = this.pathOf(key);
    try {
      return await fs.readFile(file);
    } catch (err) {
      if (isCode(err, 'ENOENT') || isCode(err, 'EISDIR') || isCode(err, 'ENOTDIR')) return undefined;
      throw unavailable(`read ${key}`, err);
    }
  }

  async etag(key: string): Promise<string | null> {
    const bytes = await this.get(key);
    return bytes === undefined ? null : sha256(bytes);
  }

  async putIfAbsent(key: string, body: Buffer): Promise<'created' | 'exists'> {
    const file = this.pathOf(key);
    await fs.mkdir(path.dirname(file), { recursive: true });
    const tmp = await this.writeTemp(body);
    try {
      await fs.link(tmp, file);
      return 'created';
    } catch (err) {
      if (isCode(err, 'EEXIST')) return await this.compareExisting(key, body);
      if (isCode(err, 'EPERM') || isCode(err, 'ENOTSUP') || isCode(err, 'EXDEV')) {
        // Filesystems without hard links: exclusive create instead (readers may briefly see a short file).
        return await this.putExclusive(key, file, body);
      }
      throw unavailable(`write ${key}`, err);
    } finally {
      await fs.rm(tmp, { force: true });
    }
  }

  async compareAndSwap(key: string, expectedEtag: string | null, body: Buffer): Promise<string> {
    const file = this.pathOf(key);
    const lock = await this.acquire(key);
    try {
      const current = await this.etag(key);
      if (current !== expectedEtag) {
        throw fail(
          ErrorType.PointerConflict,
          `compare-and-swap on ${key}: expected etag ${expectedEtag ?? '(absent)'} but found ${current ?? '(absent)'}; ` +
            're-read the key and retry with its current etag',
          { key, expectedEtag, actualEtag: current },
        );
      }
      await fs.mkdir(path.dirname(file), { recursive: true });
      const tmp = await this.writeTemp(body);
      try {
        await this.assertHeld(key, lock);
        await fs.rename(tmp, file);
      } catch (err) {
        await fs.rm(tmp, { force: true });
        throw err;
      }
      return sha256(body);
    } finally {
      await this.release(lock);
    }
  }

  async list(prefix: string): Promise<string[]> {
    const cut = prefix.lastIndexOf('/');
    const dirPart = cut < 0 ? '' : prefix.slice(0, cut);
    const start = dirPart === '' ? this.root : this.pathOf(dirPart);
    const keys: string[] = [];
    await this.walk(start, dirPart, keys);
    return keys.filter((k) => k.startsWith(prefix)).sort();
  }

  async delete(key: string): Promise<void> {
    const file = this.pathOf(key);
    try {
      await fs.unlink(file);
    } catch (err) {
      if (isCode(err, 'ENOENT') || isCode(err, 'ENOTDIR')) return;
      throw unavailable(`delete ${key}`, err);
    }
  }

  /** Absolute file of a key; refuses keys that are empty, absolute or leave the root. */
  pathOf(key: string): string {
    if (typeof key !== 'string' || key.length === 0) {
      throw fail(
        ErrorType.InvalidInput,
        `object key must be a non-empty string (got ${JSON.stringify(key)})`,
      );
    }
    if (key.startsWith('/') || key.includes('\\') || key.includes('\0') || /^[A-Za-z]:/.test(key)) {
      throw fail(
        ErrorType.InvalidInput,
        `object key ${JSON.stringify(key)} is absolute or contains "\\" or NUL; use a relative '/'-separated key`,
      );
    }
    const segments = key.split('/');
    for (const segment of segments) {
      if (segment === '' || segment === '.' || segment === '..') {
        throw fail(
          ErrorType.InvalidInput,
          `object key ${JSON.stringify(key)} has an empty, "." or ".." segment and could leave the store; ` +
            'use plain names separated by single "/"',
        );
      }
      if (segment.startsWith('.')) {
        throw fail(
          ErrorType.InvalidInput,
          `object key ${JSON.stringify(key)}: segment ${JSON.stringify(segment)} starts with "." (reserved for ` +
            'the store itself); rename it',
        );
      }
    }
    const file = path.join(this.root, ...segments);
    if (!file.startsWith(this.root + path.sep)) {
      throw fail(ErrorType.InvalidInput, `object key ${JSON.stringify(key)} resolves outside the store root`);
    }
    return file;
  }

  private async walk(dir: string, keyPrefix: string, out: string[]): Promise<void> {
    let entries: Dirent[];
    try {
      entries = await fs.readdir(dir, { withFileTypes: true });
    } catch (err) {
      if (isCode(err, 'ENOENT') || isCode(err, 'ENOTDIR')) return;
      throw unavailable(`list ${keyPrefix || '(root)'}`, err);
    }
    for (const e of entries) {
      if (e.name.startsWith('.')) continue;
      const key = keyPrefix === '' ? e.name : `${keyPrefix}/${e.name}`;
      if (e.isDirectory()) await this.walk(path.join(dir, e.name), key, out);
      else if (e.isFile()) out.push(key);
    }
  }

  private async compareExisting(key: string, body: Buffer): Promise<'exists'> {
    return sameOrConflict(key, await this.get(key), body);
  }

  private async putExclusive(key: string, file: string, body: Buffer): Promise<'created' | 'exists'> {
    let handle: FileHandle;
    try {
      handle = await fs.open(file, 'wx');
    } catch (err) {
      if (isCode(err, 'EEXIST')) return this.compareExisting(key, body);
      throw unavailable(`write ${key}`, err);
    }
    try {
      await handle.writeFile(body);
      if (this.durable) await handle.sync();
    } finally {
      await handle.close();
    }
    return 'created';
  }

  private async writeTemp(body: Buffer): Promise<string> {
    const dir = path.join(this.root, TMP_DIR);
    await fs.mkdir(dir, { recursive: true });
    const tmp = path.join(dir, `${process.pid}-${randomBytes(8).toString('hex')}`);
    const handle = await fs.open(tmp, 'wx');
    try {
      await handle.writeFile(body);
      if (this.durable) await handle.sync();
    } finally {
      await handle.close();
    }
    return tmp;
  }

  private lockFile(key: string): string {
    return path.join(this.root, LOCK_DIR, `${sha256(Buffer.from(key))}.lock`);
  }

  private async acquire(key: string): Promise<Lock> {
    const file = this.lockFile(key);
    await fs.mkdir(path.dirname(file), { recursive: true });
    const token = randomBytes(12).toString('hex');
    const content = JSON.stringify({
      token,
      pid: process.pid,
      host: os.hostname(),
      key,
      at: new Date().toISOString(),
    });
    const deadline = Date.now() + this.lockTimeoutMs;
    let wait = 2;
    for (;;) {
      try {
        const handle = await fs.open(file, 'wx');
        try {
          await handle.writeFile(content);
        } finally {
          await handle.close();
        }
        return { file, token };
      } catch (err) {
        if (!isCode(err, 'EEXIST')) throw unavailable(`lock ${key}`, err);
      }
      await this.breakIfStale(file);
      if (Date.now() >= deadline) {
        throw fail(
          ErrorType.Unavailable,
          `lock on ${key} still busy after ${this.lockTimeoutMs} ms (${file}); another writer is swapping it, ` +
            `or remove the lock file if no fleetgate process is running`,
        );
      }
      await sleep(wait + Math.random() * wait);
      wait = Math.min(wait * 2, 50);
    }
  }

  /** Breaks a lock whose owner is gone (same host, dead pid) or that is older than `staleLockMs`. */
  private async breakIfStale(file: string): Promise<void> {
    let observed: Stats;
    let owner: { pid?: number; host?: string } = {};
    try {
      observed = await fs.stat(file);
      owner = JSON.parse(await fs.readFile(file, 'utf8')) as typeof owner;
    } catch {
      return; // gone, or still being written: not stale
    }
    const abandoned =
      owner.host === os.hostname() &&
      typeof owner.pid === 'number' &&
      owner.pid !== process.pid &&
      !alive(owner.pid);
    if (!abandoned && Date.now() - observed.mtimeMs < this.staleLockMs) return;
    // Move it aside first, then check it is the lock we judged stale; put back a fresh one taken by mistake.
    const aside = `${file}.stale-${randomBytes(6).toString('hex')}`;
    try {
      await fs.rename(file, aside);
    } catch {
      return;
    }
    try {
      const moved = await fs.stat(aside);
      if (moved.ino !== observed.ino) await fs.link(aside, file).catch(() => undefined);
    } finally {
      await fs.rm(aside, { force: true });
    }
  }

  private async assertHeld(key: string, lock: Lock): Promise<void> {
    const holder = await fs.readFile(lock.file, 'utf8').catch(() => '');
    if (!holder.includes(lock.token)) {
      throw fail(
        ErrorType.Unavailable,
        `lock on ${key} was broken while held (${lock.file}); retry the swap`,
      );
    }
  }

  private async release(lock: Lock): Promise<void> {
    const holder = await fs.readFile(lock.file, 'utf8').catch(() => '');
    if (holder.includes(lock.token)) await fs.rm(lock.file, { force: true });
  }
}

interface Lock {
  file: string;
  token: string;
}

/**
 * A write-once key found taken: 'exists' when it holds these very bytes (a retried write), else an
 * ImmutableConflict naming both digests. Shared by every ObjectStore.
 */
export function sameOrConflict(key: string, existing: Buffer | undefined, body: Buffer): 'exists' {
  if (existing !== undefined && existing.equals(body)) return 'exists';
  throw fail(
    ErrorType.ImmutableConflict,
    `${key} is write-once and already holds other bytes (sha256 ${existing ? sha256(existing) : '?'}, ` +
      `new ${sha256(body)}); write under a new key (e.g. a new version) instead`,
    { key, existingEtag: existing ? sha256(existing) : null, newEtag: sha256(body) },
  );
}

/** JSON an object of the store holds; InvalidInput naming the key when it is not JSON. */
export function parseStoredJson<T>(bytes: Buffer, key: string): T {
  try {
    return JSON.parse(bytes.toString('utf8')) as T;
  } catch (err) {
    throw fail(
      ErrorType.InvalidInput,
      `object ${key} is not valid JSON (${(err as Error).message}); it was not written by fleetgate or is damaged`,
    );
  }
}

export function sha256(bytes: Buffer | Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function isCode(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as NodeJS.ErrnoException).code === code;
}

function unavailable(what: string, err: unknown) {
  const e = err instanceof Error ? err : new Error(String(err));
  return fail(ErrorType.Unavailable, `object store: could not ${what}: ${e.message}`, undefined, e);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return isCode(err, 'EPERM');
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
