/**
 * The HTML report: the page rendered from a real demo report (test/fixtures/report-demo.json), escaping,
 * older reports without optional fields, the writeReport activity writing the page beside the JSON, and
 * `fleetgate report` in-process and through the real executable.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { renderReportHtml } from '../../activities/report-html';
import { createReportActivities } from '../../activities/report';
import { runReport, type ReportIo } from '../../cli/report';

const ROOT = resolve(__dirname, '..', '..');
const FIXTURE = join(ROOT, 'test', 'fixtures', 'report-demo.json');

interface FixtureEntry {
  seq: number;
  phase: string;
  look?: number;
  cohort?: string;
  action: string;
  reason: string;
  metrics?: { metric: string }[];
}
interface FixtureReport {
  rolloutId: string;
  cohorts: { cohort: string; state: string }[];
  decisions: FixtureEntry[];
}

function fixture(): FixtureReport {
  return JSON.parse(readFileSync(FIXTURE, 'utf8')) as FixtureReport;
}

function all(re: RegExp, s: string): RegExpExecArray[] {
  return [...s.matchAll(new RegExp(re.source, re.flags.includes('g') ? re.flags : re.flags + 'g'))];
}

/** The `<svg class="chart" ...>...</svg>` of one cohort and metric. */
function chartOf(html: string, cohort: string, metric: string): string {
  const start = html.indexOf(`<svg class="chart" data-cohort="${cohort}" data-metric="${metric}"`);
  assert.ok(start >= 0, `a chart for ${cohort} ${metric}`);
  return html.slice(start, html.indexOf('</svg>', start));
}

/** Text of the `<tbody>` of the first table with `class` after `from`. */
function tbody(html: string, cls: string, from = 0): string {
  const t = html.indexOf(`<table class="${cls}"`, from);
  assert.ok(t >= 0, `a table ${cls}`);
  const b = html.indexOf('<tbody>', t);
  return html.slice(b, html.indexOf('</tbody>', b));
}

function capture(): ReportIo & { outs: string[]; errs: string[] } {
  const outs: string[] = [];
  const errs: string[] = [];
  return { outs, errs, out: (t) => void outs.push(t), err: (t) => void errs.push(t) };
}

void test('the fixture is a real demo report and holds no vehicle identifiers', () => {
  const text = readFileSync(FIXTURE, 'utf8');
  const r = fixture();
  assert.ok(r.cohorts.length >= 2 && r.decisions.length > 10);
  // The simulator's raw ids are `<fleet>-<cohort index>-<n>`; pseudonyms are 20 hex characters.
  assert.doesNotMatch(text, /"demo-\d{1,2}-\d+"/);
  assert.doesNotMatch(text, /pseudonym|vehicleId|"vin"/i);
});

void test('one chart per cohort and metric, with a point per look, the boundary lines and the decision', () => {
  const r = fixture();
  const html = renderReportHtml(r);
  let charts = 0;
  for (const c of r.cohorts) {
    const looks = r.decisions.filter(
      (d) => d.cohort === c.cohort && d.look !== undefined && d.metrics?.length,
    );
    assert.ok(looks.length > 0, `${c.cohort} has looks`);
    const metrics = [...new Set(looks.flatMap((d) => d.metrics!.map((m) => m.metric)))];
    for (const metric of metrics) {
      charts++;
      const svg = chartOf(html, c.cohort, metric);
      assert.equal(
        all(/<circle class="estimate[ "]/, svg).length,
        looks.length,
        `${c.cohort} ${metric} points`,
      );
      assert.match(svg, /class="boundary harm-threshold/);
      assert.match(svg, /class="boundary[^"]*margin/);
      assert.match(svg, /class="band"/);
      assert.match(svg, /class="decision"/, 'the decision point is marked');
      assert.match(svg, /class="legend"/);
      assert.match(svg, /look \(wave, look within the wave/, 'x axis label');
      assert.match(svg, new RegExp(`Δ ${metric}`), 'y axis label');
      // The same numbers in a table under the chart.
      const rows = tbody(html, 'looks', html.indexOf(svg));
      assert.equal(all(/<tr>/, rows).length, looks.length);
    }
  }
  assert.equal(all(/<svg class="chart"/, html).length, charts);
  // The rolled-back cohort's decision is its wave-2 look: the chart marks a rollback there.
  assert.match(chartOf(html, 'hw3/nordic', 'error_rate'), /decision: rollback/);
  assert.match(chartOf(html, 'hw3/eu', 'error_rate'), /decision: promote/);
});

void test('the outcome table has a row per cohort with its state, decision and deciding statistic', () => {
  const r = fixture();
  const html = renderReportHtml(r);
  const body = tbody(html, 'outcomes');
  const rows = all(/<tr data-cohort="([^"]+)">(.*?)<\/tr>/, body);
  assert.deepEqual(
    rows.map((m) => m[1]),
    r.cohorts.map((c) => c.cohort),
  );
  for (const [i, c] of r.cohorts.entries()) {
    const row = rows[i]![2]!;
    assert.match(row, new RegExp(`>${c.state}<`));
    const decision = c.state === 'promoted' ? 'promote' : c.state === 'rolled_back' ? 'rollback' : '';
    assert.match(row, new RegExp(`<td>${decision}`));
    assert.match(row, /error_rate Δ=/);
  }
  assert.match(html, /<h1>Rollout <code>demo-20261122-061738<\/code><\/h1>/);
  assert.match(html, /hazard-detector@1\.2\.0/);
  assert.match(html, /badge good">completed</);
});

void test('the decision log has every entry, and the timeline every wave with its state changes', () => {
  const r = fixture();
  const html = renderReportHtml(r);
  const seqs = all(/<tr class="entry" data-seq="(\d+)">/, tbody(html, 'decisions')).map((m) => Number(m[1]));
  assert.deepEqual(
    seqs,
    r.decisions.map((d) => d.seq),
  );
  const timeline = tbody(html, 'timeline');
  for (const w of [1, 2, 3]) assert.match(timeline, new RegExp(`data-stage="wave-${w}"`));
  assert.match(timeline, /hw3\/nordic: rolled back \(look 1\)/);
  assert.match(timeline, /hw3\/eu: promoted/);
  assert.match(html, /<svg class="timeline"/);
});

void test('the page is self-contained: no script, no external reference', () => {
  const html = renderReportHtml(fixture());
  assert.doesNotMatch(html, /<script/i);
  assert.doesNotMatch(html, /(?:src|href)\s*=\s*["']?(?:https?:)?\/\//i);
  assert.doesNotMatch(html, /https?:\/\//i);
  assert.doesNotMatch(html, /<link\b|@import|url\(/i);
  assert.match(html, /Content-Security-Policy" content="default-src 'none'/);
});

void test('every string of the report is escaped', () => {
  const r = fixture();
  const evil = '<script>alert("x")</script>';
  r.decisions[0]!.reason = `bad ${evil} & more`;
  r.cohorts[0]!.cohort = `<img src=x onerror=alert(1)>`;
  r.rolloutId = `id"><script>1</script>`;
  const html = renderReportHtml(r);
  assert.doesNotMatch(html, /<script/i);
  assert.doesNotMatch(html, /<img/i);
  assert.match(html, /bad &lt;script&gt;alert\(&quot;x&quot;\)&lt;\/script&gt; &amp; more/);
  assert.match(html, /id&quot;&gt;&lt;script&gt;1&lt;\/script&gt;/);
});

void test('an older or minimal report without optional fields renders', () => {
  // Engine 1 metrics (no test, level, role), no dataAsOf, no policy, candidate or times.
  const old = {
    rolloutId: 'old-1',
    outcome: 'completed',
    reason: 'promoted: hw3/eu',
    cohorts: [{ cohort: 'hw3/eu', state: 'promoted', wave: 1, vehicles: 10 }, { cohort: 'hw4/us' }],
    decisions: [
      {
        seq: 1,
        at: '2025-01-01T00:00:00.000Z',
        phase: 'canary',
        wave: 1,
        action: 'deliver',
        reason: 'wave 1',
      },
      {
        seq: 2,
        at: '2025-01-01T00:01:00.000Z',
        phase: 'canary',
        wave: 1,
        look: 1,
        cohort: 'hw3/eu',
        action: 'continue',
        reason: 'ok',
        metrics: [
          { metric: 'error_rate', estimate: 0.01, ci: [-0.02, 0.04], margin: 0.02, verdict: 'inconclusive' },
        ],
      },
      {
        seq: 3,
        at: '2025-01-01T00:02:00.000Z',
        phase: 'analysis',
        wave: 1,
        look: 1,
        cohort: 'hw3/eu',
        action: 'promote',
        reason: 'fine',
        metrics: [{ metric: 'error_rate', estimate: -0.01, ci: [-0.03, 0.01], verdict: 'noninferior' }],
      },
      { phase: 'promote', action: 'promoted', reason: 'moved' },
    ],
  };
  const html = renderReportHtml(old);
  assert.equal(all(/<circle class="estimate[ "]/, chartOf(html, 'hw3/eu', 'error_rate')).length, 2);
  assert.equal(all(/<tr class="entry"/, html).length, 4);
  assert.match(html, /<tr data-cohort="hw4\/us">/);
  for (const bare of [{}, { rolloutId: 'x' }, null, [], 'text', { cohorts: 'nope', decisions: [1, null] }]) {
    const page = renderReportHtml(bare);
    assert.match(page, /^<!DOCTYPE html>/);
    assert.match(page, /No cohorts in this report|<h2 id="cohorts">/);
  }
});

void test('writeReport writes the page beside the JSON, atomically, and fleetgate report renders old reports', async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'fleetgate-report-'));
  try {
    const r = fixture();
    const acts = createReportActivities({ dataDir });
    const written = await acts.writeReport({ rolloutId: r.rolloutId, report: r });
    assert.equal(written.htmlPath, join(dataDir, 'reports', `${r.rolloutId}.html`));
    assert.deepEqual(readdirSync(join(dataDir, 'reports')).sort(), [
      `${r.rolloutId}.html`,
      `${r.rolloutId}.json`,
    ]);
    assert.equal(readFileSync(written.htmlPath!, 'utf8'), renderReportHtml(r));

    // A report written before pages existed: the command renders it.
    writeFileSync(join(dataDir, 'reports', 'older.json'), JSON.stringify({ ...r, rolloutId: 'older' }));
    let io = capture();
    assert.equal(await runReport(['older'], { io, dataDir }), 0, io.errs.join('\n'));
    const page = join(dataDir, 'reports', 'older.html');
    assert.ok(existsSync(page));
    assert.match(readFileSync(page, 'utf8'), /Rollout <code>older<\/code>/);
    assert.equal(resolve(io.outs[0]!), page);

    io = capture();
    const out = join(dataDir, 'elsewhere', 'page.html');
    assert.equal(await runReport(['older', '--out', out, '--json'], { io, dataDir }), 0, io.errs.join('\n'));
    const json = JSON.parse(io.outs[0]!) as { rolloutId: string; path: string; bytes: number };
    assert.equal(json.path, out);
    assert.equal(json.bytes, readFileSync(out).length);

    // Refusals: unknown id (lists the ids there), malformed JSON (names the file); usage mistakes.
    io = capture();
    assert.equal(await runReport(['nope'], { io, dataDir }), 1);
    assert.match(io.errs.join('\n'), /no report "nope" in .*; available: demo-20261122-061738, older/);
    io = capture();
    assert.equal(await runReport(['../reports/older'], { io, dataDir }), 1, 'never outside the reports');
    writeFileSync(join(dataDir, 'reports', 'broken.json'), '{"rolloutId": ');
    io = capture();
    assert.equal(await runReport(['broken'], { io, dataDir }), 1);
    assert.match(io.errs.join('\n'), /report .*broken\.json: malformed JSON/);
    assert.equal(io.errs.length, 1);
    for (const args of [[], ['a', 'b'], ['older', '--frob']]) {
      io = capture();
      assert.equal(await runReport(args, { io, dataDir }), 2, args.join(' '));
    }
    io = capture();
    assert.equal(await runReport(['x'], { io, dataDir: join(dataDir, 'empty') }), 1);
    assert.match(io.errs[0]!, /holds no reports/);
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
});

void test('fleetgate report through the real executable, with FLEETGATE_DATA_DIR', () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'fleetgate-report-cli-'));
  try {
    mkdirSync(join(dataDir, 'reports'));
    writeFileSync(join(dataDir, 'reports', 'demo-1.json'), readFileSync(FIXTURE));
    const env = { ...process.env, FLEETGATE_DATA_DIR: dataDir };
    const bin = join(ROOT, 'bin', 'fleetgate.js');
    const ok = spawnSync(process.execPath, [bin, 'report', 'demo-1'], { encoding: 'utf8', cwd: ROOT, env });
    assert.equal(ok.status, 0, ok.stderr);
    const page = join(dataDir, 'reports', 'demo-1.html');
    assert.equal(resolve(ROOT, ok.stdout.trim()), page);
    assert.match(readFileSync(page, 'utf8'), /<svg class="chart"/);
    const missing = spawnSync(process.execPath, [bin, 'report', 'demo-2'], {
      encoding: 'utf8',
      cwd: ROOT,
      env,
    });
    assert.equal(missing.status, 1);
    assert.equal(missing.stderr.trim().split('\n').length, 1);
    assert.match(missing.stderr, /available: demo-1/);
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
});
