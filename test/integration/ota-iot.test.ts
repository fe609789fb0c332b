/**
 * Delivery through AWS IoT Jobs, with real AWS SDK calls against moto's server on loopback (started
 * here, see test/moto.ts). The channel is built by the composition root from the same environment
 * variables a worker reads; the device agent (sim/iot-agent.ts) plays the vehicles. Every request the
 * SDK sends is recorded, to show that no raw vehicle id ever leaves fleetgate.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import YAML from 'yaml';
import {
  AddThingToThingGroupCommand,
  CreateThingGroupCommand,
  DescribeJobCommand,
  type IoTClient,
  paginateListJobs,
} from '@aws-sdk/client-iot';
import { ApplicationFailure } from '@temporalio/common';
import {
  ATTR,
  AwsIotJobsChannel,
  THING_TYPE,
  groupMembers,
  iotJobId,
  listVehicles,
  revertJobId,
  thingGroupName,
} from '../../activities/ota-iot';
import type { OtaJob } from '../../activities/deps';
import { ErrorType } from '../../errors';
import { loadFleetManifest } from '../../fleet/manifest';
import { IotDeviceAgent, startAgentLoop } from '../../sim/iot-agent';
import { initFleet } from '../../cli/main';
import { loadConfig, loadOtaConfig } from '../../workers/config';
import { createActivities, openServices, trustFixtureSigner, type Services } from '../../workers/worker';
import { blobKey } from '../../workers/model-runner';
import { startMoto, type Moto } from '../moto';

const FLEET = 'iotfleet';
const COHORTS = ['hw3/eu', 'hw4/us'];
const VEHICLES = 20;
const digest = (name: string) => createHash('sha256').update(name).digest('hex');
const PROD = digest('production');
const CAND = digest('candidate');

let moto: Moto;
let tmp: string;
let services: Services;
let channel: AwsIotJobsChannel;
let client: IoTClient;
let agent: IotDeviceAgent;
/** Method, path, query and body of every request sent to moto. */
const requests: string[] = [];
const UNREADABLE = '<a body this test cannot read>';

before(async () => {
  moto = await startMoto();
  tmp = mkdtempSync(join(tmpdir(), 'fleetgate-iot-'));
  writeFileSync(
    join(tmp, 'fleet.yaml'),
    YAML.stringify({
      apiVersion: 'fleetgate/v1',
      kind: 'Fleet',
      name: FLEET,
      seed: 5,
      skus: [
        { name: 'hw3', speedFactor: 10, latencyBudgetMs: 50 },
        { name: 'hw4', speedFactor: 4, latencyBudgetMs: 50 },
      ],
      cohorts: COHORTS.map((name) => ({
        name,
        sku: name.split('/')[0],
        region: name.split('/')[1],
        vehicles: VEHICLES,
        nightShare: 0.1,
      })),
      eventsPerVehicleHour: 10,
      labels: { rate: 0.3, delay: '6h' },
    }),
  );
  // Exactly what a worker would read from its environment.
  const config = loadConfig({
    FLEETGATE_DATA_DIR: join(tmp, 'data'),
    FLEETGATE_OTA: 'aws-iot',
    FLEETGATE_AWS_ENDPOINT: moto.endpoint,
    AWS_REGION: 'eu-west-1',
    AWS_ACCESS_KEY_ID: 'test',
    AWS_SECRET_ACCESS_KEY: 'test',
    FLEETGATE_IOT_RATE: '42',
    FLEETGATE_IOT_ABORT_PERCENT: '7.5',
    FLEETGATE_IOT_ABORT_MIN_EXECUTED: '5',
    FLEETGATE_IOT_TIMEOUT_MINUTES: '30',
  });
  services = await openServices(config.dataDir, tmp, config.ota);
  assert.ok(services.ota instanceof AwsIotJobsChannel, 'FLEETGATE_OTA=aws-iot selects the IoT channel');
  channel = services.ota;
  client = channel.client;
  client.middlewareStack.add(
    (next) => async (args) => {
      const req = args.request as { method?: string; path?: string; query?: unknown; body?: unknown };
      const body =
        req.body === undefined || typeof req.body === 'string'
          ? (req.body ?? '')
          : req.body instanceof Uint8Array
            ? Buffer.from(req.body.buffer, req.body.byteOffset, req.body.byteLength).toString('utf8')
            : UNREADABLE;
      requests.push(`${req.method} ${req.path} ${JSON.stringify(req.query ?? {})} ${body}`);
      return next(args);
    },
    { step: 'finalizeRequest', name: 'recordRequests' },
  );
  agent = new IotDeviceAgent(client);
});

after(async () => {
  await services?.close();
  await moto?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

async function jobsWithId(id: string): Promise<number> {
  let n = 0;
  for await (const page of paginateListJobs({ client }, {})) {
    n += (page.jobs ?? []).filter((j) => j.jobId === id).length;
  }
  return n;
}

/** Vehicles per digest in a cohort, as the channel reports them. */
async function digestsOf(cohort: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const d of (await channel.inventory(FLEET, cohort)).digests) out[d] = (out[d] ?? 0) + 1;
  return out;
}

const isConflict = (err: unknown) =>
  err instanceof ApplicationFailure && err.type === ErrorType.ImmutableConflict && err.nonRetryable;

/** The first job of the tests: three vehicles of each cohort get the candidate. */
let job: OtaJob;

test('the device agent registers every vehicle as a thing named by its pseudonym', async () => {
  const manifest = loadFleetManifest(join(tmp, 'fleet.yaml'));
  const production = Object.fromEntries(COHORTS.map((c) => [c, PROD]));
  const first = await agent.provision(manifest, services.key, production);
  assert.deepEqual(first, { fleet: FLEET, vehicles: 2 * VEHICLES, created: 2 * VEHICLES });
  const again = await agent.provision(manifest, services.key, production);
  assert.equal(again.created, 0, 'provisioning again creates nothing');

  assert.equal(await channel.vehicleCount(FLEET), 2 * VEHICLES);
  assert.equal(await channel.vehicleCount('no-such-fleet'), 0);
  for (const cohort of COHORTS) {
    const inv = await channel.inventory(FLEET, cohort);
    assert.equal(inv.vehicles.length, VEHICLES);
    for (const v of inv.vehicles) assert.match(v, /^[0-9a-f]{20}$/);
    assert.deepEqual(await digestsOf(cohort), { [PROD]: VEHICLES });
  }
  const things = await listVehicles(client, ATTR.fleet, FLEET);
  assert.ok(things.every((t) => t.attributes[ATTR.cohort] && !t.attributes[ATTR.prev]));
});

test('createJob makes one thing group per cohort and a job with rollout rate, abort rule and timeout', async () => {
  const targets = new Map<string, string[]>();
  for (const cohort of COHORTS)
    targets.set(cohort, (await channel.inventory(FLEET, cohort)).vehicles.slice(0, 3));
  job = {
    jobId: 'r1-w1',
    rolloutId: 'r1',
    fleet: FLEET,
    kind: 'deliver',
    wave: 1,
    digest: CAND,
    targets,
    result: { jobId: 'r1-w1', vehicles: { 'hw3/eu': 3, 'hw4/us': 3 } },
  };
  assert.equal(await channel.recordedJob(job.jobId, CAND), undefined, 'no job before createJob');
  await channel.createJob(job);

  const id = iotJobId(job.jobId);
  assert.match(id, /^fg-[0-9a-f]{16}-r1-w1$/);
  const { job: described } = await client.send(new DescribeJobCommand({ jobId: id }));
  assert.ok(described);
  assert.equal(described.targetSelection, 'SNAPSHOT');
  assert.deepEqual(described.jobExecutionsRolloutConfig, { maximumPerMinute: 42 });
  assert.deepEqual(described.abortConfig, {
    criteriaList: [
      { failureType: 'ALL', action: 'CANCEL', thresholdPercentage: 7.5, minNumberOfExecutedThings: 5 },
    ],
  });
  assert.deepEqual(described.timeoutConfig, { inProgressTimeoutInMinutes: 30 });

  const groups = COHORTS.map((c) => thingGroupName(job.jobId, c, 1));
  assert.match(groups[0]!, /^fg-[0-9a-f]{16}-hw3-eu-w1$/);
  assert.match(groups[1]!, /^fg-[0-9a-f]{16}-hw4-us-w1$/);
  assert.deepEqual(
    [...(described.targets ?? [])].sort(),
    groups.map((g) => `arn:aws:iot:eu-west-1:123456789012:thinggroup/${g}`).sort(),
  );
  for (const [i, cohort] of COHORTS.entries()) {
    assert.deepEqual((await groupMembers(client, groups[i]!)).sort(), [...targets.get(cohort)!].sort());
  }
});

test('a retried createJob creates no second job, and recordedJob returns the recorded result', async () => {
  const id = iotJobId(job.jobId);
  const before = await client.send(new DescribeJobCommand({ jobId: id }));
  await channel.createJob(job); // the retry of an activity whose first attempt created the job
  assert.equal(await jobsWithId(id), 1);
  const afterRetry = await client.send(new DescribeJobCommand({ jobId: id }));
  // moto replaces a job created twice under one id (AWS refuses it): an unchanged createdAt shows that
  // no second CreateJob was sent.
  assert.deepEqual(afterRetry.job?.createdAt, before.job?.createdAt);
  assert.deepEqual(await channel.recordedJob(job.jobId, CAND), job.result);
  assert.equal(await channel.recordedJob('r1-w9', CAND), undefined);
});

test('another digest under the same job id is an ImmutableConflict', async () => {
  const other = digest('other');
  await assert.rejects(channel.recordedJob(job.jobId, other), isConflict);
  await assert.rejects(channel.createJob({ ...job, digest: other }), isConflict);
  assert.deepEqual(await channel.recordedJob(job.jobId, CAND), job.result, 'the recorded job is unchanged');
});

test('after the device agent runs, inventory and running show the new digest', async () => {
  assert.deepEqual(
    await channel.running(FLEET, CAND),
    new Map(),
    'nothing runs it before the vehicles apply the job',
  );
  assert.deepEqual(await agent.run(), { jobs: 1, vehicles: 6 });
  for (const cohort of COHORTS) {
    const inv = await channel.inventory(FLEET, cohort);
    const targeted = new Set(job.targets.get(cohort));
    inv.vehicles.forEach((v, i) => assert.equal(inv.digests[i], targeted.has(v) ? CAND : PROD));
  }
  assert.deepEqual(
    await channel.running(FLEET, CAND),
    new Map([
      ['hw3/eu', 3],
      ['hw4/us', 3],
    ]),
  );
  assert.deepEqual(await agent.run(), { jobs: 0, vehicles: 0 }, 'a job is applied once');
});

test('revertJob puts the previous digest back, once per cohort', async () => {
  assert.equal(await channel.revertJob(job.jobId, ['hw3/eu']), 3);
  assert.equal(await channel.revertJob(job.jobId, ['hw3/eu']), 0, 'a second revert reverts 0');
  assert.equal(await channel.revertJob('r1-w9', ['hw3/eu']), 0, 'an unknown job reverts 0');
  assert.equal(await jobsWithId(revertJobId(job.jobId, 'hw3/eu')), 1);
  assert.match(revertJobId(job.jobId, 'hw3/eu'), /^fg-[0-9a-f]{16}-revert-hw3-eu$/);

  await agent.run();
  assert.deepEqual(await digestsOf('hw3/eu'), { [PROD]: VEHICLES });
  assert.deepEqual(await digestsOf('hw4/us'), { [PROD]: VEHICLES - 3, [CAND]: 3 }, 'other cohorts keep it');

  assert.equal(await channel.revertJob(job.jobId, COHORTS), 3, 'only the cohort not yet reverted');
  await agent.run();
  assert.deepEqual(await channel.running(FLEET, CAND), new Map());
  const things = await listVehicles(client, ATTR.fleet, FLEET);
  const reverted = things.filter((t) => t.attributes[ATTR.prev] === CAND);
  assert.equal(reverted.length, 6, 'a reverted vehicle keeps the candidate as its previous model');
});

test('deliverWave, revertWave and promoteCohort of the fleet activities deliver through AWS IoT Jobs', async () => {
  const acts = createActivities(services);
  const cand = digest('candidate-2');
  // Delivery hashes the artifact it sends again: the store holds the bytes of each digest delivered.
  await services.store.putIfAbsent(blobKey(cand), Buffer.from('candidate-2'));
  await services.store.putIfAbsent(blobKey(digest('candidate-3')), Buffer.from('candidate-3'));
  const wave = (n: number, percent: number) => ({
    rolloutId: 'r2',
    manifest: 'fleet.yaml',
    wave: n,
    percent,
    cohorts: COHORTS,
    digest: cand,
  });
  const first = await acts.deliverWave(wave(1, 10));
  assert.deepEqual(first, { jobId: 'r2-w1', vehicles: { 'hw3/eu': 2, 'hw4/us': 2 } });
  assert.deepEqual(await acts.deliverWave(wave(1, 10)), first, 'a retry returns the recorded result');
  assert.equal(await jobsWithId(iotJobId('r2-w1')), 1);
  await agent.run();
  assert.deepEqual(
    await channel.running(FLEET, cand),
    new Map([
      ['hw3/eu', 2],
      ['hw4/us', 2],
    ]),
  );

  // Wave 2 (50%) reaches the vehicles of wave 1 (monotone) and targets only those not yet on it.
  const second = await acts.deliverWave(wave(2, 50));
  assert.deepEqual(second.vehicles, { 'hw3/eu': 10, 'hw4/us': 10 });
  for (const cohort of COHORTS) {
    assert.equal((await groupMembers(client, thingGroupName('r2-w2', cohort, 2))).length, 8);
  }
  await agent.run();
  assert.equal((await channel.running(FLEET, cand)).get('hw3/eu'), 10);

  const input = { rolloutId: 'r2', manifest: 'fleet.yaml', cohorts: COHORTS };
  assert.deepEqual(await acts.revertWave({ ...input, wave: 2 }), { reverted: 16 });
  assert.deepEqual(await acts.revertWave({ ...input, wave: 1 }), { reverted: 4 });
  assert.deepEqual(await acts.revertWave({ ...input, wave: 1 }), { reverted: 0 });
  await agent.run();
  assert.deepEqual(await channel.running(FLEET, cand), new Map());
  for (const cohort of COHORTS) assert.deepEqual(await digestsOf(cohort), { [PROD]: VEHICLES });

  const promoted = digest('candidate-3');
  const promote = { rolloutId: 'r3', manifest: 'fleet.yaml', cohort: 'hw4/us', digest: promoted };
  assert.deepEqual(await acts.promoteCohort(promote), { vehicles: VEHICLES });
  assert.deepEqual(await acts.promoteCohort(promote), { vehicles: VEHICLES });
  assert.match(thingGroupName('r3-promote-hw4/us', 'hw4/us', null), /-hw4-us-promote$/);
  await agent.run();
  assert.deepEqual(await digestsOf('hw4/us'), { [promoted]: VEHICLES });
  assert.deepEqual(await digestsOf('hw3/eu'), { [PROD]: VEHICLES });
});

test('a createJob after an attempt that failed half way leaves the group holding exactly its targets', async () => {
  const vehicles = (await channel.inventory(FLEET, 'hw3/eu')).vehicles;
  const group = thingGroupName('r4-w1', 'hw3/eu', 1);
  // The first attempt made the group and added a vehicle, then failed before CreateJob.
  await client.send(new CreateThingGroupCommand({ thingGroupName: group }));
  await client.send(new AddThingToThingGroupCommand({ thingGroupName: group, thingName: vehicles[0]! }));
  const targets = vehicles.slice(1, 4);
  await channel.createJob({
    jobId: 'r4-w1',
    rolloutId: 'r4',
    fleet: FLEET,
    kind: 'deliver',
    wave: 1,
    digest: CAND,
    targets: new Map([['hw3/eu', targets]]),
    result: { jobId: 'r4-w1', vehicles: { 'hw3/eu': 3 } },
  });
  assert.deepEqual((await groupMembers(client, group)).sort(), [...targets].sort());
  assert.equal(await channel.revertJob('r4-w1', ['hw3/eu']), 3);
});

test('FLEETGATE_OTA selects the channel; unknown channels and settings out of range are refused', () => {
  assert.deepEqual(loadOtaConfig({}), { kind: 'simulated' });
  assert.throws(
    () => loadOtaConfig({ FLEETGATE_OTA: 'mqtt' }),
    /FLEETGATE_OTA must be "simulated" or "aws-iot"/,
  );
  assert.throws(
    () => loadOtaConfig({ FLEETGATE_OTA: 'aws-iot', FLEETGATE_IOT_RATE: 'fast' }),
    /FLEETGATE_IOT_RATE/,
  );
  const config = loadOtaConfig({ FLEETGATE_OTA: 'aws-iot', FLEETGATE_IOT_RATE: '5000' });
  assert.equal(config.kind, 'aws-iot');
  assert.throws(
    () => new AwsIotJobsChannel(client, config.kind === 'aws-iot' ? config.settings : {}),
    (err: unknown) => err instanceof ApplicationFailure && err.type === ErrorType.InvalidInput,
  );
  assert.deepEqual(new AwsIotJobsChannel(client).settings, {
    maximumPerMinute: 100,
    abortThresholdPercent: 10,
    abortMinExecuted: 10,
    inProgressTimeoutMinutes: 60,
  });
});

test('fleet init registers the fleet in AWS IoT, and a worker with FLEETGATE_IOT_AGENT plays its vehicles', async () => {
  const manifest = YAML.parse(readFileSync(join(tmp, 'fleet.yaml'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(tmp, 'cli-fleet.yaml'), YAML.stringify({ ...manifest, name: 'clifleet' }));
  const env = {
    FLEETGATE_DATA_DIR: join(tmp, 'cli-data'),
    FLEETGATE_OTA: 'aws-iot',
    FLEETGATE_AWS_ENDPOINT: moto.endpoint,
    AWS_REGION: 'eu-west-1',
    AWS_ACCESS_KEY_ID: 'test',
    AWS_SECRET_ACCESS_KEY: 'test',
    FLEETGATE_IOT_AGENT: '1',
    FLEETGATE_IOT_AGENT_EVERY_MS: '200',
  };
  const config = loadConfig(env);
  assert.deepEqual(config.ota.kind === 'aws-iot' && config.ota.agent, { everyMs: 200 });
  const fleetFile = join(tmp, 'cli-fleet.yaml');
  // The fixture pack is signed by the fixture signer: this registry trusts it.
  trustFixtureSigner(env.FLEETGATE_DATA_DIR);
  const first = await initFleet(config, fleetFile, 'models/production', 'tester');
  assert.match(
    first,
    new RegExp(
      `fleet "clifleet": ${2 * VEHICLES} vehicles registered as AWS IoT things \\(${2 * VEHICLES} new\\)`,
    ),
  );
  const again = await initFleet(config, fleetFile, 'models/production', 'tester');
  assert.match(again, /registered as AWS IoT things \(0 new\)/);
  assert.equal(await channel.vehicleCount('clifleet'), 2 * VEHICLES);

  // A job for two vehicles of the new fleet; the worker's agent loop applies it by itself.
  const cohort = COHORTS[0]!;
  const inv = await channel.inventory('clifleet', cohort);
  const production = inv.digests[0]!;
  const targets = new Map([[cohort, inv.vehicles.slice(0, 2)]]);
  await channel.createJob({
    jobId: 'cli-w1',
    rolloutId: 'cli',
    fleet: 'clifleet',
    kind: 'deliver',
    wave: 1,
    digest: CAND,
    targets,
    result: { jobId: 'cli-w1', vehicles: { [cohort]: 2 } },
  });
  const errors: unknown[] = [];
  const loop = startAgentLoop(new IotDeviceAgent(client), 200, (err) => errors.push(err));
  try {
    const deadline = Date.now() + 60_000;
    let running: Record<string, number> = {};
    while (Date.now() < deadline) {
      running = {};
      for (const d of (await channel.inventory('clifleet', cohort)).digests)
        running[d] = (running[d] ?? 0) + 1;
      if (running[CAND] === 2) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.deepEqual(running, { [CAND]: 2, [production]: VEHICLES - 2 });
  } finally {
    await loop.stop();
  }
  assert.ok(loop.passes() >= 1);
  assert.deepEqual(errors, []);
});

test('hasVehicles asks AWS for one thing of the cohort, and tells a cohort of another fleet apart', async () => {
  // A second fleet: hw3/eu shares its name with a cohort of FLEET, hw5/apac is its own.
  const other = 'otherfleet';
  const file = join(tmp, 'other-fleet.yaml');
  writeFileSync(
    file,
    YAML.stringify({
      apiVersion: 'fleetgate/v1',
      kind: 'Fleet',
      name: other,
      seed: 9,
      skus: [
        { name: 'hw3', speedFactor: 10, latencyBudgetMs: 50 },
        { name: 'hw5', speedFactor: 4, latencyBudgetMs: 50 },
      ],
      cohorts: ['hw3/eu', 'hw5/apac'].map((name) => ({
        name,
        sku: name.split('/')[0],
        region: name.split('/')[1],
        vehicles: 3,
        nightShare: 0.1,
      })),
      eventsPerVehicleHour: 10,
      labels: { rate: 0.3, delay: '6h' },
    }),
  );
  const made = await agent.provision(loadFleetManifest(file), services.key, {
    'hw3/eu': PROD,
    'hw5/apac': PROD,
  });
  assert.equal(made.vehicles, 6);

  /** The answer, and the requests sent to AWS for it (the client's middleware records each one). */
  const ask = async (fleet: string, cohort: string) => {
    const from = requests.length;
    const answer = await channel.hasVehicles(fleet, cohort);
    return { answer, sent: requests.slice(from) };
  };
  const one = (cohort: string) =>
    `GET /things ${JSON.stringify({ maxResults: '1', attributeName: ATTR.cohort, attributeValue: cohort, thingTypeName: THING_TYPE })} `;

  // A provisioned cohort: one request, for at most one thing.
  for (const cohort of COHORTS) {
    const { answer, sent } = await ask(FLEET, cohort);
    assert.equal(answer, true, `${FLEET} ${cohort}`);
    assert.deepEqual(sent, [one(cohort)]);
  }
  // A cohort no fleet has: one request too.
  const unknown = await ask(FLEET, 'hw9/none');
  assert.deepEqual(unknown, { answer: false, sent: [one('hw9/none')] });
  // A cohort only another fleet has: its thing comes back first, so the listing goes on to its end.
  const othersOnly = await ask(FLEET, 'hw5/apac');
  assert.equal(othersOnly.answer, false);
  assert.equal(othersOnly.sent[0], one('hw5/apac'));
  assert.ok(othersOnly.sent.length <= 2, `${othersOnly.sent.length} requests`);
  assert.equal(await channel.hasVehicles(other, 'hw5/apac'), true);
  assert.equal(await channel.hasVehicles(other, 'hw4/us'), false);
  assert.equal(await channel.hasVehicles('no-such-fleet', 'hw3/eu'), false);
  // Two fleets with a cohort of the same name: each has vehicles there.
  assert.equal(await channel.hasVehicles(FLEET, 'hw3/eu'), true);
  assert.equal(await channel.hasVehicles(other, 'hw3/eu'), true);
});

test('no raw vehicle id appears in any request sent to AWS', () => {
  assert.ok(requests.length > 100, `requests were recorded (${requests.length})`);
  assert.ok(!requests.some((r) => r.endsWith(UNREADABLE)), 'every request body was read');
  assert.ok(
    requests.some((r) => r.includes(`"attributes":{"fleet":"${FLEET}"`)),
    'request bodies are seen',
  );
  // Raw ids are `<fleet>-<cohort index>-<i>` (sim/fleet.ts); only their keyed pseudonyms may be sent.
  const raw = new RegExp(`${FLEET}-\\d+-\\d+`);
  const leaks = requests.filter((r) => raw.test(r));
  assert.deepEqual(leaks, []);
  const things = requests.filter((r) => /^(POST|PATCH) \/things\/[^/ ]+ /.test(r));
  assert.ok(things.length >= 2 * VEHICLES, 'things were created and updated');
  for (const r of things) assert.match(r, /^(POST|PATCH) \/things\/[0-9a-f]{20} /);
  assert.ok(requests.some((r) => r.includes(`"thingTypeName":"${THING_TYPE}"`)));
});
