import type { FloatDType } from '../convert.js';
import { fromBf16Bits, fromF16Bits } from '../float16.js';
import { describe, expect, it } from 'vitest';
import { FloatRows } from './float-rows.js';
import { roundF64Array } from './round-once.js';

/** Doubles that stress one-rounding: f16/bf16 midpoints nudged by tiny amounts, subnormals, overflow. */
function hardValues(): Float64Array {
  const v: number[] = [
    0, -0, 1, -1, 65504, 65519.99, 65520, 1e-8, -3e-7, 6.1e-5, 5.96e-8, 2.98e-8, 1e300, -1e300,
  ];
  let x = 12345;
  const rand = () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
  for (let i = 0; i < 3000; i++) {
    // midpoint between two adjacent f16 values (and bf16 values), then nudged
    const h = Math.floor(rand() * 0x7bff);
    const mid16 = (fromF16Bits(h) + fromF16Bits(h + 1)) / 2;
    const b = Math.floor(rand() * 0x7f7f);
    const midb = (fromBf16Bits(b) + fromBf16Bits(b + 1)) / 2;
    for (const m of [mid16, midb]) {
      v.push(m, m * (1 + 2 ** -40), m * (1 - 2 ** -40), -m * (1 + 2 ** -30), m * (1 + 2 ** -25));
    }
    v.push((rand() - 0.5) * 2 ** (Math.floor(rand() * 60) - 30));
  }
  return Float64Array.from(v);
}

describe('FloatRows.write rounds float64 once, as core roundF64Array', () => {
  for (const dtype of ['f16', 'bf16', 'f32'] as FloatDType[]) {
    it(dtype, () => {
      const values = hardValues();
      const rows = new FloatRows(values.length);
      const out =
        dtype === 'f32' ? new Float32Array(values.length) : new Uint16Array(values.length);
      rows.write(values, out, dtype, 0);
      const want = roundF64Array(values, dtype);
      expect(Array.from(out)).toEqual(Array.from(want));
    });
  }

  it('reads every f16 and bf16 bit pattern as its exact value', () => {
    const bits = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const rows = new FloatRows(65536);
    for (const [dtype, decode] of [
      ['f16', fromF16Bits],
      ['bf16', fromBf16Bits],
    ] as const) {
      const got = new Float64Array(65536);
      rows.read(bits, dtype, 0, got);
      for (let i = 0; i < 65536; i++)
        if (!Object.is(got[i], decode(i)) && !Number.isNaN(got[i]))
          expect([dtype, i, got[i]]).toEqual([dtype, i, decode(i)]);
      expect(got.filter(Number.isNaN).length).toBe(dtype === 'f16' ? 2046 : 254);
    }
  });

  it('reports overflow to Inf as not finite', () => {
    const rows = new FloatRows(2);
    expect(rows.write(Float64Array.from([1, 70000]), new Uint16Array(2), 'f16', 0)).toBe(false);
    expect(rows.write(Float64Array.from([1, 60000]), new Uint16Array(2), 'f16', 0)).toBe(true);
    expect(rows.write(Float64Array.from([1, Number.NaN]), new Uint16Array(2), 'bf16', 0)).toBe(
      false,
    );
  });
});
