/**
 * Canary routing of the gateway (serve/router.ts): a caller keeps its arm between requests, raising the
 * weight only adds callers to the candidate, the candidate's share is the weight within tolerance over
 * 20,000 callers, and the mirror and fault-injection draws are reproducible shares of request ids.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pseudonym } from '../../fleet/pseudonym';
import { chooseArm, isInjectedError, isMirrored } from '../../serve/router';

const KEY = Buffer.from('3c'.repeat(32), 'hex');
const DIGEST = 'a'.repeat(64);
const callers = Array.from({ length: 20_000 }, (_, i) => pseudonym(KEY, `user-${i}`));
const route = (weight: number, salt = 'svc-1:canary') => ({ candidate: { digest: DIGEST }, weight, salt });
const candidates = (weight: number, salt?: string) =>
  new Set(callers.filter((c) => chooseArm(KEY, route(weight, salt), c) === 'candidate'));

describe('chooseArm', () => {
  it('is sticky: the same caller gets the same arm on every call', () => {
    for (const c of callers.slice(0, 500)) {
      const first = chooseArm(KEY, route(30), c);
      for (let i = 0; i < 3; i++) assert.equal(chooseArm(KEY, route(30), c), first);
    }
  });

  it('gives the candidate the weight as a share of callers, within 1.5 points over 20,000', () => {
    for (const w of [1, 5, 30, 60, 90]) {
      const share = (candidates(w).size / callers.length) * 100;
      assert.ok(Math.abs(share - w) < 1.5, `weight ${w}: share ${share.toFixed(2)}%`);
    }
  });

  it('is monotone: raising the weight keeps every caller the candidate had', () => {
    let previous = new Set<string>();
    for (const w of [0, 1, 5, 25, 30, 60, 99.5, 100]) {
      const now = candidates(w);
      for (const c of previous) assert.ok(now.has(c), `weight ${w} dropped a caller`);
      assert.ok(now.size >= previous.size);
      previous = now;
    }
    assert.equal(previous.size, callers.length, 'weight 100 is everyone');
  });

  it('serves production without a candidate or at weight 0, and another salt draws other callers', () => {
    assert.equal(chooseArm(KEY, { weight: 100, salt: 's' }, callers[0]!), 'production');
    assert.equal(candidates(0).size, 0);
    const a = candidates(30, 'rollout-a:canary');
    const b = candidates(30, 'rollout-b:canary');
    const both = [...a].filter((c) => b.has(c)).length;
    // Independent draws overlap on about 30% of 30%: far from the whole set.
    assert.ok(both < a.size * 0.5, `overlap ${both} of ${a.size}`);
  });

  it('depends on the key: another key assigns other callers', () => {
    const other = Buffer.from('4d'.repeat(32), 'hex');
    const differ = callers
      .slice(0, 2000)
      .filter((c) => chooseArm(KEY, route(50), c) !== chooseArm(other, route(50), c));
    assert.ok(differ.length > 500, `${differ.length} of 2000 differ`);
  });
});

describe('isMirrored and isInjectedError', () => {
  const ids = Array.from({ length: 10_000 }, (_, i) => `req-${i}`);
  it('mirror a reproducible share of request ids', () => {
    const picked = ids.filter((id) => isMirrored(KEY, 's', id, 0.25));
    assert.ok(Math.abs(picked.length / ids.length - 0.25) < 0.02, `${picked.length}`);
    assert.deepEqual(
      ids.filter((id) => isMirrored(KEY, 's', id, 0.25)),
      picked,
    );
    assert.equal(ids.filter((id) => isMirrored(KEY, 's', id, 0)).length, 0);
    assert.equal(ids.filter((id) => isMirrored(KEY, 's', id, 1)).length, ids.length);
  });
  it('answer errors for a reproducible share of request ids', () => {
    const failed = ids.filter((id) => isInjectedError(id, 0.1));
    assert.ok(Math.abs(failed.length / ids.length - 0.1) < 0.015, `${failed.length}`);
    assert.deepEqual(
      ids.filter((id) => isInjectedError(id, 0.1)),
      failed,
    );
    assert.equal(ids.filter((id) => isInjectedError(id, undefined)).length, 0);
  });
});
