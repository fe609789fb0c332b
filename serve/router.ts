/**
 * Which arm serves a request, and the gateway's other keyed draws: pure functions of the pseudonym key,
 * the route and an id, so the same caller always gets the same arm, the same request id the same mirror
 * and fault-injection decision, and a test or a replay gets the same answers.
 *
 * The canary assignment is the fleet's (fleet/assignment.ts `assignmentRank`): a caller is the
 * candidate's when its rank under the route's salt, as a share of 2^32, is below weight/100. Raising the
 * weight only adds callers. It never sees a raw caller id: only pseudonyms.
 */
import { createHmac } from 'node:crypto';
import { assignmentRank } from '../fleet/assignment';
import type { Arm, CohortRoute } from './api';

const TWO_32 = 2 ** 32;

/** The arm of a caller (by pseudonym) under a route: 'candidate' only when the route has one. */
export function chooseArm(
  key: Buffer,
  route: Pick<CohortRoute, 'candidate' | 'weight' | 'salt'>,
  callerPseudonym: string,
): Arm {
  if (!route.candidate || !(route.weight > 0)) return 'production';
  if (route.weight >= 100) return 'candidate';
  return assignmentRank(key, route.salt, callerPseudonym) / TWO_32 < route.weight / 100
    ? 'candidate'
    : 'production';
}

/** A uniform draw in [0, 1) keyed by the pseudonym key, a purpose and an id (e.g. a request id). */
export function keyedDraw(key: Buffer, purpose: string, id: string): number {
  return createHmac('sha256', key).update(`${purpose}\0${id}`, 'utf8').digest().readUInt32BE(0) / TWO_32;
}

/** Whether a production-served request is mirrored to the candidate (share `mirror` of request ids). */
export function isMirrored(key: Buffer, salt: string, requestId: string, mirror: number): boolean {
  if (!(mirror > 0)) return false;
  if (mirror >= 1) return true;
  return keyedDraw(key, `mirror:${salt}`, requestId) < mirror;
}

/** Whether fault injection answers this request 500: seeded by the request id, so it is reproducible. */
export function isInjectedError(requestId: string, errorRate: number | undefined): boolean {
  if (!errorRate || !(errorRate > 0)) return false;
  if (errorRate >= 1) return true;
  const h = createHmac('sha256', 'fleetgate-fault-injection').update(requestId, 'utf8').digest();
  return h.readUInt32BE(0) / TWO_32 < errorRate;
}
