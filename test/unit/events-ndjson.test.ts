/**
 * NDJSON lines to raw records (events/parse.ts `parseNdjson`): line numbers counted over blank lines,
 * CRLF and whitespace-only lines, each line that is no JSON named by its number and never quoted.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { parseNdjson } from '../../events/parse';

const NOT_JSON = 'not JSON: send one JSON object per line (NDJSON)';

describe('parseNdjson', () => {
  test('records with their line numbers; blank, CRLF and whitespace-only lines skipped', () => {
    assert.deepEqual(parseNdjson(''), { raw: [], positions: [], problems: [] });
    assert.deepEqual(parseNdjson('\n\r\n \t\n\u00a0\n'), { raw: [], positions: [], problems: [] });
    assert.deepEqual(parseNdjson('{"a":1}\r\n\n  \n{"b":2}\n[3]'), {
      raw: [{ a: 1 }, { b: 2 }, [3]],
      positions: [1, 4, 5],
      problems: [],
    });
  });

  test('a line that is no JSON is named by its number, never quoted', () => {
    const secret = 'WVWZZZ1JZXW000001';
    const r = parseNdjson(`{"a":1}\n{"unit":"${secret}"\n\n{} {}\r\n\ufeff{}\n{"b":\n2}`);
    assert.deepEqual(r.raw, [{ a: 1 }]);
    assert.deepEqual(r.positions, [1]);
    assert.deepEqual(
      r.problems,
      [2, 4, 5, 6, 7].map((line) => ({ line, field: '(line)', message: NOT_JSON })),
    );
    assert.ok(!JSON.stringify(r).includes(secret));
  });
});
