import { describe, expect, it } from 'vitest';
import { createRng } from '../random.js';
import { f64, type Tensor } from '../tensor.js';
import { type LoraLinearInputs, loraLinearBackward, loraLinearForward } from './linear.js';

const rng = createRng(5);
const [n, inF, outF, r] = [3, 5, 4, 2];

function inputs(withMask: boolean): LoraLinearInputs {
  return {
    x: f64([n, inF], rng.normalArray(n * inF)),
    W: f64([outF, inF], rng.normalArray(outF * inF)),
    bias: f64([outF], rng.normalArray(outF)),
    A: f64([r, inF], rng.normalArray(r * inF)),
    B: f64([outF, r], rng.normalArray(outF * r)),
    scaling: 1.75,
    dropoutMask: withMask
      ? Float64Array.from({ length: n * inF }, () => (rng.bernoulli(0.3) ? 0 : 1 / 0.7))
      : undefined,
  };
}

/** L = sum(y ⊙ G): dL/dy = G. */
function loss(p: LoraLinearInputs, G: Float64Array): number {
  const { y } = loraLinearForward(p);
  let L = 0;
  for (let i = 0; i < y.length; i++) L += y[i] * G[i];
  return L;
}

/** Central finite difference of L over every element of one input tensor. */
function numericGrad(
  p: LoraLinearInputs,
  G: Float64Array,
  key: 'x' | 'W' | 'A' | 'B' | 'bias',
): Float64Array {
  const t = p[key] as Tensor<'f64'>;
  const out = new Float64Array(t.data.length);
  const eps = 1e-5;
  for (let i = 0; i < t.data.length; i++) {
    const keep = t.data[i];
    t.data[i] = keep + eps;
    const up = loss(p, G);
    t.data[i] = keep - eps;
    const down = loss(p, G);
    t.data[i] = keep;
    out[i] = (up - down) / (2 * eps);
  }
  return out;
}

function relativeError(a: Float64Array, b: Float64Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

describe('LoRA linear reference', () => {
  it('forward: hand example', () => {
    // x = [1, 2], W = I, b = [0.5, 0], A = [[1, 1]], B = [[2], [0]], s = 0.5
    // y = x + b + 0.5 * (1 + 2) * [2, 0] = [1 + 0.5 + 3, 2] = [4.5, 2]
    const { y } = loraLinearForward({
      x: f64([1, 2], [1, 2]),
      W: f64([2, 2], [1, 0, 0, 1]),
      bias: f64([2], [0.5, 0]),
      A: f64([1, 2], [1, 1]),
      B: f64([2, 1], [2, 0]),
      scaling: 0.5,
    });
    expect(Array.from(y)).toEqual([4.5, 2]);
  });

  for (const withMask of [false, true]) {
    it(`backward equals central finite differences${withMask ? ' (with dropout mask)' : ''}`, () => {
      const p = inputs(withMask);
      const G = rng.normalArray(n * outF);
      const g = loraLinearBackward(p, G);
      const pairs: [Float64Array, 'x' | 'W' | 'A' | 'B' | 'bias'][] = [
        [g.dx, 'x'],
        [g.dW, 'W'],
        [g.dA, 'A'],
        [g.dB, 'B'],
        [g.db, 'bias'],
      ];
      for (const [analytic, key] of pairs) {
        expect(relativeError(analytic, numericGrad(p, G, key)), key).toBeLessThan(1e-6);
      }
    });
  }

  it('rejects mismatched shapes', () => {
    const p = inputs(false);
    expect(() => loraLinearForward({ ...p, B: f64([outF, r + 1]) })).toThrow(/shapes disagree/);
    expect(() => loraLinearBackward(p, new Float64Array(1))).toThrow(/dy must have/);
  });
});
