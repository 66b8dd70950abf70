import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mergeIntoModel } from '@lora/adapters';
import { createLoraConfig, f32, type Tensor } from '@lora/core';
import { quantizeModel } from '@lora/quant';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { llamaLinearShape, llamaModuleName } from '../models/llama/config.js';
import { LlamaModel, loadLlama, openLlamaFolder } from '../models/llama/model.js';
import { expectClose } from '../test-utils/parity.js';
import { randomF32, seededRandom } from '../test-utils/random.js';
import {
  randomLlamaWeights,
  tinyConfig,
  tinyConfigJson,
  writeHfModel,
} from '../test-utils/tiny-llama.js';
import { mergedWeights } from './merged.js';

const config = tinyConfig();
const prompt = [1, 5, 9, 2, 7, 3];

function adapter() {
  const rand = seededRandom(5);
  const modules = new Map<string, { A: Tensor; B: Tensor }>();
  for (let l = 0; l < config.numLayers; l++) {
    for (const linear of ['q_proj', 'down_proj'] as const) {
      const [out, inF] = llamaLinearShape(config, linear);
      modules.set(llamaModuleName(l, linear), {
        A: f32([4, inF], randomF32(4 * inF, rand, 0.5)),
        B: f32([out, 4], randomF32(out * 4, rand, 0.5)),
      });
    }
  }
  return {
    config: createLoraConfig({ r: 4, lora_alpha: 8, target_modules: ['q_proj', 'down_proj'] }),
    modules,
    modulesToSave: new Map<string, Tensor>(),
  };
}

describe.each(['bnb', 'ort'] as const)('mergedWeights on a 4-bit folder (%s layout)', (layout) => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'lora-merged-4bit-'));
    await writeHfModel(join(root, 'f32'), tinyConfigJson(), randomLlamaWeights(config, 3));
    await quantizeModel(join(root, 'f32'), join(root, 'q'), { format: 'nf4', layout });
  });
  afterAll(async () => rm(root, { recursive: true, force: true }));

  it('gives the logits of the model `lora merge` writes from the same base and adapter', async () => {
    const a = adapter();
    const { config: c, source } = await openLlamaFolder(join(root, 'q'));
    const merged = await LlamaModel.create(c, mergedWeights(source, [{ adapter: a }]), {
      intraOpNumThreads: 1,
    }).finally(() => source.close());
    const plain = await loadLlama(join(root, 'q'), { intraOpNumThreads: 1 });
    if (layout === 'bnb') {
      await mergeIntoModel(join(root, 'q'), [{ adapter: a }], join(root, 'm'), { residual: false });
      const written = await loadLlama(join(root, 'm'), { intraOpNumThreads: 1 });
      const want = (await written.forward({ inputIds: [prompt] })).logits.data as Float32Array;
      const got = (await merged.forward({ inputIds: [prompt] })).logits.data as Float32Array;
      // Same dequantized weights plus the same deltas: equal to float32 summation order.
      expectClose(got, want, { atol: 1e-5, rtol: 1e-5 }, 'merged 4-bit vs lora merge');
      await written.release();
    }
    const base = (await plain.forward({ inputIds: [prompt] })).logits.data as Float32Array;
    const got = (await merged.forward({ inputIds: [prompt] })).logits.data as Float32Array;
    let d = 0;
    for (let i = 0; i < got.length; i++) d = Math.max(d, Math.abs(got[i] - base[i]));
    expect(d).toBeGreaterThan(1e-2); // the adapter was applied
    for (const m of [merged, plain]) await m.release();
  });
});
