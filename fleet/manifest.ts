/**
 * Reading manifests: a fleet's (`kind: Fleet`, vehicles) and a service's (`kind: Service`, callers of a
 * model behind the inference gateway), as YAML or JSON by extension, validated with their schemas
 * (policies/schema.ts, policies/service-schema.ts); and the gateway's and the CLI's raw reads
 * (`readManifestFile`).
 *
 * Errors name the file as the caller shows it and the field path, never a value, and a syntax error says
 * where, never what is there: this module must never quote a file it reads (it may not be a manifest at
 * all), nor read a file of another extension. Confining a path to a directory is the caller's
 * (activities/confine.ts). Activity-side only (reads files); workflows never import it.
 */
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import YAML, { YAMLParseError } from 'yaml';
import { ErrorType, fail } from '../errors';
import { formatManifestIssues, manifestKindProblem } from '../policies/manifest-errors';
import { FleetManifest } from '../policies/schema';
import { ServiceManifest } from '../policies/service-schema';

export type ManifestKind = 'Fleet' | 'Service';

/**
 * The parsed contents of a manifest file (YAML or JSON, by extension), before validation; `what` names it
 * in errors ("fleet manifest", "manifest"): NotFound, Unavailable, or InvalidInput for bad syntax. A
 * file of another extension is not read. A syntax error says where (line, column), never what is there:
 * the file may not be a manifest at all.
 */
export function readManifestFile(file: string, what: string, shown = file): unknown {
  const ext = extname(file).toLowerCase();
  if (ext !== '.json' && ext !== '.yaml' && ext !== '.yml') {
    throw fail(
      ErrorType.InvalidInput,
      `${what} ${shown}: unknown extension "${ext.slice(0, 16)}": use .yaml, .yml or .json`,
    );
  }
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw fail(ErrorType.NotFound, `${what} ${shown} does not exist`);
    throw fail(ErrorType.Unavailable, `cannot read ${what} ${shown}: ${code ?? 'unknown error'}`);
  }
  try {
    return ext === '.json' ? JSON.parse(text) : YAML.parse(text);
  } catch (err) {
    throw fail(ErrorType.InvalidInput, `${what} ${shown}: ${syntaxError(err, ext === '.json', text)}`);
  }
}

/** Where a JSON or YAML syntax error is, without the text around it (the parsers' messages quote it). */
function syntaxError(err: unknown, json: boolean, text: string): string {
  const format = json ? 'JSON' : 'YAML';
  let at = '';
  if (err instanceof YAMLParseError && err.linePos) {
    at = ` (${err.code} at line ${err.linePos[0].line}, column ${err.linePos[0].col})`;
  } else {
    const position = /at position (\d+)/.exec((err as Error).message ?? '');
    if (position) {
      const before = text.slice(0, Number(position[1]));
      const line = before.split('\n').length;
      at = ` (at line ${line}, column ${before.length - before.lastIndexOf('\n')})`;
    }
  }
  return `not valid ${format}${at}; a ${json ? '.json' : '.yaml or .yml'} manifest must be ${format}: check its syntax, or the path`;
}

/** Reads and validates a fleet manifest (YAML or JSON, by extension). Errors name the file as
 * `shown` (a worker passes the path as the rollout gave it, never its own directory) and the field path,
 * never a value. */
export function loadFleetManifest(file: string, shown = file): FleetManifest {
  const raw = readManifestFile(file, 'fleet manifest', shown);
  const parsed = FleetManifest.safeParse(raw);
  if (!parsed.success) {
    throw fail(
      ErrorType.InvalidInput,
      `invalid fleet manifest ${shown}:\n${formatManifestIssues(parsed.error, raw)}`,
    );
  }
  const seen = new Set<string>();
  parsed.data.cohorts.forEach((c, i) => {
    if (seen.has(c.name)) {
      throw fail(
        ErrorType.InvalidInput,
        `invalid fleet manifest ${shown}:\ncohorts.${i}.name: cohort names must be unique (got "${c.name}")`,
      );
    }
    seen.add(c.name);
  });
  return parsed.data;
}

/** Reads and validates a service manifest (YAML or JSON, by extension). Errors name the file as
 * `shown` (a worker passes the path as the rollout gave it, never its own directory) and the field path,
 * never a value. */
export function loadServiceManifest(file: string, shown = file): ServiceManifest {
  const raw = readManifestFile(file, 'manifest', shown);
  const parsed = ServiceManifest.safeParse(raw);
  if (!parsed.success) {
    throw fail(
      ErrorType.InvalidInput,
      `invalid service manifest ${shown}:\n${formatManifestIssues(parsed.error, raw)}`,
    );
  }
  return parsed.data;
}

/** The kind a manifest file declares: 'Fleet' (vehicles) or 'Service' (the inference gateway). */
export function manifestKind(file: string, shown = file): ManifestKind {
  const raw = readManifestFile(file, 'manifest', shown);
  const kind = raw !== null && typeof raw === 'object' ? (raw as { kind?: unknown }).kind : undefined;
  if (kind === 'Fleet' || kind === 'Service') return kind;
  throw fail(
    ErrorType.InvalidInput,
    `manifest ${shown}: kind: ${manifestKindProblem(kind)}; write kind: Fleet (vehicles) or kind: Service (a model behind the inference gateway)`,
  );
}
