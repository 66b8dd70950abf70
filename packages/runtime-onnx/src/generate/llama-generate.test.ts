import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Tensor, tensor } from '@lora/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LlamaConfig } from '../models/llama/config.js';
import { LLAMA_LINEARS, llamaLinearShape, llamaModuleName } from '../models/llama/config.js';
import { type LlamaModel, loadLlama, openLlamaFolder } from '../models/llama/model.js';
import { readLlamaWeightsF32 } from '../models/llama/prepare.js';
import { referenceForward } from '../models/llama/reference.js';
import { dequantizeLinear, quantizeLinear } from '../models/quantize-linear.js';
import { generate } from './generate.js';
import { loadTokenizer } from './load-tokenizer.js';
import type { Tokenizer } from './tokenizer.js';

const FIXTURE = fileURLToPath(
  new URL('../../../../../shared/fixtures/llama2c-stories260k/', import.meta.url),
);
const present = existsSync(join(FIXTURE, 'model.safetensors'));
if (!present)
  console.warn(
    `SKIPPED: real-model generation tests need ${FIXTURE} (the shared llama2c-stories260k fixture).`,
  );

const PROMPT = 'Once upon a time';
const NEW_TOKENS = 64;

/**
 * The float64 reference's greedy choices along a sequence, in one forward pass (teacher forcing):
 * position t's argmax is the token greedy decoding picks after seq[0..t]. If a greedy run's
 * every token equals the reference argmax before it, the run IS the reference's greedy run.
 * Returns, for each generated position, the reference argmax (ties to the lowest id).
 */
function referenceArgmaxes(
  config: LlamaConfig,
  weights: ReadonlyMap<string, Tensor>,
  prompt: readonly number[],
  generated: readonly number[],
): number[] {
  const V = config.vocabSize;
  const seq = [...prompt, ...generated];
  const logits = referenceForward(config, weights, seq); // [T, V]
  const out: number[] = [];
  for (let t = prompt.length - 1; t < seq.length - 1; t++) {
    const row = logits.subarray(t * V, (t + 1) * V);
    let best = 0;
    for (let v = 1; v < V; v++) if (row[v] > row[best]) best = v;
    out.push(best);
  }
  return out;
}

/** The float weights an nf4 model stands for: every decoder linear quantized, then dequantized. */
function dequantizedWeights(
  config: LlamaConfig,
  f32: ReadonlyMap<string, Tensor<'f32'>>,
): Map<string, Tensor> {
  const out = new Map<string, Tensor>(f32);
  for (let l = 0; l < config.numLayers; l++) {
    for (const linear of LLAMA_LINEARS) {
      const name = `${llamaModuleName(l, linear)}.weight`;
      const [rows, cols] = llamaLinearShape(config, linear);
      const q = quantizeLinear(f32.get(name)!.data, rows, cols, { format: 'nf4' }, name);
      out.set(name, tensor('f32', [rows, cols], dequantizeLinear(q)));
    }
  }
  return out;
}

describe.skipIf(!present)('generate with the real stories260K model', () => {
  let config: LlamaConfig;
  let f32: Map<string, Tensor<'f32'>>;
  let tokenizer: Tokenizer;
  let promptIds: number[];
  const models: LlamaModel[] = [];

  beforeAll(async () => {
    const folder = await openLlamaFolder(FIXTURE);
    config = folder.config;
    f32 = await readLlamaWeightsF32(config, folder.source);
    await folder.source.close();
    tokenizer = await loadTokenizer(FIXTURE);
    promptIds = tokenizer.encode(PROMPT);
  });
  afterAll(async () => {
    for (const m of models) await m.release();
  });

  it(`f32: greedy tokens equal the float64 reference's for ${NEW_TOKENS} tokens, and the text reads as a story`, async () => {
    const model = await loadLlama(FIXTURE, { device: 'cpu' });
    models.push(model);
    const { outputs } = await generate(model.stepper(), tokenizer, {
      prompt: PROMPT,
      maxTokens: NEW_TOKENS,
      temperature: 0,
    });
    const tokens = outputs[0].tokens;
    expect(tokens.length).toBe(NEW_TOKENS);
    expect(outputs[0].finishReason).toBe('length');
    expect(tokens).toEqual(referenceArgmaxes(config, f32, promptIds, tokens));
    expect(outputs[0].promptTokens).toEqual(promptIds);
    // The text is the decoded continuation (spacing of the whole sequence), mostly words.
    const whole = tokenizer.decode([...promptIds, ...outputs[0].tokens]);
    expect(`${PROMPT}${outputs[0].text}`).toBe(whole);
    console.log(`stories260K f32 greedy: ${JSON.stringify(whole)}`);
  });

  it(`nf4: greedy tokens equal the float64 reference over the dequantized nf4 weights for ${NEW_TOKENS} tokens`, async () => {
    const model = await loadLlama(FIXTURE, { device: 'cpu', quant: 'nf4' });
    models.push(model);
    const { outputs } = await generate(model.stepper(), tokenizer, {
      prompt: PROMPT,
      maxTokens: NEW_TOKENS,
      temperature: 0,
    });
    const tokens = outputs[0].tokens;
    expect(tokens.length).toBe(NEW_TOKENS);
    expect(tokens).toEqual(
      referenceArgmaxes(config, dequantizedWeights(config, f32), promptIds, tokens),
    );
    console.log(`stories260K nf4 greedy: ${JSON.stringify(PROMPT + outputs[0].text)}`);
  });

  it("reproduces llama2.c's published greedy sample (doc/stories260K.md) from BOS alone", async () => {
    // `./run stories260K.bin -z tok512.bin -t 0.0`: empty prompt (BOS only), 256 steps (each samples a token),
    // stops early only on BOS. Text copied from llama2.c doc/stories260K.md (MIT).
    const published =
      'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\n' +
      'Lily\'s mom said, "Lily, let\'s go to the park." Lily was sad and didn\'t know what to do. She said, "I want to play with your ball, but I can\'t find it."\n' +
      "Lily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to do.\"\n" +
      "Lily didn't want to help her mom, so she said, \"I'm sorry, mom. I didn't know what to do.\" Her mom said, \"Don't worry, Lily. We can help you.";
    const { outputs } = await generate(models[0].stepper(), tokenizer, {
      prompt: '',
      maxTokens: 256,
      eosIds: [1],
    });
    expect(outputs[0].promptTokens).toEqual([1]);
    expect(outputs[0].text).toBe(published);
    expect(outputs[0].tokens).toHaveLength(256);
  });

  it('a batch of prompts of different lengths gives each row what it gets alone (greedy)', async () => {
    const model = models[0];
    const prompts = ['Once upon a time', 'Tom had a big red ball. One day', 'The cat'];
    const batch = await generate(model.stepper(), tokenizer, { prompt: prompts, maxTokens: 24 });
    for (let r = 0; r < prompts.length; r++) {
      const alone = await generate(model.stepper(), tokenizer, {
        prompt: prompts[r],
        maxTokens: 24,
      });
      expect(batch.outputs[r].tokens, prompts[r]).toEqual(alone.outputs[0].tokens);
    }
  });

  it('sampling with a seed is reproducible, and a stop string cuts the text', async () => {
    const model = models[0];
    const options = { prompt: PROMPT, maxTokens: 40, temperature: 0.9, topP: 0.9, seed: 3 };
    const a = await generate(model.stepper(), tokenizer, options);
    const b = await generate(model.stepper(), tokenizer, options);
    expect(a.outputs[0].tokens).toEqual(b.outputs[0].tokens);
    const stopped = await generate(model.stepper(), tokenizer, {
      prompt: PROMPT,
      maxTokens: NEW_TOKENS,
      stop: ['.'],
    });
    expect(stopped.outputs[0].finishReason).toBe('stop');
    expect(stopped.outputs[0].text).not.toContain('.');
  });
});
