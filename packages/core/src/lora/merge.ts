import { type FloatDType, isFloatDType, toFloat64Array } from '../convert.js';
import type { AnyTypedArray, DType, TypedArrayOf } from '../dtype.js';
import { CoreError } from '../errors.js';
import { bf16ToF32Array, f16ToF32Array } from '../float16.js';
import { type Tensor, numel, tensor } from '../tensor.js';
import { type LoraFactors, type PreparedDelta, deltaRowUnscaled, prepareDelta } from './delta.js';
import { roundF64Into } from './round-once.js';

/**
 * What is added to a weight: LoRA factors (dW = scaling * B @ A, transposed for fan_in_fan_out),
 * or an already computed delta tensor in the weight's stored layout (any float dtype).
 */
export type MergeTerm = LoraFactors | Tensor;

export interface MergeOptions {
  /** Name of the weight, for error messages (e.g. `model.layers.0.self_attn.q_proj.weight`). */
  name?: string;
  /** Accept NaN/Inf in the result (PEFT's `safe_merge=False`). Default false: refuse them. */
  allowNonFinite?: boolean;
}

/**
 * The sparse record that makes {@link unmergeWeight} give back the original bytes exactly.
 * `W - dW` after rounding is usually, not always, W; the positions where it is not are stored
 * with their original bit patterns.
 */
export interface UnmergeResidual {
  /** dtype of the original weight. */
  dtype: FloatDType;
  shape: number[];
  /** Flat (row-major) positions where plain unmerge would differ from the original, ascending. */
  indices: Uint32Array;
  /** Original bit patterns at those positions: u16 for f16/bf16, u32 for f32, u64 for f64. */
  bits: Uint16Array | Uint32Array | BigUint64Array;
  /** 32-bit FNV-1a over the original weight's bytes (16-bit words), checked after unmerge. */
  checksum: number;
}

/**
 * W' = W + sum of the terms, summed in float64 and rounded ONCE to W's dtype (so an f16/bf16
 * weight gains one rounding error, not one per adapter). W is 2-D and any float dtype; the
 * input is not modified. Throws `LORA_MERGE_NOT_FINITE` if a result is NaN/Inf (unless allowed).
 */
export function mergeWeight<D extends DType>(
  W: Tensor<D>,
  terms: readonly MergeTerm[],
  options: MergeOptions = {},
): Tensor<D> {
  return mergeRows(W, terms, options, false).merged;
}

/**
 * {@link mergeWeight} plus the {@link UnmergeResidual} that lets {@link unmergeWeight} restore
 * W bit for bit. The residual is found by running unmerge exactly as it will run later and
 * recording where it misses.
 */
export function mergeWeightExact<D extends DType>(
  W: Tensor<D>,
  terms: readonly MergeTerm[],
  options: MergeOptions = {},
): { merged: Tensor<D>; residual: UnmergeResidual } {
  const { merged, residual } = mergeRows(W, terms, options, true);
  return { merged, residual: residual! };
}

/**
 * W = W' - sum of the terms (float64, one rounding). With the residual from
 * {@link mergeWeightExact} the result is byte-identical to the original weight, and this is
 * verified (checksum): a different W' or different terms throw `LORA_UNMERGE_MISMATCH`.
 * Without a residual it is PEFT's plain unmerge: close to W, not exact.
 */
export function unmergeWeight<D extends DType>(
  merged: Tensor<D>,
  terms: readonly MergeTerm[],
  residual?: UnmergeResidual,
  options: MergeOptions = {},
): Tensor<D> {
  const where = options.name ?? 'weight';
  const { rows, cols, deltas } = prepareTerms(merged, terms, where);
  const dtype = merged.dtype as FloatDType; // checked by prepareTerms
  const out = tensor(merged.dtype, merged.shape) as Tensor<D>;
  const reader = rowReader(cols);
  const acc = new Float64Array(cols);
  const scratch = deltas.map(() => new Float64Array(cols));
  const termRowsOfP: Float64Array[] = new Array(deltas.length);
  const scales = new Float64Array(deltas.length);
  for (let p = 0; p < rows; p++) {
    termRows(deltas, p, cols, scratch, termRowsOfP, scales);
    reader(merged, p, acc);
    subtractRows(acc, termRowsOfP, scales);
    roundF64Into(acc, dtype, out.data as TypedArrayOf[FloatDType], p * cols);
  }
  if (!residual) return out;

  if (
    residual.dtype !== merged.dtype ||
    residual.shape.length !== merged.shape.length ||
    residual.shape.some((d, i) => d !== merged.shape[i])
  ) {
    throw new CoreError(
      'LORA_UNMERGE_MISMATCH',
      `${where}: the unmerge residual is for a ${residual.dtype} [${residual.shape.join(', ')}] weight, this one is ${merged.dtype} [${merged.shape.join(', ')}]. Use the residual saved with this merge.`,
      { where },
    );
  }
  const bits = bitView(out);
  const { indices } = residual;
  for (let i = 0; i < indices.length; i++) bits[indices[i]] = residual.bits[i];
  if (residualChecksum(out.data) !== residual.checksum) {
    throw new CoreError(
      'LORA_UNMERGE_MISMATCH',
      `${where}: after unmerge the weight does not match the original (checksum differs). The merged weight or the adapter is not the one that was merged; use the same adapter files and scalings, in the same order.`,
      { where },
    );
  }
  return out;
}

/** Bytes the residual takes when stored (indices + original bits). */
export function residualByteSize(r: UnmergeResidual): number {
  return r.indices.byteLength + r.bits.byteLength;
}

const DTYPE_CODES: Readonly<Record<FloatDType, number>> = { f64: 1, f32: 2, f16: 3, bf16: 4 };
const RESIDUAL_FORMAT = 1;

/** Tensor suffixes used when a residual is stored next to a weight in a safetensors file. */
export const RESIDUAL_SUFFIXES = {
  indices: 'unmerge_indices',
  bits: 'unmerge_bits',
  info: 'unmerge_info',
} as const;

/**
 * The residual as three tensors for a safetensors file: `indices` u32 [k], `bits`
 * u16/u32/u64 [k], and `info` u32 [format, dtypeCode, checksum, rank, ...shape].
 */
export function residualToTensors(r: UnmergeResidual): {
  indices: Tensor<'u32'>;
  bits: Tensor;
  info: Tensor<'u32'>;
} {
  const bitsDtype =
    r.bits instanceof BigUint64Array ? 'u64' : r.bits instanceof Uint32Array ? 'u32' : 'u16';
  const info = Uint32Array.from([
    RESIDUAL_FORMAT,
    DTYPE_CODES[r.dtype],
    r.checksum >>> 0,
    r.shape.length,
    ...r.shape,
  ]);
  return {
    indices: tensor('u32', [r.indices.length], r.indices),
    bits: tensor(bitsDtype, [r.bits.length], r.bits as TypedArrayOf[typeof bitsDtype]),
    info: tensor('u32', [info.length], info),
  };
}

/** Inverse of {@link residualToTensors}; validates what it reads (`where` names the file). */
export function residualFromTensors(
  t: { indices: Tensor; bits: Tensor; info: Tensor },
  where = 'unmerge residual',
): UnmergeResidual {
  const bad = (why: string) =>
    new CoreError(
      'LORA_RESIDUAL_INVALID',
      `${where}: ${why}. The residual file is damaged or not from @lora; merge again to recreate it.`,
      { where },
    );
  if (t.info.dtype !== 'u32' || t.indices.dtype !== 'u32')
    throw bad('info and indices must be u32 tensors');
  const info = t.info.data as Uint32Array;
  if (info.length < 4 || info[0] !== RESIDUAL_FORMAT)
    throw bad(`unknown residual format ${info[0]}`);
  const dtype = (Object.keys(DTYPE_CODES) as FloatDType[]).find((d) => DTYPE_CODES[d] === info[1]);
  if (!dtype) throw bad(`unknown dtype code ${info[1]}`);
  const rank = info[3];
  if (info.length !== 4 + rank) throw bad('the info tensor has the wrong length');
  const shape = Array.from(info.subarray(4));
  const expectedBits = dtype === 'f64' ? 'u64' : dtype === 'f32' ? 'u32' : 'u16';
  if (t.bits.dtype !== expectedBits)
    throw bad(`bits must be ${expectedBits} for a ${dtype} weight, got ${t.bits.dtype}`);
  const indices = t.indices.data as Uint32Array;
  if (t.bits.data.length !== indices.length) throw bad('indices and bits have different lengths');
  const n = numel(shape);
  for (let i = 0; i < indices.length; i++) {
    if (indices[i] >= n || (i > 0 && indices[i] <= indices[i - 1]))
      throw bad(`index ${indices[i]} at ${i} is out of range or out of order`);
  }
  return { dtype, shape, indices, bits: t.bits.data as UnmergeResidual['bits'], checksum: info[2] };
}

// ---------------------------------------------------------------------------------------------

type PreparedTerm = { kind: 'factors'; d: PreparedDelta } | { kind: 'dense'; data: Float64Array };

function prepareTerms(
  W: Tensor,
  terms: readonly MergeTerm[],
  where: string,
): { rows: number; cols: number; deltas: PreparedTerm[] } {
  if (!isFloatDType(W.dtype)) {
    throw new CoreError(
      'DTYPE_UNSUPPORTED',
      `${where}: only float weights can be merged, got ${W.dtype}.`,
      { where },
    );
  }
  if (W.shape.length !== 2) {
    throw new CoreError(
      'LORA_SHAPE_MISMATCH',
      `${where}: merge needs a 2-D weight, got shape [${W.shape.join(', ')}].`,
      { where },
    );
  }
  const [rows, cols] = W.shape;
  if (numel(W.shape) > 2 ** 32) {
    throw new CoreError(
      'LORA_SHAPE_MISMATCH',
      `${where}: weights above 2^32 elements are not supported by exact unmerge.`,
      { where },
    );
  }
  const deltas = terms.map((term, i): PreparedTerm => {
    const label = `${where} (adapter ${i})`;
    if ('A' in term) {
      const d = prepareDelta(term, label);
      if (d.rows !== rows || d.cols !== cols) {
        throw new CoreError(
          'LORA_SHAPE_MISMATCH',
          `${label}: the delta is [${d.rows}, ${d.cols}] but the weight is [${rows}, ${cols}]. ${term.fanInFanOut ? 'fan_in_fan_out is set: the weight should be stored [in, out].' : 'If the weight is stored [in, out] (GPT-2 Conv1D), set fan_in_fan_out.'}`,
          { where: label },
        );
      }
      return { kind: 'factors', d };
    }
    if (
      !isFloatDType(term.dtype) ||
      term.shape.length !== 2 ||
      term.shape[0] !== rows ||
      term.shape[1] !== cols
    ) {
      throw new CoreError(
        'LORA_SHAPE_MISMATCH',
        `${label}: a delta tensor must be a float [${rows}, ${cols}], got ${term.dtype} [${term.shape.join(', ')}].`,
        {
          where: label,
        },
      );
    }
    return { kind: 'dense', data: toFloat64Array(term) };
  });
  return { rows, cols, deltas };
}

/**
 * Row p of every term, unscaled, with its scale: `rows[i]` and `scales[i]` such that term i's
 * contribution to the row is `scales[i] * rows[i][j]`. Dense deltas are views with scale 1
 * (`1 * x` is exact, so both kinds go through the same arithmetic).
 */
function termRows(
  deltas: readonly PreparedTerm[],
  p: number,
  cols: number,
  scratch: Float64Array[],
  rows: Float64Array[],
  scales: Float64Array,
): void {
  for (let i = 0; i < deltas.length; i++) {
    const t = deltas[i];
    if (t.kind === 'dense') {
      rows[i] = t.data.subarray(p * cols, (p + 1) * cols);
      scales[i] = 1;
    } else {
      deltaRowUnscaled(t.d, p, scratch[i]);
      rows[i] = scratch[i];
      scales[i] = t.d.scaling;
    }
  }
}

/** acc += s_i * row_i for each term, in term order (merge). */
function addRows(acc: Float64Array, rows: readonly Float64Array[], scales: Float64Array): void {
  const cols = acc.length;
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    const s = scales[i];
    for (let j = 0; j < cols; j++) acc[j] += s * r[j];
  }
}

/** acc -= s_i * row_i for each term, in term order (unmerge). */
function subtractRows(
  acc: Float64Array,
  rows: readonly Float64Array[],
  scales: Float64Array,
): void {
  const cols = acc.length;
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    const s = scales[i];
    for (let j = 0; j < cols; j++) acc[j] -= s * r[j];
  }
}

/**
 * The smallest magnitude that rounds to infinity in each dtype (max finite + half an ulp; the
 * tie goes to the even Inf). Checking the float64 sum against it catches overflow and NaN
 * before rounding, in one tight loop.
 */
const OVERFLOW_AT: Readonly<Record<FloatDType, number>> = {
  f64: Number.POSITIVE_INFINITY,
  f32: 2 ** 128 - 2 ** 103,
  f16: 65520,
  bf16: 2 ** 128 - 2 ** 119,
};

function firstNonFinite(acc: Float64Array, limit: number): number {
  for (let j = 0; j < acc.length; j++) if (!(Math.abs(acc[j]) < limit)) return j;
  return -1;
}

function mergeRows<D extends DType>(
  W: Tensor<D>,
  terms: readonly MergeTerm[],
  options: MergeOptions,
  exact: boolean,
): { merged: Tensor<D>; residual?: UnmergeResidual } {
  const where = options.name ?? 'weight';
  const { rows, cols, deltas } = prepareTerms(W, terms, where);
  const dtype = W.dtype as FloatDType; // checked by prepareTerms
  const merged = tensor(W.dtype, W.shape) as Tensor<D>;
  const reader = rowReader(cols);
  const acc = new Float64Array(cols);
  const scratch = deltas.map(() => new Float64Array(cols));
  const termRowsOfP: Float64Array[] = new Array(deltas.length);
  const scales = new Float64Array(deltas.length);
  const limit = OVERFLOW_AT[dtype];

  // Exact mode: the row as unmerge will compute it, and where it misses.
  const check = exact ? (tensor(W.dtype, [cols]) as Tensor<D>) : undefined;
  const checkBits = check ? bitView(check) : undefined;
  const origBits = bitView(W);
  const missIndices: number[] = [];
  const missBits: (number | bigint)[] = [];

  for (let p = 0; p < rows; p++) {
    termRows(deltas, p, cols, scratch, termRowsOfP, scales);
    reader(W, p, acc);
    addRows(acc, termRowsOfP, scales);
    if (!options.allowNonFinite) {
      const j = firstNonFinite(acc, limit);
      if (j >= 0) {
        throw new CoreError(
          'LORA_MERGE_NOT_FINITE',
          `${where}: the merged value at [${p}, ${j}] is not finite in ${dtype} (original ${readValue(W, p * cols + j)}, merged ${acc[j]}). Nothing was written; check the adapter for NaN/Inf or a huge scaling, or merge into a wider dtype.`,
          { where, row: p, col: j },
        );
      }
    }
    roundF64Into(acc, dtype, merged.data as TypedArrayOf[FloatDType], p * cols);
    if (check && checkBits) {
      reader(merged, p, acc);
      subtractRows(acc, termRowsOfP, scales);
      roundF64Into(acc, dtype, check.data as TypedArrayOf[FloatDType], 0);
      const off = p * cols;
      for (let j = 0; j < cols; j++) {
        if (checkBits[j] !== origBits[off + j]) {
          missIndices.push(off + j);
          missBits.push(origBits[off + j]);
        }
      }
    }
  }
  if (!exact) return { merged };
  const bits =
    dtype === 'f64'
      ? BigUint64Array.from(missBits as bigint[])
      : dtype === 'f32'
        ? Uint32Array.from(missBits as number[])
        : Uint16Array.from(missBits as number[]);
  return {
    merged,
    residual: {
      dtype,
      shape: [...W.shape],
      indices: Uint32Array.from(missIndices),
      bits,
      checksum: residualChecksum(W.data),
    },
  };
}

/** A reader of row p of a 2-D float tensor as float64 into `out` [cols] (exact), with its own scratch. */
function rowReader(cols: number): (t: Tensor, p: number, out: Float64Array) => void {
  const f32Row = new Float32Array(cols);
  return (t, p, out) => {
    const off = p * cols;
    switch (t.dtype) {
      case 'f64':
        out.set((t.data as Float64Array).subarray(off, off + cols));
        return;
      case 'f32': {
        const d = t.data as Float32Array;
        for (let j = 0; j < cols; j++) out[j] = d[off + j];
        return;
      }
      case 'f16':
      case 'bf16': {
        const row = (t.data as Uint16Array).subarray(off, off + cols);
        if (t.dtype === 'f16') f16ToF32Array(row, f32Row);
        else bf16ToF32Array(row, f32Row);
        for (let j = 0; j < cols; j++) out[j] = f32Row[j];
        return;
      }
    }
    throw new CoreError('DTYPE_UNSUPPORTED', `Cannot read a ${t.dtype} weight as float.`);
  };
}

function readValue(t: Tensor, i: number): number {
  const one = new Float64Array(1);
  rowReader(1)(
    { dtype: t.dtype, shape: [1, 1], data: t.data.subarray(i, i + 1) } as Tensor,
    0,
    one,
  );
  return one[0];
}

/** The elements of a float tensor as unsigned integers of the same width (a view). */
function bitView(t: Tensor): Uint16Array | Uint32Array | BigUint64Array {
  const { buffer, byteOffset, length } = t.data as Float32Array;
  if (t.dtype === 'f64') return new BigUint64Array(buffer, byteOffset, length);
  if (t.dtype === 'f32') return new Uint32Array(buffer, byteOffset, length);
  return t.data as Uint16Array;
}

/**
 * The checksum an {@link UnmergeResidual} carries: FNV-1a over the tensor data's bytes taken as
 * 16-bit words. Fast, and enough to catch a wrong adapter or a modified merged model.
 */
export function residualChecksum(data: AnyTypedArray): number {
  const words = new Uint16Array(data.buffer, data.byteOffset, data.byteLength >>> 1);
  let h = 0x811c9dc5;
  for (let i = 0; i < words.length; i++) h = Math.imul(h ^ words[i], 0x01000193);
  return h >>> 0;
}
