import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { f32, outputMarker, readOutputWriter } from '@lora/core';
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectClose } from '../test-utils/parity.js';
import { randomF32, seededRandom } from '../test-utils/random.js';
import { GraphBuilder } from './builder.js';
import * as op from './ops.js';
import { saveModel, serializeGraph } from './serialize.js';

const { onnx } = onnxProto;
const rand = seededRandom(5);

function graphWithWeights() {
  const g = new GraphBuilder('saved');
  const w = f32([64, 32], randomF32(64 * 32, rand)); // 8 KiB: goes external
  const b = f32([32], randomF32(32, rand)); // 128 B: stays inline
  const x = g.input('x', 'f32', ['n', 64]);
  g.output(op.add(g, op.matmul(g, x, g.initializer('w', w)), g.initializer('b', b)), 'y');
  return { graph: g.build(), w, b };
}

/** y = x w + b in float64, x [n, 64], w [64, 32]. */
function expected(x: Float32Array, w: Float32Array, b: Float32Array, n: number): Float64Array {
  const y = new Float64Array(n * 32);
  for (let r = 0; r < n; r++)
    for (let c = 0; c < 32; c++) {
      let acc = b[c];
      for (let k = 0; k < 64; k++) acc += x[r * 64 + k] * w[k * 32 + c];
      y[r * 32 + c] = acc;
    }
  return y;
}

describe('serialization', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lora-onnx-save-'));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  it('in-memory: large initializers travel as external chunks (views, no copy), small ones inline', () => {
    const { graph, w } = graphWithWeights();
    const s = serializeGraph(graph);
    expect(s.externalData).toHaveLength(1);
    expect(s.externalData[0].data.buffer).toBe(w.data.buffer);
    expect(s.model.length).toBeLessThan(2048);
  });

  for (const externalData of [false, true]) {
    it(`saved to disk (external data ${externalData}) and opened by onnxruntime from the path`, async () => {
      const { graph, w, b } = graphWithWeights();
      const path = join(dir, `m-${externalData}.onnx`);
      const saved = await saveModel(graph, path, {
        externalData,
        metadata: outputMarker('export-onnx'),
      });
      expect(existsSync(`${path}.data`)).toBe(externalData);
      if (externalData) expect((await stat(`${path}.data`)).size).toBe(64 * 32 * 4);
      expect(saved.modelPath).toBe(path);
      // the writer marker: metadata_props as protobufjs decodes them, and as core's header scan reads them
      const model = onnx.ModelProto.decode(await readFile(path));
      expect(model.metadataProps.map((p) => [p.key, p.value])).toEqual([
        ['lora.writer', 'export-onnx'],
      ]);
      expect(readOutputWriter(path)).toBe('export-onnx');
      const session = await ort.InferenceSession.create(path);
      const x = randomF32(3 * 64, rand);
      const out = await session.run({ x: new ort.Tensor('float32', x, [3, 64]) });
      expectClose(out.y.data as Float32Array, expected(x, w.data, b.data, 3), { atol: 1e-5 }, 'y');
      await session.release();
    });
  }
});
