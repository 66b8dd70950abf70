import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { castFloat, type Tensor } from '@lora/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomF32, seededRandom } from '../../test-utils/random.js';
import { randomLlamaWeights, tinyConfigJson, writeHfModel } from '../../test-utils/tiny-llama.js';
import { folderWeights, memoryWeights } from '../weights.js';
import { parseLlamaConfig } from './config.js';
import { LlamaModel, loadLlama } from './model.js';
import { Float32Chunks, widenF32 } from './prepare.js';

let root: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'lora-stream-load-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('Float32Chunks', () => {
  // 1000 values in chunks of 96: ten full chunks and a partial one; two buffers used in turn.
  for (const dtype of ['bf16', 'f16', 'f32'] as const) {
    it(`${dtype}: the chunks, concatenated, are the whole tensor widened at once`, async () => {
      const values = randomF32(1000, seededRandom(dtype.length), 3);
      const stored = castFloat({ dtype: 'f32', shape: [1000], data: values }, dtype) as Tensor;
      const bytes = new Uint8Array(
        stored.data.buffer,
        stored.data.byteOffset,
        stored.data.byteLength,
      );
      const chunks = new Float32Chunks(async (name, byteOffset, into) => {
        expect(name).toBe('w');
        into.set(bytes.subarray(byteOffset, byteOffset + into.length));
      }, 96);
      const got: number[] = [];
      const buffers = new Set<ArrayBufferLike>();
      for await (const c of chunks.of('w', dtype, 1000)) {
        got.push(...c);
        buffers.add(c.buffer);
      }
      expect(new Float32Array(got)).toEqual(widenF32(stored));
      expect(buffers.size).toBe(2);
    });
  }
});

describe('loading streams float tensors from files: same session as loading them whole', () => {
  const tokens = [[1, 17, 5, 63, 22, 9, 40]];
  const cases: [string, Record<string, unknown>, 'f32' | 'f16' | 'bf16', boolean][] = [
    ['bf16, untied', {}, 'bf16', false],
    ['f16, tied, sharded', { tie_word_embeddings: true }, 'f16', true],
    ['f32, q/k/v bias', { model_type: 'qwen2', architectures: ['Qwen2ForCausalLM'] }, 'f32', false],
  ];
  for (const [label, overrides, dtype, sharded] of cases) {
    it(`${label}: logits identical bit for bit`, async () => {
      const json = tinyConfigJson(overrides);
      const config = parseLlamaConfig(json);
      const dir = join(root, label.replace(/\W+/g, '-'));
      await writeHfModel(dir, json, randomLlamaWeights(config, 7), { dtype, sharded });
      // The folder's tensors in memory: a source without readInto, loaded the non-streaming way.
      const files = await folderWeights(dir);
      const whole = new Map<string, Tensor>();
      for (const name of files.names()) whole.set(name, await files.read(name));
      await files.close();
      expect(files.readInto).toBeTypeOf('function');
      expect(memoryWeights(whole).readInto).toBeUndefined();

      const streamed = await loadLlama(dir);
      const reference = await LlamaModel.create(config, memoryWeights(whole));
      try {
        const a = (await streamed.forward({ inputIds: tokens })).logits.data;
        const b = (await reference.forward({ inputIds: tokens })).logits.data;
        expect(a.length).toBe(tokens[0].length * config.vocabSize);
        expect(
          Buffer.compare(
            Buffer.from(a.buffer, a.byteOffset, a.byteLength),
            Buffer.from(b.buffer, b.byteOffset, b.byteLength),
          ),
        ).toBe(0);
      } finally {
        await streamed.release();
        await reference.release();
      }
    });
  }
});
