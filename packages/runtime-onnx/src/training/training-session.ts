import { type Tensor, tensor } from '@lora/core';
import type { QuantFormat } from '@lora/quant';
import { RuntimeError } from '../errors.js';
import type { LlamaConfig } from '../models/llama/config.js';
import { openLlamaFolder, positionsFromMask } from '../models/llama/model.js';
import { prepareLlamaWeights, readLlamaWeightsF32 } from '../models/llama/prepare.js';
import {
  buildLlamaFullTrainingGraph,
  buildLlamaLoraTrainingGraph,
  type LlamaTrainingGraph,
  TRAINING_IO,
  type TrainingParameter,
} from '../models/llama/training-graph.js';
import type { BaseQuantOptions } from '../models/quantize-linear.js';
import type { WeightSource } from '../models/weights.js';
import { ModelSession, type SessionOptions } from '../session/session.js';
import type { TrainableLoraOptions, TrainableLoraSite } from './lora-branch.js';
import { TRAINING_OPTIMIZATION } from './session-options.js';

/** What is trained: LoRA branches on a float32 base, on a 4-bit base, or every weight. */
export type TrainingMode = 'lora' | 'qlora' | 'full';

/** Options of {@link createTrainingSession}. */
export interface TrainingSessionOptions
  extends Pick<
    SessionOptions,
    'device' | 'deviceId' | 'intraOpNumThreads' | 'allowSpinning' | 'warn' | 'factory'
  > {
  /** A Hugging Face model folder (config.json + safetensors), or an opened config and weight source. */
  readonly model: string | { readonly config: LlamaConfig; readonly source: WeightSource };
  readonly mode: TrainingMode;
  /** LoRA hyper-parameters; required for `'lora'` and `'qlora'`. */
  readonly lora?: TrainableLoraOptions;
  /**
   * `'qlora'` only: the 4-bit format of the frozen base, quantized on load (default `'nf4'`).
   * A folder written by `lora quantize` is used as stored.
   */
  readonly quant?: QuantFormat | BaseQuantOptions;
  /** Rows per step; fixed for the session. */
  readonly microBatch: number;
  /** Tokens per row; fixed for the session (pad shorter rows, with loss weight 0). */
  readonly seqLen: number;
}

/** Rows of a batch: `microBatch` rows of `seqLen` values, or all of them flat (row-major). */
export type BatchRows = readonly (readonly number[])[] | ArrayLike<number>;

/** One step's feeds. */
export interface TrainingStepFeeds {
  /** Token ids [microBatch, seqLen]. */
  readonly inputIds: BatchRows;
  /** 1 real token, 0 padding [microBatch, seqLen]. Default: all ones. */
  readonly attentionMask?: BatchRows;
  /**
   * Weight of predicting each token from the previous position [microBatch, seqLen], like
   * transformers' labels: 0 for prompt and padding tokens (label -100), 1 for trained tokens.
   * Column 0 is never predicted and is ignored.
   */
  readonly lossWeights: BatchRows;
  /** Rotary positions [microBatch, seqLen]. Default: each token's index among the real tokens of its row. */
  readonly positionIds?: BatchRows;
  /** The current value of every parameter, by name (see {@link TrainingSession.parameters}). */
  readonly params: Readonly<Record<string, Float32Array | Tensor<'f32'>>>;
  /**
   * With `lora.dropout` > 0: per LoRA module (HF module name), the keep mask of its input,
   * [microBatch, seqLen, inFeatures] of 1 (keep) and 0 (drop), drawn by the caller each step.
   */
  readonly dropoutMasks?: Readonly<Record<string, Uint8Array>>;
}

/** One step's results. */
export interface TrainingStepResult {
  /** Sum over tokens of weight * cross-entropy (nats). */
  readonly lossSum: number;
  /** Sum of the weights that entered the loss (the label-token count for 0/1 weights). */
  readonly tokenCount: number;
  /** d(lossSum)/d(parameter), by parameter name, in the parameter's shape. */
  readonly grads: Readonly<Record<string, Tensor<'f32'>>>;
}

/**
 * Forward and backward of a LLaMA-family model as ONE onnxruntime inference session, built once:
 * a step changes only feeds (the batch and the trainable tensors) and returns the loss sum, the
 * token count and every gradient. The optimizer, schedules and accumulation belong to the caller.
 */
export interface TrainingSession {
  readonly mode: TrainingMode;
  readonly config: LlamaConfig;
  readonly microBatch: number;
  readonly seqLen: number;
  /** The provider running the session. */
  readonly device: 'cpu' | 'cuda';
  /** The trainable tensors, in graph order: LoRA `<module>.lora_A.weight` / `.lora_B.weight`, or every HF weight. */
  readonly parameters: readonly TrainingParameter[];
  /** LoRA / QLoRA: every branch (module, shapes, scale, dropout input). Empty for full training. */
  readonly loraSites: readonly TrainableLoraSite[];
  /**
   * Bytes of the graph's initializers: the frozen weights the session holds (4-bit packed bytes
   * and statistics for QLoRA; only small constants for full training, whose weights are inputs).
   */
  readonly initializerBytes: number;
  /** Full training: the model's weights as read (float32, HF layout), the starting parameters. */
  readonly initialParameters?: ReadonlyMap<string, Tensor<'f32'>>;
  step(feeds: TrainingStepFeeds): Promise<TrainingStepResult>;
  /** Frees the session (native memory). */
  release(): Promise<void>;
}

function resolveQuant(options: TrainingSessionOptions): BaseQuantOptions | undefined {
  if (options.mode !== 'qlora') {
    if (options.quant !== undefined) {
      throw new RuntimeError(
        'TRAINING_OPTIONS',
        `quant is only used with mode 'qlora' (got mode '${options.mode}').`,
      );
    }
    return undefined;
  }
  const q = options.quant ?? 'nf4';
  return typeof q === 'string' ? { format: q } : q;
}

/**
 * Builds the training graph of a model and its onnxruntime session (once per run).
 *
 * - `'lora'`: frozen float32 base; a LoRA branch with A `[r, in]` and B `[out, r]` (PEFT layout)
 *   as inputs on every targeted linear; gradients of A and B only. The scale alpha / r (or
 *   alpha / sqrt(r) with rsLoRA) is a constant of the graph, never folded into B.
 * - `'qlora'`: the same on a 4-bit base (nf4 / fp4 via MatMulBnb4, int4 / uint4 via MatMulNBits);
 *   the backward dequantizes each weight exactly, inside the graph, one linear at a time.
 * - `'full'`: every weight an input (HF names and layouts) with its gradient as an output.
 *
 * Shapes are static: `microBatch` rows of `seqLen` tokens. Graph optimization runs with
 * ConstantFolding off, so 4-bit weights stay packed (see `TRAINING_OPTIMIZATION`), and without
 * onnxruntime's CPU memory arena, so memory returns to the session's size after each step.
 *
 * @throws RuntimeError `TRAINING_OPTIONS` (bad mode, shapes or LoRA options), `LORA_OPTIONS`,
 *   config and weight errors of the model, `DEVICE_UNAVAILABLE`, `SESSION_FAILED`.
 */
export async function createTrainingSession(
  options: TrainingSessionOptions,
): Promise<TrainingSession> {
  if (!['lora', 'qlora', 'full'].includes(options.mode)) {
    throw new RuntimeError(
      'TRAINING_OPTIONS',
      `Unknown training mode "${String(options.mode)}": use lora, qlora or full.`,
    );
  }
  const quant = resolveQuant(options);
  if (options.mode !== 'full' && !options.lora) {
    throw new RuntimeError(
      'TRAINING_OPTIONS',
      `mode '${options.mode}' needs lora options ({ rank, alpha, targets }).`,
    );
  }
  const opened =
    typeof options.model === 'string' ? await openLlamaFolder(options.model) : options.model;
  const { config, source } = opened;
  const shape = { batch: options.microBatch, sequence: options.seqLen };
  let built: LlamaTrainingGraph;
  let initialParameters: Map<string, Tensor<'f32'>> | undefined;
  try {
    if (options.mode === 'full') {
      built = buildLlamaFullTrainingGraph(config, shape);
      initialParameters = await readLlamaWeightsF32(config, source);
    } else {
      const weights = await prepareLlamaWeights(config, source, { quant });
      built = buildLlamaLoraTrainingGraph(
        config,
        weights,
        shape,
        options.lora as TrainableLoraOptions,
      );
    }
  } finally {
    if (typeof options.model === 'string') await source.close();
  }
  const session = await ModelSession.fromGraph(built.graph, {
    device: options.device,
    deviceId: options.deviceId,
    intraOpNumThreads: options.intraOpNumThreads,
    allowSpinning: options.allowSpinning,
    warn: options.warn,
    factory: options.factory,
    optimization: TRAINING_OPTIMIZATION,
    memoryArena: false,
  });
  return new LlamaTrainingSession(options.mode, config, built, session, initialParameters);
}

/** Flattens rows into a row-major array of `rows * cols` values, checking the sizes. */
function flatRows(value: BatchRows, rows: number, cols: number, what: string): ArrayLike<number> {
  const isNested = (v: BatchRows): v is readonly (readonly number[])[] =>
    v.length > 0 && typeof (v as readonly unknown[])[0] === 'object';
  if (isNested(value)) {
    if (value.length !== rows || value.some((r) => r.length !== cols)) {
      throw new RuntimeError(
        'TRAINING_FEEDS',
        `${what}: expected ${rows} rows of ${cols} values (the session's microBatch x seqLen), got ${value.length} rows of ${value.map((r) => r.length).join('/')}.`,
      );
    }
    return value.flat();
  }
  if (value.length !== rows * cols) {
    throw new RuntimeError(
      'TRAINING_FEEDS',
      `${what}: expected ${rows * cols} values (microBatch ${rows} x seqLen ${cols}), got ${value.length}.`,
    );
  }
  return value as ArrayLike<number>;
}

class LlamaTrainingSession implements TrainingSession {
  readonly microBatch: number;
  readonly seqLen: number;
  readonly parameters: readonly TrainingParameter[];
  readonly loraSites: readonly TrainableLoraSite[];
  readonly initializerBytes: number;

  constructor(
    readonly mode: TrainingMode,
    readonly config: LlamaConfig,
    built: LlamaTrainingGraph,
    private readonly session: ModelSession,
    readonly initialParameters?: ReadonlyMap<string, Tensor<'f32'>>,
  ) {
    this.microBatch = built.shape.batch;
    this.seqLen = built.shape.sequence;
    this.parameters = built.parameters;
    this.loraSites = built.loraSites;
    let bytes = 0;
    for (const t of built.graph.initializers.values()) bytes += t.data.byteLength;
    this.initializerBytes = bytes;
  }

  get device(): 'cpu' | 'cuda' {
    return this.session.device;
  }

  /** The batch inputs as tensors, checked (sizes, token range, mask values). */
  private batchFeeds(feeds: TrainingStepFeeds): Record<string, Tensor> {
    const B = this.microBatch;
    const T = this.seqLen;
    const V = this.config.vocabSize;
    const ids = flatRows(feeds.inputIds, B, T, 'inputIds');
    const mask = feeds.attentionMask
      ? flatRows(feeds.attentionMask, B, T, 'attentionMask')
      : new Array<number>(B * T).fill(1);
    const weights = flatRows(feeds.lossWeights, B, T, 'lossWeights');
    const positions = feeds.positionIds && flatRows(feeds.positionIds, B, T, 'positionIds');
    const idData = new BigInt64Array(B * T);
    const maskData = new BigInt64Array(B * T);
    const posData = new BigInt64Array(B * T);
    const weightData = new Float32Array(B * T);
    for (let b = 0; b < B; b++) {
      const maskRow = Array.from({ length: T }, (_, t) => mask[b * T + t]);
      const fromMask = positions ? undefined : positionsFromMask(maskRow);
      for (let t = 0; t < T; t++) {
        const i = b * T + t;
        const id = ids[i];
        if (!Number.isInteger(id) || id < 0 || id >= V) {
          throw new RuntimeError(
            'TOKEN_RANGE',
            `inputIds: token ${id} (row ${b}, position ${t}) is outside the vocabulary 0..${V - 1}.`,
          );
        }
        if (mask[i] !== 0 && mask[i] !== 1) {
          throw new RuntimeError(
            'TRAINING_FEEDS',
            `attentionMask: value ${mask[i]} at row ${b}, position ${t}; use 1 (real) or 0 (padding).`,
          );
        }
        if (!Number.isFinite(weights[i]) || weights[i] < 0) {
          throw new RuntimeError(
            'TRAINING_FEEDS',
            `lossWeights: value ${weights[i]} at row ${b}, position ${t}; weights must be finite and >= 0.`,
          );
        }
        idData[i] = BigInt(id);
        maskData[i] = BigInt(mask[i]);
        posData[i] = BigInt(positions ? positions[i] : (fromMask as number[])[t]);
        weightData[i] = weights[i];
      }
    }
    return {
      [TRAINING_IO.inputIds]: tensor('i64', [B, T], idData),
      [TRAINING_IO.attentionMask]: tensor('i64', [B, T], maskData),
      [TRAINING_IO.positionIds]: tensor('i64', [B, T], posData),
      [TRAINING_IO.lossWeights]: tensor('f32', [B, T], weightData),
    };
  }

  async step(feeds: TrainingStepFeeds): Promise<TrainingStepResult> {
    const inputs: Record<string, Tensor> = this.batchFeeds(feeds);
    for (const p of this.parameters) {
      const given = feeds.params[p.name];
      const size = p.shape.reduce((a, b) => a * b, 1);
      const data = given instanceof Float32Array ? given : given?.data;
      if (!data || data.length !== size) {
        throw new RuntimeError(
          'TRAINING_FEEDS',
          given
            ? `params["${p.name}"] has ${data?.length} values; its shape [${p.shape.join(', ')}] needs ${size}.`
            : `params["${p.name}"] is missing; feed every parameter the session lists (session.parameters).`,
          { parameter: p.name },
        );
      }
      inputs[p.name] = tensor('f32', p.shape, data);
    }
    for (const site of this.loraSites) {
      if (!site.dropoutInput) continue;
      const keep = feeds.dropoutMasks?.[site.module];
      const size = this.microBatch * this.seqLen * site.inFeatures;
      if (!keep || keep.length !== size) {
        throw new RuntimeError(
          'TRAINING_FEEDS',
          keep
            ? `dropoutMasks["${site.module}"] has ${keep.length} values; it needs ${size} (microBatch x seqLen x ${site.inFeatures}).`
            : `dropoutMasks["${site.module}"] is missing: with lora.dropout > 0 every LoRA module needs a 0/1 keep mask each step.`,
          { module: site.module },
        );
      }
      inputs[site.dropoutInput] = tensor(
        'u8',
        [this.microBatch, this.seqLen, site.inFeatures],
        keep,
      );
    }
    const out = await this.session.run(inputs);
    const grads: Record<string, Tensor<'f32'>> = {};
    for (const p of this.parameters) grads[p.name] = out[TRAINING_IO.grad(p.name)] as Tensor<'f32'>;
    return {
      lossSum: (out[TRAINING_IO.lossSum].data as Float32Array)[0],
      tokenCount: (out[TRAINING_IO.tokenCount].data as Float32Array)[0],
      grads,
    };
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
