/**
 * `fleetgate stats` in process (output captured): the JSON shape of every subcommand, the short tables,
 * seeded simulations that repeat exactly, and bad flags that give one line naming flag and value with
 * exit code 2; plus one run of the real executable.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { runStats } from '../../cli/stats';

const ROOT = resolve(__dirname, '..', '..');

function run(...args: string[]): { code: number; out: string; err: string } {
  let out = '';
  let err = '';
  const code = runStats(args, { out: (t) => void (out += `${t}\n`), err: (t) => void (err += `${t}\n`) });
  return { code, out, err };
}

function json(...args: string[]): Record<string, unknown> {
  const r = run(...args, '--json');
  assert.equal(r.code, 0, `exit code of ${args.join(' ')}: ${r.err}`);
  assert.equal(r.err, '');
  return JSON.parse(r.out) as Record<string, unknown>;
}

const numbers = (v: unknown): number[] => {
  assert.ok(Array.isArray(v) && v.every((x) => typeof x === 'number' && Number.isFinite(x)), `${v}`);
  return v as number[];
};

void test('stats boundaries --json: one boundary and one cumulative alpha per look, ending at alpha', () => {
  for (const design of ['obf', 'pocock', 'ld-obf', 'ld-pocock']) {
    for (const sides of ['1', '2']) {
      const r = json('boundaries', '--design', design, '--looks', '4', '--alpha', '0.05', '--sides', sides);
      assert.deepEqual(Object.keys(r), ['boundaries', 'cumulativeAlpha']);
      const b = numbers(r.boundaries);
      const a = numbers(r.cumulativeAlpha);
      assert.equal(b.length, 4);
      assert.equal(a.length, 4);
      assert.ok(Math.abs(a[3]! - 0.05) < 1e-6, `${design} sides ${sides}: total alpha ${a[3]}`);
      for (let k = 1; k < 4; k++) assert.ok(a[k]! >= a[k - 1]!, 'cumulative alpha grows');
    }
  }
  const obf = numbers(
    json('boundaries', '--design', 'obf', '--looks', '3', '--alpha', '0.05', '--sides', '2').boundaries,
  );
  assert.ok(obf[0]! > obf[1]! && obf[1]! > obf[2]!, 'O’Brien-Fleming boundaries fall');
  const info = json(
    'boundaries',
    '--design',
    'ld-obf',
    '--looks',
    '3',
    '--alpha',
    '0.025',
    '--sides',
    '1',
    '--info',
    '0.25,0.6,1',
  );
  assert.equal(numbers(info.boundaries).length, 3);
  // Up to MAX_LOOKS of policies/gsd.ts (200), e.g. a look every 100 per arm up to 20,000.
  const most = json('boundaries', '--design', 'ld-obf', '--looks', '200', '--alpha', '0.025', '--sides', '1');
  assert.equal(numbers(most.boundaries).length, 200);
  assert.ok(Math.abs(numbers(most.cumulativeAlpha)[199]! - 0.025) < 1e-6, 'all of alpha by look 200');

  const table = run('boundaries', '--design', 'pocock', '--looks', '2', '--alpha', '0.05', '--sides', '2');
  assert.equal(table.code, 0);
  assert.match(table.out, /look\s+info\s+boundary\s+cumulative alpha/);
  assert.equal(table.out.trim().split('\n').length, 4, 'title, header and two looks');
});

void test('stats sample-size and rate-ratio --json shapes', () => {
  const prop = json(
    'sample-size',
    '--kind',
    'proportion',
    '--baseline',
    '0.1',
    '--mde',
    '0.02',
    '--alpha',
    '0.05',
    '--power',
    '0.8',
  );
  assert.deepEqual(Object.keys(prop), ['nPerArm']);
  assert.ok(Number.isInteger(prop.nPerArm) && (prop.nPerArm as number) > 0);
  const mean = json(
    'sample-size',
    '--kind',
    'mean',
    '--baseline',
    '20',
    '--mde',
    '2',
    '--sd',
    '8',
    '--alpha',
    '0.05',
    '--power',
    '0.9',
    '--sides',
    '1',
  );
  assert.ok((mean.nPerArm as number) > 0);

  const rr = json('rate-ratio', '--events', '12,4', '--exposure', '1000,1000');
  assert.deepEqual(Object.keys(rr), ['rateRatio', 'ci', 'p']);
  assert.equal(rr.rateRatio, 3);
  const [lo, hi] = numbers(rr.ci);
  assert.ok(lo! < 3 && 3 < hi!);
  assert.ok(typeof rr.p === 'number' && rr.p > 0 && rr.p <= 1);

  const text = run('rate-ratio', '--events', '12,4', '--exposure', '1000,1000', '--alpha', '0.1');
  assert.equal(text.code, 0);
  assert.match(text.out, /rate ratio 3\.000 {2}90% CI \[/);
});

void test('stats simulate: false alarms of the naive test against a design, power, and exact repeats', () => {
  const common = ['--runs', '400', '--looks', '10', '--seed', 'cli-test'];
  const naive = json('simulate', '--design', 'naive', '--aa', ...common);
  const ldObf = json('simulate', '--design', 'ld-obf', '--aa', ...common);
  const mixture = json('simulate', '--design', 'msprt', '--aa', ...common);
  for (const r of [naive, ldObf, mixture]) {
    assert.deepEqual(Object.keys(r), [
      'design',
      'runs',
      'looks',
      'alpha',
      'sides',
      'effect',
      'falseAlarmRate',
      'meanSamplesPerArm',
      'medianSamplesPerArm',
    ]);
    assert.ok((r.meanSamplesPerArm as number) <= 1000 && (r.meanSamplesPerArm as number) >= 100);
  }
  // ten looks of a fixed-sample test alarm far more often than α; a spending design does not
  assert.ok((naive.falseAlarmRate as number) > 0.12, `naive ${naive.falseAlarmRate}`);
  assert.ok((ldObf.falseAlarmRate as number) < 0.09, `ld-obf ${ldObf.falseAlarmRate}`);
  assert.ok((mixture.falseAlarmRate as number) < 0.05, `msprt ${mixture.falseAlarmRate}`);
  assert.deepEqual(json('simulate', '--design', 'naive', '--aa', ...common), naive, 'same seed, same result');

  const power = json('simulate', '--design', 'obf', '--effect', '0.05', ...common);
  assert.ok('power' in power && !('falseAlarmRate' in power));
  assert.ok((power.power as number) > 0.8, `power ${power.power}`);
  assert.ok((power.medianSamplesPerArm as number) < 1000, 'stops early when the effect is there');

  const text = run('simulate', '--design', 'pocock', '--aa', '--runs', '50');
  assert.equal(text.code, 0);
  assert.match(text.out, /false-alarm rate\s+mean samples\/arm\s+median samples\/arm/);
});

void test('stats: a bad flag gives one line naming the flag and the value, exit code 2', () => {
  const b = ['boundaries', '--design', 'obf', '--looks', '3', '--alpha', '0.05', '--sides', '2'];
  const cases: { args: string[]; says: RegExp }[] = [
    {
      args: ['boundaries', '--design', 'fast', '--looks', '3', '--alpha', '0.05', '--sides', '2'],
      says: /--design "fast".*obf, pocock/,
    },
    { args: [...b.slice(0, 4), '0', ...b.slice(5)], says: /--looks "0".*integer from 1 to 200/ },
    { args: [...b.slice(0, 6), '1.5', ...b.slice(7)], says: /--alpha "1\.5".*\(0, 0\.5\]/ },
    { args: [...b.slice(0, 8), '3'], says: /--sides "3".*1 or 2/ },
    { args: [...b, '--info', '0.5,0.2,1'], says: /--info "0\.5,0\.2,1".*increase/ },
    { args: [...b, '--info', '0.5,1'], says: /--info "0\.5,1".*3 fractions/ },
    { args: b.slice(0, 7), says: /needs --sides/ },
    { args: [...b, '--speed', '2'], says: /Unknown option '--speed'/ },
    { args: ['boundaries', 'extra', ...b.slice(1)], says: /takes no arguments, got "extra"/ },
    {
      args: [
        'sample-size',
        '--kind',
        'median',
        '--baseline',
        '1',
        '--mde',
        '1',
        '--alpha',
        '0.05',
        '--power',
        '0.8',
      ],
      says: /--kind "median".*proportion, mean, rate/,
    },
    {
      args: [
        'sample-size',
        '--kind',
        'proportion',
        '--baseline',
        '0.1',
        '--mde',
        '0.95',
        '--alpha',
        '0.05',
        '--power',
        '0.8',
      ],
      says: /--mde "0\.95"/,
    },
    {
      args: [
        'sample-size',
        '--kind',
        'mean',
        '--baseline',
        '1',
        '--mde',
        '1',
        '--alpha',
        '0.05',
        '--power',
        '0.8',
      ],
      says: /needs --sd/,
    },
    {
      args: [
        'sample-size',
        '--kind',
        'rate',
        '--baseline',
        '1',
        '--mde',
        '1',
        '--sd',
        '2',
        '--alpha',
        '0.05',
        '--power',
        '0.8',
      ],
      says: /--sd "2".*only with --kind mean/,
    },
    {
      args: [
        'sample-size',
        '--kind',
        'rate',
        '--baseline',
        '1',
        '--mde',
        '1',
        '--alpha',
        '0.05',
        '--power',
        '1',
      ],
      says: /--power "1".*\(0, 1\)/,
    },
    { args: ['rate-ratio', '--events', '3,x', '--exposure', '1,1'], says: /--events "3,x".*integers >= 0/ },
    { args: ['rate-ratio', '--events', '3,1', '--exposure', '1,0'], says: /--exposure "1,0".*> 0/ },
    { args: ['simulate', '--design', 'msprt', '--runs', '10'], says: /exactly one of --aa or --effect/ },
    { args: ['simulate', '--design', 'msprt', '--aa', '--runs', '2.5'], says: /--runs "2\.5".*integer/ },
    { args: ['simulate', '--design', 'msprt', '--effect=-0.2', '--runs', '10'], says: /--effect "-0\.2"/ },
    {
      args: ['simulate', '--design', 'msprt', '--effect', '-0.05', '--runs', '10'],
      says: /--effect: write a value that starts with "-" as --effect=-VALUE/,
    },
    {
      args: ['simulate', '--design', 'bayes', '--aa', '--runs', '10'],
      says: /--design "bayes".*msprt, naive/,
    },
    {
      args: ['simulate', '--design', 'msprt', '--aa', '--runs', '10', '--alpha', 'abc'],
      says: /--alpha "abc"/,
    },
    { args: ['power'], says: /unknown command "stats power"/ },
  ];
  for (const c of cases) {
    const r = run(...c.args, '--json');
    assert.equal(r.code, 2, `${c.args.join(' ')}: exit code (${r.err.trim()})`);
    assert.equal(r.out, '', `${c.args.join(' ')}: nothing on stdout`);
    const lines = r.err.trim().split('\n');
    assert.equal(lines.length, 1, `${c.args.join(' ')}: one line, got ${r.err}`);
    assert.match(lines[0]!, /^fleetgate: /);
    assert.match(lines[0]!, c.says, c.args.join(' '));
  }
  const bare = run();
  assert.equal(bare.code, 2);
  assert.match(bare.err, /Usage: fleetgate stats/);
});

void test('stats --help for every subcommand', () => {
  for (const sub of ['boundaries', 'sample-size', 'rate-ratio', 'simulate']) {
    const r = run(sub, '--help');
    assert.equal(r.code, 0);
    assert.ok(r.out.startsWith(`Usage: fleetgate stats ${sub}`), r.out);
    assert.match(r.out, /JSON: \{/);
  }
  const top = run('--help');
  assert.equal(top.code, 0);
  assert.match(top.out, /boundaries.*\n.*sample-size.*\n.*rate-ratio.*\n.*simulate/);
});

void test('the executable: stats is a command, and a bad flag exits 2 naming it', () => {
  const r = spawnSync(
    process.execPath,
    [
      'bin/fleetgate.js',
      'stats',
      'boundaries',
      '--design',
      'obf',
      '--looks',
      '201',
      '--alpha',
      '0.05',
      '--sides',
      '2',
    ],
    { cwd: ROOT, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } },
  );
  assert.equal(r.status, 2, r.stderr);
  assert.equal(r.stdout, '');
  assert.equal(r.stderr.trim(), 'fleetgate: --looks "201" is not allowed: an integer from 1 to 200');
  const help = spawnSync(process.execPath, ['bin/fleetgate.js', '--help'], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(help.status, 0);
  assert.match(help.stdout, /^ {2}stats {2,}/m);
});
