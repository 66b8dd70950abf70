import { f32, type Tensor, tensor } from '@lora/core';
import { describe, expect, it } from 'vitest';
import {
  checkGradients,
  checkParity,
  expectClose,
  type GradientCheckOptions,
} from '../../test-utils/parity.js';
import { randomF32, seededRandom } from '../../test-utils/random.js';
import { GraphBuilder } from '../builder.js';
import * as op from '../ops.js';
import { gradients } from '../gradients.js';
import { evaluateReference, toRef } from '../reference.js';
import type { Value } from '../types.js';
import { causalAttention } from './attention.js';
import { crossEntropyLoss } from './cross-entropy.js';
import { rmsNorm } from './rms-norm.js';
import { rope } from './rope.js';
import { swiglu } from './swiglu.js';

const rand = seededRandom(23);
const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
const r = (shape: number[], scale = 1) => f32(shape, randomF32(size(shape), rand, scale));
const i64 = (shape: number[], values: number[]) =>
  tensor('i64', shape, BigInt64Array.from(values, BigInt));
const inputs = (g: GraphBuilder, feeds: Record<string, Tensor>) =>
  Object.fromEntries(Object.entries(feeds).map(([k, t]) => [k, g.input(k, t.dtype, [...t.shape])]));
const run = (build: (g: GraphBuilder) => Value, feeds: Record<string, Tensor>) => {
  const g = new GraphBuilder();
  g.output(build(g), 'y');
  const refFeeds = Object.fromEntries(Object.entries(feeds).map(([k, t]) => [k, toRef(t)]));
  return evaluateReference(g.build(), refFeeds).y.data;
};

/**
 * The composite's one backward rule and the per-node rules both pass the gradient check, and the
 * rule is really used: it adds fewer nodes than the per-node chain.
 */
async function checkBothWays(
  build: (g: GraphBuilder) => Value | readonly Value[],
  feeds: Record<string, Tensor>,
  options: GradientCheckOptions = {},
) {
  const composite = await checkGradients(build, feeds, options);
  const perNode = await checkGradients(build, feeds, {
    ...options,
    gradients: { ...options.gradients, regions: false },
  });
  expect(composite.gradientNodes).toBeLessThan(perNode.gradientNodes);
  return { composite, perNode };
}

describe('RMSNorm', () => {
  const feeds = { x: r([2, 3, 8], 2), w: r([8]) };
  const build = (g: GraphBuilder) => {
    const v = inputs(g, feeds);
    return rmsNorm(g, v.x, v.w, 1e-5, 'norm');
  };

  it('forward: x / sqrt(mean(x^2) + eps) * w, in float64 and in onnxruntime', async () => {
    const x = feeds.x.data;
    const want = new Float64Array(x.length);
    for (let row = 0; row < 6; row++) {
      let ms = 0;
      for (let i = 0; i < 8; i++) ms += x[row * 8 + i] ** 2 / 8;
      for (let i = 0; i < 8; i++)
        want[row * 8 + i] = (x[row * 8 + i] / Math.sqrt(ms + 1e-5)) * feeds.w.data[i];
    }
    expectClose(run(build, feeds), want, { atol: 1e-12, rtol: 1e-12 });
    await checkParity(build, feeds);
  });

  it('gradients wrt x and the weight', async () => {
    await checkBothWays(build, feeds);
  });
});

describe('rotary embedding (rotate-half)', () => {
  const D = 6;
  const angles = Array.from({ length: 3 * D }, () => rand() * 6);
  const feeds = {
    x: r([2, 2, 3, D]),
    cos: f32([1, 1, 3, D], angles.map(Math.cos)),
    sin: f32([1, 1, 3, D], angles.map(Math.sin)),
  };
  const build = (g: GraphBuilder) => {
    const v = inputs(g, feeds);
    return rope(g, v.x, v.cos, v.sin, D);
  };

  it('forward: pairs (i, i + D/2) rotate by their angle', async () => {
    const x = feeds.x.data;
    const want = new Float64Array(x.length);
    for (let row = 0; row < 12; row++) {
      const t = row % 3;
      for (let i = 0; i < D; i++) {
        const partner = i < D / 2 ? -x[row * D + i + D / 2] : x[row * D + i - D / 2];
        want[row * D + i] =
          x[row * D + i] * feeds.cos.data[t * D + i] + partner * feeds.sin.data[t * D + i];
      }
    }
    expectClose(run(build, feeds), want, { atol: 1e-12, rtol: 1e-12 });
    await checkParity(build, feeds);
  });

  it('gradients wrt x (cos and sin are tables)', async () => {
    await checkBothWays(build, feeds, { wrt: ['x'] });
  });
});

describe('SwiGLU', () => {
  const feeds = { gate: r([2, 3, 5], 3), up: r([2, 3, 5]) };
  const build = (g: GraphBuilder) => {
    const v = inputs(g, feeds);
    return swiglu(g, v.gate, v.up);
  };

  it('forward: gate * sigmoid(gate) * up', async () => {
    const want = Float64Array.from(
      feeds.gate.data,
      (gt, i) => (gt / (1 + Math.exp(-gt))) * feeds.up.data[i],
    );
    expectClose(run(build, feeds), want, { atol: 1e-12, rtol: 1e-12 });
    await checkParity(build, feeds);
  });

  it('gradients wrt gate and up', async () => {
    await checkBothWays(build, feeds);
  });
});

describe('causal attention with GQA and a padding mask', () => {
  // 4 query heads over 2 kv heads; batch 1 is right-padded (its last key is masked).
  // Left padding would fully mask a query row: float32 then sees -1e9 + score as -1e9 (a
  // uniform row) while float64 keeps the scores, a difference that only exists on rows a
  // training loss weights with 0.
  const [B, nH, kvH, T, D] = [2, 4, 2, 3, 4];
  const heads = { numHeads: nH, numKvHeads: kvH, headDim: D };
  const keyMask = [
    [1, 1, 1],
    [1, 1, 0],
  ];
  const biasValues: number[] = [];
  for (let b = 0; b < B; b++)
    for (let i = 0; i < T; i++)
      for (let j = 0; j < T; j++) biasValues.push(j <= i && keyMask[b][j] ? 0 : -1e9);
  const feeds = {
    q: r([B, nH, T, D], 2),
    k: r([B, kvH, T, D], 2),
    v: r([B, kvH, T, D]),
    bias: f32([B, 1, T, T], biasValues),
  };
  const build = (g: GraphBuilder) => {
    const x = inputs(g, feeds);
    return causalAttention(g, heads, x.q, x.k, x.v, x.bias);
  };

  it('forward: softmax(q kᵀ / sqrt(D) + bias) v per head, kv head = head / (nH / kvH)', async () => {
    const { q, k, v } = feeds;
    const want = new Float64Array(B * T * nH * D);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < nH; h++) {
        const kh = Math.floor(h / (nH / kvH));
        for (let i = 0; i < T; i++) {
          const scores = Array.from({ length: T }, (_, j) => {
            let dot = 0;
            for (let d = 0; d < D; d++)
              dot +=
                q.data[((b * nH + h) * T + i) * D + d] * k.data[((b * kvH + kh) * T + j) * D + d];
            return dot / Math.sqrt(D) + biasValues[(b * T + i) * T + j];
          });
          const max = Math.max(...scores);
          const e = scores.map((s) => Math.exp(s - max));
          const sum = e.reduce((a, c) => a + c, 0);
          for (let d = 0; d < D; d++) {
            let acc = 0;
            for (let j = 0; j < T; j++)
              acc += (e[j] / sum) * v.data[((b * kvH + kh) * T + j) * D + d];
            want[((b * T + i) * nH + h) * D + d] = acc;
          }
        }
      }
    }
    expectClose(run(build, feeds), want, { atol: 1e-12, rtol: 1e-10 });
    await checkParity(build, feeds);
  });

  it('gradients wrt q, k and v (the mask is not differentiated)', async () => {
    await checkBothWays(build, feeds, { wrt: ['q', 'k', 'v'] });
  });
});

describe('cross-entropy with per-token weights', () => {
  const feeds = {
    logits: r([2, 3, 5], 3),
    labels: i64([2, 3], [4, 0, 2, 2, 1, 0]),
    weights: f32([2, 3], [0, 1, 1, 1, 1, 0]),
  };
  const build = (g: GraphBuilder) => {
    const v = inputs(g, feeds);
    return crossEntropyLoss(g, v.logits, v.labels, v.weights).loss;
  };

  it('forward: the weighted sum of -log softmax at the labels, and the weight sum', async () => {
    let want = 0;
    for (let t = 0; t < 6; t++) {
      const row = Array.from(feeds.logits.data.subarray(t * 5, t * 5 + 5));
      const logSum = Math.log(row.reduce((a, x) => a + Math.exp(x), 0));
      want += feeds.weights.data[t] * (logSum - row[Number(feeds.labels.data[t])]);
    }
    expectClose(run(build, feeds), [want], { atol: 1e-12, rtol: 1e-12 });
    const count = run((g) => {
      const v = inputs(g, feeds);
      return crossEntropyLoss(g, v.logits, v.labels, v.weights).count;
    }, feeds);
    expect(Array.from(count)).toEqual([4]);
    await checkParity(build, feeds);
  });

  it('gradient wrt the logits: weight * (softmax - onehot), no one-hot tensor', async () => {
    const { composite } = await checkBothWays(build, feeds, { wrt: ['logits'] });
    expect(composite.ops).not.toContain('OneHot');
  });
});

describe('composites in one block, and the fallback to per-node rules', () => {
  it('norm -> projections -> rope -> attention -> swiglu -> cross-entropy, with fan-out', async () => {
    const [B, T, H, nH, kvH, D, V] = [1, 3, 8, 2, 1, 4, 6];
    const feeds = {
      x: r([B, T, H]),
      norm: r([H]),
      wq: r([H, nH * D]),
      wk: r([H, kvH * D]),
      wv: r([H, kvH * D]),
      wg: r([nH * D, H]),
      wu: r([nH * D, H]),
      labels: i64([B, T], [1, 5, 0]),
      weights: f32([B, T], [1, 1, 1]),
    };
    const angles = Array.from({ length: T * D }, (_, i) => i * 0.3);
    await checkGradients(
      (g) => {
        const v = inputs(g, feeds);
        const cos = g.initializer('cos', f32([1, 1, T, D], angles.map(Math.cos)));
        const sin = g.initializer('sin', f32([1, 1, T, D], angles.map(Math.sin)));
        const bias = g.initializer('bias', f32([1, 1, T, T], [0, -1e9, -1e9, 0, 0, -1e9, 0, 0, 0]));
        const h = rmsNorm(g, v.x, v.norm, 1e-6, 'norm');
        const split = (w: Value, n: number) =>
          op.transpose(g, op.reshape(g, op.matmul(g, h, w), [0, 0, n, D]), [0, 2, 1, 3]);
        const q = rope(g, split(v.wq, nH), cos, sin, D);
        const k = rope(g, split(v.wk, kvH), cos, sin, D);
        const context = causalAttention(
          g,
          { numHeads: nH, numKvHeads: kvH, headDim: D },
          q,
          k,
          split(v.wv, kvH),
          bias,
        );
        const act = swiglu(g, op.matmul(g, context, v.wg), op.matmul(g, context, v.wu));
        // Tied output projection: the query weight read again, transposed (fan-out of wq).
        const logits = op.fusedMatMul(g, op.add(g, act, v.x), v.wq, { transB: true });
        const projected = op.slice(g, logits, -1, 0, V);
        return crossEntropyLoss(g, projected, v.labels, v.weights).loss;
      },
      feeds,
      { wrt: ['x', 'norm', 'wq', 'wk', 'wv', 'wg', 'wu'] },
    );
  });

  it('a region whose inner value is read outside falls back to per-node rules', async () => {
    const feeds = { x: r([2, 3]) };
    const build = (leak: boolean) => (g: GraphBuilder) => {
      const { x } = inputs(g, feeds);
      let inner: Value | undefined;
      const [y] = g.region(
        'square_plus_sin',
        [x],
        () => {
          inner = op.mul(g, x, x);
          return { outputs: [op.add(g, inner, op.sin(g, x))] };
        },
        // A rule that ignores its input: only correct when never used.
        (g, { inputs: [input] }) => [op.mul(g, input as Value, g.scalar(0))],
      );
      return leak ? op.mul(g, y, inner as Value) : y;
    };
    // The leaked inner value forces the per-node rules: the check passes.
    await checkGradients(build(true), feeds);
    // Self-contained, the (wrong) region rule is used: the check fails, proving regions are taken.
    await expect(checkGradients(build(false), feeds)).rejects.toThrow(/directional derivative/);
  });

  it('a loss or wrt value inside a region also makes it fall back', () => {
    const g = new GraphBuilder();
    const x = g.input('x', 'f32', [3]);
    let inner: Value | undefined;
    g.region(
      'sum_of_squares_twice',
      [x],
      () => {
        inner = op.reduceSum(g, op.mul(g, x, x), [], false);
        return { outputs: [op.mul(g, inner, g.scalar(2))] };
      },
      (g, { inputs: [input] }) => [op.mul(g, input as Value, g.scalar(0))],
    );
    const [dx] = gradients(g, inner as Value, [x]);
    g.output(dx, 'dx');
    const out = evaluateReference(g.build(), {
      x: { dtype: 'f32', shape: [3], data: Float64Array.from([1, -2, 0.5]) },
    });
    expect(Array.from(out.dx.data)).toEqual([2, -4, 1]);
  });
});
