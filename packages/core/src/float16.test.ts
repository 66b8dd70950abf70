import { describe, expect, it } from 'vitest';
import {
  bf16ToF32Array,
  f16ToF32Array,
  f32ToBf16Array,
  f32ToF16Array,
  fromBf16Bits,
  fromF16Bits,
  toBf16Bits,
  toF16Bits,
} from './float16.js';

// Independent decoder of an f16 pattern straight from the IEEE 754 definition (float64 math).
function f16Value(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant === 0 ? sign * Infinity : Number.NaN;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

// Independent encoder: exhaustive nearest search over the finite f16 values, ties to even.
const FINITE_POSITIVE: number[] = [];
for (let h = 0; h < 0x7c00; h++) FINITE_POSITIVE.push(f16Value(h));
function f16Reference(x: number): number {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  // Largest finite is 65504; values at or above 65520 (the midpoint to 2^16) overflow to Inf.
  if (a >= 65520) return sign | 0x7c00;
  let lo = 0;
  let hi = FINITE_POSITIVE.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (FINITE_POSITIVE[mid] <= a) lo = mid;
    else hi = mid;
  }
  if (FINITE_POSITIVE[hi] <= a) lo = hi;
  if (lo === FINITE_POSITIVE.length - 1) return sign | lo;
  const below = FINITE_POSITIVE[lo];
  const above = FINITE_POSITIVE[lo + 1];
  if (a - below < above - a) return sign | lo;
  if (a - below > above - a) return sign | (lo + 1);
  return sign | (lo % 2 === 0 ? lo : lo + 1);
}

const f32bits = (x: number) => new Uint32Array(new Float32Array([x]).buffer)[0];

describe('f16', () => {
  it('decodes every one of the 65536 patterns as IEEE 754 defines them', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const decoded = f16ToF32Array(all);
    for (let h = 0; h < 65536; h++) {
      const want = f16Value(h);
      if (Number.isNaN(want)) expect(Number.isNaN(decoded[h])).toBe(true);
      else expect(Object.is(decoded[h], want) || decoded[h] === want).toBe(true);
      if (want === 0) expect(Object.is(decoded[h], -0)).toBe(h === 0x8000);
    }
  });

  it('round-trips every pattern f16 -> f32 -> f16 bit-exactly, NaN payloads included', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const back = f32ToF16Array(f16ToF32Array(all));
    let mismatches = 0;
    for (let h = 0; h < 65536; h++) if (back[h] !== h) mismatches++;
    expect(mismatches).toBe(0);
  });

  it('rounds to nearest even at every midpoint between adjacent f16 values', () => {
    // For each adjacent pair (both signs), the exact midpoint and its float32 neighbours.
    const xs: number[] = [];
    for (let h = 0; h < 0x7bff; h++) {
      const mid = (f16Value(h) + f16Value(h + 1)) / 2; // exact in float32 (f16 has 11 bits)
      const m = Math.fround(mid);
      expect(m).toBe(mid);
      const below = new Float32Array(new Uint32Array([f32bits(m) - 1]).buffer)[0];
      const above = new Float32Array(new Uint32Array([f32bits(m) + 1]).buffer)[0];
      xs.push(m, below, above, -m, -below, -above);
    }
    const input = Float32Array.from(xs);
    const got = f32ToF16Array(input);
    for (let i = 0; i < input.length; i++) {
      if (got[i] !== f16Reference(input[i])) {
        throw new Error(
          `x=${input[i]}: got 0x${got[i].toString(16)}, want 0x${f16Reference(input[i]).toString(16)}`,
        );
      }
    }
  });

  it('handles overflow, underflow, signed zero, Inf and NaN', () => {
    expect(toF16Bits(65504)).toBe(0x7bff);
    expect(toF16Bits(65519.99)).toBe(0x7bff);
    expect(toF16Bits(65520)).toBe(0x7c00); // midpoint to 2^16 rounds to even = overflow
    expect(toF16Bits(1e9)).toBe(0x7c00);
    expect(toF16Bits(-Infinity)).toBe(0xfc00);
    expect(toF16Bits(-0)).toBe(0x8000);
    expect(toF16Bits(2 ** -24)).toBe(0x0001); // smallest subnormal
    expect(toF16Bits(2 ** -25)).toBe(0x0000); // exactly half of it: ties to even (0)
    expect(toF16Bits(-(2 ** -25) * 1.0000001)).toBe(0x8001);
    expect(toF16Bits(3 * 2 ** -25)).toBe(0x0002); // 1.5 subnormal units: ties to even (2)
    expect(toF16Bits(2 ** -14)).toBe(0x0400); // smallest normal
    expect(toF16Bits(1e-30)).toBe(0);
    const nan = toF16Bits(Number.NaN);
    expect(nan & 0x7c00).toBe(0x7c00);
    expect(nan & 0x3ff).not.toBe(0);
    expect(fromF16Bits(0x3c00)).toBe(1);
    expect(fromF16Bits(0xc000)).toBe(-2);
  });

  it('agrees with the exhaustive reference on random float32 values across the whole range', () => {
    const n = 20000;
    const bits = new Uint32Array(n);
    let s = 12345;
    for (let i = 0; i < n; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      // exponents concentrated around the f16 range, both signs
      const exp = 90 + (s % 60);
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      bits[i] = ((s & 0x80000000) | (exp << 23) | (s & 0x7fffff)) >>> 0;
    }
    const input = new Float32Array(bits.buffer);
    const got = f32ToF16Array(input);
    for (let i = 0; i < n; i++) expect(got[i]).toBe(f16Reference(input[i]));
  });
});

describe('bf16', () => {
  it('decodes every pattern as the top half of a float32', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const decoded = bf16ToF32Array(all);
    const asBits = new Uint32Array(decoded.buffer);
    for (let h = 0; h < 65536; h++) expect(asBits[h]).toBe((h << 16) >>> 0);
  });

  it('round-trips every pattern bit-exactly, NaNs included', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const back = f32ToBf16Array(bf16ToF32Array(all));
    for (let h = 0; h < 65536; h++) expect(back[h]).toBe(h);
  });

  it('rounds to nearest even on the 16 dropped bits', () => {
    // 1 + 2^-8 is exactly between bf16 1.0 (0x3f80) and 1.0078125 (0x3f81): ties to even -> 0x3f80.
    expect(toBf16Bits(1 + 2 ** -8)).toBe(0x3f80);
    // 1.0078125 + 2^-8 is between 0x3f81 and 0x3f82: ties to even -> 0x3f82.
    expect(toBf16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82);
    expect(toBf16Bits(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81);
    expect(toBf16Bits(-0)).toBe(0x8000);
    expect(toBf16Bits(Number.POSITIVE_INFINITY)).toBe(0x7f80);
    expect(toBf16Bits(3.4e38)).toBe(0x7f80); // rounds past the largest finite bf16
    expect(fromBf16Bits(0x4049)).toBe(3.140625);
    const nan = toBf16Bits(Number.NaN);
    expect(Number.isNaN(fromBf16Bits(nan))).toBe(true);
    // A NaN whose payload lives only in the low 16 bits must stay a NaN.
    const lowNan = new Float32Array(new Uint32Array([0x7f800001]).buffer);
    expect(Number.isNaN(bf16ToF32Array(f32ToBf16Array(lowNan))[0])).toBe(true);
  });
});

describe('array conversions', () => {
  it('match the one-value conversions for odd lengths, unaligned outputs and special values', () => {
    const values = [
      1,
      -0,
      0,
      Number.NaN,
      1e-8,
      65504,
      70000,
      -3.5,
      2 ** -24,
      Number.NEGATIVE_INFINITY,
      0.1,
    ];
    const src = Float32Array.from(values);
    const backing = new Uint16Array(values.length + 1);
    const unaligned = backing.subarray(1); // byteOffset 2: the pairwise path must not be taken
    for (const out of [new Uint16Array(values.length), unaligned]) {
      f32ToF16Array(src, out);
      expect([...out]).toEqual(values.map((v) => toF16Bits(v)));
      f32ToBf16Array(src, out);
      expect([...out]).toEqual(values.map((v) => toBf16Bits(v)));
    }
  });
});
