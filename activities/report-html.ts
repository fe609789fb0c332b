/**
 * Renders a rollout report (the JSON of activities/report.ts) as one self-contained HTML page: the
 * header, the per-cohort outcome table, one chart per cohort and metric of the estimate and its
 * confidence band at every look against the margin and the harm threshold, the wave timeline and the
 * whole decision log.
 *
 * Pure: report in, text out. The page needs nothing else: inline CSS, charts as inline SVG drawn here,
 * no script, no font, no external reference of any kind (its Content-Security-Policy forbids them).
 * Every string taken from the report is escaped, so a reason holding markup shows as text. It reads the
 * report defensively: reports of older rollouts lack fields (engine 1 metrics, `dataAsOf`, times, the
 * policy) and still render. It never adds a vehicle identifier (reports hold none).
 */

/** One metric's statistics at one look, as policies/decide.ts `MetricResult` (all optional here). */
interface LookMetric {
  metric: string;
  nCandidate?: number;
  nProduction?: number;
  candidate?: number;
  production?: number;
  estimate?: number;
  lambda?: number;
  boundary?: number;
  ci?: [number, number];
  margin?: number;
  verdict?: string;
  test?: string;
  scale?: string;
  level?: number;
  note?: string;
  /** Tail-latency metrics: each arm's own quantile in ms (candidate/production are then shares). */
  quantileMs?: { candidate?: number; production?: number };
}

interface Entry {
  seq: number;
  at?: string;
  dataAsOf?: string;
  phase: string;
  wave?: number;
  look?: number;
  cohort?: string;
  action: string;
  reason: string;
  by?: string;
  metrics: LookMetric[];
}

interface Cohort {
  cohort: string;
  state: string;
  wave?: number;
  vehicles?: number;
  headline?: string;
}

/** One look of a cohort: the decision-log entry that recorded it. */
interface Look {
  entry: Entry;
  label: string;
}

// ---- reading the report defensively ---------------------------------------------------------------

type Obj = Record<string, unknown>;

function obj(x: unknown): Obj | undefined {
  return typeof x === 'object' && x !== null && !Array.isArray(x) ? (x as Obj) : undefined;
}
function str(x: unknown): string | undefined {
  return typeof x === 'string' ? x : undefined;
}
function num(x: unknown): number | undefined {
  return typeof x === 'number' && !Number.isNaN(x) ? x : undefined;
}
function arr(x: unknown): unknown[] {
  return Array.isArray(x) ? x : [];
}

function readMetric(x: unknown): LookMetric | undefined {
  const m = obj(x);
  const name = str(m?.metric);
  if (!m || !name) return undefined;
  const ci = arr(m.ci);
  const lo = num(ci[0]);
  const hi = num(ci[1]);
  return {
    metric: name,
    nCandidate: num(m.nCandidate),
    nProduction: num(m.nProduction),
    candidate: num(m.candidate),
    production: num(m.production),
    estimate: num(m.estimate),
    lambda: num(m.lambda),
    boundary: num(m.boundary),
    ci: lo !== undefined && hi !== undefined ? [lo, hi] : undefined,
    margin: num(m.margin),
    verdict: str(m.verdict),
    test: str(m.test),
    scale: str(m.scale),
    level: num(m.level),
    note: str(m.note),
    ...(obj(m.quantileMs)
      ? {
          quantileMs: {
            candidate: num(obj(m.quantileMs)!.candidate),
            production: num(obj(m.quantileMs)!.production),
          },
        }
      : {}),
  };
}

function readEntry(x: unknown, i: number): Entry | undefined {
  const e = obj(x);
  if (!e) return undefined;
  return {
    seq: num(e.seq) ?? i + 1,
    at: str(e.at),
    dataAsOf: str(e.dataAsOf),
    phase: str(e.phase) ?? '',
    wave: num(e.wave),
    look: num(e.look),
    cohort: str(e.cohort),
    action: str(e.action) ?? '',
    reason: str(e.reason) ?? '',
    by: str(e.by),
    metrics: arr(e.metrics)
      .map(readMetric)
      .filter((m): m is LookMetric => m !== undefined),
  };
}

function readCohort(x: unknown): Cohort | undefined {
  const c = obj(x);
  const name = str(c?.cohort);
  if (!c || !name) return undefined;
  return {
    cohort: name,
    state: str(c.state) ?? 'unknown',
    wave: num(c.wave),
    vehicles: num(c.vehicles),
    headline: str(c.headline),
  };
}

// ---- formatting -----------------------------------------------------------------------------------

/** Escapes text for HTML element content and attribute values (double or single quoted). */
export function escapeHtml(s: string): string {
  return s
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}
const e = escapeHtml;

/** Bounds of "no interval yet" are ±Number.MAX_VALUE; anything that large is unbounded. */
function bounded(x: number | undefined): x is number {
  return x !== undefined && Number.isFinite(x) && Math.abs(x) < 1e300;
}

function fmt(x: number | undefined, signed = false): string {
  if (x === undefined) return '—';
  if (!bounded(x)) return x > 0 ? '+∞' : '−∞';
  const sign = signed && x > 0 ? '+' : x < 0 ? '−' : '';
  const a = Math.abs(x);
  if (a === 0) return '0';
  const body = a >= 1e5 || a < 1e-3 ? a.toExponential(2) : String(Number(a.toPrecision(3)));
  return sign + body;
}

function fmtCount(x: number | undefined): string {
  return x === undefined ? '—' : Math.round(x).toLocaleString('en-US');
}

/** `2026-11-22 06:17:40Z` from an ISO time; the text itself when it is not one. */
function fmtTime(iso: string | undefined): string {
  if (!iso) return '—';
  const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})/.exec(iso);
  return m ? `${m[1]} ${m[2]}Z` : iso;
}

function ms(iso: string | undefined): number | undefined {
  if (!iso) return undefined;
  const t = Date.parse(iso);
  return Number.isNaN(t) ? undefined : t;
}

function fmtDuration(fromIso: string | undefined, toIso: string | undefined): string {
  const a = ms(fromIso);
  const b = ms(toIso);
  if (a === undefined || b === undefined || b < a) return '—';
  const s = Math.round((b - a) / 1000);
  if (s < 120) return `${s} s`;
  const m = Math.round(s / 60);
  return m < 120 ? `${m} min` : `${(m / 60).toFixed(1)} h`;
}

function short(digest: string | undefined): string {
  return digest ? digest.slice(0, 12) : '—';
}

/** CSS class of a cohort state or action: one of a closed set, never report text. */
function tone(word: string): string {
  if (/^(promoted?|completed|noninferior|improved|shadow-pass|gate-passed|labels-ready)$/.test(word))
    return 'good';
  if (/^(rolled_back|rollback|fleet-rollback|harm|rejected|aborted|shadow-fail|reject|abort)$/.test(word))
    return 'bad';
  if (/^(held|hold|escalated?|inconclusive|extend|insufficient|shadow-stop)$/.test(word)) return 'warn';
  return 'plain';
}

// ---- the page -------------------------------------------------------------------------------------

/** The report's stylesheet; the status page of cli/ui-page.ts uses it too, so its charts look the same. */
export const REPORT_CSS = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1b1f24;margin:0;background:#fff}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 12px}h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:15px;margin:20px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #d0d7de;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}
dl.meta dt{color:#57606a}dl.meta dd{margin:0}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.badge{display:inline-block;padding:0 6px;border-radius:10px;font-size:12px;border:1px solid}
.good{color:#116329;border-color:#4ac26b;background:#dafbe1}.bad{color:#82071e;border-color:#ff8182;background:#ffebe9}
.warn{color:#7d4e00;border-color:#d4a72c;background:#fff8c5}.plain{color:#24292f;border-color:#d0d7de;background:#f6f8fa}
figure{margin:8px 0 4px}figcaption{font-size:13px;color:#57606a}
svg{max-width:100%;height:auto;font-family:inherit}
.reason{max-width:640px}.muted{color:#57606a}
`;

/** The report's cohorts and its decision log in order, read defensively. */
function readReport(report: unknown): { r: Obj; cohorts: Cohort[]; entries: Entry[]; policy?: Obj } {
  const r = obj(report) ?? {};
  const cohorts = arr(r.cohorts)
    .map(readCohort)
    .filter((c): c is Cohort => c !== undefined);
  const entries = arr(r.decisions)
    .map(readEntry)
    .filter((x): x is Entry => x !== undefined)
    .sort((a, b) => a.seq - b.seq);
  return { r, cohorts, entries, policy: obj(r.policy) };
}

/** Renders the whole report as one HTML document. */
export function renderReportHtml(report: unknown): string {
  const { r, cohorts, entries, policy } = readReport(report);
  const rolloutId = str(r.rolloutId) ?? 'unknown rollout';
  const body = [
    header(r, rolloutId),
    outcomeTable(cohorts, entries, obj(r.production)),
    charts(cohorts, entries, policy, true),
    timeline(entries, policy, str(r.startedAt)),
    decisionLog(entries),
  ].join('\n');
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>fleetgate report ${e(rolloutId)}</title>
<style>${REPORT_CSS}</style>
</head>
<body>
<main>
${body}
<p class="muted">Written by fleetgate from the rollout's report JSON. Estimates are candidate minus production (positive = harm).</p>
</main>
</body>
</html>
`;
}

function header(r: Obj, rolloutId: string): string {
  const outcome = str(r.outcome) ?? 'unknown';
  const cand = obj(r.candidate);
  const candidate = cand
    ? `${e(str(cand.name) ?? '?')}@${e(str(cand.version) ?? '?')} <code>${e(short(str(cand.digest)))}</code>`
    : '—';
  const prod = obj(r.production);
  const production = prod
    ? Object.entries(prod)
        .map(([c, d]) => `${e(c)}: <code>${e(short(str(d)))}</code>`)
        .join('; ') || '—'
    : '—';
  const rows: [string, string][] = [
    [
      'Outcome',
      `<span class="badge ${tone(outcome)}">${e(outcome)}</span>${str(r.rejectedAt) ? ` (rejected at ${e(str(r.rejectedAt)!)})` : ''}`,
    ],
    ['Reason', e(str(r.reason) ?? '—')],
    ['Candidate', candidate],
    ['Production', production],
    ['Policy', e(str(obj(r.policy)?.name) ?? '—')],
    ['Started', e(fmtTime(str(r.startedAt)))],
    ['Finished', e(fmtTime(str(r.finishedAt)))],
    ['Duration', e(fmtDuration(str(r.startedAt), str(r.finishedAt)))],
  ];
  if (str(r.workflowId)) {
    rows.push([
      'Workflow',
      `<code>${e(str(r.workflowId)!)}</code>${str(r.runId) ? ` run <code>${e(str(r.runId)!)}</code>` : ''}`,
    ]);
  }
  return `<header>
<h1>Rollout <code>${e(rolloutId)}</code></h1>
<dl class="meta">
${rows.map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join('\n')}
</dl>
</header>`;
}

const DECIDING_ACTIONS = new Set(['rollback', 'promote', 'escalate', 'hold']);

/** The entry that decided the cohort: its last look whose action was a decision. */
function decidingEntry(cohort: string, entries: Entry[]): Entry | undefined {
  const own = entries.filter((x) => x.cohort === cohort && DECIDING_ACTIONS.has(x.action));
  const looked = own.filter((x) => x.look !== undefined);
  return looked[looked.length - 1] ?? own[own.length - 1];
}

function lookName(x: Entry): string {
  if (x.phase === 'analysis') return 'final look';
  if (x.wave !== undefined && x.look !== undefined) return `wave ${x.wave} look ${x.look}`;
  if (x.wave !== undefined) return `wave ${x.wave}`;
  return x.phase;
}

function outcomeTable(cohorts: Cohort[], entries: Entry[], production: Obj | undefined): string {
  if (cohorts.length === 0) return `<h2 id="cohorts">Cohorts</h2>\n<p>No cohorts in this report.</p>`;
  const rows = cohorts.map((c) => {
    const d = decidingEntry(c.cohort, entries);
    const decision = d ? `${e(d.action)} <span class="muted">(${e(lookName(d))})</span>` : '—';
    return `<tr data-cohort="${e(c.cohort)}"><td>${e(c.cohort)}</td><td>${decision}</td><td><span class="badge ${tone(c.state)}">${e(c.state)}</span></td><td class="n">${fmtCount(c.wave)}</td><td class="n">${fmtCount(c.vehicles)}</td><td><code>${e(short(str(production?.[c.cohort])))}</code></td><td>${e(c.headline ?? '—')}</td></tr>`;
  });
  return `<h2 id="cohorts">Cohorts</h2>
<table class="outcomes">
<thead><tr><th scope="col">Cohort</th><th scope="col">Decision</th><th scope="col">State</th><th scope="col">Wave reached</th><th scope="col">Vehicles on candidate</th><th scope="col">Production</th><th scope="col">Deciding statistic</th></tr></thead>
<tbody>
${rows.join('\n')}
</tbody>
</table>`;
}

// ---- charts -------------------------------------------------------------------------------------

/** Looks of one cohort: the canary and final decision-log entries carrying metrics, in order. */
function cohortLooks(cohort: string, entries: Entry[]): Look[] {
  return entries
    .filter((x) => x.cohort === cohort && x.look !== undefined && x.metrics.length > 0)
    .map((x) => ({
      entry: x,
      label: x.phase === 'analysis' ? 'final' : `w${x.wave ?? '?'} l${x.look}`,
    }));
}

function harmThresholds(policy: Obj | undefined): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of arr(obj(policy?.analysis)?.metrics)) {
    const spec = obj(m);
    const name = str(spec?.name);
    if (name) out.set(name, num(spec?.harmThreshold) ?? 0);
  }
  return out;
}

/**
 * The "Metrics per look" section alone, for a report or a report-shaped status (`cohorts`, `decisions`,
 * optional `policy`): the status page of cli/ui.ts draws a live rollout's charts with it. `tables`:
 * the per-look table under each chart.
 */
export function renderMetricCharts(report: unknown, opts: { tables?: boolean } = {}): string {
  const { cohorts, entries, policy } = readReport(report);
  return charts(cohorts, entries, policy, opts.tables ?? true);
}

function charts(cohorts: Cohort[], entries: Entry[], policy: Obj | undefined, tables: boolean): string {
  const thresholds = harmThresholds(policy);
  const parts: string[] = ['<h2 id="metrics">Metrics per look</h2>'];
  parts.push(
    '<p>Each chart shows the estimate (candidate minus production) at every look with its confidence band ' +
      '(the always-valid confidence sequence, or the repeated confidence interval, at the level the verdict ' +
      'used). Harm is shown when the band lies above the harm threshold; non-inferiority when it lies below ' +
      'the margin. A hollow marker at the bottom is a look without enough data for an estimate.</p>',
  );
  let any = false;
  for (const c of cohorts) {
    const looks = cohortLooks(c.cohort, entries);
    if (looks.length === 0) continue;
    any = true;
    parts.push(`<h3>Cohort ${e(c.cohort)}</h3>`);
    const names: string[] = [];
    for (const l of looks)
      for (const m of l.entry.metrics) if (!names.includes(m.metric)) names.push(m.metric);
    const decided = decidingEntry(c.cohort, entries);
    for (const name of names) {
      parts.push(metricChart(c.cohort, name, looks, decided, thresholds.get(name), tables));
    }
  }
  if (!any) parts.push('<p>This report holds no per-look statistics.</p>');
  return parts.join('\n');
}

const W = 720;
const H = 300;
const PAD = { l: 72, r: 130, t: 16, b: 64 };

function metricChart(
  cohort: string,
  metric: string,
  looks: Look[],
  decided: Entry | undefined,
  policyThreshold: number | undefined,
  tables: boolean,
): string {
  const pts = looks.map((l) => ({ look: l, m: l.entry.metrics.find((m) => m.metric === metric) }));
  const first = pts.find((p) => p.m)?.m;
  const margin = [...pts].reverse().find((p) => p.m?.margin !== undefined)?.m?.margin;
  const threshold = policyThreshold ?? 0;
  const relative = first?.scale === 'log' || first?.test === 'exact-poisson' || metric === 'safety_events';
  const tailQ = metric === 'latency_p95' ? 'p95' : metric === 'latency_p99' ? 'p99' : undefined;
  const unit = relative
    ? 'relative difference (ratio − 1)'
    : tailQ
      ? `difference of the shares above production's ${tailQ}, candidate − production`
      : 'difference, candidate − production';
  // Tail-latency metrics: the arm's share above production's quantile, and its own quantile in ms.
  const armCell = (m: LookMetric, side: 'candidate' | 'production') => {
    const ms = m.quantileMs?.[side];
    return ms === undefined ? fmt(m[side]) : `${fmt(m[side])} (${tailQ} ${fmt(ms)} ms)`;
  };
  const estimated = (m: LookMetric | undefined): m is LookMetric =>
    m !== undefined && m.verdict !== 'insufficient' && bounded(m.estimate);

  // Vertical range: every finite value shown, the lines included.
  const values: number[] = [0, threshold];
  if (margin !== undefined) values.push(margin);
  for (const { m } of pts) {
    if (!estimated(m)) continue;
    values.push(m.estimate!);
    if (m.ci && bounded(m.ci[0])) values.push(m.ci[0]);
    if (m.ci && bounded(m.ci[1])) values.push(m.ci[1]);
  }
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (hi - lo < 1e-12) {
    lo -= 1;
    hi += 1;
  }
  const span = hi - lo;
  lo -= span * 0.08;
  hi += span * 0.08;
  const pw = W - PAD.l - PAD.r;
  const ph = H - PAD.t - PAD.b;
  const y = (v: number) => PAD.t + ((hi - v) / (hi - lo)) * ph;
  const step = pw / pts.length;
  const x = (i: number) => PAD.l + step * (i + 0.5);
  const r1 = (v: number) => v.toFixed(1);
  const bottom = PAD.t + ph;

  const svg: string[] = [];
  const titleId = `t-${slug(cohort)}-${slug(metric)}`;
  svg.push(
    `<svg class="chart" data-cohort="${e(cohort)}" data-metric="${e(metric)}" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-labelledby="${titleId}">`,
    `<title id="${titleId}">${e(metric)} in ${e(cohort)}: estimate and confidence band per look</title>`,
    `<rect x="${PAD.l}" y="${PAD.t}" width="${pw}" height="${ph}" fill="#fbfcfd" stroke="#d0d7de"/>`,
  );
  // Grid and y ticks.
  for (const v of niceTicks(lo, hi)) {
    const yy = r1(y(v));
    svg.push(
      `<line x1="${PAD.l}" x2="${PAD.l + pw}" y1="${yy}" y2="${yy}" stroke="#eaeef2"/>`,
      `<text x="${PAD.l - 6}" y="${yy}" font-size="11" text-anchor="end" dominant-baseline="middle" fill="#57606a">${e(fmt(v, true))}</text>`,
    );
  }
  // Reference lines: zero, the harm threshold and the margin.
  const hline = (v: number, cls: string, color: string, dash: string, label: string) => {
    const yy = r1(y(v));
    svg.push(
      `<line class="${cls}" x1="${PAD.l}" x2="${PAD.l + pw}" y1="${yy}" y2="${yy}" stroke="${color}" stroke-width="1.5"${dash ? ` stroke-dasharray="${dash}"` : ''}/>`,
      `<text x="${PAD.l + pw + 6}" y="${yy}" font-size="11" dominant-baseline="middle" fill="${color}">${e(label)}</text>`,
    );
  };
  if (threshold !== 0) hline(0, 'zero', '#8c959f', '2 3', 'no difference');
  if (margin !== undefined && Math.abs(margin - threshold) < 1e-12) {
    hline(threshold, 'boundary harm-threshold margin', '#cf222e', '', `margin/harm ${fmt(margin, true)}`);
  } else {
    hline(threshold, 'boundary harm-threshold', '#cf222e', '', `harm threshold ${fmt(threshold, true)}`);
    if (margin !== undefined)
      hline(margin, 'boundary margin', '#bc4c00', '6 4', `margin ${fmt(margin, true)}`);
  }

  // The band: contiguous runs of looks with a bounded interval.
  const band = pts.map(({ m }) =>
    estimated(m) && m.ci && bounded(m.ci[0]) && bounded(m.ci[1]) ? m.ci : undefined,
  );
  let run: number[] = [];
  const flush = () => {
    if (run.length === 0) return;
    const half = Math.min(step * 0.18, 10);
    const top = run.flatMap((i) => [
      [x(i) - (run.length === 1 ? half : 0), y(band[i]![1])],
      ...(run.length === 1 ? [[x(i) + half, y(band[i]![1])]] : []),
    ]);
    const low = run
      .flatMap((i) => [
        [x(i) - (run.length === 1 ? half : 0), y(band[i]![0])],
        ...(run.length === 1 ? [[x(i) + half, y(band[i]![0])]] : []),
      ])
      .reverse();
    const d = [...top, ...low].map(([a, b]) => `${r1(a!)},${r1(b!)}`).join(' ');
    svg.push(`<polygon class="band" points="${d}" fill="#0969da" fill-opacity="0.15" stroke="none"/>`);
    run = [];
  };
  band.forEach((ci, i) => (ci ? run.push(i) : flush()));
  flush();
  band.forEach((ci, i) => {
    if (!ci) return;
    svg.push(
      `<line class="ci" x1="${r1(x(i))}" x2="${r1(x(i))}" y1="${r1(y(ci[0]))}" y2="${r1(y(ci[1]))}" stroke="#0969da" stroke-width="1.5"/>`,
    );
  });
  // The estimate's line, then its points.
  const line = pts
    .map(({ m }, i) => (estimated(m) ? `${r1(x(i))},${r1(y(m.estimate!))}` : undefined))
    .filter((p): p is string => p !== undefined);
  if (line.length > 1) {
    svg.push(
      `<polyline class="estimate-line" points="${line.join(' ')}" fill="none" stroke="#0969da" stroke-width="1.5"/>`,
    );
  }
  pts.forEach(({ look, m }, i) => {
    const cx = r1(x(i));
    const tip = m
      ? `${look.label}: Δ=${fmt(m.estimate, true)} [${fmt(m.ci?.[0], true)}, ${fmt(m.ci?.[1], true)}], ${m.verdict ?? ''}`
      : `${look.label}: not analysed`;
    if (estimated(m)) {
      svg.push(
        `<circle class="estimate" data-look="${i + 1}" cx="${cx}" cy="${r1(y(m.estimate!))}" r="4" fill="#0969da"><title>${e(tip)}</title></circle>`,
      );
    } else {
      svg.push(
        `<circle class="estimate insufficient" data-look="${i + 1}" cx="${cx}" cy="${r1(bottom - 6)}" r="4" fill="#fff" stroke="#8c959f" stroke-width="1.5"><title>${e(tip)}</title></circle>`,
      );
    }
    svg.push(
      `<text x="${cx}" y="${r1(bottom + 16)}" font-size="11" text-anchor="middle" fill="#57606a">${e(look.label)}</text>`,
    );
  });
  // The decision point.
  const di = decided ? pts.findIndex((p) => p.look.entry === decided) : -1;
  if (di >= 0) {
    const dx = r1(x(di));
    const right = di >= pts.length / 2;
    svg.push(
      `<line class="decision" x1="${dx}" x2="${dx}" y1="${PAD.t}" y2="${bottom}" stroke="#6639ba" stroke-width="1.5" stroke-dasharray="3 3"/>`,
      `<text x="${r1(x(di) + (right ? -4 : 4))}" y="${PAD.t + 12}" font-size="11" text-anchor="${right ? 'end' : 'start'}" fill="#6639ba" paint-order="stroke" stroke="#fff" stroke-width="3">decision: ${e(decided!.action)}</text>`,
    );
  }
  // Axes titles and the legend.
  svg.push(
    `<text x="${PAD.l + pw / 2}" y="${r1(bottom + 34)}" font-size="12" text-anchor="middle">look (wave, look within the wave; final = the analysis after the label wait)</text>`,
    `<text transform="translate(14 ${r1(PAD.t + ph / 2)}) rotate(-90)" font-size="12" text-anchor="middle">Δ ${e(metric)}</text>`,
  );
  const ly = r1(bottom + 54);
  const legend: [string, string][] = [
    [`<circle cx="6" cy="0" r="4" fill="#0969da"/>`, 'estimate'],
    [`<rect x="0" y="-6" width="12" height="12" fill="#0969da" fill-opacity="0.15"/>`, 'confidence band'],
    [`<line x1="0" x2="14" y1="0" y2="0" stroke="#cf222e" stroke-width="1.5"/>`, 'harm threshold'],
    [
      `<line x1="0" x2="14" y1="0" y2="0" stroke="#bc4c00" stroke-width="1.5" stroke-dasharray="6 4"/>`,
      'margin',
    ],
    [
      `<line x1="6" x2="6" y1="-6" y2="6" stroke="#6639ba" stroke-width="1.5" stroke-dasharray="3 3"/>`,
      'decision',
    ],
    [`<circle cx="6" cy="0" r="4" fill="#fff" stroke="#8c959f" stroke-width="1.5"/>`, 'too little data'],
  ];
  svg.push(`<g class="legend" font-size="11">`);
  let lx = PAD.l - 60;
  for (const [mark, text] of legend) {
    svg.push(
      `<g transform="translate(${lx} ${ly})">${mark}<text x="18" y="0" dominant-baseline="middle">${text}</text></g>`,
    );
    lx += 30 + text.length * 6.2;
  }
  svg.push('</g>', '</svg>');

  const rows = pts.map(({ look, m }) => {
    const x0 = look.entry;
    if (!m) return `<tr><td>${e(look.label)}</td><td colspan="12">not analysed at this look</td></tr>`;
    return `<tr><td>${e(look.label)}</td><td>${e(fmtTime(x0.dataAsOf))}</td><td class="n">${fmtCount(m.nCandidate)}</td><td class="n">${fmtCount(m.nProduction)}</td><td class="n">${e(armCell(m, 'candidate'))}</td><td class="n">${e(armCell(m, 'production'))}</td><td class="n">${estimated(m) ? fmt(m.estimate, true) : '—'}</td><td class="n">${estimated(m) ? `[${fmt(m.ci?.[0], true)}, ${fmt(m.ci?.[1], true)}]` : 'none yet'}</td><td class="n">${m.level === undefined ? '—' : fmt(m.level)}</td><td class="n">${fmt(m.lambda)} / ${fmt(m.boundary)}</td><td><span class="badge ${tone(m.verdict ?? '')}">${e(m.verdict ?? '—')}</span></td><td>${e(x0.action)}</td><td>${e(m.note ?? '')}</td></tr>`;
  });
  const test = first?.test ? `, ${e(first.test)}` : '';
  const figure = `<figure>
${svg.join('\n')}
<figcaption>${e(metric)} in ${e(cohort)} (${e(unit)}${test}): ${pts.length} look(s); margin ${fmt(margin, true)}, harm threshold ${fmt(threshold, true)}.</figcaption>
</figure>`;
  if (!tables) return figure;
  return `${figure}
<table class="looks" data-cohort="${e(cohort)}" data-metric="${e(metric)}">
<caption class="muted">${e(metric)} in ${e(cohort)}, per look</caption>
<thead><tr><th scope="col">Look</th><th scope="col">Data as of (simulated)</th><th scope="col">n candidate</th><th scope="col">n production</th><th scope="col">Candidate</th><th scope="col">Production</th><th scope="col">Estimate Δ</th><th scope="col">Confidence band</th><th scope="col">Level α</th><th scope="col">Statistic / boundary</th><th scope="col">Verdict</th><th scope="col">Action</th><th scope="col">Note</th></tr></thead>
<tbody>
${rows.join('\n')}
</tbody>
</table>`;
}

/** Round tick values inside [lo, hi]: steps of 1, 2 or 5 times a power of ten, about four of them. */
function niceTicks(lo: number, hi: number): number[] {
  const raw = (hi - lo) / 4;
  const p = 10 ** Math.floor(Math.log10(raw));
  const f = raw / p;
  const step = (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * p;
  const out: number[] = [];
  for (let k = Math.ceil(lo / step); k * step <= hi; k++) out.push(Math.abs(k) < 1e-9 ? 0 : k * step);
  return out;
}

function slug(s: string): string {
  return s.replace(/[^A-Za-z0-9_-]+/g, '_');
}

// ---- the wave timeline --------------------------------------------------------------------------

interface Stage {
  key: string;
  label: string;
  entries: Entry[];
}

const STATE_CHANGES: Record<string, string> = {
  rollback: 'rolled back',
  'fleet-rollback': 'rolled back (fleet)',
  hold: 'held',
  escalate: 'escalated',
  promote: 'promotion decided',
  promoted: 'promoted',
  'shadow-fail': 'rejected at shadow',
  'shadow-stop': 'shadow stopped',
  rejected: 'rejected',
  aborted: 'aborted',
};

function stageOf(x: Entry): { key: string; label: string } {
  if (x.phase === 'register' || x.phase === 'bench') return { key: 'setup', label: 'register and bench' };
  if (x.phase === 'shadow') return { key: 'shadow', label: 'shadow' };
  if (x.wave !== undefined && (x.phase === 'canary' || x.phase === 'rollback'))
    return { key: `wave-${x.wave}`, label: `wave ${x.wave}` };
  if (x.phase === 'label-wait' || x.phase === 'analysis' || x.phase === 'promote')
    return { key: 'final', label: 'label wait, final analysis, promotion' };
  return { key: 'end', label: 'end' };
}

function timeline(entries: Entry[], policy: Obj | undefined, startedAt: string | undefined): string {
  if (entries.length === 0)
    return '<h2 id="timeline">Wave timeline</h2>\n<p>No decision log in this report.</p>';
  const stages: Stage[] = [];
  for (const x of entries) {
    const s = stageOf(x);
    let st = stages.find((t) => t.key === s.key);
    if (!st) {
      st = { key: s.key, label: s.label, entries: [] };
      stages.push(st);
    }
    st.entries.push(x);
  }
  const waves = arr(policy?.waves).map(obj);
  // Simulated time: the rollout's data windows; each stage's start is the end of the data before it.
  let lastSim = ms(startedAt);
  const rows = stages.map((st) => {
    const sims = st.entries.map((x) => ms(x.dataAsOf)).filter((t): t is number => t !== undefined);
    const simFrom = lastSim ?? (sims.length ? Math.min(...sims) : undefined);
    const simTo = sims.length ? Math.max(...sims) : undefined;
    if (simTo !== undefined) lastSim = simTo;
    const ats = st.entries.map((x) => x.at).filter((a): a is string => a !== undefined);
    const changes: string[] = [];
    for (const x of st.entries) {
      const what = STATE_CHANGES[x.action];
      if (!what) continue;
      const who = x.cohort ?? 'fleet';
      const text = `${who}: ${what}${x.look !== undefined && x.phase !== 'analysis' ? ` (look ${x.look})` : ''}`;
      const dup = changes.some((c) => c.startsWith(`${who}: ${what}`));
      if (!dup) changes.push(text);
    }
    const deliver = st.entries.find((x) => x.action === 'deliver');
    let label = st.label;
    const w = /^wave-(\d+)$/.exec(st.key);
    if (w) {
      const spec = waves[Number(w[1]) - 1];
      const pct = num(spec?.percent);
      if (pct !== undefined) label += ` (${pct}%)`;
    }
    const looks = new Set(st.entries.filter((x) => x.look !== undefined).map((x) => x.look)).size;
    return {
      st,
      label,
      simFrom: simTo !== undefined ? simFrom : undefined,
      simTo,
      from: ats[0],
      to: ats[ats.length - 1],
      looks,
      deliver,
      changes,
    };
  });

  // A Gantt chart over simulated time, when the report has it.
  const timed = rows.filter((x) => x.simFrom !== undefined && x.simTo !== undefined);
  let chart = '';
  if (timed.length > 0) {
    const t0 = Math.min(...timed.map((x) => x.simFrom!));
    const t1 = Math.max(...timed.map((x) => x.simTo!));
    const tw = 720;
    const rowH = 26;
    const left = 230;
    const right = 20;
    const th = 40 + rowH * timed.length + 40;
    const pw = tw - left - right;
    const tx = (t: number) => left + (t1 > t0 ? ((t - t0) / (t1 - t0)) * pw : 0);
    const parts: string[] = [
      `<svg class="timeline" viewBox="0 0 ${tw} ${th}" width="${tw}" height="${th}" role="img" aria-labelledby="timeline-title">`,
      `<title id="timeline-title">Stages of the rollout over simulated fleet time</title>`,
    ];
    timed.forEach((x, i) => {
      const yy = 20 + i * rowH;
      const a = tx(x.simFrom!);
      const b = Math.max(tx(x.simTo!), a + 2);
      const bad = x.changes.some((c) => /rolled back|rejected|aborted/.test(c));
      const warn = x.changes.some((c) => /held|escalated/.test(c));
      const fill = bad ? '#ffebe9' : warn ? '#fff8c5' : '#ddf4ff';
      parts.push(
        `<text x="${left - 8}" y="${yy + 9}" font-size="11" text-anchor="end" dominant-baseline="middle">${e(x.label)}</text>`,
        `<rect class="stage" x="${a.toFixed(1)}" y="${yy}" width="${(b - a).toFixed(1)}" height="18" fill="${fill}" stroke="#57606a"><title>${e(`${x.label}: ${fmtTime(new Date(x.simFrom!).toISOString())} to ${fmtTime(new Date(x.simTo!).toISOString())}${x.changes.length ? `; ${x.changes.join('; ')}` : ''}`)}</title></rect>`,
      );
      for (const ch of x.st.entries) {
        const what = STATE_CHANGES[ch.action];
        const t = ms(ch.dataAsOf);
        if (!what || t === undefined) continue;
        const color = /rolled back|rejected|aborted|stopped/.test(what)
          ? '#cf222e'
          : /held|escalated/.test(what)
            ? '#9a6700'
            : '#1a7f37';
        parts.push(
          `<circle class="state-change" cx="${tx(t).toFixed(1)}" cy="${yy + 9}" r="4" fill="${color}"><title>${e(`${ch.cohort ?? 'fleet'}: ${what}`)}</title></circle>`,
        );
      }
    });
    const by = 20 + rowH * timed.length + 6;
    parts.push(
      `<line x1="${left}" x2="${left + pw}" y1="${by}" y2="${by}" stroke="#57606a"/>`,
      `<text x="${left}" y="${by + 14}" font-size="11" fill="#57606a">${e(fmtTime(new Date(t0).toISOString()))}</text>`,
      `<text x="${left + pw}" y="${by + 14}" font-size="11" text-anchor="end" fill="#57606a">${e(fmtTime(new Date(t1).toISOString()))}</text>`,
      `<text x="${left + pw / 2}" y="${by + 30}" font-size="12" text-anchor="middle">simulated fleet time</text>`,
      '</svg>',
    );
    chart =
      `<figure>\n${parts.join('\n')}\n<figcaption>Stages over simulated fleet time. Dots are cohort state ` +
      'changes: red rolled back or rejected, amber held or escalated, green promoted.</figcaption>\n</figure>';
  }

  const trs = rows.map(
    (x) =>
      `<tr data-stage="${e(x.st.key)}"><td>${e(x.label)}</td><td>${e(fmtTime(x.from))}</td><td>${e(fmtTime(x.to))}</td><td>${e(x.simFrom === undefined ? '—' : fmtTime(new Date(x.simFrom).toISOString()))}</td><td>${e(x.simTo === undefined ? '—' : fmtTime(new Date(x.simTo).toISOString()))}</td><td class="n">${x.looks || '—'}</td><td class="reason">${x.deliver ? e(x.deliver.reason) : ''}</td><td>${x.changes.map((c) => e(c)).join('<br>') || '—'}</td></tr>`,
  );
  return `<h2 id="timeline">Wave timeline</h2>
<p>Workflow time is when the rollout acted; simulated time is the fleet's clock of the data it looked at
(a stage's data window runs from the end of the data before it to its last look).</p>
${chart}
<table class="timeline">
<thead><tr><th scope="col">Stage</th><th scope="col">From (workflow)</th><th scope="col">To (workflow)</th><th scope="col">Data from (simulated)</th><th scope="col">Data to (simulated)</th><th scope="col">Looks</th><th scope="col">Delivery</th><th scope="col">Cohort state changes</th></tr></thead>
<tbody>
${trs.join('\n')}
</tbody>
</table>`;
}

// ---- the decision log ---------------------------------------------------------------------------

function decisionLog(entries: Entry[]): string {
  const rows = entries.map(
    (x) =>
      `<tr class="entry" data-seq="${x.seq}"><td class="n">${x.seq}</td><td>${e(fmtTime(x.at))}</td><td>${e(fmtTime(x.dataAsOf))}</td><td>${e(x.phase)}</td><td>${x.wave === undefined ? '' : `w${x.wave}`}${x.look === undefined ? '' : ` l${x.look}`}</td><td><span class="badge ${tone(x.action)}">${e(x.action)}</span></td><td>${e(x.cohort ?? '')}</td><td>${e(x.by ?? '')}</td><td class="reason">${e(x.reason)}</td></tr>`,
  );
  return `<h2 id="decisions">Decision log (${entries.length} entries)</h2>
<table class="decisions">
<thead><tr><th scope="col">Seq</th><th scope="col">Time (workflow)</th><th scope="col">Data as of (simulated)</th><th scope="col">Phase</th><th scope="col">Wave / look</th><th scope="col">Action</th><th scope="col">Cohort</th><th scope="col">By</th><th scope="col">Reason</th></tr></thead>
<tbody>
${rows.join('\n')}
</tbody>
</table>`;
}
