/**
 * The scenario schema: the committed scenarios validate, the committed JSON Schema equals the generated
 * one, mistakes are reported with their path, and a scenario's fleet becomes a full fleet manifest. The
 * ground truth's classification is table-tested against a policy's margins.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import YAML from 'yaml';
import { Scenario, scenarioFleet, scenarioJsonSchema } from '../../policies/scenario';
import { Policy, formatIssues } from '../../policies/schema';
import { classify, cohortPeriods, type MetricTruth } from '../../sim/truth';
import { loadScenario, ScenarioError } from '../../cli/simulate';

const ROOT = resolve(__dirname, '..', '..');
const DIR = join(ROOT, 'scenarios');
const scenarioFiles = readdirSync(DIR).filter((f) => f.endsWith('.yaml') && !f.startsWith('policy'));

function minimal(): Record<string, unknown> {
  return {
    apiVersion: 'fleetgate/v1',
    kind: 'Scenario',
    name: 'mine',
    production: '../models/production',
    candidate: '../models/candidate-good',
    policy: 'policy-14d.yaml',
    labels: { rate: 0.3, delay: '6h' },
    fleet: {
      skus: [{ name: 'hw3', speedFactor: 10, latencyBudgetMs: 20 }],
      cohorts: [{ name: 'hw3/eu', sku: 'hw3', region: 'eu', vehicles: 10, nightShare: 0.1 }],
    },
  };
}

describe('scenario schema', () => {
  test('the committed JSON Schema equals the generated one (regenerate: fleetgate simulate --schema)', () => {
    const committed = JSON.parse(readFileSync(join(DIR, 'scenario.schema.json'), 'utf8'));
    assert.deepEqual(committed, scenarioJsonSchema());
  });

  test('every committed scenario loads, with its policy and packs', () => {
    assert.ok(scenarioFiles.length >= 5, scenarioFiles.join(', '));
    for (const f of scenarioFiles) {
      const loaded = loadScenario(join(DIR, f));
      assert.equal(`${loaded.scenario.name}.yaml`, f);
      const fleet = scenarioFleet(loaded.scenario);
      assert.equal(fleet.name, loaded.scenario.name);
      assert.equal(fleet.seed, loaded.scenario.seed);
    }
  });

  test('a minimal scenario gets its defaults; --seed replaces the fleet seed', () => {
    const s = Scenario.parse(minimal());
    assert.equal(s.seed, 1);
    assert.equal(s.timeScale, 1);
    assert.equal(s.truth.frames, 200_000);
    const fleet = scenarioFleet(s, 42);
    assert.equal(fleet.seed, 42);
    assert.deepEqual(fleet.labels, { rate: 0.3, delay: '6h' });
    assert.equal(fleet.cohorts[0]!.rainShare, 0);
    assert.equal(fleet.cohorts[0]!.sensorNoise, 1);
    assert.equal(fleet.eventsPerVehicleHour, 20);
  });

  const bad: [string, (s: Record<string, unknown>) => void, RegExp][] = [
    ['no labels anywhere', (s) => delete s.labels, /^labels: give the labels/m],
    [
      'a seed inside the fleet',
      (s) => ((s.fleet as Record<string, unknown>).seed = 3),
      /^fleet: Unrecognized key/m,
    ],
    ['a wrong kind', (s) => (s.kind = 'Fleet'), /^kind: /m],
    [
      'a condition out of range',
      (s) => ((s.fleet as { cohorts: Record<string, unknown>[] }).cohorts[0]!.rainShare = 2),
      /^fleet\.cohorts\.0\.rainShare: .*\(got 2\)/m,
    ],
  ];
  for (const [name, mutate, expected] of bad) {
    test(`refused with its path: ${name}`, () => {
      const input = minimal();
      mutate(input);
      const r = Scenario.safeParse(input);
      assert.equal(r.success, false);
      assert.match(formatIssues(r.error!, input), expected);
    });
  }

  test("the fleet's own rules apply, named under fleet.", () => {
    const input = minimal();
    (input.fleet as { cohorts: Record<string, unknown>[] }).cohorts[0]!.sku = 'hw9';
    const s = Scenario.parse(input);
    assert.throws(() => scenarioFleet(s), /fleet\.cohorts\.0\.sku: unknown SKU "hw9"/);
  });

  test('paths are relative to the scenario file; a missing pack is named', () => {
    const loaded = loadScenario(join(DIR, 'better.yaml'));
    assert.equal(loaded.candidatePack, join(ROOT, 'models', 'candidate-good'));
    assert.equal(loaded.policyFile, join(DIR, 'policy-14d.yaml'));
    const raw = YAML.parse(readFileSync(join(DIR, 'better.yaml'), 'utf8'));
    raw.policy = join(DIR, 'policy-14d.yaml');
    raw.production = join(ROOT, 'models', 'production');
    raw.candidate = 'models/candidate-good';
    const dir = mkdtempSync(join(tmpdir(), 'fleetgate-scenario-'));
    const file = join(dir, 'mine.json');
    writeFileSync(file, JSON.stringify(raw));
    try {
      assert.throws(
        () => loadScenario(file),
        (e: Error) =>
          e instanceof ScenarioError &&
          /candidate "models\/candidate-good" is not a model pack/.test(e.message),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('drift makes periods, cumulative, for the cohorts it names', () => {
    const input = minimal();
    const fleet = input.fleet as Record<string, unknown>;
    (fleet.cohorts as Record<string, unknown>[]).push({
      name: 'hw3/us',
      sku: 'hw3',
      region: 'us',
      vehicles: 10,
      nightShare: 0.2,
    });
    fleet.drift = [
      { at: '5d', conditions: { sensorNoise: 1.5 } },
      { at: '2d', cohorts: ['hw3/eu'], conditions: { rainShare: 0.4 } },
    ];
    const m = scenarioFleet(Scenario.parse(input));
    assert.deepEqual(
      cohortPeriods(m, m.cohorts[0]!).map((p) => [p.from, p.conditions]),
      [
        ['0', { nightShare: 0.1, rainShare: 0, sensorNoise: 1 }],
        ['2d', { nightShare: 0.1, rainShare: 0.4, sensorNoise: 1 }],
        ['5d', { nightShare: 0.1, rainShare: 0.4, sensorNoise: 1.5 }],
      ],
    );
    assert.equal(cohortPeriods(m, m.cohorts[1]!).length, 2);
  });
});

describe('ground truth classification', () => {
  const policy = Policy.parse(YAML.parse(readFileSync(join(DIR, 'policy-14d.yaml'), 'utf8')));
  const metric = (name: MetricTruth['metric'], delta: number, se: number): MetricTruth => ({
    metric: name,
    production: 0,
    candidate: 0,
    delta,
    se,
    verdict: 'same',
  });
  // policy-14d: error_rate margin 0.02, latency_ms margin 0.5 (ms); alpha 0.05, z = 1.96.
  const cases: [string, MetricTruth[], string][] = [
    ['identical models', [metric('error_rate', 0, 0), metric('latency_ms', 0, 0)], 'neutral'],
    [
      'error rate worse beyond the margin',
      [metric('error_rate', 0.021, 0.001), metric('latency_ms', 0, 0)],
      'regressed',
    ],
    [
      'error rate worse within the margin',
      [metric('error_rate', 0.019, 0.001), metric('latency_ms', 0, 0)],
      'neutral',
    ],
    [
      'latency worse beyond its margin',
      [metric('error_rate', -0.05, 0.001), metric('latency_ms', 0.6, 0)],
      'regressed',
    ],
    [
      'better, latency a hair slower',
      [metric('error_rate', -0.01, 0.001), metric('latency_ms', 0.01, 0)],
      'improved',
    ],
    [
      'better but latency clearly slower',
      [metric('error_rate', -0.01, 0.001), metric('latency_ms', 0.2, 0)],
      'neutral',
    ],
    ['better within noise', [metric('error_rate', -0.001, 0.001), metric('latency_ms', 0, 0)], 'neutral'],
    // safety_events is not in policy-14d: not a guardrail here, whatever it says.
    [
      'a metric the policy does not list',
      [metric('error_rate', 0, 0), metric('safety_events', 5, 0.1)],
      'neutral',
    ],
  ];
  for (const [name, metrics, expected] of cases) {
    test(name, () => assert.equal(classify(policy, metrics), expected));
  }
});
