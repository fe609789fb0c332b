/**
 * The activity of `fleetgate fleet init` of a simulated vehicle fleet when a worker owns the fleet
 * database (workflows/fleet-init.ts): one process opens a DuckDB file, so the vehicles are created by the
 * worker that holds it, on its task queue, while `fleet init` itself registers production in the
 * registry. It creates the fleet's vehicles with `initSimFleet` (activities/fleet.ts), each cohort on the
 * digest the registry's production pointer names, and is idempotent: a fleet that has vehicles is left
 * as it is.
 *
 * It must never register a model or move a pointer (the registry is `fleet init`'s), never create a
 * vehicle on a digest that is not its cohort's production in the registry, and never log, store or
 * return a raw vehicle id (the vehicles are keyed pseudonyms of the worker's key).
 */
import { ErrorType, fail } from '../errors';
import { loadFleetManifest } from '../fleet/manifest';
import { confinedPath } from './confine';
import type { ObjectStore } from './deps';
import { initSimFleet, type FleetActivityDeps } from './fleet';
import { pointerKey, readPointer } from './registry';

export interface FleetInitInput {
  /** The fleet manifest, relative to the worker's directory (as a rollout's `fleet.manifest`). */
  manifest: string;
}

export interface FleetInitResult {
  fleet: string;
  vehicles: number;
  /** False: the fleet already had vehicles and was left as it was. */
  created: boolean;
  /** The store id of the worker that created it (workers/ownership.ts), for the caller to check. */
  store: string;
}

export interface FleetInitDeps extends Pick<FleetActivityDeps, 'conn' | 'key' | 'root'> {
  /** The registry, where each cohort's production pointer is read. */
  store: ObjectStore;
  /** The worker's store id, as its Temporal identity names it. */
  storeId: string;
  /** Whether the worker's vehicles are rows of its fleet database (the simulated OTA channel). */
  vehiclesInDatabase: boolean;
}

export function createFleetInitActivities(deps: FleetInitDeps) {
  return {
    /** Creates the simulated fleet of `manifest` on its cohorts' production digests; idempotent. */
    async createSimulatedFleet(input: FleetInitInput): Promise<FleetInitResult> {
      if (!deps.vehiclesInDatabase) {
        throw fail(
          ErrorType.Refused,
          'this worker delivers through AWS IoT Jobs (FLEETGATE_OTA=aws-iot): its vehicles are things there, ' +
            'not rows of its fleet database; run "fleetgate fleet init" with FLEETGATE_OTA=aws-iot to register them',
        );
      }
      const manifest = loadFleetManifest(confinedPath(deps.root, input.manifest), input.manifest);
      const productionByCohort: Record<string, string> = {};
      for (const c of manifest.cohorts) {
        const { pointer } = await readPointer(deps.store, c.name, 'production');
        if (!pointer?.digest) {
          throw fail(
            ErrorType.NotFound,
            `cohort ${c.name} of fleet ${manifest.name} has no production model in this worker's registry ` +
              `(${pointerKey(c.name, 'production')} is ${pointer ? 'cleared' : 'missing'}); run "fleetgate fleet init" ` +
              'with the same FLEETGATE_STORE as the worker, which registers production first',
            { cohort: c.name },
          );
        }
        productionByCohort[c.name] = pointer.digest;
      }
      const fleet = await initSimFleet(deps, input.manifest, productionByCohort);
      return { ...fleet, store: deps.storeId };
    },
  };
}
