/**
 * serve/event-log.ts durability, on a real directory: `commit` resolves only once the lines are in the
 * file (what the gateway waits for before answering), concurrent commits all resolve, and a pending
 * event (a mirrored request answered before its shadow ended) is in the log after a crash: recovered
 * once, with its shadow marked lost, also when segments rotated meanwhile, and never twice once settled.
 * A crash is an instance abandoned without close(): what it had written is what the file holds.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { GatewayEvent } from '../../serve/api';
import { EventLog } from '../../serve/event-log';

const dirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), 'fleetgate-event-log-'));
  dirs.push(d);
  return d;
};
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const event = (id: string): Omit<GatewayEvent, 'seq'> => ({
  requestId: id,
  tsMs: 1_700_000_000_000,
  cohort: 'web',
  caller: 'f'.repeat(20),
  arm: 'production',
  digest: 'a'.repeat(64),
  pred: 1,
  conf: 0.9,
  latencyMs: 1,
  status: 200,
  failed: false,
});
const lost = { digest: 'b'.repeat(64), failed: false, dropped: true, lost: true };
const text = (dir: string) =>
  readdirSync(join(dir, 'events'))
    .map((f) => readFileSync(join(dir, 'events', f), 'utf8'))
    .join('');
const all = async (log: EventLog) => log.read(0, 50_000);

describe('EventLog durability', () => {
  it('commit resolves once the events are in the file, for every concurrent commit', async () => {
    const dir = tmp();
    // A flush interval longer than the test: only commit writes.
    const log = EventLog.open(dir, { flushMs: 60_000 });
    log.append(event('c-0'));
    await log.commit();
    assert.match(text(dir), /"requestId":"c-0"/);
    const commits = Array.from({ length: 500 }, (_, i) => {
      log.append(event(`c-${i + 1}`));
      return log.commit();
    });
    log.append(event('not-committed'));
    await Promise.all(commits);
    const t = text(dir);
    for (let i = 0; i <= 500; i++) assert.ok(t.includes(`"requestId":"c-${i}"`), `c-${i}`);
    await log.commit();
    assert.equal(await log.commit(), undefined, 'nothing to write: resolves at once');
    await log.close();
  });

  it('syncs before resolving with syncMs 0', async () => {
    const dir = tmp();
    const log = EventLog.open(dir, { flushMs: 60_000, syncMs: 0 });
    log.append(event('s-1'));
    await log.commit();
    assert.match(text(dir), /"requestId":"s-1"/);
    await log.close();
  });

  it('recovers a committed pending event after a crash, once, with its shadow lost', async () => {
    const dir = tmp();
    const crashed = EventLog.open(dir, { flushMs: 60_000 });
    crashed.append(event('before'));
    crashed.appendPending({ ...event('mirrored'), shadow: lost });
    await crashed.commit();
    const again = EventLog.open(dir);
    assert.equal(again.last, 2);
    const events = await all(again);
    assert.deepEqual(
      events.map((e) => [e.seq, e.requestId]),
      [
        [1, 'before'],
        [2, 'mirrored'],
      ],
    );
    assert.deepEqual(events[1]!.shadow, lost);
    assert.equal(again.append(event('after')).seq, 3);
    await again.close();
    const third = EventLog.open(dir);
    assert.deepEqual(
      (await all(third)).map((e) => e.requestId),
      ['before', 'mirrored', 'after'],
      'recovered once',
    );
    await third.close();
  });

  it('keeps a settled pending event once, with the shadow of its settlement', async () => {
    const dir = tmp();
    const log = EventLog.open(dir, { flushMs: 60_000 });
    const p = log.appendPending({ ...event('m'), shadow: lost });
    await log.commit();
    log.append(event('other'));
    const shadow = {
      digest: 'b'.repeat(64),
      pred: 0,
      conf: 0.8,
      latencyMs: 2,
      failed: false,
      dropped: false,
    };
    assert.equal(log.settle(p, { ...event('m'), shadow }).seq, 2);
    await log.commit();
    const again = EventLog.open(dir);
    const events = await all(again);
    assert.deepEqual(
      events.map((e) => e.requestId),
      ['other', 'm'],
    );
    assert.deepEqual(events[1]!.shadow, shadow);
    await again.close();
  });

  it('carries unsettled pending lines into each new segment, so a crash after rotation recovers them', async () => {
    const dir = tmp();
    const crashed = EventLog.open(dir, { segmentBytes: 800, flushMs: 60_000 });
    crashed.appendPending({ ...event('long-shadow'), shadow: lost });
    const settled = crashed.appendPending({ ...event('short-shadow'), shadow: lost });
    await crashed.commit();
    for (let i = 0; i < 30; i++) {
      crashed.append(event(`r-${i}`));
      if (i === 3) crashed.settle(settled, { ...event('short-shadow'), shadow: { ...lost, lost: false } });
      await crashed.commit();
    }
    assert.ok(readdirSync(join(dir, 'events')).length > 3, 'segments rotated');
    const again = EventLog.open(dir, { segmentBytes: 800 });
    const events = await all(again);
    const ids = events.map((e) => e.requestId);
    assert.equal(ids.filter((id) => id === 'long-shadow').length, 1);
    assert.equal(ids.filter((id) => id === 'short-shadow').length, 1);
    assert.equal(events.find((e) => e.requestId === 'long-shadow')!.shadow!.lost, true);
    assert.equal(events.find((e) => e.requestId === 'short-shadow')!.shadow!.lost, false);
    assert.equal(ids.length, 32);
    assert.deepEqual(
      events.map((e) => e.seq),
      Array.from({ length: 32 }, (_, i) => i + 1),
    );
    await again.close();
  });
});
