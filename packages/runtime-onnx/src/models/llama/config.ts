import { RuntimeError } from '../../errors.js';

/** RoPE frequency scaling as Llama 3.x configs spell it (`rope_type: "llama3"`), or plain linear. */
export type RopeScaling =
  | {
      readonly type: 'llama3';
      readonly factor: number;
      readonly lowFreqFactor: number;
      readonly highFreqFactor: number;
      readonly originalMaxPositionEmbeddings: number;
    }
  | { readonly type: 'linear'; readonly factor: number };

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
  readonly ropeTheta: number;
  readonly ropeScaling?: RopeScaling;
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

function parseRopeScaling(raw: unknown, source: string): RopeScaling | undefined {
  if (raw === undefined || raw === null) return undefined;
  if (typeof raw !== 'object')
    throw invalid(source, '"rope_scaling"', 'must be an object or null.');
  const r = raw as Record<string, unknown>;
  const type = r.rope_type ?? r.type;
  const factor = positiveNumber(r, 'factor', `${source} rope_scaling`, Number.NaN);
  if (type === 'llama3') {
    return {
      type: 'llama3',
      factor,
      lowFreqFactor: positiveNumber(r, 'low_freq_factor', `${source} rope_scaling`, Number.NaN),
      highFreqFactor: positiveNumber(r, 'high_freq_factor', `${source} rope_scaling`, Number.NaN),
      originalMaxPositionEmbeddings: positiveInt(
        r,
        'original_max_position_embeddings',
        `${source} rope_scaling`,
      ),
    };
  }
  if (type === 'linear') return { type: 'linear', factor };
  throw invalid(
    source,
    '"rope_scaling.rope_type"',
    `${JSON.stringify(type)} is not supported (llama3 and linear are).`,
  );
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
  const modelType = String(c.model_type ?? 'llama');
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
    throw invalid(source, '"hidden_act"', `"${String(act)}" is not supported (only silu).`);
  const isQwen2 = modelType === 'qwen2';
  const attentionBias = c.attention_bias === true;
  return {
    modelType,
    hiddenSize,
    intermediateSize: positiveInt(c, 'intermediate_size', source),
    numLayers: positiveInt(c, 'num_hidden_layers', source),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: positiveInt(c, 'vocab_size', source),
    rmsNormEps: positiveNumber(c, 'rms_norm_eps', source, 1e-6),
    ropeTheta: positiveNumber(c, 'rope_theta', source, 10000),
    ropeScaling: parseRopeScaling(c.rope_scaling, source),
    tieWordEmbeddings: c.tie_word_embeddings === true,
    qkvBias: isQwen2 || attentionBias,
    outputBias: !isQwen2 && attentionBias,
    mlpBias: c.mlp_bias === true,
    maxPositionEmbeddings:
      typeof c.max_position_embeddings === 'number' ? c.max_position_embeddings : undefined,
    bosTokenId: typeof c.bos_token_id === 'number' ? c.bos_token_id : undefined,
    eosTokenId:
      typeof c.eos_token_id === 'number' || Array.isArray(c.eos_token_id)
        ? (c.eos_token_id as number | number[])
        : undefined,
  };
}

/**
 * RoPE inverse frequencies `1 / theta^(2i / headDim)` for i < headDim / 2 (HF's rotate-half
 * pairing: i with i + headDim/2), with Llama 3 or linear scaling applied. float64.
 */
export function ropeInverseFrequencies(config: LlamaConfig): Float64Array {
  const half = config.headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / config.ropeTheta ** ((2 * i) / config.headDim);
  const s = config.ropeScaling;
  if (!s) return inv;
  if (s.type === 'linear') return inv.map((f) => f / s.factor);
  // Llama 3: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
  const lowFreqWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
  const highFreqWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
  return inv.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highFreqWavelen) return f;
    if (wavelen > lowFreqWavelen) return f / s.factor;
    const smooth =
      (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) /
      (s.highFreqFactor - s.lowFreqFactor);
    return (1 - smooth) * (f / s.factor) + smooth * f;
  });
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
