/**
 * The gateway's event log: one GatewayEvent per served request, as NDJSON lines appended to segments
 * `<stateDir>/events/events-<first seq>.ndjson`. A new segment starts once the current one passes
 * `segmentBytes`. `seq` grows by one per event across restarts: opening the log continues from the last
 * line of the last segment (a torn last line, from a crash mid-write, is cut off).
 *
 * Durability. `commit()` resolves once every line appended before it has been handed to the OS with
 * write(2); the gateway answers a request only after its event's commit, so a SIGKILL (or any crash of
 * the process) right after an answer loses nothing answered: the kernel holds the bytes. Concurrent
 * commits share one write (group commit): lines appended while a write is in flight go in the next one.
 * Against power loss the segment is fdatasync'ed every `syncMs` (default 1 s) when lines were written
 * since the last sync, and on `close()`: a power loss may lose the events of the last `syncMs`. With
 * `syncMs: 0` every group write is fdatasync'ed before its commits resolve (nothing answered is lost
 * to a power loss either, at the cost of one sync per write). Lines nobody commits (shadow results,
 * below) are written at least every `flushMs` and on `flush()`/`close()`; `read` flushes first, so a
 * reader sees every event appended before its call.
 *
 * Pending events. A mirrored request is answered before its shadow is done, but its event is written
 * only then, with the shadow's answer. So that an answered mirrored request survives a crash, its event
 * is first committed as a pending line (`{"pending":ID,"event":{...}}`, no seq: readers skip it) holding
 * the event as it stands if the shadow never ends; `settle` appends the full event and a
 * `{"settled":ID}` line. Pending lines not settled are carried to the start of each new segment, so
 * every unsettled one is in the last segment; opening the log appends, as events, the pending lines of
 * the last segment that were never settled (the process died before their shadow ended).
 *
 * Events carry callers' pseudonyms only: this module is never handed a raw caller id. It never rewrites
 * a line: it only appends, and cuts off a torn tail when opened.
 */
import {
  appendFileSync,
  closeSync,
  fdatasync,
  fdatasyncSync,
  fstatSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  writeSync,
} from 'node:fs';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { GatewayEvent } from './api';

export const EVENTS_DIR = 'events';
export const DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024;
export const DEFAULT_FLUSH_MS = 200;
export const DEFAULT_SYNC_MS = 1000;
/** Most events one `read` returns. */
export const MAX_READ = 50_000;

/** A read-position mark is kept about every this many events. */
const MARK_EVERY = 1024;
const READ_CHUNK = 1024 * 1024;
const SEQ_PREFIX = /^\{"seq":(\d+),/;
const SEGMENT = /^events-(\d{12})\.ndjson$/;
const datasync = promisify(fdatasync);
const segmentName = (firstSeq: number) => `events-${String(firstSeq).padStart(12, '0')}.ndjson`;

export interface EventLogOptions {
  segmentBytes?: number;
  flushMs?: number;
  /** fdatasync the segment at most this often when written to (0: before every commit resolves). */
  syncMs?: number;
}

/** A pending event (see the module comment): its id, for `settle`. */
export interface PendingEvent {
  readonly id: string;
}

const PENDING_PREFIX = '{"pending":';
const SETTLED_PREFIX = '{"settled":';

/** Lines appended together (one event, a pending line, or an event and its settled line). */
interface Entry {
  text: string;
  /** Events (seq lines) in `text`. */
  events: number;
}

interface Mark {
  seq: number;
  /** Index in `segments`. */
  seg: number;
  offset: number;
}

interface Segment {
  firstSeq: number;
  file: string;
}

export class EventLog {
  readonly dir: string;
  private readonly segmentBytes: number;
  private readonly syncMs: number;
  private seq: number;
  /** The highest seq handed to the OS (or given up on after a failed write). */
  private written: number;
  private segments: Segment[];
  private buffer: Entry[] = [];
  /** Entries ever appended by this process, and how many of them were written (or failed). */
  private appended = 0;
  private done = 0;
  /** Commits waiting for `done` to reach their entry count, oldest first. */
  private waiters: { upTo: number; resolve: () => void; reject: (err: Error) => void }[] = [];
  /** A write is queued on `chain` and has not yet taken the buffer. */
  private queued = false;
  /** Pending lines not yet settled, by id: carried into each new segment. */
  private readonly unsettled = new Map<string, string>();
  private readonly idPrefix = randomBytes(6).toString('hex');
  private nextId = 0;
  /** Byte offsets of some seqs written by this process (one every MARK_EVERY or so): where reads start. */
  private marks: Mark[] = [];
  /** The segment being appended to (written with write(2) on the event loop: small appends to the page cache). */
  private fd: number | undefined;
  private currentSize: number;
  /** A write failed part-way: the next write starts on a new line. */
  private torn = false;
  private dirty = false;
  private chain: Promise<void> = Promise.resolve();
  private readonly timer: NodeJS.Timeout;
  private readonly syncTimer: NodeJS.Timeout | undefined;
  private closed = false;

  private constructor(
    dir: string,
    opts: EventLogOptions,
    segments: Segment[],
    lastSeq: number,
    size: number,
  ) {
    this.dir = dir;
    this.segmentBytes = opts.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
    this.syncMs = opts.syncMs ?? DEFAULT_SYNC_MS;
    this.segments = segments;
    this.seq = lastSeq;
    this.written = lastSeq;
    this.currentSize = size;
    this.timer = setInterval(
      () => void this.flush().catch(() => undefined),
      opts.flushMs ?? DEFAULT_FLUSH_MS,
    );
    this.timer.unref();
    if (this.syncMs > 0) {
      this.syncTimer = setInterval(() => void this.sync().catch(() => undefined), this.syncMs);
      this.syncTimer.unref();
    }
  }

  /**
   * Opens (creating) the log under `<stateDir>/events`, continuing its seq; appends the events of the
   * pending lines a crash left unsettled (and their settled lines) before anything else.
   */
  static open(stateDir: string, opts: EventLogOptions = {}): EventLog {
    const dir = join(stateDir, EVENTS_DIR);
    mkdirSync(dir, { recursive: true });
    const segments = readdirSync(dir)
      .map((name) => SEGMENT.exec(name))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => ({ firstSeq: Number(m[1]), file: join(dir, m[0]) }))
      .sort((a, b) => a.firstSeq - b.firstSeq);
    let lastSeq = 0;
    let size = 0;
    let orphans: { id: string; event: Omit<GatewayEvent, 'seq'> }[] = [];
    for (let i = segments.length - 1; i >= 0; i--) {
      const { seq, bytes, unsettled } = lastLine(segments[i]!.file);
      if (i === segments.length - 1) {
        size = bytes;
        orphans = unsettled;
      }
      if (seq !== undefined) {
        lastSeq = seq;
        break;
      }
      if (i === 0) lastSeq = segments[0]!.firstSeq - 1;
    }
    if (orphans.length > 0) {
      const last = segments[segments.length - 1]!;
      const text = orphans
        .map(
          (o) =>
            JSON.stringify({ seq: ++lastSeq, ...o.event }) + '\n' + JSON.stringify({ settled: o.id }) + '\n',
        )
        .join('');
      const fd = openSync(last.file, 'a');
      try {
        appendFileSync(fd, text, 'utf8');
        fdatasyncSync(fd);
      } finally {
        closeSync(fd);
      }
      size += Buffer.byteLength(text);
    }
    return new EventLog(dir, opts, segments, lastSeq, size);
  }

  /** The highest seq appended so far (0 for an empty log). */
  get last(): number {
    return this.seq;
  }

  /** Appends an event, giving it the next seq; it reaches the OS by the next flush or `commit()`. */
  append(event: Omit<GatewayEvent, 'seq'>): GatewayEvent {
    if (this.closed) throw new Error('the event log is closed');
    const full = { seq: ++this.seq, ...event } as GatewayEvent;
    this.push({ text: JSON.stringify(full) + '\n', events: 1 });
    return full;
  }

  /**
   * Appends a pending line holding `event` (no seq yet): what the log holds for the request if the
   * process dies before `settle`. Commit it before answering the request.
   */
  appendPending(event: Omit<GatewayEvent, 'seq'>): PendingEvent {
    if (this.closed) throw new Error('the event log is closed');
    const id = `${this.idPrefix}-${(this.nextId++).toString(36)}`;
    const text = JSON.stringify({ pending: id, event }) + '\n';
    this.unsettled.set(id, text);
    this.push({ text, events: 0 });
    return { id };
  }

  /** Appends the full event of a pending one, giving it the next seq, and marks the pending line settled. */
  settle(pending: PendingEvent, event: Omit<GatewayEvent, 'seq'>): GatewayEvent {
    if (this.closed) throw new Error('the event log is closed');
    const full = { seq: ++this.seq, ...event } as GatewayEvent;
    this.unsettled.delete(pending.id);
    this.push({
      text: JSON.stringify(full) + '\n' + JSON.stringify({ settled: pending.id }) + '\n',
      events: 1,
    });
    return full;
  }

  private push(entry: Entry): void {
    this.buffer.push(entry);
    this.appended++;
  }

  /**
   * Resolves once every line appended before the call has been written to the OS (and, with
   * `syncMs: 0`, synced); rejects when that write failed. Concurrent commits share one write.
   */
  commit(): Promise<void> {
    const upTo = this.appended;
    if (this.done >= upTo) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ upTo, resolve, reject });
      this.queueWrite();
    });
  }

  /** Queues one write of what is buffered when it starts, unless one is queued and has not started. */
  private queueWrite(): void {
    if (this.queued) return;
    this.queued = true;
    // The write starts at the end of this turn of the event loop (once its promise jobs are done):
    // commits made in the same turn share it, and their answers leave in that turn. Not setImmediate:
    // that holds every answer for a whole loop iteration, and a shadow started in the answer's turn
    // would then wait behind the answers' I/O that production never waits for.
    const next = this.chain.then(
      () =>
        new Promise<void>((res, rej) =>
          process.nextTick(() => {
            this.queued = false;
            this.writeBuffered().then(res, rej);
          }),
        ),
    );
    this.chain = next.catch(() => undefined);
  }

  /** Writes what is buffered; resolves once it is written. */
  flush(): Promise<void> {
    const next = this.chain.then(() => this.writeBuffered());
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** fdatasyncs the segment when something was written since the last sync. */
  private sync(): Promise<void> {
    const next = this.chain.then(async () => {
      if (!this.dirty || this.fd === undefined) return;
      this.dirty = false;
      await datasync(this.fd);
    });
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** One write of everything buffered; settles the commits it covers. */
  private async writeBuffered(): Promise<void> {
    if (this.buffer.length === 0) return;
    const entries = this.buffer;
    this.buffer = [];
    const events = entries.reduce((n, e) => n + e.events, 0);
    const upTo = this.done + entries.length;
    const firstSeq = this.written + 1;
    try {
      let text = (this.torn ? '\n' : '') + entries.map((e) => e.text).join('');
      if (this.fd === undefined || this.currentSize >= this.segmentBytes) {
        if (this.startSegment(firstSeq)) {
          // Every unsettled pending line is in the last segment (opening the log looks there only).
          text = [...this.unsettled.values()].join('') + text;
        }
      }
      const lastMark = this.marks[this.marks.length - 1];
      const seg = this.segments.length - 1;
      if (!lastMark || lastMark.seg !== seg || firstSeq - lastMark.seq >= MARK_EVERY) {
        this.marks.push({ seq: firstSeq, seg, offset: this.currentSize });
      }
      this.torn = true;
      const bytes = Buffer.from(text, 'utf8');
      for (let at = 0; at < bytes.length;) at += writeSync(this.fd!, bytes, at);
      this.torn = false;
      this.currentSize += bytes.length;
      this.dirty = true;
      if (this.syncMs === 0) {
        this.dirty = false;
        await datasync(this.fd!);
      }
    } catch (err) {
      // The batch is given up (its commits fail: their requests are not answered as served).
      this.written += events;
      this.done = upTo;
      this.settleWaiters(err as Error);
      throw err;
    }
    this.written += events;
    this.done = upTo;
    this.settleWaiters();
  }

  private settleWaiters(err?: Error): void {
    let n = 0;
    while (n < this.waiters.length && this.waiters[n]!.upTo <= this.done) n++;
    const ready = this.waiters.splice(0, n);
    for (const w of ready) {
      if (err) w.reject(new Error(`the event log cannot be written: ${err.message}`));
      else w.resolve();
    }
  }

  /** Opens the segment to append to; true when it is a new one. */
  private startSegment(firstSeq: number): boolean {
    const last = this.segments[this.segments.length - 1];
    if (this.fd === undefined && last && this.currentSize < this.segmentBytes) {
      // Reopened: keep appending to the last segment.
      this.fd = openSync(last.file, 'a');
      return false;
    }
    if (this.fd !== undefined) {
      if (this.dirty) fdatasyncSync(this.fd);
      this.dirty = false;
      closeSync(this.fd);
      this.fd = undefined;
    }
    const seg = { firstSeq, file: join(this.dir, segmentName(firstSeq)) };
    this.fd = openSync(seg.file, 'a');
    this.segments.push(seg);
    this.currentSize = 0;
    return true;
  }

  /** Events with seq > after, in order, at most `limit` (capped at MAX_READ). */
  async read(after: number, limit: number): Promise<GatewayEvent[]> {
    await this.flush();
    const n = Math.min(Math.max(0, limit), MAX_READ);
    const out: GatewayEvent[] = [];
    if (n === 0 || after >= this.written) return out;
    // Where to start: the last mark at or before the first wanted seq, else its segment's beginning.
    let seg = 0;
    let offset = 0;
    for (let i = 0; i < this.segments.length; i++) if (this.segments[i]!.firstSeq <= after + 1) seg = i;
    const mark = this.markAtOrBefore(after + 1);
    if (mark && mark.seg >= seg) ({ seg, offset } = mark);
    for (let i = seg; i < this.segments.length && out.length < n; i++) {
      await this.scan(this.segments[i]!.file, i === seg ? offset : 0, (line) => {
        // Lines begin with their seq (append writes it first): earlier ones are skipped unparsed.
        const m = SEQ_PREFIX.exec(line);
        if (!m || Number(m[1]) <= after) return true;
        try {
          out.push(JSON.parse(line) as GatewayEvent);
        } catch {
          return true; // a line being written as this one is read: the next read has it
        }
        return out.length < n;
      });
    }
    return out;
  }

  private markAtOrBefore(seq: number): Mark | undefined {
    let lo = 0;
    let hi = this.marks.length - 1;
    let found: Mark | undefined;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.marks[mid]!.seq <= seq) {
        found = this.marks[mid];
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found;
  }

  /** Calls `line` on each whole line of `file` from byte `offset`, in chunks, until it returns false. */
  private async scan(file: string, offset: number, line: (text: string) => boolean): Promise<void> {
    let fh: FileHandle;
    try {
      fh = await fs.open(file, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    try {
      const buf = Buffer.alloc(READ_CHUNK);
      let pos = offset;
      let rest = '';
      for (;;) {
        const { bytesRead } = await fh.read(buf, 0, READ_CHUNK, pos);
        if (bytesRead === 0) return;
        pos += bytesRead;
        const text = rest + buf.toString('utf8', 0, bytesRead);
        const lines = text.split('\n');
        rest = lines.pop()!;
        for (const l of lines) if (l && !line(l)) return;
      }
    } finally {
      await fh.close();
    }
  }

  /** Flushes and closes the segment; appends are refused afterwards. */
  async close(): Promise<void> {
    if (this.closed) return;
    clearInterval(this.timer);
    if (this.syncTimer) clearInterval(this.syncTimer);
    await this.flush();
    await this.sync();
    this.closed = true;
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

/**
 * The seq of the last whole line of a segment, and its pending lines never settled; cuts a torn
 * (unterminated or unparsable) tail off.
 */
function lastLine(file: string): {
  seq?: number;
  bytes: number;
  unsettled: { id: string; event: Omit<GatewayEvent, 'seq'> }[];
} {
  const text = readFileSync(file, 'utf8');
  let end = text.length;
  if (!text.endsWith('\n')) end = text.lastIndexOf('\n') + 1;
  let seq: number | undefined;
  let good = end;
  const lines = text.slice(0, end).split('\n');
  for (let i = lines.length - 1; i >= 0 && seq === undefined; i--) {
    const line = lines[i]!;
    if (!line) continue;
    try {
      const parsed = JSON.parse(line) as { seq?: number };
      if (typeof parsed.seq === 'number') seq = parsed.seq;
    } catch {
      good = text.slice(0, end).lastIndexOf(line);
    }
  }
  if (good < Buffer.byteLength(text)) {
    const fd = openSync(file, 'r+');
    try {
      const keep = Buffer.byteLength(text.slice(0, good));
      if (keep < fstatSync(fd).size) ftruncateSync(fd, keep);
    } finally {
      closeSync(fd);
    }
  }
  const pending = new Map<string, Omit<GatewayEvent, 'seq'>>();
  const settled = new Set<string>();
  for (const line of text.slice(0, good).split('\n')) {
    if (!line.startsWith(PENDING_PREFIX) && !line.startsWith(SETTLED_PREFIX)) continue;
    try {
      const p = JSON.parse(line) as { pending?: string; event?: Omit<GatewayEvent, 'seq'>; settled?: string };
      if (typeof p.settled === 'string') settled.add(p.settled);
      else if (typeof p.pending === 'string' && p.event) pending.set(p.pending, p.event);
    } catch {
      // A torn line within the segment (a write cut short): not a pending event.
    }
  }
  const unsettled = [...pending].filter(([id]) => !settled.has(id)).map(([id, event]) => ({ id, event }));
  return { seq, bytes: Buffer.byteLength(text.slice(0, good)), unsettled };
}
