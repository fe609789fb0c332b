/**
 * The scenario of a dry run (`fleetgate simulate`): a fleet, its driving conditions, the production and
 * candidate model packs, the policy and a seed. A scenario says what the world is like; the rollout
 * workflow, unchanged, says what it would decide in that world (see docs/scenarios.md).
 *
 * Every path in a scenario (model packs, policy) is relative to the directory of the scenario file, so a
 * scenario and its files can live anywhere. The fleet is written inline: a fleet manifest (see
 * policies/schema.ts) whose `apiVersion`, `kind` and `name` may be left out, and whose `labels` and
 * `seed` may be given at the scenario's top level instead.
 *
 * Pure: no I/O. `resolveScenario` turns a parsed scenario into the full fleet manifest the simulator
 * runs; reading files is the CLI's job (cli/simulate.ts).
 */
import { z } from 'zod';
import { Duration, FleetManifest, formatIssues, InvalidInputError } from './schema';

const Name = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._-]*$/, { message: 'lowercase letters, digits, ".", "_" or "-"' });

export const ScenarioLabels = z
  .object({
    rate: z
      .number()
      .gt(0)
      .max(1)
      .describe("Label coverage: share of events sent for labeling (the fleet manifest's labels.rate)"),
    delay: Duration.describe('Mean delay before a label arrives (uniform within ±50% of it)'),
  })
  .strict();

/** The fleet manifest's fields but its seed: in a scenario, the scenario's seed is the fleet's. */
function fleetShapeWithoutSeed() {
  const { seed: _seed, ...shape } = FleetManifest.shape;
  return shape;
}

/** The inline fleet: a fleet manifest without its header, whose labels may come from the scenario. */
export const ScenarioFleet = z
  .object({
    ...fleetShapeWithoutSeed(),
    apiVersion: z.literal('fleetgate/v1').optional(),
    kind: z.literal('Fleet').optional(),
    name: Name.optional().describe("The fleet's name (default: the scenario's name)"),
    labels: ScenarioLabels.optional().describe('Labels, when not given at the scenario level'),
  })
  .strict();

export const Scenario = z
  .object({
    apiVersion: z.literal('fleetgate/v1'),
    kind: z.literal('Scenario'),
    name: Name.describe('Name of the scenario; rollout ids and the fleet name derive from it'),
    description: z.string().default('').describe('What the scenario shows, in a sentence or two'),
    fleet: ScenarioFleet.describe(
      'The simulated fleet: SKUs (latency, install failures, slowdowns), cohorts (size, conditions, ' +
        'availability), event rate, drift. A fleet manifest without apiVersion/kind/name',
    ),
    production: z
      .string()
      .min(1)
      .describe('Model pack that every cohort runs as production, relative to the scenario file'),
    candidate: z
      .string()
      .min(1)
      .describe('Model pack rolled out, relative to the scenario file; must differ from production'),
    policy: z
      .string()
      .min(1)
      .describe('Rollout policy file (YAML or JSON), relative to the scenario file; --policy overrides it'),
    seed: z
      .number()
      .int()
      .min(0)
      .default(1)
      .describe(
        "The fleet's seed: its events, frames, labels; --seed overrides it, --seeds N runs seed..seed+N-1",
      ),
    timeScale: z
      .number()
      .positive()
      .default(1)
      .describe("Simulated fleet time per workflow second (1: the policy's durations are fleet time)"),
    labels: ScenarioLabels.optional().describe("Label rate and delay; replaces the fleet's labels"),
    truth: z
      .object({
        frames: z
          .number()
          .int()
          .min(1000)
          .max(5_000_000)
          .default(200_000)
          .describe('Frames per cohort (and per drift period) of the offline ground-truth evaluation'),
      })
      .strict()
      .default({ frames: 200_000 })
      .describe('The offline evaluation that labels each cohort regressed, neutral or improved'),
  })
  .strict()
  .superRefine((s, ctx) => {
    if (!s.labels && !s.fleet.labels) {
      ctx.addIssue({
        code: 'custom',
        path: ['labels'],
        message: 'give the labels (rate and delay) here or in fleet.labels',
      });
    }
  });
export type Scenario = z.infer<typeof Scenario>;
export type ScenarioInput = z.input<typeof Scenario>;

/**
 * The full fleet manifest of a scenario under `seed` (default: the scenario's), validated with the
 * fleet manifest's own rules (unknown SKUs, drift naming unknown cohorts); problems name `fleet.<path>`.
 */
export function scenarioFleet(s: Scenario, seed = s.seed): FleetManifest {
  const raw = {
    ...s.fleet,
    apiVersion: 'fleetgate/v1',
    kind: 'Fleet',
    name: s.fleet.name ?? s.name,
    seed,
    labels: s.labels ?? s.fleet.labels,
  };
  const parsed = FleetManifest.safeParse(raw);
  if (!parsed.success) {
    throw new InvalidInputError(`invalid scenario fleet:\n${formatIssues(parsed.error, raw, 'fleet')}`);
  }
  const seen = new Set<string>();
  parsed.data.cohorts.forEach((c, i) => {
    if (seen.has(c.name)) {
      throw new InvalidInputError(
        `invalid scenario fleet:\nfleet.cohorts.${i}.name: cohort names must be unique (got "${c.name}")`,
      );
    }
    seen.add(c.name);
  });
  return parsed.data;
}

/** The JSON Schema of a scenario file, for editors (committed as scenarios/scenario.schema.json). */
export function scenarioJsonSchema(): Record<string, unknown> {
  const schema = z.toJSONSchema(Scenario, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
  return {
    $schema: schema.$schema,
    $id: 'https://fleetgate.dev/schemas/scenario.schema.json',
    title: 'fleetgate scenario',
    description:
      'A dry-run scenario for `fleetgate simulate`: fleet, conditions, models, policy, seed. See docs/scenarios.md.',
    ...Object.fromEntries(Object.entries(schema).filter(([k]) => k !== '$schema')),
  };
}
