import { createRng } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { float64DecisionPoint } from './blockwise-kernel.js';
import {
  dequantizeBlockwise,
  quantizeBlockwise,
  quantizeBlockwiseRef,
  quantizeValueRef,
} from './blockwise.js';
import { FP4_CODE, FP4_THRESHOLDS, NF4_CODE, NF4_THRESHOLDS } from './codebooks.js';
import { QuantError } from './errors.js';
import { BNB4_BLOCK_SIZES, type Bnb4Format } from './formats.js';

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');
const bitsOf = (t: Float32Array) =>
  [...new Uint32Array(t.buffer, t.byteOffset, t.length)].map((b) =>
    b.toString(16).padStart(8, '0'),
  );
const normals = (n: number, seed: number) => createRng(seed).normalArray(n, 0, 1, 'f32');

describe('code tables (bit for bit, from the reference hex)', () => {
  it('NF4', () => {
    expect(bitsOf(NF4_CODE)).toEqual([
      'bf800000',
      'bf3239b1',
      'bf066b30',
      'beca32a0',
      'be91a24d',
      'be3d353f',
      'bdba7871',
      '00000000',
      '3da2faff',
      '3e24cae3',
      '3e7c04dd',
      '3ead033a',
      '3ee1a4b8',
      '3f1007ab',
      '3f3913b3',
      '3f800000',
    ]);
    // The decimal values printed by bitsandbytes round to the same float32.
    expect(NF4_CODE[1]).toBe(Math.fround(-0.6961928009986877));
    expect(NF4_CODE[8]).toBe(Math.fround(0.07958029955625534));
  });

  it('FP4 = [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, ...] / 12 with -0 at code 8', () => {
    const magnitudes = [0, 0.0625, 8, 12, 4, 6, 2, 3];
    for (let c = 0; c < 8; c++) {
      expect(FP4_CODE[c]).toBe(Math.fround(magnitudes[c] / 12));
      expect(FP4_CODE[c + 8]).toBe(-Math.fround(magnitudes[c] / 12));
    }
    expect(Object.is(FP4_CODE[8], -0)).toBe(true);
  });

  it('thresholds: NF4 = the kernel literals (float32 midpoints), FP4 = the kernel literals', () => {
    // The bitsandbytes CUDA kernel's NF4 pivots, as decimal literals compiled to float.
    const kernel = [
      -0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
      -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
      0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
      0.5016634166240692, 0.6427869200706482, 0.8614784181118011,
    ];
    expect([...NF4_THRESHOLDS]).toEqual(kernel.map(Math.fround));
    expect([...FP4_THRESHOLDS]).toEqual(
      [0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333].map(
        Math.fround,
      ),
    );
  });
});

describe('published vector [1, -1, 0, 0.5, 0.3], block 64', () => {
  const v = new Float32Array([1, -1, 0, 0.5, 0.3]);
  it('NF4 -> f0 7c b7, absmax [1]', () => {
    const q = quantizeBlockwise(v, { format: 'nf4', blockSize: 64 });
    expect(hex(q.packed)).toBe('f07cb7');
    expect([...q.absmax]).toEqual([1]);
  });
  it('FP4 -> 3b 05 40', () => {
    const q = quantizeBlockwise(v, { format: 'fp4', blockSize: 64 });
    expect(hex(q.packed)).toBe('3b0540');
  });
});

describe('decision rules by hand', () => {
  it('NF4: exactly on a threshold goes to the lower code, one float32 step above to the upper', () => {
    for (let k = 0; k < 15; k++) {
      const t = NF4_THRESHOLDS[k];
      const up = new Float32Array([t]);
      new Uint32Array(up.buffer)[0] += t > 0 ? 1 : -1; // next float32 towards +inf
      expect(quantizeValueRef('nf4', t)).toBe(k);
      expect(quantizeValueRef('nf4', up[0])).toBe(k + 1);
    }
  });

  it('FP4: ties go to the smaller magnitude on both sides; -0 gives code 0, a tiny negative code 8', () => {
    expect(quantizeValueRef('fp4', FP4_THRESHOLDS[0])).toBe(0);
    expect(quantizeValueRef('fp4', -FP4_THRESHOLDS[0])).toBe(8);
    expect(quantizeValueRef('fp4', FP4_THRESHOLDS[6])).toBe(2); // 8/12
    expect(quantizeValueRef('fp4', -FP4_THRESHOLDS[6])).toBe(0b1010);
    expect(quantizeValueRef('fp4', -0)).toBe(0);
    expect(quantizeValueRef('fp4', -1e-30)).toBe(8);
    expect(quantizeValueRef('fp4', 1)).toBe(3);
    expect(quantizeValueRef('fp4', 0.5)).toBe(5);
  });

  it('fast path matches the reference on every threshold, its neighbours, zeros and tiny values', () => {
    const specials: number[] = [0, -0, 1e-30, -1e-30, 1e-45, -1e-45, 1, -1, 0.5, -0.5];
    const neighbours = (t: number) => {
      const f = new Float32Array([t, t, t]);
      const u = new Uint32Array(f.buffer);
      u[0] -= 1;
      u[2] += 1;
      return [...f];
    };
    for (const t of [...NF4_THRESHOLDS, ...FP4_THRESHOLDS])
      specials.push(...neighbours(t), ...neighbours(-t));
    for (const format of ['nf4', 'fp4'] as Bnb4Format[]) {
      // One block with absmax exactly 1 (so y = x): each value is decided exactly as written.
      const values = new Float32Array([1, ...specials]);
      const fast = quantizeBlockwise(values, { format, blockSize: 4096 });
      const ref = quantizeBlockwiseRef(values, { format, blockSize: 4096 });
      expect(hex(fast.packed)).toBe(hex(ref.packed));
    }
  });
});

describe.each(['nf4', 'fp4'] as Bnb4Format[])('%s (ggml-style checks)', (format) => {
  it('reference and fast quantize give identical bytes (normal data, odd length, partial block)', () => {
    const x = normals(64 * 37 + 13, 1);
    for (const blockSize of [32, 64, 256]) {
      const fast = quantizeBlockwise(x, { format, blockSize });
      const ref = quantizeBlockwiseRef(x, { format, blockSize });
      expect(hex(fast.packed)).toBe(hex(ref.packed));
      expect([...fast.absmax]).toEqual([...ref.absmax]);
    }
  });

  it('round trip: every value decodes to the code nearest to it (within half the widest gap times absmax)', () => {
    const x = normals(10_001, 2);
    const q = quantizeBlockwise(x, { format, blockSize: 64 });
    const y = dequantizeBlockwise(q);
    let sse = 0;
    let sss = 0;
    for (let i = 0; i < x.length; i++) {
      const absmax = q.absmax[Math.floor(i / 64)];
      // Widest gap between neighbouring codes: NF4 0.277 (-1 to -0.696), FP4 1/3 (8/12 to 1).
      const bound =
        (format === 'nf4' ? 0.5 * (1 - 0.6961928) : 0.5 * (1 / 3)) * absmax * (1 + 1e-6);
      expect(Math.abs(x[i] - y[i])).toBeLessThanOrEqual(bound);
      sse += (x[i] - y[i]) ** 2;
      sss += x[i] ** 2;
    }
    // RMSE bound for unit normals at block 64 (QLoRA-scale errors: NF4 ~0.1, FP4 ~0.11).
    expect(Math.sqrt(sse / x.length)).toBeLessThan(format === 'nf4' ? 0.11 : 0.125);
    expect(10 * Math.log10(sss / sse)).toBeGreaterThan(18);
  });

  it('dot-product error: <x, w> vs <x, deq(w)> stays within a few RMSE * |x|', () => {
    const w = normals(4096, 3);
    const x = normals(4096, 4);
    const y = dequantizeBlockwise(quantizeBlockwise(w, { format, blockSize: 64 }));
    let exact = 0;
    let approx = 0;
    let xNorm = 0;
    for (let i = 0; i < w.length; i++) {
      exact += x[i] * w[i];
      approx += x[i] * y[i];
      xNorm += x[i] * x[i];
    }
    // Errors are roughly independent of x: |error| ~ rmse * |x|; allow 4 sigma.
    expect(Math.abs(exact - approx)).toBeLessThan(4 * 0.12 * Math.sqrt(xNorm));
  });

  it('every allowed block size round-trips and the last partial block covers only its values', () => {
    for (const blockSize of BNB4_BLOCK_SIZES) {
      const n = blockSize * 2 + 3;
      const x = normals(n, blockSize);
      x[n - 1] = 0.25; // last partial block: 3 values; absmax from them only
      x[n - 2] = -0.125;
      x[n - 3] = 0.0625;
      const q = quantizeBlockwise(x, { format, blockSize });
      expect(q.absmax.length).toBe(3);
      expect(q.absmax[2]).toBe(0.25);
      expect(q.packed.length).toBe(Math.ceil(n / 2));
      const y = dequantizeBlockwise(q);
      expect(y[n - 1]).toBe(0.25); // 1.0 code times absmax
    }
  });

  it('an all-zero block writes 0x00 bytes and absmax 0 (CUDA), and decodes to zeros', () => {
    const x = new Float32Array(64 + 5);
    x.fill(0.5, 64); // second block non-zero
    const q = quantizeBlockwise(x, { format, blockSize: 64 });
    expect(hex(q.packed.subarray(0, 32))).toBe('00'.repeat(32));
    expect(q.absmax[0]).toBe(0);
    const y = dequantizeBlockwise(q);
    for (let i = 0; i < 64; i++) expect(y[i] === 0).toBe(true);
    // Odd tail in a non-zero block: padded with the code of 0.0 (NF4 7, FP4 0).
    expect(q.packed[q.packed.length - 1] & 15).toBe(format === 'nf4' ? 7 : 0);
  });

  it('odd sizes 1, 3, 63, 65, 127', () => {
    for (const n of [1, 3, 63, 65, 127]) {
      const x = normals(n, n);
      const q = quantizeBlockwise(x, { format, blockSize: 64 });
      expect(hex(q.packed)).toBe(hex(quantizeBlockwiseRef(x, { format, blockSize: 64 }).packed));
      const y = dequantizeBlockwise(q);
      expect(y.length).toBe(n);
    }
  });
});

describe('float64 twins of float32 thresholds', () => {
  it('f32(y) > t exactly when y > float64DecisionPoint(t), including ties at the midpoints', () => {
    const rng = createRng(6);
    const ts = [
      ...NF4_THRESHOLDS,
      ...FP4_THRESHOLDS,
      ...FP4_THRESHOLDS.map((t) => -t),
      0,
      -1.401298464324817e-45,
      1.401298464324817e-45,
      1,
    ];
    for (const t of ts) {
      const up = new Float32Array([t]);
      const u = new Uint32Array(up.buffer);
      if (t === 0) u[0] = 1;
      else if (t > 0) u[0]++;
      else u[0]--;
      const mid = (t + up[0]) / 2;
      const probes = [t, up[0], mid, mid + Math.abs(mid) * 1e-15, mid - Math.abs(mid) * 1e-15];
      for (let i = 0; i < 200; i++)
        probes.push(t + (rng.uniform() - 0.5) * 4 * Math.abs(up[0] - t));
      const d = float64DecisionPoint(t);
      for (const y of probes) expect([t, y, y > d]).toEqual([t, y, Math.fround(y) > t]);
    }
  });
});

describe('bad input', () => {
  it('NaN and Inf are refused with the tensor name and the first bad index', () => {
    const x = normals(200, 5);
    x[130] = Number.NaN;
    x[150] = Number.POSITIVE_INFINITY;
    expect(() =>
      quantizeBlockwise(x, { format: 'nf4', name: 'layers.0.q_proj.weight' }),
    ).toThrowError(/layers\.0\.q_proj\.weight: value NaN at flat index 130/);
    const y = normals(200, 5);
    y[7] = Number.NEGATIVE_INFINITY;
    try {
      quantizeBlockwise(y, { format: 'fp4' });
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(QuantError);
      expect((e as QuantError).code).toBe('QUANT_NON_FINITE');
      expect((e as QuantError).details.index).toBe(7);
    }
  });

  it('block sizes bitsandbytes does not allow are refused', () => {
    for (const blockSize of [16, 48, 100, 8192]) {
      expect(() =>
        quantizeBlockwise(new Float32Array(8), { format: 'nf4', blockSize }),
      ).toThrowError(/Block size .* not allowed for nf4/);
    }
  });
});
