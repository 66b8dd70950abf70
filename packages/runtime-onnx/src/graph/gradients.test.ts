import { f32, type Tensor, tensor } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { ModelSession } from '../session/session.js';
import {
  checkGradients,
  expectClose,
  GRADIENT_TOLERANCE,
  type GradientCheckOptions,
} from '../test-utils/parity.js';
import { emitLinear } from '../models/linear.js';
import { quantizeLinear } from '../models/quantize-linear.js';
import { randomF32, seededRandom } from '../test-utils/random.js';
import { GraphBuilder } from './builder.js';
import { gradients } from './gradients.js';
import * as op from './ops.js';
import { OPS, type VjpRule } from './opset.js';
import { evaluateReference, toRef } from './reference.js';
import type { Value } from './types.js';

const rand = seededRandom(11);
const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
const r = (shape: number[], scale = 1) => f32(shape, randomF32(size(shape), rand, scale));
/** Values in [lo, hi): for Sqrt, Log, Div denominators. */
const away = (shape: number[], lo: number, hi: number) =>
  f32(
    shape,
    Array.from({ length: size(shape) }, () => lo + rand() * (hi - lo)),
  );
const i64 = (shape: number[], values: number[]) =>
  tensor('i64', shape, BigInt64Array.from(values, BigInt));

/** Op types every checked graph used: the coverage test at the end reads it. */
const covered = new Set<string>();
async function check(
  build: (g: GraphBuilder) => Value | readonly Value[],
  feeds: Record<string, Tensor>,
  options?: GradientCheckOptions,
) {
  const result = await checkGradients(build, feeds, options);
  for (const o of result.ops) covered.add(o);
  return result;
}

/** One input per feed, declared with the feed's dtype and shape. */
const inputs = (g: GraphBuilder, feeds: Record<string, Tensor>) =>
  Object.fromEntries(Object.entries(feeds).map(([k, t]) => [k, g.input(k, t.dtype, [...t.shape])]));

describe(`gradients equal float64 central differences (rtol ${GRADIENT_TOLERANCE.fdRtol}) and onnxruntime float32 equals float64`, () => {
  it('binary ops with broadcasting on both sides', async () => {
    const feeds = { a: r([2, 3, 4]), b: r([3, 1]) };
    for (const fn of [op.add, op.sub, op.mul]) {
      await check((g) => {
        const x = inputs(g, feeds);
        return fn(g, x.a, x.b);
      }, feeds);
    }
    const divFeeds = { a: r([1, 3, 4]), b: away([2, 3, 1], 0.5, 2) };
    await check((g) => {
      const x = inputs(g, divFeeds);
      return op.div(g, x.a, x.b);
    }, divFeeds);
  });

  it('unary ops', async () => {
    const feeds = { x: r([3, 5], 2) };
    for (const fn of [op.neg, op.sigmoid, op.cos, op.sin, op.exp, op.identity]) {
      await check((g) => fn(g, inputs(g, feeds).x), feeds);
    }
    const positive = { x: away([3, 5], 0.3, 3) };
    for (const fn of [op.sqrt, op.log, op.reciprocal]) {
      await check((g) => fn(g, inputs(g, positive).x), positive);
    }
  });

  it('fan-out: a value used three times accumulates its gradients', async () => {
    const feeds = { x: r([4, 3]) };
    await check((g) => {
      const { x } = inputs(g, feeds);
      return op.mul(g, op.add(g, x, op.sin(g, x)), x);
    }, feeds);
  });

  it('Cast: float to float passes the gradient, to int64 carries none', async () => {
    const feeds = { x: r([2, 3], 3) };
    await check((g) => {
      const { x } = inputs(g, feeds);
      const roundTrip = op.cast(g, op.mul(g, op.cast(g, x, 'f64'), g.scalar(2, 'f64')), 'f32');
      const truncated = op.cast(g, op.cast(g, x, 'i64'), 'f32');
      return op.mul(g, roundTrip, op.add(g, truncated, x));
    }, feeds);
  });

  it('MatMul: batch broadcasting both ways, and a 2-D weight against a batched input', async () => {
    const batched = { a: r([2, 3, 5, 4]), b: r([3, 4, 6]) };
    await check((g) => {
      const x = inputs(g, batched);
      return op.matmul(g, x.a, x.b);
    }, batched);
    const linear = { x: r([2, 3, 4]), w: r([4, 5]) };
    await check((g) => {
      const x = inputs(g, linear);
      return op.matmul(g, x.x, x.w);
    }, linear);
  });

  it('FusedMatMul with every transpose flag and alpha', async () => {
    for (const [transA, transB] of [
      [false, false],
      [false, true],
      [true, false],
      [true, true],
    ]) {
      const feeds = {
        a: r(transA ? [2, 4, 3] : [2, 3, 4]),
        b: r(transB ? [5, 4] : [4, 5]),
        c: r(transB ? [2, 5, 4] : [2, 4, 5]),
      };
      await check((g) => {
        const x = inputs(g, feeds);
        return [
          op.fusedMatMul(g, x.a, x.b, { transA, transB, alpha: 0.7 }),
          op.fusedMatMul(g, x.a, x.c, { transA, transB, alpha: -1.5 }),
        ];
      }, feeds);
    }
  });

  it('Gather: embedding rows used twice scatter-add; another axis with a negative index', async () => {
    const feeds = { e: r([6, 3]), ids: i64([2, 3], [5, 0, 2, 2, 5, 1]) };
    await check((g) => {
      const x = inputs(g, feeds);
      return op.gather(g, x.e, x.ids);
    }, feeds);
    const feeds2 = { x: r([2, 4, 3]), i: i64([2], [-1, 1]) };
    await check((g) => {
      const x = inputs(g, feeds2);
      return op.gather(g, x.x, x.i, 1);
    }, feeds2);
  });

  it('GatherElements, ScatterElements (none, add), GatherND, ScatterND (none, add)', async () => {
    const ge = { x: r([3, 4]), i: i64([3, 2], [0, 3, -1, 1, 2, 2]) };
    await check((g) => {
      const x = inputs(g, ge);
      return op.gatherElements(g, x.x, x.i, 1);
    }, ge);
    for (const reduction of ['none', 'add'] as const) {
      const se = {
        x: r([3, 4]),
        i: i64([2, 4], [0, 2, 1, 1, 2, 0, 0, 2]),
        u: r([2, 4]),
      };
      await check((g) => {
        const x = inputs(g, se);
        return op.scatterElements(g, x.x, x.i, x.u, 0, reduction);
      }, se);
      const sn = { x: r([5, 3]), i: i64([2, 1], [4, 1]), u: r([2, 3]) };
      await check((g) => {
        const x = inputs(g, sn);
        return op.scatterND(g, x.x, x.i, x.u, reduction);
      }, sn);
    }
    const gn = { x: r([5, 3]), i: i64([2, 2, 1], [4, 0, 4, 2]) };
    await check((g) => {
      const x = inputs(g, gn);
      return op.gatherND(g, x.x, x.i);
    }, gn);
  });

  it('Where (broadcast X and Y), Expand, Pad', async () => {
    const feeds = { c: r([3, 1]), x: r([2, 3, 4]), y: r([4]) };
    await check(
      (g) => {
        const v = inputs(g, feeds);
        return op.where(g, op.lessOrEqual(g, v.c, g.scalar(0)), v.x, v.y);
      },
      feeds,
      { wrt: ['x', 'y'] },
    );
    const e = { x: r([3, 1]) };
    await check((g) => op.expand(g, inputs(g, e).x, g.constant([2, 3, 4])), e);
    const p = { x: r([2, 3]) };
    await check((g) => op.pad(g, inputs(g, p).x, [1, 0, 2, 3]), p);
  });

  it('Reshape, Squeeze, Unsqueeze, Transpose, Concat, Slice', async () => {
    const feeds = { x: r([2, 3, 4]), y: r([2, 1, 4]) };
    await check((g) => {
      const v = inputs(g, feeds);
      const reshaped = op.reshape(g, v.x, [0, -1, 2]);
      const moved = op.transpose(g, v.x, [1, 2, 0]);
      const squeezed = op.unsqueeze(g, op.squeeze(g, v.y, [1]), [0]);
      const joined = op.concat(g, [v.y, v.x, v.y], 1);
      const sliced = op.slice(g, joined, -1, 1, 3);
      return [reshaped, moved, squeezed, sliced];
    }, feeds);
  });

  it('reductions and softmaxes', async () => {
    const feeds = { x: r([2, 3, 4], 2) };
    await check((g) => {
      const { x } = inputs(g, feeds);
      return [
        op.reduceMean(g, x, [-1]),
        op.reduceMean(g, x, [0, 2], false),
        op.reduceSum(g, x, [1]),
        op.reduceSum(g, x, [], false),
        op.reduceMax(g, x, [1], false),
        op.softmax(g, x, 1),
        op.logSoftmax(g, x, -1),
      ];
    }, feeds);
  });

  it('tied embeddings: the gradient from the lm_head product and the lookup add up', async () => {
    const feeds = { e: r([7, 4]), ids: i64([2, 3], [1, 6, 1, 0, 3, 6]) };
    await check(
      (g) => {
        const v = inputs(g, feeds);
        const hidden = op.sigmoid(g, op.gather(g, v.e, v.ids)); // [2, 3, 4]
        return op.fusedMatMul(g, hidden, v.e, { transB: true }); // [2, 3, 7]
      },
      feeds,
      { wrt: ['e'] },
    );
  });
});

describe('gradients: 4-bit matmuls take their input gradient from an override', () => {
  const N = 4;
  const K = 32;
  const formats = [
    { format: 'int4', op: 'MatMulNBits' },
    { format: 'nf4', op: 'MatMulBnb4' },
  ] as const;
  for (const { format, op: opType } of formats) {
    const weight = quantizeLinear(randomF32(N * K, rand), N, K, { format, blockSize: 32 }, 'w');
    const build = (g: GraphBuilder) =>
      op.sigmoid(g, emitLinear(g, 'w', g.input('x', 'f32', [2, 3, K]), weight));
    // deq(W)^T [K, N], read from the forward reference op itself: x = identity gives I · deq(W)^T.
    const identity = f32(
      [K, K],
      Array.from({ length: K * K }, (_, i) => (i % (K + 1) === 0 ? 1 : 0)),
    );
    const eye = new GraphBuilder();
    eye.output(emitLinear(eye, 'w', eye.input('x', 'f32', [K, K]), weight), 'wt');
    const deqT = evaluateReference(eye.build(), { x: toRef(identity) }).wt;

    it(`${opType} (${format}): without an override, gradients() names the node and the option`, () => {
      const g = new GraphBuilder();
      const loss = op.reduceSum(g, build(g), [], false);
      expect(() => gradients(g, loss, [g.valueOf('x') as Value])).toThrow(
        new RegExp(`${opType} node ".*": .*overrides: \\{ ${opType}: rule \\}`),
      );
    });

    it(`${opType} (${format}): with an override dX = dY · deq(W) the gradient checks out`, async () => {
      const dequantizedInGraph: VjpRule = (g, { grads: [dy] }) => [
        op.fusedMatMul(
          g,
          dy as Value,
          g.initializer(g.uniqueName('deq_wt'), f32([K, N], Float32Array.from(deqT.data))),
          { transB: true },
        ),
      ];
      await check(
        build,
        { x: r([2, 3, K]) },
        {
          gradients: { overrides: { [opType]: dequantizedInGraph } },
        },
      );
    });
  }
});

describe('gradients: errors and options', () => {
  it('a wrt value the loss does not use: an error by default, zeros on request', () => {
    const g = new GraphBuilder();
    const a = g.input('a', 'f32', [2, 3]);
    const unused = g.input('unused', 'f32', [4]);
    const loss = op.reduceSum(g, op.mul(g, a, a), [], false);
    expect(() => gradients(g, loss, [a, unused])).toThrow(/does not depend on "unused"/);
    const [, zeros] = gradients(g, loss, [a, unused], { unreachable: 'zeros' });
    g.output(zeros, 'zeros');
    const out = evaluateReference(g.build(), {
      a: toRef(r([2, 3])),
      unused: toRef(r([4])),
    });
    expect(Array.from(out.zeros.data)).toEqual([0, 0, 0, 0]);
  });

  it('a loss with several elements needs a seed; integer values have no gradient', () => {
    const g = new GraphBuilder();
    const a = g.input('a', 'f32', [2, 3]);
    const ids = g.input('ids', 'i64', [2]);
    expect(() => gradients(g, op.mul(g, a, a), [a])).toThrow(/not one element/);
    const loss = op.reduceSum(g, a, [], false);
    expect(() => gradients(g, loss, [ids])).toThrow(
      /"ids" is i64: gradients are built for f32 and f64/,
    );
  });

  it('only the nodes between loss and wrt are differentiated', () => {
    const g = new GraphBuilder();
    const a = g.input('a', 'f32', [3]);
    const frozen = g.input('frozen', 'f32', [3]);
    const unrelated = op.exp(g, frozen); // feeds the loss but does not depend on a
    const loss = op.reduceSum(g, op.mul(g, op.sin(g, a), unrelated), [], false);
    const before = g.graphNodes.length;
    gradients(g, loss, [a]);
    const added = g.graphNodes.slice(before).map((n) => n.op);
    // ReduceSum -> Unsqueeze, Expand; Mul -> Mul (d/da only); Sin -> Cos, Mul. Nothing for exp(frozen).
    expect(added.sort()).toEqual(['Cos', 'Expand', 'Mul', 'Mul', 'Unsqueeze'].sort());
  });
});

describe('gradients: graph shape of the backward of a linear', () => {
  it('x · W with W an initializer: dX is one FusedMatMul(transB = 1) on W, no Transpose', () => {
    const g = new GraphBuilder();
    const x = g.input('x', 'f32', [2, 3, 4]);
    const w = g.initializer('w', r([4, 5]));
    const loss = op.reduceSum(g, op.matmul(g, x, w), [], false);
    const before = g.graphNodes.length;
    gradients(g, loss, [x]);
    const added = g.graphNodes.slice(before);
    expect(added.map((n) => n.op).filter((o) => o !== 'Unsqueeze' && o !== 'Expand')).toEqual([
      'FusedMatMul',
    ]);
    const product = added.find((n) => n.op === 'FusedMatMul');
    expect(product?.inputs[1]).toBe('w');
    expect(product?.attrs.transB).toEqual({ int: 1 });
  });
});

describe('the checker catches a wrong rule', () => {
  const feeds = { a: r([2, 3]), b: r([3]) };
  const build = (g: GraphBuilder) => {
    const v = inputs(g, feeds);
    return op.sigmoid(g, op.mul(g, v.a, v.b));
  };
  const mulRule = OPS.Mul.vjp as VjpRule;

  it('passes with the real Mul rule', async () => {
    await check(build, feeds);
  });

  it('fails when the Mul rule has a sign swapped', async () => {
    const signSwapped: VjpRule = (g, ctx) => {
      const [da, db] = mulRule(g, ctx);
      return [da && op.neg(g, da), db];
    };
    await expect(
      checkGradients(build, feeds, { gradients: { overrides: { Mul: signSwapped } } }),
    ).rejects.toThrow(/directional derivative .* relative error/);
  });

  it('fails when a rule forgets to sum over broadcast axes', async () => {
    const noUnbroadcast: VjpRule = (g, { inputs: [a, b], grads: [dy] }) => [
      op.mul(g, dy as Value, b as Value),
      op.mul(g, dy as Value, a as Value),
    ];
    await expect(
      checkGradients(build, feeds, { gradients: { overrides: { Mul: noUnbroadcast } } }),
    ).rejects.toThrow(/Gradient of "b" from Mul.* is f32 \[2, 3\], the value is f32 \[3\]/);
  });
});

describe('coverage', () => {
  it('every differentiable op of OPS was gradient-checked above', () => {
    const differentiable = Object.entries(OPS)
      .filter(([, def]) => !def.nonDifferentiable)
      .map(([name]) => name);
    expect(differentiable.filter((name) => !covered.has(name))).toEqual([]);
  });

  it('every op has a vjp or is marked non-differentiable', () => {
    const missing = Object.entries(OPS)
      .filter(([, def]) => !def.vjp && !def.nonDifferentiable)
      .map(([name]) => name);
    expect(missing).toEqual([]);
  });
});

describe('gradients with a symbolic batch dim', () => {
  it('Reshape, Expand, ReduceMean and broadcasting backward through Shape nodes', async () => {
    const build = (batch: number | string) => {
      const g = new GraphBuilder();
      const x = g.input('x', 'f32', [batch, 3, 4]);
      const w = g.input('w', 'f32', [12]);
      const flat = op.reshape(g, x, [0, -1]); // [batch, 12]
      const y = op.mul(g, op.sigmoid(g, flat), w);
      const centered = op.sub(g, y, op.reduceMean(g, y, [0]));
      const loss = op.reduceSum(g, op.mul(g, centered, centered), [], false);
      const [dx, dw] = gradients(g, loss, [x, w]);
      g.output(dx, 'dx');
      g.output(dw, 'dw');
      return g.build();
    };
    const symbolic = build('batch');
    expect(symbolic.outputs[0].shape).toEqual(['batch', 3, 4]);
    const x = r([2, 3, 4]);
    const w = r([12]);
    const feeds = { x: toRef(x), w: toRef(w) };
    const got = evaluateReference(symbolic, feeds);
    const want = evaluateReference(build(2), feeds);
    expect(Array.from(got.dx.data)).toEqual(Array.from(want.dx.data));
    expect(Array.from(got.dw.data)).toEqual(Array.from(want.dw.data));
    const session = await ModelSession.fromGraph(symbolic, { intraOpNumThreads: 1 });
    try {
      const ort = await session.run({ x, w });
      expectClose(ort.dx.data as Float32Array, want.dx.data, { atol: 1e-5, rtol: 1e-4 }, 'dx');
      expectClose(ort.dw.data as Float32Array, want.dw.data, { atol: 1e-5, rtol: 1e-4 }, 'dw');
    } finally {
      await session.release();
    }
  });
});

describe('gradients: backward node names', () => {
  it('name the forward node they differentiate', () => {
    const g = new GraphBuilder();
    const x = g.input('x', 'f32', [2, 4]);
    const w = g.initializer('w', r([4, 3]));
    const y = op.matmul(g, op.sigmoid(g, x), w, 'q_proj');
    gradients(g, op.reduceSum(g, y, [], false), [x]);
    const names = g.graphNodes.map((n) => n.name);
    expect(names).toContain('grad/q_proj/FusedMatMul');
    expect(names.some((n) => n.startsWith('grad/Sigmoid/'))).toBe(true);
  });
});
