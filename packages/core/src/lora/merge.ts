import { type FloatDType, isFloatDType } from '../convert.js';
import { type AnyTypedArray, DTYPES, type DType, type TypedArrayOf } from '../dtype.js';
import { CoreError } from '../errors.js';
import { type Tensor, numel, tensor } from '../tensor.js';
import {
  concatLowRank,
  deltaRow,
  type LoraFactors,
  type LowRankDelta,
  lowRankDelta,
  type PackedLowRank,
  packLowRank,
  zeroLowRankDelta,
} from './delta.js';
import { bitsView, FloatRows } from './float-rows.js';
import { canMergeWithWasm, mergeRowsWasm, type PositionSink, pushPosition } from './merge-wasm.js';
export interface MergeOptions {
  /** Name of the weight, for error messages (e.g. `model.layers.0.self_attn.q_proj.weight`). */
  name?: string;
  /** Accept NaN/Inf in the result (PEFT's `safe_merge=False`). Default false: refuse them. */
  allowNonFinite?: boolean;
}

/**
 * The sparse record that makes an unmerge give back the original bytes exactly.
 * `W - ΔW` after rounding is usually, not always, W; the positions where it is not are stored
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

/** What {@link mergeLowRank} returns. */
export interface LowRankMergeResult {
  readonly merged: Tensor;
  /** Present when `captureResidual` was asked. */
  readonly residual?: UnmergeResidual;
  /** Index of the first row holding a NaN or infinite value, or -1. */
  readonly firstNonFiniteRow: number;
}

/** Columns per tile of the merge loop. */
const TILE = 512;

/**
 * THE merge engine: `merged = round_out(W + ΔW)` element by element, ΔW row by row from
 * {@link deltaRow} (float64), the sum rounded ONCE to `outDtype`. W is 2-D, any float dtype, not
 * modified. The weight comes in blocks of whole rows, in order ({@link LowRankMerger.mergeRows}),
 * so a caller can stream a tensor from a file through one reused buffer; {@link mergeLowRank}
 * gives it a whole tensor at once. Within a block the engine works in 512-column tiles of each
 * row so the tile's packed basis stays in cache. f32/f16/bf16 weights run in a WebAssembly SIMD
 * kernel (../wasm/float16.wat, `merge_rows`) with the same per-element arithmetic; the
 * TypeScript loop is its reference (tested bit for bit), the fallback without WebAssembly, and
 * the path for f64 and for blocks with NaN/Inf results. Each element depends only on its own row,
 * so the bytes do not depend on how the rows are split into blocks.
 *
 * With `captureResidual`, also runs the unmerge exactly as {@link unmergeLowRank} will,
 * `round_in(merged - ΔW)`, and records where it misses the original bits (the residual).
 */
export class LowRankMerger {
  readonly rows: number;
  readonly cols: number;
  private firstBadRow = -1;
  private nextRow = 0;
  private readonly packed: PackedLowRank;
  private readonly capture: boolean;
  private readonly wasm: boolean;
  private readonly found: PositionSink;
  /** Residual so far: positions (ascending) and original bits, `count` of each. */
  private indices = new Uint32Array(0);
  private bits: Uint16Array | Uint32Array | BigUint64Array;
  private count = 0;
  private checksum = FNV_OFFSET;
  /** Counting-sort scratch of {@link keepResidual}: per row of a block, where its positions go. */
  private rowStart = new Uint32Array(0);
  /** TypeScript loop scratch, made on first use. */
  private scratch?: { io: FloatRows; w: Float64Array; d: Float64Array; back?: AnyTypedArray };

  constructor(
    delta: LowRankDelta,
    readonly inDtype: FloatDType,
    readonly outDtype: FloatDType,
    options: { captureResidual?: boolean; name?: string } = {},
  ) {
    this.rows = delta.rows;
    this.cols = delta.cols;
    checkMergeable(inDtype, this.rows * this.cols, options.name ?? 'weight');
    this.packed = packLowRank(delta);
    this.capture = options.captureResidual === true;
    this.wasm = canMergeWithWasm(inDtype, outDtype, this.cols);
    this.found = { positions: new Uint32Array(this.capture ? 1 << 12 : 0), count: 0 };
    this.bits = bitsView(DTYPES[inDtype].create(0), inDtype);
  }

  /** Index of the first row holding a NaN or infinite value so far, or -1. */
  get firstNonFiniteRow(): number {
    return this.firstBadRow;
  }

  /**
   * Merges the next `w.length / cols` rows of the weight: `w` holds them in `inDtype`, `out`
   * (same length, `outDtype`) receives the merged rows. Returns the first row (of the whole
   * weight) of this block holding a NaN or infinite value, or -1; the block is merged all the
   * same, so the caller decides.
   */
  mergeRows(w: AnyTypedArray, out: AnyTypedArray): number {
    const { cols } = this;
    const r0 = this.nextRow;
    const n = cols === 0 ? this.rows - r0 : w.length / cols; // rows of no columns: all of them
    if (!Number.isInteger(n) || out.length !== w.length || r0 + n > this.rows) {
      throw new CoreError(
        'LORA_SHAPE_MISMATCH',
        `merge: a block of ${w.length} elements (output ${out.length}) is not whole rows of ${cols} within the ${this.rows - r0} rows left.`,
        { rows: this.rows, cols, from: r0 },
      );
    }
    this.nextRow += n;
    let bad = -1;
    this.found.count = 0;
    const fast =
      this.wasm &&
      mergeRowsWasm(w, this.inDtype, this.packed, r0, out, this.outDtype, this.capture, this.found);
    if (!fast) {
      // no WebAssembly, f64, or a NaN/Inf in this block: the TypeScript loop owns those rules
      this.found.count = 0;
      bad = this.mergeRowsTs(w, r0, out);
    }
    if (bad >= 0 && this.firstBadRow < 0) this.firstBadRow = bad;
    if (this.capture) {
      this.keepResidual(w, r0 * cols);
      this.checksum = fnv1a16(w, this.checksum);
    }
    return bad;
  }

  /** The residual of the whole weight, once every row is merged (`captureResidual` only). */
  residual(shape: readonly number[] = [this.rows, this.cols]): UnmergeResidual {
    if (!this.capture || this.nextRow !== this.rows) {
      throw new CoreError(
        'LORA_SHAPE_MISMATCH',
        `merge: the residual needs captureResidual and every row merged (${this.nextRow} of ${this.rows} done).`,
        { rows: this.rows },
      );
    }
    return {
      dtype: this.inDtype,
      shape: [...shape],
      indices: this.indices.subarray(0, this.count),
      bits: this.bits.subarray(0, this.count) as UnmergeResidual['bits'],
      checksum: this.checksum >>> 0,
    };
  }

  /**
   * Keeps this block's missed positions with W's bits there, in ascending order. Tiles visit a
   * row's columns in ascending order but interleave rows, so a stable counting sort by row
   * orders them (linear time; a comparison sort of millions of positions costs far more).
   */
  private keepResidual(w: AnyTypedArray, first: number): void {
    const { positions, count: k } = this.found;
    if (k === 0) return;
    const need = this.count + k;
    if (need > this.indices.length) {
      // Room for the whole weight at the rate seen so far (untouched room costs no memory
      // until written, while each regrowth touches a fresh copy of what is kept).
      const estimate = Math.ceil(((need * this.rows) / this.nextRow) * 1.25);
      const size = Math.min(
        this.rows * this.cols,
        Math.max(need, estimate, 2 * this.indices.length),
      );
      const indices = new Uint32Array(size);
      indices.set(this.indices.subarray(0, this.count));
      const ctor = this.bits.constructor as new (n: number) => typeof this.bits;
      const bits = new ctor(size);
      bits.set(this.bits.subarray(0, this.count) as never);
      this.indices = indices;
      this.bits = bits;
    }
    const { cols } = this;
    const rows = w.length / cols;
    if (this.rowStart.length < rows + 1) this.rowStart = new Uint32Array(rows + 1);
    const start = this.rowStart.fill(0, 0, rows + 1); // start[r + 1] counts row r, then prefix sums
    for (let i = 0; i < k; i++) start[Math.floor((positions[i] - first) / cols) + 1]++;
    for (let r = 0; r < rows; r++) start[r + 1] += start[r];
    const orig = bitsView(w, this.inDtype);
    const { indices, bits } = this;
    const at = this.count;
    for (let i = 0; i < k; i++) {
      const p = positions[i];
      const slot = at + start[Math.floor((p - first) / cols)]++;
      indices[slot] = p;
      bits[slot] = orig[p - first];
    }
    this.count = need;
  }

  /** The TypeScript loop over rows [r0, r0 + n): the reference of `merge_rows`. */
  private mergeRowsTs(weight: AnyTypedArray, r0: number, out: AnyTypedArray): number {
    const { cols, packed, inDtype, outDtype, capture } = this;
    const nRows = weight.length / cols;
    this.scratch ??= {
      io: new FloatRows(cols),
      w: new Float64Array(TILE),
      d: new Float64Array(TILE),
      // one tile decoded back from the output, re-encoded in the input dtype
      back: capture ? DTYPES[inDtype].create(TILE) : undefined,
    };
    const { io, w, d, back } = this.scratch;
    // Signed 32-bit views for comparing (a uint32 above 2^31 would be a heap double in V8).
    const origCmp = capture ? compareView(weight, inDtype) : undefined;
    const backCmp = back ? compareView(back, inDtype) : undefined;
    const found = this.found;
    let firstNonFiniteRow = -1;
    for (let j0 = 0; j0 < cols; j0 += TILE) {
      const n = Math.min(TILE, cols - j0);
      for (let i = 0; i < nRows; i++) {
        deltaRow(packed, r0 + i, d, j0, n);
        io.readAdd(weight, inDtype, i, d, w, j0, n); // w = W + ΔW, this tile of row i
        if (
          !io.write(w, out, outDtype, i, j0, n) &&
          (firstNonFiniteRow < 0 || i < firstNonFiniteRow)
        )
          firstNonFiniteRow = i;
        if (capture) {
          io.read(out, outDtype, i, w, j0, n);
          for (let j = 0; j < n; j++) w[j] -= d[j];
          io.write(w, back!, inDtype, 0, 0, n);
          const base = i * cols + j0;
          for (let j = 0; j < n; j++)
            if (backCmp![j] !== origCmp![base + j]) pushPosition(found, r0 * cols + base + j);
        }
      }
    }
    return firstNonFiniteRow < 0 ? -1 : r0 + firstNonFiniteRow;
  }
}

/**
 * {@link LowRankMerger} over a whole weight: returns the merged tensor (and the residual with
 * `captureResidual`). Never throws on NaN/Inf: reports `firstNonFiniteRow`, so callers refuse
 * before writing anything.
 */
export function mergeLowRank(
  weight: Tensor,
  delta: LowRankDelta,
  outDtype: FloatDType,
  options: { captureResidual?: boolean; name?: string } = {},
): LowRankMergeResult {
  checkWeight(weight, delta, options.name ?? 'weight');
  const merger = new LowRankMerger(delta, weight.dtype as FloatDType, outDtype, options);
  const out = DTYPES[outDtype].create(delta.rows * delta.cols);
  merger.mergeRows(weight.data, out);
  const merged = { dtype: outDtype, shape: [delta.rows, delta.cols], data: out } as Tensor;
  const { firstNonFiniteRow } = merger;
  if (!options.captureResidual) return { merged, firstNonFiniteRow };
  return { merged, firstNonFiniteRow, residual: merger.residual(weight.shape) };
}

/**
 * The inverse of {@link mergeLowRank}: `round_base(merged - ΔW)` row by row (the same ΔW bits),
 * then the residual's original bits are put back and the checksum verified: byte-identical to
 * the original weight, or `LORA_UNMERGE_MISMATCH` (a different merged weight or delta). Without a
 * residual it is PEFT's plain unmerge: close to W, not exact.
 */
export function unmergeLowRank(
  merged: Tensor,
  delta: LowRankDelta,
  baseDtype: FloatDType,
  residual?: UnmergeResidual,
  name = 'weight',
): Tensor {
  checkWeight(merged, delta, name);
  const mergedDtype = merged.dtype as FloatDType;
  const { rows: nRows, cols } = delta;
  const packed = packLowRank(delta);
  const out = DTYPES[baseDtype].create(nRows * cols);
  const io = new FloatRows(cols);
  const m = new Float64Array(cols);
  const d = new Float64Array(cols);
  for (let i = 0; i < nRows; i++) {
    io.read(merged.data, mergedDtype, i, m);
    deltaRow(packed, i, d);
    for (let j = 0; j < cols; j++) m[j] -= d[j];
    io.write(m, out, baseDtype, i);
  }
  if (residual) {
    applyResidual(out, baseDtype, residual, name);
    if (residualChecksum(out) !== residual.checksum) {
      throw new CoreError(
        'LORA_UNMERGE_MISMATCH',
        `${name}: after unmerge the weight does not match the original (checksum differs). The merged weight or the adapter is not the one that was merged; use the same adapter files, scalings and order as for the merge.`,
        { where: name },
      );
    }
  }
  return { dtype: baseDtype, shape: [nRows, cols], data: out } as Tensor;
}

/** Writes the residual's original bits back into `data` (a `dtype` array), after checking they fit. */
export function applyResidual(
  data: AnyTypedArray,
  dtype: FloatDType,
  residual: UnmergeResidual,
  name = 'weight',
): void {
  const bits = bitsView(data, dtype);
  if (residual.dtype !== dtype || bits.constructor !== residual.bits.constructor) {
    throw new CoreError(
      'LORA_UNMERGE_MISMATCH',
      `${name}: the unmerge residual is for a ${residual.dtype} weight, this one is ${dtype}. Use the residual saved with this merge.`,
      { where: name },
    );
  }
  if (numel(residual.shape) !== bits.length) {
    throw new CoreError(
      'LORA_UNMERGE_MISMATCH',
      `${name}: the unmerge residual is for a [${residual.shape.join(', ')}] weight, this one has ${bits.length} elements. Use the residual saved with this merge.`,
      { where: name },
    );
  }
  const { indices } = residual;
  for (let k = 0; k < indices.length; k++) {
    if (indices[k] >= bits.length) {
      throw new CoreError(
        'LORA_RESIDUAL_INVALID',
        `${name}: residual index ${indices[k]} is outside the weight (${bits.length} elements).`,
        { where: name },
      );
    }
    bits[indices[k]] = residual.bits[k];
  }
}

/**
 * W' = W + sum of the terms' ΔW, rounded ONCE to W's dtype (so an f16/bf16 weight gains one
 * rounding error, not one per adapter): {@link mergeLowRank} on the terms' summed delta. W is
 * 2-D and any float dtype; the input is not modified. Throws `LORA_MERGE_NOT_FINITE` if a result
 * is NaN/Inf (unless allowed).
 */
export function mergeWeight<D extends DType>(
  W: Tensor<D>,
  terms: readonly LoraFactors[],
  options: MergeOptions = {},
): Tensor<D> {
  return mergeTerms(W, terms, options, false).merged;
}

/**
 * {@link mergeWeight} plus the {@link UnmergeResidual} that lets {@link unmergeWeight} restore
 * W bit for bit.
 */
export function mergeWeightExact<D extends DType>(
  W: Tensor<D>,
  terms: readonly LoraFactors[],
  options: MergeOptions = {},
): { merged: Tensor<D>; residual: UnmergeResidual } {
  const { merged, residual } = mergeTerms(W, terms, options, true);
  return { merged, residual: residual! };
}

/**
 * W = W' - sum of the terms' ΔW (one rounding, to the residual's dtype when given, else W''s).
 * With the residual from {@link mergeWeightExact} the result is byte-identical to the original
 * weight, and this is verified (checksum): a different W' or different terms throw
 * `LORA_UNMERGE_MISMATCH`. Without a residual it is PEFT's plain unmerge: close to W, not exact.
 */
export function unmergeWeight<D extends DType>(
  merged: Tensor<D>,
  terms: readonly LoraFactors[],
  residual?: UnmergeResidual,
  options: MergeOptions = {},
): Tensor<D> {
  const where = options.name ?? 'weight';
  const delta = termsDelta(merged, terms, where);
  const dtype = residual?.dtype ?? (merged.dtype as FloatDType);
  return unmergeLowRank(merged, delta, dtype, residual, where) as Tensor<D>;
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

function checkWeight(W: Tensor, delta: LowRankDelta, where: string): void {
  checkMergeable(W.dtype, numel(W.shape), where);
  if (W.shape.length !== 2 || W.shape[0] !== delta.rows || W.shape[1] !== delta.cols) {
    throw new CoreError(
      'LORA_SHAPE_MISMATCH',
      `${where}: the weight has shape [${W.shape.join(', ')}] but the delta is [${delta.rows}, ${delta.cols}].`,
      { where },
    );
  }
}

function checkMergeable(dtype: DType, elements: number, where: string): void {
  if (!isFloatDType(dtype)) {
    throw new CoreError(
      'DTYPE_UNSUPPORTED',
      `${where}: only float weights can be merged, got ${dtype}.`,
      { where },
    );
  }
  if (elements > 2 ** 32) {
    throw new CoreError(
      'LORA_SHAPE_MISMATCH',
      `${where}: weights above 2^32 elements are not supported by exact unmerge.`,
      { where },
    );
  }
}

/** The summed delta of the terms, checked against W's stored shape. */
function termsDelta(W: Tensor, terms: readonly LoraFactors[], where: string): LowRankDelta {
  if (W.shape.length !== 2) {
    throw new CoreError(
      'LORA_SHAPE_MISMATCH',
      `${where}: merge needs a 2-D weight, got shape [${W.shape.join(', ')}].`,
      { where },
    );
  }
  const [rows, cols] = W.shape;
  if (terms.length === 0) return zeroLowRankDelta(rows, cols);
  const deltas = terms.map((term, i) => {
    const label = `${where} (adapter ${i})`;
    const d = lowRankDelta(term, label);
    if (d.rows !== rows || d.cols !== cols) {
      throw new CoreError(
        'LORA_SHAPE_MISMATCH',
        `${label}: the delta is [${d.rows}, ${d.cols}] but the weight is [${rows}, ${cols}]. ${term.fanInFanOut ? 'fan_in_fan_out is set: the weight should be stored [in, out].' : 'If the weight is stored [in, out] (GPT-2 Conv1D), set fan_in_fan_out.'}`,
        { where: label },
      );
    }
    return d;
  });
  return concatLowRank(deltas, where);
}

function mergeTerms<D extends DType>(
  W: Tensor<D>,
  terms: readonly LoraFactors[],
  options: MergeOptions,
  exact: boolean,
): { merged: Tensor<D>; residual?: UnmergeResidual } {
  const where = options.name ?? 'weight';
  const delta = termsDelta(W, terms, where);
  const dtype = W.dtype as FloatDType;
  const r = mergeLowRank(W, delta, dtype, { captureResidual: exact, name: where });
  if (r.firstNonFiniteRow >= 0 && !options.allowNonFinite) {
    const p = r.firstNonFiniteRow;
    const cols = delta.cols;
    const io = new FloatRows(cols);
    const row = new Float64Array(cols);
    io.read(r.merged.data, dtype, p, row);
    const j = Math.max(
      0,
      row.findIndex((v) => !Number.isFinite(v)),
    );
    io.read(W.data, dtype, p, row);
    throw new CoreError(
      'LORA_MERGE_NOT_FINITE',
      `${where}: the merged value at [${p}, ${j}] is not finite in ${dtype} (original ${row[j]}). Nothing was written; check the adapter for NaN/Inf or a huge scaling, or merge into a wider dtype.`,
      { where, row: p, col: j },
    );
  }
  return {
    merged: { ...r.merged, shape: [...W.shape] } as unknown as Tensor<D>,
    residual: r.residual,
  };
}

function compareView(
  data: AnyTypedArray,
  dtype: FloatDType,
): Int32Array | Uint16Array | BigUint64Array {
  return dtype === 'f32'
    ? new Int32Array(data.buffer, data.byteOffset, data.length)
    : (bitsView(data, dtype) as Uint16Array | BigUint64Array);
}

/**
 * The checksum an {@link UnmergeResidual} carries: FNV-1a over the tensor data's bytes taken as
 * 16-bit words. Fast, and enough to catch a wrong adapter or a modified merged model.
 */
export function residualChecksum(data: AnyTypedArray): number {
  return fnv1a16(data, FNV_OFFSET) >>> 0;
}

const FNV_OFFSET = 0x811c9dc5;

/** FNV-1a continued from `h` over the bytes of `data` as 16-bit words (a block of rows at a time). */
function fnv1a16(data: AnyTypedArray, h: number): number {
  const words = new Uint16Array(data.buffer, data.byteOffset, data.byteLength >>> 1);
  for (let i = 0; i < words.length; i++) h = Math.imul(h ^ words[i], 0x01000193);
  return h;
}
