import type { Rng } from '@lora/core';
import {
  type BaseQuantOptions,
  createTrainingSession,
  type Device,
  type LlamaConfig,
  type TrainingSession,
  type WeightSource,
} from '@lora/runtime-onnx';
import type { MicroBatch } from '../data/micro-batch.js';
import { TrainError } from '../errors.js';
import type { GradientStep, GradientStepResult } from '../loop/gradient-step.js';
import type { LoraSetup } from '../lora/lora-setup.js';
import { decaysWeight, type Parameter } from '../optim/parameters.js';

/** How a LLaMA model trains: LoRA on a float base, LoRA on a 4-bit base, or every weight. */
export type TrainMethod = 'lora' | 'qlora' | 'full';

export interface LlamaGradientStepOptions {
  readonly config: LlamaConfig;
  /** The base weights (for `qlora`: stored 4-bit, or quantized on load with `quant`). */
  readonly source: WeightSource;
  readonly method: TrainMethod;
  readonly batchSize: number;
  readonly seqLen: number;
  /** LoRA / QLoRA: the adapter being trained. */
  readonly lora?: LoraSetup;
  /** QLoRA with a float source: quantize the decoder linears on load. */
  readonly quant?: BaseQuantOptions;
  readonly device?: Device;
  readonly intraOpNumThreads?: number;
  readonly warn?: (message: string) => void;
}

/**
 * A {@link GradientStep} over the runtime's training session (`createTrainingSession`: forward +
 * backward as one onnxruntime session, built once). Loss weights are 1 where the next-token label
 * is not -100 (padding and prompt positions 0). LoRA dropout masks are drawn from the loop's
 * generator, one 32-bit draw per element of each targeted linear's input (kept with probability 1 - p).
 */
export async function createLlamaGradientStep(
  options: LlamaGradientStepOptions,
): Promise<GradientStep> {
  const { config, method, batchSize, seqLen, lora: setup } = options;
  if (method !== 'full') {
    if (!setup) throw new TrainError('INTERNAL', 'LoRA training needs the adapter setup.');
    if (
      new Set(setup.modules.map((m) => m.rank)).size > 1 ||
      new Set(setup.modules.map((m) => m.scaling)).size > 1
    ) {
      throw new TrainError(
        'SETTINGS_UNSUPPORTED',
        'the adapter has per-module ranks or alphas (rank_pattern / alpha_pattern); training supports one rank and alpha for all modules.',
      );
    }
  }
  const targeted = new Set(setup?.modules.map((m) => m.module));
  const session: TrainingSession = await createTrainingSession({
    model: { config, source: options.source },
    mode: method,
    lora: setup && {
      rank: setup.config.r,
      alpha: setup.config.lora_alpha,
      rslora: setup.config.use_rslora,
      dropout: setup.config.lora_dropout,
      targets: (m: string) => targeted.has(m),
    },
    quant: method === 'qlora' ? options.quant : undefined,
    microBatch: batchSize,
    seqLen,
    device: options.device,
    intraOpNumThreads: options.intraOpNumThreads,
    warn: options.warn,
  });
  let parameters: Parameter[];
  /** The session's name of each parameter, same order. */
  let sessionNames: string[];
  if (method === 'full') {
    const initial = session.initialParameters!;
    parameters = session.parameters.map((p) => ({
      name: p.name,
      shape: p.shape,
      // The session read these for us; training updates them in place (no second copy of the model).
      data: initial.get(p.name)!.data,
      decay: decaysWeight(p.name),
    }));
    sessionNames = parameters.map((p) => p.name);
  } else {
    const byModule = new Map(setup!.modules.map((m) => [m.module, m]));
    parameters = [];
    sessionNames = [];
    for (const site of session.loraSites) {
      const m = byModule.get(site.module);
      if (!m || Math.abs(site.scale - m.scaling) > 1e-12 * Math.abs(m.scaling)) {
        throw new TrainError(
          'INTERNAL',
          `training graph branch ${site.module} does not match the adapter.`,
        );
      }
      parameters.push(m.A, m.B);
      sessionNames.push(site.aInput, site.bInput);
    }
    if (parameters.length !== setup!.parameters.length) {
      throw new TrainError(
        'INTERNAL',
        `the training graph has ${parameters.length / 2} LoRA branches, the adapter ${setup!.modules.length}.`,
      );
    }
  }
  const dropoutSites = session.loraSites.filter((s) => s.dropoutInput);
  // Keep an element when a 32-bit draw is below (1 - p) * 2^32: probability 1 - p, one draw each.
  const keepThreshold = Math.round((1 - (setup?.config.lora_dropout ?? 0)) * 2 ** 32);
  const keepMasks = new Map(
    dropoutSites.map((s) => [s.module, new Uint8Array(batchSize * seqLen * s.inFeatures)]),
  );
  const lossWeights = new Float32Array(batchSize * seqLen);
  return {
    parameters,
    batchSize,
    seqLen,
    async run(batch: MicroBatch, dropoutRng?: Rng): Promise<GradientStepResult> {
      for (let i = 0; i < lossWeights.length; i++) {
        // Weight of predicting token t from position t - 1 (column 0 is never predicted).
        lossWeights[i] =
          i % seqLen !== 0 && batch.attentionMask[i] === 1 && batch.labels[i] !== -100 ? 1 : 0;
      }
      const params: Record<string, Float32Array> = {};
      parameters.forEach((p, i) => {
        params[sessionNames[i]] = p.data;
      });
      for (const [, keep] of keepMasks) {
        if (dropoutRng)
          for (let j = 0; j < keep.length; j++)
            keep[j] = dropoutRng.nextUint32() < keepThreshold ? 1 : 0;
        else keep.fill(1);
      }
      const out = await session.step({
        inputIds: batch.inputIds,
        attentionMask: batch.attentionMask,
        lossWeights,
        params,
        dropoutMasks: keepMasks.size > 0 ? Object.fromEntries(keepMasks) : undefined,
      });
      return {
        lossSum: out.lossSum,
        tokenCount: out.tokenCount,
        grads: sessionNames.map((n) => out.grads[n].data),
      };
    },
    release: () => session.release(),
  };
}
