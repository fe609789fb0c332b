/**
 * Over-the-air delivery through AWS IoT Jobs: the `OtaChannel` over AWS IoT's control plane
 * (`@aws-sdk/client-iot`). The composition root (workers/worker.ts) builds the `IoTClient` and hands it
 * here; this module never builds a client of its own.
 *
 * Vehicles are IoT things of type `fleetgate-vehicle`, named by their pseudonym. What a vehicle runs is
 * in its attributes, which the vehicle reports: `fleet`, `cohort`, `model` (digest it runs), `prev`
 * (digest it ran before, for a revert) and `applied` (the last job it applied). sim/iot-agent.ts plays
 * the vehicles in the simulation and in the tests.
 *
 * A job of fleetgate becomes:
 * - per cohort, one static thing group holding that cohort's targets, named
 *   `fg-<hash of job id and cohort>-<cohort slug>-w<wave>` (`-promote` for a promotion);
 * - one IoT job whose id is derived from the fleetgate job id (`fg-<hash>-<slug>`, within AWS's 64
 *   characters of [a-zA-Z0-9_-]), targeting those groups as a snapshot, with a rollout rate
 *   (`jobExecutionsRolloutConfig.maximumPerMinute`), an abort rule (cancel once a percentage of the
 *   executed vehicles failed, were rejected or timed out) and an in-progress timeout. Its document holds
 *   the digest, the groups and the `result` that `recordedJob` gives back.
 * A revert of a cohort is a second job, `fg-<hash>-revert-<cohort slug>`, targeting that cohort's group.
 * Install outcomes are the vehicles' own: every target of a wave goes into its job (`installOutcomes`), and
 * a vehicle that could not install reports so through its execution and attributes.
 *
 * Idempotency: every id and name is a pure function of the fleetgate job id and cohort. `createJob` looks
 * the job up first and, when AWS answers ResourceAlreadyExistsException, compares what is there: a retried
 * activity never creates a second job, and a job id reused for another digest is ImmutableConflict.
 *
 * Privacy: only pseudonyms are sent to AWS; this module must never send, log or return a raw vehicle id.
 */
import {
  AddThingToThingGroupCommand,
  CreateJobCommand,
  CreateThingGroupCommand,
  DescribeJobCommand,
  DescribeThingGroupCommand,
  GetJobDocumentCommand,
  type IoTClient,
  ListThingsCommand,
  type JobExecutionsRolloutConfig,
  type AbortConfig,
  type TimeoutConfig,
  RemoveThingFromThingGroupCommand,
  ResourceAlreadyExistsException,
  ResourceNotFoundException,
  paginateListThings,
  paginateListThingsInThingGroup,
} from '@aws-sdk/client-iot';
import { createHash } from 'node:crypto';
import { ErrorType, fail } from '../errors';
import { INSTALL, type OtaChannel, type OtaJob, type WaveInstall } from './deps';

/** The thing type of every vehicle; it allows more than three attributes per thing. */
export const THING_TYPE = 'fleetgate-vehicle';

/** Names of the vehicle attributes the channel reads and the vehicles report. */
export const ATTR = {
  fleet: 'fleet',
  cohort: 'cohort',
  model: 'model',
  prev: 'prev',
  applied: 'applied',
} as const;

/** How IoT rolls a job out. Reverts use the fastest rate and no abort rule (see `revertJob`). */
export interface IotJobsSettings {
  /** Job executions started per minute (`jobExecutionsRolloutConfig.maximumPerMinute`, 1-1000). */
  maximumPerMinute: number;
  /** Cancel the job once this percentage (0-100] of its executed vehicles failed, were rejected or timed out. */
  abortThresholdPercent: number;
  /** ...counted only once at least this many vehicles have executed the job. */
  abortMinExecuted: number;
  /** A vehicle's execution fails when it stays in progress this long (`inProgressTimeoutInMinutes`, 1-10080). */
  inProgressTimeoutMinutes: number;
}

/** Defaults: 100 vehicles a minute, cancel at 10% failures after 10 vehicles, an hour per vehicle. */
export const IOT_JOBS_DEFAULTS: IotJobsSettings = {
  maximumPerMinute: 100,
  abortThresholdPercent: 10,
  abortMinExecuted: 10,
  inProgressTimeoutMinutes: 60,
};

/** The document of a delivery ('deliver' or 'promote') job. */
export interface InstallDocument {
  operation: 'fleetgate.install-model';
  /** The fleetgate job id the IoT job id was derived from. */
  jobId: string;
  rolloutId: string;
  fleet: string;
  kind: OtaJob['kind'];
  wave: number | null;
  /** sha256 of the model blob to install. */
  digest: string;
  /** The thing group of each cohort. */
  groups: Record<string, string>;
  /** What `recordedJob` returns. */
  result: unknown;
}

/** The document of a revert job: vehicles running `digest` go back to their previous model. */
export interface RevertDocument {
  operation: 'fleetgate.revert-model';
  /** The IoT job id of the delivery this reverts. */
  reverts: string;
  jobId: string;
  fleet: string;
  cohort: string;
  digest: string;
  group: string;
}

export type JobDocument = InstallDocument | RevertDocument;

/** Concurrent requests of one batch (adding targets to a group, creating things). */
export const IOT_CONCURRENCY = 8;
const PAGE = 250;

export class AwsIotJobsChannel implements OtaChannel {
  readonly settings: IotJobsSettings;

  constructor(
    /** The client every call goes through (the device agent of a simulated fleet may share it). */
    readonly client: IoTClient,
    settings: Partial<IotJobsSettings> = {},
  ) {
    this.settings = validateSettings({ ...IOT_JOBS_DEFAULTS, ...settings });
  }

  async vehicleCount(fleet: string): Promise<number> {
    return (await listVehicles(this.client, ATTR.fleet, fleet)).length;
  }

  /**
   * Every target is handed to the job: a vehicle that cannot install now (offline, driving, low battery)
   * or whose install fails says so itself, through its job execution and its reported `model`, which
   * `inventory` and `running` read. Nothing is drawn here.
   */
  installOutcomes(_wave: WaveInstall, targets: readonly string[]): Promise<Uint8Array> {
    return Promise.resolve(new Uint8Array(targets.length).fill(INSTALL.installed));
  }

  async inventory(fleet: string, cohort: string): Promise<{ vehicles: string[]; digests: string[] }> {
    const things = (await listVehicles(this.client, ATTR.cohort, cohort))
      .filter((t) => t.attributes[ATTR.fleet] === fleet)
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return {
      vehicles: things.map((t) => t.name),
      digests: things.map((t) => t.attributes[ATTR.model] ?? ''),
    };
  }

  /**
   * One ListThings request for at most one thing of the cohort: a thing of this fleet answers true, an
   * empty answer without a next page false. ListThings filters on one attribute only, so when another
   * fleet has a cohort of the same name and its thing comes first, the listing goes on, a page at a time
   * and keeping none, until a thing of this fleet or the end: exact, and at worst what `inventory` costs.
   */
  async hasVehicles(fleet: string, cohort: string): Promise<boolean> {
    const { client } = this;
    const query = { attributeName: ATTR.cohort, attributeValue: cohort, thingTypeName: THING_TYPE };
    const ofFleet = (things: { attributes?: Record<string, string> }[] | undefined) =>
      (things ?? []).some((t) => t.attributes?.[ATTR.fleet] === fleet);
    const first = await send(() => client.send(new ListThingsCommand({ ...query, maxResults: 1 })));
    if (ofFleet(first.things)) return true;
    if (!first.nextToken) return false;
    return send(async () => {
      for await (const page of paginateListThings({ client, pageSize: PAGE }, query)) {
        if (ofFleet(page.things)) return true;
      }
      return false;
    });
  }

  async running(fleet: string, digest: string): Promise<Map<string, number>> {
    const counts = new Map<string, number>();
    for (const t of await listVehicles(this.client, ATTR.model, digest)) {
      const cohort = t.attributes[ATTR.cohort];
      if (t.attributes[ATTR.fleet] !== fleet || !cohort) continue;
      counts.set(cohort, (counts.get(cohort) ?? 0) + 1);
    }
    return counts;
  }

  async recordedJob(jobId: string, digest: string): Promise<unknown> {
    const doc = await jobDocument(this.client, iotJobId(jobId));
    if (!doc) return undefined;
    const install = sameDelivery(doc, jobId, digest);
    return install.result;
  }

  /**
   * Makes each cohort's thing group hold exactly its targets, then creates the IoT job. A job that
   * already exists (a retried activity) is compared, never created again.
   */
  async createJob(job: OtaJob): Promise<void> {
    const { client } = this;
    const id = iotJobId(job.jobId);
    const existing = await jobDocument(client, id);
    if (existing) {
      sameDelivery(existing, job.jobId, job.digest);
      return;
    }
    if (job.targets.size === 0) {
      throw fail(ErrorType.InvalidInput, `OTA job ${job.jobId} names no cohort`);
    }
    const groups: Record<string, string> = {};
    const arns: string[] = [];
    for (const [cohort, vehicles] of job.targets) {
      const known = new Set((await this.inventory(job.fleet, cohort)).vehicles);
      if (!vehicles.every((v) => known.has(v))) {
        throw fail(
          ErrorType.InvalidInput,
          `OTA job ${job.jobId} targets a vehicle that is not in cohort ${cohort} of fleet ${job.fleet}`,
        );
      }
      const name = thingGroupName(job.jobId, cohort, job.wave);
      arns.push(
        await ensureGroup(client, name, {
          thingGroupDescription: `fleetgate ${job.kind} ${job.jobId}, cohort ${cohort}`,
          attributePayload: { attributes: { fleet: job.fleet, cohort, job: id } },
        }),
      );
      groups[cohort] = name;
      // An earlier attempt may have added vehicles that this one no longer targets.
      const wanted = new Set(vehicles);
      const members = await groupMembers(client, name);
      const present = new Set(members);
      await forEachLimit(
        members.filter((v) => !wanted.has(v)),
        (thingName) =>
          send(() => client.send(new RemoveThingFromThingGroupCommand({ thingGroupName: name, thingName }))),
      );
      await forEachLimit(
        vehicles.filter((v) => !present.has(v)),
        (thingName) =>
          send(() => client.send(new AddThingToThingGroupCommand({ thingGroupName: name, thingName }))),
      );
    }
    const document: InstallDocument = {
      operation: 'fleetgate.install-model',
      jobId: job.jobId,
      rolloutId: job.rolloutId,
      fleet: job.fleet,
      kind: job.kind,
      wave: job.wave,
      digest: job.digest,
      groups,
      result: job.result,
    };
    const s = this.settings;
    const created = await createIotJob(client, {
      jobId: id,
      targets: arns,
      document: JSON.stringify(document),
      description: `fleetgate ${job.kind} ${job.jobId}: model ${job.digest.slice(0, 12)}`,
      rollout: { maximumPerMinute: s.maximumPerMinute },
      abort: {
        criteriaList: [
          {
            failureType: 'ALL',
            action: 'CANCEL',
            thresholdPercentage: s.abortThresholdPercent,
            minNumberOfExecutedThings: s.abortMinExecuted,
          },
        ],
      },
      timeout: { inProgressTimeoutInMinutes: s.inProgressTimeoutMinutes },
    });
    if (!created) {
      // Created meanwhile by another attempt: it must be the same delivery.
      const again = await jobDocument(client, id);
      if (!again) throw fail(ErrorType.Unavailable, `OTA job ${job.jobId} exists but cannot be read yet`);
      sameDelivery(again, job.jobId, job.digest);
    }
  }

  /**
   * One revert job per cohort, targeting the cohort's group of the job. Returns how many vehicles the
   * new revert jobs target; a cohort whose revert job exists already, or an unknown job, counts 0.
   * Reverts start at the fastest rate (1000 a minute) and carry no abort rule: a rollback must not stop
   * half way because some vehicles fail it.
   */
  async revertJob(jobId: string, cohorts: readonly string[]): Promise<number> {
    const { client } = this;
    const id = iotJobId(jobId);
    const doc = await jobDocument(client, id);
    if (!doc || doc.operation !== 'fleetgate.install-model') return 0;
    let reverted = 0;
    for (const cohort of new Set(cohorts)) {
      const group = doc.groups[cohort];
      if (!group) continue;
      const revertId = revertJobId(jobId, cohort);
      if (await jobDocument(client, revertId)) continue;
      const members = await groupMembers(client, group);
      if (members.length === 0) continue;
      const described = await send(() =>
        client.send(new DescribeThingGroupCommand({ thingGroupName: group })),
      );
      const document: RevertDocument = {
        operation: 'fleetgate.revert-model',
        reverts: id,
        jobId,
        fleet: doc.fleet,
        cohort,
        digest: doc.digest,
        group,
      };
      const created = await createIotJob(client, {
        jobId: revertId,
        targets: [described.thingGroupArn!],
        document: JSON.stringify(document),
        description: `fleetgate revert of ${jobId}, cohort ${cohort}`,
        rollout: { maximumPerMinute: 1000 },
        timeout: { inProgressTimeoutInMinutes: this.settings.inProgressTimeoutMinutes },
      });
      if (created) reverted += members.length;
    }
    return reverted;
  }
}

// ---- Names: pure functions of the fleetgate job id, within AWS's limits -------------------------------

function hash(text: string, chars = 16): string {
  return createHash('sha256').update(text, 'utf8').digest('hex').slice(0, chars);
}

/** Lowercase letters, digits and "-" only ("hw3/eu" -> "hw3-eu"), at most `max` characters. */
export function slug(text: string, max: number): string {
  return (
    text
      .toLowerCase()
      .replace(/[^a-z0-9]+/g, '-')
      .replace(/^-+|-+$/g, '')
      .slice(0, max)
      .replace(/-+$/, '') || 'x'
  );
}

/** The IoT job id of a fleetgate job id: `fg-<16 hex>-<slug>`, at most 64 characters of [a-z0-9-]. */
export function iotJobId(jobId: string): string {
  return `fg-${hash(`job|${jobId}`)}-${slug(jobId, 44)}`;
}

/** The IoT job id of the revert of `jobId` in `cohort`. */
export function revertJobId(jobId: string, cohort: string): string {
  return `fg-${hash(`revert|${jobId}|${cohort}`)}-revert-${slug(cohort, 37)}`;
}

/** The thing group of `cohort` in a job: `fg-<16 hex>-<cohort slug>-w<wave>` or `...-promote`. */
export function thingGroupName(jobId: string, cohort: string, wave: number | null): string {
  const suffix = wave === null ? 'promote' : `w${wave}`;
  return `fg-${hash(`group|${jobId}|${cohort}`)}-${slug(cohort, 80)}-${suffix}`;
}

// ---- AWS calls shared with the device agent (sim/iot-agent.ts) --------------------------------------

export interface Vehicle {
  name: string;
  attributes: Record<string, string>;
}

/** Vehicles (things of THING_TYPE) whose attribute `name` equals `value`, with their attributes. */
export async function listVehicles(client: IoTClient, name: string, value: string): Promise<Vehicle[]> {
  const out: Vehicle[] = [];
  await send(async () => {
    for await (const page of paginateListThings(
      { client, pageSize: PAGE },
      { attributeName: name, attributeValue: value, thingTypeName: THING_TYPE },
    )) {
      for (const t of page.things ?? []) out.push({ name: t.thingName!, attributes: { ...t.attributes } });
    }
  });
  return out;
}

/** Names of the things in a thing group. */
export async function groupMembers(client: IoTClient, thingGroupName: string): Promise<string[]> {
  const out: string[] = [];
  await send(async () => {
    for await (const page of paginateListThingsInThingGroup({ client, pageSize: PAGE }, { thingGroupName })) {
      out.push(...(page.things ?? []));
    }
  });
  return out;
}

/** The parsed document of IoT job `id`, or undefined when there is no such job. */
export async function jobDocument(client: IoTClient, id: string): Promise<JobDocument | undefined> {
  // DescribeJob first: it answers ResourceNotFoundException for an unknown job (GetJobDocument of an
  // unknown job fails with a server error on moto).
  try {
    await send(() => client.send(new DescribeJobCommand({ jobId: id })));
  } catch (err) {
    if (err instanceof ResourceNotFoundException) return undefined;
    throw err;
  }
  const { document } = await send(() => client.send(new GetJobDocumentCommand({ jobId: id })));
  let parsed: unknown;
  try {
    parsed = JSON.parse(document ?? '');
  } catch {
    parsed = undefined;
  }
  const op = (parsed as { operation?: unknown } | undefined)?.operation;
  if (op !== 'fleetgate.install-model' && op !== 'fleetgate.revert-model') {
    throw fail(ErrorType.ImmutableConflict, `IoT job ${id} exists and was not created by fleetgate`);
  }
  return parsed as JobDocument;
}

/**
 * Runs one AWS call (or a loop of them). Throttling and server-side failures become Unavailable, which
 * Temporal retries; other errors pass through unchanged so callers can test their class.
 */
export async function send<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    const e = err as { name?: string; message?: string; $metadata?: { httpStatusCode?: number } };
    const status = e.$metadata?.httpStatusCode ?? 0;
    const transient = ['ThrottlingException', 'ServiceUnavailableException', 'InternalFailureException'];
    if (status >= 500 || transient.includes(e.name ?? '')) {
      throw fail(
        ErrorType.Unavailable,
        `AWS IoT: ${e.name ?? 'error'}: ${e.message ?? ''}`.trim(),
        undefined,
        err as Error,
      );
    }
    throw err;
  }
}

/** Calls `each` on every item, at most IOT_CONCURRENCY at a time. */
export async function forEachLimit<T>(
  items: readonly T[],
  each: (item: T) => Promise<unknown>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await each(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(IOT_CONCURRENCY, items.length) }, worker));
}

// ---- Internals -----------------------------------------------------------------------------------------

function sameDelivery(doc: JobDocument, jobId: string, digest: string): InstallDocument {
  if (doc.operation !== 'fleetgate.install-model' || doc.jobId !== jobId) {
    throw fail(ErrorType.ImmutableConflict, `IoT job ${iotJobId(jobId)} exists for another fleetgate job`);
  }
  if (doc.digest !== digest) {
    throw fail(
      ErrorType.ImmutableConflict,
      `OTA job ${jobId} already delivered ${doc.digest.slice(0, 12)}, not ${digest.slice(0, 12)}`,
    );
  }
  return doc;
}

/** Creates the thing group, or finds it with the same properties; returns its ARN. */
async function ensureGroup(
  client: IoTClient,
  thingGroupName: string,
  thingGroupProperties: {
    thingGroupDescription: string;
    attributePayload: { attributes: Record<string, string> };
  },
): Promise<string> {
  try {
    const out = await send(() =>
      client.send(new CreateThingGroupCommand({ thingGroupName, thingGroupProperties })),
    );
    return out.thingGroupArn!;
  } catch (err) {
    if (!(err instanceof ResourceAlreadyExistsException)) throw err;
    const out = await send(() => client.send(new DescribeThingGroupCommand({ thingGroupName })));
    return out.thingGroupArn!;
  }
}

/** Creates a snapshot job; false when a job with this id exists already. */
async function createIotJob(
  client: IoTClient,
  job: {
    jobId: string;
    targets: string[];
    document: string;
    description: string;
    rollout: JobExecutionsRolloutConfig;
    abort?: AbortConfig;
    timeout: TimeoutConfig;
  },
): Promise<boolean> {
  try {
    await send(() =>
      client.send(
        new CreateJobCommand({
          jobId: job.jobId,
          targets: job.targets,
          document: job.document,
          description: job.description,
          targetSelection: 'SNAPSHOT',
          jobExecutionsRolloutConfig: job.rollout,
          abortConfig: job.abort,
          timeoutConfig: job.timeout,
        }),
      ),
    );
    return true;
  } catch (err) {
    if (err instanceof ResourceAlreadyExistsException) return false;
    throw err;
  }
}

function validateSettings(s: IotJobsSettings): IotJobsSettings {
  const problems: string[] = [];
  const int = (v: number, lo: number, hi: number) => Number.isInteger(v) && v >= lo && v <= hi;
  if (!int(s.maximumPerMinute, 1, 1000)) problems.push(`maximumPerMinute must be an integer in 1..1000`);
  if (!(s.abortThresholdPercent > 0 && s.abortThresholdPercent <= 100))
    problems.push(`abortThresholdPercent must be in (0, 100]`);
  if (!int(s.abortMinExecuted, 1, 1_000_000)) problems.push(`abortMinExecuted must be a positive integer`);
  if (!int(s.inProgressTimeoutMinutes, 1, 10_080))
    problems.push(`inProgressTimeoutMinutes must be an integer in 1..10080`);
  if (problems.length > 0) {
    throw fail(ErrorType.InvalidInput, `invalid AWS IoT Jobs settings: ${problems.join('; ')}`, s);
  }
  return s;
}
