/**
 * The status page that cli/ui.ts serves: one self-contained HTML document, its CSS and script inline,
 * no external reference (its Content-Security-Policy allows only its own script, by hash, and requests
 * to its own origin). The script polls `/api/rollouts` and the selected rollout's `/api/rollouts/:id`
 * every 2 s and redraws the list, the KPI tiles, the cohort table, the charts and the decision log; its
 * forms and the cohort table's "Roll back" buttons post the actions and show the answer, a validator's
 * refusal included.
 *
 * Every text the script puts into the page goes through `esc` or `textContent`; the one HTML fragment
 * it inserts as such is the charts section, which activities/report-html.ts drew with every string
 * escaped. The page shows what the server sends, which holds no vehicle identifier.
 *
 * It marks `fleetgate:list-drawn` (performance.mark) when the list is first drawn: scripts/bench-ui.ts
 * measures the first render with it.
 */
import { createHash } from 'node:crypto';
import { REPORT_CSS } from '../activities/report-html';
import { FINAL_COHORT_STATES } from '../workflows/definitions';

/** How often the page asks for news. */
export const POLL_MS = 2000;

const CSS = `
main{max-width:1400px}
#charts figure{display:inline-block;width:calc(50% - 16px);margin:8px 12px 4px 0;vertical-align:top}
#charts h3{margin-bottom:0}
.tile .v .badge{font-size:15px}.tile[data-kpi="candidate"]{grid-column:span 2}.tile[data-kpi="candidate"] .v{font-size:16px}
header.top{display:flex;align-items:baseline;gap:16px;flex-wrap:wrap}
header.top h1{margin:0}
#conn{font-size:12px}
.layout{display:grid;grid-template-columns:minmax(240px,300px) minmax(0,1fr);gap:24px;align-items:start}
@media (max-width:900px){.layout{grid-template-columns:1fr}}
#list table{width:100%}
#list tr.sel td{background:#ddf4ff}
#list a{color:#0969da;text-decoration:none;word-break:break-all}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(118px,1fr));gap:10px;margin:12px 0}
.tile{border:1px solid #d0d7de;border-radius:8px;padding:8px 10px;background:#f6f8fa}
.tile .k{font-size:12px;color:#57606a}.tile .v{font-size:20px;font-weight:600;margin-top:2px;word-break:break-word}
.tile .v small{font-size:12px;font-weight:400;color:#57606a}
.panel{border:1px solid #d0d7de;border-radius:8px;padding:10px 12px;margin:12px 0}
.panel.gate{border-color:#d4a72c;background:#fff8c5}
.panel h2{margin-top:0;border:0}
form{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:6px 0}
input{font:inherit;padding:3px 6px;border:1px solid #8c959f;border-radius:6px}
button{font:inherit;padding:3px 12px;border-radius:6px;border:1px solid #8c959f;background:#fff;cursor:pointer}
button.primary{background:#1f883d;color:#fff;border-color:#1a7f37}button.danger{color:#cf222e;border-color:#cf222e}
#action-result{min-height:1.4em;margin:4px 0}
#action-result.refused{color:#82071e}#action-result.ok{color:#116329}
.hidden{display:none}
table.decisions td.reason{max-width:560px}
`;

/** The page's script: plain ES2020 in the browser, no module system, no dependency. */
const SCRIPT = `
'use strict';
const POLL_MS = ${POLL_MS};
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'})[c]);
const FINAL = ${JSON.stringify(FINAL_COHORT_STATES)};
function tone(w) {
  if (/^(promoted|completed|COMPLETED|done)$/.test(w)) return 'good';
  if (/^(rolled_back|rejected|aborted|rollback|FAILED|TERMINATED|TIMED_OUT|CANCELED)$/.test(w)) return 'bad';
  if (/^(held|escalated|label-wait|paused)$/.test(w)) return 'warn';
  return 'plain';
}
const badge = (w) => w ? '<span class="badge ' + tone(w) + '">' + esc(w) + '</span>' : '—';
const time = (iso) => { const m = /^(\\d{4}-\\d{2}-\\d{2})T(\\d{2}:\\d{2}:\\d{2})/.exec(iso || ''); return m ? m[1] + ' ' + m[2] + 'Z' : (iso || '—'); };
let selected = decodeURIComponent((location.hash.match(/^#rollout=(.+)$/) || [])[1] || '');
let listDrawn = false;
let lastCharts = null;
let view = null;

async function getJson(url) {
  const r = await fetch(url, { cache: 'no-store' });
  const body = await r.json().catch(() => ({ error: 'HTTP ' + r.status }));
  if (!r.ok) throw new Error(body.error || 'HTTP ' + r.status);
  return body;
}

function drawList(rollouts) {
  const rows = rollouts.map((r) =>
    '<tr data-id="' + esc(r.id) + '"' + (r.id === selected ? ' class="sel"' : '') + '><td><a href="#rollout=' +
    encodeURIComponent(r.id) + '">' + esc(r.id) + '</a><div class="muted">' + esc(r.candidate || '') + '</div></td><td>' +
    badge(r.outcome || (r.status === 'RUNNING' ? r.phase || 'running' : r.status.toLowerCase())) + '</td></tr>');
  $('list').innerHTML = rollouts.length === 0
    ? '<p class="muted" id="empty">No rollouts yet. Start one with "fleetgate rollout start".</p>'
    : '<table class="rollouts"><thead><tr><th scope="col">Rollout</th><th scope="col">Phase / outcome</th></tr></thead><tbody>' + rows.join('') + '</tbody></table>';
  $('list-count').textContent = String(rollouts.length);
  if (!listDrawn) {
    listDrawn = true;
    performance.mark('fleetgate:list-drawn');
    document.body.dataset.listDrawn = String(rollouts.length);
  }
}

function tile(key, label, value, sub) {
  return '<div class="tile" data-kpi="' + key + '"><div class="k">' + esc(label) + '</div><div class="v">' + value +
    (sub ? ' <small>' + esc(sub) + '</small>' : '') + '</div></div>';
}

function drawRollout(v) {
  view = v;
  $('rollout').classList.remove('hidden');
  $('rollout-id').textContent = v.id;
  $('note').textContent = v.note || '';
  const count = (s) => v.cohorts.filter((c) => c.state === s).length;
  const active = v.cohorts.filter((c) => !FINAL.includes(c.state)).length;
  const cand = v.candidate ? esc(v.candidate.name) + '@' + esc(v.candidate.version) : '—';
  const phase = v.paused ? 'paused' : v.phase;
  $('kpis').innerHTML = [
    tile('phase', 'Phase', badge(phase), v.paused ? 'in ' + v.phase + ' by ' + v.paused.by : (v.running ? '' : (v.status || '').toLowerCase())),
    tile('wave', 'Wave', esc(v.wave ?? '—') + ' / ' + esc(v.waves ?? '—')),
    tile('look', 'Look', esc(v.look ?? '—')),
    tile('candidate', 'Candidate', cand, v.candidate ? v.candidate.digest.slice(0, 12) : ''),
    tile('promoted', 'Cohorts promoted', esc(count('promoted'))),
    tile('rolled-back', 'Cohorts rolled back', esc(count('rolled_back'))),
    tile('active', 'Cohorts active', esc(active), 'of ' + v.cohorts.length),
    v.labelCoverage ? tile('coverage', 'Label coverage', esc(v.labelCoverage)) : '',
    v.outcome ? tile('outcome', 'Outcome', badge(v.outcome)) : '',
  ].join('');
  $('reason').textContent = v.reason ? 'Reason: ' + v.reason : '';
  // A running rollout's cohorts not yet in a final state can be rolled back, one at a time.
  const rollback = (c) => !v.running ? '' : '<td>' + (FINAL.includes(c.state) ? '' :
    '<button class="danger rollback" data-cohort="' + esc(c.cohort) + '">Roll back</button>') + '</td>';
  $('cohorts').innerHTML = v.cohorts.length === 0 ? '<p class="muted">No cohorts yet.</p>' :
    '<table class="cohorts"><thead><tr><th scope="col">Cohort</th><th scope="col">State</th><th scope="col">Waves</th><th scope="col">Vehicles on candidate</th><th scope="col">Deciding statistic</th>' +
    (v.running ? '<th scope="col">Operator</th>' : '') + '</tr></thead><tbody>' +
    v.cohorts.map((c) => '<tr data-cohort="' + esc(c.cohort) + '" data-state="' + esc(c.state) + '"><td>' + esc(c.cohort) + '</td><td>' + badge(c.state) +
      '</td><td class="n">' + esc(c.wave ?? '—') + '</td><td class="n">' + esc(c.vehicles ?? '—') + '</td><td>' + esc(c.headline || '—') + '</td>' + rollback(c) + '</tr>').join('') + '</tbody></table>';
  const g = v.running ? v.pendingGate : undefined;
  $('gate').classList.toggle('hidden', !g);
  if (g) {
    $('gate-name').textContent = g.gate + (g.digest ? ' (candidate ' + g.digest.slice(0, 12) + ')' : '');
    $('gate-detail').textContent = (g.kind === 'escalation' ? 'escalation' : 'before wave ' + g.wave) + '; approvals ' +
      g.approvals.length + '/' + g.required + (g.approvals.length ? ' (' + g.approvals.join(', ') + ')' : '') + '; deadline ' + time(g.deadline) +
      (g.reviewers && g.reviewers.length ? '; reviewers: ' + g.reviewers.join(', ') : '') +
      (g.evidence && g.evidence.length ? '; ' + g.evidence.join('; ') : '');
  }
  $('actions').classList.toggle('hidden', !v.running);
  $('pause').classList.toggle('hidden', !!v.paused);
  $('resume').classList.toggle('hidden', !v.paused);
  if (v.chartsHtml !== lastCharts) {
    lastCharts = v.chartsHtml;
    $('charts').innerHTML = v.chartsHtml;
  }
  const log = v.decisions.slice().reverse();
  $('log-title').textContent = 'Decision log (' + (v.running ? 'latest ' : '') + log.length + ' entries)';
  $('log').innerHTML = '<table class="decisions"><thead><tr><th scope="col">Seq</th><th scope="col">Time</th><th scope="col">Phase</th><th scope="col">Wave / look</th><th scope="col">Action</th><th scope="col">Cohort</th><th scope="col">By</th><th scope="col">Reason</th></tr></thead><tbody>' +
    log.map((d) => '<tr class="entry" data-seq="' + esc(d.seq) + '"><td class="n">' + esc(d.seq) + '</td><td>' + esc(time(d.at)) + '</td><td>' + esc(d.phase) + '</td><td>' +
      (d.wave === undefined ? '' : 'w' + esc(d.wave)) + (d.look === undefined ? '' : ' l' + esc(d.look)) + '</td><td>' + badge(d.action) + '</td><td>' + esc(d.cohort || '') +
      '</td><td>' + esc(d.by || '') + '</td><td class="reason">' + esc(d.reason) + '</td></tr>').join('') + '</tbody></table>';
  document.body.dataset.phase = phase || '';
  document.body.dataset.wave = String(v.wave ?? '');
}

function say(text, ok) {
  const el = $('action-result');
  el.textContent = text;
  el.className = ok ? 'ok' : 'refused';
}

async function act(action, body) {
  if (!view) return;
  say(action + '…', true);
  try {
    const r = await fetch('/api/rollouts/' + encodeURIComponent(view.id) + '/' + action, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    const answer = await r.json().catch(() => ({ error: 'HTTP ' + r.status }));
    if (r.ok) say(action + ': done', true); else say(answer.error || 'HTTP ' + r.status, false);
  } catch (err) {
    say(action + ': ' + err.message, false);
  }
  tick();
}

const val = (id) => $(id).value.trim();
// The candidate digest shown on the page: an answer about another candidate is refused.
const gateDigest = () => view.pendingGate?.digest || view.candidate?.digest || undefined;
$('approve').addEventListener('click', (ev) => { ev.preventDefault(); act('approve', { gate: view.pendingGate?.gate, reviewer: val('reviewer'), comment: val('gate-text') || undefined, digest: gateDigest() }); });
$('reject').addEventListener('click', (ev) => { ev.preventDefault(); act('reject', { gate: view.pendingGate?.gate, reviewer: val('reviewer'), reason: val('gate-text'), digest: gateDigest() }); });
$('pause').addEventListener('click', (ev) => { ev.preventDefault(); act('pause', { by: val('by'), reason: val('why') || undefined }); });
$('resume').addEventListener('click', (ev) => { ev.preventDefault(); act('resume', { by: val('by'), reason: val('why') || undefined }); });
$('abort').addEventListener('click', (ev) => { ev.preventDefault(); if (confirm('Abort ' + view.id + '? Its changes are compensated.')) act('abort', { by: val('by'), reason: val('why') || undefined }); });
// The cohort table is redrawn on every poll: one listener on its container serves every row's button.
$('cohorts').addEventListener('click', (ev) => {
  const b = ev.target.closest('button.rollback');
  if (!b || !view) return;
  ev.preventDefault();
  const cohort = b.dataset.cohort;
  if (confirm('Roll back cohort ' + cohort + ' of ' + view.id + '? Its changes are compensated; the other cohorts go on.')) {
    act('rollback-cohort', { cohort, by: val('by'), reason: val('why') });
  }
});

let timer = null;
let busy = false;
async function tick() {
  if (busy) return;
  busy = true;
  clearTimeout(timer);
  try {
    const list = await getJson('/api/rollouts');
    drawList(list.rollouts);
    if (!selected && list.rollouts.length) selected = list.rollouts[0].id;
    if (selected) drawRollout(await getJson('/api/rollouts/' + encodeURIComponent(selected)));
    $('conn').textContent = 'updated ' + new Date().toLocaleTimeString();
    $('conn').className = 'muted';
  } catch (err) {
    $('conn').textContent = 'cannot update: ' + err.message;
    $('conn').className = 'badge bad';
  } finally {
    busy = false;
    timer = setTimeout(tick, POLL_MS);
  }
}
window.addEventListener('hashchange', () => {
  selected = decodeURIComponent((location.hash.match(/^#rollout=(.+)$/) || [])[1] || '');
  lastCharts = null;
  say('', true);
  tick();
});
tick();
`;

const BODY = `<main>
<header class="top"><h1>fleetgate rollouts</h1><span id="conn" class="muted">loading…</span></header>
<div class="layout">
<section aria-labelledby="list-title"><h2 id="list-title">Rollouts (<span id="list-count">…</span>)</h2><div id="list"></div></section>
<section id="rollout" class="hidden" aria-labelledby="rollout-title">
<h2 id="rollout-title">Rollout <code id="rollout-id"></code></h2>
<p id="note" class="muted"></p>
<div id="kpis" class="tiles"></div>
<p id="reason" class="reason"></p>
<div id="gate" class="panel gate hidden">
<h2>Gate <code id="gate-name"></code> is waiting</h2>
<p id="gate-detail"></p>
<form><label>Reviewer <input id="reviewer" autocomplete="off" size="12"></label>
<label>Comment / reason <input id="gate-text" autocomplete="off" size="28"></label>
<button id="approve" class="primary">Approve</button><button id="reject" class="danger">Reject</button></form>
</div>
<div id="actions" class="panel hidden">
<form><label>By <input id="by" autocomplete="off" size="12"></label>
<label>Reason <input id="why" autocomplete="off" size="28"></label>
<button id="pause">Pause</button><button id="resume" class="hidden">Resume</button><button id="abort" class="danger">Abort</button></form>
</div>
<p id="action-result" role="status" aria-live="polite"></p>
<h2>Cohorts</h2>
<div id="cohorts"></div>
<div id="charts"></div>
<h2 id="log-title">Decision log</h2>
<div id="log"></div>
</section>
</div>
<p class="muted">Redrawn every ${POLL_MS / 1000} s from Temporal (running rollouts) and the reports directory (ended ones).
Estimates are candidate minus production (positive = harm).</p>
</main>`;

export interface UiPage {
  html: string;
  /** The Content-Security-Policy the page carries. */
  csp: string;
}

/** The whole page; the same document for every rollout (the script fetches the rest). */
export function renderUiPage(): UiPage {
  const hash = createHash('sha256').update(SCRIPT).digest('base64');
  const csp = `default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-${hash}'; connect-src 'self'; img-src 'self' data:`;
  const html = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<title>fleetgate rollouts</title>
<style>${REPORT_CSS}${CSS}</style>
</head>
<body>
${BODY}
<script>${SCRIPT}</script>
</body>
</html>
`;
  return { html, csp };
}
