/**
 * `fleetgate report ID`: renders the report of an ended rollout, `<data dir>/reports/<ID>.json`, as one
 * self-contained HTML page (activities/report-html.ts) and prints where it wrote it. Reports written
 * before the worker wrote pages get theirs this way.
 *
 * Reads the data directory only: no Temporal server, no fleet. The id must name a report that is there
 * (so it never reaches outside the reports directory); an unknown id lists the ids that are. A refusal
 * (unknown id, unreadable or malformed report) is one line and exit code 1; a mistake in how the
 * command was called is one line and exit code 2. It never prints a vehicle identifier (reports hold
 * none).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../workers/config';
import { renderReportHtml } from '../activities/report-html';
import { reportHtmlPath, reportPath, writeFileAtomic } from '../activities/report';

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

Renders the report of rollout ID, <data dir>/reports/ID.json, as one self-contained HTML page (no
scripts, no external resources): the outcome per cohort, every metric's estimate and confidence band
per look against its margin and harm threshold, the wave timeline and the decision log. Writes it
beside the JSON (ID.html) unless --out is given, and prints its path. No server needed.
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
}

export interface RenderedReport {
  rolloutId: string;
  report: string;
  path: string;
  bytes: number;
}

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

function shown(p: string): string {
  const r = relative(process.cwd(), p);
  return r && !r.startsWith('..') ? r : p;
}

/** Renders the report of `rolloutId` and writes the page to `out` (default: beside the JSON). */
export async function renderReportFile(
  dataDir: string,
  rolloutId: string,
  out?: string,
): Promise<RenderedReport> {
  const ids = reportIds(dataDir);
  if (!ids.includes(rolloutId)) {
    const dir = shown(join(dataDir, 'reports'));
    throw new ReportError(
      ids.length === 0
        ? `no report "${rolloutId}": ${dir} holds no reports`
        : `no report "${rolloutId}" in ${dir}; available: ${ids.join(', ')}`,
    );
  }
  const file = reportPath(dataDir, rolloutId);
  let report: unknown;
  try {
    report = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code
      ? `cannot read it (${code})`
      : `malformed JSON: ${(err as Error).message.split('\n')[0]}`;
    throw new ReportError(`report ${shown(file)}: ${why}`);
  }
  if (typeof report !== 'object' || report === null || Array.isArray(report)) {
    throw new ReportError(`report ${shown(file)}: not a rollout report (a JSON object is expected)`);
  }
  const html = renderReportHtml(report);
  const path = out ? resolve(out) : reportHtmlPath(dataDir, rolloutId);
  try {
    await writeFileAtomic(path, html);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new ReportError(`cannot write ${shown(path)} (${code})`);
  }
  return { rolloutId, report: file, path, bytes: Buffer.byteLength(html) };
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
    const dataDir = opts.dataDir ?? loadConfig().dataDir;
    const r = await renderReportFile(dataDir, parsed.positionals[0], out);
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

/** The `report` entry of the command table of cli/main.ts. */
export async function reportCommand(args: string[]): Promise<number> {
  return runReport(args);
}
