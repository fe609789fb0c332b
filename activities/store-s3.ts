/**
 * The ObjectStore on an S3 bucket (AWS S3, or an S3-compatible server such as moto or MinIO): the store
 * of a registry shared by workers on several machines.
 *
 * Keys live under a configurable prefix of one bucket. Writes are conditional requests, so no lock is
 * held anywhere: `putIfAbsent` is a PutObject with `If-None-Match: *`, and `compareAndSwap` reads the
 * object, checks the etag the caller expects, then writes with `If-Match` on the S3 ETag it read, so of
 * two swaps from the same value exactly one lands. Etags are the sha256 hex of an object's bytes, as for
 * LocalObjectStore (the registry computes them itself from the bytes it reads); the S3 ETag never leaves
 * this module.
 *
 * It must never overwrite a write-once key, never write without a condition, never address a key outside
 * its prefix and never turn a failed request into an answer (a 403 is not a missing key).
 */
import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type PutObjectCommandInput,
  type S3Client,
} from '@aws-sdk/client-s3';
import type { ObjectStore } from './deps';
import { sameOrConflict, sha256 } from './store';
import { ErrorType, fail } from '../errors';

export interface S3ObjectStoreOptions {
  bucket: string;
  /** Key prefix inside the bucket, e.g. "fleetgate/prod" (a trailing "/" is added); default none. */
  prefix?: string;
  /** MaxKeys of each ListObjectsV2 page, 1-1000 (default 1000); small pages let tests page. */
  pageSize?: number;
}

/** How often a write that met a concurrent conditional write (409) is tried again before Unavailable. */
const CONFLICT_RETRIES = 3;
/** S3's longest key, in UTF-8 bytes. */
const MAX_KEY_BYTES = 1024;

export class S3ObjectStore implements ObjectStore {
  readonly bucket: string;
  /** "" or a prefix ending in "/". */
  readonly prefix: string;
  private readonly pageSize: number;

  /** `client` is built by the composition root (workers/config.ts `openObjectStore`), not here. */
  constructor(
    readonly client: S3Client,
    options: S3ObjectStoreOptions,
  ) {
    if (!options.bucket)
      throw fail(ErrorType.InvalidInput, 'S3 object store: bucket is empty; name a bucket');
    this.bucket = options.bucket;
    const prefix = (options.prefix ?? '').replace(/\/+$/, '');
    if (prefix !== '') checkKey(prefix, 'store prefix');
    this.prefix = prefix === '' ? '' : `${prefix}/`;
    const pageSize = options.pageSize ?? 1000;
    if (!(Number.isInteger(pageSize) && pageSize >= 1 && pageSize <= 1000)) {
      throw fail(
        ErrorType.InvalidInput,
        `S3 object store: pageSize must be a whole number 1-1000 (got ${pageSize})`,
      );
    }
    this.pageSize = pageSize;
  }

  /** Ends the client's connections; the store is unusable after. */
  close(): void {
    this.client.destroy();
  }

  /** s3://bucket/prefix/, for messages. */
  get url(): string {
    return `s3://${this.bucket}/${this.prefix}`;
  }

  async get(key: string): Promise<Buffer | undefined> {
    return (await this.read(key))?.bytes;
  }

  async etag(key: string): Promise<string | null> {
    const bytes = await this.get(key);
    return bytes === undefined ? null : sha256(bytes);
  }

  async putIfAbsent(key: string, body: Buffer): Promise<'created' | 'exists'> {
    const objectKey = this.objectKey(key);
    for (let attempt = 0; ; attempt++) {
      try {
        await this.put({ Key: objectKey, Body: body, IfNoneMatch: '*' });
        return 'created';
      } catch (err) {
        const again = attempt < CONFLICT_RETRIES;
        if (isPreconditionFailed(err)) {
          const existing = await this.get(key);
          // Removed between the refused write and this read (not by fleetgate): write it again.
          if (existing === undefined && again) continue;
          return sameOrConflict(key, existing, body);
        }
        if (isConcurrentWrite(err) && again) {
          await sleep(20 * 2 ** attempt);
          continue;
        }
        throw this.failure(`write ${key}`, err);
      }
    }
  }

  async compareAndSwap(key: string, expectedEtag: string | null, body: Buffer): Promise<string> {
    const objectKey = this.objectKey(key);
    let condition: Pick<PutObjectCommandInput, 'IfMatch' | 'IfNoneMatch'>;
    if (expectedEtag === null) {
      condition = { IfNoneMatch: '*' };
    } else {
      const current = await this.read(key);
      const actual = current === undefined ? null : sha256(current.bytes);
      if (actual !== expectedEtag) throw pointerConflict(key, expectedEtag, actual);
      if (!current?.s3Etag) {
        throw fail(
          ErrorType.Unavailable,
          `object store ${this.url}: GetObject of ${key} returned no ETag, so it cannot be swapped; ` +
            'use a server that supports conditional writes (If-Match)',
        );
      }
      condition = { IfMatch: current.s3Etag };
    }
    try {
      await this.put({ Key: objectKey, Body: body, ...condition });
    } catch (err) {
      // Another writer changed (or, for If-Match, removed) the object between our read and write, or its
      // conditional write was still in flight (409): this swap did not happen.
      if (
        isPreconditionFailed(err) ||
        isConcurrentWrite(err) ||
        (expectedEtag !== null && isNoSuchKey(err))
      ) {
        const now = await this.etag(key);
        // The SDK sent the write again after an attempt that got no answer (a reset connection, a
        // timeout), and that attempt had landed: the refusal is of our own write.
        if (now === sha256(body) && attemptsOf(err) > 1) return now;
        throw pointerConflict(key, expectedEtag, now);
      }
      throw this.failure(`swap ${key}`, err);
    }
    return sha256(body);
  }

  async list(prefix: string): Promise<string[]> {
    return (await this.listVersions(prefix)).map((o) => o.key);
  }

  /**
   * Keys under a prefix, sorted, each with the version its listing gives (`s3:<ETag>:<size>`, what a
   * HEAD of the key says), so that a reader that remembers versions asks nothing per key.
   */
  async listVersions(prefix: string): Promise<{ key: string; version: string | null }[]> {
    const cut = prefix.lastIndexOf('/');
    if (cut > 0) checkKey(prefix.slice(0, cut)); // as LocalObjectStore.list does
    const keys: { key: string; version: string | null }[] = [];
    let token: string | undefined;
    do {
      let page;
      try {
        page = await this.client.send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: this.prefix + prefix,
            MaxKeys: this.pageSize,
            ContinuationToken: token,
          }),
        );
      } catch (err) {
        throw this.failure(`list ${prefix || '(root)'}`, err);
      }
      for (const o of page.Contents ?? []) {
        const key = o.Key?.slice(this.prefix.length);
        // Only keys this store could have written: no folder markers ("a/") or "."-names from other tools.
        if (key !== undefined && isStoreKey(key)) {
          keys.push({ key, version: o.ETag ? `s3:${o.ETag}:${o.Size ?? ''}` : null });
        }
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return keys.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async delete(key: string): Promise<void> {
    const objectKey = this.objectKey(key);
    try {
      // S3 answers 204 for a key that is already absent.
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: objectKey }));
    } catch (err) {
      throw this.failure(`delete ${key}`, err);
    }
  }

  /** Bucket key of a store key; refuses the keys LocalObjectStore refuses, and keys too long for S3. */
  objectKey(key: string): string {
    checkKey(key);
    const objectKey = this.prefix + key;
    if (Buffer.byteLength(objectKey) > MAX_KEY_BYTES) {
      throw fail(
        ErrorType.InvalidInput,
        `object key ${JSON.stringify(key)} is ${Buffer.byteLength(objectKey)} bytes with the store prefix, ` +
          `over S3's ${MAX_KEY_BYTES}; use a shorter key or prefix`,
      );
    }
    return objectKey;
  }

  /** Bytes and S3 ETag of a key, or undefined when it does not exist. */
  private async read(key: string): Promise<{ bytes: Buffer; s3Etag?: string } | undefined> {
    const objectKey = this.objectKey(key);
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: objectKey }));
      if (!res.Body) throw new Error('GetObject returned no body');
      const bytes = Buffer.from(await res.Body.transformToByteArray());
      return { bytes, s3Etag: res.ETag };
    } catch (err) {
      if (isNoSuchKey(err)) return undefined;
      throw this.failure(`read ${key}`, err);
    }
  }

  private async put(input: Omit<PutObjectCommandInput, 'Bucket'>): Promise<void> {
    await this.client.send(new PutObjectCommand({ Bucket: this.bucket, ...input }));
  }

  /**
   * Unavailable (retried) for a request that failed otherwise than by its condition: the network, 5xx and
   * throttling after the SDK's own retries, and also denials and a missing bucket, named with their fix.
   */
  private failure(what: string, err: unknown) {
    const e = asAwsError(err);
    const status = e.$metadata?.httpStatusCode;
    let hint = '';
    if (e.name === 'NoSuchBucket') hint = `; create bucket ${this.bucket} or fix FLEETGATE_STORE`;
    else if (status === 403) {
      hint =
        `; check that the credentials may s3:GetObject, s3:PutObject and s3:ListBucket on ${this.url} ` +
        '(without s3:ListBucket S3 answers 403 for a missing key)';
    } else if (isTransient(e)) hint = ' (transient; retried)';
    const code = [e.name === 'Error' && e.code ? e.code : e.name, status]
      .filter((x) => x !== undefined && x !== '')
      .join(' ');
    return fail(
      ErrorType.Unavailable,
      `object store ${this.url}: could not ${what}: ${code ? `${code}: ` : ''}${e.message}${hint}`,
      { bucket: this.bucket, prefix: this.prefix, status, name: e.name },
      err instanceof Error ? err : new Error(String(err)),
    );
  }
}

/** Same checks and messages as LocalObjectStore.pathOf, so a key is valid in either store. */
function checkKey(key: string, what = 'object key'): void {
  if (typeof key !== 'string' || key.length === 0) {
    throw fail(ErrorType.InvalidInput, `${what} must be a non-empty string (got ${JSON.stringify(key)})`);
  }
  if (key.startsWith('/') || key.includes('\\') || key.includes('\0') || /^[A-Za-z]:/.test(key)) {
    throw fail(
      ErrorType.InvalidInput,
      `${what} ${JSON.stringify(key)} is absolute or contains "\\" or NUL; use a relative '/'-separated key`,
    );
  }
  for (const segment of key.split('/')) {
    if (segment === '' || segment === '.' || segment === '..') {
      throw fail(
        ErrorType.InvalidInput,
        `${what} ${JSON.stringify(key)} has an empty, "." or ".." segment and could leave the store; ` +
          'use plain names separated by single "/"',
      );
    }
    if (segment.startsWith('.')) {
      throw fail(
        ErrorType.InvalidInput,
        `${what} ${JSON.stringify(key)}: segment ${JSON.stringify(segment)} starts with "." (reserved for ` +
          'the store itself); rename it',
      );
    }
  }
}

function isStoreKey(key: string): boolean {
  try {
    checkKey(key);
    return true;
  } catch {
    return false;
  }
}

function pointerConflict(key: string, expectedEtag: string | null, actual: string | null) {
  return fail(
    ErrorType.PointerConflict,
    `compare-and-swap on ${key}: expected etag ${expectedEtag ?? '(absent)'} but found ${actual ?? '(absent)'}; ` +
      're-read the key and retry with its current etag',
    { key, expectedEtag, actualEtag: actual },
  );
}

interface AwsError {
  name?: string;
  message?: string;
  code?: string;
  $metadata?: { httpStatusCode?: number; attempts?: number };
}

function asAwsError(err: unknown): AwsError {
  return typeof err === 'object' && err !== null ? (err as AwsError) : { message: String(err) };
}

function isPreconditionFailed(err: unknown): boolean {
  const e = asAwsError(err);
  return e.$metadata?.httpStatusCode === 412 || e.name === 'PreconditionFailed';
}

/** 409 ConditionalRequestConflict: another conditional write to the key was in flight. */
function isConcurrentWrite(err: unknown): boolean {
  const e = asAwsError(err);
  return e.name === 'ConditionalRequestConflict' || e.$metadata?.httpStatusCode === 409;
}

/** How many times the SDK sent the request (its own retries included). */
function attemptsOf(err: unknown): number {
  return asAwsError(err).$metadata?.attempts ?? 1;
}

function isNoSuchKey(err: unknown): boolean {
  return asAwsError(err).name === 'NoSuchKey';
}

const THROTTLING = new Set([
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'RequestLimitExceeded',
  'TooManyRequests',
]);
const NETWORK = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
]);

/** The network, a 5xx, throttling or a request timeout: worth trying again later. */
export function isTransient(err: unknown): boolean {
  const e = asAwsError(err);
  const status = e.$metadata?.httpStatusCode;
  if (status !== undefined && (status >= 500 || status === 429)) return true;
  if (THROTTLING.has(e.name ?? '') || e.name === 'RequestTimeout' || e.name === 'TimeoutError') return true;
  return status === undefined && NETWORK.has(e.code ?? '');
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
