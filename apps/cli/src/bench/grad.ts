import { readFileSync, writeFileSync } from 'node:fs';
import { planMemory, type Tensor, tensor } from '@lora/core';
import {
  createTrainingSession,
  type LlamaConfig,
  parseLlamaConfig,
  type TrainingSession,
  type TrainingStepFeeds,
} from '@lora/runtime-onnx';
import { bareMatMul, collectGarbage, forwardFlops, randomWeightSource } from './runtime.js';
import type { BenchSection } from './types.js';

/**
 * Training graphs on onnxruntime (CPU), on the shape of the PyTorch + PEFT peer
 * (`reference/peers.md`): one LoRA step's forward + backward against a bare MatMul's rate,
 * QLoRA (nf4 base) against LoRA on the float32 base in time and weight memory, and the
 * activation memory of a step against `lora plan`'s estimate for the same shapes.
 */

const RANK = 8;
const ALPHA = 16;

/**
 * Multiply-adds x2 of one LoRA step: forward (every linear, lm_head on the T-1 positions that
 * predict a token, attention), backward to the activations (every linear again: the base gets
 * no weight gradient; attention twice: dQ/dK and dP/dV), and the LoRA branches (forward, then
 * dA, dB and their input gradient).
 */
function loraStepFlops(config: LlamaConfig, session: TrainingSession): number {
  const B = session.microBatch;
  const T = session.seqLen;
  const tokens = B * T;
  const lmHead = 2 * B * (T - 1) * config.vocabSize * config.hiddenSize;
  const full = B * forwardFlops(config, T, T); // linears incl. lm_head on T positions, attention
  const attention = B * config.numLayers * 4 * T * T * config.numHeads * config.headDim;
  const linears = full - attention - 2 * tokens * config.vocabSize * config.hiddenSize + lmHead;
  let lora = 0;
  for (const s of session.loraSites) lora += 2 * tokens * RANK * (s.inFeatures + s.outFeatures);
  return 2 * linears + 3 * attention + 4 * lora;
}

/** Deterministic feeds: token ids, all tokens real, loss on every predicted token, A and B small random. */
function stepFeeds(session: TrainingSession, vocab: number): TrainingStepFeeds {
  const n = session.microBatch * session.seqLen;
  const inputIds = Array.from({ length: n }, (_, i) => (i * 7919 + 13) % vocab);
  const lossWeights = Array.from({ length: n }, (_, i) => (i % session.seqLen === 0 ? 0 : 1));
  const params: Record<string, Tensor<'f32'>> = {};
  let s = 7;
  for (const p of session.parameters) {
    const size = p.shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(size);
    for (let i = 0; i < size; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      data[i] = (s / 2 ** 32 - 0.5) * 0.02;
    }
    params[p.name] = tensor('f32', p.shape, data);
  }
  return { inputIds, lossWeights, params };
}

/**
 * Peak resident memory of one step above the memory before it. onnxruntime runs the step on the
 * calling thread, so RSS cannot be sampled meanwhile; on Linux the kernel's high-water mark
 * (VmHWM) is reset just before the step (`/proc/self/clear_refs`) and read after it. Elsewhere the
 * process's lifetime peak is used, which is an upper bound only when the step set it.
 */
async function measuredStep(
  session: TrainingSession,
  feeds: TrainingStepFeeds,
): Promise<{ ms: number; peakAbove: number; exact: boolean }> {
  const before = process.memoryUsage().rss;
  let exact = true;
  try {
    writeFileSync('/proc/self/clear_refs', '5');
  } catch {
    exact = false;
  }
  const t0 = performance.now();
  await session.step(feeds);
  const ms = performance.now() - t0;
  let peak = process.resourceUsage().maxRSS * 1024;
  if (exact) {
    const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    if (hwm) peak = Number(hwm[1]) * 1024;
    else exact = false;
  }
  return { ms, peakAbove: peak - before, exact };
}

/** Wall and CPU milliseconds of `fn` (CPU: user + system of every thread of this process). */
async function timed(fn: () => Promise<unknown>): Promise<{ wall: number; cpu: number }> {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await fn();
  const wall = performance.now() - t0;
  const c = process.cpuUsage(c0);
  return { wall, cpu: (c.user + c.system) / 1000 };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

const MiB = 2 ** 20;

export const gradBench: BenchSection = {
  name: 'grad',
  title: 'Training graphs: LoRA step vs bare MatMul rate, QLoRA (nf4) vs LoRA time and memory',
  async run(ctx) {
    const [layers, hidden, intermediate, heads, vocab, batch, seq] = ctx.quick
      ? [2, 256, 688, 4, 2000, 2, 64]
      : [4, 1024, 2816, 16, 32000, 4, 256];
    const config = parseLlamaConfig({
      model_type: 'llama',
      hidden_size: hidden,
      intermediate_size: intermediate,
      num_attention_heads: heads,
      num_key_value_heads: heads,
      num_hidden_layers: layers,
      vocab_size: vocab,
    });
    const repeats = ctx.quick ? 2 : 3;
    const lora = { rank: RANK, alpha: ALPHA, targets: 'all-linear' as const };

    // QLoRA first: peak RSS only grows, so the smaller session's figures are read before the bigger one's.
    const variants = [
      { label: 'QLoRA, nf4 base (MatMulBnb4, bs 64)', mode: 'qlora' as const },
      { label: 'LoRA, f32 base (MatMul)', mode: 'lora' as const },
    ];
    const runs: {
      label: string;
      session: TrainingSession;
      createSeconds: number;
      rssAdded: number;
      firstStep: { ms: number; peakAbove: number; exact: boolean };
      times: { wall: number; cpu: number }[];
    }[] = [];
    let bareFlops = 0;
    let bareCpuMs = 0;
    let bareWallMs = 0;
    try {
      for (const v of variants) {
        ctx.log(`grad: building the ${v.label} training session`);
        collectGarbage();
        const rssBefore = process.memoryUsage().rss;
        const t0 = performance.now();
        const session = await createTrainingSession({
          model: { config, source: randomWeightSource(config) },
          mode: v.mode,
          lora,
          microBatch: batch,
          seqLen: seq,
        });
        const createSeconds = (performance.now() - t0) / 1000;
        collectGarbage();
        const rssReady = process.memoryUsage().rss;
        ctx.log(`grad: first ${v.label} step (its peak memory)`);
        const first = await measuredStep(session, stepFeeds(session, vocab));
        runs.push({
          label: v.label,
          session,
          createSeconds,
          rssAdded: rssReady - rssBefore,
          firstStep: first,
          times: [],
        });
      }
      ctx.log(`grad: ${repeats} steps of each session and the bare MatMul, in turns`);
      const bare = await bareMatMul(hidden, intermediate, batch * seq);
      const bareTimes: { wall: number; cpu: number }[] = [];
      try {
        for (let r = 0; r < repeats; r++) {
          for (const run of runs) {
            const feeds = stepFeeds(run.session, vocab);
            run.times.push(await timed(() => run.session.step(feeds)));
          }
          for (let k = 0; k < 4; k++) {
            const t = await timed(() => bare.run());
            if (k > 0) bareTimes.push(t);
          }
        }
      } finally {
        await bare.release();
      }
      bareFlops = 2 * batch * seq * hidden * intermediate;
      bareCpuMs = Math.min(...bareTimes.map((t) => t.cpu));
      bareWallMs = median(bareTimes.map((t) => t.wall));
    } finally {
      for (const run of runs) await run.session.release();
    }

    const [qlora, loraRun] = runs;
    const flops = loraStepFlops(config, loraRun.session);
    // Ratios from the least CPU time of each: the work done, which unlike wall time does not
    // grow while other processes hold the cores. Wall times are shown as measured.
    const gflops = (ms: number) => flops / (ms / 1e3) / 1e9;
    const leastCpu = (r: (typeof runs)[number]) => Math.min(...r.times.map((t) => t.cpu));
    const wall = (r: (typeof runs)[number]) => median(r.times.map((t) => t.wall));
    const loraMs = leastCpu(loraRun);
    const qloraMs = leastCpu(qlora);
    const bareGflopsPerCpu = bareFlops / (bareCpuMs / 1e3) / 1e9;
    const rateShare = gflops(loraMs) / bareGflopsPerCpu;
    const timeRatio = qloraMs / loraMs;
    const weightRatio = qlora.session.initializerBytes / loraRun.session.initializerBytes;
    // The decoder linears alone (what is quantized): float32 bytes of their weights, and the rest
    // of the initializers (embeddings, lm_head, norms), which both sessions hold alike.
    let linearParams = 0;
    for (const s of loraRun.session.loraSites) linearParams += s.inFeatures * s.outFeatures;
    const unquantized = loraRun.session.initializerBytes - 4 * linearParams;
    const linearRatio = (qlora.session.initializerBytes - unquantized) / (4 * linearParams);
    const rssRatio = qlora.rssAdded / loraRun.rssAdded;
    const plan = planMemory({
      shape: {
        model_type: 'llama',
        hidden_size: hidden,
        intermediate_size: intermediate,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim: hidden / heads,
        vocab_size: vocab,
        tie_word_embeddings: false,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
      },
      lora: { r: RANK, lora_alpha: ALPHA, target_modules: 'all-linear' },
      computeDtype: 'f32',
      adapterDtype: 'f32',
      batchSize: batch,
      seqLen: seq,
      gradientCheckpointing: false,
      attention: 'eager',
    });
    const planned = plan.scenarios.find((s) => s.name === 'lora')?.memory.activations ?? 0;
    const rows = runs.map((r) => [
      r.label,
      r.createSeconds,
      r.session.initializerBytes / MiB,
      r.rssAdded / MiB,
      wall(r),
      gflops(wall(r)),
      leastCpu(r) / 1e3,
      gflops(leastCpu(r)),
      r.firstStep.peakAbove / MiB,
    ]);
    rows.push([
      'bare MatMul (M = batch x seq, up_proj shape)',
      0,
      0,
      0,
      bareWallMs,
      bareFlops / (bareWallMs / 1e3) / 1e9,
      bareCpuMs / 1e3,
      bareGflopsPerCpu,
      0,
    ]);
    const loraActivations = loraRun.firstStep.peakAbove;
    return {
      columns: [
        'session',
        'build s',
        'initializers MiB',
        'RSS added MiB',
        'step ms (wall)',
        'GFLOP/s (wall)',
        'CPU s (least)',
        'GFLOP per CPU s',
        'first step peak RSS above ready MiB',
      ],
      rows,
      notes: [
        `model: ${layers} layers, hidden ${hidden}, intermediate ${intermediate}, ${heads} heads, vocab ${vocab}; batch ${batch} x ${seq} tokens; LoRA r ${RANK}, alpha ${ALPHA} on all seven linears; random weights; ${(flops / 1e9).toFixed(0)} GFLOP per step (forward, backward to the activations, LoRA branches); ${repeats} steps each, sessions and the bare MatMul in turns; wall: median; the goals compare the least CPU time (user + system of all threads), which other processes on the cores do not inflate`,
        `goal (a) LoRA forward + backward >= 0.55 of the bare MatMul rate (per CPU second): ${rateShare.toFixed(2)}: ${rateShare >= 0.55 ? 'met' : 'NOT met'} (wall-clock medians: ${(gflops(wall(loraRun)) / (bareFlops / (bareWallMs / 1e3) / 1e9)).toFixed(2)})`,
        `goal (b) QLoRA nf4 step time <= 1.3x LoRA f32 (CPU time): ${timeRatio.toFixed(2)}x: ${timeRatio <= 1.3 ? 'met' : 'NOT met'} (wall-clock medians: ${(wall(qlora) / wall(loraRun)).toFixed(2)}x)`,
        `goal (b) QLoRA weights' memory <= 0.3x: all initializers ${weightRatio.toFixed(2)}x (${weightRatio <= 0.3 ? 'met' : 'NOT met'}: embeddings and lm_head stay f32 as in bitsandbytes QLoRA, ${(unquantized / MiB).toFixed(0)} MiB in both sessions); the quantized decoder linears ${linearRatio.toFixed(3)}x (${linearRatio <= 0.3 ? 'met' : 'NOT met'}); RSS added by the session ${rssRatio.toFixed(2)}x`,
        `activation memory of one LoRA step (peak RSS of the first step above the ready session${loraRun.firstStep.exact ? ', kernel high-water mark reset before the step' : ', process peak: an upper bound'}): ${(loraActivations / MiB).toFixed(0)} MiB; lora plan's estimate for the same shapes (f32, no checkpointing, eager attention): ${(planned / MiB).toFixed(0)} MiB (${(loraActivations / planned).toFixed(2)}x); QLoRA's step adds the transient dequantized weight of one linear at a time`,
        `machine shared and noisy; ${ctx.quick ? 'quick sizes: ratios not meaningful' : 'ratios measured in this run'}`,
      ],
    };
  },
};
