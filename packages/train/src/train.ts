import { existsSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { type Adapter, loadPeftAdapter, savePeftAdapter } from '@lora/adapters';
import type { Tensor } from '@lora/core';
import { type Bnb4Format, isBnb4Format, type QuantFormat } from '@lora/quant';
import {
  type BaseQuantOptions,
  type Device,
  type LlamaConfig,
  loadTokenizer,
  openLlamaFolder,
  storedQuantization,
  type WeightSource,
} from '@lora/runtime-onnx';
import { loadDataset } from './data/dataset.js';
import { stepsPerEpoch } from './data/order.js';
import { TrainError } from './errors.js';
import { type EvalModel, openEvalModel } from './eval/eval-model.js';
import { evaluateLoss } from './eval/evaluate.js';
import { loadCheckpoint, removeCheckpoint } from './loop/checkpoint.js';
import type { GradientStep } from './loop/gradient-step.js';
import type { EvalReport, StepReport } from './loop/report.js';
import { runTrainingLoop } from './loop/train-loop.js';
import {
  contradictions,
  createLoraSetup,
  type LoraSettings,
  type LoraSetup,
  llamaLinearModules,
  loraConfigFromSettings,
  loraSetupToAdapter,
} from './lora/lora-setup.js';
import { doubleQuantizedBase, overriddenWeights } from './model/base-source.js';
import { createLlamaGradientStep, type TrainMethod } from './model/llama-gradient-step.js';
import type { ScheduleName } from './optim/schedule.js';
import { convertToPlainLora } from './output/pissa-conversion.js';
import { saveFullModel } from './output/save-full.js';

/** QLoRA's 4-bit base. */
export interface QuantSettings {
  readonly format: QuantFormat;
  /** Default 64 (nf4/fp4), 32 (int4/uint4). */
  readonly blockSize?: number;
  /** nf4/fp4 only: quantize the absmax statistics again (QLoRA's double quantization). */
  readonly doubleQuant?: boolean;
}

/**
 * Everything `lora train` does, as a function. Defaults (those of `lora train`): method lora, rank 8,
 * alpha 16, targets q_proj,v_proj, dropout 0.05, 1 epoch, batch 4, grad accum 1, shuffle with seed
 * 42, lr 2e-4, weight decay 0, betas 0.9,0.999, eps 1e-8, max grad norm 1, linear schedule without
 * warmup.
 */
export interface TrainOptions {
  /** A Hugging Face LLaMA-family model folder (config.json, safetensors, tokenizer). */
  readonly model: string;
  /** JSONL training data. */
  readonly data: string;
  /** The output folder: a PEFT adapter (lora, qlora) or a model folder (full). */
  readonly output: string;
  readonly method?: TrainMethod;
  /** QLoRA's base quantization (default nf4, block 64, double quant). */
  readonly quant?: QuantSettings;
  readonly lora?: LoraSettings;
  /** Start from this PEFT adapter (its config and weights); contradicting `lora` settings are an error. */
  readonly initAdapter?: string;
  /** Optimizer steps; or `epochs` (default 1 epoch). */
  readonly steps?: number;
  readonly epochs?: number;
  /** Rows per micro-batch (default 4). */
  readonly batchSize?: number;
  /** Micro-batches per optimizer step (default 1). */
  readonly gradAccum?: number;
  /** Sequence length of the training graph: rows are cut to it; default the longest row. */
  readonly seqLen?: number;
  readonly packing?: boolean;
  /** Default true: a seeded permutation per epoch. */
  readonly shuffle?: boolean;
  /** Seed of data order, LoRA init and dropout (default 42, transformers' default). */
  readonly seed?: number;
  readonly lr?: number;
  readonly weightDecay?: number;
  readonly betas?: readonly [number, number];
  readonly eps?: number;
  /** Default 1.0; 0 turns clipping off. */
  readonly maxGradNorm?: number;
  /** Default `linear` (transformers' default). */
  readonly schedule?: ScheduleName;
  readonly warmupSteps?: number;
  /** Write a checkpoint every N optimizer steps (0: only on interruption). */
  readonly checkpointEvery?: number;
  /** Checkpoint folder; default `<output>.checkpoint`. */
  readonly checkpointDir?: string;
  /** Continue from the checkpoint folder. */
  readonly resume?: boolean;
  readonly evalData?: string;
  /** Evaluate every N steps (and at the end) when `evalData` is given; default: at the end only. */
  readonly evalEvery?: number;
  /** Replace an existing output folder. */
  readonly overwrite?: boolean;
  /** The command writing the output, recorded in its weights' metadata (`lora.writer`). */
  readonly writer?: string;
  readonly device?: Device;
  readonly intraOpNumThreads?: number;
  /** Called after every optimizer step. */
  readonly onStep?: (report: StepReport, totalSteps: number) => void;
  /** Called once the run is set up (data read, session built), before the first step. */
  readonly onStart?: (info: {
    totalSteps: number;
    startStep: number;
    examples: number;
    seqLen: number;
  }) => void;
  readonly onEval?: (report: EvalReport) => void;
  readonly warn?: (message: string) => void;
  /** Abort (Ctrl-C): finish the current step, write a checkpoint, return with `interrupted`. */
  readonly signal?: AbortSignal;
}

/** What a run did. */
export interface TrainResult {
  /** The output folder, or undefined when interrupted. */
  readonly output?: string;
  readonly interrupted: boolean;
  readonly checkpoint?: { readonly dir: string; readonly step: number };
  readonly steps: readonly StepReport[];
  readonly evals: readonly EvalReport[];
  /** The resolved settings (every default filled in). */
  readonly settings: Record<string, unknown>;
  readonly data: {
    readonly rows: number;
    readonly examples: number;
    readonly labelTokens: number;
    readonly truncatedRows: number;
  };
  /** Trainable parameters. */
  readonly trainableParameters: number;
  /** Peak resident memory of the process so far. */
  readonly peakRssBytes: number;
}

function invalid(message: string): TrainError {
  return new TrainError('SETTINGS_INVALID', message);
}

function positiveInt(name: string, v: number | undefined, fallback: number): number {
  const x = v ?? fallback;
  if (!Number.isSafeInteger(x) || x < 1)
    throw invalid(`${name} must be a positive integer, got ${x}.`);
  return x;
}

/** The settings, defaults filled in and checked. */
function resolveSettings(o: TrainOptions) {
  const method = o.method ?? 'lora';
  if (!['lora', 'qlora', 'full'].includes(method))
    throw invalid(`method must be lora, qlora or full, got "${method}".`);
  if (o.steps !== undefined && o.epochs !== undefined)
    throw invalid('give the number of steps or of epochs, not both.');
  if (method !== 'qlora' && o.quant) throw invalid('quantization (--quant) is for --method qlora.');
  if (method === 'full' && (o.lora || o.initAdapter))
    throw invalid('LoRA settings and --init-adapter do not apply to --method full.');
  const quant =
    method === 'qlora'
      ? {
          format: o.quant?.format ?? 'nf4',
          blockSize: o.quant?.blockSize,
          doubleQuant: o.quant?.doubleQuant ?? false,
        }
      : undefined;
  if (quant?.doubleQuant && !isBnb4Format(quant.format))
    throw invalid('double quantization is for nf4 and fp4.');
  const lr = o.lr ?? 2e-4;
  const maxGradNorm = o.maxGradNorm ?? 1;
  if (!(lr >= 0) || !Number.isFinite(lr))
    throw invalid(`lr must be a finite number >= 0, got ${lr}.`);
  if (!(maxGradNorm >= 0)) throw invalid(`max grad norm must be >= 0, got ${maxGradNorm}.`);
  const warmupSteps = o.warmupSteps ?? 0;
  if (!Number.isSafeInteger(warmupSteps) || warmupSteps < 0)
    throw invalid(`warmup steps must be an integer >= 0, got ${warmupSteps}.`);
  return {
    method,
    quant,
    batchSize: positiveInt('batch size', o.batchSize, 4),
    gradAccum: positiveInt('grad accum', o.gradAccum, 1),
    steps: o.steps === undefined ? undefined : positiveInt('steps', o.steps, 1),
    epochs: o.steps === undefined ? positiveInt('epochs', o.epochs, 1) : undefined,
    seqLen: o.seqLen === undefined ? undefined : positiveInt('seq len', o.seqLen, 1),
    packing: o.packing ?? false,
    shuffle: o.shuffle ?? true,
    seed: o.seed ?? 42,
    lr,
    weightDecay: o.weightDecay ?? 0,
    betas: o.betas ?? ([0.9, 0.999] as const),
    eps: o.eps ?? 1e-8,
    maxGradNorm,
    schedule: o.schedule ?? 'linear',
    warmupSteps,
    checkpointEvery: o.checkpointEvery ?? 0,
  };
}

/**
 * Fine-tunes a LLaMA-family model folder on a JSONL dataset: LoRA (PEFT adapter out), QLoRA (the
 * same over a 4-bit base held packed in memory), or full (a model folder out). The data, the
 * adapter setup, the output path and (with `resume`) the checkpoint are all checked before the
 * first step; the output is written once, atomically, at the end.
 */
export async function train(options: TrainOptions): Promise<TrainResult> {
  const s = resolveSettings(options);
  const output = resolve(options.output);
  if (existsSync(output) && !options.overwrite) {
    throw new TrainError(
      'OUTPUT_EXISTS',
      `${output} already exists. Choose another output or allow overwriting (--force).`,
      {
        path: output,
      },
    );
  }
  const checkpointDir = resolve(
    options.checkpointDir ?? join(dirname(output), `${basename(output)}.checkpoint`),
  );
  const { config, source } = await openLlamaFolder(options.model);
  const releases: (() => Promise<void>)[] = [() => source.close()];
  try {
    const maxContext = config.maxPositionEmbeddings;
    if (s.seqLen !== undefined && maxContext !== undefined && s.seqLen > maxContext) {
      throw new TrainError(
        'SEQ_LEN_TOO_LONG',
        `sequence length ${s.seqLen} is above the model's context (max_position_embeddings = ${maxContext}). Use --seq-len ${maxContext} or less.`,
      );
    }
    const tokenizer = () => loadTokenizer(options.model);
    const dataset = await loadDataset(options.data, {
      vocabSize: config.vocabSize,
      tokenizer,
      seqLen: s.seqLen,
      packing: s.packing,
    });
    const evalSet = options.evalData
      ? await loadDataset(options.evalData, {
          vocabSize: config.vocabSize,
          tokenizer,
          seqLen: s.seqLen,
          packing: s.packing,
        })
      : undefined;
    const seqLen = Math.max(2, s.seqLen ?? dataset.maxLength);
    if (maxContext !== undefined && seqLen > maxContext) {
      throw new TrainError(
        'SEQ_LEN_TOO_LONG',
        `${options.data}: the longest row has ${dataset.maxLength} tokens, above the model's context (max_position_embeddings = ${maxContext}). Pass --seq-len ${maxContext} to cut rows.`,
      );
    }

    // The adapter (LoRA / QLoRA) and the base the graph trains on.
    let setup: LoraSetup | undefined;
    let base: WeightSource = source;
    let runtimeQuant: BaseQuantOptions | undefined;
    let initial: Map<string, { A: Float32Array; B: Float32Array }> | undefined;
    if (s.method !== 'full') {
      setup = await createAdapterSetup(options, config, s.seed, source);
      if (setup.baseOverrides.size > 0) {
        base = overriddenWeights(source, setup.baseOverrides);
        initial = new Map(
          setup.modules.map((m) => [m.module, { A: m.A.data.slice(), B: m.B.data.slice() }]),
        );
      }
      const storedFourBit = storedQuantization(
        source,
        `${llamaLinearModules(config)[0].module}.weight`,
      );
      if (storedFourBit) {
        // A folder written by `lora quantize`: its 4-bit weights are used as stored.
        options.warn?.(
          `${options.model} holds 4-bit weights (${storedFourBit} layout); they are trained on as stored.`,
        );
      } else if (s.quant) {
        if (s.quant.doubleQuant) {
          const blockSize = s.quant.blockSize ?? 64;
          base = await doubleQuantizedBase(base, config, s.quant.format as Bnb4Format, blockSize);
        } else {
          runtimeQuant = { format: s.quant.format, blockSize: s.quant.blockSize };
        }
      }
    }

    const step: GradientStep = await createLlamaGradientStep({
      config,
      source: base,
      method: s.method,
      batchSize: s.batchSize,
      seqLen,
      lora: setup,
      quant: runtimeQuant,
      device: options.device,
      intraOpNumThreads: options.intraOpNumThreads,
      warn: options.warn,
    });
    releases.push(() => step.release());
    const perEpoch = stepsPerEpoch({
      numExamples: dataset.examples.length,
      batchSize: s.batchSize,
      gradAccum: s.gradAccum,
    });
    const totalSteps = s.steps ?? perEpoch * (s.epochs ?? 1);

    // Evaluation runs the inference graph, with the adapter's current values as LoRA feeds.
    let evalModel: EvalModel | undefined;
    const evaluate = evalSet
      ? async (at: number): Promise<EvalReport> => {
          const adapter = setup ? loraSetupToAdapter(setup) : undefined;
          if (!evalModel || s.method === 'full') {
            await evalModel?.release();
            evalModel = await openEvalModel({
              config,
              source: s.method === 'full' ? parametersAsSource(step, source) : base,
              adapter,
              quant: runtimeQuant,
              device: options.device,
              warn: options.warn,
            });
          } else if (adapter) {
            evalModel.setAdapter(adapter);
          }
          const r = await evaluateLoss(evalModel, evalSet.examples, s.batchSize);
          const report = { step: at, ...r };
          options.onEval?.(report);
          return report;
        }
      : undefined;
    releases.push(async () => evalModel?.release());

    const fingerprint = {
      model: resolve(options.model),
      data: resolve(options.data),
      examples: dataset.examples.length,
      labelTokens: dataset.labelTokens,
      ...s,
      seqLen,
      totalSteps,
      lora: setup
        ? {
            r: setup.config.r,
            alpha: setup.config.lora_alpha,
            targets: setup.config.target_modules,
          }
        : null,
    };
    const resumeState = options.resume
      ? await loadCheckpoint(checkpointDir, step.parameters, fingerprint)
      : undefined;
    options.onStart?.({
      totalSteps,
      startStep: resumeState?.step ?? 0,
      examples: dataset.examples.length,
      seqLen,
    });
    const loop = await runTrainingLoop({
      gradientStep: step,
      examples: dataset.examples,
      batchSize: s.batchSize,
      gradAccum: s.gradAccum,
      shuffle: s.shuffle,
      seed: s.seed,
      totalSteps,
      lr: s.lr,
      betas: s.betas,
      eps: s.eps,
      weightDecay: s.weightDecay,
      maxGradNorm: s.maxGradNorm,
      schedule: s.schedule,
      warmupSteps: s.warmupSteps,
      dropout: (setup?.config.lora_dropout ?? 0) > 0,
      checkpoint: { dir: checkpointDir, every: s.checkpointEvery },
      resume: resumeState,
      fingerprint,
      evaluate: evaluate && { every: options.evalEvery ?? 0, run: evaluate },
      onStep: (r) => options.onStep?.(r, totalSteps),
      signal: options.signal,
    });
    const evals = [...loop.evals];
    const checkpoint =
      loop.checkpointStep !== undefined
        ? { dir: checkpointDir, step: loop.checkpointStep }
        : undefined;
    const result = {
      steps: loop.steps,
      settings: {
        model: options.model,
        data: options.data,
        ...s,
        seqLen,
        totalSteps,
        lora: setup ? setup.config : null,
      },
      data: {
        rows: dataset.rows,
        examples: dataset.examples.length,
        labelTokens: dataset.labelTokens,
        truncatedRows: dataset.truncatedRows,
      },
      trainableParameters: step.parameters.reduce((n, p) => n + p.data.length, 0),
    };
    if (loop.interrupted) {
      return { ...result, interrupted: true, checkpoint, evals, peakRssBytes: peakRss() };
    }
    if (evaluate && evals.at(-1)?.step !== totalSteps) evals.push(await evaluate(totalSteps));

    if (setup) {
      let adapter: Adapter = loraSetupToAdapter(setup);
      adapter = {
        ...adapter,
        config: { ...adapter.config, base_model_name_or_path: options.model },
      };
      if (initial) adapter = convertToPlainLora(adapter, initial);
      await savePeftAdapter(output, adapter, {
        overwrite: options.overwrite,
        writer: options.writer,
      });
    } else {
      await saveFullModel(output, options.model, source, step.parameters, {
        overwrite: options.overwrite,
        writer: options.writer,
      });
    }
    await removeCheckpoint(checkpointDir);
    return { ...result, output, interrupted: false, evals, peakRssBytes: peakRss() };
  } finally {
    for (const release of releases.reverse()) await release();
  }
}

/** Peak resident set size of this process, in bytes. */
export function peakRss(): number {
  return process.resourceUsage().maxRSS * 1024;
}

/** The full-training parameters' current values as a weight source (for evaluation). */
function parametersAsSource(step: GradientStep, source: WeightSource): WeightSource {
  const byName = new Map<string, Tensor>(
    step.parameters.map((p) => [p.name, { dtype: 'f32', shape: p.shape, data: p.data }]),
  );
  return {
    description: `${source.description} (weights being trained)`,
    names: () => [...byName.keys()],
    info: (n) => {
      const t = byName.get(n);
      return t && { dtype: t.dtype, shape: t.shape };
    },
    read: async (n) => byName.get(n) ?? source.read(n),
    close: async () => {},
  };
}

async function createAdapterSetup(
  options: TrainOptions,
  config: LlamaConfig,
  seed: number,
  source: WeightSource,
): Promise<LoraSetup> {
  const settings = options.lora ?? {};
  if (options.initAdapter) {
    const { adapter } = await loadPeftAdapter(options.initAdapter);
    const bad = contradictions(settings, adapter.config, config);
    if (bad.length > 0) {
      throw new TrainError(
        'SETTINGS_CONFLICT',
        `--init-adapter ${options.initAdapter}: ${bad.join('; ')}. Drop those flags (the adapter's config is used) or start a new adapter.`,
      );
    }
    return createLoraSetup(config, adapter.config, { seed, initAdapter: adapter });
  }
  const loraConfig = loraConfigFromSettings(settings, config, options.model);
  return createLoraSetup(config, loraConfig, { seed, readBase: (name) => source.read(name) });
}
