import { CoreError } from '../errors.js';

/**
 * The shape of a LLaMA-style decoder (LLaMA 1/2/3, Mistral, Qwen2, TinyLlama, SmolLM...), with
 * the field names of HF `config.json`. Enough to count every parameter and name every linear.
 */
export interface ModelShape {
  model_type: string;
  hidden_size: number;
  intermediate_size: number;
  num_attention_heads: number;
  /** Grouped-query attention: fewer K/V heads (defaults to num_attention_heads). */
  num_key_value_heads: number;
  /** Per-head size (defaults to hidden_size / num_attention_heads). */
  head_dim: number;
  num_hidden_layers: number;
  vocab_size: number;
  /** lm_head shares the embedding matrix (counted once). */
  tie_word_embeddings: boolean;
  /** Bias on q/k/v projections (Qwen2: true). */
  qkv_bias: boolean;
  /** Bias on o_proj. */
  o_bias: boolean;
  /** Bias on gate/up/down projections. */
  mlp_bias: boolean;
}

/** One linear layer of a model: weight [outFeatures, inFeatures]. */
export interface LinearModule {
  name: string;
  inFeatures: number;
  outFeatures: number;
  bias: boolean;
}

const LLAMA_FAMILY = new Set([
  'llama',
  'mistral',
  'qwen2',
  'qwen3',
  'gemma',
  'gemma2',
  'smollm',
  'olmo',
  'granite',
  'starcoder2',
]);

/**
 * Reads the shape from an HF `config.json` object. `source` names the file in errors.
 * Throws `MODEL_CONFIG_INVALID` naming the field, or `MODEL_CONFIG_UNSUPPORTED` for other
 * architectures.
 */
export function parseModelConfig(json: unknown, source: string): ModelShape {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new CoreError(
      'MODEL_CONFIG_INVALID',
      `${source}: a model config.json must be a JSON object.`,
      { source },
    );
  }
  const c = json as Record<string, unknown>;
  const modelType = typeof c.model_type === 'string' ? c.model_type : 'llama';
  if (!LLAMA_FAMILY.has(modelType)) {
    throw new CoreError(
      'MODEL_CONFIG_UNSUPPORTED',
      `${source}: model_type "${modelType}" is not a LLaMA-style decoder; supported: ${[...LLAMA_FAMILY].join(', ')}. Pass the shape with flags (--hidden, --layers, ...) instead.`,
      { source, modelType },
    );
  }
  const int = (field: string, fallback?: number): number => {
    const v = c[field] ?? fallback;
    if (!Number.isSafeInteger(v) || (v as number) <= 0) {
      throw new CoreError(
        'MODEL_CONFIG_INVALID',
        `${source}: "${field}" must be a positive integer, got ${JSON.stringify(c[field])}. Check the model's config.json.`,
        { source, field },
      );
    }
    const tooLarge = modelShapeLimitExceeded(field, v as number);
    if (tooLarge) {
      throw new CoreError(
        'MODEL_CONFIG_TOO_LARGE',
        `${source}: ${tooLarge}. Check the model's config.json.`,
        {
          source,
          field,
        },
      );
    }
    return v as number;
  };
  const bool = (field: string, fallback: boolean): boolean => {
    const v = c[field];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') {
      throw new CoreError(
        'MODEL_CONFIG_INVALID',
        `${source}: "${field}" must be true or false, got ${JSON.stringify(v)}.`,
        { source, field },
      );
    }
    return v;
  };
  const hidden = int('hidden_size');
  const heads = int('num_attention_heads');
  const attentionBias = bool('attention_bias', false);
  // Qwen2 has q/k/v biases and no attention_bias field.
  const qkvBias = modelType === 'qwen2' ? true : attentionBias;
  const shape: ModelShape = {
    model_type: modelType,
    hidden_size: hidden,
    intermediate_size: int('intermediate_size'),
    num_attention_heads: heads,
    num_key_value_heads: int('num_key_value_heads', heads),
    head_dim: int('head_dim', Math.floor(hidden / heads)),
    num_hidden_layers: int('num_hidden_layers'),
    vocab_size: int('vocab_size'),
    // LlamaConfig's default is false (PretrainedConfig's is true; LLaMA-family configs say it).
    tie_word_embeddings: bool('tie_word_embeddings', false),
    qkv_bias: qkvBias,
    o_bias: modelType === 'qwen2' ? false : attentionBias,
    mlp_bias: bool('mlp_bias', false),
  };
  const tooMany = modelParametersExceeded(shape);
  if (tooMany) {
    throw new CoreError(
      'MODEL_CONFIG_TOO_LARGE',
      `${source}: ${tooMany}. Check the model's config.json.`,
      {
        source,
      },
    );
  }
  return shape;
}

/** Every linear layer with HF names (`model.layers.0.self_attn.q_proj`, ..., `lm_head`). */
export function linearModules(shape: ModelShape): LinearModule[] {
  const h = shape.hidden_size;
  const qDim = shape.num_attention_heads * shape.head_dim;
  const kvDim = shape.num_key_value_heads * shape.head_dim;
  const i = shape.intermediate_size;
  const out: LinearModule[] = [];
  for (let l = 0; l < shape.num_hidden_layers; l++) {
    const p = `model.layers.${l}`;
    out.push(
      { name: `${p}.self_attn.q_proj`, inFeatures: h, outFeatures: qDim, bias: shape.qkv_bias },
      { name: `${p}.self_attn.k_proj`, inFeatures: h, outFeatures: kvDim, bias: shape.qkv_bias },
      { name: `${p}.self_attn.v_proj`, inFeatures: h, outFeatures: kvDim, bias: shape.qkv_bias },
      { name: `${p}.self_attn.o_proj`, inFeatures: qDim, outFeatures: h, bias: shape.o_bias },
      { name: `${p}.mlp.gate_proj`, inFeatures: h, outFeatures: i, bias: shape.mlp_bias },
      { name: `${p}.mlp.up_proj`, inFeatures: h, outFeatures: i, bias: shape.mlp_bias },
      { name: `${p}.mlp.down_proj`, inFeatures: i, outFeatures: h, bias: shape.mlp_bias },
    );
  }
  out.push({ name: 'lm_head', inFeatures: h, outFeatures: shape.vocab_size, bias: false });
  return out;
}

/** Parameter counts of a LLaMA-style model, by part. */
export interface ModelParameterCount {
  embedding: number;
  /** All decoder-layer linears (weights and biases), the part QLoRA quantizes. */
  layerLinears: number;
  /** RMSNorm weights: 2 per layer + the final norm. */
  norms: number;
  /** 0 when tied to the embedding. */
  lmHead: number;
  total: number;
}

export function countModelParameters(shape: ModelShape): ModelParameterCount {
  const embedding = shape.vocab_size * shape.hidden_size;
  let layerLinears = 0;
  let lmHead = 0;
  // Layers are identical: count one and multiply (O(1) in the depth, so shape searches stay cheap).
  for (const m of linearModules({ ...shape, num_hidden_layers: 1 })) {
    const n = m.inFeatures * m.outFeatures + (m.bias ? m.outFeatures : 0);
    if (m.name === 'lm_head') lmHead = shape.tie_word_embeddings ? 0 : n;
    else layerLinears += n * shape.num_hidden_layers;
  }
  const norms = (2 * shape.num_hidden_layers + 1) * shape.hidden_size;
  return {
    embedding,
    layerLinears,
    norms,
    lmHead,
    total: embedding + layerLinears + norms + lmHead,
  };
}

/**
 * Upper bounds on a model config's fields, far above every published model (Llama-3.1-405B: 126
 * layers, hidden 16384, vocabulary 128256), so a config claiming terabytes is refused before
 * anything is sized by it.
 */
export const MODEL_SHAPE_LIMITS: Readonly<Record<string, number>> = Object.freeze({
  hidden_size: 2 ** 17,
  intermediate_size: 2 ** 20,
  num_attention_heads: 2 ** 12,
  num_key_value_heads: 2 ** 12,
  head_dim: 2 ** 12,
  num_hidden_layers: 2 ** 12,
  vocab_size: 2 ** 24,
});

/** The largest parameter count accepted (1e13: five times the largest published models). */
export const MAX_MODEL_PARAMETERS = 1e13;

/** The limit named in {@link MODEL_SHAPE_LIMITS} that `value` exceeds, as a sentence, or undefined. */
export function modelShapeLimitExceeded(field: string, value: number): string | undefined {
  const limit = MODEL_SHAPE_LIMITS[field];
  return limit !== undefined && value > limit
    ? `"${field}" is ${value}, above the limit of ${limit} (far beyond any published model)`
    : undefined;
}

/** A sentence when the shape's parameter count exceeds {@link MAX_MODEL_PARAMETERS}, else undefined. */
export function modelParametersExceeded(shape: ModelShape): string | undefined {
  const total = countModelParameters(shape).total;
  return total > MAX_MODEL_PARAMETERS
    ? `the config declares ${total.toExponential(2)} parameters, above the limit of ${MAX_MODEL_PARAMETERS.toExponential(0)}`
    : undefined;
}

/** Published LLaMA shapes, used to give `--params` a concrete architecture. */
export const KNOWN_SHAPES: Readonly<Record<string, ModelShape>> = Object.freeze({
  'tinyllama-1.1b': llama(2048, 5632, 32, 4, 22),
  'llama-7b': llama(4096, 11008, 32, 32, 32),
  'llama-13b': llama(5120, 13824, 40, 40, 40),
  'llama-33b': llama(6656, 17920, 52, 52, 60),
  'llama-65b': llama(8192, 22016, 64, 64, 80),
  'llama-2-70b': llama(8192, 28672, 64, 8, 80),
});

function llama(
  hidden: number,
  intermediate: number,
  heads: number,
  kvHeads: number,
  layers: number,
): ModelShape {
  return {
    model_type: 'llama',
    hidden_size: hidden,
    intermediate_size: intermediate,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: hidden / heads,
    num_hidden_layers: layers,
    vocab_size: 32000,
    tie_word_embeddings: false,
    qkv_bias: false,
    o_bias: false,
    mlp_bias: false,
  };
}

/**
 * A LLaMA-like shape for a parameter count:
 * - a published LLaMA shape (KNOWN_SHAPES) whose count is within 15 % of `params`, the closest;
 * - otherwise a derived one: head size 128 (h / 128 heads, no GQA), intermediate 8h/3 rounded
 *   up to a multiple of 256 (SwiGLU), vocabulary 32,000, untied; for each width h (multiple of
 *   128) the depth is fitted to the count, and among fits within 1 % the one nearest LLaMA-7B's
 *   shape ratio (layers = h / 128) wins.
 */
export function shapeForParameterCount(params: number): { shape: ModelShape; name: string } {
  if (!Number.isFinite(params) || params <= 0) {
    throw new CoreError(
      'MODEL_PARAMS_INVALID',
      `A parameter count must be a positive number, got ${params}.`,
    );
  }
  if (params > MAX_MODEL_PARAMETERS) {
    throw new CoreError(
      'MODEL_PARAMS_INVALID',
      `A parameter count of ${params.toExponential(2)} is above the limit of ${MAX_MODEL_PARAMETERS.toExponential(0)} (five times the largest published models).`,
    );
  }
  let best: { shape: ModelShape; name: string; err: number } | undefined;
  for (const [name, shape] of Object.entries(KNOWN_SHAPES)) {
    const err = Math.abs(Math.log(countModelParameters(shape).total / params));
    if (err < Math.log(1.15) && (!best || err < best.err)) best = { shape, name, err };
  }
  if (best) return { shape: best.shape, name: best.name };
  // For each width, fit the depth to the count; keep the fits within 1 % and among them the one
  // closest to LLaMA's ratio of 1 layer per 128 hidden units (else the closest fit).
  let derived: { shape: ModelShape; err: number; ratio: number } | undefined;
  for (let h = 256; h <= 65536; h += 128) {
    const heads = h / 128;
    const oneLayer = countModelParameters(
      llama(h, Math.ceil((8 * h) / 3 / 256) * 256, heads, heads, 1),
    );
    const perLayer = oneLayer.layerLinears + 2 * h;
    const layers = Math.max(
      2,
      Math.round((params - oneLayer.embedding - oneLayer.lmHead - h) / perLayer),
    );
    const shape = llama(h, Math.ceil((8 * h) / 3 / 256) * 256, heads, heads, layers);
    const err = Math.abs(countModelParameters(shape).total / params - 1);
    const ratio = Math.abs(Math.log(layers / heads));
    const better =
      !derived || (err < 0.01 && derived.err < 0.01 ? ratio < derived.ratio : err < derived.err);
    if (better) derived = { shape, err, ratio };
  }
  return { shape: derived!.shape, name: 'derived' };
}
