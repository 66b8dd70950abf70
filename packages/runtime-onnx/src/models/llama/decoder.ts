import type { GraphBuilder } from '../../graph/builder.js';
import { causalAttention, rmsNorm, rope, swiglu } from '../../graph/composites/index.js';
import * as op from '../../graph/ops.js';
import type { Value } from '../../graph/types.js';
import { tensor } from '@lora/core';
import { type LlamaConfig, type LlamaLinear, ropeInverseFrequencies } from './config.js';

/**
 * The LLaMA decoder layer, once, for every graph built from it: the inference graph (KV cache,
 * logits) and the training graphs (static shapes, loss, gradients). Its blocks are the graph
 * composites (RMSNorm, RoPE, causal GQA attention, SwiGLU), each with one backward rule. What
 * differs between the graphs is passed in: how a linear is emitted (dense, 4-bit, with a LoRA branch, weights as initializers or
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
  const freqs = (name: string, sequenceLength = 1) =>
    g.initializer(
      name,
      tensor(
        'f32',
        [headDim / 2],
        Float32Array.from(ropeInverseFrequencies(config, sequenceLength)),
      ),
    );
  const positions = op.cast(g, positionIds, 'f32');
  let invFreq = freqs('rope.inv_freq');
  const scaling = config.rope.scaling;
  const maxPosition = () => op.reduceMax(g, positions, [0, 1], false);
  if (scaling?.type === 'longrope') {
    // As transformers: long factors when this call's largest position id + 1 exceeds the original context.
    const original = scaling.originalMaxPositionEmbeddings;
    const fits = op.lessOrEqual(g, maxPosition(), g.scalar(original - 1));
    invFreq = op.where(g, fits, invFreq, freqs('rope.inv_freq_long', original + 1));
  }
  if (scaling?.type === 'dynamic') {
    // As transformers: base theta · max(1, factor · L / max - (factor - 1))^(d / (d - 2)) for this
    // call's L = largest position id + 1; inv_freq_i = base^(-2i/d) = exp(-(2i/d) · ln base).
    const { factor, maxPositionEmbeddings: max } = scaling;
    const L = op.add(g, maxPosition(), g.scalar(1));
    const ratio = op.sub(g, op.mul(g, L, g.scalar(factor / max)), g.scalar(factor - 1));
    const grown = op.where(g, op.lessOrEqual(g, ratio, g.scalar(1)), g.scalar(1), ratio);
    const lnBase = op.add(
      g,
      g.scalar(Math.log(config.rope.theta)),
      op.mul(g, op.log(g, grown), g.scalar(headDim / (headDim - 2))),
    );
    const exponents = Float32Array.from({ length: headDim / 2 }, (_, i) => (-2 * i) / headDim);
    invFreq = op.exp(
      g,
      op.mul(g, g.initializer('rope.exponents', tensor('f32', [headDim / 2], exponents)), lnBase),
    );
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
  const q = rope(g, heads(linear('q_proj', h), numHeads), ctx.cos, ctx.sin, headDim);
  const k = rope(g, heads(linear('k_proj', h), numKvHeads), ctx.cos, ctx.sin, headDim);
  const v = heads(linear('v_proj', h), numKvHeads);
  const { keys, values } = ctx.keysValues?.(layer, k, v) ?? { keys: k, values: v };
  const context = causalAttention(g, config, q, keys, values, ctx.attnBias); // [B, T, nH*D]
  const afterAttention = op.add(g, x, linear('o_proj', context), `${prefix}/attn_residual`);

  // SwiGLU MLP: down(silu(gate(h)) * up(h)).
  const h2 = rmsNorm(
    g,
    afterAttention,
    norms.postAttentionNorm,
    config.rmsNormEps,
    `${prefix}.post_attention_layernorm.weight`,
  );
  const act = swiglu(g, linear('gate_proj', h2), linear('up_proj', h2));
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
