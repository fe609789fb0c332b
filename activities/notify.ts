/**
 * The notification activity: tells a webhook what a rollout did (a gate waiting for reviewers, an
 * escalation, a cohort rolled back or promoted, the rollout's end) as one JSON POST that Slack's incoming
 * webhooks accept as is (`text` and `blocks`), with fleetgate's own fields under `fleetgate` for any
 * other receiver.
 *
 * Headers: `Idempotency-Key` (`<rolloutId>/<seq>`, the same on every retry of one notification, so a
 * receiver drops duplicates) and, with a secret, `X-Fleetgate-Signature: sha256=<hex>`, the HMAC-SHA256
 * of the exact body bytes under the secret.
 *
 * One request per attempt, bounded by its own timeout; Temporal retries the activity with backoff (the
 * workflow's retry policy). A 2xx is delivered; 408, 429, 5xx, a timeout or a network error is
 * `Unavailable` and retried; any other answer is refused for good (non-retryable), naming the status and
 * the receiver's host. Without a webhook the activity does nothing and says so (`sent: false`).
 *
 * It must never log or put in an error the webhook's URL beyond its host (a Slack URL's path is its
 * secret), nor the signing secret, nor any vehicle identifier (notifications carry cohorts, phases and
 * decision reasons only).
 */
import { createHmac } from 'node:crypto';
import { ApplicationFailure } from '@temporalio/common';
import { ErrorType, fail } from '../errors';
import type { NotifyInput } from './contracts';

/** Where notifications go (workers/config.ts reads it from FLEETGATE_WEBHOOK_URL/_SECRET). */
export interface WebhookConfig {
  /** http:// or https:// URL that receives the POSTs. */
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
/** The signature header: `sha256=<hex HMAC-SHA256 of the body>`. */
export const SIGNATURE_HEADER = 'X-Fleetgate-Signature';
/** Slack shows at most 3,000 characters of a section's text. */
const MAX_TEXT = 3000;

/** The HMAC-SHA256 signature of `body` under `secret`, as the signature header carries it. */
export function signature(secret: string, body: string): string {
  return `sha256=${createHmac('sha256', secret).update(body, 'utf8').digest('hex')}`;
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
        'Idempotency-Key': input.idempotencyKey,
        'User-Agent': 'fleetgate',
      };
      if (webhook.secret) headers[SIGNATURE_HEADER] = signature(webhook.secret, body);
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
