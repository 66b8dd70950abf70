import { f32, tensor } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { checkParity } from '../test-utils/parity.js';
import { randomF32, seededRandom } from '../test-utils/random.js';
import { GraphBuilder } from './builder.js';
import * as op from './ops.js';
import { OPS } from './opset.js';
import { evaluateReference } from './reference.js';

const rand = seededRandom(7);
const r = (shape: number[], scale = 1) =>
  f32(
    shape,
    randomF32(
      shape.reduce((a, b) => a * b, 1),
      rand,
      scale,
    ),
  );
const i64 = (shape: number[], values: number[]) =>
  tensor('i64', shape, BigInt64Array.from(values, BigInt));

describe('op set: onnxruntime matches the float64 reference, one line per case', () => {
  it('elementwise binary ops broadcast like NumPy', async () => {
    for (const fn of [op.add, op.sub, op.mul, op.div]) {
      await checkParity((g) => fn(g, g.input('a', 'f32', [2, 3, 4]), g.input('b', 'f32', [3, 1])), {
        a: r([2, 3, 4]),
        b: r([3, 1]),
      });
    }
  });

  it('LessOrEqual gives bools', async () => {
    await checkParity(
      (g) => op.lessOrEqual(g, g.input('a', 'f32', [4, 1]), g.input('b', 'f32', [1, 5])),
      {
        a: f32([4, 1], [0, 1, 2, 3]),
        b: f32([1, 5], [0, 1, 1.5, 2, 4]),
      },
    );
  });

  it('unary ops', async () => {
    for (const fn of [op.neg, op.sigmoid, op.cos, op.sin, op.identity]) {
      await checkParity((g) => fn(g, g.input('x', 'f32', [3, 5])), { x: r([3, 5], 3) });
    }
    await checkParity((g) => op.sqrt(g, g.input('x', 'f32', [7])), {
      x: f32([7], [0.5, 1, 2, 3, 4, 9, 100]),
    });
    await checkParity((g) => op.reciprocal(g, g.input('x', 'f32', [4])), {
      x: f32([4], [0.5, -1, 2, 3]),
    });
  });

  it('Cast between int64, float and bool', async () => {
    await checkParity((g) => op.cast(g, g.input('x', 'i64', [4]), 'f32'), {
      x: i64([4], [0, -3, 7, 1]),
    });
    await checkParity((g) => op.cast(g, g.input('x', 'f32', [4]), 'i64'), {
      x: f32([4], [0.5, -3.7, 7.2, 1]),
    });
  });

  it('MatMul with batch broadcasting', async () => {
    await checkParity(
      (g) => op.matmul(g, g.input('a', 'f32', [2, 3, 5, 4]), g.input('b', 'f32', [3, 4, 6])),
      {
        a: r([2, 3, 5, 4]),
        b: r([3, 4, 6]),
      },
    );
  });

  it('Gather rows (embedding lookup) and along another axis', async () => {
    await checkParity(
      (g) => op.gather(g, g.input('e', 'f32', [6, 3]), g.input('i', 'i64', [2, 2])),
      {
        e: r([6, 3]),
        i: i64([2, 2], [5, 0, 2, 2]),
      },
    );
    await checkParity(
      (g) => op.gather(g, g.input('x', 'f32', [2, 4, 3]), g.input('i', 'i64', []), 1),
      {
        x: r([2, 4, 3]),
        i: i64([], [-1]),
      },
    );
  });

  it('Reshape (0 and -1), Transpose, Unsqueeze, Concat, Slice', async () => {
    await checkParity((g) => op.reshape(g, g.input('x', 'f32', [2, 3, 4]), [0, -1, 2]), {
      x: r([2, 3, 4]),
    });
    await checkParity((g) => op.transpose(g, g.input('x', 'f32', [2, 3, 4]), [1, 2, 0]), {
      x: r([2, 3, 4]),
    });
    await checkParity((g) => op.unsqueeze(g, g.input('x', 'f32', [2, 3]), [0, -1]), {
      x: r([2, 3]),
    });
    await checkParity(
      (g) => op.concat(g, [g.input('a', 'f32', [2, 1, 3]), g.input('b', 'f32', [2, 2, 3])], 1),
      {
        a: r([2, 1, 3]),
        b: r([2, 2, 3]),
      },
    );
    await checkParity((g) => op.slice(g, g.input('x', 'f32', [3, 8]), -1, 2, 1000), {
      x: r([3, 8]),
    });
    await checkParity((g) => op.slice(g, g.input('x', 'f32', [3, 8]), 1, -1, -1000, -2), {
      x: r([3, 8]),
    });
  });

  it('Concat with an empty input (an empty KV cache)', async () => {
    await checkParity(
      (g) =>
        op.concat(g, [g.input('a', 'f32', [1, 2, 'p', 3]), g.input('b', 'f32', [1, 2, 2, 3])], 2),
      {
        a: f32([1, 2, 0, 3], []),
        b: r([1, 2, 2, 3]),
      },
    );
  });

  it('Shape, Range and ReduceMean, Softmax', async () => {
    await checkParity(
      (g) => {
        const x = g.input('x', 'f32', [3, 'n']);
        const n = op.gather(g, op.shapeOf(g, x), g.constant([1], 'i64', []));
        return op.range(g, g.scalar(1, 'i64'), n, g.scalar(1, 'i64'));
      },
      { x: r([3, 6]) },
    );
    await checkParity((g) => op.reduceMean(g, g.input('x', 'f32', [2, 3, 4]), [-1]), {
      x: r([2, 3, 4]),
    });
    await checkParity((g) => op.reduceMean(g, g.input('x', 'f32', [2, 3, 4]), [0, 2], false), {
      x: r([2, 3, 4]),
    });
    await checkParity((g) => op.softmax(g, g.input('x', 'f32', [2, 3, 5]), -1), {
      x: r([2, 3, 5], 4),
    });
    await checkParity((g) => op.softmax(g, g.input('x', 'f32', [2, 3, 5]), 1), {
      x: r([2, 3, 5], 4),
    });
  });

  it('Equal, Exp, Log, Where', async () => {
    await checkParity((g) => op.equal(g, g.input('a', 'i64', [4, 1]), g.input('b', 'i64', [3])), {
      a: i64([4, 1], [0, 1, 2, 3]),
      b: i64([3], [1, 3, 5]),
    });
    await checkParity((g) => op.exp(g, g.input('x', 'f32', [3, 5])), { x: r([3, 5], 3) });
    await checkParity((g) => op.log(g, g.input('x', 'f32', [5])), {
      x: f32([5], [0.01, 0.5, 1, 2, 1000]),
    });
    await checkParity(
      (g) => {
        const c = op.lessOrEqual(g, g.input('c', 'f32', [3, 1]), g.scalar(0));
        return op.where(g, c, g.input('x', 'f32', [2, 3, 4]), g.input('y', 'f32', [4]));
      },
      { c: r([3, 1]), x: r([2, 3, 4]), y: r([4]) },
    );
  });

  it('ReduceSum (axes input, all axes), ReduceMax, LogSoftmax', async () => {
    const x = r([2, 3, 4], 3);
    await checkParity((g) => op.reduceSum(g, g.input('x', 'f32', [2, 3, 4]), [0, -1]), { x });
    await checkParity((g) => op.reduceSum(g, g.input('x', 'f32', [2, 3, 4]), [1], false), { x });
    await checkParity((g) => op.reduceSum(g, g.input('x', 'f32', [2, 3, 4]), [], false), { x });
    await checkParity((g) => op.reduceMax(g, g.input('x', 'f32', [2, 3, 4]), [1]), { x });
    await checkParity((g) => op.reduceMax(g, g.input('x', 'f32', [2, 3, 4]), [0, 2], false), {
      x,
    });
    await checkParity((g) => op.logSoftmax(g, g.input('x', 'f32', [2, 3, 5]), -1), {
      x: r([2, 3, 5], 4),
    });
    await checkParity((g) => op.logSoftmax(g, g.input('x', 'f32', [2, 3, 5]), 1), {
      x: r([2, 3, 5], 4),
    });
  });

  it('Expand (constant and Shape-node shapes), Squeeze, Pad', async () => {
    await checkParity((g) => op.expand(g, g.input('x', 'f32', [3, 1]), g.constant([2, 3, 4])), {
      x: r([3, 1]),
    });
    await checkParity(
      (g) => {
        const like = g.input('like', 'f32', ['b', 3, 4]);
        const e = op.expand(g, g.input('x', 'f32', [1, 4]), op.shapeOf(g, like));
        return op.add(g, e, like);
      },
      { x: r([1, 4]), like: r([2, 3, 4]) },
    );
    await checkParity((g) => op.squeeze(g, g.input('x', 'f32', [1, 3, 1, 2]), [0, -2]), {
      x: r([1, 3, 1, 2]),
    });
    await checkParity((g) => op.pad(g, g.input('x', 'f32', [2, 3]), [1, 0, 2, 3]), {
      x: r([2, 3]),
    });
  });

  it('FusedMatMul with every transpose flag, alpha and batch broadcasting', async () => {
    for (const [transA, transB] of [
      [false, false],
      [false, true],
      [true, false],
      [true, true],
    ]) {
      const aShape = transA ? [2, 3, 4, 5] : [2, 3, 5, 4];
      const bShape = transB ? [6, 4] : [4, 6];
      await checkParity(
        (g) =>
          op.fusedMatMul(g, g.input('a', 'f32', aShape), g.input('b', 'f32', bShape), {
            transA,
            transB,
            alpha: 0.5,
          }),
        { a: r(aShape), b: r(bShape) },
      );
    }
  });

  it('GatherElements, ScatterElements (none, add with repeats), GatherND, ScatterND add', async () => {
    await checkParity(
      (g) => op.gatherElements(g, g.input('x', 'f32', [3, 4]), g.input('i', 'i64', [3, 2]), 1),
      { x: r([3, 4]), i: i64([3, 2], [0, 3, -1, 1, 2, 2]) },
    );
    for (const reduction of ['none', 'add'] as const) {
      await checkParity(
        (g) =>
          op.scatterElements(
            g,
            g.input('x', 'f32', [3, 4]),
            g.input('i', 'i64', [2, 4]),
            g.input('u', 'f32', [2, 4]),
            0,
            reduction,
          ),
        {
          x: r([3, 4]),
          i: i64([2, 4], [0, 2, 1, 1, 2, 0, 0, 2]),
          u: r([2, 4]),
        },
      );
    }
    await checkParity(
      (g) => op.gatherND(g, g.input('x', 'f32', [5, 3]), g.input('i', 'i64', [2, 2, 1])),
      { x: r([5, 3]), i: i64([2, 2, 1], [4, 0, 4, 2]) },
    );
    await checkParity(
      (g) =>
        op.scatterND(
          g,
          g.input('x', 'f32', [5, 3]),
          g.input('i', 'i64', [2, 2, 1]),
          g.input('u', 'f32', [2, 2, 3]),
          'add',
        ),
      { x: r([5, 3]), i: i64([2, 2, 1], [4, 0, 4, 2]), u: r([2, 2, 3]) },
    );
  });

  it('every op in the set has a parity case above or in the 4-bit tests', () => {
    const covered = new Set([
      ...[
        'Add',
        'Sub',
        'Mul',
        'Div',
        'LessOrEqual',
        'Neg',
        'Sqrt',
        'Reciprocal',
        'Sigmoid',
        'Cos',
        'Sin',
      ],
      ...[
        'Identity',
        'Cast',
        'MatMul',
        'Gather',
        'Reshape',
        'Transpose',
        'Unsqueeze',
        'Concat',
        'Slice',
      ],
      ...['Shape', 'Range', 'ReduceMean', 'Softmax', 'MatMulNBits', 'MatMulBnb4'],
      ...['Equal', 'Exp', 'Log', 'Where', 'ReduceSum', 'ReduceMax', 'LogSoftmax', 'Expand'],
      ...['Squeeze', 'Pad', 'FusedMatMul', 'GatherElements', 'ScatterElements', 'GatherND'],
      ...['ScatterND'],
    ]);
    expect(Object.keys(OPS).sort()).toEqual([...covered].sort());
  });
});

describe('reference interpreter on hand-computed values', () => {
  it('matmul, softmax and reduce give textbook numbers', () => {
    const g = new GraphBuilder();
    const a = g.input('a', 'f32', [2, 2]);
    const b = g.input('b', 'f32', [2, 2]);
    g.output(op.matmul(g, a, b), 'mm');
    g.output(op.softmax(g, a), 'sm');
    g.output(op.reduceMean(g, a, [1], false), 'mean');
    const out = evaluateReference(g.build(), {
      a: { dtype: 'f32', shape: [2, 2], data: Float64Array.from([1, 2, 3, 4]) },
      b: { dtype: 'f32', shape: [2, 2], data: Float64Array.from([5, 6, 7, 8]) },
    });
    expect(Array.from(out.mm.data)).toEqual([19, 22, 43, 50]);
    const e = Math.exp(1);
    expect(out.sm.data[0]).toBeCloseTo(1 / (1 + e), 12);
    expect(Array.from(out.mean.data)).toEqual([1.5, 3.5]);
  });

  it('names shape errors at build time with the node', () => {
    const g = new GraphBuilder();
    const a = g.input('a', 'f32', [2, 3]);
    const b = g.input('b', 'f32', [4, 5]);
    expect(() => op.matmul(g, a, b, 'q_proj')).toThrow(
      /MatMul node "q_proj": inner dimensions differ/,
    );
    expect(() => op.add(g, a, b)).toThrow(/do not broadcast/);
    expect(() => g.node('Conv', [a])).toThrow(/not in the graph builder's op set/);
    expect(() => g.output(a, 'y', ['batch', 4])).toThrow(
      /output "y" is \[2, 3\], declared \[batch, 4\]/,
    );
    expect(g.output(a, 'z', [2, 'n']).shape).toEqual([2, 'n']);
  });
});
