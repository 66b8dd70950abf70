import { afterEach, describe, expect, it } from 'vitest';
import { castFloat, type FloatDType } from '../convert.js';
import { DTYPES } from '../dtype.js';
import { createRng } from '../random.js';
import { f32, type Tensor, tensorBytes } from '../tensor.js';
import { concatLowRank, type LowRankDelta, lowRankDelta, zeroLowRankDelta } from './delta.js';
import { LowRankMerger, mergeLowRank, unmergeLowRank } from './merge.js';
import { mergeWasmSwitch } from './merge-wasm.js';

// A weight merged in blocks of rows (how `lora merge` streams a tensor from the file) must give
// the bytes and the residual of merging it whole, whatever the block boundaries, on both the
// WebAssembly kernel and the TypeScript loop, and the residual must still unmerge exactly.

afterEach(() => {
  mergeWasmSwitch.enabled = true;
});

const rng = createRng(77);

function weight(dtype: FloatDType, rows: number, cols: number): Tensor {
  return castFloat(f32([rows, cols], rng.normalArray(rows * cols, 0, 0.05, 'f32')), dtype);
}

function delta(rows: number, cols: number, ranks: number[], scaling = 1.3): LowRankDelta {
  return concatLowRank(
    ranks.map((r) =>
      lowRankDelta({
        A: f32([r, cols], rng.normalArray(r * cols, 0, 0.2, 'f32')),
        B: f32([rows, r], rng.normalArray(rows * r, 0, 0.2, 'f32')),
        scaling,
      }),
    ),
  );
}

/** Merges `W` through a merger in blocks of `sizes` rows (cycled), as a streaming caller does. */
function mergeInBlocks(
  W: Tensor,
  d: LowRankDelta,
  outDtype: FloatDType,
  sizes: number[],
): { bytes: Buffer; merger: LowRankMerger; bad: number[] } {
  const merger = new LowRankMerger(d, W.dtype as FloatDType, outDtype, { captureResidual: true });
  const out = DTYPES[outDtype].create(d.rows * d.cols);
  const bad: number[] = [];
  for (let r0 = 0, k = 0; r0 < d.rows; k++) {
    const n = Math.min(sizes[k % sizes.length], d.rows - r0);
    const block = W.data.slice(r0 * d.cols, (r0 + n) * d.cols); // its own buffer, like a read
    const piece = DTYPES[outDtype].create(n * d.cols);
    const b = merger.mergeRows(block, piece);
    if (b >= 0) bad.push(b);
    out.set(piece as never, r0 * d.cols);
    r0 += n;
  }
  return { bytes: Buffer.from(tensorBytes({ data: out })), merger, bad };
}

describe('merge in blocks of rows = merge of the whole weight', () => {
  const cases: [FloatDType, FloatDType, number, number, number[]][] = [
    ['f16', 'f16', 37, 516, [16]], // wasm, cols above a 512-column tile
    ['f32', 'f32', 29, 64, [16, 3]], // wasm, two passes
    ['bf16', 'f32', 23, 12, [8]], // wasm, a widening cast
    ['f32', 'f16', 19, 40, [5]], // wasm, a narrowing cast: most elements in the residual
    ['f16', 'f16', 21, 13, [4]], // cols not a multiple of 4: the TypeScript loop
    ['f64', 'f64', 17, 20, [16]], // f64: the TypeScript loop
  ];
  for (const [inDtype, outDtype, rows, cols, ranks] of cases) {
    for (const wasm of [true, false]) {
      it(`${inDtype} -> ${outDtype} [${rows}, ${cols}] rank ${ranks.join('+')}${wasm ? '' : ' (TypeScript loop)'}: blocks of 1, 3, 7, 2+5 rows`, () => {
        mergeWasmSwitch.enabled = wasm;
        const W = weight(inDtype, rows, cols);
        const before = Buffer.from(tensorBytes(W));
        const d = delta(rows, cols, ranks);
        const whole = mergeLowRank(W, d, outDtype, { captureResidual: true });
        const wholeBytes = Buffer.from(tensorBytes(whole.merged));
        for (const sizes of [[1], [3], [7], [2, 5], [rows]]) {
          const { bytes, merger, bad } = mergeInBlocks(W, d, outDtype, sizes);
          expect(bad).toEqual([]);
          expect(bytes.equals(wholeBytes), `blocks ${sizes}`).toBe(true);
          const r = merger.residual();
          expect(r).toEqual(whole.residual);
          // ascending positions, as the file format requires
          expect(r.indices.every((v, i) => i === 0 || v > r.indices[i - 1])).toBe(true);
          const data = DTYPES[outDtype].view(new Uint8Array(bytes).buffer, 0, rows * cols);
          const merged = { dtype: outDtype, shape: [rows, cols], data } as Tensor;
          const back = unmergeLowRank(merged as Tensor, d, inDtype, r);
          expect(Buffer.from(tensorBytes(back)).equals(before)).toBe(true);
        }
        expect(Buffer.from(tensorBytes(W)).equals(before)).toBe(true); // input untouched
      });
    }
  }

  it('reports the first NaN/Inf row of the weight from the block that holds it, and merges the other blocks', () => {
    const rows = 12;
    const cols = 8;
    const W = weight('f16', rows, cols);
    const d = delta(rows, cols, [4], 1);
    d.coef.fill(0);
    d.coef[9 * 4] = 1e6; // row 9 overflows f16 (max 65504) wherever the basis is not tiny
    d.coef[10 * 4] = -1e6;
    const whole = mergeLowRank(W, d, 'f16');
    expect(whole.firstNonFiniteRow).toBe(9);
    const { bytes, merger, bad } = mergeInBlocks(W, d, 'f16', [4]);
    expect(bad).toEqual([9]); // rows 8-11 are one block: its first bad row
    expect(merger.firstNonFiniteRow).toBe(9);
    expect(bytes.equals(Buffer.from(tensorBytes(whole.merged)))).toBe(true);
    // rows 0-8: the weight itself (zero delta), to the bit
    expect(
      bytes.subarray(0, 9 * cols * 2).equals(Buffer.from(tensorBytes(W)).subarray(0, 9 * cols * 2)),
    ).toBe(true);
  });

  it('refuses blocks that are not whole rows or run past the weight, and a residual before the end', () => {
    const d = delta(4, 8, [4]);
    const m = new LowRankMerger(d, 'f32', 'f32', { captureResidual: true });
    expect(() => m.mergeRows(new Float32Array(12), new Float32Array(12))).toThrow(/whole rows/);
    expect(() => m.mergeRows(new Float32Array(8), new Float32Array(16))).toThrow(/whole rows/);
    m.mergeRows(new Float32Array(24), new Float32Array(24));
    expect(() => m.residual()).toThrow(/3 of 4 done/);
    expect(() => m.mergeRows(new Float32Array(16), new Float32Array(16))).toThrow(/1 rows left/);
  });

  it('a weight with no columns merges to an empty tensor and an empty residual', () => {
    const W = f32([3, 0], []);
    const r = mergeLowRank(W, zeroLowRankDelta(3, 0), 'f32', { captureResidual: true });
    expect(r.merged.shape).toEqual([3, 0]);
    expect(r.merged.data.length).toBe(0);
    expect(r.residual!.indices.length).toBe(0);
    expect(r.firstNonFiniteRow).toBe(-1);
  });
});
