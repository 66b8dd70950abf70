import { type Tensor, tensor } from '@lora/core';
import type { GraphBuilder } from '../graph/builder.js';
import * as op from '../graph/ops.js';
import type { Value } from '../graph/types.js';

/**
 * A linear layer's weight, ready for the graph: dense float32 in torch layout `[out, in]` (the
 * checkpoint's own layout, so loading never transposes; multiplied by `FusedMatMul(transB = 1)`),
 * or 4-bit for onnxruntime's `MatMulNBits` (int4/uint4) or `MatMulBnb4` (nf4/fp4).
 * `inFeatures`/`outFeatures` are torch's `[out, in]` sizes.
 */
export type LinearWeight =
  | {
      readonly kind: 'dense';
      readonly inFeatures: number;
      readonly outFeatures: number;
      /** [out, in] */
      readonly weight: Tensor<'f32'>;
    }
  | {
      readonly kind: 'nbits';
      readonly inFeatures: number;
      readonly outFeatures: number;
      readonly blockSize: number;
      /** [N, ceil(K / blockSize), blockSize / 2], element k in the low nibble when k is even. */
      readonly packed: Tensor<'u8'>;
      /** [N * ceil(K / blockSize)] */
      readonly scales: Tensor<'f32'>;
      /** Packed 4-bit zero points [N * ceil(nBlocks / 2)]; absent means 8 (symmetric int4). */
      readonly zeroPoints?: Tensor<'u8'>;
      /** MatMulNBits `accuracy_level`: unset/0/1 float32 compute; 4 quantizes activations to int8 (faster on CPU, less exact). */
      readonly accuracyLevel?: 0 | 1 | 4;
    }
  | {
      readonly kind: 'bnb4';
      readonly inFeatures: number;
      readonly outFeatures: number;
      readonly blockSize: number;
      readonly quantType: 'nf4' | 'fp4';
      /** [(N * K + 1) / 2], the flattened [N, K] weight, high nibble first (bitsandbytes). */
      readonly packed: Tensor<'u8'>;
      /** [ceil(N * K / blockSize)], already expanded from double quantization. */
      readonly absmax: Tensor<'f32'>;
    };

/**
 * A linear whose weight is a graph value in torch layout `[out, in]` (for example a graph input
 * when the weight itself is trained): y = x W^T through `FusedMatMul(transB = 1)`, one copy of W.
 */
export interface ValueLinear {
  readonly kind: 'value';
  readonly inFeatures: number;
  readonly outFeatures: number;
  /** [out, in] */
  readonly weight: Value;
}

/** Where a linear sits in the graph, as a {@link LinearHook} sees it. */
export interface LinearSite {
  /** HF module name, e.g. `model.layers.0.self_attn.q_proj`. */
  readonly module: string;
  /** Decoder layer index. */
  readonly layer: number;
  /** The layer's input, x: [batch, sequence, inFeatures]; the same Value for q/k/v and for gate/up. */
  readonly x: Value;
  /** The base layer's output (bias included), y: [batch, sequence, outFeatures]. */
  readonly y: Value;
  readonly inFeatures: number;
  readonly outFeatures: number;
}

/**
 * Called once for every linear layer of the decoder layers (q, k, v, o, gate, up, down; not
 * lm_head), in that order, right after the base product. Return the value used downstream (for
 * example `y + scale * (x A) B` with A and B as new graph inputs), or `undefined` to keep `y`.
 * This is how LoRA branches enter any model without model code knowing about them.
 */
export type LinearHook = (g: GraphBuilder, site: LinearSite) => Value | undefined;

/** A linear's weight tensors as graph values (initializers), with the layout facts of its kind. */
export type LinearValues =
  | { readonly kind: 'dense'; readonly weight: Value }
  | {
      readonly kind: 'nbits';
      readonly blockSize: number;
      readonly accuracyLevel?: 0 | 1 | 4;
      readonly packed: Value;
      readonly scales: Value;
      readonly zeroPoints?: Value;
    }
  | {
      readonly kind: 'bnb4';
      readonly blockSize: number;
      readonly quantType: 'nf4' | 'fp4';
      readonly packed: Value;
      readonly absmax: Value;
    };

/** Initializers already made for a weight, per builder: the forward op and an in-graph dequantize share them. */
const madeInitializers = new WeakMap<GraphBuilder, Map<LinearWeight, LinearValues>>();

/**
 * The initializers of a linear's weight, created on first use in `g` and returned again on later
 * calls with the same weight (so a backward pass reads the very bytes the forward op reads).
 * Names: `<module>.weight` (dense, [out, in]), `.weight_q4`/`.weight_scales`/`.weight_zero_points`
 * (MatMulNBits), `.weight_bnb4`/`.weight_absmax` (MatMulBnb4).
 */
export function linearInitializers(
  g: GraphBuilder,
  moduleName: string,
  weight: LinearWeight,
): LinearValues {
  let made = madeInitializers.get(g);
  if (!made) {
    made = new Map();
    madeInitializers.set(g, made);
  }
  const known = made.get(weight);
  if (known) return known;
  let values: LinearValues;
  switch (weight.kind) {
    case 'dense':
      values = { kind: 'dense', weight: g.initializer(`${moduleName}.weight`, weight.weight) };
      break;
    case 'nbits':
      values = {
        kind: 'nbits',
        blockSize: weight.blockSize,
        accuracyLevel: weight.accuracyLevel,
        packed: g.initializer(`${moduleName}.weight_q4`, weight.packed),
        scales: g.initializer(`${moduleName}.weight_scales`, weight.scales),
        zeroPoints: weight.zeroPoints
          ? g.initializer(`${moduleName}.weight_zero_points`, weight.zeroPoints)
          : undefined,
      };
      break;
    case 'bnb4':
      values = {
        kind: 'bnb4',
        blockSize: weight.blockSize,
        quantType: weight.quantType,
        packed: g.initializer(`${moduleName}.weight_bnb4`, weight.packed),
        absmax: g.initializer(`${moduleName}.weight_absmax`, weight.absmax),
      };
      break;
  }
  made.set(weight, values);
  return values;
}

/**
 * The single place every model emits a linear layer: y = x W^T (+ bias), through
 * `FusedMatMul(transB = 1)` for a float weight (an initializer or a value, in torch layout),
 * MatMulNBits or MatMulBnb4 for a 4-bit one, then the hook (given for decoder layers).
 * x: [..., in] -> y: [..., out].
 */
export function emitLinear(
  g: GraphBuilder,
  moduleName: string,
  x: Value,
  weight: LinearWeight | ValueLinear,
  bias?: Tensor<'f32'> | Value,
  hook?: { readonly fn: LinearHook; readonly layer: number },
): Value {
  const N = weight.outFeatures;
  const K = weight.inFeatures;
  const w = weight.kind === 'value' ? weight : linearInitializers(g, moduleName, weight);
  let y: Value;
  switch (w.kind) {
    case 'value':
    case 'dense':
      y = op.fusedMatMul(g, x, w.weight, { transB: true }, `${moduleName}/FusedMatMul`);
      break;
    case 'nbits': {
      [y] = g.node(
        'MatMulNBits',
        [x, w.packed, w.scales, w.zeroPoints],
        {
          K: { int: K },
          N: { int: N },
          bits: { int: 4 },
          block_size: { int: w.blockSize },
          ...(w.accuracyLevel ? { accuracy_level: { int: w.accuracyLevel } } : {}),
        },
        `${moduleName}/MatMulNBits`,
      );
      break;
    }
    case 'bnb4':
      [y] = g.node(
        'MatMulBnb4',
        [x, w.packed, w.absmax],
        {
          K: { int: K },
          N: { int: N },
          block_size: { int: w.blockSize },
          quant_type: { int: w.quantType === 'nf4' ? 1 : 0 },
        },
        `${moduleName}/MatMulBnb4`,
      );
      break;
  }
  if (bias) {
    const b = 'data' in bias ? g.initializer(`${moduleName}.bias`, bias) : bias;
    y = op.add(g, y, b, `${moduleName}/Add`);
  }
  return (
    hook?.fn(g, { module: moduleName, layer: hook.layer, x, y, inFeatures: K, outFeatures: N }) ?? y
  );
}

/** A dense linear from a torch-layout [out, in] float32 weight (kept as is, not copied). */
export function denseLinear(
  weight: Float32Array,
  outFeatures: number,
  inFeatures: number,
): LinearWeight {
  return {
    kind: 'dense',
    inFeatures,
    outFeatures,
    weight: tensor('f32', [outFeatures, inFeatures], weight),
  };
}
