/**
 * serve/decode.ts: model outputs that are NaN or Infinity never become a class (the check is before the
 * threshold and the argmax, which would both answer class 0 for NaN), and features that float32 cannot
 * hold after the model's preprocessing are refused, naming the field, the value and the range.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FLOAT32_MAX } from '../../serve/api';
import {
  checkFinite,
  decodeOutputs,
  FeatureRangeError,
  NonFiniteOutputError,
  preprocessRows,
} from '../../serve/decode';

const model = { classes: ['clear', 'hazard'], threshold: 0.5 };

describe('decodeOutputs', () => {
  it('decodes finite outputs by the threshold of class 1, else by argmax', () => {
    const out = decodeOutputs(Float32Array.from([0.7, 0.3, 0.4, 0.6]), 2, model, undefined);
    assert.deepEqual(
      out.map((o) => [o.class, o.label]),
      [
        [0, 'clear'],
        [1, 'hazard'],
      ],
    );
    const three = decodeOutputs(
      Float32Array.from([0.1, 0.2, 0.7]),
      3,
      { classes: ['a', 'b', 'c'] },
      undefined,
    );
    assert.equal(three[0]!.label, 'c');
  });

  it('refuses NaN, Infinity and -Infinity in any output, on either decoding path, naming row and output', () => {
    for (const bad of [NaN, Infinity, -Infinity]) {
      for (const [probs, per, m, row, col] of [
        [[0.7, 0.3, bad, bad], 2, model, 1, 0],
        [[0.7, bad], 2, { classes: ['clear', 'hazard'] }, 0, 1],
        [[0.1, 0.2, bad], 3, { classes: ['a', 'b', 'c'] }, 0, 2],
      ] as const) {
        assert.throws(
          () => decodeOutputs(Float32Array.from(probs), per, m, undefined),
          (err: unknown) => {
            assert.ok(err instanceof NonFiniteOutputError);
            assert.equal(err.row, row);
            assert.equal(err.column, col);
            assert.match(
              err.message,
              new RegExp(`${String(bad)} for row ${row}, output ${col}: not a finite`),
            );
            return true;
          },
          String(bad),
        );
      }
    }
    assert.doesNotThrow(() => checkFinite([0, 1, FLOAT32_MAX], 3));
  });
});

describe('preprocessRows', () => {
  it('applies scale and offset as float32', () => {
    const x = preprocessRows([[1, 2]], { ...model, scale: 2, offset: 1, features: 2 });
    assert.deepEqual(Array.from(x), [3, 5]);
  });

  it('refuses a feature float32 cannot hold, before or after the model preprocessing', () => {
    const cases: [number[][], number, number, string, number, RegExp][] = [
      [
        [[0, 1e39]],
        1,
        0,
        'inputs.0.1',
        1e39,
        /from about -3.4028234663852886e\+38 to 3.4028234663852886e\+38/,
      ],
      [[[0], [-1e39]], 1, 0, 'inputs.1.0', -1e39, /beyond float32 range/],
      // In range, but the preprocessing takes it beyond: the raw range is given.
      [[[2e38]], 10, 0, 'inputs.0.0', 2e38, /from about -3.40282e\+37 to 3.40282e\+37/],
    ];
    for (const [rows, scale, offset, field, value, range] of cases) {
      assert.throws(
        () => preprocessRows(rows, { ...model, scale, offset, features: rows[0]!.length }),
        (err: unknown) => {
          assert.ok(err instanceof FeatureRangeError);
          assert.equal(err.field, field);
          assert.equal(err.value, value);
          assert.match(err.message, range);
          assert.ok(err.message.startsWith(`${field}: ${String(value)} is beyond float32 range`));
          return true;
        },
        field,
      );
    }
  });
});
