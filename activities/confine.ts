/**
 * Paths a rollout names (its fleet or service manifest), confined to the worker's directory: the worker
 * reads such a file only when it lies inside its root, after `..`, absolute paths and symbolic links
 * are resolved. Model packs are confined the same way by activities/registry.ts `resolvePack`.
 *
 * It must never read a file (it only resolves paths and asks the file system where links lead) and never
 * put the worker's own directory into an error: the error reaches the rollout's history and report, so it
 * names the field, the path as given and the fix only.
 */
import { realpathSync, statSync } from 'node:fs';
import { dirname, isAbsolute, relative, resolve } from 'node:path';
import { ErrorType, fail } from '../errors';

/** What the path is, for its errors: the field that names it and what to do instead. */
export interface ConfinedPath {
  /** The field that names the path, e.g. "fleet.manifest (--fleet)". */
  field: string;
  /** What the file is, e.g. "manifest". */
  what: string;
}

export const MANIFEST_PATH: ConfinedPath = { field: 'fleet.manifest (--fleet)', what: 'manifest' };

/** Longest given path an error repeats; a longer one is cut. */
const SHOWN_CHARS = 120;

/**
 * `given` resolved against `root`; PathEscape (not retried) when it, or the file a link in it leads to,
 * lies outside `root`, or when it exists and is not a regular file. A path that does not exist is
 * returned as resolved (its reader says it does not exist), once its nearest existing parent is checked.
 */
export function confinedPath(root: string, given: string, about: ConfinedPath = MANIFEST_PATH): string {
  const base = resolve(root);
  const target = resolve(base, given);
  if (!inside(base, target)) throw escape(given, about, 'resolves outside the worker directory');
  const realBase = realpathSync(base);
  // The nearest part of the path that exists, with every link in it followed.
  let existing = target;
  let real: string | undefined;
  for (;;) {
    try {
      real = realpathSync(existing);
      break;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw escape(given, about, `cannot be resolved (${code})`);
      const parent = dirname(existing);
      if (parent === existing) break;
      existing = parent;
    }
  }
  if (real === undefined || !inside(realBase, real)) {
    throw escape(given, about, 'is, or passes through, a link to a place outside the worker directory');
  }
  if (existing === target && !statSync(real).isFile()) {
    throw fail(
      ErrorType.InvalidInput,
      `${about.field}: ${show(given)} is not a regular file; give the path of a ${about.what} file (.yaml, .yml or .json)`,
      { field: about.field },
    );
  }
  return target;
}

function inside(base: string, p: string): boolean {
  const rel = relative(base, p);
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
}

function escape(given: string, about: ConfinedPath, why: string) {
  return fail(
    ErrorType.PathEscape,
    `${about.field}: ${show(given)} ${why}; a worker reads only a ${about.what} inside the directory it ` +
      `runs in: copy the ${about.what} there and give its path relative to that directory`,
    { field: about.field },
  );
}

/** The path as given, quoted, cut when long and with control characters escaped by JSON. */
function show(given: string): string {
  return JSON.stringify(given.length > SHOWN_CHARS ? `${given.slice(0, SHOWN_CHARS - 3)}...` : given);
}
