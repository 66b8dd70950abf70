import { createRng, restoreRng, type Seed64 } from '@lora/core';
import type { Example } from '../data/example.js';
import { buildMicroBatch } from '../data/micro-batch.js';
import { DataOrder } from '../data/order.js';
import { TrainError } from '../errors.js';
import { AdamW } from '../optim/adamw.js';
import { clipGradNorm } from '../optim/clip.js';
import { lrFactor, type ScheduleName } from '../optim/schedule.js';
import { type CheckpointState, saveCheckpoint } from './checkpoint.js';
import type { GradientStep } from './gradient-step.js';
import type { EvalReport, StepReport } from './report.js';

/** The PCG32 stream of the LoRA dropout masks (the data order uses DATA_ORDER_STREAM + epoch). */
export const DROPOUT_STREAM = 0x0d50n;

/** Settings of {@link runTrainingLoop}, with transformers' `TrainingArguments` meanings. */
export interface TrainLoopOptions {
  readonly gradientStep: GradientStep;
  readonly examples: readonly Example[];
  readonly batchSize: number;
  readonly gradAccum: number;
  readonly shuffle: boolean;
  readonly seed: Seed64;
  /** Optimizer steps to run in total (counting the ones a resumed checkpoint already did). */
  readonly totalSteps: number;
  readonly lr: number;
  readonly betas: readonly [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  /** clip_grad_norm_'s max_norm; 0 = no clipping. */
  readonly maxGradNorm: number;
  readonly schedule: ScheduleName;
  readonly warmupSteps: number;
  /** Draw LoRA dropout masks (dropout > 0). */
  readonly dropout: boolean;
  /** Where checkpoints go, and every how many steps (0: only when interrupted). */
  readonly checkpoint?: { readonly dir: string; readonly every: number };
  /** A checkpoint to continue from (see loadCheckpoint). */
  readonly resume?: CheckpointState;
  /** Settings stored in checkpoints; a resume with different ones is refused. */
  readonly fingerprint: Record<string, unknown>;
  readonly evaluate?: { readonly every: number; run(step: number): Promise<EvalReport> };
  readonly onStep?: (report: StepReport) => void;
  /** Aborted (Ctrl-C): the loop finishes the current step, checkpoints, and returns. */
  readonly signal?: AbortSignal;
}

export interface TrainLoopResult {
  readonly steps: readonly StepReport[];
  readonly evals: readonly EvalReport[];
  /** True when stopped by the signal before `totalSteps` (a checkpoint was written if configured). */
  readonly interrupted: boolean;
  /** Step of the last checkpoint written, if any. */
  readonly checkpointStep?: number;
}

/**
 * The training loop, with transformers' Trainer semantics (>= 4.46):
 * - step k's micro-batches come from {@link DataOrder} (epochs in sequence, partial batches kept);
 * - loss = sum of the micro-batches' token cross-entropies / number of predicted label tokens in
 *   the step; the gradient is the same sum's gradient over the same count;
 * - clip_grad_norm_, then AdamW with `lr * lrFactor(k)`, then the scheduler steps;
 * - a non-finite loss or gradient norm stops the run (`LOSS_NOT_FINITE`, naming the step; the
 *   last checkpoint on disk stays the last good one).
 * Parameters are updated in place (`gradientStep.parameters[i].data`).
 */
export async function runTrainingLoop(options: TrainLoopOptions): Promise<TrainLoopResult> {
  const { gradientStep: model, examples } = options;
  const params = model.parameters;
  const order = new DataOrder({
    numExamples: examples.length,
    batchSize: options.batchSize,
    gradAccum: options.gradAccum,
    shuffle: options.shuffle,
    seed: options.seed,
  });
  const optimizer = new AdamW(params, {
    betas: options.betas,
    eps: options.eps,
    weightDecay: options.weightDecay,
  });
  let dropoutRng = createRng(options.seed, DROPOUT_STREAM);
  const steps: StepReport[] = [];
  const evals: EvalReport[] = [];
  let start = 0;
  if (options.resume) {
    const r = options.resume;
    for (const p of params) p.data.set(r.parameters.get(p.name)!);
    optimizer.loadState(r.optimizer);
    dropoutRng = restoreRng(r.dropoutRng);
    steps.push(...r.history);
    evals.push(...r.evals);
    start = r.step;
  }
  let checkpointStep: number | undefined = options.resume?.step;
  const checkpoint = async (done: number) => {
    if (!options.checkpoint) return;
    await saveCheckpoint(
      options.checkpoint.dir,
      {
        step: done,
        parameters: new Map(params.map((p) => [p.name, p.data])),
        optimizer: optimizer.saveState(),
        dropoutRng: dropoutRng.saveState(),
        history: steps,
        evals,
        fingerprint: options.fingerprint,
      },
      params,
    );
    checkpointStep = done;
  };
  const schedule = {
    name: options.schedule,
    warmupSteps: options.warmupSteps,
    totalSteps: options.totalSteps,
  };

  for (let k = start; k < options.totalSteps; k++) {
    if (options.signal?.aborted) {
      await checkpoint(k);
      return { steps, evals, interrupted: true, checkpointStep };
    }
    const began = performance.now();
    const data = order.step(k);
    // The step's gradient sums, float32 as torch accumulates .grad: the first micro-batch's output
    // buffers are taken over, later ones added in.
    let grads: Float32Array[] | undefined;
    let lossSum = 0;
    let labelTokens = 0;
    let tokens = 0;
    for (const indices of data.microBatches) {
      const batch = buildMicroBatch(
        indices.map((i) => examples[i]),
        model.batchSize,
        model.seqLen,
      );
      const out = await model.run(batch, options.dropout ? dropoutRng : undefined);
      if (out.tokenCount !== batch.labelTokens) {
        throw new TrainError(
          'INTERNAL',
          `step ${k + 1}: the graph counted ${out.tokenCount} label tokens, the batch has ${batch.labelTokens}.`,
        );
      }
      lossSum += out.lossSum;
      labelTokens += batch.labelTokens;
      tokens += batch.tokens;
      if (!grads) grads = out.grads.map((g) => g);
      else {
        out.grads.forEach((g, i) => {
          const acc = (grads as Float32Array[])[i];
          for (let j = 0; j < acc.length; j++) acc[j] += g[j];
        });
      }
    }
    const loss = lossSum / labelTokens;
    const stepGrads = grads as Float32Array[];
    for (const g of stepGrads) for (let j = 0; j < g.length; j++) g[j] /= labelTokens;
    const gradNorm = clipGradNorm(stepGrads, options.maxGradNorm);
    if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
      const kept =
        checkpointStep !== undefined
          ? ` The last good checkpoint (step ${checkpointStep}) is kept in ${options.checkpoint?.dir}.`
          : '';
      throw new TrainError(
        'LOSS_NOT_FINITE',
        `step ${k + 1}: the ${!Number.isFinite(loss) ? `loss is ${loss}` : `gradient norm is ${gradNorm}`}${labelTokens === 0 ? ' (no label token in this step)' : ''}; training stopped.${kept} Lower --lr, or check the data.`,
        { step: k + 1, checkpointStep },
      );
    }
    const lr = options.lr * lrFactor(schedule, k);
    optimizer.step(stepGrads, lr);
    const seconds = (performance.now() - began) / 1000;
    const report: StepReport = {
      step: k + 1,
      epoch: data.epoch,
      loss,
      lr,
      grad_norm: gradNorm,
      tokens: labelTokens,
      tokens_per_s: seconds > 0 ? tokens / seconds : 0,
    };
    steps.push(report);
    options.onStep?.(report);
    const done = k + 1;
    if (options.evaluate && options.evaluate.every > 0 && done % options.evaluate.every === 0) {
      evals.push(await options.evaluate.run(done));
    }
    if (
      options.checkpoint &&
      options.checkpoint.every > 0 &&
      done % options.checkpoint.every === 0
    ) {
      await checkpoint(done);
    }
  }
  return { steps, evals, interrupted: false, checkpointStep };
}
