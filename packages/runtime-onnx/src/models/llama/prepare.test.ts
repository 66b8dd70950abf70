import { f16BitsToF32Bits, tensor } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { seededRandom } from '../../test-utils/random.js';
import { widenF32 } from './prepare.js';

/** Every 16-bit pattern once (NaNs, infinities, subnormals, both zeros), in a shuffled order. */
function allPatterns(n: number): Uint16Array {
  const rand = seededRandom(11);
  const bits = Uint16Array.from({ length: n }, (_, i) => i % 65536);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [bits[i], bits[j]] = [bits[j], bits[i]];
  }
  return bits;
}

/** Index of the first element whose f32 bits differ from `expected` (NaN payloads aside: JS may canonicalize them), or -1. */
function firstDifference(a: Float32Array, expected: Uint32Array): number {
  const ab = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const nanBits = (b: number) => (b & 0x7fffffff) > 0x7f800000;
  for (let i = 0; i < a.length; i++) {
    if (nanBits(expected[i]) ? !Number.isNaN(a[i]) : ab[i] !== expected[i]) return i;
  }
  return a.length === expected.length ? -1 : a.length;
}

describe('widenF32', () => {
  // 67591 elements (not a multiple of a SIMD width) cover all 65536 patterns.
  const n = 257 * 263;
  const bits = allPatterns(n);

  it('bf16: the upper half of the f32 bits, written into the given buffer', () => {
    const out = new Float32Array(n + 8).subarray(4, 4 + n);
    const got = widenF32(tensor('bf16', [257, 263], bits), out);
    expect(got).toBe(out);
    expect(
      firstDifference(
        got,
        Uint32Array.from(bits, (b) => (b << 16) >>> 0),
      ),
    ).toBe(-1);
  });

  it('f16: exact per IEEE 754 (subnormals, infinities, NaNs)', () => {
    // Expected bits from the scalar definition, not the SIMD kernel under test.
    const expected = Uint32Array.from(bits, (h) => f16BitsToF32Bits(h) >>> 0);
    expect(firstDifference(widenF32(tensor('f16', [257, 263], bits)), expected)).toBe(-1);
    expect(
      new Float32Array(
        widenF32(tensor('f16', [4], Uint16Array.of(0x3c00, 0xc000, 0x0001, 0x7bff))),
      ),
    ).toEqual(Float32Array.of(1, -2, 2 ** -24, 65504));
  });

  it('f32: the very same array, no copy', () => {
    const data = Float32Array.from(bits, (b) => b / 7 - 3000);
    expect(widenF32(tensor('f32', [257, 263], data))).toBe(data);
  });
});
