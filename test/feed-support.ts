/**
 * The simulated fleet's feed for tests that build the fleet activities themselves: the simulated OTA
 * channel on a fleet database, the one writer of ingested records attached to it, and the simulated
 * fleet and labeler sending through that writer, as the composition root wires them
 * (workers/worker.ts with FLEETGATE_TELEMETRY=simulated).
 */
import type { FleetDatabase } from '../activities/db';
import type { ModelRunner } from '../activities/deps';
import { EventWriter } from '../events/writer';
import { SimulatedOta } from '../sim/ota';
import { SimulatedFleetFeed } from '../sim/producer';

/** A simulated fleet on `db`: its OTA channel, its feed and the writer; close the writer before `db`. */
export async function simulatedFleet(db: FleetDatabase, runner: ModelRunner, key: Buffer) {
  const conn = db.connection;
  const ota = new SimulatedOta(conn);
  const writer = await EventWriter.attach(db.instance);
  const feed = await SimulatedFleetFeed.create({ conn, ota, runner, writer, key });
  return { ota, feed, writer };
}

/** 2026-01-01T00:00:00Z: the start of the tests' simulated time (the contract refuses times before 2000). */
export const T0 = Date.UTC(2026, 0, 1);
