import { bf16ToF32Array, f16ToF32Array, type Tensor, tensor, toFloat32Array } from '@lora/core';
import { RuntimeError } from '../../errors.js';
import { denseLinear, type LinearWeight } from '../linear.js';
import {
  type BaseQuantOptions,
  quantizeLinear,
  readDequantized,
  readQuantizedLinear,
  storedQuantization,
} from '../quantize-linear.js';
import type { WeightSource } from '../weights.js';
import {
  LLAMA_LINEARS,
  type LlamaConfig,
  type LlamaLinear,
  llamaLinearHasBias,
  llamaLinearShape,
  llamaModuleName,
  llamaWeightSpec,
} from './config.js';
import type { LlamaGraphWeights } from './graph.js';

const FLOAT_DTYPES = new Set(['f32', 'f16', 'bf16', 'f64']);

/**
 * Checks that a weight source holds every tensor the config implies, with the right shape and a
 * float dtype, before anything is read: the error names the tensor and both shapes.
 */
export function validateLlamaWeights(config: LlamaConfig, source: WeightSource): void {
  // Layers beyond num_hidden_layers would be silently dropped: a truncated model, wrong logits.
  let layers = 0;
  for (const name of source.names()) {
    const m = /^model\.layers\.(\d+)\./.exec(name);
    if (m) layers = Math.max(layers, Number(m[1]) + 1);
  }
  if (layers > config.numLayers) {
    throw new RuntimeError(
      'WEIGHT_EXTRA_LAYERS',
      `${source.description}: the weights hold ${layers} layers (model.layers.0 to model.layers.${layers - 1}) but config.json says "num_hidden_layers": ${config.numLayers}; running it would drop layers. Fix num_hidden_layers or use the config that came with these weights.`,
      { layers, numLayers: config.numLayers },
    );
  }
  const missing: string[] = [];
  for (const { name, shape } of llamaWeightSpec(config)) {
    // Tensors stored 4-bit (`lora quantize` output) are checked against their quant state when read.
    if (storedQuantization(source, name)) continue;
    const info = source.info(name);
    if (!info) {
      missing.push(name);
      continue;
    }
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new RuntimeError(
        'WEIGHT_SHAPE',
        `${source.description}: tensor "${name}" has shape [${info.shape.join(', ')}], the config implies [${shape.join(', ')}]; the config and the weights do not belong together.`,
        { tensor: name, expected: shape, actual: info.shape },
      );
    }
    if (!FLOAT_DTYPES.has(info.dtype)) {
      throw new RuntimeError(
        'WEIGHT_DTYPE',
        `${source.description}: tensor "${name}" is ${info.dtype}; a float dtype (f32, f16, bf16) is needed.`,
        { tensor: name, dtype: info.dtype },
      );
    }
  }
  if (missing.length > 0) {
    const shown = missing
      .slice(0, 3)
      .map((n) => `"${n}"`)
      .join(', ');
    const more = missing.length > 3 ? ` and ${missing.length - 3} more` : '';
    const hint = missing.includes('lm_head.weight')
      ? ' (set "tie_word_embeddings": true in config.json if the model shares its embedding matrix)'
      : '';
    throw new RuntimeError(
      'WEIGHT_MISSING',
      `${source.description}: missing tensor ${shown}${more}${hint}.`,
      { missing },
    );
  }
}

async function readF32(source: WeightSource, name: string): Promise<Tensor<'f32'>> {
  if (storedQuantization(source, name)) return readDequantized(source, name);
  const t = await source.read(name);
  return tensor('f32', t.shape, widenF32(t));
}

/**
 * A float tensor's values as float32, written into `out` when given (bf16 and f16 through core's
 * exact SIMD conversions, one pass); an f32 tensor is returned as is, without a copy.
 */
export function widenF32(t: Tensor, out?: Float32Array): Float32Array {
  switch (t.dtype) {
    case 'f32':
      return t.data as Float32Array;
    case 'bf16':
      return bf16ToF32Array(t.data as Uint16Array, out);
    case 'f16':
      return f16ToF32Array(t.data as Uint16Array, out);
    default:
      return toFloat32Array(t);
  }
}

/** A float linear straight from the checkpoint: float32 in its own `[out, in]` layout, never transposed. */
async function readDenseLinear(
  source: WeightSource,
  name: string,
  out: number,
  inF: number,
  scratch?: (elements: number) => Float32Array,
): Promise<LinearWeight> {
  if (storedQuantization(source, name))
    return denseLinear((await readDequantized(source, name)).data, out, inF);
  const t = await source.read(name);
  const widened = t.dtype === 'f32' ? undefined : scratch?.(out * inF);
  return denseLinear(widenF32(t, widened), out, inF);
}

/** A linear as stored (float or 4-bit); float ones quantized on load when `quant` is given. */
async function readLinear(
  source: WeightSource,
  name: string,
  out: number,
  inF: number,
  quant: BaseQuantOptions | undefined,
  scratch?: (elements: number) => Float32Array,
): Promise<LinearWeight> {
  if (storedQuantization(source, name)) return readQuantizedLinear(source, name, [out, inF]);
  if (!quant) return readDenseLinear(source, name, out, inF, scratch);
  const w = await readF32(source, name);
  return quantizeLinear(w.data, out, inF, quant, name);
}

export interface PrepareOptions {
  /** Quantize the decoder layers' linears on load (lm_head and embeddings stay float32). */
  readonly quant?: BaseQuantOptions;
  /**
   * Takes every prepared tensor as soon as it is ready and returns what the graph keeps: for a
   * session, {@link WeightFile.spill} (written to the session's weight file, the graph keeps a
   * stand-in), so the prepared model is never held in memory whole. Default: kept as is.
   */
  readonly store?: <T extends Tensor>(t: T) => Promise<T>;
  /**
   * With `store` only: lay dense linears out in two scratch buffers used in turn instead of a
   * fresh array each (fresh memory costs a page fault per 4 KiB, which dominated loading). `store`
   * must be done with a tensor's data once the next `store` call has resolved, as
   * {@link WeightFile.spill} is.
   */
  readonly reuseBuffers?: boolean;
  /**
   * With a source that offers `readInto` (files): takes float tensors that need no other change
   * than widening to float32 as a stream of chunks (views on two reused buffers, see
   * {@link WeightFile.spillChunks}) and returns what the graph keeps. Such a tensor is never
   * whole in memory, and no fresh memory is touched per tensor: loading runs at the speed of
   * reading the checkpoint and writing the weight file. Used instead of `store` for them.
   */
  readonly storeChunks?: (
    shape: readonly number[],
    chunks: AsyncIterable<Float32Array>,
  ) => Promise<Tensor<'f32'>>;
  /** Called after each tensor of the checkpoint is read and prepared: how many of how many, and its name. */
  readonly onProgress?: (done: number, total: number, name: string) => void;
}

/** Values per streamed chunk: 16 MiB of float32, small enough to stay in the same pages. */
const CHUNK_VALUES = 1 << 22;

/**
 * Streams float tensors of a file-backed source as float32 chunks, through buffers reused for the
 * whole load (across tensors): an f32 chunk is read into one of two output buffers used in turn
 * (the consumer writes one while the next is filled); a bf16/f16 chunk is read into one of two raw
 * buffers, the next chunk's read running while this one is widened into an output buffer.
 */
export class Float32Chunks {
  private readonly out: Float32Array[] = [];
  private readonly raw: Uint16Array[] = [];
  private turn = 0;

  constructor(
    private readonly readInto: (
      name: string,
      byteOffset: number,
      into: Uint8Array,
    ) => Promise<void>,
    /** Values per chunk (tests use small ones to cross chunk boundaries). */
    private readonly chunkValues = CHUNK_VALUES,
  ) {}

  private nextOut(n: number): Float32Array {
    this.turn ^= 1;
    this.out[this.turn] ??= new Float32Array(this.chunkValues);
    return this.out[this.turn].subarray(0, n);
  }

  async *of(
    name: string,
    dtype: 'f32' | 'f16' | 'bf16',
    elements: number,
  ): AsyncGenerator<Float32Array> {
    const size = this.chunkValues;
    const count = Math.ceil(elements / size);
    if (dtype === 'f32') {
      for (let k = 0; k < count; k++) {
        const out = this.nextOut(Math.min(size, elements - k * size));
        await this.readInto(name, k * size * 4, new Uint8Array(out.buffer, 0, out.byteLength));
        yield out;
      }
      return;
    }
    const readRaw = (k: number): Promise<Uint16Array> => {
      this.raw[k & 1] ??= new Uint16Array(size);
      const raw = this.raw[k & 1].subarray(0, Math.min(size, elements - k * size));
      const done = this.readInto(name, k * size * 2, new Uint8Array(raw.buffer, 0, raw.byteLength));
      const ready = done.then(() => raw);
      ready.catch(() => {}); // awaited below; marked handled in case the consumer stops early
      return ready;
    };
    let pending = count > 0 ? readRaw(0) : undefined;
    for (let k = 0; k < count; k++) {
      const raw = await (pending as Promise<Uint16Array>);
      pending = k + 1 < count ? readRaw(k + 1) : undefined;
      const out = this.nextOut(raw.length);
      widenF32({ dtype, shape: [raw.length], data: raw }, out);
      yield out;
    }
  }
}

/** Passes every tensor of a linear through `store`. */
async function storeLinear(
  w: LinearWeight,
  store: <T extends Tensor>(t: T) => Promise<T>,
): Promise<LinearWeight> {
  switch (w.kind) {
    case 'dense':
      return { ...w, weight: await store(w.weight) };
    case 'nbits':
      return {
        ...w,
        packed: await store(w.packed),
        scales: await store(w.scales),
        zeroPoints: w.zeroPoints && (await store(w.zeroPoints)),
      };
    case 'bnb4':
      return { ...w, packed: await store(w.packed), absmax: await store(w.absmax) };
  }
}

/**
 * Reads, converts (f16/bf16 -> f32) and lays out every weight for the graph, one tensor at a
 * time: float linears in their checkpoint layout, or quantized to 4 bits. With `store`, each tensor leaves
 * memory as soon as it is prepared.
 */
export async function prepareLlamaWeights(
  config: LlamaConfig,
  source: WeightSource,
  options: PrepareOptions = {},
): Promise<LlamaGraphWeights> {
  validateLlamaWeights(config, source);
  const store = options.store ?? (async <T extends Tensor>(t: T) => t);
  // Two buffers in turn: the one `store` may still be writing, and the one being filled.
  const buffers: Float32Array[] = [new Float32Array(0), new Float32Array(0)];
  let turn = 0;
  const scratch =
    options.store && options.reuseBuffers
      ? (elements: number) => {
          turn ^= 1;
          if (buffers[turn].length < elements) buffers[turn] = new Float32Array(elements);
          return buffers[turn].subarray(0, elements);
        }
      : undefined;
  const total = llamaWeightSpec(config).length;
  let done = 0;
  const { storeChunks } = options;
  const chunks = storeChunks && source.readInto && new Float32Chunks(source.readInto.bind(source));
  /** The stored tensor when `name` can be streamed (a float tensor read as it is), else undefined. */
  const streamed = async (name: string): Promise<Tensor<'f32'> | undefined> => {
    if (!storeChunks || !chunks || storedQuantization(source, name)) return undefined;
    const info = source.info(name);
    if (!info || (info.dtype !== 'f32' && info.dtype !== 'f16' && info.dtype !== 'bf16'))
      return undefined;
    const elements = info.shape.reduce((a, b) => a * b, 1);
    return storeChunks(info.shape, chunks.of(name, info.dtype, elements));
  };
  const read = async (name: string) => {
    const t = (await streamed(name)) ?? (await store(await readF32(source, name)));
    options.onProgress?.(++done, total, name);
    return t;
  };
  const embedName = 'model.embed_tokens.weight';
  const embedF32 = (await streamed(embedName)) ?? (await readF32(source, embedName));
  options.onProgress?.(++done, total, embedName);
  // A tied head is the embedding itself ([vocab, hidden] is the head's [out, in]): the same bytes,
  // stored once (`store` recognises data it has already stored).
  const tiedHead = config.tieWordEmbeddings
    ? await storeLinear(denseLinear(embedF32.data, config.vocabSize, config.hiddenSize), store)
    : undefined;
  const embedTokens = await store(embedF32);
  const layers: LlamaGraphWeights['layers'][number][] = [];
  for (let l = 0; l < config.numLayers; l++) {
    const linears = {} as Record<LlamaLinear, LinearWeight>;
    const biases: Partial<Record<LlamaLinear, Tensor<'f32'>>> = {};
    for (const linear of LLAMA_LINEARS) {
      const module = llamaModuleName(l, linear);
      const [out, inF] = llamaLinearShape(config, linear);
      const asStream = options.quant ? undefined : await streamed(`${module}.weight`);
      linears[linear] = asStream
        ? denseLinear(asStream.data, out, inF)
        : await storeLinear(
            await readLinear(source, `${module}.weight`, out, inF, options.quant, scratch),
            store,
          );
      options.onProgress?.(++done, total, `${module}.weight`);
      if (llamaLinearHasBias(config, linear)) biases[linear] = await read(`${module}.bias`);
    }
    layers.push({
      inputNorm: await read(`model.layers.${l}.input_layernorm.weight`),
      postAttentionNorm: await read(`model.layers.${l}.post_attention_layernorm.weight`),
      linears,
      biases,
    });
  }
  const finalNorm = await read('model.norm.weight');
  let lmHead = tiedHead;
  const headStream = lmHead ? undefined : await streamed('lm_head.weight');
  if (headStream) {
    lmHead = denseLinear(headStream.data, config.vocabSize, config.hiddenSize);
    options.onProgress?.(++done, total, 'lm_head.weight');
  } else if (!lmHead) {
    const w = await readDenseLinear(
      source,
      'lm_head.weight',
      config.vocabSize,
      config.hiddenSize,
      scratch,
    );
    options.onProgress?.(++done, total, 'lm_head.weight');
    lmHead = await storeLinear(w, store);
  }
  return { embedTokens, finalNorm, lmHead, layers };
}

/** Every tensor of the model as float32, by HF name (for reference computations and merging). */
export async function readLlamaWeightsF32(
  config: LlamaConfig,
  source: WeightSource,
): Promise<Map<string, Tensor<'f32'>>> {
  validateLlamaWeights(config, source);
  const out = new Map<string, Tensor<'f32'>>();
  for (const { name } of llamaWeightSpec(config)) out.set(name, await readF32(source, name));
  return out;
}
