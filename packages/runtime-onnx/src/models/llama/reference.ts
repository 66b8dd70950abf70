import { type Tensor, toFloat64Array } from '@lora/core';
import { RuntimeError } from '../../errors.js';
import {
  type LLAMA_LINEARS,
  type LlamaConfig,
  llamaLinearHasBias,
  llamaModuleName,
  ropeInverseFrequencies,
} from './config.js';

export interface ReferenceForwardOptions {
  /** Position of each token (default 0, 1, 2, ...). */
  readonly positions?: readonly number[];
  /**
   * Called after every decoder linear with its input x [T, in] and base output y [T, out]
   * (float64, row-major); may add to `y` in place (a LoRA branch, for example).
   */
  readonly linearHook?: (module: string, x: Float64Array, y: Float64Array, T: number) => void;
}

/**
 * The LLaMA forward pass in plain float64 TypeScript, written separately from the graph so tests
 * can compare against it: one sequence, no padding, causal attention. Returns logits
 * [T, vocab] row-major. Slow (plain loops): for test-sized models and a few tokens of real ones.
 *
 * `weights` maps HF tensor names to float tensors (any float dtype).
 */
export function referenceForward(
  config: LlamaConfig,
  weights: ReadonlyMap<string, Tensor>,
  tokens: readonly number[],
  options: ReferenceForwardOptions = {},
): Float64Array {
  const { hiddenSize: H, numHeads, numKvHeads, headDim: D, vocabSize: V } = config;
  const T = tokens.length;
  const cache = new Map<string, Float64Array>();
  const w = (name: string): Float64Array => {
    let v = cache.get(name);
    if (!v) {
      const t = weights.get(name);
      if (!t)
        throw new RuntimeError('WEIGHT_MISSING', `referenceForward: no tensor "${name}".`, {
          tensor: name,
        });
      v = toFloat64Array(t);
      cache.set(name, v);
    }
    return v;
  };
  // y [T, out] = x [T, in] W^T + b, W [out, in]
  const linear = (
    x: Float64Array,
    W: Float64Array,
    outF: number,
    inF: number,
    b?: Float64Array,
  ) => {
    const y = new Float64Array(T * outF);
    for (let t = 0; t < T; t++) {
      for (let o = 0; o < outF; o++) {
        let acc = b ? b[o] : 0;
        for (let i = 0; i < inF; i++) acc += x[t * inF + i] * W[o * inF + i];
        y[t * outF + o] = acc;
      }
    }
    return y;
  };
  const rmsNorm = (x: Float64Array, g: Float64Array) => {
    const y = new Float64Array(x.length);
    for (let t = 0; t < T; t++) {
      let ss = 0;
      for (let i = 0; i < H; i++) ss += x[t * H + i] ** 2;
      const inv = 1 / Math.sqrt(ss / H + config.rmsNormEps);
      for (let i = 0; i < H; i++) y[t * H + i] = x[t * H + i] * inv * g[i];
    }
    return y;
  };
  const positions = options.positions ?? tokens.map((_, i) => i);
  const invFreq = ropeInverseFrequencies(config, Math.max(...positions) + 1);
  const mscale = config.rope.attentionScaling;
  const half = D / 2;
  // In place on a [T, heads * D] projection: out_i = x_i cos - x_{i+half} sin, out_{i+half} = x_{i+half} cos + x_i sin.
  const rope = (x: Float64Array, heads: number) => {
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < heads; h++) {
        const base = t * heads * D + h * D;
        for (let i = 0; i < half; i++) {
          const angle = positions[t] * invFreq[i];
          const c = Math.cos(angle) * mscale;
          const s = Math.sin(angle) * mscale;
          const a = x[base + i];
          const b = x[base + i + half];
          x[base + i] = a * c - b * s;
          x[base + i + half] = b * c + a * s;
        }
      }
    }
  };

  const embed = w('model.embed_tokens.weight');
  let x = new Float64Array(T * H);
  tokens.forEach((id, t) => {
    if (!Number.isInteger(id) || id < 0 || id >= V) {
      throw new RuntimeError(
        'TOKEN_RANGE',
        `referenceForward: token id ${id} is outside the vocabulary (0..${V - 1}).`,
      );
    }
    x.set(embed.subarray(id * H, (id + 1) * H), t * H);
  });
  const groupSize = numHeads / numKvHeads;
  for (let l = 0; l < config.numLayers; l++) {
    const proj = (
      name: (typeof LLAMA_LINEARS)[number],
      input: Float64Array,
      outF: number,
      inF: number,
    ) => {
      const module = llamaModuleName(l, name);
      const bias = llamaLinearHasBias(config, name) ? w(`${module}.bias`) : undefined;
      const y = linear(input, w(`${module}.weight`), outF, inF, bias);
      options.linearHook?.(module, input, y, T);
      return y;
    };
    const h = rmsNorm(x, w(`model.layers.${l}.input_layernorm.weight`));
    const q = proj('q_proj', h, numHeads * D, H);
    const k = proj('k_proj', h, numKvHeads * D, H);
    const v = proj('v_proj', h, numKvHeads * D, H);
    rope(q, numHeads);
    rope(k, numKvHeads);
    const attn = new Float64Array(T * numHeads * D);
    const scores = new Float64Array(T);
    for (let head = 0; head < numHeads; head++) {
      const kvHead = Math.floor(head / groupSize);
      for (let t = 0; t < T; t++) {
        let max = -Infinity;
        for (let s = 0; s <= t; s++) {
          let dot = 0;
          for (let d = 0; d < D; d++)
            dot += q[t * numHeads * D + head * D + d] * k[s * numKvHeads * D + kvHead * D + d];
          scores[s] = dot / Math.sqrt(D);
          max = Math.max(max, scores[s]);
        }
        let sum = 0;
        for (let s = 0; s <= t; s++) {
          scores[s] = Math.exp(scores[s] - max);
          sum += scores[s];
        }
        for (let s = 0; s <= t; s++) {
          const p = scores[s] / sum;
          for (let d = 0; d < D; d++)
            attn[t * numHeads * D + head * D + d] += p * v[s * numKvHeads * D + kvHead * D + d];
        }
      }
    }
    const o = proj('o_proj', attn, H, numHeads * D);
    for (let i = 0; i < x.length; i++) x[i] += o[i];
    const h2 = rmsNorm(x, w(`model.layers.${l}.post_attention_layernorm.weight`));
    const I = config.intermediateSize;
    const gate = proj('gate_proj', h2, I, H);
    const up = proj('up_proj', h2, I, H);
    const act = new Float64Array(T * I);
    for (let i = 0; i < act.length; i++) act[i] = (gate[i] / (1 + Math.exp(-gate[i]))) * up[i];
    const down = proj('down_proj', act, H, I);
    const next = new Float64Array(x.length);
    for (let i = 0; i < x.length; i++) next[i] = x[i] + down[i];
    x = next;
  }
  const normed = rmsNorm(x, w('model.norm.weight'));
  const head = config.tieWordEmbeddings ? embed : w('lm_head.weight');
  return linear(normed, head, V, H);
}
