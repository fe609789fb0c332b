/**
 * The small HTTP helpers of the ingestion endpoint: JSON answers with the headers every answer carries
 * (`nosniff`, no framing, no caching), errors as JSON, a bounded body reader, bearer tokens and a
 * constant-time comparison of secrets (the bounded gunzip is in events/parse.ts, shared with the
 * landing-zone reader).
 *
 * It must never put a token, a header's value or a body in an answer or an error.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';

/** On every answer: the endpoint serves data, never a page. */
export const SECURITY_HEADERS = {
  'X-Content-Type-Options': 'nosniff',
  'X-Frame-Options': 'DENY',
  'Content-Security-Policy': "default-src 'none'; frame-ancestors 'none'",
  'Cache-Control': 'no-store',
} as const;

/** An answer other than 200: its status, a code for metrics and clients, and a message with the fix. */
export class HttpError extends Error {
  override name = 'HttpError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly extra: Record<string, unknown> = {},
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export function send(
  res: ServerResponse,
  status: number,
  type: string,
  body: string,
  headers: Record<string, string> = {},
) {
  res.writeHead(status, {
    ...SECURITY_HEADERS,
    'Content-Type': type,
    'Content-Length': Buffer.byteLength(body),
    ...headers,
  });
  res.end(body);
}

export function sendJson(
  res: ServerResponse,
  status: number,
  value: unknown,
  headers: Record<string, string> = {},
) {
  send(res, status, 'application/json; charset=utf-8', JSON.stringify(value), headers);
}

/** `{ error: { status, code, message, ...extra } }`. */
export function sendError(res: ServerResponse, err: HttpError): void {
  sendJson(
    res,
    err.status,
    { error: { status: err.status, code: err.code, message: err.message, ...err.extra } },
    err.headers,
  );
}

function tooLarge(max: number, what: string): HttpError {
  return new HttpError(
    413,
    'body-too-large',
    `the body is over ${max} bytes${what}; send fewer records per batch`,
    {},
    {
      Connection: 'close',
    },
  );
}

/** The body, at most `max` bytes (413 beyond, without reading the rest into memory). */
export async function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > max) {
    req.resume();
    throw tooLarge(max, '');
  }
  const chunks: Buffer[] = [];
  let size = 0;
  let over = false;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > max) over = true;
    else chunks.push(chunk);
  }
  if (over) throw tooLarge(max, '');
  return Buffer.concat(chunks);
}

/** The token of an `Authorization: Bearer <token>` header, or undefined. */
export function bearerToken(req: IncomingMessage): string | undefined {
  const h = req.headers.authorization;
  const m = typeof h === 'string' ? /^Bearer +(\S+) *$/i.exec(h) : null;
  return m?.[1];
}

/** Equality of two secrets in time independent of where they differ (and of their lengths). */
export function sameSecret(a: string, b: string): boolean {
  const ha = createHash('sha256').update(a, 'utf8').digest();
  const hb = createHash('sha256').update(b, 'utf8').digest();
  return timingSafeEqual(ha, hb);
}

/** The media type of the Content-Type header, lowercase, without parameters. */
export function mediaType(req: IncomingMessage): string {
  return (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
}
