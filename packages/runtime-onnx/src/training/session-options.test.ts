import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tensor } from '@lora/core';
import onnxProto from 'onnx-proto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { GraphBuilder } from '../graph/builder.js';
import * as op from '../graph/ops.js';
import type { Graph } from '../graph/types.js';
import { emitDequantizedWeight } from '../models/dequantize-graph.js';
import { emitLinear } from '../models/linear.js';
import { quantizeLinear } from '../models/quantize-linear.js';
import { ModelSession, type SessionOptions } from '../session/session.js';
import { randomF32, seededRandom } from '../test-utils/random.js';
import { TRAINING_OPTIMIZATION } from './session-options.js';

const { onnx } = onnxProto;
const FLOAT = onnx.TensorProto.DataType.FLOAT;
const UINT8 = onnx.TensorProto.DataType.UINT8;

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lora-train-opt-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The initializers (name, ONNX type, element count) and op types of the model onnxruntime actually runs. */
async function optimizedModel(graph: Graph, optimization: SessionOptions['optimization']) {
  const path = join(dir, `optimized-${Math.random().toString(36).slice(2)}.onnx`);
  const session = await ModelSession.fromGraph(graph, {
    intraOpNumThreads: 1,
    optimization: { ...optimization, optimizedModelFilePath: path },
  });
  await session.release();
  const model = onnx.ModelProto.decode(await readFile(path));
  const initializers = (model.graph?.initializer ?? []).map((t) => ({
    name: t.name ?? '',
    type: t.dataType ?? 0,
    elements: (t.dims ?? []).reduce((n: number, d) => n * Number(d), 1),
  }));
  const ops = (model.graph?.node ?? []).map((n) => n.opType ?? '');
  return { initializers, ops };
}

const N = 64;
const K = 128;

/** A 4-bit linear's forward, the backward dX = dY deq(W), and a dense linear's backward dX = dY W. */
function trainingLikeGraph(): Graph {
  const rand = seededRandom(5);
  const g = new GraphBuilder('training-like');
  const x = g.input('x', 'f32', [4, K]);
  const dy = g.input('dy', 'f32', [4, N]);
  const nf4 = quantizeLinear(randomF32(N * K, rand), N, K, { format: 'nf4' }, 'q');
  g.output(emitLinear(g, 'q', x, nf4), 'y');
  g.output(op.matmul(g, dy, emitDequantizedWeight(g, 'q', nf4)), 'dx');
  const wT = g.initializer('dense.weight_t', tensor('f32', [K, N], randomF32(N * K, rand)));
  g.output(op.matmul(g, x, wT), 'y_dense');
  g.output(op.matmul(g, dy, op.transpose(g, wT, [1, 0])), 'dx_dense');
  return g.build();
}

describe('session options of training graphs', () => {
  it('keep 4-bit weights packed and W single (ConstantFolding off)', async () => {
    const { initializers, ops } = await optimizedModel(trainingLikeGraph(), TRAINING_OPTIMIZATION);
    const floatsOfSize = (n: number) =>
      initializers.filter((t) => t.type === FLOAT && t.elements === n).map((t) => t.name);
    // Packed bytes and absmax remain; no float32 [N, K] appears besides the one dense weight.
    expect(initializers.find((t) => t.name === 'q.weight_bnb4')).toMatchObject({
      type: UINT8,
      elements: (N * K) / 2,
    });
    expect(floatsOfSize(N * K)).toEqual(['dense.weight_t']);
    // The dequantize runs at run time; the transposed dense product reads the one W.
    expect(ops).toContain('Gather');
    expect(ops).toContain('MatMulBnb4');
    expect(ops).toContain('FusedMatMul');
  });

  it('the default level would fold the dequantize into a float32 copy of W (why the option exists)', async () => {
    const { initializers, ops } = await optimizedModel(trainingLikeGraph(), { level: 'all' });
    const floatCopies = initializers.filter((t) => t.type === FLOAT && t.elements === N * K);
    expect(floatCopies.length).toBeGreaterThanOrEqual(2);
    expect(ops).not.toContain('Gather');
  });

  it('gives the same results as an unoptimized session', async () => {
    const graph = trainingLikeGraph();
    const rand = seededRandom(9);
    const feeds = {
      x: tensor('f32', [4, K], randomF32(4 * K, rand)),
      dy: tensor('f32', [4, N], randomF32(4 * N, rand)),
    };
    const run = async (optimization: SessionOptions['optimization']) => {
      const s = await ModelSession.fromGraph(graph, { intraOpNumThreads: 1, optimization });
      try {
        return await s.run(feeds);
      } finally {
        await s.release();
      }
    };
    const trained = await run(TRAINING_OPTIMIZATION);
    const plain = await run({ level: 'disabled' });
    for (const name of ['y', 'dx', 'y_dense', 'dx_dense']) {
      const a = trained[name].data as Float32Array;
      const b = plain[name].data as Float32Array;
      const worst = a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);
      expect(worst, name).toBeLessThan(1e-4);
    }
  });
});
