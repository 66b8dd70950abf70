import { type Tensor, tensor } from '@lora/core';
import { GraphBuilder } from '../../graph/builder.js';
import * as op from '../../graph/ops.js';
import type { Graph, Value } from '../../graph/types.js';
import { emitLinear, type LinearHook, type LinearWeight } from '../linear.js';
import {
  type LlamaConfig,
  type LlamaLinear,
  llamaModuleName,
  ropeInverseFrequencies,
} from './config.js';

/** Symbolic dims of the graph's inputs and outputs. */
export const DIMS = {
  batch: 'batch',
  sequence: 'sequence',
  past: 'past_sequence',
  total: 'total_sequence',
} as const;

/** Graph input/output names (the names Hugging Face Optimum uses for decoder exports). */
export const LLAMA_IO = {
  inputIds: 'input_ids',
  attentionMask: 'attention_mask',
  positionIds: 'position_ids',
  logits: 'logits',
  pastKey: (layer: number) => `past_key_values.${layer}.key`,
  pastValue: (layer: number) => `past_key_values.${layer}.value`,
  presentKey: (layer: number) => `present.${layer}.key`,
  presentValue: (layer: number) => `present.${layer}.value`,
} as const;

/** Everything the graph needs, already converted: float32 norms/embeddings, linears dense or 4-bit. */
export interface LlamaGraphWeights {
  readonly embedTokens: Tensor<'f32'>;
  readonly finalNorm: Tensor<'f32'>;
  readonly lmHead: LinearWeight;
  readonly layers: readonly {
    readonly inputNorm: Tensor<'f32'>;
    readonly postAttentionNorm: Tensor<'f32'>;
    readonly linears: Readonly<Record<LlamaLinear, LinearWeight>>;
    readonly biases: Readonly<Partial<Record<LlamaLinear, Tensor<'f32'>>>>;
  }[];
}

export interface LlamaGraphOptions {
  /** Adds work beside chosen linears (LoRA branches); see {@link LinearHook}. */
  readonly linearHook?: LinearHook;
  /** `'all'` (default) returns logits for every position; `'last'` only for the last one (generation). */
  readonly logits?: 'all' | 'last';
}

/** Masked scores get this added: exp underflows to 0, and fully masked (padding) rows stay finite. */
const MASKED = -1e9;

/** RMSNorm: x / sqrt(mean(x^2) + eps) * w. x: [B, T, H] */
function rmsNorm(
  g: GraphBuilder,
  x: Value,
  weight: Tensor<'f32'>,
  eps: number,
  name: string,
): Value {
  const meanSquare = op.reduceMean(g, op.mul(g, x, x), [-1]); // [B, T, 1]
  const inv = op.reciprocal(g, op.sqrt(g, op.add(g, meanSquare, g.scalar(eps))));
  return op.mul(g, op.mul(g, x, inv), g.initializer(name, weight), `${name}/Mul`);
}

/** HF rotate-half RoPE: x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]. x: [B, heads, T, D] */
function applyRope(g: GraphBuilder, x: Value, cos: Value, sin: Value, headDim: number): Value {
  const half = headDim / 2;
  const x1 = op.slice(g, x, -1, 0, half);
  const x2 = op.slice(g, x, -1, half, headDim);
  const rotated = op.concat(g, [op.neg(g, x2), x1], -1);
  return op.add(g, op.mul(g, x, cos), op.mul(g, rotated, sin));
}

/**
 * The decoder graph: token ids, attention mask (over past + new tokens, 1 = real, 0 = padding),
 * position ids and the past key/values in; logits and the present key/values out. Prefill is a
 * call with an empty past (`past_sequence` = 0), decode a call with `sequence` = 1.
 *
 * Inputs: input_ids i64 [batch, sequence], attention_mask i64 [batch, total_sequence],
 * position_ids i64 [batch, sequence], past_key_values.{l}.key/value f32 [batch, kvHeads, past_sequence, headDim].
 * Outputs: logits f32 [batch, sequence (or 1), vocab], present.{l}.key/value [batch, kvHeads, total_sequence, headDim].
 */
export function buildLlamaGraph(
  config: LlamaConfig,
  weights: LlamaGraphWeights,
  options: LlamaGraphOptions = {},
): Graph {
  const { numHeads, numKvHeads, headDim } = config;
  const g = new GraphBuilder('llama');
  const { batch, sequence, past, total } = DIMS;
  const inputIds = g.input(LLAMA_IO.inputIds, 'i64', [batch, sequence]);
  const attentionMask = g.input(LLAMA_IO.attentionMask, 'i64', [batch, total]);
  const positionIds = g.input(LLAMA_IO.positionIds, 'i64', [batch, sequence]);
  const pastKeys: Value[] = [];
  const pastValues: Value[] = [];
  for (let l = 0; l < config.numLayers; l++) {
    pastKeys.push(g.input(LLAMA_IO.pastKey(l), 'f32', [batch, numKvHeads, past, headDim]));
    pastValues.push(g.input(LLAMA_IO.pastValue(l), 'f32', [batch, numKvHeads, past, headDim]));
  }

  // Rotary tables from the position ids: angles [B, T, D/2] -> cos, sin [B, 1, T, D].
  const freqs = (name: string, long: boolean) =>
    g.initializer(
      name,
      tensor('f32', [headDim / 2], Float32Array.from(ropeInverseFrequencies(config, long))),
    );
  const positions = op.cast(g, positionIds, 'f32');
  let invFreq = freqs('rope.inv_freq', false);
  const scaling = config.rope.scaling;
  if (scaling?.type === 'longrope') {
    // As transformers: long factors when this call's largest position id + 1 exceeds the original context.
    const fits = op.lessOrEqual(
      g,
      op.reduceMax(g, positions, [0, 1], false),
      g.scalar(scaling.originalMaxPositionEmbeddings - 1),
    );
    invFreq = op.where(g, fits, invFreq, freqs('rope.inv_freq_long', true));
  }
  const angles = op.mul(g, op.unsqueeze(g, positions, [-1]), invFreq);
  const fullAngles = op.concat(g, [angles, angles], -1);
  // yarn / longrope scale cos and sin (transformers' attention_scaling).
  const scaled = (x: Value) =>
    config.rope.attentionScaling === 1 ? x : op.mul(g, x, g.scalar(config.rope.attentionScaling));
  const cos = op.unsqueeze(g, scaled(op.cos(g, fullAngles)), [1]);
  const sin = op.unsqueeze(g, scaled(op.sin(g, fullAngles)), [1]);

  // Additive attention bias [B, 1, T, S]: query i (absolute index S - T + i) sees key j <= its index
  // whose mask is 1. With left padding, positions and absolute indices agree on real tokens.
  const S = op.gather(g, op.shapeOf(g, attentionMask), g.constant([1], 'i64', []));
  const T = op.gather(g, op.shapeOf(g, inputIds), g.constant([1], 'i64', []));
  const one = g.scalar(1, 'i64');
  const keyIndex = op.unsqueeze(g, op.range(g, g.scalar(0, 'i64'), S, one), [0]); // [1, S]
  const queryIndex = op.unsqueeze(g, op.range(g, op.sub(g, S, T), S, one), [1]); // [T, 1]
  const causal = op.cast(g, op.lessOrEqual(g, keyIndex, queryIndex), 'f32'); // [T, S]
  const keep = op.unsqueeze(g, op.cast(g, attentionMask, 'f32'), [1, 2]); // [B, 1, 1, S]
  const allowed = op.mul(g, causal, keep); // [B, 1, T, S]
  const attnBias = op.mul(g, op.sub(g, allowed, g.scalar(1)), g.scalar(-MASKED));

  let x = op.gather(
    g,
    g.initializer('model.embed_tokens.weight', weights.embedTokens),
    inputIds,
    0,
    'embed_tokens',
  ); // [B, T, H]
  const scale = g.scalar(1 / Math.sqrt(headDim));
  for (let l = 0; l < config.numLayers; l++) {
    const w = weights.layers[l];
    const hook = options.linearHook && { fn: options.linearHook, layer: l };
    const linear = (name: LlamaLinear, input: Value) =>
      emitLinear(g, llamaModuleName(l, name), input, w.linears[name], w.biases[name], hook);
    const prefix = `model.layers.${l}`;

    // Attention. Heads: q [B, nH, T, D]; k, v [B, kvH, T, D].
    const h = rmsNorm(g, x, w.inputNorm, config.rmsNormEps, `${prefix}.input_layernorm.weight`);
    const heads = (y: Value, n: number) =>
      op.transpose(g, op.reshape(g, y, [0, 0, n, headDim]), [0, 2, 1, 3]);
    const q = applyRope(g, heads(linear('q_proj', h), numHeads), cos, sin, headDim);
    const k = applyRope(g, heads(linear('k_proj', h), numKvHeads), cos, sin, headDim);
    const v = heads(linear('v_proj', h), numKvHeads);
    const keys = op.concat(g, [pastKeys[l], k], 2); // [B, kvH, S, D]
    const values = op.concat(g, [pastValues[l], v], 2);
    const cacheShape = [batch, numKvHeads, total, headDim];
    g.output(keys, LLAMA_IO.presentKey(l), cacheShape);
    g.output(values, LLAMA_IO.presentValue(l), cacheShape);
    // GQA without copying k/v: the query heads of one kv head become extra rows, [B, kvH, G*T, D].
    const qGrouped = op.reshape(g, op.mul(g, q, scale), [0, numKvHeads, -1, headDim]);
    const scores = op.matmul(g, qGrouped, op.transpose(g, keys, [0, 1, 3, 2])); // [B, kvH, G*T, S]
    const biased = op.add(g, op.reshape(g, scores, [0, numHeads, -1, 0]), attnBias); // [B, nH, T, S]
    const probs = op.reshape(g, op.softmax(g, biased, -1), [0, numKvHeads, -1, 0]); // [B, kvH, G*T, S]
    const context = op.reshape(g, op.matmul(g, probs, values), [0, numHeads, -1, headDim]); // [B, nH, T, D]
    const merged = op.reshape(g, op.transpose(g, context, [0, 2, 1, 3]), [
      0,
      0,
      numHeads * headDim,
    ]); // [B, T, nH*D]
    x = op.add(g, x, linear('o_proj', merged), `${prefix}/attn_residual`);

    // SwiGLU MLP: down(silu(gate(h)) * up(h)).
    const h2 = rmsNorm(
      g,
      x,
      w.postAttentionNorm,
      config.rmsNormEps,
      `${prefix}.post_attention_layernorm.weight`,
    );
    const gate = linear('gate_proj', h2);
    const up = linear('up_proj', h2);
    const act = op.mul(g, op.mul(g, gate, op.sigmoid(g, gate)), up);
    x = op.add(g, x, linear('down_proj', act), `${prefix}/mlp_residual`);
  }
  let out = rmsNorm(g, x, weights.finalNorm, config.rmsNormEps, 'model.norm.weight');
  if (options.logits === 'last') out = op.slice(g, out, 1, -1, Number.MAX_SAFE_INTEGER); // [B, 1, H]
  const logitsShape = [batch, options.logits === 'last' ? 1 : sequence, config.vocabSize];
  g.output(emitLinear(g, 'lm_head', out, weights.lmHead), LLAMA_IO.logits, logitsShape);
  return g.build();
}
