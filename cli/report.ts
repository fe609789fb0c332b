/**
 * `fleetgate report ID`: renders the report of an ended rollout as one self-contained HTML page
 * (activities/report-html.ts) and prints where it wrote it. Reports written before the worker wrote
 * pages get theirs this way. Also the reader of reports that `fleetgate ui` and `fleetgate model show`
 * share (`listReportIds`, `readReport`).
 *
 * A report is read from the object store (`reports/<ID>.json`, put there by the report activity), so
 * any machine with FLEETGATE_STORE finds it; reports written before the activity put them there are
 * read from `<data dir>/reports/<ID>.json`. No Temporal server, no fleet database. The id must be a
 * rollout id (so it never reaches outside the reports); an unknown id lists the ids that are. A refusal
 * (unknown id, unreadable or malformed report, a store that does not answer) is one line and exit code
 * 1; a mistake in how the command was called is one line and exit code 2. It never prints a vehicle
 * identifier (reports hold none) nor a store's credentials.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig, openObjectStore } from '../workers/config';
import { renderReportHtml } from '../activities/report-html';
import { REPORTS_PREFIX, reportHtmlPath, reportKey, reportPath, writeFileAtomic } from '../activities/report';
import type { ObjectStore } from '../activities/deps';
import { LocalObjectStore } from '../activities/store';
import { S3ObjectStore } from '../activities/store-s3';

/** Where the command writes; the process's stdout and stderr unless a caller captures them. */
export interface ReportIo {
  out(text: string): void;
  err(text: string): void;
}

const PROCESS_IO: ReportIo = {
  out: (text) => console.log(text.replace(/\n$/, '')),
  err: (text) => console.error(text.replace(/\n$/, '')),
};

export const REPORT_HELP = `Usage: fleetgate report ID [--out FILE] [--json]

Renders the report of rollout ID as one self-contained HTML page (no scripts, no external resources):
the outcome per cohort, every metric's estimate and confidence band per look against its margin and
harm threshold, the wave timeline and the decision log. The report is read from the object store
(FLEETGATE_STORE: reports/ID.json), so any machine that shares the store finds it; reports written
before workers put them there are read from <data dir>/reports/ID.json. Writes the page to
<data dir>/reports/ID.html unless --out is given, and prints its path. No Temporal server needed.
  --out FILE   write the page to FILE instead
  --json       print {"rolloutId","report","path","bytes"} as JSON
Exit code 0 written; 1 no such report, or it cannot be read; 2 usage.`;

/** A mistake in how the command was called: exit code 2. */
class ReportUsageError extends Error {
  override name = 'ReportUsageError';
}
/** A refusal whose message says it all: exit code 1. */
class ReportError extends Error {
  override name = 'ReportError';
}

export interface ReportOptions {
  io?: ReportIo;
  /** The data directory; FLEETGATE_DATA_DIR (default .fleetgate) when absent. */
  dataDir?: string;
  /** The object store; the configured one (FLEETGATE_STORE, on `dataDir`) when absent. */
  store?: ObjectStore;
}

export interface RenderedReport {
  rolloutId: string;
  /** Where the report was read: the store's URL of its key, or the local file. */
  report: string;
  path: string;
  bytes: number;
}

/** Where reports are read: the object store first, then the data directory's reports of before. */
export interface ReportSource {
  dataDir: string;
  /** None: the data directory only. */
  store?: ObjectStore;
}

/** A report's JSON text and where it was found. */
export interface FoundReport {
  rolloutId: string;
  text: string;
  from: 'store' | 'local';
  /** The store's URL of the key (s3://bucket/prefix/reports/ID.json) or the local file, for messages. */
  where: string;
}

/** The pattern of a rollout id (policies/schema.ts): only such ids are looked up, so none leaves the reports. */
const ROLLOUT_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

/** The ids of the reports in a data directory, sorted; none when it has no reports directory. */
export function reportIds(dataDir: string): string[] {
  let files: string[];
  try {
    files = readdirSync(join(dataDir, 'reports'));
  } catch {
    return [];
  }
  return files
    .filter((f) => f.endsWith('.json'))
    .map((f) => f.slice(0, -'.json'.length))
    .sort();
}

/** The ids of the reports the store holds (reports/<id>.json), sorted. */
export async function storeReportIds(store: ObjectStore): Promise<string[]> {
  return (await store.list(REPORTS_PREFIX))
    .map((k) => k.slice(REPORTS_PREFIX.length))
    .filter((f) => f.endsWith('.json') && !f.includes('/'))
    .map((f) => f.slice(0, -'.json'.length))
    .filter((id) => ROLLOUT_ID.test(id))
    .sort();
}

/** The ids of every report of the store and the data directory, sorted, each once. */
export async function listReportIds(src: ReportSource): Promise<string[]> {
  const ids = new Set(reportIds(src.dataDir));
  if (src.store) for (const id of await storeReportIds(src.store)) ids.add(id);
  return [...ids].sort();
}

/** How a store's key is named in messages: its s3:// URL, or the local store's file. */
export function storeWhere(store: ObjectStore, key: string): string {
  if (store instanceof S3ObjectStore) return `${store.url}${key}`;
  if (store instanceof LocalObjectStore) return shown(join(store.root, ...key.split('/')));
  return key;
}

/**
 * The report of `rolloutId`: the store's `reports/<id>.json`, else `<data dir>/reports/<id>.json`;
 * undefined when neither holds it or the id is not a rollout id. A store that does not answer is an
 * error unless the data directory holds the report.
 */
export async function readReport(src: ReportSource, rolloutId: string): Promise<FoundReport | undefined> {
  if (!ROLLOUT_ID.test(rolloutId)) return undefined;
  let storeError: unknown;
  if (src.store) {
    const key = reportKey(rolloutId);
    try {
      const bytes = await src.store.get(key);
      if (bytes !== undefined) {
        return { rolloutId, text: bytes.toString('utf8'), from: 'store', where: storeWhere(src.store, key) };
      }
    } catch (err) {
      storeError = err;
    }
  }
  const file = reportPath(src.dataDir, rolloutId);
  if (existsSync(file)) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? String(err);
      throw new ReportError(`report ${shown(file)}: cannot read it (${code})`);
    }
    return { rolloutId, text, from: 'local', where: shown(file) };
  }
  if (storeError !== undefined) {
    throw new ReportError(
      `cannot read the report of "${rolloutId}" from the object store: ${(storeError as Error).message ?? String(storeError)}`,
    );
  }
  return undefined;
}

/** Where reports are looked for, for messages. */
function sourcesText(src: ReportSource): string {
  const dir = shown(join(src.dataDir, 'reports'));
  return src.store ? `${storeWhere(src.store, REPORTS_PREFIX)} or ${dir}` : dir;
}

function shown(p: string): string {
  const r = relative(process.cwd(), p);
  return r && !r.startsWith('..') ? r : p;
}

/**
 * Renders the report of `rolloutId` (from the store, else the data directory) and writes the page to
 * `out` (default: `<data dir>/reports/<id>.html`).
 */
export async function renderReportFile(
  src: ReportSource,
  rolloutId: string,
  out?: string,
): Promise<RenderedReport> {
  const found = await readReport(src, rolloutId);
  if (!found) {
    const ids = await listReportIds(src).catch(() => reportIds(src.dataDir));
    const where = sourcesText(src);
    throw new ReportError(
      ids.length === 0
        ? `no report "${rolloutId}": ${where} holds no reports`
        : `no report "${rolloutId}" in ${where}; available: ${ids.join(', ')}`,
    );
  }
  let report: unknown;
  try {
    report = JSON.parse(found.text);
  } catch (err) {
    throw new ReportError(`report ${found.where}: malformed JSON: ${(err as Error).message.split('\n')[0]}`);
  }
  if (typeof report !== 'object' || report === null || Array.isArray(report)) {
    throw new ReportError(`report ${found.where}: not a rollout report (a JSON object is expected)`);
  }
  const html = renderReportHtml(report);
  const path = out ? resolve(out) : reportHtmlPath(src.dataDir, rolloutId);
  try {
    await writeFileAtomic(path, html);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new ReportError(`cannot write ${shown(path)} (${code})`);
  }
  return { rolloutId, report: found.where, path, bytes: Buffer.byteLength(html) };
}

/** Runs `fleetgate report ...`; returns the exit code. Never throws. */
export async function runReport(args: string[], opts: ReportOptions = {}): Promise<number> {
  const io = opts.io ?? PROCESS_IO;
  try {
    let parsed;
    try {
      parsed = parseArgs({
        args,
        options: {
          out: { type: 'string' },
          json: { type: 'boolean' },
          help: { type: 'boolean', short: 'h' },
        },
        allowPositionals: true,
        strict: true,
      });
    } catch (err) {
      throw new ReportUsageError(
        `${(err as Error).message.split(/\.\s|\n/)[0]} (see "fleetgate report --help")`,
      );
    }
    if (parsed.values.help) {
      io.out(REPORT_HELP);
      return 0;
    }
    if (parsed.positionals.length !== 1 || !parsed.positionals[0]) {
      throw new ReportUsageError(
        '"report" takes one argument (the rollout id) (see "fleetgate report --help")',
      );
    }
    const out = parsed.values.out;
    if (out !== undefined && !out.trim()) throw new ReportUsageError('--out needs a file name');
    const config = opts.dataDir !== undefined && opts.store !== undefined ? undefined : loadConfig();
    const dataDir = opts.dataDir ?? config!.dataDir;
    const store = opts.store ?? openObjectStore(config!.store, dataDir);
    let r: RenderedReport;
    try {
      r = await renderReportFile({ dataDir, store }, parsed.positionals[0], out);
    } finally {
      if (!opts.store) closeStore(store);
    }
    io.out(
      parsed.values.json
        ? JSON.stringify({ rolloutId: r.rolloutId, report: r.report, path: r.path, bytes: r.bytes })
        : shown(r.path),
    );
    return 0;
  } catch (err) {
    if (process.env.FLEETGATE_DEBUG === '1') io.err(String((err as Error).stack ?? err));
    if (err instanceof ReportUsageError) {
      io.err(`fleetgate: ${err.message}`);
      return 2;
    }
    io.err(`fleetgate: ${(err as Error).message ?? String(err)}`);
    return 1;
  }
}

/** Ends an S3 store's connections (a local store holds none). */
export function closeStore(store: ObjectStore): void {
  if (store instanceof S3ObjectStore) store.close();
}

/** The `report` entry of the command table of cli/main.ts. */
export async function reportCommand(args: string[]): Promise<number> {
  return runReport(args);
}
