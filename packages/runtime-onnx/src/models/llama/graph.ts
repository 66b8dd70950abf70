import type { Tensor } from '@lora/core';
import { GraphBuilder } from '../../graph/builder.js';
import * as op from '../../graph/ops.js';
import type { Graph, Value } from '../../graph/types.js';
import { inOutLinear, type LinearHook, type LinearWeight } from '../linear.js';
import { LLAMA_LINEARS, type LlamaConfig, type LlamaLinear, llamaModuleName } from './config.js';
import { attentionBias, emitDecoderStack, ropeTables } from './decoder.js';
import { frozenLlamaValues } from './model-values.js';

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

/**
 * Lays every linear of `weights` out `[in, out]`, for a graph of standard ONNX operators only
 * (`MatMul` instead of onnxruntime's `FusedMatMul`; see {@link inOutLinear}). Works in place, one
 * tensor at a time: each `[out, in]` original is let go as soon as its transpose exists, so the
 * model is never held twice. `weights` must belong to the caller alone (fresh from
 * `prepareLlamaWeights`). A tied lm_head gets its own `[hidden, vocab]` copy (the embedding keeps
 * `[vocab, hidden]` for its Gather). 4-bit linears are refused (`LINEAR_NOT_STANDARD`).
 */
export function layLinearsInOut(weights: LlamaGraphWeights): void {
  weights.layers.forEach((layer, l) => {
    const linears = layer.linears as Record<LlamaLinear, LinearWeight>;
    for (const name of LLAMA_LINEARS) {
      linears[name] = inOutLinear(linears[name], llamaModuleName(l, name));
    }
  });
  const head = weights as { lmHead: LinearWeight };
  head.lmHead = inOutLinear(head.lmHead, 'lm_head');
}

export interface LlamaGraphOptions {
  /** Adds work beside chosen linears (LoRA branches); see {@link LinearHook}. */
  readonly linearHook?: LinearHook;
  /** `'all'` (default) returns logits for every position; `'last'` only for the last one (generation). */
  readonly logits?: 'all' | 'last';
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
  const { numKvHeads, headDim } = config;
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
  const { cos, sin } = ropeTables(g, config, positionIds);
  const attnBias = attentionBias(g, attentionMask, inputIds);
  // The KV cache: this call's keys/values follow the past ones; the result is the present.
  const keysValues = (l: number, k: Value, v: Value) => {
    const keys = op.concat(g, [pastKeys[l], k], 2); // [B, kvH, S, D]
    const values = op.concat(g, [pastValues[l], v], 2);
    const cacheShape = [batch, numKvHeads, total, headDim];
    g.output(keys, LLAMA_IO.presentKey(l), cacheShape);
    g.output(values, LLAMA_IO.presentValue(l), cacheShape);
    return { keys, values };
  };
  const model = frozenLlamaValues(g, weights, options.linearHook);
  let out = emitDecoderStack(g, config, model, inputIds, { cos, sin, attnBias, keysValues });
  if (options.logits === 'last') out = op.slice(g, out, 1, -1, Number.MAX_SAFE_INTEGER); // [B, 1, H]
  const logitsShape = [batch, options.logits === 'last' ? 1 : sequence, config.vocabSize];
  g.output(model.lmHead(out), LLAMA_IO.logits, logitsShape);
  return g.build();
}
