/**
 * The contract of the models fleetgate rolls out, as the rest of the system assumes it: a frame is
 * FEATURES float32 features, a model outputs the probabilities of CLASSES classes, and CRITICAL_CLASS is
 * the one whose miss is a safety event. The analysis, the inference checks, the shadow's safety events and
 * the simulator's frames all take these numbers from here.
 *
 * Pure constants: it must never do I/O nor import anything.
 */
/** Features per frame (float32), the models' input width. */
export const FEATURES = 8;
/**
 * The safety-critical class: a hazard (1). A missed hazard (the model says "none" in front of one) is
 * what a vehicle must never do, and a driver takes over at once; a false alarm is a comfort problem, not
 * a safety one. The fixture models of scripts/make_models.py are binary classifiers with class 1 the
 * hazard, so this is the only class a missed detection of is dangerous.
 */
export const CRITICAL_CLASS = 1;
/** Classes the models output: 0 no hazard, 1 hazard. */
export const CLASSES = 2;
