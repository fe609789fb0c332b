/**
 * A simulated world in one data directory: the composition root's services (object store, DuckDB, model
 * runner, pseudonym key, the simulated over-the-air channel), production registered for every cohort of
 * a fleet, and the fleet's vehicles created. What `fleetgate simulate` and the workflow tests run
 * rollouts against.
 *
 * Activity-side only (files, DuckDB, onnxruntime through workers/worker.ts); workflows never import it.
 * It must never touch a data directory it was not given.
 */
import { rmSync } from 'node:fs';
import { bootstrapProduction } from '../activities/registry';
import { initSimFleet } from '../activities/fleet';
import { storeDriftReferences } from '../activities/drift';
import { confinedPath } from '../activities/confine';
import { openServices, trustFixtureSigner, type Services } from '../workers/worker';
import { loadFleetManifest } from '../fleet/manifest';
import type { TelemetryConfig } from '../workers/config';

export interface SimWorld {
  dataDir: string;
  services: Services;
  cohorts: string[];
  productionDigest: string;
  /** Closes the services; removes the data directory when `remove` is set (default true). */
  close(remove?: boolean): Promise<void>;
}

export interface SimWorldOptions {
  /** The data directory (created when missing); the world owns it. */
  dataDir: string;
  /** Directory that the fleet manifest and pack paths are relative to (the worker's root). */
  root: string;
  /** Fleet manifest, relative to `root` (it must lie inside it, as a worker's). */
  fleet: string;
  /** Production model pack, relative to `root` (it must lie inside it). */
  production: string;
  /** Who registers production, for the registry's records. */
  by: string;
  /** Where rollouts read their events (default: the simulated fleet, in process). */
  telemetry?: TelemetryConfig;
}

/** Opens the services in `dataDir`, registers production for every cohort and creates the fleet. */
export async function openSimWorld(opts: SimWorldOptions): Promise<SimWorld> {
  // A simulated world's registry trusts the fixture packs' signer (and any key configured for it).
  trustFixtureSigner(opts.dataDir);
  const services = await openServices(
    opts.dataDir,
    opts.root,
    { kind: 'simulated' },
    opts.telemetry ?? { kind: 'simulated', watermarkWaitMs: 0 },
  );
  // A simulated world is a dry run: it never notifies the configured webhook (a test may set one).
  delete services.webhook;
  try {
    const manifest = loadFleetManifest(confinedPath(opts.root, opts.fleet), opts.fleet);
    const cohorts = manifest.cohorts.map((c) => c.name);
    const prod = await bootstrapProduction(services, opts.production, cohorts, opts.by);
    // The reference the drift checks compare with, stored beside production's record as it is registered.
    await storeDriftReferences(services.store, prod, manifest, services.features);
    await initSimFleet(
      { conn: services.db.connection, key: services.key, root: opts.root },
      opts.fleet,
      Object.fromEntries(cohorts.map((c) => [c, prod.digest])),
    );
    return {
      dataDir: opts.dataDir,
      services,
      cohorts,
      productionDigest: prod.digest,
      async close(remove = true) {
        await services.close();
        if (remove) rmSync(opts.dataDir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await services.close();
    throw err;
  }
}
