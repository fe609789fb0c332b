/**
 * Terminal safety of the command line (cli/terminal.ts): which characters `safeText` and `safeOutput`
 * escape and how, that the CLI's own colours survive on a terminal only, that JSON stays valid with the
 * same values; and the real `fleetgate model history` and `model show` over a data directory whose
 * registry pointer and rollout report hold control sequences and a bidi override (model names are
 * validated to lowercase letters, digits, ".", "_" and "-" at packing, so the free-text fields carry them).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { guardOutput, safeOutput, safeStrings, safeText } from '../../cli/terminal';
import { renderResult } from '../../cli/progress';
import { createRegistryActivities } from '../../activities/registry';
import { OnnxModelRunner, blobKey } from '../../workers/model-runner';
import { makeWorld, ROOT } from '../support';

// eslint-disable-next-line no-control-regex
const RAW = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/u;
const EVIL = 'recall \u001b]0;pwned\u0007 \u001b[2J \u202eevil\nforged';

void test('safeText escapes C0 (newline included), DEL, C1 and bidi overrides visibly, and nothing else', () => {
  assert.equal(safeText(EVIL), 'recall \\x1b]0;pwned\\x07 \\x1b[2J \\u202eevil\\nforged');
  assert.equal(
    safeText('\t\r\u0000\u007f\u0085\u009b\u202a\u2066\u2069'),
    '\\t\\r\\x00\\u007f\\u0085\\u009b\\u202a\\u2066\\u2069',
  );
  const plain = 'hw3/nordic Δ=+0.084 [+0.041, +0.127] Λ=2.1e4 ≥ 40 → harm; 日本 \\ "q"';
  assert.equal(safeText(plain), plain, 'printable text, backslashes and non-Latin scripts stay');
  assert.equal(safeText(safeText(EVIL)), safeText(EVIL), 'escaping twice changes nothing');
  assert.deepEqual(safeStrings({ a: [EVIL], n: 3, b: { c: null } }), {
    a: [safeText(EVIL)],
    n: 3,
    b: { c: null },
  });
});

void test('a block keeps its lines; only a terminal keeps the CLI’s own colours and redraw', () => {
  const own = '\u001b[31mred\u001b[39m \u001b[1mbold\u001b[22m\n\u001b[3A\r\u001b[0J';
  assert.equal(safeOutput(own, true), own);
  assert.equal(safeOutput(own, false), '\\x1b[31mred\\x1b[39m \\x1b[1mbold\\x1b[22m\n\\x1b[3A\\r\\x1b[0J');
  assert.equal(
    safeOutput(`a\n${EVIL}\u001b[8mhidden\u001b]8;;http://x\u0007`, true),
    'a\nrecall \\x1b]0;pwned\\x07 \\x1b[2J \\u202eevil\nforged\\x1b[8mhidden\\x1b]8;;http://x\\x07',
  );
  const json = JSON.stringify({ reason: EVIL + '\u0085\u007f' }, null, 2);
  assert.equal(JSON.parse(safeOutput(json)).reason, EVIL + '\u0085\u007f', 'JSON stays JSON, same value');
  assert.ok(!RAW.test(safeOutput(json)));
});

void test('guardOutput makes every string written safe; colours pass on a terminal only', () => {
  const written = (isTTY: boolean, text: string) => {
    const stream = Object.assign(new PassThrough(), { isTTY });
    guardOutput(stream);
    guardOutput(stream);
    stream.write(text);
    stream.end();
    return String(stream.read());
  };
  const colored = renderResult(
    {
      outcome: 'aborted',
      reason: EVIL,
      cohorts: [{ cohort: 'hw3/eu', state: 'held', wave: 1, vehicles: 0 }],
    } as never,
    { color: true },
  );
  const onTty = written(true, colored);
  assert.ok(onTty.includes('\u001b[31maborted\u001b[39m'), 'the CLI’s own colour stays');
  assert.ok(onTty.includes('recall \\x1b]0;pwned\\x07 \\x1b[2J \\u202eevil\\nforged'), onTty);
  assert.ok(!RAW.test(written(false, colored)), 'no escape at all in a pipe');
});

void test('model history and model show print a pointer’s reason and a report’s text escaped', async () => {
  const world = await makeWorld();
  try {
    const { store } = world.services;
    const runner = new OnnxModelRunner((digest) => store.get(blobKey(digest)));
    try {
      const acts = createRegistryActivities({ store, runner, root: ROOT, trust: new Map() });
      await acts.movePointer({
        cohort: 'hw3/eu',
        stage: 'candidate',
        digest: world.productionDigest,
        expected: null,
        rolloutId: 'r-1\u202e',
        reason: EVIL,
      });
    } finally {
      await runner.close();
    }
    mkdirSync(join(world.dataDir, 'reports'), { recursive: true });
    writeFileSync(
      join(world.dataDir, 'reports', 'r-1.json'),
      JSON.stringify({
        rolloutId: 'r-1',
        outcome: `aborted ${EVIL}`,
        reason: EVIL,
        candidate: { name: 'hazard-detector', version: '1.0.0', digest: world.productionDigest },
        cohorts: [{ cohort: 'hw3/eu', state: 'held', headline: EVIL }],
      }),
    );
    const cli = (...args: string[]) => {
      const r = spawnSync(process.execPath, [join(ROOT, 'bin', 'fleetgate.js'), 'model', ...args], {
        cwd: ROOT,
        env: { ...process.env, FLEETGATE_DATA_DIR: world.dataDir, FLEETGATE_STORE: '', FLEETGATE_DEBUG: '' },
        encoding: 'utf8',
      });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(RAW.exec(r.stdout + r.stderr), null, JSON.stringify(r.stdout));
      return r.stdout;
    };
    const escaped = 'recall \\x1b]0;pwned\\x07 \\x1b[2J \\u202eevil\\nforged';

    const history = cli('history', '--cohort', 'hw3/eu', '--stage', 'candidate');
    assert.ok(history.includes(`by r-1\\u202e: ${escaped}\n`), history);
    assert.ok(!/^forged/m.test(history), 'the newline of the reason forges no line');
    const at = cli('history', '--cohort', 'hw3/eu', '--stage', 'candidate', '--at', new Date().toISOString());
    assert.ok(at.includes(`by r-1\\u202e: ${escaped})`), at);
    const json = cli('history', '--cohort', 'hw3/eu', '--stage', 'candidate', '--json');
    assert.equal((JSON.parse(json) as { moves: { reason: string }[] }[])[0]!.moves[0]!.reason, EVIL);

    const show = cli('show', 'hazard-detector@1.0.0');
    assert.ok(show.includes(`by r-1\\u202e: ${escaped}\n`), show);
    assert.ok(show.includes(`r-1: aborted ${escaped}`), show);
    assert.ok(show.includes(`held         ${escaped}`), show);
  } finally {
    await world.close();
    rmSync(world.dataDir, { recursive: true, force: true });
  }
});
