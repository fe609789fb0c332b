/**
 * Compatibility of a candidate model's input/output contract with production's.
 *
 * A candidate is a drop-in replacement when it accepts every input production is fed (same names,
 * element types, ranks, and no fixed dimension where production's is fixed otherwise or free) and
 * produces every output production's consumers read, with the same element types and shapes.
 *
 * Pure: workflow code imports it. It must never do I/O or import Node modules.
 */
import type { IoContract, TensorSpec } from '../activities/contracts';

/** Human-readable problems; an empty array means the candidate is compatible. */
export function compareContracts(production: IoContract, candidate: IoContract): string[] {
  const problems: string[] = [];
  const candInputs = new Map(candidate.inputs.map((t) => [t.name, t]));
  const prodInputs = new Set(production.inputs.map((t) => t.name));
  for (const p of production.inputs) {
    const c = candInputs.get(p.name);
    if (!c) {
      problems.push(
        `input "${p.name}" is missing in the candidate (candidate inputs: ${names(candidate.inputs)}); ` +
          `rename the candidate's input to "${p.name}"`,
      );
      continue;
    }
    problems.push(...compareTensor('input', p, c));
  }
  for (const c of candidate.inputs) {
    if (!prodInputs.has(c.name)) {
      problems.push(
        `candidate needs input "${c.name}" that production is not fed (production inputs: ${names(production.inputs)})`,
      );
    }
  }
  const candOutputs = new Map(candidate.outputs.map((t) => [t.name, t]));
  for (const p of production.outputs) {
    const c = candOutputs.get(p.name);
    if (!c) {
      problems.push(
        `output "${p.name}" is missing in the candidate (candidate outputs: ${names(candidate.outputs)}); ` +
          `rename the candidate's output to "${p.name}"`,
      );
      continue;
    }
    problems.push(...compareTensor('output', p, c));
  }
  return problems;
}

function compareTensor(kind: 'input' | 'output', p: TensorSpec, c: TensorSpec): string[] {
  const problems: string[] = [];
  const what = `${kind} "${p.name}"`;
  if (p.type !== c.type) {
    problems.push(`${what}: element type is ${c.type} in the candidate, ${p.type} in production`);
  }
  if (p.shape.length !== c.shape.length) {
    problems.push(
      `${what}: rank is ${c.shape.length} ${shape(c)} in the candidate, ${p.shape.length} ${shape(p)} in production`,
    );
    return problems;
  }
  p.shape.forEach((pd, i) => {
    const cd = c.shape[i];
    const pFixed = typeof pd === 'number';
    const cFixed = typeof cd === 'number';
    // An input dimension the candidate leaves free accepts whatever production is fed; an output
    // dimension must be at least as fixed as production's, since consumers rely on it.
    const mismatch = kind === 'input' ? cFixed && (!pFixed || pd !== cd) : pFixed && (!cFixed || pd !== cd);
    if (mismatch) {
      problems.push(
        `${what}: dimension ${i} is ${dim(cd)} in the candidate, ${dim(pd)} in production ` +
          `(shapes ${shape(c)} vs ${shape(p)})`,
      );
    }
  });
  return problems;
}

function names(ts: TensorSpec[]): string {
  return ts.length === 0 ? '(none)' : ts.map((t) => `"${t.name}"`).join(', ');
}

function shape(t: TensorSpec): string {
  return `[${t.shape.map(dim).join(', ')}]`;
}

function dim(d: number | string | undefined): string {
  return typeof d === 'number' ? String(d) : d === undefined ? '?' : `"${d}" (any)`;
}
