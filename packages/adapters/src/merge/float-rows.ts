import {
  type AnyTypedArray,
  bf16ToF32Array,
  f16ToF32Array,
  f32BitsToBf16Bits,
  f32BitsToF16Bits,
  type FloatDType,
} from '@lora/core';

/**
 * Row access to float tensors of any storage dtype (f64, f32, f16, bf16): decode a row to
 * float64 values, and encode float64 values to the storage dtype with ONE rounding to nearest
 * even (as core's `roundF64Into`). Scratch buffers are reused,
 * so a whole tensor is processed with no allocation per row.
 */
export class FloatRows {
  private readonly f32: Float32Array;

  /** The scratch row's bits, SIGNED so they stay small integers in V8 (a uint32 above 2^31 is a heap double). */
  private readonly bits: Int32Array;

  constructor(readonly cols: number) {
    this.f32 = new Float32Array(cols);
    this.bits = new Int32Array(this.f32.buffer);
  }

  /**
   * Row `i` of `data` (a `dtype` tensor with `cols` columns) as float64 values into `out`; with
   * `offset` and `n`, only columns [offset, offset + n) (into out[0..n)).
   */
  read(
    data: AnyTypedArray,
    dtype: FloatDType,
    i: number,
    out: Float64Array,
    offset = 0,
    n = this.cols,
  ): void {
    const start = i * this.cols + offset;
    const end = start + n;
    switch (dtype) {
      case 'f64':
        out.set((data as Float64Array).subarray(start, end));
        return;
      case 'f32':
        out.set((data as Float32Array).subarray(start, end));
        return;
      case 'f16': {
        const src = data as Uint16Array;
        const table = F16_VALUES();
        for (let j = 0; j < n; j++) out[j] = table[src[start + j]];
        return;
      }
      case 'bf16': {
        const src = data as Uint16Array;
        const table = BF16_VALUES();
        for (let j = 0; j < n; j++) out[j] = table[src[start + j]];
        return;
      }
    }
  }

  /**
   * `out = row i of data + add`, decoded to float64 and added in one pass (the merge's inner
   * step); `offset` / `n` select columns as in {@link read}.
   */
  readAdd(
    data: AnyTypedArray,
    dtype: FloatDType,
    i: number,
    add: Float64Array,
    out: Float64Array,
    offset = 0,
    n = this.cols,
  ): void {
    const start = i * this.cols + offset;
    switch (dtype) {
      case 'f64': {
        const src = data as Float64Array;
        for (let j = 0; j < n; j++) out[j] = src[start + j] + add[j];
        return;
      }
      case 'f32': {
        const src = data as Float32Array;
        for (let j = 0; j < n; j++) out[j] = src[start + j] + add[j];
        return;
      }
      case 'f16':
      case 'bf16': {
        const src = data as Uint16Array;
        const table = dtype === 'f16' ? F16_VALUES() : BF16_VALUES();
        for (let j = 0; j < n; j++) out[j] = table[src[start + j]] + add[j];
        return;
      }
    }
  }

  /**
   * Rounds float64 `values` to `dtype` and stores them as row `i` of `data`. Returns false when
   * a stored value is NaN or infinite (also when rounding overflowed, e.g. 70000 in f16).
   * `offset` / `n` select columns as in {@link read}.
   */
  write(
    values: Float64Array,
    data: AnyTypedArray,
    dtype: FloatDType,
    i: number,
    offset = 0,
    n = this.cols,
  ): boolean {
    const start = i * this.cols + offset;
    const end = start + n;
    switch (dtype) {
      case 'f64': {
        const row = (data as Float64Array).subarray(start, end);
        row.set(values.subarray(0, n));
        return allFinite(row);
      }
      case 'f32': {
        const row = (data as Float32Array).subarray(start, end);
        row.set(values.subarray(0, n));
        return allFinite(row);
      }
      case 'f16':
        return this.writeF16(values, data as Uint16Array, start, n);
      case 'bf16':
        return this.writeBf16(values, data as Uint16Array, start, n);
    }
  }

  /**
   * float64 -> f16 bits in one pass, rounded ONCE (as core's `roundF64Into`). The value is
   * stored as float32 first; rounding twice can only go wrong when that float32 lands exactly on
   * an f16 midpoint (a midpoint strictly between x and its nearest float32 would itself be a
   * closer float32), so only then, or for f16 subnormals, is it nudged one step towards x
   * ("round to odd"). That test is on the bits and almost never true, so the loop does not pay a
   * mispredicted branch per value. Then the rebias-and-round of normal results (core's
   * `f32BitsToF16Bits` for the rest) and the Inf/NaN check.
   */
  private writeF16(values: Float64Array, out: Uint16Array, start: number, n: number): boolean {
    const f = this.f32;
    const u = this.bits;
    let finite = true;
    for (let j = 0; j < n; j++) {
      const x = values[j];
      f[j] = x;
      let b = u[j];
      const abs0 = b & 0x7fffffff;
      if ((b & 0x1fff) === 0x1000 || abs0 < 0x38800000) {
        const r = f[j];
        if (r !== x && (b & 1) === 0 && r - r === 0) b = Math.abs(x) > Math.abs(r) ? b + 1 : b - 1;
      }
      const abs = b & 0x7fffffff;
      const h =
        abs >= 0x38800000 && abs < 0x47800000
          ? ((b >>> 16) & 0x8000) | ((abs - 0x38000000 + 0xfff + ((abs >>> 13) & 1)) >>> 13)
          : f32BitsToF16Bits(b);
      out[start + j] = h;
      if ((h & 0x7c00) === 0x7c00) finite = false;
    }
    return finite;
  }

  /** float64 -> bf16 bits in one pass (see {@link writeF16}). */
  private writeBf16(values: Float64Array, out: Uint16Array, start: number, n: number): boolean {
    const f = this.f32;
    const u = this.bits;
    let finite = true;
    for (let j = 0; j < n; j++) {
      const x = values[j];
      f[j] = x;
      let b = u[j];
      if ((b & 0xffff) === 0x8000) {
        const r = f[j];
        if (r !== x && r - r === 0) b = Math.abs(x) > Math.abs(r) ? b + 1 : b - 1;
      }
      const h =
        (b & 0x7fffffff) > 0x7f800000
          ? f32BitsToBf16Bits(b)
          : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
      out[start + j] = h;
      if ((h & 0x7f80) === 0x7f80) finite = false;
    }
    return finite;
  }
}

// One add per value is cheaper than a check per value: the sum is finite when every value is
// (a sum of finite f32 values cannot overflow float64; for f64 rows an overflowing sum falls
// back to the per-value check).
function allFinite(row: Float32Array | Float64Array): boolean {
  let sum = 0;
  for (let j = 0; j < row.length; j++) sum += row[j];
  if (Number.isFinite(sum)) return true;
  for (let j = 0; j < row.length; j++) if (!Number.isFinite(row[j])) return false;
  return true;
}

/** The integer view of a float array's bits (same length), for bit-exact comparisons. */
export function bitsView(
  data: AnyTypedArray,
  dtype: FloatDType,
): Uint16Array | Uint32Array | BigUint64Array {
  switch (dtype) {
    case 'f64':
      return new BigUint64Array(data.buffer, data.byteOffset, data.length);
    case 'f32':
      return new Uint32Array(data.buffer, data.byteOffset, data.length);
    default:
      return data as Uint16Array;
  }
}

let f16Values: Float32Array | undefined;
let bf16Values: Float32Array | undefined;

/** The value of every f16 bit pattern (256 KiB, built on first use with core's exact decoder). */
function F16_VALUES(): Float32Array {
  f16Values ??= f16ToF32Array(Uint16Array.from({ length: 65536 }, (_, i) => i));
  return f16Values;
}

/** The value of every bf16 bit pattern. */
function BF16_VALUES(): Float32Array {
  bf16Values ??= bf16ToF32Array(Uint16Array.from({ length: 65536 }, (_, i) => i));
  return bf16Values;
}
