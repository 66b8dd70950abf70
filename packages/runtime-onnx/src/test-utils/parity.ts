import { type Tensor, tensor } from '@lora/core';
import { expect } from 'vitest';
import { GraphBuilder } from '../graph/builder.js';
import { isFloat } from '../graph/dtypes.js';
import { type GradientOptions, gradients } from '../graph/gradients.js';
import * as op from '../graph/ops.js';
import { evaluateReference, toRef } from '../graph/reference.js';
import type { Graph, RefTensor, Value } from '../graph/types.js';
import { ModelSession } from '../session/session.js';
import { randomF32, seededRandom } from './random.js';

export interface Tolerance {
  readonly atol?: number;
  readonly rtol?: number;
}

/** Asserts |actual - expected| <= atol + rtol * |expected| elementwise; reports the worst element. */
export function expectClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  { atol = 1e-5, rtol = 1e-4 }: Tolerance = {},
  what = 'values',
): number {
  expect(actual.length, `${what}: length`).toBe(expected.length);
  let worst = -1;
  let worstExcess = 0;
  let maxAbs = 0;
  for (let i = 0; i < expected.length; i++) {
    const err = Math.abs(actual[i] - expected[i]);
    maxAbs = Math.max(maxAbs, err);
    const excess = err - (atol + rtol * Math.abs(expected[i]));
    if (!(excess <= 0) && (worst < 0 || excess > worstExcess || Number.isNaN(excess))) {
      worst = i;
      worstExcess = excess;
    }
  }
  if (worst >= 0) {
    expect.fail(
      `${what}: element ${worst} is ${actual[worst]}, expected ${expected[worst]} (atol ${atol}, rtol ${rtol}; max abs error ${maxAbs})`,
    );
  }
  return maxAbs;
}

/**
 * The one parity check for graph ops (tinygrad's helper_test_op): builds a graph with `build`,
 * runs it in onnxruntime and in the float64 reference interpreter on the same feeds, and asserts
 * every output has the same shape and values within tolerance.
 */
export async function checkParity(
  build: (g: GraphBuilder) => Value | readonly Value[],
  feeds: Readonly<Record<string, Tensor>>,
  tolerance: Tolerance = {},
): Promise<void> {
  const g = new GraphBuilder('parity');
  const outs = build(g);
  for (const o of Array.isArray(outs) ? outs : [outs]) g.output(o as Value);
  const graph = g.build();
  const session = await ModelSession.fromGraph(graph, { intraOpNumThreads: 1 });
  try {
    const got = await session.run(feeds);
    const refFeeds = Object.fromEntries(Object.entries(feeds).map(([k, t]) => [k, toRef(t)]));
    const want = evaluateReference(graph, refFeeds);
    for (const o of graph.outputs) {
      const a = got[o.name];
      const w = want[o.name];
      expect(a.shape, `${o.name}: shape`).toEqual(w.shape);
      const values =
        a.data instanceof BigInt64Array
          ? Float64Array.from(a.data, Number)
          : (a.data as ArrayLike<number>);
      expectClose(values, w.data, tolerance, o.name);
    }
  } finally {
    await session.release();
  }
}

/** Tolerances of {@link checkGradients}; every gradient test states these, and they hold for all ops. */
export const GRADIENT_TOLERANCE = {
  /** Central-difference step, in the units of the (order-1) inputs. */
  fdStep: 1e-5,
  /**
   * |finite difference - analytic| <= fdRtol * sum_i |g_i * u_i| along each random direction u:
   * float64 central differences are good to ~1e-9 at this step, a wrong rule is off by O(1).
   */
  fdRtol: 1e-6,
  /** onnxruntime float32 vs float64 reference, per element: |a - r| <= atol * max(1, max|r|) + rtol * |r|. */
  ortAtol: 1e-5,
  ortRtol: 1e-4,
} as const;

export interface GradientCheckOptions {
  /** Float graph inputs to differentiate (default: every float graph input). Shapes must be static. */
  readonly wrt?: readonly string[];
  /** Random directions for the directional-derivative check (default 3). */
  readonly directions?: number;
  /** Passed to `gradients` (overrides, regions on/off). */
  readonly gradients?: GradientOptions;
  /** Seed of the random output weights and directions (default 1). */
  readonly seed?: number;
  /** Looser onnxruntime tolerance for long float32 chains (state why at the call). */
  readonly ort?: { readonly atol?: number; readonly rtol?: number };
}

/**
 * The one gradient checker for the op set and the composites (tinygrad's helper_test_op with
 * gradients). `build` returns the values to differentiate; the checker makes a scalar loss
 * `sum_k sum(out_k * c_k)` with fixed random `c_k` (so every output element matters, with a
 * different weight), then:
 *
 * 1. evaluates the gradient graph `gradients(loss, wrt)` with the float64 reference interpreter;
 * 2. compares, along random directions u, `sum_i <grad_i, u_i>` with the float64 central
 *    difference `(loss(x + h u) - loss(x - h u)) / 2h` of the forward graph (no per-element loop);
 * 3. runs the same gradient graph in onnxruntime (float32) and compares it with the float64
 *    gradients element by element.
 *
 * Fails the test (vitest `expect`) with the worst mismatch; returns the measured errors.
 */
export async function checkGradients(
  build: (g: GraphBuilder) => Value | readonly Value[],
  feeds: Readonly<Record<string, Tensor>>,
  options: GradientCheckOptions = {},
): Promise<{
  fdError: number;
  ortError: number;
  /** Op types of the forward graph. */
  ops: readonly string[];
  /** How many nodes `gradients` added. */
  gradientNodes: number;
}> {
  const rand = seededRandom(options.seed ?? 1);
  const g = new GraphBuilder('gradcheck');
  const built = build(g);
  const outs = (Array.isArray(built) ? built : [built]) as Value[];
  let loss: Value | undefined;
  for (const out of outs) {
    const shape = out.shape as number[];
    const n = shape.reduce((a, b) => a * b, 1);
    const weights = g.initializer(
      g.uniqueName('loss_weights'),
      tensor('f32', shape, randomF32(n, rand)),
    );
    const term = op.reduceSum(g, op.mul(g, out, weights), [], false);
    loss = loss ? op.add(g, loss, term) : term;
  }
  if (!loss) throw new Error('checkGradients: build returned no values');
  g.output(loss, 'loss');
  const forward = g.build();
  const wrtNames = options.wrt ?? forward.inputs.filter((v) => isFloat(v.dtype)).map((v) => v.name);
  const wrt = wrtNames.map((name) => {
    const v = forward.inputs.find((i) => i.name === name);
    if (!v || !feeds[name]) throw new Error(`checkGradients: "${name}" is not a fed graph input`);
    return v;
  });
  const before = g.graphNodes.length;
  const grads = gradients(g, loss, wrt, options.gradients);
  const gradientNodes = g.graphNodes.length - before;
  for (const [i, d] of grads.entries()) g.output(d, `grad.${wrtNames[i]}`);
  const full = g.build();

  const refFeeds = Object.fromEntries(Object.entries(feeds).map(([k, t]) => [k, toRef(t)]));
  const want = evaluateReference(full, refFeeds);
  const fdError = checkDirectional(
    forward,
    refFeeds,
    wrtNames,
    want,
    rand,
    options.directions ?? 3,
  );
  const ortError = await checkOnnxruntime(full, feeds, want, options.ort);
  return { fdError, ortError, ops: forward.nodes.map((n) => n.op), gradientNodes };
}

function checkDirectional(
  forward: Graph,
  feeds: Record<string, RefTensor>,
  wrt: readonly string[],
  want: Record<string, RefTensor>,
  rand: () => number,
  directions: number,
): number {
  const { fdStep: h, fdRtol } = GRADIENT_TOLERANCE;
  const lossAt = (u: readonly Float64Array[], t: number) => {
    const moved = { ...feeds };
    wrt.forEach((name, i) => {
      const x = feeds[name];
      moved[name] = { ...x, data: x.data.map((v, j) => v + t * u[i][j]) };
    });
    return evaluateReference(forward, moved).loss.data[0];
  };
  let worst = 0;
  for (let d = 0; d < directions; d++) {
    const u = wrt.map((name) => Float64Array.from(feeds[name].data, () => rand() * 2 - 1));
    let analytic = 0;
    let scale = 0;
    wrt.forEach((name, i) => {
      const grad = want[`grad.${name}`].data;
      for (let j = 0; j < grad.length; j++) {
        analytic += grad[j] * u[i][j];
        scale += Math.abs(grad[j] * u[i][j]);
      }
    });
    const fd = (lossAt(u, h) - lossAt(u, -h)) / (2 * h);
    const err = Math.abs(fd - analytic) / Math.max(scale, 1e-12);
    worst = Math.max(worst, err);
    if (!(err <= fdRtol)) {
      expect.fail(
        `gradient check: directional derivative ${analytic} (from the gradient graph) vs ${fd} (central difference), relative error ${err} > ${fdRtol}, direction ${d}`,
      );
    }
  }
  return worst;
}

async function checkOnnxruntime(
  full: Graph,
  feeds: Readonly<Record<string, Tensor>>,
  want: Record<string, RefTensor>,
  tolerance: { atol?: number; rtol?: number } = {},
): Promise<number> {
  const session = await ModelSession.fromGraph(full, { intraOpNumThreads: 1 });
  try {
    const got = await session.run(feeds);
    let worst = 0;
    for (const o of full.outputs) {
      const w = want[o.name];
      const maxRef = w.data.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      const atol = (tolerance.atol ?? GRADIENT_TOLERANCE.ortAtol) * Math.max(1, maxRef);
      const rtol = tolerance.rtol ?? GRADIENT_TOLERANCE.ortRtol;
      expect(got[o.name].shape, `${o.name}: shape`).toEqual(w.shape);
      const err = expectClose(
        got[o.name].data as Float32Array,
        w.data,
        { atol, rtol },
        `onnxruntime ${o.name}`,
      );
      worst = Math.max(worst, err / Math.max(1, maxRef));
    }
    return worst;
  } finally {
    await session.release();
  }
}
