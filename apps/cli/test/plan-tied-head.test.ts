import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadLlama } from '@lora/runtime-onnx';
import { WeightFile } from '@lora/runtime-onnx/internal';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { runCli } from '../src/test-utils/run-cli.js';
import { writeRandomLlamaFolder } from '../src/test-utils/synthetic-model.js';

/**
 * `lora plan`'s "lora generate" row against what the runtime really holds for a tied lm_head.
 * The observation is independent of the plan: a real `loadLlama` is run and the bytes of the
 * weight file its session maps (the weights, each stored once) are read when the file is closed.
 * Every weight size here is a multiple of the file's 4 KiB alignment, so the file's length is
 * exactly the sum of the distinct weights it holds.
 */

/** hidden 1024: even a norm (1024 f32) fills whole 4 KiB pages. */
const BASE = {
  model_type: 'llama',
  hidden_size: 1024,
  intermediate_size: 256,
  num_attention_heads: 8,
  num_key_value_heads: 1,
  num_hidden_layers: 1,
  vocab_size: 256,
};
/** The head's (= the embedding's) float32 bytes. */
const HEAD_BYTES = BASE.vocab_size * BASE.hidden_size * 4;

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'lora-plan-tied-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});
afterEach(() => {
  vi.restoreAllMocks();
});

/** A model folder (config.json + f32 weights) with the head tied or not. */
async function modelFolder(tied: boolean): Promise<string> {
  const config = { ...BASE, tie_word_embeddings: tied };
  const dir = join(work, tied ? 'tied' : 'untied');
  await writeRandomLlamaFolder(dir, config, 'f32', tied ? 3 : 5);
  return dir;
}

/** Bytes of the weight file a real session of the model maps (recorded as the file closes). */
async function sessionWeightBytes(dir: string): Promise<number> {
  const sizes: number[] = [];
  const close = WeightFile.prototype.close;
  vi.spyOn(WeightFile.prototype, 'close').mockImplementation(async function (this: WeightFile) {
    sizes.push(this.bytes);
    return close.call(this);
  });
  const model = await loadLlama(dir);
  try {
    // the session runs: the weights it was given are the ones it uses
    const out = await model.forward({ inputIds: [[1, 2, 3]] });
    expect(out.logits.shape).toEqual([1, 3, BASE.vocab_size]);
  } finally {
    await model.release();
  }
  vi.restoreAllMocks();
  expect(sizes.length).toBeGreaterThan(0);
  return sizes[sizes.length - 1];
}

/** `lora plan DIR --json`: the "lora generate" row. */
async function planGenerate(dir: string): Promise<{ weights: number; total: number }> {
  const r = await runCli(['plan', dir, '--json']);
  expect(r.code, r.stderr).toBe(0);
  const plan = JSON.parse(r.stdout) as {
    scenarios: { name: string; memory: { weights: number; total: number } }[];
  };
  const row = plan.scenarios.find((s) => s.name === 'generate');
  if (!row) throw new Error('no generate row');
  return row.memory;
}

describe('lora plan counts a tied lm_head as the runtime holds it', () => {
  it('tied and untied differ in the plan by exactly what the session holds in addition', async () => {
    const tied = await modelFolder(true);
    const untied = await modelFolder(false);
    const heldTied = await sessionWeightBytes(tied);
    const heldUntied = await sessionWeightBytes(untied);
    // The runtime holds a tied head once: the untied model's session holds exactly its head more.
    expect(heldUntied - heldTied).toBe(HEAD_BYTES);
    const planTied = await planGenerate(tied);
    const planUntied = await planGenerate(untied);
    expect(planUntied.weights - planTied.weights).toBe(heldUntied - heldTied);
    expect(planUntied.total - planTied.total).toBe(heldUntied - heldTied);
    // and the row's weights are exactly the bytes the session holds, tied or not
    expect(planTied.weights).toBe(heldTied);
    expect(planUntied.weights).toBe(heldUntied);
  });
});
