import type { Tensor } from '@lora/core';
import { expect } from 'vitest';
import { GraphBuilder } from '../graph/builder.js';
import { evaluateReference, toRef } from '../graph/reference.js';
import type { Value } from '../graph/types.js';
import { ModelSession } from '../session/session.js';

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
