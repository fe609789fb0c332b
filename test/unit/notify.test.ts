/**
 * The notify activity against a real HTTP receiver on 127.0.0.1: the Slack-compatible body, the
 * signature (over the timestamp, the idempotency key and the body) and idempotency headers, a receiver
 * that verifies with the exported `verifySignature` and refuses replays, which answers are retried
 * (Unavailable) and which are refused for good, the request timeout, and no webhook at all. Also the
 * configuration of the webhook, which refuses http:// but to a loopback host.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ApplicationFailure } from '@temporalio/common';
import { createNotifyActivities, notificationText, verifySignature } from '../../activities/notify';
import type { NotifyInput } from '../../activities/contracts';
import { loadWebhookConfig } from '../../workers/config';
import { ErrorType } from '../../errors';

interface Received {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

/** How the receiver answers the next request; a handler that never ends the response makes it hang. */
let answer: (res: ServerResponse) => void = (res) => res.writeHead(200).end('ok');
const received: Received[] = [];
let server: Server;
let base = '';

before(async () => {
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received.push({
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
      });
      answer(res);
    });
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((ok) => server.close(() => ok()));
});

const secret = 'test-signing-secret';
/** The query string stands for the secret part of a webhook URL: it must never appear in a message. */
const hookPath = '/hooks/T000/B000?token=s3cr3t-token';

const rollback: NotifyInput = {
  event: 'rollback',
  rolloutId: 'r-42',
  cohort: 'hw3/nordic',
  wave: 2,
  phase: 'rollback',
  at: '2026-11-22T06:00:00.000Z',
  reason: 'error_rate Δ=+0.084 [+0.041, +0.127] Λ=2.1e4 ≥ 40 → harm',
  idempotencyKey: 'r-42/17',
};

async function refusal(p: Promise<unknown>): Promise<ApplicationFailure> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof ApplicationFailure, `an ApplicationFailure, got ${String(err)}`);
    return err;
  }
  assert.fail('expected a failure');
}

void test('posts a Slack-compatible JSON body, signed, with the idempotency key', async () => {
  received.length = 0;
  answer = (res) => res.writeHead(200).end('ok');
  const { notify } = createNotifyActivities({ webhook: { url: base + hookPath, secret } });
  assert.deepEqual(await notify(rollback), { sent: true, status: 200 });

  assert.equal(received.length, 1);
  const [r] = received;
  assert.equal(r!.method, 'POST');
  assert.equal(r!.url, hookPath);
  assert.match(String(r!.headers['content-type']), /^application\/json/);
  assert.equal(r!.headers['idempotency-key'], 'r-42/17');
  const sig = String(r!.headers['fleetgate-signature']);
  const t = Number(/^t=(\d+),v1=[0-9a-f]{64}$/.exec(sig)?.[1]);
  assert.ok(Math.abs(t - Date.now() / 1000) < 60, `a current unix timestamp: ${sig}`);
  const expected = createHmac('sha256', secret).update(`${t}\nr-42/17\n${r!.body}`).digest('hex');
  assert.equal(sig, `t=${t},v1=${expected}`, 'HMAC-SHA256 of "<t>\\n<idempotency key>\\n<body>"');
  assert.equal(r!.headers['x-fleetgate-signature'], undefined, 'the body-only signature is not sent');
  assert.deepEqual(verifySignature(secret, r!.headers, r!.body), {
    ok: true,
    timestamp: t,
    idempotencyKey: 'r-42/17',
  });
  assert.equal(verifySignature('another-secret', r!.headers, r!.body).ok, false);

  const body = JSON.parse(r!.body);
  assert.equal(
    body.text,
    'fleetgate r-42: hw3/nordic rolled back (wave 2): error_rate Δ=+0.084 [+0.041, +0.127] Λ=2.1e4 ≥ 40 → harm',
  );
  assert.equal(body.text, notificationText(rollback));
  assert.ok(!body.text.includes('\n'), 'one line');
  assert.equal(body.blocks[0].type, 'section');
  assert.equal(body.blocks[0].text.type, 'mrkdwn');
  assert.deepEqual(body.fleetgate, {
    event: 'rollback',
    rolloutId: 'r-42',
    cohort: 'hw3/nordic',
    wave: 2,
    phase: 'rollback',
    at: rollback.at,
    reason: rollback.reason,
    idempotencyKey: 'r-42/17',
  });
});

void test("Slack's three special characters are escaped in the text; fleetgate's fields keep them", async () => {
  received.length = 0;
  answer = (res) => res.writeHead(204).end();
  const { notify } = createNotifyActivities({ webhook: { url: base + hookPath } });
  const input = { ...rollback, reason: 'p95 <2 ms & latency ratio >1.5\nsecond line' };
  assert.deepEqual(await notify(input), { sent: true, status: 204 });
  const body = JSON.parse(received[0]!.body);
  assert.match(body.text, /p95 &lt;2 ms &amp; latency ratio &gt;1\.5 second line$/);
  assert.equal(body.fleetgate.reason, input.reason);
  assert.equal(received[0]!.headers['fleetgate-signature'], undefined, 'no secret: not signed');
});

void test('a receiver that verifies refuses a replay under a new key, an old timestamp and an edited body', async () => {
  // The receiver as docs/operations.md describes it: verify, then drop a key seen before.
  let receiverNow = Date.now();
  const seen = new Set<string>();
  received.length = 0;
  answer = (res) => {
    const r = received[received.length - 1]!;
    const v = verifySignature(secret, r.headers, r.body, receiverNow);
    if (!v.ok) return void res.writeHead(401).end(v.reason);
    if (seen.has(v.idempotencyKey)) return void res.writeHead(200).end('duplicate');
    seen.add(v.idempotencyKey);
    res.writeHead(200).end('ok');
  };
  const { notify } = createNotifyActivities({ webhook: { url: base + hookPath, secret } });
  assert.deepEqual(await notify(rollback), { sent: true, status: 200 });
  const captured = received[0]!;
  const replay = async (headers: Record<string, string>, body = captured.body) => {
    const res = await fetch(base + hookPath, {
      method: 'POST',
      headers: {
        'Content-Type': 'application/json',
        'Fleetgate-Signature': String(captured.headers['fleetgate-signature']),
        'Idempotency-Key': String(captured.headers['idempotency-key']),
        ...headers,
      },
      body,
    });
    return { status: res.status, text: await res.text() };
  };

  assert.deepEqual(await replay({}), { status: 200, text: 'duplicate' }, 'the same key is dropped');
  const fresh = await replay({ 'Idempotency-Key': 'r-42/9999' });
  assert.equal(fresh.status, 401, 'a new key does not carry the signature');
  assert.match(fresh.text, /no v1 signature matches/);
  const edited = await replay({}, captured.body.replace('harm', 'fine'));
  assert.equal(edited.status, 401, 'an edited body does not verify');
  receiverNow = Date.now() + 301_000;
  const late = await replay({});
  assert.equal(late.status, 401, 'after the 5-minute window the timestamp is refused');
  assert.match(late.text, /outside the 300 s window/);
  receiverNow = Date.now();
  const t = Number(/t=(\d+)/.exec(String(captured.headers['fleetgate-signature']))![1]);
  const moved = await replay({
    'Fleetgate-Signature': String(captured.headers['fleetgate-signature']).replace(`t=${t}`, `t=${t + 60}`),
  });
  assert.equal(moved.status, 401, 'the timestamp is signed');
  assert.equal((await replay({ 'Fleetgate-Signature': '' })).status, 401, 'unsigned');
});

void test('a 500 is Unavailable and retryable, naming the host but not the path or query', async () => {
  answer = (res) => res.writeHead(500).end('upstream down');
  const { notify } = createNotifyActivities({ webhook: { url: base + hookPath, secret } });
  const f = await refusal(notify(rollback));
  assert.equal(f.type, ErrorType.Unavailable);
  assert.equal(f.nonRetryable, false);
  assert.match(f.message, /answered 500: upstream down/);
  assert.ok(f.message.includes(new URL(base).host));
  assert.ok(!f.message.includes('s3cr3t') && !f.message.includes('/hooks/'), f.message);
});

void test('a 429 is retryable, after the Retry-After the receiver asks for', async () => {
  answer = (res) => res.writeHead(429, { 'Retry-After': '7' }).end();
  const { notify } = createNotifyActivities({ webhook: { url: base + hookPath } });
  const f = await refusal(notify(rollback));
  assert.equal(f.type, ErrorType.Unavailable);
  assert.equal(f.nonRetryable, false);
  assert.equal(f.nextRetryDelay, '7s');
});

void test('a 400 is refused for good with a message that says why', async () => {
  answer = (res) => res.writeHead(400).end('invalid_payload');
  const { notify } = createNotifyActivities({ webhook: { url: base + hookPath, secret } });
  const f = await refusal(notify(rollback));
  assert.equal(f.nonRetryable, true);
  assert.equal(f.type, ErrorType.InvalidInput);
  assert.match(f.message, /refused notification r-42\/17 \(rollback\) with 400: invalid_payload/);
  assert.match(f.message, /no retry will change that/);
  assert.ok(f.message.includes(new URL(base).host));
  assert.ok(!f.message.includes('s3cr3t') && !f.message.includes(secret), f.message);
});

void test('a 404 is NotFound and a redirect is not followed; neither is retried', async () => {
  const { notify } = createNotifyActivities({ webhook: { url: base + hookPath } });
  answer = (res) => res.writeHead(404).end();
  const gone = await refusal(notify(rollback));
  assert.equal(gone.type, ErrorType.NotFound);
  assert.equal(gone.nonRetryable, true);
  received.length = 0;
  answer = (res) => res.writeHead(307, { Location: `${base}/elsewhere` }).end();
  const moved = await refusal(notify(rollback));
  assert.equal(moved.nonRetryable, true);
  assert.match(moved.message, /redirect/);
  assert.deepEqual(
    received.map((r) => r.url),
    [hookPath],
    'the signed body is not sent on to the redirect',
  );
});

void test('a receiver that does not answer in time is Unavailable (retried)', async () => {
  const hanging: ServerResponse[] = [];
  answer = (res) => hanging.push(res);
  const { notify } = createNotifyActivities({ webhook: { url: base + hookPath }, timeoutMs: 300 });
  const started = Date.now();
  const f = await refusal(notify(rollback));
  assert.ok(Date.now() - started < 5000, 'the request is cut at its timeout');
  assert.equal(f.type, ErrorType.Unavailable);
  assert.equal(f.nonRetryable, false);
  assert.match(f.message, /did not answer within 0\.3 s/);
  for (const res of hanging) res.destroy();
});

void test('an unreachable receiver is Unavailable (retried)', async () => {
  const closed = createServer();
  await new Promise<void>((ok) => closed.listen(0, '127.0.0.1', ok));
  const port = (closed.address() as AddressInfo).port;
  await new Promise<void>((ok) => closed.close(() => ok()));
  const { notify } = createNotifyActivities({ webhook: { url: `http://127.0.0.1:${port}/hook?token=x` } });
  const f = await refusal(notify(rollback));
  assert.equal(f.type, ErrorType.Unavailable);
  assert.equal(f.nonRetryable, false);
  assert.match(f.message, /unreachable: ECONNREFUSED/);
  assert.ok(!f.message.includes('token'), f.message);
});

void test('without a webhook nothing is sent', async () => {
  received.length = 0;
  const { notify } = createNotifyActivities({});
  assert.deepEqual(await notify(rollback), { sent: false });
  assert.equal(received.length, 0);
});

void test('the webhook comes from FLEETGATE_WEBHOOK_URL and _SECRET; a bad URL is refused without echoing it', () => {
  assert.deepEqual(loadWebhookConfig({ FLEETGATE_WEBHOOK_URL: `${base}/hook` }), { url: `${base}/hook` });
  for (const loopback of ['http://localhost:8080/h', 'http://[::1]:8080/h', 'http://127.1.2.3/h']) {
    assert.deepEqual(loadWebhookConfig({ FLEETGATE_WEBHOOK_URL: loopback }), { url: loopback });
  }
  for (const remote of [
    'http://hooks.example.com/services/T0/B0/s3cr3t?token=s3cr3t',
    'http://user:s3cr3t@hooks.example.com/s3cr3t',
    'http://127.0.0.1.example.com/s3cr3t',
  ]) {
    assert.throws(
      () => loadWebhookConfig({ FLEETGATE_WEBHOOK_URL: remote, FLEETGATE_WEBHOOK_SECRET: 'k' }),
      (e: Error) =>
        /^FLEETGATE_WEBHOOK_URL is http:\/\/ to hooks\.example\.com|^FLEETGATE_WEBHOOK_URL is http:\/\/ to 127\.0\.0\.1\.example\.com/.test(
          e.message,
        ) &&
        /use its https:\/\/ URL \(http:\/\/ is accepted for a loopback host only/.test(e.message) &&
        !e.message.includes('s3cr3t'),
    );
  }
  assert.equal(loadWebhookConfig({}), undefined);
  assert.deepEqual(loadWebhookConfig({ FLEETGATE_WEBHOOK_URL: 'https://hooks.example.com/x' }), {
    url: 'https://hooks.example.com/x',
  });
  assert.deepEqual(
    loadWebhookConfig({ FLEETGATE_WEBHOOK_URL: 'http://127.0.0.1:9/h', FLEETGATE_WEBHOOK_SECRET: 'k' }),
    { url: 'http://127.0.0.1:9/h', secret: 'k' },
  );
  assert.throws(
    () => loadWebhookConfig({ FLEETGATE_WEBHOOK_URL: 'hooks.example.com/T/B/s3cr3t' }),
    (e: Error) => /FLEETGATE_WEBHOOK_URL must be an http/.test(e.message) && !e.message.includes('s3cr3t'),
  );
});
