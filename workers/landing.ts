/**
 * The worker's landing-zone reader: with FLEETGATE_LANDING, the worker that owns the fleet database reads
 * the files that streams (AWS IoT rules, Kinesis Data Firehose, a fleet's own uploader) put in the landing
 * zone into it, every FLEETGATE_LANDING_EVERY, through its one writer (events/landing.ts, the same reader
 * as `fleetgate events pull`). A rollout then reads those records as it reads what came over HTTP.
 *
 * A pass that fails is logged and the next one tries again (files already read stay read); a stop waits
 * for the pass under way, which stops at the next file. It must never log a record or a unit id (the
 * reader logs keys, counts and fixes only), and never write to the landing zone.
 */
import type { ObjectStore } from '../activities/deps';
import { LandingReader, type PassResult } from '../events/landing';
import type { EventWriter } from '../events/writer';
import { loadStoreConfig, openObjectStore, type LandingConfig, type StoreConfig } from './config';

/** The store and key prefix of a landing location: s3://BUCKET/PREFIX, or a prefix of the worker's store. */
export function landingStore(
  location: string,
  store: StoreConfig,
  dataDir: string,
  env: NodeJS.ProcessEnv = process.env,
): { store: ObjectStore; prefix: string } {
  if (location.startsWith('s3://')) {
    try {
      return {
        store: openObjectStore(loadStoreConfig({ ...env, FLEETGATE_STORE: location }), dataDir),
        prefix: '',
      };
    } catch (err) {
      // Read as FLEETGATE_STORE is: name the variable the value came from.
      throw new Error((err as Error).message.replace('FLEETGATE_STORE=', 'FLEETGATE_LANDING='), {
        cause: err,
      });
    }
  }
  return { store: openObjectStore(store, dataDir), prefix: location };
}

export interface LandingLoop {
  /** Stops after the pass under way (which stops at its next file). */
  stop(): Promise<void>;
}

/**
 * Reads the landing zone now and then every `config.everyMs` into `writer`'s database until stopped.
 * `log` gets one line per pass that read, refused or failed something (quiet passes are not logged).
 */
export async function startLandingLoop(opts: {
  writer: EventWriter;
  config: LandingConfig;
  store: StoreConfig;
  dataDir: string;
  log: (line: string) => void;
  /** Where an s3:// location's endpoint and credentials are read (default process.env). */
  env?: NodeJS.ProcessEnv;
}): Promise<LandingLoop> {
  const { store, prefix } = landingStore(opts.config.location, opts.store, opts.dataDir, opts.env);
  const reader = await LandingReader.open({ store, writer: opts.writer, prefix });
  const stop = new AbortController();
  let wake: (() => void) | undefined;
  const loop = (async () => {
    while (!stop.signal.aborted) {
      try {
        const r = await reader.pass(stop.signal);
        if (r.filesRead + r.filesRefused + r.filesOutside > 0) opts.log(passSummary(r));
      } catch (err) {
        opts.log(
          `the landing zone's pass failed: ${(err as Error).message.split('\n')[0]}; the next pass tries again`,
        );
      }
      if (stop.signal.aborted) break;
      await new Promise<void>((res) => {
        const timer = setTimeout(res, opts.config.everyMs);
        wake = () => {
          clearTimeout(timer);
          res();
        };
      });
    }
  })();
  return {
    async stop() {
      stop.abort();
      wake?.();
      await loop;
      reader.close();
      (store as { close?: () => void }).close?.();
    },
  };
}

/** One line for a pass: what it read and refused. */
export function passSummary(r: PassResult): string {
  return (
    `landing zone: ${r.filesRead} file(s) read, ${r.filesRefused} refused, ${r.filesOutside} outside the layout; ` +
    `${r.accepted} record(s) accepted, ${r.duplicates} duplicate(s), ${r.late} late`
  );
}
