import { afterEach, describe, expect, it } from 'vitest';
import { castFloat, type FloatDType } from '../convert.js';
import { fromBf16Bits, fromF16Bits, toF16Bits } from '../float16.js';
import { createRng } from '../random.js';
import { f32, type Tensor, tensor, tensorBytes } from '../tensor.js';
import { concatLowRank, type LowRankDelta, lowRankDelta } from './delta.js';
import { mergeLowRank, unmergeLowRank } from './merge.js';
import { canMergeWithWasm, mergeWasmSwitch } from './merge-wasm.js';

// The WebAssembly merge kernel against the TypeScript loop it must equal bit for bit (merged
// bytes, residual positions and bits), over dtype pairs, ranks (passes of 4, 8, 16 and several
// passes), tiles (cols above 512) and values that stress the single rounding.

afterEach(() => {
  mergeWasmSwitch.enabled = true;
});

const rng = createRng(2024);

/** Weights with hard cases mixed in: f16/bf16 midpoints, subnormals, zeros of both signs. */
function hardWeight(dtype: FloatDType, rows: number, cols: number, std: number): Tensor {
  const v = rng.normalArray(rows * cols, 0, std, 'f32');
  for (let i = 0; i < v.length; i += 7) {
    const h = (i * 2654435761) >>> 0;
    switch (h % 6) {
      case 0:
        v[i] = (fromF16Bits(h & 0x7bff) + fromF16Bits((h & 0x7bff) + 1)) / 2;
        break;
      case 1:
        v[i] = (fromBf16Bits(h & 0x3fff) + fromBf16Bits((h & 0x3fff) + 1)) / 2;
        break;
      case 2:
        v[i] = fromF16Bits(h & 0x3ff); // f16 subnormal
        break;
      case 3:
        v[i] = (h & 1 ? -1 : 1) * 0;
        break;
      case 4:
        v[i] = 2 ** -130 * (h & 0xff); // f32 subnormal
        break;
    }
  }
  return castFloat(f32([rows, cols], v), dtype);
}

function delta(rows: number, cols: number, ranks: number[], std: number): LowRankDelta {
  return concatLowRank(
    ranks.map((r) =>
      lowRankDelta({
        A: f32([r, cols], rng.normalArray(r * cols, 0, std, 'f32')),
        B: f32([rows, r], rng.normalArray(rows * r, 0, std, 'f32')),
        scaling: 1.7,
      }),
    ),
  );
}

function both(W: Tensor, d: LowRankDelta, outDtype: FloatDType, capture: boolean) {
  mergeWasmSwitch.enabled = true;
  const fast = mergeLowRank(W, d, outDtype, { captureResidual: capture });
  mergeWasmSwitch.enabled = false;
  const ref = mergeLowRank(W, d, outDtype, { captureResidual: capture });
  mergeWasmSwitch.enabled = true;
  return { fast, ref };
}

describe.skipIf(!canMergeWithWasm('f32', 'f32', 4))(
  'merge: WebAssembly kernel = TypeScript loop',
  () => {
    const dtypes: FloatDType[] = ['f32', 'f16', 'bf16'];
    for (const inDtype of dtypes) {
      for (const outDtype of dtypes) {
        it(`${inDtype} -> ${outDtype}, ranks 3, 8, 16, 16+3, cols 4 .. 1036`, () => {
          for (const [rows, cols, ranks] of [
            [5, 4, [3]],
            [9, 520, [8]],
            [7, 1036, [16]],
            [6, 644, [16, 3]],
          ] as [number, number, number[]][]) {
            const W = hardWeight(inDtype, rows, cols, 0.05);
            const d = delta(rows, cols, ranks, 0.2); // large: the unmerge misses often
            const { fast, ref } = both(W, d, outDtype, true);
            expect(Buffer.compare(tensorBytes(fast.merged), tensorBytes(ref.merged))).toBe(0);
            expect(fast.firstNonFiniteRow).toBe(-1);
            expect(fast.residual!.indices).toEqual(ref.residual!.indices);
            expect(fast.residual!.bits).toEqual(ref.residual!.bits);
            expect(fast.residual!.checksum).toBe(ref.residual!.checksum);
            if (inDtype === outDtype) expect(ref.residual!.indices.length).toBeGreaterThan(0);
            // and it restores the original exactly
            const back = unmergeLowRank(fast.merged, d, inDtype, fast.residual);
            expect(Buffer.compare(tensorBytes(back), tensorBytes(W))).toBe(0);
          }
        });
      }
    }

    it('tiny deltas near f16 midpoints and overflow to Inf: same bits, NaN/Inf reported by the reference', () => {
      const W = hardWeight('f16', 8, 16, 1000);
      const d = delta(8, 16, [4], 0.001);
      const { fast, ref } = both(W, d, 'f16', false);
      expect(Buffer.compare(tensorBytes(fast.merged), tensorBytes(ref.merged))).toBe(0);
      const big = tensor('f16', [1, 4], Uint16Array.of(toF16Bits(65504), 0, 0, 0));
      const up = lowRankDelta({ A: f32([1, 4], [1, 0, 0, 0]), B: f32([1, 1], [100]), scaling: 1 });
      const r = both(big, up, 'f16', true);
      expect(r.fast.firstNonFiniteRow).toBe(0);
      expect(Buffer.compare(tensorBytes(r.fast.merged), tensorBytes(r.ref.merged))).toBe(0);
    });
  },
);
