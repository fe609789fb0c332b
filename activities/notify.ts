/**
 * The notification activity: tells a webhook what a rollout did (a gate waiting for reviewers, an
 * escalation, a cohort rolled back or promoted, the rollout's end) as one JSON POST that Slack's incoming
 * webhooks accept as is (`text` and `blocks`), with fleetgate's own fields under `fleetgate` for any
 * other receiver.
 *
 * Headers: `Idempotency-Key` (`<rolloutId>/<seq>`, the same on every retry of one notification, so a
 * receiver drops duplicates) and, with a secret, `Fleetgate-Signature: t=<unix seconds>,v1=<hex>`, the
 * HMAC-SHA256 under the secret of `<t>\n<idempotency key>\n<exact body bytes>`, signed afresh at each
 * attempt. The timestamp and the key are signed with the body: a captured request cannot be replayed
 * under a new key (the receiver's deduplication would let it through) nor after the replay window
 * (`REPLAY_WINDOW_S`, 5 minutes), so a receiver only has to remember the keys of that window.
 * `verifySignature` is the receiver's side, self-contained so that it can be copied.
 *
 * One request per attempt, bounded by its own timeout; Temporal retries the activity with backoff (the
 * workflow's retry policy). A 2xx is delivered; 408, 429, 5xx, a timeout or a network error is
 * `Unavailable` and retried; any other answer is refused for good (non-retryable), naming the status and
 * the receiver's host. Without a webhook the activity does nothing and says so (`sent: false`).
 *
 * It must never log or put in an error the webhook's URL beyond its host (a Slack URL's path is its
 * secret), nor the signing secret, nor any vehicle identifier (notifications carry cohorts, phases and
 * decision reasons only). It never signs the body alone: that signature would verify on a replay.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { ApplicationFailure } from '@temporalio/common';
import { ErrorType, fail } from '../errors';
import type { NotifyInput } from './contracts';

/** Where notifications go (workers/config.ts reads it from FLEETGATE_WEBHOOK_URL/_SECRET). */
export interface WebhookConfig {
  /** https:// URL that receives the POSTs (http:// only to a loopback host: workers/config.ts checks). */
  url: string;
  /** Key of the HMAC-SHA256 signature header; none: requests are not signed. */
  secret?: string;
}

export interface NotifyResult {
  /** False when no webhook is configured: nothing was sent. */
  sent: boolean;
  /** The receiver's HTTP status. */
  status?: number;
}

/** How long one request may take before the attempt counts as failed (and is retried). */
export const NOTIFY_TIMEOUT_MS = 10_000;
/** The signature header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>\n<idempotency key>\n<body>">`. */
export const SIGNATURE_HEADER = 'Fleetgate-Signature';
/** The deduplication header; its value is signed with the body. */
export const IDEMPOTENCY_HEADER = 'Idempotency-Key';
/** How old (or how far ahead of the receiver's clock) a signed timestamp may be: 5 minutes. */
export const REPLAY_WINDOW_S = 300;
/** Slack shows at most 3,000 characters of a section's text. */
const MAX_TEXT = 3000;

/** The v1 HMAC-SHA256 (hex) of a timestamp, an idempotency key and the body bytes under `secret`. */
function v1(secret: string, t: number, idempotencyKey: string, body: string | Uint8Array): string {
  const mac = createHmac('sha256', secret).update(`${t}\n${idempotencyKey}\n`, 'utf8');
  return (typeof body === 'string' ? mac.update(body, 'utf8') : mac.update(body)).digest('hex');
}

/** The signature header's value for one request: `t=<t>,v1=<hex>`. */
export function signature(secret: string, t: number, idempotencyKey: string, body: string): string {
  return `t=${t},v1=${v1(secret, t, idempotencyKey, body)}`;
}

/** What `verifySignature` decided: the signed timestamp and key, or why the request must be refused. */
export type Verification =
  { ok: true; timestamp: number; idempotencyKey: string } | { ok: false; reason: string };

/**
 * The receiver's check of a notification: the `Fleetgate-Signature` header must carry a `v1` HMAC under
 * `secret` of its timestamp, the `Idempotency-Key` header and the raw body bytes (as received, before
 * parsing), and its timestamp must lie within `windowSec` of `now` (ms, e.g. `Date.now()`). A receiver
 * then drops any key it has seen within the window. `headers` is Node's `req.headers`, a fetch `Headers`
 * or a plain object. Self-contained: it needs only node:crypto.
 */
export function verifySignature(
  secret: string,
  headers: Headers | Record<string, string | string[] | undefined>,
  body: string | Uint8Array,
  now: number = Date.now(),
  windowSec: number = REPLAY_WINDOW_S,
): Verification {
  const get = (name: string): string | undefined => {
    if (typeof (headers as Headers).get === 'function') return (headers as Headers).get(name) ?? undefined;
    const h = headers as Record<string, string | string[] | undefined>;
    const key = Object.keys(h).find((k) => k.toLowerCase() === name.toLowerCase());
    const v = key === undefined ? undefined : h[key];
    return Array.isArray(v) ? v.join(',') : v;
  };
  const header = get('Fleetgate-Signature');
  if (!header) return { ok: false, reason: 'no Fleetgate-Signature header' };
  const key = get('Idempotency-Key');
  if (!key) return { ok: false, reason: 'no Idempotency-Key header' };
  const parts = header.split(',').map((p) => p.trim().split('='));
  const ts = parts.find(([k]) => k === 't')?.[1];
  const t = ts !== undefined && /^\d{1,12}$/.test(ts) ? Number(ts) : NaN;
  if (!Number.isSafeInteger(t)) return { ok: false, reason: 'no timestamp (t=) in Fleetgate-Signature' };
  const age = Math.floor(now / 1000) - t;
  if (Math.abs(age) > windowSec) {
    return { ok: false, reason: `timestamp ${t} is ${age} s from now, outside the ${windowSec} s window` };
  }
  const expected = Buffer.from(v1(secret, t, key, body), 'hex');
  const match = parts.some(
    ([k, v]) =>
      k === 'v1' &&
      v !== undefined &&
      /^[0-9a-f]{64}$/.test(v) &&
      timingSafeEqual(Buffer.from(v, 'hex'), expected),
  );
  return match
    ? { ok: true, timestamp: t, idempotencyKey: key }
    : { ok: false, reason: 'no v1 signature matches the secret, timestamp, key and body' };
}

const WHAT: Record<NotifyInput['event'], string> = {
  'gate-pending': 'approval gate pending',
  escalated: 'escalated to the reviewers',
  decision: 'decision',
  rollback: 'rolled back',
  promoted: 'promoted',
  completed: 'rollout completed',
  rejected: 'rollout rejected',
  aborted: 'rollout aborted',
  drift: 'drift detected',
  paused: 'paused by an operator',
  resumed: 'resumed',
  'compensation-failing': 'compensation failing, retried until it is done',
};

/** The line a human reads: `fleetgate <rollout>: <cohort> <what happened> (wave n): <reason>`. */
export function notificationText(n: NotifyInput): string {
  const who = n.cohort ? `${n.cohort} ` : '';
  const wave = n.wave ? ` (wave ${n.wave})` : '';
  const line = `fleetgate ${n.rolloutId}: ${who}${WHAT[n.event]}${wave}: ${n.reason}`.replace(/\s+/g, ' ');
  return line.length > MAX_TEXT ? `${line.slice(0, MAX_TEXT - 1)}…` : line;
}

/** Slack's mrkdwn needs these three escaped; everything else is shown as written. */
function slackEscape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** The JSON body: Slack's `text` and `blocks`, and fleetgate's fields for receivers that are not Slack. */
export function webhookBody(n: NotifyInput) {
  const text = slackEscape(notificationText(n));
  const context = [`rollout \`${n.rolloutId}\``, `phase ${n.phase}`, `${n.event}`, n.at];
  return {
    text,
    blocks: [
      { type: 'section', text: { type: 'mrkdwn', text } },
      { type: 'context', elements: [{ type: 'mrkdwn', text: slackEscape(context.join(' · ')) }] },
    ],
    fleetgate: {
      event: n.event,
      rolloutId: n.rolloutId,
      ...(n.cohort !== undefined ? { cohort: n.cohort } : {}),
      ...(n.wave !== undefined ? { wave: n.wave } : {}),
      phase: n.phase,
      at: n.at,
      reason: n.reason,
      idempotencyKey: n.idempotencyKey,
    },
  };
}

/** A retryable failure (`Unavailable`), after `retryAfterS` seconds when the receiver asked for that. */
function unavailable(message: string, retryAfterS?: number): ApplicationFailure {
  if (retryAfterS === undefined) return fail(ErrorType.Unavailable, message);
  return ApplicationFailure.create({
    type: ErrorType.Unavailable,
    message,
    nextRetryDelay: `${Math.min(retryAfterS, 300)}s`,
  });
}

/** The receiver's answer, cut to one short line (it may explain a refusal, e.g. Slack's "invalid_payload"). */
async function answer(res: Response): Promise<string> {
  const body = (await res.text().catch(() => '')).replace(/\s+/g, ' ').trim();
  return body === '' ? '' : `: ${body.length > 200 ? `${body.slice(0, 199)}…` : body}`;
}

export function createNotifyActivities({
  webhook,
  timeoutMs = NOTIFY_TIMEOUT_MS,
}: {
  webhook?: WebhookConfig;
  timeoutMs?: number;
}) {
  // Only the host ever appears in a message: the rest of a webhook URL may be its secret.
  const host = webhook ? new URL(webhook.url).host : '';
  return {
    async notify(input: NotifyInput): Promise<NotifyResult> {
      if (!webhook) return { sent: false };
      const body = JSON.stringify(webhookBody(input));
      const headers: Record<string, string> = {
        'Content-Type': 'application/json; charset=utf-8',
        [IDEMPOTENCY_HEADER]: input.idempotencyKey,
        'User-Agent': 'fleetgate',
      };
      if (webhook.secret) {
        headers[SIGNATURE_HEADER] = signature(
          webhook.secret,
          Math.floor(Date.now() / 1000),
          input.idempotencyKey,
          body,
        );
      }
      let res: Response;
      try {
        res = await fetch(webhook.url, {
          method: 'POST',
          headers,
          body,
          // A redirect would resend the signed body elsewhere: the configured URL must be the final one.
          redirect: 'manual',
          signal: AbortSignal.timeout(timeoutMs),
        });
      } catch (err) {
        const e = err as Error & { cause?: { code?: string; message?: string } };
        if (e.name === 'TimeoutError' || e.name === 'AbortError') {
          throw unavailable(`webhook at ${host} did not answer within ${timeoutMs / 1000} s`);
        }
        throw unavailable(
          `webhook at ${host} unreachable: ${e.cause?.code ?? e.cause?.message ?? e.message}`,
        );
      }
      const status = res.status;
      if (status >= 200 && status < 300) {
        await res.body?.cancel().catch(() => undefined);
        return { sent: true, status };
      }
      const said = await answer(res);
      if (status === 408 || status === 429 || status >= 500) {
        const after = Number(res.headers.get('retry-after'));
        throw unavailable(
          `webhook at ${host} answered ${status}${said}`,
          status === 429 && Number.isFinite(after) && after > 0 ? after : undefined,
        );
      }
      const why =
        status >= 300 && status < 400
          ? 'a redirect; set FLEETGATE_WEBHOOK_URL to the final URL'
          : status === 401 || status === 403
            ? 'check FLEETGATE_WEBHOOK_SECRET and the receiver’s credentials'
            : 'the receiver refuses this request; no retry will change that';
      throw fail(
        status === 404 || status === 410 ? ErrorType.NotFound : ErrorType.InvalidInput,
        `webhook at ${host} refused notification ${input.idempotencyKey} (${input.event}) with ${status}${said} (${why})`,
      );
    },
  };
}
