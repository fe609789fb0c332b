/**
 * Durations as people write them in policy files: "250ms", "10s", "5m", "6h", "2d", or a number of
 * milliseconds. Pure; used by the schemas and by workflow code.
 */
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
export const DURATION_PATTERN = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/;

/** Milliseconds of a duration string; undefined when it is not one. */
export function parseDuration(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? value : undefined;
  const m = DURATION_PATTERN.exec(value.trim());
  if (!m) return undefined;
  return Math.round(Number(m[1]) * UNIT_MS[m[2]!]!);
}

/** A short human form of a millisecond count: 3600000 -> "1h". */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  if (ms >= 1000) return `${(ms / 1000).toFixed(1)}s`;
  return `${ms}ms`;
}

/**
 * The bounds of a policy's durations: each must be above 0 and at most `max`; above `warn` it is legal
 * but `policyWarnings` (policies/schema.ts) names it. `what` names the field in messages. The maxima are
 * what a real rollout could need (docs/operations.md "Limits"); a longer timer is a typo, not a plan.
 */
export const DURATION_LIMITS = {
  shadow: { what: 'a shadow', max: '90d', warn: '30d' },
  checkEvery: { what: "a shadow's budget check interval", max: '90d' },
  hold: { what: 'a wave hold', max: '90d', warn: '30d' },
  gateTimeout: { what: 'a gate timeout', max: '30d', warn: '14d' },
  poll: { what: "the label wait's poll", max: '7d' },
  labelTimeout: { what: "the label wait's timeout", max: '90d', warn: '30d' },
  maturity: { what: 'a label maturity', max: '90d' },
} as const satisfies Record<string, { what: string; max: string; warn?: string }>;
export type DurationLimit = keyof typeof DURATION_LIMITS;
