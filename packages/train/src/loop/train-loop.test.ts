import { mkdtemp, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Example } from '../data/example.js';
import { bigramStep } from '../test-utils/bigram.js';
import { loadCheckpoint } from './checkpoint.js';
import { runTrainingLoop, type TrainLoopOptions } from './train-loop.js';

// Made by scripts/reference/train-loop-bigram.py: the same bigram model trained in PyTorch with
// transformers Trainer semantics (no shuffle, grad accumulation across a partial last batch and
// epoch boundaries, clipping, AdamW with decay groups, cosine warmup).
const ref = JSON.parse(
  readFileSync(new URL('./testdata/bigram-trajectory.json', import.meta.url), 'utf8'),
) as {
  settings: {
    vocab: number;
    batch_size: number;
    grad_accum: number;
    steps: number;
    warmup: number;
    lr: number;
    betas: [number, number];
    eps: number;
    weight_decay: number;
    max_grad_norm: number;
  };
  rows: { input_ids: number[]; labels: number[] }[];
  init: { weight: number[]; bias: number[] };
  steps: { step: number; loss: number; lr: number; grad_norm: number; tokens: number }[];
  final: { weight: number[]; bias: number[] };
};
const s = ref.settings;
const examples: Example[] = ref.rows.map((r) => ({
  inputIds: Int32Array.from(r.input_ids),
  labels: Int32Array.from(r.labels),
}));
const seqLen = Math.max(...examples.map((e) => e.inputIds.length));

function options(extra: Partial<TrainLoopOptions> = {}): TrainLoopOptions {
  return {
    gradientStep: bigramStep(s.vocab, ref.init, s.batch_size, seqLen),
    examples,
    batchSize: s.batch_size,
    gradAccum: s.grad_accum,
    shuffle: false,
    seed: 0,
    totalSteps: s.steps,
    lr: s.lr,
    betas: s.betas,
    eps: s.eps,
    weightDecay: s.weight_decay,
    maxGradNorm: s.max_grad_norm,
    schedule: 'cosine',
    warmupSteps: s.warmup,
    dropout: false,
    fingerprint: { seed: 0 },
    ...extra,
  };
}

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lora-train-loop-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('training loop against the PyTorch trajectory (bigram model)', () => {
  it('per-step loss, lr, grad norm, label tokens and final parameters match', async () => {
    const opts = options();
    const result = await runTrainingLoop(opts);
    expect(result.steps.length).toBe(s.steps);
    result.steps.forEach((st, i) => {
      const r = ref.steps[i];
      expect(st.step).toBe(r.step);
      expect(st.tokens).toBe(r.tokens);
      expect(Math.abs(st.loss - r.loss)).toBeLessThan(1e-5 * r.loss);
      expect(st.lr).toBeCloseTo(r.lr, 12);
      expect(Math.abs(st.grad_norm - r.grad_norm)).toBeLessThan(1e-5 * r.grad_norm);
    });
    // 13 rows, batches of 2 -> 7 micro-batches -> 4 steps per epoch: step 5 opens epoch 1.
    expect(result.steps.map((x) => x.epoch)).toEqual([0, 0, 0, 0, 1, 1, 1, 1, 2, 2]);
    const [w, b] = opts.gradientStep.parameters;
    for (const [ours, theirs] of [
      [w.data, ref.final.weight],
      [b.data, ref.final.bias],
    ] as const) {
      for (let i = 0; i < theirs.length; i++)
        expect(Math.abs(ours[i] - theirs[i])).toBeLessThan(1e-5);
    }
  });

  it('stopping (signal) after a checkpoint and resuming gives bit-identical parameters', async () => {
    const full = options();
    await runTrainingLoop(full);
    const ckpt = join(dir, 'ckpt');
    const controller = new AbortController();
    const first = options({
      checkpoint: { dir: ckpt, every: 3 },
      onStep: (r) => r.step === 5 && controller.abort(),
      signal: controller.signal,
    });
    const stopped = await runTrainingLoop(first);
    expect(stopped.interrupted).toBe(true);
    expect(stopped.steps.length).toBe(5);
    const second = options({ checkpoint: { dir: ckpt, every: 3 } });
    const state = await loadCheckpoint(ckpt, second.gradientStep.parameters, { seed: 0 });
    expect(state.step).toBe(5);
    const resumed = await runTrainingLoop({ ...second, resume: state });
    expect(resumed.steps.map((x) => x.loss)).toEqual(
      (await runTrainingLoop(options())).steps.map((x) => x.loss),
    );
    full.gradientStep.parameters.forEach((p, i) => {
      expect(
        Buffer.from(second.gradientStep.parameters[i].data.buffer).equals(
          Buffer.from(p.data.buffer),
        ),
      ).toBe(true);
    });
    await expect(
      loadCheckpoint(ckpt, second.gradientStep.parameters, { seed: 1 }),
    ).rejects.toMatchObject({
      code: 'CHECKPOINT_MISMATCH',
    });
  });

  it('a non-finite loss stops with the step named and keeps the last checkpoint', async () => {
    const ckpt = join(dir, 'ckpt');
    const opts = options({ checkpoint: { dir: ckpt, every: 2 }, lr: 1e30, maxGradNorm: 0 });
    const err = await runTrainingLoop(opts).catch((e) => e);
    expect(err.code).toBe('LOSS_NOT_FINITE');
    expect(err.message).toMatch(/^step \d+: the loss is NaN|^step \d+: the (loss|gradient norm)/);
    const state = await loadCheckpoint(ckpt, opts.gradientStep.parameters, { seed: 0 });
    expect(err.details.checkpointStep).toBe(state.step);
    expect(state.parameters.get('bigram.weight')!.every(Number.isFinite)).toBe(true);
  });
});
