/**
 * The gateway's event log: one GatewayEvent per served request, as NDJSON lines appended to segments
 * `<stateDir>/events/events-<first seq>.ndjson`. A new segment starts once the current one passes
 * `segmentBytes`. `seq` grows by one per event across restarts: opening the log continues from the last
 * line of the last segment (a torn last line, from a crash mid-write, is cut off).
 *
 * Writes are buffered and flushed at least every `flushMs` and on `flush()`/`close()`; `read` flushes
 * first, so a reader sees every event appended before its call. Events carry callers' pseudonyms only:
 * this module is never handed a raw caller id.
 */
import { mkdirSync, openSync, readdirSync, readFileSync, closeSync, ftruncateSync, fstatSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { GatewayEvent } from './api';

export const EVENTS_DIR = 'events';
export const DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024;
export const DEFAULT_FLUSH_MS = 200;
/** Most events one `read` returns. */
export const MAX_READ = 50_000;

/** A read-position mark is kept about every this many events. */
const MARK_EVERY = 1024;
const READ_CHUNK = 1024 * 1024;
const SEQ_PREFIX = /^\{"seq":(\d+),/;
const SEGMENT = /^events-(\d{12})\.ndjson$/;
const segmentName = (firstSeq: number) => `events-${String(firstSeq).padStart(12, '0')}.ndjson`;

export interface EventLogOptions {
  segmentBytes?: number;
  flushMs?: number;
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
  private seq: number;
  private written: number;
  private segments: Segment[];
  private buffer: string[] = [];
  /** Byte offsets of some seqs written by this process (one every MARK_EVERY or so): where reads start. */
  private marks: Mark[] = [];
  private handle: FileHandle | undefined;
  private currentSize: number;
  private chain: Promise<void> = Promise.resolve();
  private readonly timer: NodeJS.Timeout;
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
    this.segments = segments;
    this.seq = lastSeq;
    this.written = lastSeq;
    this.currentSize = size;
    this.timer = setInterval(
      () => void this.flush().catch(() => undefined),
      opts.flushMs ?? DEFAULT_FLUSH_MS,
    );
    this.timer.unref();
  }

  /** Opens (creating) the log under `<stateDir>/events`, continuing its seq. */
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
    for (let i = segments.length - 1; i >= 0; i--) {
      const { seq, bytes } = lastLine(segments[i]!.file);
      if (i === segments.length - 1) size = bytes;
      if (seq !== undefined) {
        lastSeq = seq;
        break;
      }
      if (i === 0) lastSeq = segments[0]!.firstSeq - 1;
    }
    return new EventLog(dir, opts, segments, lastSeq, size);
  }

  /** The highest seq appended so far (0 for an empty log). */
  get last(): number {
    return this.seq;
  }

  /** Appends an event, giving it the next seq; it reaches the disk by the next flush. */
  append(event: Omit<GatewayEvent, 'seq'>): GatewayEvent {
    if (this.closed) throw new Error('the event log is closed');
    const full = { seq: ++this.seq, ...event } as GatewayEvent;
    this.buffer.push(JSON.stringify(full) + '\n');
    return full;
  }

  /** Writes what is buffered; resolves once it is written. */
  flush(): Promise<void> {
    const next = this.chain.then(() => this.writeBuffered());
    this.chain = next.catch(() => undefined);
    return next;
  }

  private async writeBuffered(): Promise<void> {
    while (this.buffer.length > 0) {
      const lines = this.buffer;
      this.buffer = [];
      const firstSeq = this.written + 1;
      if (!this.handle || this.currentSize >= this.segmentBytes) await this.startSegment(firstSeq);
      const text = lines.join('');
      const lastMark = this.marks[this.marks.length - 1];
      const seg = this.segments.length - 1;
      if (!lastMark || lastMark.seg !== seg || firstSeq - lastMark.seq >= MARK_EVERY) {
        this.marks.push({ seq: firstSeq, seg, offset: this.currentSize });
      }
      await this.handle!.appendFile(text, 'utf8');
      this.currentSize += Buffer.byteLength(text);
      this.written += lines.length;
    }
  }

  private async startSegment(firstSeq: number): Promise<void> {
    const last = this.segments[this.segments.length - 1];
    if (!this.handle && last && this.currentSize < this.segmentBytes) {
      // Reopened: keep appending to the last segment.
      this.handle = await fs.open(last.file, 'a');
      return;
    }
    await this.handle?.close();
    const seg = { firstSeq, file: join(this.dir, segmentName(firstSeq)) };
    this.handle = await fs.open(seg.file, 'a');
    this.segments.push(seg);
    this.currentSize = 0;
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
    await this.flush();
    this.closed = true;
    await this.handle?.close();
    this.handle = undefined;
  }
}

/** The seq of the last whole line of a segment; cuts a torn (unterminated or unparsable) tail off. */
function lastLine(file: string): { seq?: number; bytes: number } {
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
      seq = (JSON.parse(line) as GatewayEvent).seq;
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
  return { seq, bytes: Buffer.byteLength(text.slice(0, good)) };
}
