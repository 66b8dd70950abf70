import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { castFloat, type FloatDType, toFloat64Array } from '../convert.js';
import { fromF16Bits, toF16Bits } from '../float16.js';
import { createRng } from '../random.js';
import { readSafetensors } from '../safetensors/reader.js';
import { writeSafetensors } from '../safetensors/writer.js';
import { f32, type Tensor, tensor, tensorBytes } from '../tensor.js';
import { parseLoraConfig } from './config.js';
import type { LoraFactors } from './delta.js';
import {
  mergeWeight,
  mergeWeightExact,
  residualByteSize,
  residualFromTensors,
  residualToTensors,
  unmergeWeight,
} from './merge.js';
import { loraScaling } from './scaling.js';

const rng = createRng(11);
const dir = mkdtempSync(join(tmpdir(), 'lora-merge-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function randomWeight(dtype: FloatDType, rows: number, cols: number, std = 0.02): Tensor {
  return castFloat(f32([rows, cols], rng.normalArray(rows * cols, 0, std, 'f32')), dtype);
}

function randomFactors(
  inF: number,
  outF: number,
  r: number,
  scaling: number,
  std = 0.02,
  fanInFanOut = false,
): LoraFactors {
  return {
    A: f32([r, inF], rng.normalArray(r * inF, 0, std, 'f32')),
    B: f32([outF, r], rng.normalArray(outF * r, 0, std, 'f32')),
    scaling,
    fanInFanOut,
  };
}

/** A term whose ΔW is exactly `values` as [rows, cols]: B holds the values, A is the identity. */
function exactDelta(values: number[], rows = 1): LoraFactors {
  const cols = values.length / rows;
  // rank = cols: B [rows, cols] holds the values, A [cols, cols] is the identity.
  const A = new Float32Array(cols * cols);
  for (let k = 0; k < cols; k++) A[k * cols + k] = 1;
  return { A: f32([cols, cols], A), B: f32([rows, cols], values), scaling: 1 };
}

/** Byte equality without vitest's element-by-element diff machinery (slow on big arrays). */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}

/** Unit roundoff (half an ulp of 1) of each dtype. */
const UNIT_ROUNDOFF: Record<FloatDType, number> = {
  f64: 2 ** -53,
  f32: 2 ** -24,
  f16: 2 ** -11,
  bf16: 2 ** -8,
};

describe('merged forward equals unmerged forward', () => {
  // y_merged = x W'^T against the float64 reference y = x W^T + s (x A^T) B^T.
  // W' = round(W + dW) elementwise, |W'_oi - (W + dW)_oi| <= u |W'_oi| (u = unit roundoff;
  // we use u * |W'| * (1 + u), which also covers the bound in terms of the rounded value), so
  // |y_merged - y| <= sum_i |x_i| |W'_oi| u (1 + u) + float64 summation noise (1e-12 relative).
  for (const dtype of ['f32', 'f16', 'bf16'] as const) {
    it(`${dtype}, 48x64, r = 4, n = 5 rows of input`, () => {
      const [outF, inF, r, n] = [48, 64, 4, 5];
      const W = randomWeight(dtype, outF, inF);
      const f = randomFactors(inF, outF, r, 2);
      const merged = mergeWeight(W, [f]);
      const w = toFloat64Array(W);
      const wm = toFloat64Array(merged);
      const a = toFloat64Array(f.A);
      const b = toFloat64Array(f.B);
      const x = rng.normalArray(n * inF);
      const u = UNIT_ROUNDOFF[dtype];
      for (let t = 0; t < n; t++) {
        // xa = x A^T: [r]
        const xa = new Float64Array(r);
        for (let k = 0; k < r; k++)
          for (let i = 0; i < inF; i++) xa[k] += x[t * inF + i] * a[k * inF + i];
        for (let o = 0; o < outF; o++) {
          let ref = 0;
          let got = 0;
          let bound = 0;
          for (let i = 0; i < inF; i++) {
            ref += x[t * inF + i] * w[o * inF + i];
            got += x[t * inF + i] * wm[o * inF + i];
            bound += Math.abs(x[t * inF + i] * wm[o * inF + i]);
          }
          for (let k = 0; k < r; k++) ref += f.scaling * xa[k] * b[o * r + k];
          expect(Math.abs(got - ref)).toBeLessThanOrEqual(
            bound * u * (1 + u) + 1e-12 * (bound + Math.abs(ref)),
          );
        }
      }
    });
  }

  it('fan_in_fan_out: a [in, out] weight gets the transposed delta', () => {
    const [inF, outF, r] = [6, 4, 2];
    const Wt = randomWeight('f32', inF, outF); // stored [in, out]
    const f = randomFactors(inF, outF, r, 1.5, 0.5, true);
    const merged = toFloat64Array(mergeWeight(Wt, [f]));
    const w = toFloat64Array(Wt);
    const a = toFloat64Array(f.A);
    const b = toFloat64Array(f.B);
    for (let i = 0; i < inF; i++) {
      for (let o = 0; o < outF; o++) {
        let d = 0;
        for (let k = 0; k < r; k++) d += b[o * r + k] * a[k * inF + i];
        expect(merged[i * outF + o]).toBe(Math.fround(w[i * outF + o] + 1.5 * d));
      }
    }
    expect(() => mergeWeight(Wt, [{ ...f, fanInFanOut: false }])).toThrow(/set fan_in_fan_out/);
  });

  it('several adapters are summed before ONE rounding', () => {
    // f16 1.0 has an ulp of 2^-10; each delta is below half an ulp, their sum is above it.
    const W = tensor('f16', [1, 1], Uint16Array.of(toF16Bits(1)));
    const d = exactDelta([0.0003]);
    expect(fromF16Bits((mergeWeight(W, [d]).data as Uint16Array)[0])).toBe(1);
    expect(fromF16Bits((mergeWeight(W, [d, d]).data as Uint16Array)[0])).toBe(1 + 2 ** -10);
  });

  it('refuses NaN/Inf results unless allowed, and never touches the input', () => {
    const W = tensor('f16', [1, 2], Uint16Array.of(toF16Bits(60000), toF16Bits(1)));
    const before = Uint8Array.from(tensorBytes(W));
    const d = exactDelta([10000, 0]);
    expect(() => mergeWeight(W, [d], { name: 'h.0.attn.c_attn.weight' })).toThrow(
      /h\.0\.attn\.c_attn\.weight.*\[0, 0\].*not finite/,
    );
    expect((mergeWeight(W, [d], { allowNonFinite: true }).data as Uint16Array)[0]).toBe(0x7c00);
    expect(sameBytes(tensorBytes(W), before)).toBe(true);
  });
});

describe('exact unmerge', () => {
  const shapes: [number, number][] = [
    [7, 13],
    [256, 512],
  ];
  for (const dtype of ['f32', 'f16', 'bf16', 'f64'] as const) {
    for (const [outF, inF] of shapes) {
      it(`${dtype} ${outF}x${inF}: unmerge(merge(W)) has the original bytes`, () => {
        const W = randomWeight(dtype, outF, inF);
        const original = Uint8Array.from(tensorBytes(W));
        // A large delta (same size as W) so that plain unmerge misses often.
        const terms = [randomFactors(inF, outF, 8, 2, 0.1), randomFactors(inF, outF, 4, 0.5, 0.1)];
        const { merged, residual } = mergeWeightExact(W, terms);
        expect(sameBytes(tensorBytes(merged), tensorBytes(mergeWeight(W, terms)))).toBe(true);
        const restored = unmergeWeight(merged, terms, residual);
        expect(restored.dtype).toBe(dtype);
        expect(sameBytes(tensorBytes(restored), original)).toBe(true);

        // The residual holds exactly the positions where plain unmerge is wrong.
        const plain = unmergeWeight(merged, terms);
        const plainBytes = tensorBytes(plain);
        const size = dtype === 'f64' ? 8 : dtype === 'f32' ? 4 : 2;
        let wrong = 0;
        for (let i = 0; i < outF * inF; i++) {
          let same = true;
          for (let b = 0; b < size; b++)
            same &&= plainBytes[i * size + b] === original[i * size + b];
          if (!same) wrong++;
        }
        expect(residual.indices.length).toBe(wrong);
        if (dtype !== 'f64' && outF * inF > 1000) expect(wrong).toBeGreaterThan(0);
        expect(residualByteSize(residual)).toBe(wrong * (4 + size));
      });
    }
  }

  it('fan_in_fan_out and ranks above 16 are exact too', () => {
    const W = randomWeight('bf16', 32, 24); // [in, out]
    const terms = [randomFactors(32, 24, 4, 4, 0.1, true), randomFactors(32, 24, 19, 1, 0.2, true)];
    const { merged, residual } = mergeWeightExact(W, terms);
    expect(sameBytes(tensorBytes(unmergeWeight(merged, terms, residual)), tensorBytes(W))).toBe(
      true,
    );
  });

  it('with allowNonFinite, NaN payloads and infinities in W come back bit for bit', () => {
    // f16: a signalling-style NaN with payload 1, -Inf, +Inf, and ordinary values.
    const W = tensor(
      'f16',
      [2, 3],
      Uint16Array.of(0x7c01, 0xfc00, 0x7c00, toF16Bits(0.5), toF16Bits(-2), toF16Bits(3)),
    );
    const terms = [exactDelta([0.25, 1, -1, 0.125, 0.5, -0.75], 2)];
    const { merged, residual } = mergeWeightExact(W, terms, { allowNonFinite: true });
    expect(sameBytes(tensorBytes(unmergeWeight(merged, terms, residual)), tensorBytes(W))).toBe(
      true,
    );
    expect(residual.indices[0]).toBe(0); // the NaN payload is not reproduced by arithmetic
  });

  it('detects a wrong adapter or weight instead of returning wrong bytes', () => {
    const W = randomWeight('f16', 16, 16);
    const terms = [randomFactors(16, 16, 2, 1, 0.2)];
    const { merged, residual } = mergeWeightExact(W, terms);
    const other = [{ ...terms[0], scaling: 1.01 }];
    expect(() => unmergeWeight(merged, other, residual, { name: 'w' })).toThrow(
      /LORA_UNMERGE_MISMATCH|does not match/,
    );
    // The residual depends only on the merged VALUES: the same values stored wider restore W too.
    const wider = unmergeWeight(castFloat(merged, 'f32'), terms, residual);
    expect(sameBytes(tensorBytes(wider), tensorBytes(W))).toBe(true);
    expect(() => unmergeWeight(merged, terms, { ...residual, dtype: 'f32' })).toThrow(
      /residual is for a f32/,
    );
  });

  it('survives a safetensors round trip', async () => {
    const W = randomWeight('f16', 64, 48);
    const terms = [randomFactors(48, 64, 8, 2, 0.1)];
    const { merged, residual } = mergeWeightExact(W, terms);
    const t = residualToTensors(residual);
    const path = join(dir, 'residual.safetensors');
    await writeSafetensors(
      path,
      new Map<string, Tensor>([
        ['w.unmerge_indices', t.indices],
        ['w.unmerge_bits', t.bits],
        ['w.unmerge_info', t.info],
      ]),
    );
    const back = (await readSafetensors(path)).tensors;
    const r2 = residualFromTensors(
      {
        indices: back.get('w.unmerge_indices')!,
        bits: back.get('w.unmerge_bits')!,
        info: back.get('w.unmerge_info')!,
      },
      path,
    );
    expect(r2).toEqual(residual);
    expect(sameBytes(tensorBytes(unmergeWeight(merged, terms, r2)), tensorBytes(W))).toBe(true);
  });

  it('rejects a damaged residual', () => {
    const W = randomWeight('f32', 8, 8);
    const { residual } = mergeWeightExact(W, [randomFactors(8, 8, 2, 1, 0.3)]);
    const t = residualToTensors(residual);
    expect(() =>
      residualFromTensors(
        { ...t, info: tensor('u32', [4], Uint32Array.of(9, 2, 0, 0)) },
        'x.safetensors',
      ),
    ).toThrow(/x\.safetensors.*format/);
    expect(() =>
      residualFromTensors({ ...t, bits: castFloat(f32([t.indices.shape[0]]), 'f16') }, 'x'),
    ).toThrow(/bits must be u32/);
  });
});

const FIXTURES = new URL('../../../../../shared/fixtures/peft/', import.meta.url);
const haveFixtures = existsSync(FIXTURES);
if (!haveFixtures)
  console.warn(
    `[merge.test] PEFT fixtures not found at ${FIXTURES.pathname}: real-adapter merge tests skipped.`,
  );

describe.skipIf(!haveFixtures)('merging real PEFT adapters into random base weights', () => {
  // GPT-2 Conv1D c_attn is stored [in 768, out 2304] (fan_in_fan_out); open-calm's fused
  // query_key_value is a Linear [6144, 2048] with f16 A/B of rank 1 and scaling 32: its first
  // 512 output rows (B[:512]) keep the test fast; each output row is merged independently.
  const cases = [
    {
      dir: 'gpt2-causal-cattn-cproj',
      module: 'transformer.h.0.attn.c_attn',
      fanInFanOut: true,
      baseDtype: 'f32' as const,
      rows: 2304,
    },
    {
      dir: 'open-calm-1b-fp16-r1',
      module: 'gpt_neox.layers.0.attention.query_key_value',
      fanInFanOut: false,
      baseDtype: 'f16' as const,
      rows: 512,
    },
  ];
  for (const c of cases) {
    it(`${c.dir}: ${c.module} merges, matches the unmerged forward and unmerges exactly`, async () => {
      const dir = new URL(`${c.dir}/`, FIXTURES);
      const config = parseLoraConfig(
        JSON.parse(readFileSync(new URL('adapter_config.json', dir), 'utf8')),
        c.dir,
      ).config;
      const { tensors } = await readSafetensors(
        fileURLToPath(new URL('adapter_model.safetensors', dir)),
      );
      const A = tensors.get(`base_model.model.${c.module}.lora_A.weight`)!;
      const fullB = tensors.get(`base_model.model.${c.module}.lora_B.weight`)!;
      const [r, inF] = A.shape;
      const B = tensor(fullB.dtype, [c.rows, r], fullB.data.slice(0, c.rows * r));
      const outF = B.shape[0];
      expect(config.fan_in_fan_out).toBe(c.fanInFanOut);
      const s = loraScaling(config, c.module);
      const W = randomWeight(c.baseDtype, c.fanInFanOut ? inF : outF, c.fanInFanOut ? outF : inF);
      const terms = [{ A, B, scaling: s, fanInFanOut: config.fan_in_fan_out }];
      const { merged, residual } = mergeWeightExact(W, terms);
      expect(sameBytes(tensorBytes(unmergeWeight(merged, terms, residual)), tensorBytes(W))).toBe(
        true,
      );

      // One input row: x W'^T (merged) against x W^T + s (x A^T) B^T in float64.
      const x = rng.normalArray(inF);
      const w = toFloat64Array(W);
      const wm = toFloat64Array(merged);
      const a = toFloat64Array(A);
      const b = toFloat64Array(B);
      const xa = new Float64Array(r);
      for (let k = 0; k < r; k++) for (let i = 0; i < inF; i++) xa[k] += x[i] * a[k * inF + i];
      const at = (m: Float64Array, o: number, i: number) =>
        c.fanInFanOut ? m[i * outF + o] : m[o * inF + i];
      const u = UNIT_ROUNDOFF[c.baseDtype];
      for (let o = 0; o < outF; o += 37) {
        let ref = 0;
        let got = 0;
        let bound = 0;
        for (let i = 0; i < inF; i++) {
          ref += x[i] * at(w, o, i);
          got += x[i] * at(wm, o, i);
          bound += Math.abs(x[i] * at(wm, o, i));
        }
        for (let k = 0; k < r; k++) ref += s * xa[k] * b[o * r + k];
        expect(Math.abs(got - ref)).toBeLessThanOrEqual(
          bound * u * (1 + u) + 1e-12 * (bound + Math.abs(ref)),
        );
      }
    });
  }
});
