import { parseJsonText, type Tensor, type TensorToWrite } from '@lora/core';
import type { TensorSource } from './bnb4-state-dict.js';
import { type Bnb4Weight, expandedAbsmax, numelOf, type WeightDType } from './bnb4-weight.js';
import { QuantError } from './errors.js';
import { assertNBitsLayout, blocksPerRow, type MatMulNBitsWeight } from './nbits.js';

/**
 * The initializers of onnxruntime's `com.microsoft.MatMulBnb4` for a bitsandbytes weight `[N, K]`:
 * B = the packed codes of the flattened weight (bitsandbytes packing, high nibble first),
 * absmax float32 `[ceil(N*K / blockSize)]` (the op has no double quantization: expanded here).
 * Attributes: K, N, block_size, quant_type (0 FP4, 1 NF4); transB stays 1.
 */
export interface MatMulBnb4Initializers {
  readonly B: Uint8Array;
  readonly absmax: Float32Array;
  readonly N: number;
  readonly K: number;
  readonly blockSize: number;
  readonly quantType: 0 | 1;
}

/** Converts a 2-D bitsandbytes weight to `MatMulBnb4` initializers (no bytes change). */
export function toMatMulBnb4(w: Bnb4Weight): MatMulBnb4Initializers {
  if (w.shape.length !== 2) {
    throw new QuantError(
      'QUANT_SHAPE',
      `MatMulBnb4 needs a 2-D weight [N, K], got shape [${w.shape.join(', ')}].`,
      { shape: w.shape },
    );
  }
  const [N, K] = w.shape;
  return {
    B: w.packed,
    absmax: expandedAbsmax(w),
    N,
    K,
    blockSize: w.blockSize,
    quantType: w.format === 'nf4' ? 1 : 0,
  };
}

/** The attributes a `MatMulNBits` node needs for a weight. */
export function matMulNBitsAttributes(w: MatMulNBitsWeight): {
  K: number;
  N: number;
  bits: 4;
  block_size: number;
} {
  return { K: w.K, N: w.N, bits: 4, block_size: w.blockSize };
}

/**
 * The onnxruntime layout on disk (this project's own convention; onnxruntime has no
 * safetensors layout): each weight `<name>` keeps its key and holds the op's B initializer, with
 * siblings for the other inputs and a JSON state:
 *
 * | key | MatMulNBits (int4, uint4) | MatMulBnb4 (nf4, fp4) |
 * |---|---|---|
 * | `<name>` | uint8 `[N, blocksPerRow, blockSize/2]` | uint8 `[ceil(N*K/2)]` |
 * | `<name>.scales` / `<name>.absmax` | float32 `[N * blocksPerRow]` | float32 `[ceil(N*K/blockSize)]` |
 * | `<name>.zero_points` | uint8 `[N * ceil(blocksPerRow/2)]` (uint4 only) | - |
 * | `<name>.quant_state.lora_ort` | uint8 UTF-8 JSON `{op, format, K, N, bits, block_size, dtype, shape}` | same, plus `quant_type` |
 */
export const ORT_QUANT_STATE_SUFFIX = '.quant_state.lora_ort';

export interface OrtQuantState {
  op: 'MatMulNBits' | 'MatMulBnb4';
  format: 'nf4' | 'fp4' | 'int4' | 'uint4';
  K: number;
  N: number;
  bits: 4;
  block_size: number;
  /** Original dtype: float32, float16 or bfloat16. */
  dtype: string;
  /** Original shape ([N, K] for 2-D weights; a 1-D tensor is stored as N = 1). */
  shape: number[];
  quant_type?: 0 | 1;
}

const TORCH: Record<WeightDType, string> = { f32: 'float32', f16: 'float16', bf16: 'bfloat16' };
const FROM_TORCH: Record<string, WeightDType> = {
  float32: 'f32',
  float16: 'f16',
  bfloat16: 'bf16',
};

/** Tensors of a `MatMulNBits` weight in the onnxruntime layout. */
export function matMulNBitsEntries(
  name: string,
  w: MatMulNBitsWeight,
  shape: readonly number[],
  dtype: WeightDType,
): TensorToWrite[] {
  assertNBitsLayout(w);
  const nb = blocksPerRow(w.K, w.blockSize);
  const state: OrtQuantState = {
    op: 'MatMulNBits',
    format: w.format,
    K: w.K,
    N: w.N,
    bits: 4,
    block_size: w.blockSize,
    dtype: TORCH[dtype],
    shape: [...shape],
  };
  const entries: TensorToWrite[] = [
    { name, dtype: 'u8', shape: [w.N, nb, w.blockSize / 2], data: w.B },
    { name: `${name}.scales`, dtype: 'f32', shape: [w.N * nb], data: w.scales },
  ];
  if (w.zeroPoints)
    entries.push({
      name: `${name}.zero_points`,
      dtype: 'u8',
      shape: [w.zeroPoints.length],
      data: w.zeroPoints,
    });
  entries.push(stateEntry(name, state));
  return entries;
}

/** Tensors of a bitsandbytes weight in the onnxruntime `MatMulBnb4` layout (absmax expanded). */
export function matMulBnb4Entries(name: string, w: Bnb4Weight): TensorToWrite[] {
  const shape2d = w.shape.length === 2 ? w.shape : [1, numelOf(w.shape)];
  const init = toMatMulBnb4({ ...w, shape: shape2d });
  const state: OrtQuantState = {
    op: 'MatMulBnb4',
    format: w.format,
    K: init.K,
    N: init.N,
    bits: 4,
    block_size: init.blockSize,
    dtype: TORCH[w.dtype],
    shape: [...w.shape],
    quant_type: init.quantType,
  };
  return [
    { name, dtype: 'u8', shape: [init.B.length], data: init.B },
    { name: `${name}.absmax`, dtype: 'f32', shape: [init.absmax.length], data: init.absmax },
    stateEntry(name, state),
  ];
}

function stateEntry(name: string, state: OrtQuantState): TensorToWrite {
  const json = new TextEncoder().encode(JSON.stringify(state));
  return {
    name: `${name}${ORT_QUANT_STATE_SUFFIX}`,
    dtype: 'u8',
    shape: [json.length],
    data: json,
  };
}

/** Names of the onnxruntime-layout weights among `names`. */
export function findOrtWeights(names: Iterable<string>): string[] {
  const out: string[] = [];
  for (const n of names)
    if (n.endsWith(ORT_QUANT_STATE_SUFFIX)) out.push(n.slice(0, -ORT_QUANT_STATE_SUFFIX.length));
  return out;
}

/** A weight read back from the onnxruntime layout. */
export type OrtWeight =
  | {
      readonly op: 'MatMulNBits';
      readonly weight: MatMulNBitsWeight;
      readonly shape: number[];
      readonly dtype: WeightDType;
    }
  | {
      readonly op: 'MatMulBnb4';
      readonly weight: Bnb4Weight;
      readonly shape: number[];
      readonly dtype: WeightDType;
    };

/** Reads one weight stored in the onnxruntime layout. */
export async function readOrtWeight(source: TensorSource, name: string): Promise<OrtWeight> {
  const fail = (what: string): never => {
    throw new QuantError('QUANT_STATE_INVALID', `${name}: ${what}`, { tensor: name });
  };
  if (!source.has(`${name}${ORT_QUANT_STATE_SUFFIX}`)) fail('no quant_state.lora_ort tensor.');
  const raw = (await source.read(`${name}${ORT_QUANT_STATE_SUFFIX}`)) as Tensor;
  let state: OrtQuantState;
  try {
    state = parseJsonText(
      new TextDecoder().decode(raw.data as Uint8Array),
      'quant_state',
    ) as OrtQuantState;
  } catch (e) {
    return fail(`quant_state is not usable UTF-8 JSON (${(e as Error).message}).`);
  }
  const dtype = FROM_TORCH[state.dtype] ?? fail(`unknown dtype ${state.dtype}.`);
  const B = await source.read(name);
  if (state.op === 'MatMulNBits') {
    if (state.format !== 'int4' && state.format !== 'uint4')
      return fail(`MatMulNBits with format ${state.format}.`);
    const scales = await source.read(`${name}.scales`);
    const zp = state.format === 'uint4' ? await source.read(`${name}.zero_points`) : undefined;
    const weight: MatMulNBitsWeight = {
      format: state.format,
      N: state.N,
      K: state.K,
      blockSize: state.block_size,
      B: B.data as Uint8Array,
      scales: scales.data as Float32Array,
      ...(zp ? { zeroPoints: zp.data as Uint8Array } : {}),
    };
    assertNBitsLayout(weight);
    return { op: 'MatMulNBits', weight, shape: state.shape, dtype };
  }
  if (state.op === 'MatMulBnb4') {
    if (state.format !== 'nf4' && state.format !== 'fp4')
      return fail(`MatMulBnb4 with format ${state.format}.`);
    const absmax = await source.read(`${name}.absmax`);
    const n = state.N * state.K;
    if (
      (B.data as Uint8Array).length !== Math.ceil(n / 2) ||
      absmax.data.length !== Math.ceil(n / state.block_size)
    ) {
      fail(`sizes do not match N=${state.N}, K=${state.K}, block_size=${state.block_size}.`);
    }
    const weight: Bnb4Weight = {
      format: state.format,
      shape: state.shape,
      dtype,
      blockSize: state.block_size,
      packed: B.data as Uint8Array,
      absmax: absmax.data as Float32Array,
    };
    return { op: 'MatMulBnb4', weight, shape: state.shape, dtype };
  }
  return fail(`unknown op ${String((state as { op: unknown }).op)}.`);
}
