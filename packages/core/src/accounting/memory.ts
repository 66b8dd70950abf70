import { CoreError } from '../errors.js';
import { createLoraConfig, type LoraConfig } from '../lora/config.js';
import {
  countModelParameters,
  type LinearModule,
  linearModules,
  type ModelParameterCount,
  type ModelShape,
} from './model-config.js';
import { countLoraParameters, trainableParametersLine } from './params.js';

/** Storage formats of base weights. */
export type WeightFormat = 'f32' | 'f16' | 'bf16' | 'int8' | 'nf4' | 'fp4';
export const WEIGHT_FORMATS: readonly WeightFormat[] = ['f32', 'f16', 'bf16', 'int8', 'nf4', 'fp4'];

export interface QuantSpec {
  format: WeightFormat;
  /** Elements per absmax block for nf4/fp4 (bitsandbytes default 64). */
  blockSize?: number;
  /** QLoRA double quantization: absmax as 8-bit codes with one f32 scale per 256 of them. */
  doubleQuant?: boolean;
  /** Absmax values per second-level block (bitsandbytes: 256). */
  nestedBlockSize?: number;
}

/**
 * Bytes of one weight tensor of `numel` elements and `rows` output rows in a format:
 * - f32 / f16 / bf16: 4 / 2 / 2 bytes per element, no statistics;
 * - int8 (LLM.int8, bitsandbytes): 1 byte per element + one f32 scale per row;
 * - nf4 / fp4: ceil(numel / 2) packed bytes + per block of `blockSize` one f32 absmax, or
 *   with double quant one u8 code per block + one f32 absmax per `nestedBlockSize` codes + one
 *   f32 offset per tensor. (Code tables are shared constants, not counted.)
 */
export function quantizedTensorBytes(
  numel: number,
  rows: number,
  spec: QuantSpec,
): { data: number; stats: number } {
  switch (spec.format) {
    case 'f32':
      return { data: 4 * numel, stats: 0 };
    case 'f16':
    case 'bf16':
      return { data: 2 * numel, stats: 0 };
    case 'int8':
      return { data: numel, stats: 4 * rows };
    case 'nf4':
    case 'fp4': {
      const bs = spec.blockSize ?? 64;
      const blocks = Math.ceil(numel / bs);
      const stats = spec.doubleQuant
        ? blocks + 4 * Math.ceil(blocks / (spec.nestedBlockSize ?? 256)) + 4
        : 4 * blocks;
      return { data: Math.ceil(numel / 2), stats };
    }
  }
}

/**
 * Bits per parameter of a format for large tensors (statistics included, per-row and
 * per-tensor constants left out): NF4 bs 64 = 4.5; NF4+DQ bs 64 = 4 + 8/64 + 32/(64*256) = 4.127.
 */
export function bitsPerParameter(spec: QuantSpec): number {
  switch (spec.format) {
    case 'f32':
      return 32;
    case 'f16':
    case 'bf16':
      return 16;
    case 'int8':
      return 8;
    case 'nf4':
    case 'fp4': {
      const bs = spec.blockSize ?? 64;
      return spec.doubleQuant
        ? 4 + 8 / bs + 32 / (bs * (spec.nestedBlockSize ?? 256))
        : 4 + 32 / bs;
    }
  }
}

/** Memory of one scenario, in bytes. */
export interface MemoryBreakdown {
  weights: number;
  quantStats: number;
  adapters: number;
  gradients: number;
  optimizer: number;
  activations: number;
  /** The process itself before any model: Node.js and onnxruntime (only `lora generate` rows). */
  runtime: number;
  total: number;
}

export type MemoryScenario =
  | 'inference'
  | 'inference-quantized'
  | 'generate'
  | 'generate-quantized'
  | 'lora'
  | 'qlora'
  | 'full';

/**
 * Resident memory of a Node.js process with onnxruntime-node and the runtime loaded, before any
 * model: ~100 MiB measured on Linux x64 (Node 20, onnxruntime-node 1.30), rounded up.
 */
export const RUNTIME_BASELINE_BYTES = 110 * 2 ** 20;

export interface MemoryPlanOptions {
  shape: ModelShape;
  /** Target selection and rank (PEFT config fields). Default: r 8 on q_proj, v_proj. */
  lora?: Partial<LoraConfig>;
  /** Base-weight format for QLoRA and quantized inference. Default nf4, block 64, no DQ. */
  quant?: QuantSpec;
  /** dtype of unquantized weights, activations and full-FT gradients. Default bf16. */
  computeDtype?: 'bf16' | 'f16' | 'f32';
  /** dtype of LoRA A/B and their gradients. Default bf16 (QLoRA's script; PEFT alone upcasts to f32). */
  adapterDtype?: 'bf16' | 'f16' | 'f32';
  batchSize?: number;
  seqLen?: number;
  /** Recompute each layer in backward, keeping only layer inputs. Default true. */
  gradientCheckpointing?: boolean;
  /** 'sdpa' (flash / memory-efficient: no [seq, seq] scores kept) or 'eager'. Default sdpa. */
  attention?: 'sdpa' | 'eager';
  /** Full fine-tuning keeps f32 master weights when the compute dtype is 16-bit. Default true. */
  masterWeights?: boolean;
}

export interface MemoryPlan {
  shape: ModelShape;
  parameters: ModelParameterCount;
  /** Trainable LoRA parameters and how many modules are adapted. */
  lora: { trainable: number; modules: number; rank: number; targets: LoraConfig['target_modules'] };
  /** PEFT's summary line for the LoRA model. */
  trainableLine: string;
  quant: QuantSpec & { bitsPerParameter: number };
  scenarios: { name: MemoryScenario; title: string; memory: MemoryBreakdown }[];
  /** Every assumption behind the numbers, in words. */
  assumptions: string[];
}

const BYTES: Record<'bf16' | 'f16' | 'f32', number> = { bf16: 2, f16: 2, f32: 4 };

/**
 * A memory plan for serving and for training a LLaMA-style model with LoRA, QLoRA and full
 * fine-tuning, broken into weights, quantization statistics, adapters, gradients, optimizer
 * states and activations. Every assumption is listed in `assumptions`.
 */
export function planMemory(options: MemoryPlanOptions): MemoryPlan {
  const shape = options.shape;
  const cd = options.computeDtype ?? 'bf16';
  const ad = options.adapterDtype ?? 'bf16';
  const cb = BYTES[cd];
  const ab = BYTES[ad];
  const batch = options.batchSize ?? 1;
  const seq = options.seqLen ?? 512;
  const checkpointing = options.gradientCheckpointing ?? true;
  const attention = options.attention ?? 'sdpa';
  const master = (options.masterWeights ?? true) && cb < 4;
  const quant: QuantSpec = {
    blockSize: 64,
    doubleQuant: false,
    nestedBlockSize: 256,
    format: 'nf4',
    ...options.quant,
  };
  for (const [name, v] of [
    ['batchSize', batch],
    ['seqLen', seq],
    ['blockSize', quant.blockSize],
  ] as const) {
    if (!Number.isSafeInteger(v) || (v as number) <= 0)
      throw new CoreError('PLAN_INVALID', `${name} must be a positive integer, got ${v}.`);
  }
  const lora = createLoraConfig({ r: 8, target_modules: ['q_proj', 'v_proj'], ...options.lora });

  const parameters = countModelParameters(shape);
  const P = parameters.total;
  const modules = linearModules(shape);
  const report = countLoraParameters(lora, modules, { outputHead: 'lm_head' });
  const T = report.trainable;

  // Base weights: 16-bit everything, or decoder-layer linears in the quant format and the rest
  // (embedding, lm_head, norms, biases) in the compute dtype, as bitsandbytes/transformers do.
  const dense = P * cb;
  let qData = 0;
  let qStats = 0;
  let quantizedParams = 0;
  for (const m of modules as LinearModule[]) {
    if (m.name === 'lm_head') continue;
    const b = quantizedTensorBytes(m.inFeatures * m.outFeatures, m.outFeatures, quant);
    qData += b.data;
    qStats += b.stats;
    quantizedParams += m.inFeatures * m.outFeatures;
  }
  const quantWeights = qData + (P - quantizedParams) * cb;

  // Activations, in the compute dtype, per token and layer (elements kept for backward):
  // norm-1 input h, its output h, roped q (qDim) and k (kvDim), v (kvDim), attention output
  // (qDim), norm-2 input h, its output h, MLP gate, up, silu(gate) and product (4 i);
  // 'eager' attention adds the softmax probabilities, heads x seq.
  const h = shape.hidden_size;
  const qDim = shape.num_attention_heads * shape.head_dim;
  const kvDim = shape.num_key_value_heads * shape.head_dim;
  const perTokenLayer =
    4 * h +
    2 * qDim +
    2 * kvDim +
    4 * shape.intermediate_size +
    (attention === 'eager' ? shape.num_attention_heads * seq : 0);
  // LoRA keeps the A output (r elements) of each adapted module; the input is shared with the base.
  const loraPerLayer = new Array<number>(shape.num_hidden_layers).fill(0);
  for (const m of report.modules) {
    const l = /^model\.layers\.(\d+)\./.exec(m.name);
    if (l) loraPerLayer[Number(l[1])] += m.rank;
  }
  const tokens = batch * seq;
  const logits = tokens * shape.vocab_size * 4 * 2; // f32 logits and their gradient
  const trainActivations = (withLora: boolean): number => {
    const extra = withLora ? loraPerLayer : loraPerLayer.map(() => 0);
    if (checkpointing)
      return (
        shape.num_hidden_layers * tokens * h * cb +
        tokens * (perTokenLayer + Math.max(0, ...extra)) * cb +
        logits
      );
    return extra.reduce((sum, e) => sum + tokens * (perTokenLayer + e) * cb, 0) + logits;
  };
  const kvCache = 2 * shape.num_hidden_layers * tokens * kvDim * cb;
  const inferenceActivations = kvCache + batch * shape.vocab_size * 4;

  const breakdown = (
    m: Omit<MemoryBreakdown, 'total' | 'runtime'>,
    runtime = 0,
  ): MemoryBreakdown => ({
    ...m,
    runtime,
    total:
      m.weights + m.quantStats + m.adapters + m.gradients + m.optimizer + m.activations + runtime,
  });

  // What `lora generate` holds (runtime-onnx on onnxruntime's CPU provider): every weight once in
  // float32 (the graph computes in f32), a tied lm_head as the embedding itself (linears stay
  // [out, in] and run as FusedMatMul transB=1, so the head shares the embedding's bytes); the KV cache
  // in f32 twice (the past fed in, the present coming out); the prompt prefilled at once.
  const V = shape.vocab_size;
  const prefill =
    4 * batch * seq * (2 * shape.num_attention_heads * seq + 3 * shape.intermediate_size + 4 * h);
  const runtimeActivations = 2 * (kvCache / cb) * 4 + prefill + batch * V * 4;
  let largestLinear = 0;
  let runtimeQData = 0;
  let runtimeQStats = 0;
  for (const m of modules as LinearModule[]) {
    if (m.name === 'lm_head') continue;
    const n = m.inFeatures * m.outFeatures;
    largestLinear = Math.max(largestLinear, n);
    runtimeQData += Math.ceil(n / 2);
    runtimeQStats += 4 * Math.ceil(n / (quant.blockSize ?? 64));
  }
  const adapterState = { adapters: T * ab, gradients: T * ab, optimizer: T * 8 };
  const qName =
    quant.format === 'nf4' || quant.format === 'fp4'
      ? `${quant.format}${quant.doubleQuant ? '+DQ' : ''}`
      : quant.format;
  const scenarios: MemoryPlan['scenarios'] = [
    {
      name: 'inference',
      title: `inference (${cd})`,
      memory: breakdown({
        weights: dense,
        quantStats: 0,
        adapters: T * ab,
        gradients: 0,
        optimizer: 0,
        activations: inferenceActivations,
      }),
    },
  ];
  const quantized = quant.format !== cd;
  if (quantized) {
    scenarios.push({
      name: 'inference-quantized',
      title: `inference (${qName})`,
      memory: breakdown({
        weights: quantWeights,
        quantStats: qStats,
        adapters: T * ab,
        gradients: 0,
        optimizer: 0,
        activations: inferenceActivations,
      }),
    });
  }
  // Loading a float model streams each tensor in chunks through fixed buffers (runtime-onnx's
  // Float32Chunks: two f32 chunks of 2^22 values and two raw 16-bit ones, 48 MiB), whatever the
  // model size. Quantizing on load reads a whole tensor instead: the largest one held as stored
  // (bf16, 2 bytes), widened to f32 and laid out in f32: 10 bytes per element.
  const streamInFlight = 48 * 2 ** 20;
  const loadInFlight = 10 * Math.max(V * h, largestLinear);
  scenarios.push({
    name: 'generate',
    title: 'lora generate (f32, onnxruntime CPU)',
    memory: breakdown(
      {
        weights: P * 4,
        quantStats: 0,
        adapters: T * 4,
        gradients: 0,
        optimizer: 0,
        activations: runtimeActivations + streamInFlight,
      },
      RUNTIME_BASELINE_BYTES,
    ),
  });
  // The runtime quantizes on load to nf4/fp4 (MatMulBnb4: absmax in f32, no double quant).
  if (quant.format === 'nf4' || quant.format === 'fp4') {
    scenarios.push({
      name: 'generate-quantized',
      title: `lora generate --quant ${quant.format}`,
      memory: breakdown(
        {
          weights: runtimeQData + (P - quantizedParams) * 4,
          quantStats: runtimeQStats,
          adapters: T * 4,
          gradients: 0,
          optimizer: 0,
          // MatMulBnb4's CPU kernel dequantizes a whole weight to f32 on every call.
          activations: runtimeActivations + loadInFlight + 4 * largestLinear,
        },
        RUNTIME_BASELINE_BYTES,
      ),
    });
  }
  scenarios.push(
    {
      name: 'lora',
      title: `LoRA (${cd} base)`,
      memory: breakdown({
        weights: dense,
        quantStats: 0,
        ...adapterState,
        activations: trainActivations(true),
      }),
    },
    {
      name: 'qlora',
      title: `QLoRA (${qName} base)`,
      memory: breakdown({
        weights: quantWeights,
        quantStats: qStats,
        ...adapterState,
        activations: trainActivations(true),
      }),
    },
    {
      name: 'full',
      title: 'full fine-tuning',
      memory: breakdown({
        weights: dense,
        quantStats: 0,
        adapters: 0,
        gradients: P * cb,
        optimizer: P * (8 + (master ? 4 : 0)),
        activations: trainActivations(false),
      }),
    },
  );

  const assumptions = [
    `Model: LLaMA-style decoder, hidden ${h}, intermediate ${shape.intermediate_size}, ${shape.num_hidden_layers} layers, ${shape.num_attention_heads} heads (${shape.num_key_value_heads} KV heads, head dim ${shape.head_dim}), vocabulary ${shape.vocab_size}${shape.tie_word_embeddings ? ', tied embeddings' : ''}.`,
    `Unquantized weights, activations and full-FT gradients in ${cd} (${cb} bytes).`,
    `Quantized (${qName}): the decoder-layer linears (${quantizedParams.toLocaleString('en-US')} weights, ${bitsPerParameter(quant).toFixed(3)} bits each incl. statistics); embedding, lm_head, norms and biases stay ${cd}.`,
    `LoRA: r = ${lora.r} on ${report.modules.length} modules (${Array.isArray(lora.target_modules) ? lora.target_modules.join(', ') : lora.target_modules}), A/B and their gradients in ${ad} (${ab} bytes), AdamW m and v in f32 (8 bytes per trainable parameter), updated in place (no master copy).`,
    `Full fine-tuning: mixed-precision AdamW, ${cb} bytes weights + ${cb} bytes gradients + 8 bytes m/v${master ? ' + 4 bytes f32 master weights' : ''} = ${2 * cb + 8 + (master ? 4 : 0)} bytes per parameter.`,
    `Training activations: batch ${batch} x sequence ${seq} = ${tokens} tokens, ${perTokenLayer} ${cd} values per token and layer (${attention === 'eager' ? 'eager attention keeps heads x seq softmax probabilities' : 'memory-efficient attention, no seq x seq scores'}), ${checkpointing ? 'gradient checkpointing ON (layer inputs kept, one layer recomputed at a time)' : 'gradient checkpointing OFF (every layer keeps its activations)'}, plus f32 logits and their gradient (${shape.vocab_size} x 8 bytes per token).`,
    `Inference activations: KV cache for ${tokens} tokens (2 x layers x tokens x ${kvDim} x ${cb} bytes) and the last position's f32 logits; adapters kept unmerged.`,
    `lora generate (this runtime, CPU): every weight held once in f32 (onnxruntime's CPU MatMul computes in f32; bf16/f16 checkpoints are widened on load)${shape.tie_word_embeddings ? ', the tied lm_head sharing the embedding (no second copy)' : ''}; KV cache in f32 twice (past fed in, present returned); the ${seq}-token prompt prefilled at once (attention scores and probabilities, 3 x intermediate, 4 x hidden f32 values per token); LoRA A/B in f32; while loading, 48 MiB of chunk buffers each tensor streams through (with --quant, the largest tensor in flight as stored and in f32); Node.js + onnxruntime ${(RUNTIME_BASELINE_BYTES / 2 ** 20).toFixed(0)} MiB.${quant.format === 'nf4' || quant.format === 'fp4' ? ` With --quant ${quant.format}: decoder linears packed (4 bits) with one f32 absmax per ${quant.blockSize} weights, embedding/lm_head/norms f32, plus one linear dequantized to f32 per call (MatMulBnb4 on CPU).` : ''}`,
    'Not counted: CUDA context and allocator fragmentation (often 0.5-2 GB), temporary dequantized weights, framework workspaces. Paged optimizers can move optimizer states to CPU memory under pressure; they are counted here in full.',
  ];

  return {
    shape,
    parameters,
    lora: {
      trainable: T,
      modules: report.modules.length,
      rank: lora.r,
      targets: lora.target_modules,
    },
    trainableLine: trainableParametersLine(T, P + T),
    quant: { ...quant, bitsPerParameter: bitsPerParameter(quant) },
    scenarios,
    assumptions,
  };
}
