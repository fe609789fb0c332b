/**
 * The schema errors of a fleet or service manifest, one line per problem: the field's path and what was
 * expected, as `formatIssues` of policies/schema.ts writes them for a policy, but without the text
 * received. A manifest is a file the worker reads; a path given by mistake (a credentials file, a key)
 * would otherwise put the file's contents into the rollout's reason, report, history and status API.
 *
 * It must never echo a received string, object or list (a number or a boolean is shown: it says which
 * value to fix and carries no text), and names a key (an unrecognized one, or a record's) only when it is
 * short and plain; any other key is shown as `<key>`. Pure: workflows, activities and the CLI import it.
 */
import type { z } from 'zod';

/** A key short and plain enough to be a field name mistyped, never a secret's value. */
const PLAIN_KEY = /^[A-Za-z_][A-Za-z0-9_/-]{0,23}$/;

/** The key as shown in an error: itself when plain, else `<key>`. */
export function shownKey(key: PropertyKey): string {
  if (typeof key === 'number') return String(key);
  return typeof key === 'string' && PLAIN_KEY.test(key) ? key : '<key>';
}

/** One line per problem: `path: what was expected`, with the value received only when it is a number or boolean. */
export function formatManifestIssues(error: z.ZodError, input: unknown, root = ''): string {
  return error.issues
    .map((issue) => {
      const path = [root, ...issue.path.map(shownKey)].filter(Boolean).join('.');
      const got = valueAt(input, issue.path);
      const shown = typeof got === 'number' || typeof got === 'boolean' ? ` (got ${String(got)})` : '';
      return `${path || '(root)'}: ${messageOf(issue)}${shown}`;
    })
    .join('\n');
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let cur: unknown = input;
  for (const key of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[key];
  }
  return cur;
}

function messageOf(issue: z.core.$ZodIssue): string {
  if (issue.code === 'unrecognized_keys') {
    const shown = issue.keys.filter((k) => PLAIN_KEY.test(k));
    const hidden = issue.keys.length - shown.length;
    const others = `${hidden} not shown, not being plain field names`;
    const names =
      shown.length === 0
        ? `${hidden} unrecognized key(s) (not shown, not being plain field names)`
        : `unrecognized key(s) ${shown.map((k) => `"${k}"`).join(', ')}${hidden > 0 ? ` and ${others}` : ''}`;
    return `${names}: remove them or correct their spelling`;
  }
  if (issue.code === 'invalid_key') {
    // A record's key that its schema refuses: the key itself is in the path (shown only when plain).
    const inner = issue.issues[0]?.message;
    return inner ? `this key is not allowed: ${inner}` : issue.message;
  }
  // zod's messages and the schemas' own name what was expected (and, in the schemas' refinements, only
  // values that already passed a name's pattern), never the input.
  return issue.message;
}

/** What is wrong with a manifest's kind, without its value unless it is a short plain word. */
export function manifestKindProblem(kind: unknown): string {
  if (kind === undefined) return 'missing';
  return typeof kind === 'string' && /^[A-Za-z]{1,24}$/.test(kind)
    ? `"${kind}"`
    : 'neither Fleet nor Service (not shown)';
}
