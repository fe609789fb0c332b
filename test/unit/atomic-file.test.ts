/**
 * Atomic whole-file writes (activities/atomic-file.ts) on a real temporary directory: a link planted at a
 * temporary name, the old predictable one (`<file>.<pid>.tmp`) or a random one drawn deterministically
 * here, is never followed; exact modes for secrets; create-only; no temporary file left on failure; and
 * `fleetgate report --out` and the writeReport activity with a link planted where they used to write.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { tempNameOf, writeFileAtomic, writeFileAtomicSync } from '../../activities/atomic-file';
import { createReportActivities } from '../../activities/report';
import { runReport, type ReportIo } from '../../cli/report';
import { createOnce } from '../../workers/secrets';

const FIXTURE = resolve(__dirname, '..', 'fixtures', 'report-demo.json');

function scratch(): { dir: string; outside: string; done: () => void } {
  const root = mkdtempSync(join(tmpdir(), 'fleetgate-atomic-'));
  const dir = join(root, 'target');
  mkdirSync(dir);
  const outside = join(root, 'outside.txt');
  writeFileSync(outside, 'outside, untouched\n');
  return { dir, outside, done: () => rmSync(root, { recursive: true, force: true }) };
}

function capture(): ReportIo & { outs: string[]; errs: string[] } {
  const outs: string[] = [];
  const errs: string[] = [];
  return { outs, errs, out: (t) => void outs.push(t), err: (t) => void errs.push(t) };
}

/** Random names from a list, in order (the last one repeated). */
function names(...list: string[]): () => string {
  let i = 0;
  return () => list[Math.min(i++, list.length - 1)]!;
}

void test('fleetgate report --out never follows a link planted at the old predictable temp name', async () => {
  const { dir, outside, done } = scratch();
  try {
    const dataDir = join(dir, 'data');
    mkdirSync(join(dataDir, 'reports'), { recursive: true });
    writeFileSync(join(dataDir, 'reports', 'r1.json'), readFileSync(FIXTURE));
    const out = join(dir, 'page.html');
    symlinkSync(outside, `${out}.${process.pid}.tmp`);
    const io = capture();
    assert.equal(await runReport(['r1', '--out', out], { io, dataDir }), 0, io.errs.join('\n'));
    assert.equal(readFileSync(outside, 'utf8'), 'outside, untouched\n');
    assert.match(readFileSync(out, 'utf8'), /<svg class="chart"/);
    assert.ok(lstatSync(`${out}.${process.pid}.tmp`).isSymbolicLink(), 'the planted link is left alone');
    assert.deepEqual(readdirSync(dir).sort(), ['data', `page.html`, `page.html.${process.pid}.tmp`]);
  } finally {
    done();
  }
});

void test('the writeReport activity never follows a link planted at the old predictable temp names', async () => {
  const { dir, outside, done } = scratch();
  try {
    const report = JSON.parse(readFileSync(FIXTURE, 'utf8')) as { rolloutId: string };
    const reports = join(dir, 'reports');
    mkdirSync(reports);
    for (const ext of ['json', 'html']) {
      symlinkSync(outside, join(reports, `${report.rolloutId}.${ext}.${process.pid}.tmp`));
    }
    const written = await createReportActivities({ dataDir: dir }).writeReport({
      rolloutId: report.rolloutId,
      report: report as never,
    });
    assert.equal(readFileSync(outside, 'utf8'), 'outside, untouched\n');
    assert.deepEqual(JSON.parse(readFileSync(written.path, 'utf8')), report);
    assert.match(readFileSync(written.htmlPath!, 'utf8'), /<svg class="chart"/);
  } finally {
    done();
  }
});

void test('writeFileAtomic draws another name when a temp name is taken by a link, and never follows it', async () => {
  const { dir, outside, done } = scratch();
  try {
    const target = join(dir, 'file.json');
    const dangling = join(dir, '..', 'created-through-a-link');
    symlinkSync(outside, tempNameOf(target, 'aaaa'));
    symlinkSync(dangling, tempNameOf(target, 'bbbb'));
    await writeFileAtomic(target, 'new\n', { randomName: names('aaaa', 'bbbb', 'cccc') });
    assert.equal(readFileSync(target, 'utf8'), 'new\n');
    assert.equal(readFileSync(outside, 'utf8'), 'outside, untouched\n');
    assert.equal(existsSync(dangling), false, 'a dangling link is not created through either');
    assert.deepEqual(readdirSync(dir).sort(), ['.file.json.aaaa.tmp', '.file.json.bbbb.tmp', 'file.json']);

    writeFileAtomicSync(target, 'sync\n', { randomName: names('aaaa', 'bbbb', 'dddd') });
    assert.equal(readFileSync(target, 'utf8'), 'sync\n');
    assert.equal(readFileSync(outside, 'utf8'), 'outside, untouched\n');
    assert.equal(existsSync(dangling), false);
  } finally {
    done();
  }
});

void test('writeFileAtomic refuses when every candidate temp name is taken, naming the file and the fix', async () => {
  const { dir, outside, done } = scratch();
  try {
    const target = join(dir, 'file.json');
    writeFileSync(target, 'old\n');
    symlinkSync(outside, tempNameOf(target, 'same'));
    await assert.rejects(writeFileAtomic(target, 'new\n', { randomName: () => 'same' }), (err: Error) => {
      assert.match(err.message, /cannot create a temporary file beside .*file\.json/);
      assert.match(err.message, /remove the stray \.file\.json\.\*\.tmp entries/);
      return true;
    });
    assert.throws(
      () => writeFileAtomicSync(target, 'new\n', { randomName: () => 'same' }),
      /candidate names/,
    );
    assert.equal(readFileSync(target, 'utf8'), 'old\n');
    assert.equal(readFileSync(outside, 'utf8'), 'outside, untouched\n');
  } finally {
    done();
  }
});

void test('a link at the target is replaced, not written through; a failed write leaves no temp file', async () => {
  const { dir, outside, done } = scratch();
  try {
    const target = join(dir, 'page.html');
    symlinkSync(outside, target);
    await writeFileAtomic(target, 'page\n');
    assert.equal(lstatSync(target).isSymbolicLink(), false);
    assert.equal(readFileSync(target, 'utf8'), 'page\n');
    assert.equal(readFileSync(outside, 'utf8'), 'outside, untouched\n');

    mkdirSync(join(dir, 'a-directory'));
    await assert.rejects(writeFileAtomic(join(dir, 'a-directory'), 'x'), /EISDIR|ENOTEMPTY|EEXIST/);
    assert.throws(() => writeFileAtomicSync(join(dir, 'a-directory'), 'x'), /EISDIR|ENOTEMPTY|EEXIST/);
    assert.deepEqual(readdirSync(dir).sort(), ['a-directory', 'page.html']);
  } finally {
    done();
  }
});

void test('secrets get exactly mode 0600; create-only never replaces; createOnce keeps the first key', async () => {
  const { dir, done } = scratch();
  const umask = process.umask(0o000);
  try {
    const secret = join(dir, 'secret.key');
    await writeFileAtomic(secret, 'k1', { mode: 0o600 });
    assert.equal(statSync(secret).mode & 0o777, 0o600);
    assert.equal(await writeFileAtomic(secret, 'k2', { mode: 0o600, replace: false }), 'exists');
    assert.equal(readFileSync(secret, 'utf8'), 'k1');
    assert.equal(
      writeFileAtomicSync(join(dir, 'other.key'), 'o', { mode: 0o600, replace: false }),
      'written',
    );
    assert.equal(statSync(join(dir, 'other.key')).mode & 0o777, 0o600);

    const key = join(dir, 'pseudonym.key');
    createOnce(key, () => 'first');
    createOnce(key, () => 'second');
    assert.equal(readFileSync(key, 'utf8'), 'first');
    assert.equal(statSync(key).mode & 0o777, 0o600);
    assert.deepEqual(readdirSync(dir).sort(), ['other.key', 'pseudonym.key', 'secret.key']);
  } finally {
    process.umask(umask);
    done();
  }
});
