/**
 * The device agent: plays the vehicles of a simulated fleet registered in AWS IoT, for the tests and for
 * a simulated fleet delivered through `AwsIotJobsChannel` (activities/ota-iot.ts).
 *
 * It stands in for two things a real deployment has and the simulation lacks: the vehicles' firmware,
 * which would receive its job executions over MQTT, install the model and report the result through
 * the IoT Jobs data plane; and the fleet's provisioning, which registers each vehicle as a thing.
 * moto (the AWS stand-in of the tests) has no Jobs data plane (no GetPendingJobExecutions, no
 * UpdateJobExecution) and creates job executions only for things named directly as targets, not for the
 * members of a thing group. So the agent works from the control plane alone: it lists fleetgate's jobs
 * (ListJobs, DescribeJob, GetJobDocument), finds their vehicles through the targeted thing groups
 * (ListThingsInThingGroup), and records what each vehicle runs, and the last job it applied, in the
 * thing's attributes (UpdateThing), which is what a vehicle would report. Job executions stay as IoT
 * made them.
 *
 * Every vehicle applies the jobs that target it in the order they were created (a revert after the job
 * it reverts), each once: its `applied` attribute holds the order key of the last job it applied, and
 * only later jobs are applied. Installing a model a vehicle already runs changes nothing; a revert
 * switches back only vehicles still running the reverted model, like the A/B slots of sim/ota.ts.
 *
 * Raw vehicle ids exist only inside `simVehicles`; the agent sends pseudonyms only.
 */
import {
  CreateThingCommand,
  CreateThingTypeCommand,
  DescribeJobCommand,
  DescribeThingTypeCommand,
  type IoTClient,
  paginateListJobs,
  ResourceAlreadyExistsException,
  ResourceNotFoundException,
  UpdateThingCommand,
} from '@aws-sdk/client-iot';
import {
  ATTR,
  THING_TYPE,
  type JobDocument,
  forEachLimit,
  groupMembers,
  jobDocument,
  listVehicles,
  send,
} from '../activities/ota-iot';
import { ErrorType, fail } from '../errors';
import type { FleetManifest } from '../policies/schema';
import { simVehicles } from './fleet';

interface KnownJob {
  id: string;
  /** Sorts jobs in the order vehicles apply them: creation time, then a revert after an install. */
  order: string;
  doc: JobDocument;
  groups: string[];
}

export class IotDeviceAgent {
  /** Jobs are immutable once created: their documents are read once. */
  private readonly jobs = new Map<string, KnownJob | null>();

  constructor(private readonly client: IoTClient) {}

  /**
   * Registers the fleet's vehicles as things of THING_TYPE, each running its cohort's production model.
   * Idempotent: vehicles already registered are left as they are.
   */
  async provision(
    manifest: FleetManifest,
    key: Buffer,
    productionByCohort: Record<string, string>,
  ): Promise<{ fleet: string; vehicles: number; created: number }> {
    const missing = manifest.cohorts.filter((c) => !productionByCohort[c.name]).map((c) => c.name);
    if (missing.length > 0) {
      throw fail(
        ErrorType.InvalidInput,
        `no production digest for cohort(s) ${missing.join(', ')} of fleet ${manifest.name}`,
      );
    }
    await this.ensureThingType();
    const existing = new Set((await listVehicles(this.client, ATTR.fleet, manifest.name)).map((t) => t.name));
    let vehicles = 0;
    let created = 0;
    for (const { cohort, pseudonyms } of simVehicles(manifest, key)) {
      vehicles += pseudonyms.length;
      const fresh = pseudonyms.filter((p) => !existing.has(p));
      await forEachLimit(fresh, (thingName) =>
        send(() =>
          this.client.send(
            new CreateThingCommand({
              thingName,
              thingTypeName: THING_TYPE,
              attributePayload: {
                attributes: {
                  [ATTR.fleet]: manifest.name,
                  [ATTR.cohort]: cohort.name,
                  [ATTR.model]: productionByCohort[cohort.name]!,
                },
              },
            }),
          ),
        ),
      );
      created += fresh.length;
    }
    return { fleet: manifest.name, vehicles, created };
  }

  /**
   * Applies every fleetgate job not yet applied by the vehicles it targets (cancelled jobs excepted).
   * Returns how many jobs had vehicles to update and how many vehicles changed attributes.
   */
  async run(): Promise<{ jobs: number; vehicles: number }> {
    const { client } = this;
    const jobs: KnownJob[] = [];
    for await (const page of paginateListJobs({ client, pageSize: 250 }, {})) {
      for (const summary of page.jobs ?? []) {
        const id = summary.jobId!;
        if (!id.startsWith('fg-') || summary.status === 'CANCELED') continue;
        const job = await this.known(id);
        if (job) jobs.push(job);
      }
    }
    jobs.sort((a, b) => (a.order < b.order ? -1 : a.order > b.order ? 1 : 0));

    const things = new Map<string, Record<string, string>>();
    for (const fleet of new Set(jobs.map((j) => j.doc.fleet))) {
      for (const t of await listVehicles(client, ATTR.fleet, fleet)) things.set(t.name, t.attributes);
    }
    const changed = new Set<string>();
    let appliedJobs = 0;
    for (const job of jobs) {
      let touched = false;
      for (const group of job.groups) {
        for (const name of await groupMembers(client, group)) {
          const a = things.get(name);
          if (!a || (a[ATTR.applied] ?? '') >= job.order) continue;
          const { digest } = job.doc;
          const model = a[ATTR.model];
          const prev = a[ATTR.prev];
          if (job.doc.operation === 'fleetgate.install-model') {
            if (model !== digest) {
              if (model) a[ATTR.prev] = model;
              a[ATTR.model] = digest;
            }
          } else if (model === digest && prev) {
            a[ATTR.model] = prev;
            a[ATTR.prev] = digest;
          }
          a[ATTR.applied] = job.order;
          changed.add(name);
          touched = true;
        }
      }
      if (touched) appliedJobs++;
    }
    await forEachLimit([...changed], (thingName) => {
      const a = things.get(thingName)!;
      const attributes: Record<string, string> = {};
      for (const k of [ATTR.model, ATTR.prev, ATTR.applied]) {
        const v = a[k];
        if (v) attributes[k] = v;
      }
      return send(() =>
        client.send(new UpdateThingCommand({ thingName, attributePayload: { attributes, merge: true } })),
      );
    });
    return { jobs: appliedJobs, vehicles: changed.size };
  }

  private async known(id: string): Promise<KnownJob | null> {
    if (this.jobs.has(id)) return this.jobs.get(id)!;
    let described;
    try {
      described = await send(() => this.client.send(new DescribeJobCommand({ jobId: id })));
    } catch (err) {
      if (err instanceof ResourceNotFoundException) return null;
      throw err;
    }
    let doc: JobDocument | undefined;
    try {
      doc = await jobDocument(this.client, id);
    } catch (err) {
      // A job with the prefix whose document is not fleetgate's is someone else's: skip it.
      if ((err as { type?: string }).type !== ErrorType.ImmutableConflict) throw err;
      doc = undefined;
    }
    const createdAt = described.job?.createdAt?.getTime() ?? 0;
    const known: KnownJob | null = doc
      ? {
          id,
          order: `${String(createdAt).padStart(15, '0')}:${doc.operation === 'fleetgate.install-model' ? 0 : 1}:${id}`,
          doc,
          groups: (described.job?.targets ?? [])
            .filter((arn) => arn.includes(':thinggroup/'))
            .map((arn) => arn.slice(arn.indexOf(':thinggroup/') + ':thinggroup/'.length)),
        }
      : null;
    this.jobs.set(id, known);
    return known;
  }

  private async ensureThingType(): Promise<void> {
    try {
      await send(() => this.client.send(new DescribeThingTypeCommand({ thingTypeName: THING_TYPE })));
      return;
    } catch (err) {
      if (!(err instanceof ResourceNotFoundException)) throw err;
    }
    try {
      await send(() =>
        this.client.send(
          new CreateThingTypeCommand({
            thingTypeName: THING_TYPE,
            thingTypeProperties: {
              thingTypeDescription: 'A vehicle of a fleet that fleetgate delivers models to',
              searchableAttributes: [ATTR.fleet, ATTR.cohort, ATTR.model],
            },
          }),
        ),
      );
    } catch (err) {
      if (!(err instanceof ResourceAlreadyExistsException)) throw err;
    }
  }
}

/**
 * Runs `agent.run()` every `everyMs` until stopped, one pass at a time. A failed pass is reported through
 * `onError` (the next pass retries); `stop()` waits for the pass in flight.
 */
export function startAgentLoop(
  agent: IotDeviceAgent,
  everyMs: number,
  onError: (err: unknown) => void,
): { stop(): Promise<void>; passes(): number } {
  let stopped = false;
  let passes = 0;
  let timer: NodeJS.Timeout | undefined;
  let inFlight: Promise<void> = Promise.resolve();
  const tick = () => {
    inFlight = agent
      .run()
      .then(
        () => void passes++,
        (err: unknown) => onError(err),
      )
      .finally(() => {
        if (!stopped) timer = setTimeout(tick, everyMs);
      });
  };
  tick();
  return {
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      await inFlight;
    },
    passes: () => passes,
  };
}
