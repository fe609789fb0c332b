/**
 * A worker reads a rollout's manifest only inside its own directory, and a manifest's errors never quote
 * the file. Real parts: the composition root's activities (fleet, service dispatch, drift) over a real
 * DuckDB file and store, on a worker root in a temporary directory with a credentials-like file beside
 * it. A path outside the root (`..`, absolute, or through a link) is refused as PathEscape, not retried,
 * naming the field and the fix; a file inside the root that is not a manifest (JSON or YAML holding a
 * secret, or not parseable) is refused with the paths and what was expected, never its contents.
 */
import assert from 'node:assert/strict';
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { confinedPath } from '../../activities/confine';
import { checkManifest } from '../../cli/main';
import { loadFleetManifest } from '../../fleet/manifest';
import { loadServiceManifest, manifestKind } from '../../fleet/manifest';
import { openSimWorld } from '../../sim/world';
import { createActivities, openServices, type Services } from '../../workers/worker';
import { ROOT } from '../support';

const SECRET = 'SECRETVALUE123';
const CREDENTIALS = JSON.stringify({ aws_secret_access_key: SECRET });

let tmp: string;
let root: string;
let services: Services;
let acts: ReturnType<typeof createActivities>;

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'fleetgate-confine-'));
  root = join(tmp, 'worker');
  mkdirSync(root);
  writeFileSync(join(tmp, 'outside.json'), CREDENTIALS);
  // A valid fleet manifest outside the root: refused all the same, it is not read.
  cpSync(join(ROOT, 'test/fixtures/fleet.yaml'), join(tmp, 'outside.yaml'));
  cpSync(join(ROOT, 'test/fixtures/fleet.yaml'), join(root, 'fleet.yaml'));
  symlinkSync(join(tmp, 'outside.json'), join(root, 'link.json'));
  symlinkSync(tmp, join(root, 'up'));
  mkdirSync(join(root, 'dir.yaml'));
  writeFileSync(join(root, 'creds.json'), CREDENTIALS);
  writeFileSync(join(root, 'creds.yaml'), `[default]\naws_secret_access_key = ${SECRET}\n`);
  writeFileSync(join(root, 'broken.json'), `{"aws_secret_access_key": ${SECRET}}`);
  writeFileSync(
    join(root, 'fields.json'),
    JSON.stringify({
      apiVersion: SECRET,
      kind: 'Service',
      name: SECRET,
      gateway: { url: `http://${SECRET}`, tokenEnv: SECRET },
      [`${SECRET}${SECRET}${SECRET}`]: 1,
      cohorts: { [SECRET]: SECRET },
    }),
  );
  writeFileSync(join(root, 'kind.yaml'), `kind: ${SECRET}\n`);
  services = await openServices(join(tmp, 'data'), root, { kind: 'simulated' });
  delete services.webhook;
  acts = createActivities(services);
});

after(async () => {
  await services?.close();
  rmSync(tmp, { recursive: true, force: true });
});

function noContents(message: string): void {
  assert.ok(!message.includes(SECRET), `the file's contents are not quoted: ${message}`);
}

describe('a manifest outside the worker directory is refused, never read', () => {
  const outside = () => [
    '../outside.json',
    '../outside.yaml',
    join(tmp, 'outside.json'),
    'link.json',
    'up/outside.json',
    'up/worker/../outside.yaml',
    'up/missing.yaml',
  ];

  it('confinedPath: .., absolute and linked paths out of the root are PathEscape; inside ones resolve', () => {
    for (const given of outside()) {
      assert.throws(
        () => confinedPath(root, given),
        (err: Error & { type?: string; nonRetryable?: boolean }) => {
          assert.equal(err.type, 'PathEscape', given);
          assert.equal(err.nonRetryable, true);
          assert.match(
            err.message,
            /^fleet\.manifest \(--fleet\): ".*" (resolves outside|is, or passes through, a link)/,
          );
          assert.match(err.message, /copy the manifest there and give its path relative to that directory$/);
          assert.ok(!err.message.includes(root), 'the worker directory is not named');
          return true;
        },
      );
    }
    assert.equal(confinedPath(root, 'fleet.yaml'), join(root, 'fleet.yaml'));
    assert.equal(confinedPath(root, join(root, 'fleet.yaml')), join(root, 'fleet.yaml'));
    assert.equal(confinedPath(root, 'missing/fleet.yaml'), join(root, 'missing/fleet.yaml'));
    assert.throws(() => confinedPath(root, 'dir.yaml'), /"dir\.yaml" is not a regular file/);
  });

  it("the worker's activities refuse them: fleet, service dispatch, drift and fleet init", async () => {
    for (const manifest of outside()) {
      const calls: [string, () => Promise<unknown>][] = [
        ['describeFleet', () => acts.describeFleet({ rolloutId: 'r', manifest })],
        ['revertWave', () => acts.revertWave({ rolloutId: 'r', manifest, cohorts: ['hw3/eu'], wave: 1 })],
        ['createSimulatedFleet', () => acts.createSimulatedFleet({ manifest })],
        [
          'driftCheck',
          () =>
            acts.driftCheck({
              scheduleId: 's',
              checkId: `c-${manifest.replace(/\W/g, '')}`,
              manifest,
              asOfMs: 0,
              policy: { action: 'alert' } as never,
            }),
        ],
      ];
      for (const [name, call] of calls) {
        await assert.rejects(call(), (err: Error & { type?: string; nonRetryable?: boolean }) => {
          assert.equal(err.type, 'PathEscape', `${name} ${manifest}: ${err.message}`);
          assert.equal(err.nonRetryable, true);
          assert.match(err.message, /fleet\.manifest \(--fleet\)/);
          noContents(err.message);
          return true;
        });
      }
    }
    // Inside the root the same activity reads its manifest (and says the fleet has no vehicles yet).
    await assert.rejects(acts.describeFleet({ rolloutId: 'r', manifest: 'fleet.yaml' }), /has no vehicles/);
  });

  it('a simulated world is refused a fleet outside its root', async () => {
    await assert.rejects(
      openSimWorld({
        dataDir: join(tmp, 'world'),
        root,
        fleet: '../outside.yaml',
        production: 'models/production',
        by: 'test',
      }),
      (err: Error & { type?: string }) => err.type === 'PathEscape',
    );
  });
});

describe("a manifest's errors never quote the file", () => {
  it('a JSON file of credentials: the key is named, its value never', async () => {
    for (const load of [loadFleetManifest, loadServiceManifest]) {
      assert.throws(
        () => load(join(root, 'creds.json')),
        (err: Error & { type?: string }) => {
          assert.equal(err.type, 'InvalidInput');
          assert.match(err.message, /^\(root\): unrecognized key\(s\) "aws_secret_access_key": remove them/m);
          assert.match(err.message, /^apiVersion: Invalid input: expected "fleetgate\/v1"$/m);
          noContents(err.message);
          return true;
        },
      );
    }
    await assert.rejects(acts.describeFleet({ rolloutId: 'r', manifest: 'creds.json' }), (err: Error) => {
      assert.match(err.message, /invalid fleet manifest creds\.json:/);
      noContents(err.message);
      assert.ok(!err.message.includes(root), 'the worker directory is not named');
      return true;
    });
    // A manifest that is missing, or not YAML, inside the root: named as the rollout gave it.
    for (const [manifest, error] of [
      ['missing.yaml', /fleet manifest missing\.yaml does not exist/],
      ['creds.yaml', /fleet manifest creds\.yaml: not valid YAML/],
    ] as const) {
      await assert.rejects(acts.describeFleet({ rolloutId: 'r', manifest }), (err: Error) => {
        assert.match(err.message, error);
        assert.ok(!err.message.includes(root), `the worker directory is not named: ${err.message}`);
        return true;
      });
    }
  });

  it('text in the fields of a manifest, and long or odd keys, are not repeated', () => {
    assert.throws(
      () => loadServiceManifest(join(root, 'fields.json')),
      (err: Error) => {
        assert.match(err.message, /^name: lowercase letters, digits/m);
        assert.match(err.message, /^gateway\.tokenEnv: the name given is not a gateway token variable/m);
        assert.match(
          err.message,
          /^\(root\): 1 unrecognized key\(s\) \(not shown, not being plain field names\): remove them/m,
        );
        noContents(err.message);
        return true;
      },
    );
    const check = checkManifest(join(root, 'fields.json'));
    assert.equal(check.ok, false);
    noContents(check.ok ? '' : check.problems.join('\n'));
  });

  it('a file that is not YAML or JSON says where, not what is there', () => {
    assert.throws(
      () => loadFleetManifest(join(root, 'creds.yaml')),
      (err: Error & { type?: string }) => {
        assert.equal(err.type, 'InvalidInput');
        assert.match(
          err.message,
          /creds\.yaml: not valid YAML \(\w+ at line \d+, column \d+\); a \.yaml or \.yml manifest/,
        );
        noContents(err.message);
        assert.ok(!err.message.includes('aws_secret_access_key'));
        return true;
      },
    );
    assert.throws(
      () => loadFleetManifest(join(root, 'broken.json')),
      (err: Error) => {
        assert.match(err.message, /broken\.json: not valid JSON/);
        noContents(err.message);
        return true;
      },
    );
    for (const file of ['creds.yaml', 'broken.json', 'kind.yaml']) {
      assert.throws(
        () => manifestKind(join(root, file)),
        (err: Error) => (noContents(err.message), true),
      );
      const check = checkManifest(join(root, file));
      assert.equal(check.ok, false);
      noContents(check.ok ? '' : check.problems.join('\n'));
    }
  });
});
