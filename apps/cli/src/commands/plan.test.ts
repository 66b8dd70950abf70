import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { runCli } from '../test-utils/run-cli.js';

const stories = fileURLToPath(
  new URL('../../../../../shared/fixtures/llama2c-stories260k/', import.meta.url),
);
const haveStories = existsSync(stories);
if (!haveStories)
  console.warn(`SKIPPED: ${stories} is absent; the bundled-model plan test does not run.`);

interface Scenario {
  name: string;
  memory: {
    weights: number;
    quantStats: number;
    adapters: number;
    gradients: number;
    optimizer: number;
    activations: number;
    total: number;
  };
}

describe('lora plan', () => {
  it("reproduces QLoRA's 65B claim from --params (JSON)", async () => {
    const r = await runCli([
      'plan',
      '--params',
      '65e9',
      '--quant',
      'nf4',
      '--double-quant',
      '--rank',
      '64',
      '--targets',
      'all-linear',
      '--json',
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout) as {
      source: string;
      scenarios: Scenario[];
      parameters: { total: number };
      lora: { trainable: number };
    };
    expect(j.source).toContain('llama-65b');
    // LLaMA-65B: 2 x 32000 x 8192 + 80 x (4 x 8192^2 + 3 x 8192 x 22016 + 2 x 8192) + 8192
    expect(j.parameters.total).toBe(65_285_660_672);
    // r 64 on the 7 linears of 80 layers: 80 x 64 x (4 x 16384 + 3 x 30208)
    expect(j.lora.trainable).toBe(80 * 64 * (4 * 16384 + 3 * 30208));
    const byName = Object.fromEntries(j.scenarios.map((s) => [s.name, s.memory]));
    expect(Object.keys(byName)).toEqual([
      'inference',
      'inference-quantized',
      'generate',
      'generate-quantized',
      'lora',
      'qlora',
      'full',
    ]);
    expect(byName.qlora.total).toBeLessThan(48e9);
    expect(byName.full.total).toBeGreaterThan(780e9);
    // Full FT = 16 bytes per parameter before activations (mixed-precision AdamW).
    expect(byName.full.weights + byName.full.gradients + byName.full.optimizer).toBe(
      16 * 65_285_660_672,
    );
  });

  it('prints a human table with every component and the assumptions', async () => {
    const r = await runCli(['plan', '--params', '7e9']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(
      'trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622',
    );
    for (const col of [
      'weights',
      'quant stats',
      'adapters',
      'gradients',
      'optimizer',
      'activations',
      'total',
    ])
      expect(r.stdout).toContain(col);
    for (const row of [
      'inference (bf16)',
      'inference (nf4)',
      'LoRA (bf16 base)',
      'QLoRA (nf4 base)',
      'full fine-tuning',
    ])
      expect(r.stdout).toContain(row);
    expect(r.stdout).toContain('Assumptions:');
    expect(r.stdout).toMatch(/gradient checkpointing ON/);
  });

  it('--budget marks what fits', async () => {
    const r = await runCli([
      'plan',
      '--params',
      '65e9',
      '--double-quant',
      '--rank',
      '64',
      '--targets',
      'all-linear',
      '--budget',
      '48GB',
      '--json',
    ]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout) as { budget: number; fits: { name: string; fits: boolean }[] };
    expect(j.budget).toBe(48e9);
    expect(Object.fromEntries(j.fits.map((f) => [f.name, f.fits]))).toEqual({
      inference: false,
      'inference-quantized': true,
      // This runtime keeps f32 absmax (4.5 bits per weight: 36.7 GB), f32 embeddings (2.1 GB) and
      // the f32 KV cache twice (5.4 GB at 512 tokens): over 48 GB.
      generate: false,
      'generate-quantized': false,
      lora: false,
      qlora: true,
      full: false,
    });
    const human = await runCli(['plan', '--params', '7e9', '--budget', '24GiB']);
    expect(human.stdout).toContain('fits 24.00 GiB');
    const bad = await runCli(['plan', '--params', '7e9', '--budget', 'lots']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--budget must be a size such as 48GB/);
  });

  it('accepts shape flags and activation settings', async () => {
    const r = await runCli([
      'plan',
      '--hidden',
      '1024',
      '--layers',
      '4',
      '--vocab',
      '1000',
      '--seq-len',
      '128',
      '--no-gradient-checkpointing',
      '--json',
    ]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout) as {
      shape: { intermediate_size: number; num_attention_heads: number };
      parameters: { total: number };
      assumptions: string[];
    };
    // intermediate = 8/3 x 1024 = 2730.7 -> 2816 (multiple of 256); 8 heads of 128
    expect(j.shape.intermediate_size).toBe(2816);
    expect(j.shape.num_attention_heads).toBe(8);
    expect(j.parameters.total).toBe(
      2 * 1000 * 1024 + 4 * (4 * 1024 * 1024 + 3 * 1024 * 2816 + 2 * 1024) + 1024,
    );
    expect(j.assumptions.join('\n')).toMatch(/checkpointing OFF/);
  });

  it.skipIf(!haveStories)('reads a model folder', async () => {
    const r = await runCli([
      'plan',
      stories,
      '--targets',
      'q_proj,k_proj,v_proj,o_proj',
      '--rank',
      '4',
      '--json',
    ]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout) as {
      parameters: { total: number };
      lora: { trainable: number; modules: number };
    };
    expect(j.parameters.total).toBe(260_032);
    // 5 layers: q, o (64 -> 64) and k, v (64 -> 32) at r 4
    expect(j.lora.trainable).toBe(5 * 4 * (2 * 128 + 2 * 96));
    expect(j.lora.modules).toBe(20);
  });

  it('bad usage exits 2 with a clear message', async () => {
    const bad = await runCli(['plan', '--params', '7e9', '--quant', 'int3']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/int3/);
    expect(bad.stderr).toMatch(/nf4/);

    const unknown = await runCli(['plan', '--params', '7e9', '--rnak', '8']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown option '--rnak'/);
    expect(unknown.stderr).toMatch(/--rank/);

    const none = await runCli(['plan']);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/--params/);

    const rank = await runCli(['plan', '--params', '7e9', '--rank', '0']);
    expect(rank.code).toBe(2);
    expect(rank.stderr).toMatch(/--rank must be a positive integer/);

    const targets = await runCli(['plan', '--params', '7e9', '--targets', 'c_attn']);
    expect(targets.code).toBe(2);
    expect(targets.stderr).toMatch(/matches no linear layer/);
  });

  it('bad model folders exit 2 naming the file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lora-plan-'));
    try {
      expect((await runCli(['plan', dir])).stderr).toMatch(/config\.json does not exist/);
      await writeFile(
        join(dir, 'config.json'),
        JSON.stringify({ model_type: 'llama', hidden_size: 64 }),
      );
      const r = await runCli(['plan', dir]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/config\.json: "num_attention_heads" must be a positive integer/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
