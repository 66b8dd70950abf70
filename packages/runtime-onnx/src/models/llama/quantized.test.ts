import { writeFile } from 'node:fs/promises';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Tensor, tensor, type TensorToWrite, writeSafetensors } from '@lora/core';
import {
  dequantizeBnb4,
  dequantizeMatMulNBits,
  matMulNBitsEntries,
  quantizeBnb4,
  quantizeMatMulNBits,
  writeBnb4StateDict,
  type Bnb4Weight,
} from '@lora/quant';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectClose } from '../../test-utils/parity.js';
import { randomLlamaWeights, tinyConfigJson, writeHfModel } from '../../test-utils/tiny-llama.js';
import { LLAMA_LINEARS, llamaModuleName, parseLlamaConfig } from './config.js';
import { loadLlama } from './model.js';
import { referenceForward } from './reference.js';

// The 4-bit kernels dequantize exactly (table value x float32 scale) and accumulate in float32,
// so against a float64 forward over the dequantized weights the error stays at float32 level.
const TOL = { atol: 2e-4, rtol: 2e-4 };

const json = tinyConfigJson({
  hidden_size: 64,
  intermediate_size: 96,
  num_attention_heads: 4,
  num_key_value_heads: 2,
});
const config = parseLlamaConfig(json);
const weights = randomLlamaWeights(config, 11);
const tokens = [2, 9, 33, 17, 60, 4];

let root: string;
let floatDir: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'lora-llama-q4-'));
  floatDir = join(root, 'float');
  await writeHfModel(floatDir, json, weights);
});
afterAll(async () => rm(root, { recursive: true, force: true }));

const linearNames = () =>
  Array.from({ length: config.numLayers }, (_, l) =>
    LLAMA_LINEARS.map((lin) => `${llamaModuleName(l, lin)}.weight`),
  ).flat();

/** The model's weights with every decoder linear replaced by `dequantized(name, w)`. */
function withDequantized(f: (name: string, w: Tensor<'f32'>) => Float32Array): Map<string, Tensor> {
  const out = new Map<string, Tensor>(weights);
  for (const name of linearNames()) {
    const w = weights.get(name) as Tensor<'f32'>;
    out.set(name, tensor('f32', w.shape, f(name, w)));
  }
  return out;
}

describe.each(['nf4', 'fp4', 'int4', 'uint4'] as const)('quantized on load: %s', (format) => {
  it('logits equal the float64 forward over the dequantized weights, and differ from the float model', async () => {
    const model = await loadLlama(floatDir, { quant: format, intraOpNumThreads: 1 });
    try {
      const { logits } = await model.forward({ inputIds: [tokens] });
      const deq = withDequantized((name, w) => {
        const [N, K] = w.shape;
        if (format === 'nf4' || format === 'fp4')
          return dequantizeBnb4(quantizeBnb4(w.data, w.shape, { format, name }));
        return dequantizeMatMulNBits(quantizeMatMulNBits(w.data, N, K, { format, name }));
      });
      expectClose(logits.data, referenceForward(config, deq, tokens), TOL, `${format} logits`);
      // The 4-bit path is really taken: the float model's logits are measurably different.
      const floatRef = referenceForward(config, weights, tokens);
      let maxDiff = 0;
      for (let i = 0; i < floatRef.length; i++)
        maxDiff = Math.max(maxDiff, Math.abs(floatRef[i] - logits.data[i]));
      expect(maxDiff).toBeGreaterThan(1e-2);
    } finally {
      await model.release();
    }
  });
});

describe('pre-quantized folders (lora quantize output)', () => {
  it('bitsandbytes state dict with double quantization runs through MatMulBnb4', async () => {
    const dir = join(root, 'bnb');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'config.json'), JSON.stringify(json));
    const q = new Map<string, Bnb4Weight>();
    const plain = new Map<string, Tensor>();
    for (const [name, t] of weights) {
      if (linearNames().includes(name)) {
        q.set(
          name,
          quantizeBnb4(t.data as Float32Array, t.shape, { format: 'nf4', doubleQuant: true, name }),
        );
      } else plain.set(name, t);
    }
    await writeBnb4StateDict(join(dir, 'model.safetensors'), q, plain);
    const model = await loadLlama(dir, { intraOpNumThreads: 1 });
    try {
      const { logits } = await model.forward({ inputIds: [tokens] });
      const deq = withDequantized((name) => dequantizeBnb4(q.get(name) as Bnb4Weight));
      expectClose(logits.data, referenceForward(config, deq, tokens), TOL, 'bnb folder logits');
    } finally {
      await model.release();
    }
  });

  it('onnxruntime layout (uint4 MatMulNBits) runs through MatMulNBits; a wrong stored shape is named', async () => {
    const dir = join(root, 'ort');
    const { mkdir } = await import('node:fs/promises');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'config.json'), JSON.stringify(json));
    const entries: TensorToWrite[] = [];
    const deqByName = new Map<string, Float32Array>();
    for (const [name, t] of weights) {
      if (linearNames().includes(name)) {
        const [N, K] = t.shape;
        const w = quantizeMatMulNBits(t.data as Float32Array, N, K, {
          format: 'uint4',
          blockSize: 16,
          name,
        });
        deqByName.set(name, dequantizeMatMulNBits(w));
        entries.push(...matMulNBitsEntries(name, w, t.shape, 'f32'));
      } else entries.push({ name, dtype: t.dtype, shape: t.shape, data: t.data });
    }
    await writeSafetensors(join(dir, 'model.safetensors'), entries);
    const model = await loadLlama(dir, { intraOpNumThreads: 1 });
    try {
      const { logits } = await model.forward({ inputIds: [tokens] });
      const deq = withDequantized((name) => deqByName.get(name) as Float32Array);
      expectClose(logits.data, referenceForward(config, deq, tokens), TOL, 'ort folder logits');
    } finally {
      await model.release();
    }
    // The same folder under a config with another intermediate size: the stored shape is named.
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...json, intermediate_size: 80 }));
    await expect(loadLlama(dir)).rejects.toThrow(
      /quantized tensor "model.layers.0.mlp.gate_proj.weight" has shape \[96, 64\], the config implies \[80, 64\]/,
    );
  });
});

describe('int4 with int8 activations (accuracy_level 4)', () => {
  it('is opt-in, sets the attribute, and stays near the dequantized float forward (activation rounding only)', async () => {
    const { buildLlamaModelGraph } = await import('./model.js');
    const { memoryWeights } = await import('../weights.js');
    const graph = await buildLlamaModelGraph(config, memoryWeights(weights), {
      quant: { format: 'int4', accuracyLevel: 4 },
    });
    const nbits = graph.nodes.filter((n) => n.op === 'MatMulNBits');
    expect(nbits).toHaveLength(7 * config.numLayers);
    expect(nbits.map((n) => n.attrs.accuracy_level)).toEqual(nbits.map(() => ({ int: 4 })));
    const plain = await buildLlamaModelGraph(config, memoryWeights(weights), { quant: 'int4' });
    expect(plain.nodes.some((n) => 'accuracy_level' in n.attrs)).toBe(false);

    const model = await loadLlama(floatDir, {
      quant: { format: 'int4', accuracyLevel: 4 },
      intraOpNumThreads: 1,
    });
    try {
      const { logits } = await model.forward({ inputIds: [tokens] });
      const deq = withDequantized((name, w) => {
        const [N, K] = w.shape;
        return dequantizeMatMulNBits(quantizeMatMulNBits(w.data, N, K, { format: 'int4', name }));
      });
      const want = referenceForward(config, deq, tokens);
      // int8 activations (one scale per block) add ~1% relative error per layer: a loose bound.
      const scale = Math.max(...want.map(Math.abs));
      expectClose(logits.data, want, { atol: 0.05 * scale, rtol: 0 }, 'int4 + int8 activations');
    } finally {
      await model.release();
    }
  });
});
