/**
 * Over-the-air delivery to the simulated fleet: the `OtaChannel` over the fleet database's `vehicles`,
 * `ota_jobs`, `ota_targets` and `ota_ops` tables. Every vehicle has two model slots, A and B; a job puts
 * the new model into the inactive slot and makes it the active one, and a revert switches back only the
 * vehicles whose active slot still holds that job's model.
 *
 * `installOutcomes` is the simulated install itself, this channel's answer to `OtaChannel.installOutcomes`:
 * which of a wave's targets install, fail or are deferred, drawn per vehicle from keyed streams (never
 * Math.random), so a retried delivery decides the same. deliverWave (activities/fleet.ts) hands only the
 * vehicles that install to `createJob` (or stages only those, `stagedWaves`): a failed or deferred
 * vehicle keeps its slots, runs what it ran, and is not touched by a revert.
 *
 * Its methods take no lock: callers run them inside `exclusive` or `transaction` on the same connection
 * (see activities/db.ts), and this module must never call either itself, which would wait forever. It
 * must never store, log or return a raw vehicle id, only pseudonyms.
 */
import type { DuckDBConnection } from '@duckdb/node-api';
import { columns, countVehicles, exec, num, rows } from '../activities/db';
import {
  INSTALL,
  installsAlways,
  type InstallModel,
  type OtaChannel,
  type OtaJob,
  type StagedWave,
  type StagedWaves,
  type WaveInstall,
} from '../activities/deps';
import { ErrorType, fail } from '../errors';
import { canarySalt, keyedUniforms, saltedSql } from '../fleet/assignment';

/**
 * The outcome of installing on each of `targets` in wave `wave` of `rolloutId`, from four keyed uniforms
 * per vehicle (salt `${rolloutId}:install:w${wave}`): first the preconditions, each drawn on its own
 * (online, parked, battery ok with the cohort's shares; a vehicle failing any is deferred: not installed,
 * not failed, tried again in the next wave that targets it), then the SKU's installFailureRate (failed:
 * the vehicle keeps its current slot). Deterministic in (key, rollout, wave, pseudonym).
 */
export function installOutcomes(
  key: Buffer,
  rolloutId: string,
  wave: number,
  targets: readonly string[],
  model: InstallModel,
): Uint8Array {
  const out = new Uint8Array(targets.length);
  if (installsAlways(model)) return out;
  const { online, parked, batteryOk } = model.availability;
  const u = keyedUniforms(key, installSalt(rolloutId, wave), targets, 4);
  for (let i = 0; i < targets.length; i++) {
    const o = 4 * i;
    if (!(u[o]! < online && u[o + 1]! < parked && u[o + 2]! < batteryOk)) out[i] = INSTALL.deferred;
    else if (u[o + 3]! < model.installFailureRate) out[i] = INSTALL.failed;
  }
  return out;
}

/** The salt of a wave's install draws. */
const installSalt = (rolloutId: string, wave: number) => `${rolloutId}:install:w${wave}`;

/**
 * `installOutcomes` of one vehicle as SQL, over `h`, the hex HMAC of its pseudonym under the wave's
 * `installSalt`: the same four uniforms (32-bit words / 2^32, exact in a DOUBLE), the same tests.
 */
function installOutcomeSql(h: string): string {
  const u = (d: number) => `(('0x' || substr(${h}, ${8 * d + 1}, 8))::UBIGINT::DOUBLE / 4294967296::DOUBLE)`;
  return `CASE
    WHEN NOT (${u(0)} < $online::DOUBLE AND ${u(1)} < $parked::DOUBLE AND ${u(2)} < $battery_ok::DOUBLE)
      THEN ${INSTALL.deferred}
    WHEN ${u(3)} < $failure_rate::DOUBLE THEN ${INSTALL.failed}
    ELSE ${INSTALL.installed} END`;
}

/** The digest of a vehicle's active slot, as SQL. */
const ACTIVE_DIGEST = `CASE active WHEN 'a' THEN slot_a ELSE slot_b END`;

export class SimulatedOta implements OtaChannel, StagedWaves {
  /** Its waves are chosen and drawn inside the fleet database. */
  readonly stagedWaves: StagedWaves = this;

  constructor(private readonly conn: DuckDBConnection) {}

  /** The simulated install of a wave's new targets in one cohort: `installOutcomes` below. */
  installOutcomes(wave: WaveInstall, targets: readonly string[]): Promise<Uint8Array> {
    return Promise.resolve(installOutcomes(wave.key, wave.rolloutId, wave.wave, targets, wave.model));
  }

  vehicleCount(fleet: string): Promise<number> {
    return countVehicles(this.conn, fleet);
  }

  async inventory(fleet: string, cohort: string): Promise<{ vehicles: string[]; digests: string[] }> {
    const { vehicles, digests } = await cohortSlots(this.conn, fleet, cohort);
    return { vehicles, digests };
  }

  /** One row at most: `SELECT 1 ... LIMIT 1`, no cohort read. */
  async hasVehicles(fleet: string, cohort: string): Promise<boolean> {
    const found = await rows(this.conn, `SELECT 1 FROM vehicles WHERE fleet = ? AND cohort = ? LIMIT 1`, [
      fleet,
      cohort,
    ]);
    return found.length > 0;
  }

  async running(fleet: string, digest: string): Promise<Map<string, number>> {
    const found = await rows(
      this.conn,
      `SELECT cohort, count(*) AS n FROM vehicles WHERE fleet = ? AND ${ACTIVE_DIGEST} = ? GROUP BY cohort`,
      [fleet, digest],
    );
    return new Map(found.map((r) => [String(r.cohort), num(r.n)]));
  }

  async recordedJob(jobId: string, digest: string): Promise<unknown> {
    const [job] = await rows(this.conn, `SELECT digest, result FROM ota_jobs WHERE job_id = ?`, [jobId]);
    if (!job) return undefined;
    if (job.digest !== digest) {
      throw fail(
        ErrorType.ImmutableConflict,
        `OTA job ${jobId} already delivered ${String(job.digest).slice(0, 12)}, not ${digest.slice(0, 12)}`,
      );
    }
    return JSON.parse(String(job.result));
  }

  /** Vehicles per cohort of the fleet; cohorts with none are absent. */
  async cohortSizes(fleet: string): Promise<Map<string, number>> {
    const found = await rows(
      this.conn,
      `SELECT cohort, count(*) AS n FROM vehicles WHERE fleet = ? GROUP BY cohort`,
      [fleet],
    );
    return new Map(found.map((r) => [String(r.cohort), num(r.n)]));
  }

  /**
   * One cohort's part of a canary wave, chosen inside the database (no cohort is read into JavaScript):
   * the first `count` vehicles by keyed rank (`waveTargets`' order: the rank's hex, then the pseudonym),
   * of which those not running `digest` are the new targets; their installs are drawn as
   * `installOutcomes` draws them (none fail when `installsAlways`). Those that install are appended to the
   * targets of job `jobId` with the slot each had active; `finishJob` then switches them.
   */
  async stageWave(wave: WaveInstall & { jobId: string; digest: string; count: number }): Promise<StagedWave> {
    const { conn } = this;
    const rank = saltedSql(wave.key, canarySalt(wave.rolloutId), 'rank');
    const draw = installsAlways(wave.model)
      ? undefined
      : saltedSql(wave.key, installSalt(wave.rolloutId, wave.wave), 'install');
    const { online, parked, batteryOk } = wave.model.availability;
    // Every chosen vehicle is kept (fresh or not), so that the choice can be counted: a wave reaches
    // exactly its share or is not delivered. Install draws are made for the fresh ones only.
    await exec(
      conn,
      `CREATE OR REPLACE TEMP TABLE wave_stage AS
       SELECT vehicle, active, fresh,
              ${draw ? `CASE WHEN fresh THEN ${installOutcomeSql('h')} END` : `${INSTALL.installed}`} AS outcome
       FROM (SELECT vehicle, active, fresh${draw ? `, CASE WHEN fresh THEN ${draw.hex('encode(vehicle)')} END AS h` : ''}
             FROM (SELECT vehicle, active, ${ACTIVE_DIGEST} IS DISTINCT FROM $digest AS fresh FROM vehicles
                   WHERE fleet = $fleet AND cohort = $cohort
                   ORDER BY substr(${rank.hex('encode(vehicle)')}, 1, 8), vehicle
                   LIMIT $count))`,
      {
        fleet: wave.fleet,
        cohort: wave.cohort,
        digest: wave.digest,
        count: wave.count,
        ...rank.params,
        ...(draw
          ? {
              ...draw.params,
              online,
              parked,
              battery_ok: batteryOk,
              failure_rate: wave.model.installFailureRate,
            }
          : {}),
      },
    );
    const [counts] = await rows(
      conn,
      `SELECT count(*) AS chosen, count(*) FILTER (fresh) AS targeted,
              count(*) FILTER (fresh AND outcome = ${INSTALL.failed}) AS failed,
              count(*) FILTER (fresh AND outcome = ${INSTALL.deferred}) AS deferred FROM wave_stage`,
    );
    if (num(counts?.chosen) !== wave.count) {
      throw fail(
        ErrorType.Unavailable,
        `OTA job ${wave.jobId}: the fleet database chose ${num(counts?.chosen)} vehicle(s) of cohort ` +
          `${wave.cohort}, not ${wave.count}`,
      );
    }
    const installed = await exec(
      conn,
      `INSERT INTO ota_targets (job_id, vehicle, cohort, reverted, prev_active)
       SELECT ?, vehicle, ?, false, active FROM wave_stage WHERE fresh AND outcome = ${INSTALL.installed}`,
      [wave.jobId, wave.cohort],
    );
    await exec(conn, `DROP TABLE wave_stage`);
    return {
      targeted: num(counts?.targeted),
      failed: num(counts?.failed),
      deferred: num(counts?.deferred),
      installed,
    };
  }

  /**
   * Appends the targets, reads the slot each had active from `vehicles` in SQL (no read of the cohorts
   * into JavaScript), switches their slots, logs one op per cohort.
   */
  async createJob(job: OtaJob): Promise<void> {
    const { conn } = this;
    let total = 0;
    const appender = await conn.createAppender('ota_targets');
    try {
      for (const [cohort, vehicles] of job.targets) {
        for (const vehicle of vehicles) {
          appender.appendVarchar(job.jobId);
          appender.appendVarchar(vehicle);
          appender.appendVarchar(cohort);
          appender.appendBoolean(false);
          appender.appendVarchar('a'); // set from the vehicle's active slot below
          appender.endRow();
        }
        total += vehicles.length;
      }
    } finally {
      appender.closeSync();
    }
    const matched = await exec(
      conn,
      `UPDATE ota_targets SET prev_active = v.active
       FROM vehicles v
       WHERE ota_targets.job_id = ? AND v.fleet = ? AND v.vehicle = ota_targets.vehicle
         AND v.cohort = ota_targets.cohort`,
      [job.jobId, job.fleet],
    );
    if (matched !== total) {
      throw fail(
        ErrorType.InvalidInput,
        `OTA job ${job.jobId} targets ${total - matched} vehicle(s) that are not in their cohort of fleet ${job.fleet}`,
      );
    }
    const counts = new Map([...job.targets].map(([cohort, vehicles]) => [cohort, vehicles.length]));
    await this.finishJob(job, counts);
  }

  /**
   * Completes job `job.jobId` whose targets are in `ota_targets` with the slot each had active (by
   * `createJob` or `stageWave`): switches their slots, logs one op per cohort with any (`counts`), and
   * records the job with its result.
   */
  async finishJob(job: Omit<OtaJob, 'targets'>, counts: ReadonlyMap<string, number>): Promise<void> {
    const { conn } = this;
    // The new model goes into the inactive slot, which then becomes the active one. One statement per
    // slot, so that only the columns that change are written.
    for (const [from, to] of [
      ['a', 'b'],
      ['b', 'a'],
    ] as const) {
      await exec(
        conn,
        `UPDATE vehicles SET slot_${to} = ?, active = '${to}'
         FROM ota_targets t
         WHERE t.job_id = ? AND t.prev_active = '${from}' AND vehicles.fleet = ? AND vehicles.vehicle = t.vehicle`,
        [job.digest, job.jobId, job.fleet],
      );
    }
    for (const [cohort, n] of counts) {
      if (n > 0) {
        await exec(conn, `INSERT INTO ota_ops (job_id, op, cohort, vehicles) VALUES (?, ?, ?, ?)`, [
          job.jobId,
          job.kind,
          cohort,
          n,
        ]);
      }
    }
    await exec(
      conn,
      `INSERT INTO ota_jobs (job_id, rollout_id, fleet, kind, wave, digest, result) VALUES (?, ?, ?, ?, ?, ?, ?)`,
      [job.jobId, job.rolloutId, job.fleet, job.kind, job.wave, job.digest, JSON.stringify(job.result)],
    );
  }

  /**
   * Switches the job's not yet reverted vehicles of each cohort back to the slot they ran before it and
   * marks them reverted. A vehicle whose active slot no longer holds the job's model is only marked.
   */
  async revertJob(jobId: string, cohorts: readonly string[]): Promise<number> {
    const { conn } = this;
    const [job] = await rows(conn, `SELECT fleet, digest FROM ota_jobs WHERE job_id = ?`, [jobId]);
    if (!job) return 0;
    let reverted = 0;
    for (const cohort of cohorts) {
      const [pending] = await rows(
        conn,
        `SELECT count(*) AS n FROM ota_targets WHERE job_id = ? AND cohort = ? AND NOT reverted`,
        [jobId, cohort],
      );
      const n = num(pending?.n);
      if (n === 0) continue;
      await exec(
        conn,
        `UPDATE vehicles SET active = t.prev_active
         FROM ota_targets t
         WHERE t.job_id = ? AND t.cohort = ? AND NOT t.reverted
           AND vehicles.fleet = ? AND vehicles.vehicle = t.vehicle
           AND (CASE vehicles.active WHEN 'a' THEN vehicles.slot_a ELSE vehicles.slot_b END) = ?`,
        [jobId, cohort, String(job.fleet), String(job.digest)],
      );
      await exec(
        conn,
        `UPDATE ota_targets SET reverted = true WHERE job_id = ? AND cohort = ? AND NOT reverted`,
        [jobId, cohort],
      );
      await exec(conn, `INSERT INTO ota_ops (job_id, op, cohort, vehicles) VALUES (?, 'revert', ?, ?)`, [
        jobId,
        cohort,
        n,
      ]);
      reverted += n;
    }
    return reverted;
  }
}

/** The cohort's vehicles and the digest of each one's active slot. Takes no lock. */
async function cohortSlots(
  conn: DuckDBConnection,
  fleet: string,
  cohort: string,
): Promise<{ vehicles: string[]; digests: string[] }> {
  const where = `FROM vehicles WHERE fleet = ? AND cohort = ?`;
  const [distinct = []] = await columns(conn, `SELECT DISTINCT ${ACTIVE_DIGEST} ${where} ORDER BY 1`, [
    fleet,
    cohort,
  ]);
  const known = distinct as string[];
  if (known.length === 0) return { vehicles: [], digests: [] };
  if (known.length === 1) {
    // One model in the whole cohort (the usual case before a rollout): no per-vehicle code to read.
    const [vehicles = []] = await columns(conn, `SELECT vehicle ${where}`, [fleet, cohort]);
    return { vehicles: vehicles as string[], digests: new Array<string>(vehicles.length).fill(known[0]!) };
  }
  // Digests travel as small codes: a cohort runs a handful of models, and a digest is 64 characters.
  const codes = known.map((_, i) => `WHEN ? THEN ${i}`).join(' ');
  const [vehicles = [], code = []] = await columns(
    conn,
    `SELECT vehicle, (CASE ${ACTIVE_DIGEST} ${codes} END)::UTINYINT ${where}`,
    [...known, fleet, cohort],
  );
  return {
    vehicles: vehicles as string[],
    digests: (code as number[]).map((c) => known[c]!),
  };
}
