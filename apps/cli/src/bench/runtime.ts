import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { f32, type Tensor, tensor } from '@lora/core';
import {
  type BaseQuantOptions,
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
import type { BenchSection } from './types.js';

/** A full GC between models, so "RSS after load" is the model's memory, not garbage awaiting collection. */
export function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as (() => void) | undefined;
  gc?.();
}

const POOL_SIZE = 1 << 20;
/** U(-1, 1) from a fixed LCG seed. */
const pool = (() => {
  const p = new Float32Array(POOL_SIZE);
  let s = 12345;
  for (let i = 0; i < POOL_SIZE; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    p[i] = (s / 2 ** 32 - 0.5) * 2;
  }
  return p;
})();

/**
 * Random weights produced when read (never all held at once): linears U(-1/sqrt(in), 1/sqrt(in)),
 * norms 1, embeddings U(-1, 1).
 */
export function randomWeightSource(config: LlamaConfig): WeightSource {
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
        // Tiles of a seeded random pool at a per-tensor offset: kernels' speed does not depend on
        // the values, and copying is ~50x faster than generating 360M random numbers per model.
        const scale = name === 'model.embed_tokens.weight' ? 1 : 1 / Math.sqrt(shape[1]);
        let offset = 0;
        for (const ch of name) offset = (offset * 31 + ch.charCodeAt(0)) % POOL_SIZE;
        for (let i = 0; i < n; i += POOL_SIZE) {
          const len = Math.min(POOL_SIZE, n - i);
          data.set(pool.subarray(offset, offset + Math.min(len, POOL_SIZE - offset)), i);
          if (len > POOL_SIZE - offset)
            data.set(pool.subarray(0, len - (POOL_SIZE - offset)), i + POOL_SIZE - offset);
        }
        for (let i = 0; i < n; i++) data[i] *= scale;
      }
      return tensor('f32', shape, data);
    },
    close: async () => {},
  };
}

/** Multiply-adds x2 of one forward over T new tokens with S keys: every linear, plus QK^T and PV. */
export function forwardFlops(config: LlamaConfig, T: number, S: number): number {
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
  rssAdded: number;
  peakRss: number;
  decodeMs: number;
  prefillMs: number;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** A bare [M, K] x [K, N] float32 MatMul session with the weight as an initializer, like the model's linears. */
export async function bareMatMul(K: number, N: number, M: number) {
  const g = new GraphBuilder('bare-matmul');
  const w = f32(
    [K, N],
    Float32Array.from({ length: K * N }, (_, i) => pool[i % POOL_SIZE] / Math.sqrt(K)),
  );
  g.output(ops.matmul(g, g.input('x', 'f32', [M, K]), g.initializer('w', w)), 'y');
  const session = await ModelSession.fromGraph(g.build());
  const x: Tensor = f32(
    [M, K],
    Float32Array.from({ length: M * K }, (_, i) => pool[i % POOL_SIZE]),
  );
  return { run: () => session.run({ x }), release: () => session.release() };
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
    const decodeSteps = ctx.quick ? 4 : 24;
    const prefillTokens = ctx.quick ? 64 : 256;
    const repeats = ctx.quick ? 2 : 3;
    const prompt = Array.from({ length: promptLength }, (_, i) => (i * 37) % config.vocabSize);
    const prefillIds = Array.from(
      { length: prefillTokens },
      (_, i) => (i * 53 + 7) % config.vocabSize,
    );

    // 4-bit models first: peak RSS only grows, so each model's peak is read before the bigger f32 one.
    const variants: { label: string; quant?: BaseQuantOptions }[] = [
      { label: 'int4 (MatMulNBits, bs 32)', quant: { format: 'int4' } },
      {
        label: 'int4, int8 activations (accuracy_level 4)',
        quant: { format: 'int4', accuracyLevel: 4 },
      },
      { label: 'nf4 (MatMulBnb4, bs 64)', quant: { format: 'nf4' } },
      { label: 'f32 (MatMul)' },
    ];
    // All models stay loaded and are measured in turns (A, B, C, A, B, C, ...), so load on this
    // shared machine drifts over all of them alike instead of biasing one.
    const loaded: {
      label: string;
      model: LlamaModel;
      loadSeconds: number;
      rssAdded: number;
      peakRss: number;
    }[] = [];
    const runs: ModelRun[] = [];
    let bareMs = 0;
    try {
      for (const v of variants) {
        ctx.log(`runtime: building ${v.label} model`);
        collectGarbage();
        const rssBefore = process.memoryUsage().rss;
        const t0 = performance.now();
        const model = await LlamaModel.create(config, randomWeightSource(config), {
          quant: v.quant,
          logits: 'last',
        });
        const loadSeconds = (performance.now() - t0) / 1000;
        collectGarbage();
        loaded.push({
          label: v.label,
          model,
          loadSeconds,
          rssAdded: process.memoryUsage().rss - rssBefore,
          peakRss: peakRss(),
        });
      }
      ctx.log('runtime: decode, models in turns');
      const steppers = loaded.map((m) => m.model.stepper());
      for (const s of steppers) await s.start([prompt]);
      const decodeTimes = loaded.map(() => [] as number[]);
      for (let i = 0; i < decodeSteps + 1; i++) {
        const token = (i * 7 + 3) % config.vocabSize;
        for (let m = 0; m < loaded.length; m++) {
          const t0 = performance.now();
          await steppers[m].step([token]);
          if (i > 0) decodeTimes[m].push(performance.now() - t0); // step 0 is a warm-up
        }
      }
      for (const s of steppers) await s.dispose();
      ctx.log(`runtime: prefill ${prefillTokens} tokens, models and the bare MatMul in turns`);
      const bare = await bareMatMul(config.hiddenSize, config.intermediateSize, prefillTokens);
      const prefillTimes = loaded.map(() => [] as number[]);
      const bareTimes: number[] = [];
      try {
        for (let r = 0; r < repeats + 1; r++) {
          for (let m = 0; m < loaded.length; m++) {
            const t0 = performance.now();
            await loaded[m].model.forward({ inputIds: [prefillIds] });
            if (r > 0) prefillTimes[m].push(performance.now() - t0);
          }
          for (let k = 0; k < 3; k++) {
            const t0 = performance.now();
            await bare.run();
            if (r > 0) bareTimes.push(performance.now() - t0);
          }
        }
      } finally {
        await bare.release();
      }
      for (const [i, m] of loaded.entries()) {
        const { label, loadSeconds, rssAdded } = m;
        const decodeMs = median(decodeTimes[i]);
        runs.push({
          label,
          loadSeconds,
          rssAdded,
          peakRss: m.peakRss,
          decodeMs,
          prefillMs: median(prefillTimes[i]),
        });
      }
      bareMs = median(bareTimes);
    } finally {
      for (const m of loaded) await m.model.release();
    }
    const K = config.hiddenSize;
    const N = config.intermediateSize;
    const bareGflops = (2 * prefillTokens * K * N) / (bareMs / 1e3) / 1e9;

    const f32Run = runs[runs.length - 1];
    const prefillFlops = forwardFlops(config, prefillTokens, prefillTokens);
    const rows = runs.map((r) => [
      r.label,
      r.loadSeconds,
      r.rssAdded / 2 ** 20,
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
        'RSS added by model MiB',
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
        `decode: prompt ${promptLength}, median of ${decodeSteps} steps; prefill: ${prefillTokens} tokens from an empty cache, median of ${repeats}; models measured in turns`,
        "nf4/fp4 use onnxruntime's MatMulBnb4, whose CPU kernel dequantizes the whole weight on every call: no decode gain on CPU (it exists for the memory); int4/uint4 (MatMulNBits) read the packed weight directly; accuracy_level 4 (opt-in: quant { format, accuracyLevel: 4 }) also rounds activations to int8, so its logits drift ~1% from the float forward",
        `goal (a) 4-bit decode >= 3x f32: best ${bestDecodeSpeedup.toFixed(2)}x: ${bestDecodeSpeedup >= 3 ? 'met' : 'NOT met'} (${runs
          .slice(0, -1)
          .map((r) => `${r.label.split(' (')[0]}: ${(f32Run.decodeMs / r.decodeMs).toFixed(2)}x`)
          .join('; ')})`,
        `goal (b) f32 prefill >= 60% of the bare MatMul rate: ${(prefillShare * 100).toFixed(0)}%: ${prefillShare >= 0.6 ? 'met' : 'NOT met'}`,
        'RSS added: resident memory growth while building the model (after GC); peak RSS: process peak after each build (4-bit models first); embeddings and lm_head stay f32 in every model',
        `machine shared and noisy; ${ctx.quick ? 'quick sizes: f32 weights fit in cache, so the decode ratio is not meaningful' : 'ratios measured in this run'}`,
      ],
    };
  },
};
