/**
 * What the gateway knows of a model it serves, by digest: the feature count of its input contract (read
 * from the ONNX session, which loading it here warms), and its pre- and post-processing from the pack's
 * inference_config.json (the registry record's `configDigest` blob). A digest with no registry record is
 * served as a bare model: identity preprocessing, classes "0" and "1", argmax.
 *
 * Read-only: it never writes to the store. Entries are cached per digest (a digest's bytes never change);
 * a failed load is forgotten, so a later call tries again.
 */
import type { ModelRunner, ObjectStore } from '../activities/deps';
import { recordsByDigest } from '../activities/registry-read';
import { parseStoredJson } from '../activities/store';
import { InferenceConfig } from '../policies/schema';
import { blobKey } from '../workers/model-runner';

export interface ServedModel {
  digest: string;
  name?: string;
  version?: string;
  /** Features per input row (the input's second dimension). */
  features: number;
  scale: number;
  offset: number;
  classes: string[];
  /** The config's threshold of class 1 (two-class models), when it sets one. */
  threshold?: number;
}

/** Why a model cannot be served: not in the store, or not loadable. */
export class ModelUnavailableError extends Error {
  override name = 'ModelUnavailableError';
  constructor(
    message: string,
    readonly missing: boolean,
  ) {
    super(message);
  }
}

export class ModelCatalog {
  private readonly models = new Map<string, Promise<ServedModel>>();
  private readonly ready = new Set<string>();

  constructor(
    private readonly store: ObjectStore,
    private readonly runner: Pick<ModelRunner, 'contract'>,
  ) {}

  /** True once `digest`'s session is loaded. */
  isLoaded(digest: string): boolean {
    return this.ready.has(digest);
  }

  /** The model, loading its session and config on first use. */
  get(digest: string): Promise<ServedModel> {
    let m = this.models.get(digest);
    if (!m) {
      m = this.load(digest).then((model) => {
        this.ready.add(digest);
        return model;
      });
      m.catch(() => this.models.delete(digest));
      this.models.set(digest, m);
    }
    return m;
  }

  private async load(digest: string): Promise<ServedModel> {
    if ((await this.store.etag(blobKey(digest))) === null) {
      throw new ModelUnavailableError(
        `model ${digest} is not in the object store; register its pack first (fleetgate model register)`,
        true,
      );
    }
    let contract;
    try {
      contract = await this.runner.contract(digest);
    } catch (err) {
      throw new ModelUnavailableError(
        `model ${digest.slice(0, 12)} cannot be loaded: ${(err as Error).message}`,
        false,
      );
    }
    const dim = contract.inputs[0]?.shape[1];
    if (typeof dim !== 'number' || dim < 1) {
      throw new ModelUnavailableError(
        `model ${digest.slice(0, 12)} has no fixed feature count (input shape ${JSON.stringify(contract.inputs[0]?.shape)})`,
        false,
      );
    }
    const records = await recordsByDigest(this.store, digest);
    const record = records[records.length - 1];
    const base: ServedModel = { digest, features: dim, scale: 1, offset: 0, classes: ['0', '1'] };
    if (!record) return base;
    const served: ServedModel = { ...base, name: record.name, version: record.version };
    if (!record.configDigest) return served;
    const key = blobKey(record.configDigest);
    const bytes = await this.store.get(key);
    if (!bytes) return served;
    const config = InferenceConfig.safeParse(parseStoredJson<unknown>(bytes, key));
    if (!config.success) {
      throw new ModelUnavailableError(
        `model ${digest.slice(0, 12)}: its inference_config.json (${key}) does not parse: ${config.error.message}`,
        false,
      );
    }
    const { preprocessing, classes, thresholds } = config.data;
    const t = classes.length === 2 ? thresholds[classes[1]!] : undefined;
    return {
      ...served,
      scale: preprocessing.scale,
      offset: preprocessing.offset,
      classes,
      ...(t !== undefined ? { threshold: t } : {}),
    };
  }
}
