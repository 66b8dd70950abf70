import { type Tensor, tensor, transpose } from '@lora/core';
import { RuntimeError } from '../errors.js';
import type { GraphBuilder } from '../graph/builder.js';
import * as op from '../graph/ops.js';
import type { Value } from '../graph/types.js';

/**
 * How a dense weight is laid out, which decides the operator that multiplies it:
 * `'out-in'` is torch's `[out, in]` (the checkpoint's own layout, so loading never transposes),
 * multiplied by onnxruntime's `com.microsoft` `FusedMatMul(transB = 1)`; `'in-out'` is `[in, out]`,
 * multiplied by the standard ONNX `MatMul` (for exports that run on any ONNX runtime).
 */
export type DenseLayout = 'out-in' | 'in-out';

/**
 * A linear layer's weight, ready for the graph: dense float32 (see {@link DenseLayout}; torch
 * layout `[out, in]` unless `layout` says otherwise), or 4-bit for onnxruntime's `MatMulNBits`
 * (int4/uint4) or `MatMulBnb4` (nf4/fp4). `inFeatures`/`outFeatures` are torch's `[out, in]` sizes.
 */
export type LinearWeight =
  | {
      readonly kind: 'dense';
      readonly inFeatures: number;
      readonly outFeatures: number;
      /** Default `'out-in'`. */
      readonly layout?: DenseLayout;
      /** [out, in], or [in, out] with `layout: 'in-out'` */
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
  | { readonly kind: 'dense'; readonly layout: DenseLayout; readonly weight: Value }
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
 * Names: `<module>.weight` (dense, in its {@link DenseLayout}), `.weight_q4`/`.weight_scales`/`.weight_zero_points`
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
      values = {
        kind: 'dense',
        layout: weight.layout ?? 'out-in',
        weight: g.initializer(`${moduleName}.weight`, weight.weight),
      };
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
 * `FusedMatMul(transB = 1)` for a float weight in torch layout (an initializer or a value), the
 * standard `MatMul` for a dense weight laid out `[in, out]`, MatMulNBits or MatMulBnb4 for a 4-bit
 * one, then the hook (given for decoder layers).
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
      y = op.fusedMatMul(g, x, w.weight, { transB: true }, `${moduleName}/FusedMatMul`);
      break;
    case 'dense':
      y =
        w.layout === 'in-out'
          ? op.matmul(g, x, w.weight, `${moduleName}/MatMul`)
          : op.fusedMatMul(g, x, w.weight, { transB: true }, `${moduleName}/FusedMatMul`);
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

/**
 * The same dense linear laid out `[in, out]` for the standard ONNX `MatMul` (a new tensor; the
 * given one is not modified). Already `[in, out]`: returned as is. 4-bit weights have no standard
 * ONNX form (NF4/FP4 have no ONNX type, and MatMulNBits/MatMulBnb4 are onnxruntime operators):
 * refused with `LINEAR_NOT_STANDARD`, naming `moduleName`.
 */
export function inOutLinear(weight: LinearWeight, moduleName: string): LinearWeight {
  if (weight.kind !== 'dense') {
    throw new RuntimeError(
      'LINEAR_NOT_STANDARD',
      `${moduleName} is a 4-bit linear (${weight.kind === 'bnb4' ? 'MatMulBnb4' : 'MatMulNBits'}), which only onnxruntime runs: standard ONNX has no such operator. Keep onnxruntime's operators for 4-bit models, or use the float model.`,
      { module: moduleName },
    );
  }
  if (weight.layout === 'in-out') return weight;
  return { ...weight, layout: 'in-out', weight: transpose(weight.weight) };
}
