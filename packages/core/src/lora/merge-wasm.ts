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

/** The packed delta whose basis is in the module's memory (only this function writes there). */
let basisLoaded: PackedLowRank | undefined;

/** Positions collected by a merge (the residual's), in a buffer that grows by doubling. */
export interface PositionSink {
  positions: Uint32Array;
  count: number;
}

/** Appends one position to `sink`, growing its buffer when full. */
export function pushPosition(sink: PositionSink, position: number): void {
  if (sink.count === sink.positions.length) grow(sink, sink.count + 1);
  sink.positions[sink.count++] = position;
}

function grow(sink: PositionSink, need: number): void {
  const bigger = new Uint32Array(Math.max(need, 2 * sink.positions.length, 1 << 12));
  bigger.set(sink.positions.subarray(0, sink.count));
  sink.positions = bigger;
}

/**
 * Runs `merge_rows` over a block of whole rows of the weight, the first being row `r0` (see
 * {@link canMergeWithWasm}): `weight` holds the block's rows, `out` receives them merged. With
 * `capture`, appends the residual's positions (flat in the whole weight, unsorted) to `sink`.
 * Returns false as soon as a merged value is not finite: the caller then runs the TypeScript
 * loop on the block, which owns the NaN/Inf rules.
 */
export function mergeRowsWasm(
  weight: AnyTypedArray,
  inDtype: FloatDType,
  packed: PackedLowRank,
  r0: number,
  out: AnyTypedArray,
  outDtype: FloatDType,
  capture: boolean,
  sink: PositionSink,
): boolean {
  const k = float16Wasm() as unknown as MergeExports;
  const { cols, chunks, width } = packed;
  const rows = weight.length / cols;
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
  if (basisLoaded !== packed) {
    new Float32Array(mem, basisOff, packed.basis.length).set(packed.basis);
    basisLoaded = packed; // the blocks of one weight share it
  }
  for (let i0 = 0; i0 < rows; i0 += rowsPer) {
    const n = Math.min(rowsPer, rows - i0);
    const row = r0 + i0; // in the whole weight
    new Float64Array(mem, coefOff, n * chunks * width).set(
      packed.coef.subarray(row * chunks * width, (row + n) * chunks * width),
    );
    new Uint8Array(mem, wOff, n * cols * inSize).set(
      bytesOf(weight, i0 * cols * inSize, n * cols * inSize),
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
      row * cols,
    );
    if (missed < 0) return false;
    bytesOf(out, i0 * cols * outSize, n * cols * outSize).set(
      new Uint8Array(mem, outOff, n * cols * outSize),
    );
    if (sink.count + missed > sink.positions.length) grow(sink, sink.count + missed);
    sink.positions.set(new Uint32Array(mem, idxOff, missed), sink.count);
    sink.count += missed;
  }
  return true;
}

function align16(n: number): number {
  return (n + 15) & ~15;
}
