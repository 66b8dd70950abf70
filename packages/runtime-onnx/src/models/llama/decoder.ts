import type { GraphBuilder } from '../../graph/builder.js';
import * as op from '../../graph/ops.js';
import type { Value } from '../../graph/types.js';
import { tensor } from '@lora/core';
import { type LlamaConfig, type LlamaLinear, ropeInverseFrequencies } from './config.js';

/**
 * The LLaMA decoder layer, once, for every graph built from it: the inference graph (KV cache,
 * logits) and the training graphs (static shapes, loss, gradients). What differs between them is
 * passed in: how a linear is emitted (dense, 4-bit, with a LoRA branch, weights as initializers or
 * as inputs), where the norm weights come from, and whether keys and values go through a cache.
 */

/** Masked scores get this added: exp underflows to 0, and fully masked (padding) rows stay finite. */
export const MASKED = -1e9;

/** The norm weights of one layer, as graph values (initializers, or inputs when trained). */
export interface LlamaLayerNorms {
  readonly inputNorm: Value;
  readonly postAttentionNorm: Value;
}

/** What a decoder layer needs besides its input and norms. */
export interface DecoderLayerContext {
  readonly config: LlamaConfig;
  /** Rotary tables [B, 1, T, headDim]. */
  readonly cos: Value;
  readonly sin: Value;
  /** Additive attention bias [B, 1, T, S]: 0 where a query may attend, {@link MASKED} elsewhere. */
  readonly attnBias: Value;
  /** Emits linear `name` of `layer` on x [B, T, in] (base product, bias, hooks) -> [B, T, out]. */
  readonly linear: (layer: number, name: LlamaLinear, x: Value) => Value;
  /**
   * The keys and values attended to, from this call's k, v [B, kvHeads, T, D]: a KV cache
   * concatenates the past here (and records the present). Default: k and v themselves.
   */
  readonly keysValues?: (layer: number, k: Value, v: Value) => { keys: Value; values: Value };
}

/** RMSNorm: x / sqrt(mean(x^2) + eps) * w. x: [B, T, H] */
export function rmsNorm(
  g: GraphBuilder,
  x: Value,
  weight: Value,
  eps: number,
  name: string,
): Value {
  const meanSquare = op.reduceMean(g, op.mul(g, x, x), [-1]); // [B, T, 1]
  const inv = op.reciprocal(g, op.sqrt(g, op.add(g, meanSquare, g.scalar(eps))));
  return op.mul(g, op.mul(g, x, inv), weight, `${name}/Mul`);
}

/** HF rotate-half RoPE: x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]. x: [B, heads, T, D] */
export function applyRope(
  g: GraphBuilder,
  x: Value,
  cos: Value,
  sin: Value,
  headDim: number,
): Value {
  const half = headDim / 2;
  const x1 = op.slice(g, x, -1, 0, half);
  const x2 = op.slice(g, x, -1, half, headDim);
  const rotated = op.concat(g, [op.neg(g, x2), x1], -1);
  return op.add(g, op.mul(g, x, cos), op.mul(g, rotated, sin));
}

/**
 * Rotary tables from the position ids [B, T] (i64): cos, sin [B, 1, T, headDim], with the
 * config's frequency scaling and attention scaling applied as transformers does.
 */
export function ropeTables(
  g: GraphBuilder,
  config: LlamaConfig,
  positionIds: Value,
): { cos: Value; sin: Value } {
  const { headDim } = config;
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
  const angles = op.mul(g, op.unsqueeze(g, positions, [-1]), invFreq); // [B, T, D/2]
  const fullAngles = op.concat(g, [angles, angles], -1);
  // yarn / longrope scale cos and sin (transformers' attention_scaling).
  const scaled = (x: Value) =>
    config.rope.attentionScaling === 1 ? x : op.mul(g, x, g.scalar(config.rope.attentionScaling));
  const cos = op.unsqueeze(g, scaled(op.cos(g, fullAngles)), [1]);
  const sin = op.unsqueeze(g, scaled(op.sin(g, fullAngles)), [1]);
  return { cos, sin };
}

/**
 * Additive attention bias [B, 1, T, S] from a mask over all S = past + T keys (1 real, 0 padding):
 * query i (absolute index S - T + i) sees key j <= its index whose mask is 1. With left padding,
 * positions and absolute indices agree on real tokens.
 */
export function attentionBias(g: GraphBuilder, attentionMask: Value, inputIds: Value): Value {
  const S = op.gather(g, op.shapeOf(g, attentionMask), g.constant([1], 'i64', []));
  const T = op.gather(g, op.shapeOf(g, inputIds), g.constant([1], 'i64', []));
  const one = g.scalar(1, 'i64');
  const keyIndex = op.unsqueeze(g, op.range(g, g.scalar(0, 'i64'), S, one), [0]); // [1, S]
  const queryIndex = op.unsqueeze(g, op.range(g, op.sub(g, S, T), S, one), [1]); // [T, 1]
  const causal = op.cast(g, op.lessOrEqual(g, keyIndex, queryIndex), 'f32'); // [T, S]
  const keep = op.unsqueeze(g, op.cast(g, attentionMask, 'f32'), [1, 2]); // [B, 1, 1, S]
  const allowed = op.mul(g, causal, keep); // [B, 1, T, S]
  return op.mul(g, op.sub(g, allowed, g.scalar(1)), g.scalar(-MASKED));
}

/**
 * Softmax attention with grouped key/value heads (GQA) without copying k/v: the query heads of
 * one kv head become extra rows. q [B, nH, T, D], keys/values [B, kvH, S, D], bias [B, 1, T, S]
 * -> context [B, T, nH * D].
 */
export function groupedAttention(
  g: GraphBuilder,
  config: LlamaConfig,
  q: Value,
  keys: Value,
  values: Value,
  attnBias: Value,
): Value {
  const { numHeads, numKvHeads, headDim } = config;
  const scale = g.scalar(1 / Math.sqrt(headDim));
  const qGrouped = op.reshape(g, op.mul(g, q, scale), [0, numKvHeads, -1, headDim]); // [B, kvH, G*T, D]
  const scores = op.matmul(g, qGrouped, op.transpose(g, keys, [0, 1, 3, 2])); // [B, kvH, G*T, S]
  const biased = op.add(g, op.reshape(g, scores, [0, numHeads, -1, 0]), attnBias); // [B, nH, T, S]
  const probs = op.reshape(g, op.softmax(g, biased, -1), [0, numKvHeads, -1, 0]); // [B, kvH, G*T, S]
  const context = op.reshape(g, op.matmul(g, probs, values), [0, numHeads, -1, headDim]); // [B, nH, T, D]
  return op.reshape(g, op.transpose(g, context, [0, 2, 1, 3]), [0, 0, numHeads * headDim]);
}

/** One decoder layer: x [B, T, H] -> x [B, T, H] (pre-norm attention and SwiGLU MLP, residuals). */
export function emitDecoderLayer(
  g: GraphBuilder,
  ctx: DecoderLayerContext,
  layer: number,
  x: Value,
  norms: LlamaLayerNorms,
): Value {
  const { config } = ctx;
  const { numHeads, numKvHeads, headDim } = config;
  const prefix = `model.layers.${layer}`;
  const linear = (name: LlamaLinear, input: Value) => ctx.linear(layer, name, input);

  // Attention. Heads: q [B, nH, T, D]; k, v [B, kvH, T, D].
  const h = rmsNorm(g, x, norms.inputNorm, config.rmsNormEps, `${prefix}.input_layernorm.weight`);
  const heads = (y: Value, n: number) =>
    op.transpose(g, op.reshape(g, y, [0, 0, n, headDim]), [0, 2, 1, 3]);
  const q = applyRope(g, heads(linear('q_proj', h), numHeads), ctx.cos, ctx.sin, headDim);
  const k = applyRope(g, heads(linear('k_proj', h), numKvHeads), ctx.cos, ctx.sin, headDim);
  const v = heads(linear('v_proj', h), numKvHeads);
  const { keys, values } = ctx.keysValues?.(layer, k, v) ?? { keys: k, values: v };
  const context = groupedAttention(g, config, q, keys, values, ctx.attnBias);
  const afterAttention = op.add(g, x, linear('o_proj', context), `${prefix}/attn_residual`);

  // SwiGLU MLP: down(silu(gate(h)) * up(h)).
  const h2 = rmsNorm(
    g,
    afterAttention,
    norms.postAttentionNorm,
    config.rmsNormEps,
    `${prefix}.post_attention_layernorm.weight`,
  );
  const gate = linear('gate_proj', h2);
  const up = linear('up_proj', h2);
  const act = op.mul(g, op.mul(g, gate, op.sigmoid(g, gate)), up);
  return op.add(g, afterAttention, linear('down_proj', act), `${prefix}/mlp_residual`);
}

/** The model's tensors as graph values, and how its linears are emitted (frozen, 4-bit, trained). */
export interface LlamaModelValues {
  /** [vocab, H] */
  readonly embedTokens: Value;
  /** [H] */
  readonly finalNorm: Value;
  readonly layers: readonly LlamaLayerNorms[];
  /** Linear `name` of `layer` on x [B, T, in] -> [B, T, out]. */
  readonly linear: (layer: number, name: LlamaLinear, x: Value) => Value;
  /** The output projection: h [B, T, H] -> logits [B, T, vocab]. */
  readonly lmHead: (h: Value) => Value;
}

/**
 * Embedding, every decoder layer and the final norm: input ids [B, T] -> normalized hidden
 * states [B, T, H], ready for {@link LlamaModelValues.lmHead}.
 */
export function emitDecoderStack(
  g: GraphBuilder,
  config: LlamaConfig,
  model: LlamaModelValues,
  inputIds: Value,
  tables: Omit<DecoderLayerContext, 'config' | 'linear'>,
): Value {
  const ctx: DecoderLayerContext = { ...tables, config, linear: model.linear };
  let x = op.gather(g, model.embedTokens, inputIds, 0, 'embed_tokens'); // [B, T, H]
  for (let l = 0; l < config.numLayers; l++) x = emitDecoderLayer(g, ctx, l, x, model.layers[l]);
  return rmsNorm(g, x, model.finalNorm, config.rmsNormEps, 'model.norm.weight');
}
