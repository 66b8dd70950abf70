import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Adapter, saveOnnxAdapter, savePeftAdapter } from '@lora/adapters';
import { createLoraConfig, createRng, loraScaling, type Tensor, tensor } from '@lora/core';
import {
  type LLAMA_LINEARS,
  llamaLinearShape,
  llamaModuleName,
  loadTokenizer,
  openLlamaFolder,
  readLlamaWeightsF32,
  referenceForward,
} from '@lora/runtime-onnx';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../test-utils/run-cli.js';
import { parseAdapterSpec } from './generate-adapters.js';

const stories = fileURLToPath(
  new URL('../../../../../shared/fixtures/llama2c-stories260k', import.meta.url),
);
const haveStories = existsSync(stories);
if (!haveStories)
  console.warn(`SKIPPED: ${stories} is absent; the generate --adapter CLI tests do not run.`);

const PROMPT = 'Once upon a time';
const N = 8;

describe('parseAdapterSpec', () => {
  it('splits a trailing :scale and keeps other colons in the path', () => {
    expect(parseAdapterSpec('ad/x')).toEqual({ path: 'ad/x', scale: 1 });
    expect(parseAdapterSpec('ad/x:0.5')).toEqual({ path: 'ad/x', scale: 0.5 });
    expect(parseAdapterSpec('C:/ad:2')).toEqual({ path: 'C:/ad', scale: 2 });
    expect(parseAdapterSpec('ad:-1e-1')).toEqual({ path: 'ad', scale: -0.1 });
  });
});

describe.skipIf(!haveStories)('lora generate with adapters (stories260K)', () => {
  let dir: string;
  let qv: Adapter;
  let mlp: Adapter;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'generate-adapters-'));
    const { config, source } = await openLlamaFolder(stories);
    await source.close();
    const make = (
      seed: number,
      r: number,
      linears: readonly (typeof LLAMA_LINEARS)[number][],
    ): Adapter => {
      const rng = createRng(seed);
      const modules = new Map<string, { A: Tensor; B: Tensor }>();
      for (let l = 0; l < config.numLayers; l++) {
        for (const linear of linears) {
          const [out, inF] = llamaLinearShape(config, linear);
          modules.set(llamaModuleName(l, linear), {
            A: tensor('f32', [r, inF], rng.uniformArray(r * inF, -0.5, 0.5, 'f32')),
            B: tensor('f32', [out, r], rng.uniformArray(out * r, -0.5, 0.5, 'f32')),
          });
        }
      }
      return {
        config: createLoraConfig({ r, lora_alpha: 2 * r, target_modules: [...linears] }),
        modules,
        modulesToSave: new Map(),
      };
    };
    qv = make(1, 4, ['q_proj', 'v_proj']);
    mlp = make(2, 2, ['gate_proj', 'up_proj', 'down_proj']);
    await savePeftAdapter(join(dir, 'qv'), qv);
    await saveOnnxAdapter(join(dir, 'mlp.onnx_adapter'), mlp, { metadata: true });
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** Greedy choices of a float64 reference forward with the adapters' deltas beside each linear. */
  async function referenceArgmaxes(
    set: { adapter: Adapter; scale: number }[],
    generated: readonly number[],
  ) {
    const { config, source } = await openLlamaFolder(stories);
    const weights = await readLlamaWeightsF32(config, source);
    await source.close();
    const prompt = (await loadTokenizer(stories)).encode(PROMPT);
    const seq = [...prompt, ...generated];
    const logits = referenceForward(config, weights, seq, {
      linearHook: (module, x, y, T) => {
        for (const { adapter, scale } of set) {
          const m = adapter.modules.get(module);
          if (!m) continue;
          const s = loraScaling(adapter.config, module) * scale;
          const [r, inF] = m.A.shape;
          const outF = m.B.shape[0];
          const A = m.A.data as Float32Array;
          const B = m.B.data as Float32Array;
          for (let t = 0; t < T; t++) {
            const h = new Float64Array(r);
            for (let k = 0; k < r; k++)
              for (let i = 0; i < inF; i++) h[k] += A[k * inF + i] * x[t * inF + i];
            for (let o = 0; o < outF; o++) {
              let acc = 0;
              for (let k = 0; k < r; k++) acc += B[o * r + k] * h[k];
              y[t * outF + o] += s * acc;
            }
          }
        }
      },
    });
    const V = config.vocabSize;
    const out: number[] = [];
    for (let t = prompt.length - 1; t < seq.length - 1; t++) {
      let best = 0;
      for (let v = 1; v < V; v++) if (logits[t * V + v] > logits[t * V + best]) best = v;
      out.push(best);
    }
    return out;
  }

  const gen = async (...extra: string[]) => {
    const r = await runCli([
      'generate',
      '--model',
      stories,
      '--max-tokens',
      String(N),
      '--temperature',
      '0',
      '--json',
      ...extra,
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    return JSON.parse(r.stdout);
  };

  it('--adapter a --adapter b:0.5 follows the float64 reference with both deltas; --merged gives the same tokens', async () => {
    const base = await gen('--prompt', PROMPT);
    const both = await gen(
      '--prompt',
      PROMPT,
      '--adapter',
      join(dir, 'qv'),
      '--adapter',
      `${join(dir, 'mlp.onnx_adapter')}:0.5`,
    );
    expect(both.tokens).toHaveLength(N);
    expect(both.tokens).toEqual(
      await referenceArgmaxes(
        [
          { adapter: qv, scale: 1 },
          { adapter: mlp, scale: 0.5 },
        ],
        both.tokens,
      ),
    );
    expect(both.tokens).not.toEqual(base.tokens); // the adapters matter
    const merged = await gen(
      '--prompt',
      PROMPT,
      '--merged',
      '--adapter',
      join(dir, 'qv'),
      '--adapter',
      `${join(dir, 'mlp.onnx_adapter')}:0.5`,
    );
    expect(merged.tokens).toEqual(both.tokens);
  });

  it('--batch runs rows with different adapters (and a base row) in one batch, each as it runs alone', async () => {
    const file = join(dir, 'batch.jsonl');
    await writeFile(
      file,
      [
        { prompt: PROMPT, adapter: join(dir, 'qv') },
        { prompt: PROMPT, adapter: null },
        { prompt: PROMPT, adapter: [`${join(dir, 'mlp.onnx_adapter')}:0.5`] },
      ]
        .map((r) => JSON.stringify(r))
        .join('\n'),
    );
    const batch = await gen('--batch', file);
    expect(batch.outputs).toHaveLength(3);
    const alone = [
      await gen('--prompt', PROMPT, '--adapter', join(dir, 'qv')),
      await gen('--prompt', PROMPT),
      await gen('--prompt', PROMPT, '--adapter', `${join(dir, 'mlp.onnx_adapter')}:0.5`),
    ];
    for (let i = 0; i < 3; i++) expect(batch.outputs[i].tokens).toEqual(alone[i].tokens);
    expect(batch.outputs[1].adapters).toBe('base');
  });

  it('--batch in groups: adapter sets first seen in a later group reopen the model; each row still as it runs alone', async () => {
    const qvSpec = join(dir, 'qv');
    const mlpSpec = `${join(dir, 'mlp.onnx_adapter')}:0.5`;
    const file = join(dir, 'grouped.jsonl');
    const sets = [null, null, qvSpec, [mlpSpec], qvSpec];
    await writeFile(
      file,
      sets.map((adapter) => JSON.stringify({ prompt: PROMPT, adapter })).join('\n'),
    );
    // groups of 2: [base, base] opens the plain model, [qv, mlp] and [qv] the LoRA graph
    const r = await runCli([
      'generate',
      '--model',
      stories,
      '--max-tokens',
      String(N),
      '--batch',
      file,
      '--max-batch',
      '2',
      '--jsonl',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/grouped\.jsonl:3: adapter set .*qv is new: reopening the model/);
    const rows = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    const base = await gen('--prompt', PROMPT);
    const withQv = await gen('--prompt', PROMPT, '--adapter', qvSpec);
    const withMlp = await gen('--prompt', PROMPT, '--adapter', mlpSpec);
    expect(rows.map((x) => x.tokens)).toEqual(
      [base, base, withQv, withMlp, withQv].map((x) => x.tokens),
    );
    expect(rows.map((x) => x.adapters)).toEqual(['base', 'base', qvSpec, mlpSpec, qvSpec]);

    // --merged bakes the first row's set: a row with another set stops the run at its line
    const merged = await runCli([
      'generate',
      '--model',
      stories,
      '--max-tokens',
      String(N),
      '--batch',
      file,
      '--merged',
      '--adapter',
      qvSpec,
      '--jsonl',
    ]);
    expect(merged.code).toBe(2);
    expect(merged.stderr).toMatch(/grouped\.jsonl:3: --merged bakes ONE adapter set/);
    expect(merged.stdout.trim().split('\n')).toHaveLength(2);
  });

  it('--merged on a 4-bit base (nf4, bitsandbytes layout) gives the tokens of `lora merge` of the same base', async () => {
    const q = join(dir, 'nf4');
    const quant = await runCli(['quantize', stories, '-o', q, '--format', 'nf4', '--quiet']);
    expect(quant.code, quant.stderr).toBe(0);
    const run = async (model: string, ...extra: string[]) => {
      const r = await runCli([
        'generate',
        '--model',
        model,
        '--prompt',
        PROMPT,
        '--max-tokens',
        String(N),
        '--temperature',
        '0',
        '--json',
        ...extra,
      ]);
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout).tokens as number[];
    };
    const merged = await run(q, '--merged', '--adapter', join(dir, 'qv'));
    // `lora merge` dequantizes the 4-bit weights and adds the same deltas, written in full precision.
    const m = join(dir, 'nf4-merged');
    const mergeRun = await runCli([
      'merge',
      '--base',
      q,
      '--adapter',
      join(dir, 'qv'),
      '-o',
      m,
      '--quiet',
    ]);
    expect(mergeRun.code, mergeRun.stderr).toBe(0);
    expect(merged).toEqual(await run(m));
    expect(merged).not.toEqual(await run(q)); // the adapter matters on the 4-bit base too
  });

  it('explains bad adapter usage', async () => {
    const missing = await runCli([
      'generate',
      '--model',
      stories,
      '--prompt',
      'x',
      '--adapter',
      join(dir, 'nope'),
    ]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/does not exist/);
    const merged = await runCli(['generate', '--model', stories, '--prompt', 'x', '--merged']);
    expect(merged.code).toBe(2);
    expect(merged.stderr).toMatch(/--merged needs/);
    // A saved full module (modules_to_save) would be left out by both paths: refused.
    const { config } = await openLlamaFolder(stories);
    const head = tensor('f32', [config.vocabSize, config.hiddenSize]);
    const withHead = { ...qv, modulesToSave: new Map([['lm_head.weight', head]]) };
    await savePeftAdapter(join(dir, 'with-head'), withHead);
    for (const extra of [[], ['--merged']]) {
      const r = await runCli([
        'generate',
        '--model',
        stories,
        '--prompt',
        'x',
        '--adapter',
        join(dir, 'with-head'),
        ...extra,
      ]);
      expect(r.code, extra.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/saves full module weights \(lm_head.weight\).*lora merge/);
    }
  });
});
