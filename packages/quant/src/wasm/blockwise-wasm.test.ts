import { readFileSync } from 'node:fs';
import { createRng } from '@lora/core';
import { describe, expect, it, vi } from 'vitest';
import { compileWat } from '../../../../scripts/build-wasm.mjs';
import { quantizeBlocksKernel } from '../blockwise-kernel.js';
import { BUCKET_TABLES, quantizeBlockwise, quantizeBlockwiseRef } from '../blockwise.js';
import { FP4_THRESHOLDS, NF4_THRESHOLDS } from '../codebooks.js';
import { QuantError } from '../errors.js';
import { BNB4_BLOCK_SIZES, type Bnb4Format } from '../formats.js';
import {
  BLOCKWISE_WASM_CHUNK,
  BLOCKWISE_WASM_MIN_VALUES,
  blockwiseWasm,
  blockwiseWasmBytes,
  quantizeBlocksWasm,
} from './blockwise-wasm.js';

// The wasm kernel must write the very bytes of the TypeScript kernel (quantizeBlocksKernel), which
// blockwise.test.ts checks against the plain reference. Outputs start filled with a sentinel so
// that unwritten bytes compare too.

interface Run {
  bad: number;
  packed: Uint8Array;
  absmax: Uint32Array;
}

function runJs(
  x: Float32Array,
  format: Bnb4Format,
  blockSize: number,
  first: number,
  end: number,
): Run {
  const t = BUCKET_TABLES[format];
  const packed = new Uint8Array(Math.ceil(x.length / 2)).fill(0xa5);
  const absmax = new Float32Array(Math.ceil(x.length / blockSize)).fill(-7);
  const bad = quantizeBlocksKernel(
    x,
    blockSize,
    first,
    end,
    packed,
    absmax,
    t.threshold,
    t.below,
    t.above,
    t.zeroCode,
    t.posInfCode,
    t.negInfCode,
    t.nanCode,
  );
  return { bad, packed, absmax: new Uint32Array(absmax.buffer) };
}

function runWasm(
  x: Float32Array,
  format: Bnb4Format,
  blockSize: number,
  first: number,
  end: number,
): Run {
  const packed = new Uint8Array(Math.ceil(x.length / 2)).fill(0xa5);
  const absmax = new Float32Array(Math.ceil(x.length / blockSize)).fill(-7);
  const bad = quantizeBlocksWasm(x, format, blockSize, first, end, packed, absmax);
  if (bad === undefined) throw new Error('wasm path not taken');
  return { bad, packed, absmax: new Uint32Array(absmax.buffer) };
}

function firstDifference(a: ArrayLike<number>, b: ArrayLike<number>): string {
  if (a.length !== b.length) return `length ${a.length} vs ${b.length}`;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return `index ${i}: ${a[i]} vs ${b[i]}`;
  return 'none';
}

function expectSame(
  x: Float32Array,
  format: Bnb4Format,
  blockSize: number,
  first = 0,
  end = Math.ceil(x.length / blockSize),
): void {
  const js = runJs(x, format, blockSize, first, end);
  const wasm = runWasm(x, format, blockSize, first, end);
  expect(wasm.bad).toBe(js.bad);
  expect(firstDifference(wasm.packed, js.packed)).toBe('none');
  expect(firstDifference(wasm.absmax, js.absmax)).toBe('none');
}

/** Float32 neighbours of t: the next float32 below and above. */
function neighbours(t: number): number[] {
  const f = new Float32Array([t, t]);
  const u = new Uint32Array(f.buffer);
  const step = (i: number, up: boolean) => {
    if (f[i] === 0) u[i] = up ? 1 : 0x80000001;
    else if (f[i] > 0 === up) u[i]++;
    else u[i]--;
  };
  step(0, false);
  step(1, true);
  return [f[0], t, f[1]];
}

const FORMATS: Bnb4Format[] = ['nf4', 'fp4'];

describe('blockwise wasm kernel', () => {
  it('is available on this runtime (so the tests below exercise it)', () => {
    expect(blockwiseWasm()).toBeDefined();
  });

  it('embedded bytes equal a fresh compile of blockwise.wat', async () => {
    const path = new URL('./blockwise.wat', import.meta.url);
    const fresh = await compileWat('blockwise.wat', readFileSync(path, 'utf8'));
    expect(Buffer.from(blockwiseWasmBytes()).equals(Buffer.from(fresh))).toBe(true);
  });

  it('matches the TypeScript kernel for every block size, with a partial odd last block', () => {
    for (const format of FORMATS) {
      for (const blockSize of BNB4_BLOCK_SIZES) {
        const n = Math.max(BLOCKWISE_WASM_MIN_VALUES, 3 * blockSize) + 7; // odd, partial last block
        const x = createRng(blockSize).normalArray(n, 0, 0.02, 'f32');
        expectSame(x, format, blockSize);
      }
    }
  });

  it('matches across chunk boundaries, on block ranges and on unaligned subarrays', () => {
    const big = createRng(5).normalArray(BLOCKWISE_WASM_CHUNK * 2 + 1001, 0, 1, 'f32');
    for (const format of FORMATS) {
      expectSame(big, format, 64);
      expectSame(big, format, 4096, 3, 100); // a middle range, as a worker would run it
      expectSame(big.subarray(1, 20001), format, 128); // byteOffset 4
    }
  });

  it('matches on all-zero blocks, tiny absmax (1/absmax overflows), signed zeros and Inf-free extremes', () => {
    const n = 64 * 80 + 33;
    const x = createRng(9).normalArray(n, 0, 1, 'f32');
    x.fill(0, 0, 64); // all-zero block
    x.fill(-0, 64, 128); // all negative zeros
    x.fill(0, 128, 192);
    x[130] = 1e-45; // absmax = smallest subnormal: 1/absmax is +Inf in float32
    x[131] = -1e-45;
    x[140] = -2e-39;
    x.fill(0, 192, 256);
    x[200] = 3.4e38; // largest values: inverse is tiny
    x[201] = -3.4028234663852886e38;
    x.fill(0, n - 33); // an all-zero, odd-length last block
    for (const format of FORMATS) expectSame(x, format, 64);
  });

  it('matches on values exactly on every threshold and on their float32 neighbours', () => {
    const points: number[] = [];
    for (const t of [...NF4_THRESHOLDS, ...FP4_THRESHOLDS])
      for (const v of neighbours(t)) points.push(v, -v);
    points.push(0, -0, ...neighbours(0));
    // Blocks of 32 with absmax exactly 1 (so y = x): each block holds 1.0 then 31 probe values.
    const x = new Float32Array(Math.max(BLOCKWISE_WASM_MIN_VALUES, 32 * points.length) + 1);
    for (let i = 0; i < x.length; i++) x[i] = i % 32 === 0 ? 1 : points[i % points.length];
    for (const format of FORMATS) {
      expectSame(x, format, 32);
      // And through the public function against the plain reference.
      const fast = quantizeBlockwise(x, { format, blockSize: 32 });
      const ref = quantizeBlockwiseRef(x, { format, blockSize: 32 });
      expect(firstDifference(fast.packed, ref.packed)).toBe('none');
    }
  });

  it('reports the same first bad block for NaN, +Inf and -Inf, with the same outputs before it', () => {
    const n = BLOCKWISE_WASM_CHUNK + 5000;
    for (const [bad, at] of [
      [Number.NaN, 12345],
      [Number.POSITIVE_INFINITY, BLOCKWISE_WASM_CHUNK + 17],
      [Number.NEGATIVE_INFINITY, 64],
    ] as const) {
      const x = createRng(at).normalArray(n, 0, 1, 'f32');
      x[at] = bad;
      x[at + 300] = Number.NaN; // a later bad value must not matter
      for (const format of FORMATS) {
        expectSame(x, format, 64);
        expect(runWasm(x, format, 64, 0, Math.ceil(n / 64)).bad).toBe(Math.floor(at / 64));
        let error: unknown;
        try {
          quantizeBlockwise(x, { format, blockSize: 64, name: 'w' });
        } catch (e) {
          error = e;
        }
        expect(error).toBeInstanceOf(QuantError);
        expect((error as QuantError).code).toBe('QUANT_NON_FINITE');
        expect((error as QuantError).details.index).toBe(at);
      }
    }
  });

  it('random float32 patterns: same bytes for random block contents', () => {
    const rng = createRng(77);
    const x = rng.normalArray(50003, 0, 1, 'f32');
    // Spread magnitudes over many binades, so absmax and 1/absmax take varied values.
    const scale = rng.uniformArray(50003, -30, 30);
    for (let i = 0; i < x.length; i++) x[i] *= 2 ** Math.round(scale[i]);
    for (const format of FORMATS)
      for (const blockSize of [32, 256]) expectSame(x, format, blockSize);
  });
  it('falls back to the TypeScript kernel, with the same bytes, where WebAssembly is missing', async () => {
    const x = createRng(31).normalArray(3 * BLOCKWISE_WASM_MIN_VALUES + 5, 0, 1, 'f32');
    const withWasm = quantizeBlockwise(x, { format: 'nf4', blockSize: 64 });
    vi.stubGlobal('WebAssembly', undefined);
    vi.resetModules();
    try {
      const wasm = await import('./blockwise-wasm.js');
      const fresh = await import('../blockwise.js');
      expect(wasm.blockwiseWasm()).toBeUndefined();
      const without = fresh.quantizeBlockwise(x, { format: 'nf4', blockSize: 64 });
      expect(firstDifference(without.packed, withWasm.packed)).toBe('none');
      expect(firstDifference(without.absmax, withWasm.absmax)).toBe('none');
    } finally {
      vi.unstubAllGlobals();
      vi.resetModules();
    }
  });
});
