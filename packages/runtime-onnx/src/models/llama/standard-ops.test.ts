import { createHash } from 'node:crypto';
import { type Tensor, tensor } from '@lora/core';
import { describe, expect, it } from 'vitest';
import type { Graph } from '../../graph/types.js';
import { ModelSession } from '../../session/session.js';
import { randomLlamaWeights, tinyConfig } from '../../test-utils/tiny-llama.js';
import { memoryWeights, type WeightSource } from '../weights.js';
import { LLAMA_LINEARS, type LlamaConfig, llamaModuleName } from './config.js';
import { LLAMA_IO } from './graph.js';
import { buildLlamaModelGraph } from './model.js';

// buildLlamaModelGraph({ ops: 'standard' }): the graph an export writes for any ONNX runtime.
// The runtime's own default ('ort') keeps FusedMatMul on the checkpoint's [out, in] weights.

const configs: [string, LlamaConfig][] = [
  ['untied, with q/k/v/o and MLP biases', tinyConfig({ attention_bias: true, mlp_bias: true })],
  ['tied embeddings', tinyConfig({ tie_word_embeddings: true })],
];

function linearNames(config: LlamaConfig): string[] {
  const names: string[] = [];
  for (let l = 0; l < config.numLayers; l++)
    for (const linear of LLAMA_LINEARS) names.push(`${llamaModuleName(l, linear)}.weight`);
  return names;
}

function digest(weights: ReadonlyMap<string, Tensor>): string {
  const h = createHash('sha256');
  for (const [name, t] of weights) h.update(name).update(bytesOf(t.data));
  return h.digest('hex');
}

function bytesOf(a: ArrayBufferView): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

/** A source that counts its reads. */
function counted(source: WeightSource): WeightSource & { reads: () => number } {
  let reads = 0;
  return {
    ...source,
    read: (name) => {
      reads++;
      return source.read(name);
    },
    reads: () => reads,
  };
}

async function logitsOf(graph: Graph, config: LlamaConfig, ids: number[]): Promise<Float32Array> {
  const session = await ModelSession.fromGraph(graph);
  try {
    const T = ids.length;
    const feeds: Record<string, Tensor> = {
      [LLAMA_IO.inputIds]: tensor('i64', [1, T], BigInt64Array.from(ids, BigInt)),
      [LLAMA_IO.attentionMask]: tensor('i64', [1, T], new BigInt64Array(T).fill(1n)),
      [LLAMA_IO.positionIds]: tensor(
        'i64',
        [1, T],
        BigInt64Array.from(ids, (_, i) => BigInt(i)),
      ),
    };
    const empty = tensor('f32', [1, config.numKvHeads, 0, config.headDim], new Float32Array(0));
    for (let l = 0; l < config.numLayers; l++) {
      feeds[LLAMA_IO.pastKey(l)] = empty;
      feeds[LLAMA_IO.pastValue(l)] = empty;
    }
    return (await session.run(feeds))[LLAMA_IO.logits].data as Float32Array;
  } finally {
    await session.release();
  }
}

describe('buildLlamaModelGraph ops: standard', () => {
  for (const [label, config] of configs) {
    it(`${label}: default-domain nodes only, linears [in, out] = transposed inputs, inputs untouched, logits = the FusedMatMul graph`, async () => {
      const weights = randomLlamaWeights(config, 3);
      const biases = [...weights.keys()].filter((n) => n.endsWith('.bias'));
      expect(biases.length).toBe(config.tieWordEmbeddings ? 0 : config.numLayers * 7);
      const before = digest(weights);
      const standard = await buildLlamaModelGraph(config, memoryWeights(weights), {
        ops: 'standard',
      });
      const ort = await buildLlamaModelGraph(config, memoryWeights(weights));
      expect(digest(weights)).toBe(before);

      const offending = standard.nodes.filter((n) => n.domain !== '').map((n) => n.op);
      expect(offending, `non-standard nodes: ${[...new Set(offending)].join(', ')}`).toEqual([]);
      // The default keeps onnxruntime's operator for every linear and lm_head.
      const fused = ort.nodes.filter((n) => n.op === 'FusedMatMul' && n.domain === 'com.microsoft');
      expect(fused.length).toBe(config.numLayers * 7 + 1);

      const H = config.hiddenSize;
      const V = config.vocabSize;
      const head = config.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
      const linears: [string, Tensor][] = [
        ...linearNames(config).map((n) => [n, weights.get(n)!] as [string, Tensor]),
        ['lm_head.weight', weights.get(head)!],
      ];
      for (const [name, w] of linears) {
        const [rows, cols] = w.shape;
        const got = standard.initializers.get(name)!;
        expect(got.shape, name).toEqual([cols, rows]);
        const src = w.data as Float32Array;
        const want = new Float32Array(rows * cols);
        for (let i = 0; i < rows; i++)
          for (let j = 0; j < cols; j++) want[j * rows + i] = src[i * cols + j];
        expect(Buffer.compare(bytesOf(got.data), bytesOf(want)), name).toBe(0);
        // Multiplied by a standard MatMul, as its second input.
        expect(
          standard.nodes.some((n) => n.op === 'MatMul' && n.inputs[1] === name),
          name,
        ).toBe(true);
        // The onnxruntime form keeps the checkpoint's own bytes, [out, in].
        expect(ort.initializers.get(name)!.shape, name).toEqual([rows, cols]);
      }
      // The embedding keeps [vocab, hidden] for its Gather in both forms.
      expect(standard.initializers.get('model.embed_tokens.weight')!.shape).toEqual([V, H]);

      const ids = [3, 17, 5, 60, 1, 9];
      const a = await logitsOf(standard, config, ids);
      const b = await logitsOf(ort, config, ids);
      let maxErr = 0;
      let spread = 0;
      for (let i = 0; i < a.length; i++) {
        maxErr = Math.max(maxErr, Math.abs(a[i] - b[i]));
        spread = Math.max(spread, Math.abs(b[i] - b[0]));
      }
      expect(maxErr).toBeLessThan(1e-5 * Math.max(1, spread));
      expect(spread).toBeGreaterThan(1e-2);
    });
  }

  it('4-bit quantization on load is refused with LINEAR_NOT_STANDARD before any weight is read', async () => {
    const config = configs[0][1];
    const source = counted(memoryWeights(randomLlamaWeights(config, 4)));
    await expect(
      buildLlamaModelGraph(config, source, { ops: 'standard', quant: 'nf4' }),
    ).rejects.toMatchObject({
      code: 'LINEAR_NOT_STANDARD',
      message: expect.stringMatching(/MatMulNBits \/ MatMulBnb4/),
    });
    expect(source.reads()).toBe(0);
    // onnxruntime's operators take it.
    const graph = await buildLlamaModelGraph(config, source, { quant: 'nf4' });
    expect(graph.nodes.filter((n) => n.op === 'MatMulBnb4').length).toBe(config.numLayers * 7);
  });
});
