import { modelParametersExceeded, modelShapeLimitExceeded } from '@lora/core';
import { RuntimeError } from '../../errors.js';
import { parseRope, type Rope, ropeFrequencies } from './rope.js';

export type { Rope, RopeScaling } from './rope.js';

/** A LLaMA-family decoder's shape, read from a Hugging Face `config.json`. */
export interface LlamaConfig {
  /** `llama`, `mistral` or `qwen2` (same graph; they differ in biases and defaults). */
  readonly modelType: string;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  /** Key/value heads (GQA: fewer than numHeads; each serves numHeads / numKvHeads query heads). */
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly vocabSize: number;
  readonly rmsNormEps: number;
  /** Rotary embedding: base, scaling type and attention scaling (from either config spelling). */
  readonly rope: Rope;
  /** The output projection reuses `model.embed_tokens.weight` (no `lm_head.weight`). */
  readonly tieWordEmbeddings: boolean;
  /** q/k/v projections have biases (Llama `attention_bias`; always for Qwen2). */
  readonly qkvBias: boolean;
  /** o_proj has a bias (Llama `attention_bias`; never for Qwen2). */
  readonly outputBias: boolean;
  /** gate/up/down projections have biases (Llama `mlp_bias`). */
  readonly mlpBias: boolean;
  readonly maxPositionEmbeddings?: number;
  readonly bosTokenId?: number;
  readonly eosTokenId?: number | readonly number[];
}

const SUPPORTED_TYPES = ['llama', 'mistral', 'qwen2'];

function invalid(source: string, field: string, message: string): RuntimeError {
  return new RuntimeError('CONFIG_INVALID', `${source}: ${field} ${message}`, {
    file: source,
    field,
  });
}

function positiveInt(
  json: Record<string, unknown>,
  field: string,
  source: string,
  fallback?: number,
): number {
  const v = json[field] ?? fallback;
  if (v === undefined || v === null)
    throw invalid(source, `"${field}"`, 'is missing; add it to config.json.');
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
    throw invalid(source, `"${field}"`, `must be a positive integer, got ${JSON.stringify(v)}.`);
  }
  const tooLarge = modelShapeLimitExceeded(field, v);
  if (tooLarge)
    throw new RuntimeError('CONFIG_INVALID', `${source}: ${tooLarge}.`, { file: source, field });
  return v;
}

function positiveNumber(
  json: Record<string, unknown>,
  field: string,
  source: string,
  fallback: number,
): number {
  const v = json[field] ?? fallback;
  if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v)) {
    throw invalid(source, `"${field}"`, `must be a positive number, got ${JSON.stringify(v)}.`);
  }
  return v;
}

/**
 * Config keys that change the computation and that this runtime does not implement. Refused
 * when active, never ignored: a model that runs with them ignored gives wrong logits silently.
 */
function refuseUnsupportedMath(
  c: Record<string, unknown>,
  modelType: string,
  maxPositions: number | undefined,
  source: string,
): void {
  for (const key of [
    'attn_logit_softcapping',
    'final_logit_softcapping',
    'query_pre_attn_scalar',
  ]) {
    if (c[key] !== undefined && c[key] !== null) {
      throw invalid(
        source,
        `"${key}"`,
        `is set (${JSON.stringify(c[key])}); this runtime does not implement it (a Gemma-style setting), so it would compute different logits.`,
      );
    }
  }
  // Mistral applies `sliding_window` whenever it is set; Qwen2 only with `use_sliding_window`.
  const window =
    modelType === 'mistral' || (modelType === 'qwen2' && c.use_sliding_window === true)
      ? c.sliding_window
      : undefined;
  if (typeof window === 'number' && (maxPositions === undefined || window < maxPositions)) {
    throw invalid(
      source,
      '"sliding_window"',
      `is ${window} (below max_position_embeddings ${maxPositions ?? '(unset)'}): sliding-window attention is not implemented, so sequences longer than ${window} would attend too far. Use a model without a sliding window, or set "sliding_window" to null if you only run sequences of at most ${window} tokens.`,
    );
  }
  if (Array.isArray(c.layer_types) && window !== undefined && window !== null) {
    const other = c.layer_types.find((t) => t !== 'full_attention');
    if (other !== undefined)
      throw invalid(
        source,
        '"layer_types"',
        `contains ${typeof other === 'string' ? `"${other}"` : `a ${typeof other}`}; only full attention layers are implemented.`,
      );
  }
}

/**
 * Reads and checks a Hugging Face config (`config.json` contents). Every inconsistency is named
 * with the field, so a bad folder fails here, before any weight is read or session built.
 */
export function parseLlamaConfig(json: unknown, source = 'config.json'): LlamaConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new RuntimeError('CONFIG_INVALID', `${source}: expected a JSON object.`, {
      file: source,
    });
  }
  const c = json as Record<string, unknown>;
  const rawType = c.model_type ?? 'llama';
  if (typeof rawType !== 'string')
    throw invalid(source, '"model_type"', `must be a string, got a ${typeof rawType}.`);
  const modelType = rawType;
  if (!SUPPORTED_TYPES.includes(modelType)) {
    throw invalid(
      source,
      '"model_type"',
      `"${modelType}" is not a supported LLaMA-family model (${SUPPORTED_TYPES.join(', ')}).`,
    );
  }
  const hiddenSize = positiveInt(c, 'hidden_size', source);
  const numHeads = positiveInt(c, 'num_attention_heads', source);
  const numKvHeads = positiveInt(c, 'num_key_value_heads', source, numHeads);
  if (c.head_dim === undefined && hiddenSize % numHeads !== 0) {
    throw invalid(
      source,
      '"hidden_size"',
      `(${hiddenSize}) is not divisible by num_attention_heads (${numHeads}); fix one of them or give "head_dim".`,
    );
  }
  const headDim = positiveInt(c, 'head_dim', source, hiddenSize / numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw invalid(
      source,
      '"num_key_value_heads"',
      `(${numKvHeads}) must divide num_attention_heads (${numHeads}): each kv head serves a whole group of query heads.`,
    );
  }
  if (headDim % 2 !== 0)
    throw invalid(source, '"head_dim"', `(${headDim}) must be even for rotary embeddings.`);
  const act = c.hidden_act ?? 'silu';
  if (act !== 'silu')
    throw invalid(
      source,
      '"hidden_act"',
      `${typeof act === 'string' ? `"${act}"` : `a ${typeof act}`} is not supported (only silu).`,
    );
  const maxPositionEmbeddings =
    typeof c.max_position_embeddings === 'number' ? c.max_position_embeddings : undefined;
  refuseUnsupportedMath(c, modelType, maxPositionEmbeddings, source);
  const rope = parseRope(c, headDim, maxPositionEmbeddings, source);
  const isQwen2 = modelType === 'qwen2';
  const attentionBias = c.attention_bias === true;
  const intermediateSize = positiveInt(c, 'intermediate_size', source);
  const numLayers = positiveInt(c, 'num_hidden_layers', source);
  const vocabSize = positiveInt(c, 'vocab_size', source);
  const tooMany = modelParametersExceeded({
    model_type: modelType,
    hidden_size: hiddenSize,
    intermediate_size: intermediateSize,
    num_attention_heads: numHeads,
    num_key_value_heads: numKvHeads,
    head_dim: headDim,
    num_hidden_layers: numLayers,
    vocab_size: vocabSize,
    tie_word_embeddings: c.tie_word_embeddings === true,
    qkv_bias: false,
    o_bias: false,
    mlp_bias: false,
  });
  if (tooMany) throw new RuntimeError('CONFIG_INVALID', `${source}: ${tooMany}.`, { file: source });
  return {
    modelType,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize,
    rmsNormEps: positiveNumber(c, 'rms_norm_eps', source, 1e-6),
    rope,
    tieWordEmbeddings: c.tie_word_embeddings === true,
    qkvBias: isQwen2 || attentionBias,
    outputBias: !isQwen2 && attentionBias,
    mlpBias: c.mlp_bias === true,
    maxPositionEmbeddings,
    bosTokenId: typeof c.bos_token_id === 'number' ? c.bos_token_id : undefined,
    eosTokenId:
      typeof c.eos_token_id === 'number' || Array.isArray(c.eos_token_id)
        ? (c.eos_token_id as number | number[])
        : undefined,
  };
}

/**
 * RoPE inverse frequencies `1 / theta^(2i / headDim)` for i < headDim / 2 (HF's rotate-half
 * pairing: i with i + headDim/2) with the config's scaling applied, float64, for a call whose
 * largest position id + 1 is `sequenceLength` (matters for `dynamic` and `longrope` only).
 */
export function ropeInverseFrequencies(config: LlamaConfig, sequenceLength = 1): Float64Array {
  return ropeFrequencies(config.rope, config.headDim, sequenceLength);
}

/** Every linear layer of a decoder layer, in HF module order. */
export const LLAMA_LINEARS = [
  'q_proj',
  'k_proj',
  'v_proj',
  'o_proj',
  'gate_proj',
  'up_proj',
  'down_proj',
] as const;
export type LlamaLinear = (typeof LLAMA_LINEARS)[number];

/** `model.layers.{i}.self_attn.q_proj`-style module name of a linear. */
export function llamaModuleName(layer: number, linear: LlamaLinear): string {
  const block =
    linear === 'gate_proj' || linear === 'up_proj' || linear === 'down_proj' ? 'mlp' : 'self_attn';
  return `model.layers.${layer}.${block}.${linear}`;
}

/** [outFeatures, inFeatures] of a linear (torch layout). */
export function llamaLinearShape(config: LlamaConfig, linear: LlamaLinear): [number, number] {
  const { hiddenSize: H, intermediateSize: I, numHeads, numKvHeads, headDim } = config;
  switch (linear) {
    case 'q_proj':
      return [numHeads * headDim, H];
    case 'k_proj':
    case 'v_proj':
      return [numKvHeads * headDim, H];
    case 'o_proj':
      return [H, numHeads * headDim];
    case 'gate_proj':
    case 'up_proj':
      return [I, H];
    case 'down_proj':
      return [H, I];
  }
}

export function llamaLinearHasBias(config: LlamaConfig, linear: LlamaLinear): boolean {
  if (linear === 'o_proj') return config.outputBias;
  if (linear === 'q_proj' || linear === 'k_proj' || linear === 'v_proj') return config.qkvBias;
  return config.mlpBias;
}

/** Every tensor a model folder must hold, with its shape (HF names). */
export function llamaWeightSpec(config: LlamaConfig): { name: string; shape: number[] }[] {
  const H = config.hiddenSize;
  const spec: { name: string; shape: number[] }[] = [
    { name: 'model.embed_tokens.weight', shape: [config.vocabSize, H] },
  ];
  for (let l = 0; l < config.numLayers; l++) {
    spec.push({ name: `model.layers.${l}.input_layernorm.weight`, shape: [H] });
    spec.push({ name: `model.layers.${l}.post_attention_layernorm.weight`, shape: [H] });
    for (const linear of LLAMA_LINEARS) {
      const [out, inF] = llamaLinearShape(config, linear);
      spec.push({ name: `${llamaModuleName(l, linear)}.weight`, shape: [out, inF] });
      if (llamaLinearHasBias(config, linear))
        spec.push({ name: `${llamaModuleName(l, linear)}.bias`, shape: [out] });
    }
  }
  spec.push({ name: 'model.norm.weight', shape: [H] });
  if (!config.tieWordEmbeddings)
    spec.push({ name: 'lm_head.weight', shape: [config.vocabSize, H] });
  return spec;
}
