import { type Tensor, tensor } from '@lora/core';
import type { QuantFormat } from '@lora/quant';
import { RuntimeError } from '../../errors.js';
import type { TokenStepper } from '../../generate/stepper.js';
import type { Graph } from '../../graph/types.js';
import { ModelSession, type SessionOptions } from '../../session/session.js';
import { WeightFile } from '../../session/weight-file.js';
import { type BaseQuantOptions, storedQuantization } from '../quantize-linear.js';
import { folderWeights, readConfigJson, type WeightSource } from '../weights.js';
import {
  LLAMA_LINEARS,
  type LlamaConfig,
  llamaModuleName,
  llamaWeightSpec,
  parseLlamaConfig,
} from './config.js';
import { buildLlamaGraph, LLAMA_IO, type LlamaGraphOptions, layLinearsInOut } from './graph.js';
import { prepareLlamaWeights } from './prepare.js';

/** Options for building a LLaMA model: the graph's, the session's, and 4-bit quantization on load. */
export interface LlamaModelOptions extends LlamaGraphOptions, SessionOptions {
  /** Quantize the decoder linears to 4 bits on load: a format name, or format and block size. */
  readonly quant?: QuantFormat | BaseQuantOptions;
  /** Called after each checkpoint tensor is read and prepared (for a progress bar). */
  readonly onProgress?: (done: number, total: number, name: string) => void;
}

/** Keys and values of every layer, each [batch, kvHeads, length, headDim]. */
export interface KvCache {
  readonly keys: readonly Tensor<'f32'>[];
  readonly values: readonly Tensor<'f32'>[];
}

/** One call of the decoder. Arrays are row-major with the shapes noted. */
export interface LlamaForwardInput {
  /** [batch, sequence] token ids. */
  readonly inputIds: readonly (readonly number[])[];
  /** [batch, past + sequence] 1 for real tokens, 0 for padding. Default: all ones. */
  readonly attentionMask?: readonly (readonly number[])[];
  /** [batch, sequence]. Default: from the mask (count of real tokens before each, padding gets 1). */
  readonly positionIds?: readonly (readonly number[])[];
  /** The previous call's `present`; absent for a prefill. */
  readonly past?: KvCache;
  /** Inputs a {@link LinearHook} added to the graph (LoRA weights, adapter indices), by input name. */
  readonly extraFeeds?: Readonly<Record<string, Tensor>>;
}

export interface LlamaForwardOutput {
  /** [batch, sequence (or 1 with `logits: 'last'`), vocab] */
  readonly logits: Tensor<'f32'>;
  readonly present: KvCache;
}

function resolveQuant(q: LlamaModelOptions['quant']): BaseQuantOptions | undefined {
  return typeof q === 'string' ? { format: q } : q;
}

/** Position ids from a mask row, HF style: index among real tokens, padding gets 1. */
export function positionsFromMask(mask: readonly number[]): number[] {
  let seen = 0;
  return mask.map((m) => (m ? seen++ : 1));
}

/** Reads a model folder's config and weights source (weights are read later, lazily). */
export async function openLlamaFolder(
  dir: string,
): Promise<{ config: LlamaConfig; source: WeightSource }> {
  const { json, path } = await readConfigJson(dir);
  const config = parseLlamaConfig(json, path);
  return { config, source: await folderWeights(dir) };
}

/**
 * Builds the graph of a model (for export, or to inspect), reading and preparing its weights.
 * `ops: 'ort'` (default, as the runtime's own sessions) multiplies float linears with onnxruntime's
 * `com.microsoft` `FusedMatMul` on the checkpoint's `[out, in]` weights; `ops: 'standard'` uses only
 * standard ONNX operators (default domain), linears as `MatMul` on weights transposed once here to
 * `[in, out]`, so the graph runs on any ONNX runtime. 4-bit linears (`quant`, or a folder written
 * by `lora quantize`) exist only as onnxruntime operators: refused with `ops: 'standard'`
 * (`LINEAR_NOT_STANDARD`) before any weight is read.
 */
export async function buildLlamaModelGraph(
  config: LlamaConfig,
  source: WeightSource,
  options: LlamaModelOptions & { readonly ops?: 'ort' | 'standard' } = {},
): Promise<Graph> {
  const standard = options.ops === 'standard';
  if (standard) refuseFourBit(config, source, options.quant !== undefined);
  const weights = await prepareLlamaWeights(config, source, { quant: resolveQuant(options.quant) });
  if (standard) layLinearsInOut(weights);
  return buildLlamaGraph(config, weights, options);
}

/** Standard ONNX has no 4-bit linear: says so, naming the cause, before anything is read. */
function refuseFourBit(config: LlamaConfig, source: WeightSource, quantOnLoad: boolean): void {
  let stored: string | undefined;
  for (let l = 0; l < config.numLayers && !stored; l++) {
    stored = LLAMA_LINEARS.map((name) => `${llamaModuleName(l, name)}.weight`).find(
      (name) => storedQuantization(source, name) !== undefined,
    );
  }
  if (!quantOnLoad && !stored) return;
  throw new RuntimeError(
    'LINEAR_NOT_STANDARD',
    `${quantOnLoad ? '4-bit quantization on load (quant) gives linears' : `${source.description} holds 4-bit linears (${stored})`} that only onnxruntime's com.microsoft MatMulNBits / MatMulBnb4 run: standard ONNX has no 4-bit matrix product (NF4/FP4 have no ONNX type). Keep onnxruntime's operators (ops: 'ort') for a 4-bit model, or build from the float model.`,
    { ...(stored ? { tensor: stored } : {}) },
  );
}

/**
 * A LLaMA-family decoder on an onnxruntime session. Stateless between calls: the KV cache
 * travels in and out of {@link LlamaModel.forward}; {@link LlamaModel.stepper} keeps one per batch.
 */
export class LlamaModel {
  private constructor(
    readonly config: LlamaConfig,
    private readonly session: ModelSession,
    readonly logitsMode: 'all' | 'last',
  ) {}

  /** The provider running the model. */
  get device(): 'cpu' | 'cuda' {
    return this.session.device;
  }

  static async create(
    config: LlamaConfig,
    source: WeightSource,
    options: LlamaModelOptions = {},
  ): Promise<LlamaModel> {
    // Each tensor goes to the session's weight file as soon as it is prepared: the model is
    // never held whole in JavaScript memory, and onnxruntime maps the file.
    // Float32 bytes of every weight: what the session holds at most (4-bit linears take less).
    const weightBytes = llamaWeightSpec(config).reduce(
      (sum, { shape }) => sum + 4 * shape.reduce((a, b) => a * b, 1),
      0,
    );
    const weightFile = await WeightFile.create(undefined, weightBytes);
    let graph: Graph;
    try {
      const weights = await prepareLlamaWeights(config, source, {
        quant: resolveQuant(options.quant),
        store: (t) => weightFile.spill(t),
        storeChunks: (shape, chunks) => weightFile.spillChunks(shape, chunks),
        reuseBuffers: true,
        onProgress: options.onProgress,
      });
      graph = buildLlamaGraph(config, weights, options);
    } catch (error) {
      await weightFile.remove();
      throw error;
    }
    const session = await ModelSession.fromGraph(graph, { ...options, weightFile });
    return new LlamaModel(config, session, options.logits ?? 'all');
  }

  /** Runs the decoder once (prefill with no `past`, decode with it). */
  async forward(input: LlamaForwardInput): Promise<LlamaForwardOutput> {
    const { config } = this;
    const B = input.inputIds.length;
    const T = input.inputIds[0]?.length ?? 0;
    if (B === 0 || T === 0)
      throw new RuntimeError(
        'INPUT_INVALID',
        'forward: inputIds needs at least one row and one token.',
      );
    const P = input.past?.keys[0].shape[2] ?? 0;
    const mask = input.attentionMask ?? input.inputIds.map(() => new Array<number>(P + T).fill(1));
    const ids = new BigInt64Array(B * T);
    const maskData = new BigInt64Array(B * (P + T));
    const posData = new BigInt64Array(B * T);
    for (let b = 0; b < B; b++) {
      const row = input.inputIds[b];
      const m = mask[b];
      if (row.length !== T || m.length !== P + T) {
        throw new RuntimeError(
          'INPUT_INVALID',
          `forward: row ${b} has ${row.length} ids and a mask of ${m.length}; expected ${T} and ${P + T} (past ${P}).`,
        );
      }
      const positions = input.positionIds?.[b] ?? positionsFromMask(m).slice(P);
      for (let t = 0; t < T; t++) {
        const id = row[t];
        if (!Number.isInteger(id) || id < 0 || id >= config.vocabSize) {
          throw new RuntimeError(
            'TOKEN_RANGE',
            `forward: token id ${id} (row ${b}) is outside 0..${config.vocabSize - 1}.`,
          );
        }
        ids[b * T + t] = BigInt(id);
        posData[b * T + t] = BigInt(positions[t]);
      }
      for (let s = 0; s < P + T; s++) maskData[b * (P + T) + s] = BigInt(m[s]);
    }
    const feeds: Record<string, Tensor> = {
      ...input.extraFeeds,
      [LLAMA_IO.inputIds]: tensor('i64', [B, T], ids),
      [LLAMA_IO.attentionMask]: tensor('i64', [B, P + T], maskData),
      [LLAMA_IO.positionIds]: tensor('i64', [B, T], posData),
    };
    const empty = tensor('f32', [B, config.numKvHeads, 0, config.headDim], new Float32Array(0));
    for (let l = 0; l < config.numLayers; l++) {
      feeds[LLAMA_IO.pastKey(l)] = input.past?.keys[l] ?? empty;
      feeds[LLAMA_IO.pastValue(l)] = input.past?.values[l] ?? empty;
    }
    const out = await this.session.run(feeds);
    const keys: Tensor<'f32'>[] = [];
    const values: Tensor<'f32'>[] = [];
    for (let l = 0; l < config.numLayers; l++) {
      keys.push(out[LLAMA_IO.presentKey(l)] as Tensor<'f32'>);
      values.push(out[LLAMA_IO.presentValue(l)] as Tensor<'f32'>);
    }
    return { logits: out[LLAMA_IO.logits] as Tensor<'f32'>, present: { keys, values } };
  }

  /**
   * A fresh generation state (its own KV cache) over this model. `extraFeeds` go to every call
   * (inputs added by a linear hook, such as LoRA weights).
   */
  stepper(extraFeeds?: Readonly<Record<string, Tensor>>): TokenStepper {
    return new LlamaStepper(this, extraFeeds);
  }

  /** Frees the session (native memory). The model cannot run afterwards. */
  async release(): Promise<void> {
    await this.session.release();
  }
}

/** Last-position logits of each row. logits: [B, T, V] */
function lastLogits(logits: Tensor<'f32'>): Float32Array[] {
  const [B, T, V] = logits.shape;
  const rows: Float32Array[] = [];
  for (let b = 0; b < B; b++) rows.push(logits.data.slice((b * T + T - 1) * V, (b * T + T) * V));
  return rows;
}

/**
 * {@link TokenStepper} over a {@link LlamaModel}: left-pads the prompts (so every row's last
 * token is at the same index), keeps the KV cache and the attention mask between steps.
 */
export class LlamaStepper implements TokenStepper {
  private cache?: KvCache;
  private mask: number[][] = [];
  private nextPosition: number[] = [];

  constructor(
    private readonly model: LlamaModel,
    private readonly extraFeeds?: Readonly<Record<string, Tensor>>,
  ) {}

  get vocabSize(): number {
    return this.model.config.vocabSize;
  }

  async start(prompts: readonly (readonly number[])[]): Promise<Float32Array[]> {
    if (prompts.length === 0 || prompts.some((p) => p.length === 0)) {
      throw new RuntimeError('INPUT_INVALID', 'start: every prompt needs at least one token.');
    }
    const L = prompts.reduce((m, p) => Math.max(m, p.length), 0);
    const ids = prompts.map((p) => [...new Array<number>(L - p.length).fill(0), ...p]);
    this.mask = prompts.map((p) => [
      ...new Array<number>(L - p.length).fill(0),
      ...new Array<number>(p.length).fill(1),
    ]);
    this.nextPosition = prompts.map((p) => p.length);
    const out = await this.model.forward({
      inputIds: ids,
      attentionMask: this.mask,
      extraFeeds: this.extraFeeds,
    });
    this.cache = out.present;
    return lastLogits(out.logits);
  }

  async step(tokens: readonly number[]): Promise<Float32Array[]> {
    if (!this.cache) throw new RuntimeError('STEPPER_STATE', 'step: call start(prompts) first.');
    if (tokens.length !== this.mask.length) {
      throw new RuntimeError(
        'INPUT_INVALID',
        `step: got ${tokens.length} tokens for ${this.mask.length} rows.`,
      );
    }
    for (const row of this.mask) row.push(1);
    const out = await this.model.forward({
      inputIds: tokens.map((t) => [t]),
      attentionMask: this.mask,
      positionIds: this.nextPosition.map((p) => [p]),
      past: this.cache,
      extraFeeds: this.extraFeeds,
    });
    this.nextPosition = this.nextPosition.map((p) => p + 1);
    this.cache = out.present;
    return lastLogits(out.logits);
  }

  async dispose(): Promise<void> {
    this.cache = undefined;
    this.mask = [];
    this.nextPosition = [];
  }
}

/**
 * Opens a Hugging Face model folder (config.json + safetensors, single or sharded) on
 * onnxruntime. Config and weight shapes are checked before anything heavy happens.
 */
export async function loadLlama(dir: string, options: LlamaModelOptions = {}): Promise<LlamaModel> {
  const { config, source } = await openLlamaFolder(dir);
  try {
    return await LlamaModel.create(config, source, options);
  } finally {
    await source.close();
  }
}
