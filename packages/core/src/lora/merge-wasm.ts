import type { FloatDType } from '../convert.js';
import type { AnyTypedArray } from '../dtype.js';
import { float16Wasm } from '../wasm/float16-wasm.js';
import type { PackedLowRank } from './delta.js';

/**
 * The WebAssembly SIMD path of core's merge engine (`merge_rows` in ../wasm/float16.wat): same
 * per-element arithmetic as the TypeScript loop of `mergeLowRank`, which stays the reference
 * and the fallback (tests compare the two bit for bit). Rows go through the module's memory in
 * chunks of about 256 K elements, above the 2 MiB the conversion kernels use.
 */

interface MergeExports {
  memory: { buffer: ArrayBuffer; grow(pages: number): number };
  merge_rows(
    w: number,
    inDt: number,
    out: number,
    outDt: number,
    coef: number,
    basis: number,
    rows: number,
    cols: number,
    chunks: number,
    width: number,
    capture: number,
    d: number,
    t: number,
    idx: number,
    first: number,
  ): number;
}

const DT_CODE: Partial<Record<FloatDType, number>> = { f32: 0, f16: 1, bf16: 2 };
const BASE = 2 << 20; // below: the conversion kernels' chunks
const CHUNK_ELEMENTS = 1 << 18;
const TILE_BYTES = 512 * 8;

/** Set to false to force the TypeScript loop (tests compare the two). */
export const mergeWasmSwitch = { enabled: true };

/** True when `merge_rows` can take this merge (f32/f16/bf16 in and out, whole 4-column steps). */
export function canMergeWithWasm(inDtype: FloatDType, outDtype: FloatDType, cols: number): boolean {
  return (
    mergeWasmSwitch.enabled &&
    DT_CODE[inDtype] !== undefined &&
    DT_CODE[outDtype] !== undefined &&
    cols > 0 &&
    cols % 4 === 0 &&
    float16Wasm() !== undefined
  );
}

function bytesOf(a: AnyTypedArray, start: number, length: number): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset + start, length);
}

/**
 * Runs `merge_rows` over the whole weight (see {@link canMergeWithWasm}). Returns the residual's
 * positions (unsorted) when `capture`, an empty array otherwise, or undefined when a merged value is not
 * finite: the caller then runs the TypeScript loop, which owns the NaN/Inf rules.
 */
export function mergeRowsWasm(
  weight: AnyTypedArray,
  inDtype: FloatDType,
  packed: PackedLowRank,
  out: AnyTypedArray,
  outDtype: FloatDType,
  capture: boolean,
): Uint32Array | undefined {
  const k = float16Wasm() as unknown as MergeExports;
  const { rows, cols, chunks, width } = packed;
  const inSize = weight.BYTES_PER_ELEMENT;
  const outSize = out.BYTES_PER_ELEMENT;
  const rowsPer = Math.max(1, Math.min(rows, Math.floor(CHUNK_ELEMENTS / cols)));
  const coefRow = chunks * width * 8;
  // Layout: d, t, basis, then per chunk: coef, weight rows, merged rows, residual positions.
  const dOff = BASE;
  const tOff = dOff + TILE_BYTES;
  const basisOff = tOff + TILE_BYTES;
  const coefOff = basisOff + packed.basis.byteLength;
  const wOff = coefOff + rowsPer * coefRow;
  const outOff = align16(wOff + rowsPer * cols * inSize);
  const idxOff = align16(outOff + rowsPer * cols * outSize);
  const end = idxOff + (capture ? rowsPer * cols * 4 : 0);
  const have = k.memory.buffer.byteLength;
  if (end > have) k.memory.grow(Math.ceil((end - have) / 65536));
  const mem = k.memory.buffer;
  new Float32Array(mem, basisOff, packed.basis.length).set(packed.basis);
  let found = new Uint32Array(capture ? 1 << 16 : 0);
  let count = 0;
  for (let r0 = 0; r0 < rows; r0 += rowsPer) {
    const n = Math.min(rowsPer, rows - r0);
    new Float64Array(mem, coefOff, n * chunks * width).set(
      packed.coef.subarray(r0 * chunks * width, (r0 + n) * chunks * width),
    );
    new Uint8Array(mem, wOff, n * cols * inSize).set(
      bytesOf(weight, r0 * cols * inSize, n * cols * inSize),
    );
    const missed = k.merge_rows(
      wOff,
      DT_CODE[inDtype]!,
      outOff,
      DT_CODE[outDtype]!,
      coefOff,
      basisOff,
      n,
      cols,
      chunks,
      width,
      capture ? 1 : 0,
      dOff,
      tOff,
      idxOff,
      r0 * cols,
    );
    if (missed < 0) return undefined;
    bytesOf(out, r0 * cols * outSize, n * cols * outSize).set(
      new Uint8Array(mem, outOff, n * cols * outSize),
    );
    if (count + missed > found.length) {
      const grown = new Uint32Array(Math.max(2 * found.length, count + missed));
      grown.set(found.subarray(0, count));
      found = grown;
    }
    found.set(new Uint32Array(mem, idxOff, missed), count);
    count += missed;
  }
  return found.subarray(0, count);
}

function align16(n: number): number {
  return (n + 15) & ~15;
}
