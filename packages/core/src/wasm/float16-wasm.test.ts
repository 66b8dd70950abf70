import { readFileSync } from 'node:fs';
import { describe, expect, it, vi } from 'vitest';
import { compileWat } from '../../../../scripts/build-wasm.mjs';
import {
  bf16ToF32Array,
  f16BitsToF32Bits,
  f16ToF32Array,
  f32BitsToBf16Bits,
  f32BitsToF16Bits,
  f32ToBf16Array,
  f32ToF16Array,
} from '../float16.js';
import {
  FLOAT16_WASM_CHUNK,
  FLOAT16_WASM_MIN_LENGTH,
  float16Wasm,
  float16WasmBytes,
} from './float16-wasm.js';

// The array functions take the wasm path at FLOAT16_WASM_MIN_LENGTH elements and more; the
// scalar bit functions (f32BitsToF16Bits, ...) are the TypeScript reference they must equal.

/** Seeded xorshift32 stream of uint32. */
function xorshift(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

/** Random float32 bit patterns over the whole range, with extra specials mixed in. */
function randomBits(n: number, seed: number): Uint32Array {
  const next = xorshift(seed);
  const special = [
    0, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0xffffffff, 0x00000001,
    0x387fffff, 0x38800000, 0x477fefff, 0x477ff000, 0x47800000, 0x33000000, 0x33000001,
  ];
  const bits = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const r = next();
    // One in 16: a special; one in 4: an exponent near the f16 range edges; else anything.
    if ((r & 15) === 0) bits[i] = special[(r >>> 4) % special.length] ^ (r & 0x80000000);
    else if ((r & 3) === 1) bits[i] = (r & 0x807fffff) | ((101 + ((r >>> 8) % 42)) << 23);
    else bits[i] = next();
  }
  return bits;
}

function firstMismatch(a: ArrayLike<number>, b: ArrayLike<number>): string {
  if (a.length !== b.length) return `length ${a.length} vs ${b.length}`;
  for (let i = 0; i < a.length; i++)
    if (a[i] !== b[i]) return `index ${i}: ${a[i].toString(16)} vs ${b[i].toString(16)}`;
  return 'none';
}

function expectedF16(bits: Uint32Array): Uint16Array {
  return Uint16Array.from(bits, (f) => f32BitsToF16Bits(f));
}
function expectedBf16(bits: Uint32Array): Uint16Array {
  return Uint16Array.from(bits, (f) => f32BitsToBf16Bits(f));
}

describe('float16 wasm kernels', () => {
  it('are available on this runtime (so the tests below exercise them)', () => {
    expect(float16Wasm()).toBeDefined();
  });

  it('embedded bytes equal a fresh compile of float16.wat', async () => {
    const path = new URL('./float16.wat', import.meta.url);
    const fresh = await compileWat('float16.wat', readFileSync(path, 'utf8'));
    expect(Buffer.from(float16WasmBytes()).equals(Buffer.from(fresh))).toBe(true);
  });

  it('f32 -> f16 and f32 -> bf16 match the reference on 1M+ random patterns (several chunks)', () => {
    const n = 4 * FLOAT16_WASM_CHUNK + 3;
    const bits = randomBits(n, 12345);
    const src = new Float32Array(bits.buffer);
    expect(firstMismatch(f32ToF16Array(src), expectedF16(bits))).toBe('none');
    expect(firstMismatch(f32ToBf16Array(src), expectedBf16(bits))).toBe('none');
  });

  it('handles odd lengths and unaligned subarrays for input and output', () => {
    const bits = randomBits(3 * FLOAT16_WASM_MIN_LENGTH, 777);
    for (const [offset, length] of [
      [1, FLOAT16_WASM_MIN_LENGTH],
      [3, FLOAT16_WASM_MIN_LENGTH + 5],
      [5, 2 * FLOAT16_WASM_MIN_LENGTH + 7],
    ]) {
      const part = bits.subarray(offset, offset + length);
      const src = new Float32Array(bits.buffer, offset * 4, length);
      const out = new Uint16Array(length + 3).subarray(1, length + 1); // 2-byte aligned only
      const sentinel = out.buffer;
      new Uint16Array(sentinel).fill(0xabcd);
      expect(firstMismatch(f32ToF16Array(src, out), expectedF16(part))).toBe('none');
      expect(firstMismatch(f32ToBf16Array(src, out), expectedBf16(part))).toBe('none');
      // Neighbours of the output window stay untouched.
      const whole = new Uint16Array(sentinel);
      expect([whole[0], whole[length + 1], whole[length + 2]]).toEqual([0xabcd, 0xabcd, 0xabcd]);
      // And back, from an unaligned Uint16Array into an unaligned Float32Array.
      const back = new Float32Array(length + 2).subarray(1, length + 1);
      const wantF16 = Uint32Array.from(out, (h) => f16BitsToF32Bits(h));
      f16ToF32Array(out, back);
      expect(firstMismatch(new Uint32Array(back.buffer, back.byteOffset, length), wantF16)).toBe(
        'none',
      );
    }
  });

  it('f32 -> f16 rounds every midpoint between f16 neighbours and its float32 neighbours like the reference', () => {
    const bits: number[] = [];
    for (let h = 0; h < 0x7c00; h++) {
      const a = f16BitsToF32Bits(h);
      const b = f16BitsToF32Bits(h + 1);
      const mid = new Uint32Array(
        new Float32Array([
          (new Float32Array(new Uint32Array([a]).buffer)[0] +
            new Float32Array(new Uint32Array([b]).buffer)[0]) /
            2,
        ]).buffer,
      )[0];
      for (const m of [mid - 1, mid, mid + 1]) bits.push(m >>> 0, (m | 0x80000000) >>> 0);
    }
    const all = Uint32Array.from(bits);
    expect(firstMismatch(f32ToF16Array(new Float32Array(all.buffer)), expectedF16(all))).toBe(
      'none',
    );
  });

  it('f32 -> bf16 rounds ties, near-ties and NaN payloads like the reference', () => {
    const next = xorshift(99);
    const all = new Uint32Array(60000);
    const lows = [0x8000, 0x7fff, 0x8001, 0x0000, 0xffff, 0x0001];
    for (let i = 0; i < all.length; i++)
      all[i] = ((next() & 0xffff0000) | lows[i % lows.length]) >>> 0;
    expect(firstMismatch(f32ToBf16Array(new Float32Array(all.buffer)), expectedBf16(all))).toBe(
      'none',
    );
  });

  it('f16 -> f32 and bf16 -> f32 decode every 16-bit pattern like the reference', () => {
    const every = new Uint16Array(65536).map((_, i) => i);
    const f16 = new Uint32Array(f16ToF32Array(every).buffer);
    expect(
      firstMismatch(
        f16,
        Uint32Array.from(every, (h) => f16BitsToF32Bits(h)),
      ),
    ).toBe('none');
    const bf16 = new Uint32Array(bf16ToF32Array(every).buffer);
    expect(
      firstMismatch(
        bf16,
        Uint32Array.from(every, (h) => (h << 16) >>> 0),
      ),
    ).toBe('none');
    // Every f16 pattern survives f16 -> f32 -> f16 through the wasm path (NaN payloads included).
    expect(firstMismatch(f32ToF16Array(f16ToF32Array(every)), every)).toBe('none');
    expect(firstMismatch(f32ToBf16Array(bf16ToF32Array(every)), every)).toBe('none');
  });
  it('falls back to the TypeScript loops, with the same bits, where WebAssembly is missing', async () => {
    vi.stubGlobal('WebAssembly', undefined);
    vi.resetModules();
    try {
      const fresh = await import('../float16.js');
      const wasm = await import('./float16-wasm.js');
      expect(wasm.float16Wasm()).toBeUndefined();
      const bits = randomBits(3 * FLOAT16_WASM_MIN_LENGTH + 1, 4242);
      const src = new Float32Array(bits.buffer);
      expect(firstMismatch(fresh.f32ToF16Array(src), expectedF16(bits))).toBe('none');
      expect(firstMismatch(fresh.f32ToBf16Array(src), expectedBf16(bits))).toBe('none');
      const halves = new Uint16Array(bits.buffer);
      const back = new Uint32Array(fresh.f16ToF32Array(halves).buffer);
      expect(
        firstMismatch(
          back,
          Uint32Array.from(halves, (h) => f16BitsToF32Bits(h)),
        ),
      ).toBe('none');
    } finally {
      vi.unstubAllGlobals();
      vi.resetModules();
    }
  });
});
