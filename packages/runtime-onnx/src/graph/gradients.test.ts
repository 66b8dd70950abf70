import { f32 } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { checkGradients } from '../test-utils/parity.js';
import { randomF32, seededRandom } from '../test-utils/random.js';
import * as op from './ops.js';

const rand = seededRandom(11);
const r = (shape: number[], scale = 1) =>
  f32(
    shape,
    randomF32(
      shape.reduce((a, b) => a * b, 1),
      rand,
      scale,
    ),
  );

describe('gradients: smoke', () => {
  it('mul with broadcasting and fan-out, matmul', async () => {
    await checkGradients(
      (g) => {
        const a = g.input('a', 'f32', [2, 3, 4]);
        const b = g.input('b', 'f32', [3, 1]);
        const w = g.input('w', 'f32', [4, 5]);
        const y = op.mul(g, op.add(g, a, b), a);
        return op.matmul(g, op.sigmoid(g, y), w);
      },
      { a: r([2, 3, 4]), b: r([3, 1]), w: r([4, 5]) },
    );
  });
});

describe('every op declares its backward', () => {
  it('has a vjp or is marked non-differentiable', async () => {
    const { OPS } = await import('./opset.js');
    const missing = Object.entries(OPS)
      .filter(([, def]) => !def.vjp && !def.nonDifferentiable)
      .map(([name]) => name);
    expect(missing).toEqual([]);
  });
});
