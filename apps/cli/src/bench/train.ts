import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseLlamaConfig } from '@lora/runtime-onnx';
import { collectGarbage, randomWeightSource } from './runtime.js';
import type { BenchSection, BenchTable } from './types.js';

/**
 * `lora bench --only train`: one optimizer step (forward + backward + clip + AdamW) on the PyTorch
 * training peer's shape (../shared/reference/peers.md: 4 layers, hidden 1024, intermediate 2816,
 * 16 heads, vocabulary 32000, batch 4 x 256 tokens, LoRA r 8 on all seven linears), for LoRA,
 * QLoRA nf4 + double quant and full fine-tuning, each in its own process (so each peak RSS is its
 * own), and the PyTorch peer script beside them when the reference venv and the script exist.
 */
const WORKER_ENV = 'LORA_BENCH_TRAIN_METHOD';
const METHODS = ['lora', 'qlora', 'full'] as const;
type Method = (typeof METHODS)[number];

const BIN = fileURLToPath(new URL('../../bin/lora.js', import.meta.url));
const REPO = fileURLToPath(new URL('../../../../', import.meta.url));
const PYTHON = `${REPO}.venv-ref/bin/python`;
const PEER = `${REPO}../shared/reference/peers/torch_lora_bench.py`;

function shape(quick: boolean) {
  return quick
    ? { H: 256, I: 704, L: 2, heads: 4, V: 4000, B: 2, T: 64, r: 8 }
    : { H: 1024, I: 2816, L: 4, heads: 16, V: 32000, B: 4, T: 256, r: 8 };
}

interface WorkerResult {
  method: Method;
  stepSeconds: number;
  weightsBytes: number;
  /** Bytes of the decoder linears as the session holds them (f32, or packed 4-bit + statistics). */
  linearBytes: number;
  peakRssBytes: number;
}

/** One method, in this process: build the session, time optimizer steps, report memory. */
async function runWorker(
  method: Method,
  quick: boolean,
  log: (m: string) => void,
): Promise<BenchTable> {
  const train = await import('@lora/train');
  const s = shape(quick);
  const config = parseLlamaConfig({
    model_type: 'llama',
    hidden_size: s.H,
    intermediate_size: s.I,
    num_attention_heads: s.heads,
    num_key_value_heads: s.heads,
    num_hidden_layers: s.L,
    vocab_size: s.V,
    max_position_embeddings: 4096,
  });
  let source = randomWeightSource(config);
  collectGarbage();
  const rssBefore = process.memoryUsage().rss;
  let setup: Awaited<ReturnType<typeof train.createLoraSetup>> | undefined;
  if (method !== 'full') {
    const loraConfig = train.loraConfigFromSettings(
      { rank: s.r, alpha: 16, targets: 'all-linear', dropout: 0 },
      config,
      null,
    );
    setup = await train.createLoraSetup(config, loraConfig, { seed: 0 });
  }
  if (method === 'qlora') source = await train.doubleQuantizedBase(source, config, 'nf4', 64);
  let linearBytes = 0;
  for (const name of source.names()) {
    if (!/\.layers\.\d+\.(self_attn|mlp)\./.test(name)) continue;
    const info = source.info(name);
    if (!info) continue;
    const bytesPer = info.dtype === 'u8' ? 1 : 4;
    linearBytes += info.shape.reduce((a, b) => a * b, 1) * bytesPer;
  }
  log(`train: building the ${method} training session`);
  // T + 1 tokens per row: logits at T positions predict T tokens, as the peer's ids[:, :-1] -> ids[:, 1:].
  const step = await train.createLlamaGradientStep({
    config,
    source,
    method,
    batchSize: s.B,
    seqLen: s.T + 1,
    lora: setup,
  });
  collectGarbage();
  const weightsBytes = process.memoryUsage().rss - rssBefore;
  const examples = Array.from({ length: s.B }, (_, b) => {
    const ids = Int32Array.from({ length: s.T + 1 }, (_, t) => (b * 7919 + t * 104729) % s.V);
    return { inputIds: ids, labels: ids };
  });
  const repeats = quick ? 2 : 3;
  const times: number[] = [];
  await train.runTrainingLoop({
    gradientStep: step,
    examples,
    batchSize: s.B,
    gradAccum: 1,
    shuffle: false,
    seed: 0,
    totalSteps: repeats + 1,
    lr: 1e-4,
    betas: [0.9, 0.999],
    eps: 1e-8,
    weightDecay: 0,
    maxGradNorm: 1,
    schedule: 'constant',
    warmupSteps: 0,
    dropout: false,
    fingerprint: {},
    onStep: (r) => {
      const seconds = (s.B * (s.T + 1)) / r.tokens_per_s;
      log(`train: ${method} step ${r.step}: ${seconds.toFixed(2)} s`);
      if (r.step > 1) times.push(seconds);
    },
  });
  await step.release();
  const result: WorkerResult = {
    method,
    stepSeconds: times.sort((a, b) => a - b)[Math.floor(times.length / 2)],
    weightsBytes,
    linearBytes,
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
  };
  return { columns: ['result'], rows: [[JSON.stringify(result)]] };
}

function runChild(method: Method, quick: boolean, log: (m: string) => void): WorkerResult {
  log(`train: ${method} in its own process`);
  const args = [
    '--expose-gc',
    BIN,
    'bench',
    '--only',
    'train',
    '--in-process',
    '--json',
    '--quiet',
  ];
  if (quick) args.push('--quick');
  const child = spawnSync(process.execPath, args, {
    env: { ...process.env, [WORKER_ENV]: method },
    stdio: ['ignore', 'pipe', 'inherit'],
    encoding: 'utf8',
    maxBuffer: 16 * 1024 * 1024,
  });
  if (child.status !== 0)
    throw new Error(`bench train: the ${method} process failed (exit ${child.status}).`);
  const doc = JSON.parse(child.stdout) as { sections: BenchTable[] };
  return JSON.parse(String(doc.sections[0].rows[0][0])) as WorkerResult;
}

interface PeerResult {
  step_s: number;
  peak_rss_mb: number;
  peer: string;
}

function runPeer(mode: 'lora' | 'full', log: (m: string) => void): PeerResult | undefined {
  log(`train: PyTorch peer, ${mode}`);
  const child = spawnSync(PYTHON, [PEER, mode, '2'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    encoding: 'utf8',
  });
  if (child.status !== 0) return undefined;
  return JSON.parse(child.stdout.trim().split('\n').at(-1) ?? '{}') as PeerResult;
}

const mb = (bytes: number) => Math.round(bytes / 2 ** 20);

export const trainBench: BenchSection = {
  name: 'train',
  title:
    'Training step on the PyTorch peer shape: LoRA vs full, QLoRA nf4 + DQ memory, PyTorch beside',
  async run(ctx) {
    const worker = process.env[WORKER_ENV] as Method | undefined;
    if (worker) return runWorker(worker, ctx.quick, ctx.log);
    const s = shape(ctx.quick);
    const ours = Object.fromEntries(
      METHODS.map((m) => [m, runChild(m, ctx.quick, ctx.log)]),
    ) as Record<Method, WorkerResult>;
    const peerAvailable = !ctx.quick && existsSync(PYTHON) && existsSync(PEER);
    const peer = peerAvailable
      ? { lora: runPeer('lora', ctx.log), full: runPeer('full', ctx.log) }
      : undefined;
    const rows: (string | number)[][] = METHODS.map((m) => [
      `ours ${m === 'qlora' ? 'qlora nf4+dq' : m}`,
      Number(ours[m].stepSeconds.toFixed(3)),
      mb(ours[m].linearBytes),
      mb(ours[m].weightsBytes),
      mb(ours[m].peakRssBytes),
    ]);
    for (const m of ['lora', 'full'] as const) {
      const p = peer?.[m];
      if (p) rows.push([`${p.peer} ${m}`, p.step_s, '-', '-', p.peak_rss_mb]);
    }
    const notes = [
      `shape: ${s.L} layers, hidden ${s.H}, intermediate ${s.I}, ${s.heads} heads, vocab ${s.V}, batch ${s.B} x ${s.T} tokens, LoRA r ${s.r} on all seven linears; step = forward + backward + clip + AdamW; median of timed steps after one warm-up step.`,
      `LoRA step / full step: ${(ours.lora.stepSeconds / ours.full.stepSeconds).toFixed(2)}x (goal <= 0.6).`,
      `QLoRA / LoRA decoder-linear weights: ${(ours.qlora.linearBytes / ours.lora.linearBytes).toFixed(3)}x (goal <= 0.3; embeddings, lm_head and norms stay float32 as in QLoRA); RSS added by building the session (all weights + session): ${(ours.qlora.weightsBytes / ours.lora.weightsBytes).toFixed(2)}x.`,
    ];
    if (peer?.lora) {
      notes.push(
        `ours LoRA step / PyTorch LoRA step: ${(ours.lora.stepSeconds / peer.lora.step_s).toFixed(2)}x (goal <= 0.5); peak RSS ${mb(ours.lora.peakRssBytes)} MB vs ${peer.lora.peak_rss_mb} MB (goal: at most PyTorch's).`,
      );
    } else if (!ctx.quick) {
      notes.push(`PyTorch peer not run (${PYTHON} or ${PEER} missing).`);
    }
    if (peer?.full)
      notes.push(
        `ours full step / PyTorch full step: ${(ours.full.stepSeconds / peer.full.step_s).toFixed(2)}x.`,
      );
    notes.push('Measured beside each other in one run; the machine may be shared with other work.');
    return { columns: ['run', 'step s', 'linears MB', 'session MB', 'peak RSS MB'], rows, notes };
  },
};
