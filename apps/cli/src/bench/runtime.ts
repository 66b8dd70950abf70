import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { f32, type Tensor, tensor } from '@lora/core';
import type { QuantFormat } from '@lora/quant';
import {
  GraphBuilder,
  LLAMA_LINEARS,
  type LlamaConfig,
  LlamaModel,
  llamaLinearShape,
  llamaWeightSpec,
  ModelSession,
  ops,
  parseLlamaConfig,
  type WeightSource,
} from '@lora/runtime-onnx';
import { medianMs } from './timing.js';
import type { BenchSection } from './types.js';

/** A full GC between models, so "RSS after load" is the model's memory, not garbage awaiting collection. */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as (() => void) | undefined;
  gc?.();
}

/**
 * Random weights generated when read (never all held at once), seeded per tensor name: linears
 * U(-1/sqrt(in), 1/sqrt(in)), norms 1, embeddings U(-1, 1).
 */
function randomWeightSource(config: LlamaConfig): WeightSource {
  const spec = new Map(llamaWeightSpec(config).map((s) => [s.name, s.shape]));
  return {
    description: 'random weights',
    names: () => [...spec.keys()],
    info: (name) => {
      const shape = spec.get(name);
      return shape && { dtype: 'f32', shape };
    },
    read: async (name) => {
      const shape = spec.get(name) as number[];
      const n = shape.reduce((a, b) => a * b, 1);
      const data = new Float32Array(n);
      if (name.endsWith('norm.weight')) data.fill(1);
      else {
        const scale = name === 'model.embed_tokens.weight' ? 1 : 1 / Math.sqrt(shape[1]);
        let s = 0x9e3779b9;
        for (const ch of name) s = Math.imul(s ^ ch.charCodeAt(0), 0x01000193) >>> 0;
        for (let i = 0; i < n; i++) {
          s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
          data[i] = (s / 2 ** 32 - 0.5) * 2 * scale;
        }
      }
      return tensor('f32', shape, data);
    },
    close: async () => {},
  };
}

/** Multiply-adds x2 of one forward over T new tokens with S keys: every linear, plus QK^T and PV. */
function forwardFlops(config: LlamaConfig, T: number, S: number): number {
  let linearParams = config.vocabSize * config.hiddenSize;
  for (const linear of LLAMA_LINEARS) {
    const [out, inF] = llamaLinearShape(config, linear);
    linearParams += config.numLayers * out * inF;
  }
  const attention = config.numLayers * 4 * T * S * config.numHeads * config.headDim;
  return 2 * linearParams * T + attention;
}

interface ModelRun {
  label: string;
  loadSeconds: number;
  rssAfterLoad: number;
  peakRss: number;
  decodeMs: number;
  prefillMs: number;
}

/** Peak RSS of the process so far, in bytes. */
const peakRss = () => process.resourceUsage().maxRSS * 1024;

export const runtimeBench: BenchSection = {
  name: 'runtime',
  title: 'LLaMA decoder on onnxruntime: 4-bit vs f32 decode, prefill vs bare MatMul',
  async run(ctx) {
    const config = parseLlamaConfig(
      ctx.quick
        ? {
            model_type: 'llama',
            hidden_size: 512,
            intermediate_size: 1408,
            num_attention_heads: 8,
            num_key_value_heads: 2,
            num_hidden_layers: 2,
            vocab_size: 1024,
          }
        : {
            model_type: 'llama',
            hidden_size: 2048,
            intermediate_size: 5632,
            num_attention_heads: 16,
            num_key_value_heads: 4,
            num_hidden_layers: 8,
            vocab_size: 1024,
          },
    );
    const promptLength = 16;
    const decodeSteps = ctx.quick ? 4 : 12;
    const prefillTokens = ctx.quick ? 64 : 256;
    const repeats = ctx.quick ? 2 : 3;
    const prompt = Array.from({ length: promptLength }, (_, i) => (i * 37) % config.vocabSize);
    const prefillIds = Array.from(
      { length: prefillTokens },
      (_, i) => (i * 53 + 7) % config.vocabSize,
    );

    // 4-bit models first: peak RSS only grows, so each model's peak is read before the bigger f32 one.
    const variants: { label: string; quant?: QuantFormat }[] = [
      { label: 'int4 (MatMulNBits, bs 32)', quant: 'int4' },
      { label: 'nf4 (MatMulBnb4, bs 64)', quant: 'nf4' },
      { label: 'f32 (MatMul)' },
    ];
    const runs: ModelRun[] = [];
    for (const v of variants) {
      ctx.log(`runtime: building ${v.label} model`);
      collectGarbage();
      const t0 = performance.now();
      const model = await LlamaModel.create(config, randomWeightSource(config), {
        quant: v.quant,
        logits: 'last',
      });
      const loadSeconds = (performance.now() - t0) / 1000;
      collectGarbage();
      const rssAfterLoad = process.memoryUsage().rss;
      try {
        ctx.log(`runtime: ${v.label}: decode`);
        const stepper = model.stepper();
        await stepper.start([prompt]);
        let token = 1;
        const decodeMs = await medianMs(async () => {
          await stepper.step([token]);
          token = (token * 7 + 3) % config.vocabSize;
        }, decodeSteps);
        await stepper.dispose();
        ctx.log(`runtime: ${v.label}: prefill ${prefillTokens} tokens`);
        const prefillMs = await medianMs(() => model.forward({ inputIds: [prefillIds] }), repeats);
        runs.push({
          label: v.label,
          loadSeconds,
          rssAfterLoad,
          peakRss: peakRss(),
          decodeMs,
          prefillMs,
        });
      } finally {
        await model.release();
      }
    }

    // A bare MatMul of the largest linear's size over the same tokens, same session options.
    ctx.log('runtime: bare MatMul');
    const K = config.hiddenSize;
    const N = config.intermediateSize;
    const g = new GraphBuilder('bare-matmul');
    const w = f32(
      [K, N],
      Float32Array.from({ length: K * N }, (_, i) => ((i * 2654435761) % 1000) / 1000 - 0.5),
    );
    g.output(ops.matmul(g, g.input('x', 'f32', [prefillTokens, K]), g.initializer('w', w)), 'y');
    const bare = await ModelSession.fromGraph(g.build());
    const x: Tensor = f32(
      [prefillTokens, K],
      Float32Array.from({ length: prefillTokens * K }, (_, i) => Math.sin(i)),
    );
    const bareMs = await medianMs(() => bare.run({ x }), repeats * 3);
    await bare.release();
    const bareGflops = (2 * prefillTokens * K * N) / (bareMs / 1e3) / 1e9;

    const f32Run = runs[runs.length - 1];
    const prefillFlops = forwardFlops(config, prefillTokens, prefillTokens);
    const rows = runs.map((r) => [
      r.label,
      r.loadSeconds,
      r.rssAfterLoad / 2 ** 20,
      r.peakRss / 2 ** 20,
      r.decodeMs,
      1000 / r.decodeMs,
      f32Run.decodeMs / r.decodeMs,
      (prefillTokens * 1000) / r.prefillMs,
      prefillFlops / (r.prefillMs / 1e3) / 1e9,
    ]);
    rows.push(['bare MatMul (same M, K, N as up_proj)', 0, 0, 0, 0, 0, 0, 0, bareGflops]);
    const bestDecodeSpeedup = Math.max(
      ...runs.slice(0, -1).map((r) => f32Run.decodeMs / r.decodeMs),
    );
    const prefillShare = prefillFlops / (f32Run.prefillMs / 1e3) / 1e9 / bareGflops;
    const f32Bytes = forwardFlops(config, 1, 0) * 2; // 2 flops per param, 4 bytes per f32 param
    return {
      columns: [
        'model',
        'load s',
        'RSS after load MiB',
        'peak RSS so far MiB',
        'decode ms/token',
        'decode tokens/s',
        'decode speedup vs f32',
        'prefill tokens/s',
        'GFLOP/s',
      ],
      rows,
      notes: [
        `model: ${config.numLayers} layers, hidden ${config.hiddenSize}, intermediate ${config.intermediateSize}, heads ${config.numHeads}/${config.numKvHeads} kv, vocab ${config.vocabSize}; f32 linear weights ${(f32Bytes / 2 ** 30).toFixed(2)} GiB; random weights, batch 1`,
        `decode: prompt ${promptLength}, median of ${decodeSteps} steps; prefill: ${prefillTokens} tokens from an empty cache, median of ${repeats}`,
        `goal (a) 4-bit decode >= 3x f32: best ${bestDecodeSpeedup.toFixed(2)}x: ${bestDecodeSpeedup >= 3 ? 'met' : 'NOT met'}`,
        `goal (b) f32 prefill >= 60% of the bare MatMul rate: ${(prefillShare * 100).toFixed(0)}%: ${prefillShare >= 0.6 ? 'met' : 'NOT met'}`,
        'peak RSS is the process peak after each model ran (4-bit models run first); embeddings and lm_head stay f32 in every model',
        `machine shared and noisy; ${ctx.quick ? 'quick sizes: f32 weights fit in cache, so the decode ratio is not meaningful' : 'ratios measured in this run'}`,
      ],
    };
  },
};
