import type { GraphBuilder } from '../../graph/builder.js';
import * as op from '../../graph/ops.js';
import type { Value } from '../../graph/types.js';
import { emitLinear, type LinearHook } from '../linear.js';
import {
  LLAMA_LINEARS,
  type LlamaConfig,
  type LlamaLinear,
  llamaLinearHasBias,
  llamaLinearShape,
  llamaModuleName,
} from './config.js';
import type { LlamaModelValues } from './decoder.js';
import type { LlamaGraphWeights } from './graph.js';

/**
 * Where the decoder's tensors come from in a graph: frozen (initializers, for inference and for
 * LoRA / QLoRA training) or trainable (graph inputs in HF names and layouts, for full fine-tuning).
 */

/**
 * Every weight an initializer: linears dense or 4-bit through {@link emitLinear}, with `hook`
 * called beside each decoder linear (LoRA branches).
 */
export function frozenLlamaValues(
  g: GraphBuilder,
  weights: LlamaGraphWeights,
  hook?: LinearHook,
): LlamaModelValues {
  return {
    embedTokens: g.initializer('model.embed_tokens.weight', weights.embedTokens),
    finalNorm: g.initializer('model.norm.weight', weights.finalNorm),
    layers: weights.layers.map((w, l) => ({
      inputNorm: g.initializer(`model.layers.${l}.input_layernorm.weight`, w.inputNorm),
      postAttentionNorm: g.initializer(
        `model.layers.${l}.post_attention_layernorm.weight`,
        w.postAttentionNorm,
      ),
    })),
    linear: (layer, name, x) => {
      const w = weights.layers[layer];
      return emitLinear(
        g,
        llamaModuleName(layer, name),
        x,
        w.linears[name],
        w.biases[name],
        hook && { fn: hook, layer },
      );
    },
    lmHead: (h) => emitLinear(g, 'lm_head', h, weights.lmHead),
  };
}

/**
 * Every weight a float32 graph INPUT named and shaped as in the HF checkpoint (linears `[out, in]`),
 * so a step's feeds are the current weights and the gradients come out in the same layout. Tied
 * embeddings: `model.embed_tokens.weight` serves as the output projection too, and its gradient
 * sums both uses. `inputs` lists the created inputs in {@link llamaWeightSpec} order.
 */
export function trainableLlamaValues(
  g: GraphBuilder,
  config: LlamaConfig,
): { values: LlamaModelValues; inputs: Value[] } {
  const inputs: Value[] = [];
  const input = (name: string, shape: number[]) => {
    const v = g.input(name, 'f32', shape);
    inputs.push(v);
    return v;
  };
  const H = config.hiddenSize;
  const embedTokens = input('model.embed_tokens.weight', [config.vocabSize, H]);
  const layers = [];
  const linears: Record<LlamaLinear, { weight: Value; bias?: Value }>[] = [];
  for (let l = 0; l < config.numLayers; l++) {
    layers.push({
      inputNorm: input(`model.layers.${l}.input_layernorm.weight`, [H]),
      postAttentionNorm: input(`model.layers.${l}.post_attention_layernorm.weight`, [H]),
    });
    const byName = {} as Record<LlamaLinear, { weight: Value; bias?: Value }>;
    for (const name of LLAMA_LINEARS) {
      const module = llamaModuleName(l, name);
      const [out, inF] = llamaLinearShape(config, name);
      byName[name] = {
        weight: input(`${module}.weight`, [out, inF]),
        bias: llamaLinearHasBias(config, name) ? input(`${module}.bias`, [out]) : undefined,
      };
    }
    linears.push(byName);
  }
  const finalNorm = input('model.norm.weight', [H]);
  const lmHeadWeight = config.tieWordEmbeddings
    ? embedTokens
    : input('lm_head.weight', [config.vocabSize, H]);
  const values: LlamaModelValues = {
    embedTokens,
    finalNorm,
    layers,
    linear: (layer, name, x) => {
      const [outFeatures, inFeatures] = llamaLinearShape(config, name);
      const { weight, bias } = linears[layer][name];
      return emitLinear(
        g,
        llamaModuleName(layer, name),
        x,
        { kind: 'value', inFeatures, outFeatures, weight },
        bias,
      );
    },
    lmHead: (h) => op.fusedMatMul(g, h, lmHeadWeight, { transB: true }, 'lm_head/FusedMatMul'),
  };
  return { values, inputs };
}
