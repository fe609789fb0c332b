/**
 * The workflow bundle, built once per source version and cached on disk, so a test run or a demo does
 * not rebuild it for every worker. The cache key is a hash of every file the bundle can include.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { bundleWorkflowCode, type WorkflowBundle } from '@temporalio/worker';
import { writeFileAtomicSync } from '../activities/atomic-file';

const ROOT = resolve(__dirname, '..');
export const WORKFLOWS_PATH = join(ROOT, 'workflows', 'index.ts');

function sources(): string[] {
  const out: string[] = [join(ROOT, 'errors.ts'), join(ROOT, 'package-lock.json')];
  for (const dir of ['workflows', 'policies', 'activities']) {
    for (const f of readdirSync(join(ROOT, dir)).sort()) if (f.endsWith('.ts')) out.push(join(ROOT, dir, f));
  }
  return out.filter((f) => existsSync(f));
}

/**
 * The bundle of the workflows; with `interceptorModules` (workers/tracing.ts WORKFLOW_TRACING_MODULES),
 * also of those workflow interceptors, cached under another key.
 */
export async function getWorkflowBundle(
  options: { interceptorModules?: readonly string[] } = {},
): Promise<WorkflowBundle> {
  const modules = [...(options.interceptorModules ?? [])];
  const h = createHash('sha256');
  for (const f of sources()) h.update(f.slice(ROOT.length)).update(readFileSync(f));
  for (const m of modules) h.update(`interceptor:${m.slice(ROOT.length)}`);
  const dir = join(tmpdir(), 'fleetgate-bundles');
  const file = join(dir, `${h.digest('hex').slice(0, 24)}.js`);
  if (existsSync(file)) return { code: readFileSync(file, 'utf8') };
  const bundle = await bundleWorkflowCode({
    workflowsPath: WORKFLOWS_PATH,
    workflowInterceptorModules: modules,
    logger: quietLogger,
  });
  mkdirSync(dir, { recursive: true });
  // The cache directory is shared by every user of the machine's temp directory: never a predictable
  // temporary name, never through a link planted there.
  writeFileAtomicSync(file, bundle.code, { durable: false });
  return { code: bundle.code };
}

const noop = () => undefined;
const quietLogger = { log: noop, trace: noop, debug: noop, info: noop, warn: noop, error: console.error };
