/**
 * The simulated sensor frames: the simulator's vehicles and callers draw their frames with the fixture
 * models' own generative process (policies/frames.ts), re-exported here for the modules of sim/. It adds
 * nothing to that process and must never change it: the fixture models and the bench's golden inputs
 * depend on it bit for bit.
 */
export * from '../policies/frames';
