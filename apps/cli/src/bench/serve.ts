import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRng, type Tensor, tensor, writeSafetensors } from '@lora/core';
import type { BenchSection } from './types.js';

/**
 * `lora serve` under load, over loopback HTTP: throughput (generated tokens per second) and
 * request latency percentiles for one adapter, 8 adapters, and 64 adapters with
 * `--max-loaded 16` (adapters loaded and evicted while serving), batched (16 requests at a
 * time) and one request at a time. A LLaMA-shaped model with random weights and random
 * rank-8 q/v adapters, written to a temp folder; bounded in requests.
 */
export const serveBench: BenchSection = {
  name: 'serve',
  title: 'serve: throughput and latency, 1 / 8 / 64 adapters, batched vs one at a time (loopback)',
  async run(ctx) {
    const rt = await import('@lora/runtime-onnx');
    const { startServer } = await import('@lora/serve');
    const { savePeftAdapter } = await import('@lora/adapters');
    const { createLoraConfig } = await import('@lora/core');
    // Small enough that a decode pass of 16 rows is not yet compute-bound on a 2-core machine:
    // batching then pays as it does for larger models on larger machines.
    const shape = ctx.quick
      ? {
          hidden_size: 128,
          intermediate_size: 344,
          num_hidden_layers: 2,
          num_attention_heads: 4,
          num_key_value_heads: 2,
        }
      : {
          hidden_size: 256,
          intermediate_size: 688,
          num_hidden_layers: 4,
          num_attention_heads: 8,
          num_key_value_heads: 4,
        };
    // Byte-level vocabulary without BOS/EOS: every request generates exactly max_tokens.
    const configJson = {
      model_type: 'llama',
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      tie_word_embeddings: false,
      vocab_size: 256,
      max_position_embeddings: 512,
      ...shape,
    };
    const config = rt.parseLlamaConfig(configJson);
    const root = await mkdtemp(join(tmpdir(), 'lora-bench-serve-'));
    const rng = createRng(5);
    try {
      const model = join(root, 'model');
      const adapters = join(root, 'adapters');
      await mkdir(model);
      await mkdir(adapters);
      await writeFile(join(model, 'config.json'), JSON.stringify(configJson));
      const weights = new Map<string, Tensor>();
      for (const { name, shape: s } of rt.llamaWeightSpec(config)) {
        const n = s.reduce((a, b) => a * b, 1);
        const scale = name.endsWith('norm.weight')
          ? 0
          : name.includes('embed')
            ? 1
            : 1 / Math.sqrt(s[1]);
        const data = rng.uniformArray(n, -scale, scale, 'f32');
        if (name.endsWith('norm.weight')) data.fill(1);
        weights.set(name, tensor('f32', s, data));
      }
      await writeSafetensors(join(model, 'model.safetensors'), weights);
      const adapterCount = 64;
      const r = 8;
      ctx.log(`writing ${adapterCount} adapters (r=${r}, q_proj/v_proj)`);
      for (let k = 0; k < adapterCount; k++) {
        const modules = new Map<string, { A: Tensor; B: Tensor }>();
        for (let l = 0; l < config.numLayers; l++) {
          for (const linear of ['q_proj', 'v_proj'] as const) {
            const [out, inF] = rt.llamaLinearShape(config, linear);
            modules.set(rt.llamaModuleName(l, linear), {
              A: tensor('f32', [r, inF], rng.uniformArray(r * inF, -0.05, 0.05, 'f32')),
              B: tensor('f32', [out, r], rng.uniformArray(out * r, -0.05, 0.05, 'f32')),
            });
          }
        }
        await savePeftAdapter(join(adapters, `a${k}`), {
          config: createLoraConfig({ r, lora_alpha: 16, target_modules: ['q_proj', 'v_proj'] }),
          modules,
          modulesToSave: new Map(),
        });
      }
      const server = await startServer({
        model,
        adapters,
        port: 0,
        maxLoaded: 16,
        maxBatch: 16,
      });
      try {
        const maxTokens = ctx.quick ? 16 : 32;
        const requests = ctx.quick ? 32 : 48;
        const prompt = 'Once upon a time there was';
        const one = async (name: string): Promise<number> => {
          const t0 = performance.now();
          const res = await fetch(`${server.url}/v1/completions`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ model: name, prompt, max_tokens: maxTokens, temperature: 0 }),
          });
          const body = (await res.json()) as {
            usage?: { completion_tokens: number };
            error?: { message: string };
          };
          if (res.status !== 200)
            throw new Error(`request for ${name} failed: ${body.error?.message}`);
          if (body.usage?.completion_tokens !== maxTokens) throw new Error('short answer');
          return performance.now() - t0;
        };
        /** Runs `names` with at most `concurrency` requests in flight. */
        const load = async (names: readonly string[], concurrency: number) => {
          const latencies: number[] = [];
          let next = 0;
          const t0 = performance.now();
          await Promise.all(
            Array.from({ length: concurrency }, async () => {
              while (next < names.length) latencies.push(await one(names[next++]));
            }),
          );
          const seconds = (performance.now() - t0) / 1000;
          latencies.sort((a, b) => a - b);
          const pct = (p: number) =>
            latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
          return {
            tokensPerSecond: (names.length * maxTokens) / seconds,
            p50: pct(0.5),
            p99: pct(0.99),
            seconds,
          };
        };
        ctx.log('warm-up');
        await load(['a0', 'a1'], 2);
        const names = (n: number) => Array.from({ length: requests }, (_, i) => `a${i % n}`);
        const cases: [string, readonly string[], number][] = [
          ['1 adapter, 16 at a time', names(1), 16],
          ['8 adapters, 16 at a time', names(8), 16],
          ['64 adapters (--max-loaded 16), 16 at a time', names(64), 16],
          ['8 adapters, one at a time', names(8).slice(0, ctx.quick ? 8 : 16), 1],
        ];
        // Two rounds, cases interleaved; the better round of each case is reported (the machine
        // may be shared: a burst of other work slows one case, not the ratios of both rounds).
        const best = cases.map(() => ({ tokensPerSecond: 0, p50: 0, p99: 0 }));
        for (let round = 0; round < 2; round++) {
          for (const [k, [label, list, concurrency]] of cases.entries()) {
            ctx.log(`${label} (round ${round + 1})`);
            const m = await load(list, concurrency);
            if (m.tokensPerSecond > best[k].tokensPerSecond) best[k] = m;
          }
        }
        const rows = cases.map(([label, list], k) => [
          label,
          list.length,
          best[k].tokensPerSecond.toFixed(1),
          best[k].p50.toFixed(0),
          best[k].p99.toFixed(0),
        ]);
        const results = best.map((b) => b.tokensPerSecond);
        const metrics = await (await fetch(`${server.url}/metrics`)).text();
        const sample = (s: string) =>
          Number(new RegExp(`^${s} (\\S+)`, 'm').exec(metrics)?.[1] ?? 0);
        const evictions = sample('lora_adapter_evictions_total');
        const loads = sample('lora_adapter_loads_total');
        const passSeconds = (kind: string) =>
          sample(`lora_forward_seconds_sum\\{kind="${kind}"\\}`);
        const meanBatch =
          sample('lora_forward_rows_total\\{kind="decode"\\}') /
          sample('lora_forward_passes_total\\{kind="decode"\\}');
        const [single, eight, many, sequential] = results;
        const mixRatio = eight / single;
        const batchRatio = eight / sequential;
        return {
          columns: ['case', 'requests', 'tokens/s', 'p50 ms', 'p99 ms'],
          rows,
          notes: [
            `${config.numLayers} layers, hidden ${config.hiddenSize}, ${maxTokens} tokens per request, prompt "${prompt}"; CPU, loopback HTTP, one process.`,
            `8 adapters / 1 adapter throughput: ${mixRatio.toFixed(2)}x (goal >= 0.8x: ${mixRatio >= 0.8 ? 'met' : 'MISSED'}).`,
            `batched / one at a time (8 adapters): ${batchRatio.toFixed(2)}x (goal >= 3x: ${batchRatio >= 3 ? 'met' : 'MISSED'}).`,
            `time in forward passes: decode ${passSeconds('decode').toFixed(1)} s, prefill ${passSeconds('prefill').toFixed(1)} s (prompt ${prompt.length} tokens: byte-level vocabulary); the rest is HTTP, sampling, KV packing.`,
            `64 adapters with --max-loaded 16: ${(many / single).toFixed(2)}x of 1 adapter; ${loads} adapter loads, ${evictions} evictions; mean decode batch ${meanBatch.toFixed(1)} rows.`,
          ],
        };
      } finally {
        await server.close();
      }
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  },
};
