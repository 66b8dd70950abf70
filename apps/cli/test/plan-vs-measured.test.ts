import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../src/test-utils/run-cli.js';
import { writeRandomLlamaFolder } from '../src/test-utils/synthetic-model.js';
import { cliBuilt, runCliChild } from './helpers/child-cli.js';

/**
 * ~45M parameters (180 MB in f32), so weights and the process baseline both weigh in. A 256-token
 * vocabulary: byte-level tokens, no tokenizer.json needed.
 */
const CONFIG = {
  model_type: 'llama',
  hidden_size: 1024,
  intermediate_size: 2816,
  num_attention_heads: 8,
  num_key_value_heads: 2,
  num_hidden_layers: 4,
  vocab_size: 256,
  tie_word_embeddings: false,
};

describe.skipIf(!cliBuilt)('lora plan vs what lora generate uses', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lora-plan-rss-'));
    await writeRandomLlamaFolder(dir, CONFIG, 'bf16', 7);
    // Reports the child's peak resident memory when it exits.
    await writeFile(
      join(dir, 'peak.mjs'),
      "process.on('exit', () => process.stderr.write('PEAK_RSS ' + process.resourceUsage().maxRSS * 1024 + '\\n'));\n",
    );
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('the "lora generate" row is within 25 % of the peak RSS of a real lora generate process', async () => {
    const generated = 8;
    const prompt = 'A prompt of a few words.';
    const child = await runCliChild(
      ['generate', '--model', dir, '--prompt', prompt, '--max-tokens', String(generated), '--json'],
      { shellPrefix: `export NODE_OPTIONS="--import=${join(dir, 'peak.mjs')}"` },
    );
    expect(child.stderr).toMatch(/PEAK_RSS \d+/);
    expect(child.code).toBe(0);
    const measured = Number(/PEAK_RSS (\d+)/.exec(child.stderr)?.[1]);
    // Byte-level tokens: one per byte.
    const plan = await runCli([
      'plan',
      dir,
      '--seq-len',
      String(prompt.length + generated),
      '--json',
    ]);
    expect(plan.code).toBe(0);
    const row = (
      JSON.parse(plan.stdout) as { scenarios: { name: string; memory: { total: number } }[] }
    ).scenarios.find((s) => s.name === 'generate');
    const planned = row?.memory.total ?? 0;
    expect(Math.abs(planned / measured - 1)).toBeLessThanOrEqual(0.25);
  }, 120_000);
});
