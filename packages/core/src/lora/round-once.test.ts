import { describe, expect, it } from 'vitest';
import { fromBf16Bits, fromF16Bits, toF16Bits } from '../float16.js';
import { createRng } from '../random.js';
import { f64ToBf16Bits, f64ToF16Bits, roundF64Array, roundF64Into } from './round-once.js';

/**
 * Reference: nearest-even rounding by search over every finite positive value of the 16-bit
 * format (decoded exactly to float64). Midpoints of neighbours are exact in float64.
 */
function referenceRounder(decode: (bits: number) => number, maxFiniteBits: number) {
  const values: number[] = [];
  for (let b = 0; b <= maxFiniteBits; b++) values.push(decode(b));
  const infBits = maxFiniteBits + 1;
  const maxValue = values[maxFiniteBits];
  const ulpAtMax = maxValue - values[maxFiniteBits - 1];
  return (x: number): number => {
    const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
    const a = Math.abs(x);
    let bits: number;
    if (a >= maxValue + ulpAtMax / 2) {
      // At or past the midpoint to the next (infinite) step: Inf (the tie goes to the even Inf).
      bits = infBits;
    } else {
      let lo = 0;
      let hi = maxFiniteBits;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (values[mid] <= a) lo = mid;
        else hi = mid - 1;
      }
      if (values[lo] === a || lo === maxFiniteBits) bits = lo;
      else {
        const midpoint = (values[lo] + values[lo + 1]) / 2;
        bits = a < midpoint ? lo : a > midpoint ? lo + 1 : lo % 2 === 0 ? lo : lo + 1;
      }
    }
    return sign | bits;
  };
}

const refF16 = referenceRounder(fromF16Bits, 0x7bff);
const refBf16 = referenceRounder(fromBf16Bits, 0x7f7f);

describe('round once from float64', () => {
  const rng = createRng(7);
  const samples: number[] = [];
  for (let i = 0; i < 4000; i++) samples.push(rng.normal() * 10 ** (rng.integer(12) - 8));
  samples.push(0, -0, 65504, 65519.99, 65520, -65520, 1e-8, 2 ** -24, 2.98e-8, 3.4e38, -1e39);

  it('f16 equals the exhaustive reference', () => {
    for (const x of samples) expect(f64ToF16Bits(x), `x = ${x}`).toBe(refF16(x));
  });

  it('bf16 equals the exhaustive reference', () => {
    for (const x of samples) expect(f64ToBf16Bits(x), `x = ${x}`).toBe(refBf16(x));
  });

  it('avoids the double-rounding trap (f64 -> f32 -> f16 gets these wrong)', () => {
    // 1 + 2^-11 is the midpoint between f16 1.0 and 1 + 2^-10. Just above it by 2^-40 the
    // correct f16 is 1 + 2^-10, but rounding to f32 first lands exactly on the midpoint and
    // ties-to-even then goes down to 1.0.
    const x = 1 + 2 ** -11 + 2 ** -40;
    expect(toF16Bits(x)).toBe(0x3c00); // the naive two-step result: wrong
    expect(f64ToF16Bits(x)).toBe(0x3c01);
    expect(refF16(x)).toBe(0x3c01);
    // Same for bf16: midpoint between 1 and 1 + 2^-7.
    const y = 1 + 2 ** -8 + 2 ** -40;
    expect(f64ToBf16Bits(y)).toBe(0x3f81);
    // Exact ties still go to even.
    expect(f64ToF16Bits(1 + 2 ** -11)).toBe(0x3c00);
    expect(f64ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02);
  });

  it('the array path (one pass, midpoint-only nudge) equals the exhaustive reference', () => {
    const xs = [...samples];
    for (let i = 0; i < 3000; i++) {
      // f16 and bf16 midpoints, normal and subnormal, with nudges either way.
      const h = rng.integer(0x7bff);
      const mid = (fromF16Bits(h) + fromF16Bits(h + 1)) / 2;
      const b = rng.integer(0x7f7f);
      const midB = (fromBf16Bits(b) + fromBf16Bits(b + 1)) / 2;
      const e = 2 ** -(30 + rng.integer(20));
      xs.push(mid, mid * (1 + e), mid * (1 - e), -mid, midB, midB * (1 + e), -midB * (1 - e));
    }
    const src = Float64Array.from(xs);
    const f16 = roundF64Array(src, 'f16');
    const bf16 = roundF64Array(src, 'bf16');
    for (let i = 0; i < xs.length; i++) {
      if (f16[i] !== refF16(xs[i])) throw new Error(`f16 x = ${xs[i]}`);
      if (bf16[i] !== refBf16(xs[i])) throw new Error(`bf16 x = ${xs[i]}`);
    }
  });

  it('reports whether every stored value is finite', () => {
    for (const dtype of ['f16', 'bf16', 'f32', 'f64'] as const) {
      const ok = roundF64Array(Float64Array.from([1, -2, 0.5]), dtype);
      expect(roundF64Into(Float64Array.from([1, -2, 0.5]), dtype, ok)).toBe(true);
      expect(roundF64Into(Float64Array.from([1, Number.NaN]), dtype, ok)).toBe(false);
    }
    const out = new Uint16Array(2);
    expect(roundF64Into(Float64Array.from([1, 70000]), 'f16', out)).toBe(false); // overflows f16
    expect(roundF64Into(Float64Array.from([1e300]), 'f32', new Float32Array(1))).toBe(false);
  });

  it('many values near midpoints', () => {
    for (let i = 0; i < 2000; i++) {
      const h = 0x0400 + rng.integer(0x7700);
      const mid = (fromF16Bits(h) + fromF16Bits(h + 1)) / 2;
      const eps = mid * 2 ** -(30 + rng.integer(20));
      for (const x of [mid - eps, mid, mid + eps]) expect(f64ToF16Bits(x)).toBe(refF16(x));
    }
  });

  it('roundF64Array gives each dtype', () => {
    const src = Float64Array.from([1 + 2 ** -11 + 2 ** -40, -2.5]);
    expect(Array.from(roundF64Array(src, 'f16'))).toEqual([0x3c01, toF16Bits(-2.5)]);
    expect(Array.from(roundF64Array(src, 'f32'))).toEqual([Math.fround(src[0]), -2.5]);
    expect(roundF64Array(src, 'f64')).toEqual(src);
  });
});
