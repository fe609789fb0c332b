/**
 * Rate-limited logging for the gateway's per-request outcomes that can come by the thousand a second
 * (refusals under overload, a model answering NaN on every request): occurrences are counted per key,
 * and at most one summary line per key set goes to the log per window (10 s by default), e.g. "1234
 * requests refused with 429 (queue-full) in the last 10 s". A key may log its first occurrence of each
 * window in full, so the first error's detail is never lost to the summary.
 *
 * It must never log a line per occurrence, and is never handed a caller id: keys and lines name status
 * codes, reasons, cohorts and digests only.
 */

export const DEFAULT_WINDOW_MS = 10_000;

export class LogWindow {
  private counts = new Map<string, { n: number; logged: number; what: string }>();
  private readonly timer: NodeJS.Timeout;
  private since = Date.now();

  constructor(
    private readonly log: (line: object) => void,
    private readonly windowMs = DEFAULT_WINDOW_MS,
  ) {
    this.timer = setInterval(() => this.flush(), windowMs);
    this.timer.unref();
  }

  /**
   * Counts one occurrence of `key` (`what` says it in words, e.g. "requests refused with 429
   * (queue-full)"); `line`, when given, is logged for the first occurrence of the key in this window.
   */
  note(key: string, what: string, line?: object): void {
    let c = this.counts.get(key);
    if (!c) {
      c = { n: 0, logged: 0, what };
      this.counts.set(key, c);
    }
    c.n++;
    if (line && c.logged === 0) {
      c.logged = 1;
      this.log(line);
    }
  }

  /** Logs one summary line of the window's counts not logged in full, when there are any; starts a new window. */
  flush(): void {
    const now = Date.now();
    const seconds = Math.max(1, Math.round((now - this.since) / 1000));
    this.since = now;
    const parts: string[] = [];
    const counts: Record<string, number> = {};
    for (const [key, c] of this.counts) {
      counts[key] = c.n;
      if (c.n > c.logged) parts.push(`${c.n} ${c.what}`);
    }
    this.counts = new Map();
    if (parts.length === 0) return;
    this.log({
      level: 'warn',
      event: 'gateway.summary',
      seconds,
      counts,
      message: `${parts.join('; ')} in the last ${seconds} s (counted in /metrics)`,
    });
  }

  /** Logs what is counted and stops the timer. */
  close(): void {
    clearInterval(this.timer);
    this.flush();
  }
}
