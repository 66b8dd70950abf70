import { createRng } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { NBITS_BLOCK_SIZES, type NBitsFormat } from './formats.js';
import {
  dequantizeMatMulNBits,
  nbitsZeroPoint,
  quantizeMatMulNBits,
  roundHalfAwayFromZero,
} from './nbits.js';

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');

/**
 * Reference quantizer written separately from the spec, one value at a time, codes unpacked:
 * returns q[n][k], scale[n][b], zp[n][b].
 */
function referenceCodes(
  W: Float32Array,
  N: number,
  K: number,
  blockSize: number,
  format: NBitsFormat,
) {
  const f = Math.fround;
  const roundf = (v: number) => Math.sign(v) * Math.floor(Math.abs(v) + 0.5);
  const nb = Math.ceil(K / blockSize);
  const q: number[][] = [];
  const scales: number[][] = [];
  const zps: number[][] = [];
  for (let n = 0; n < N; n++) {
    q.push([]);
    scales.push([]);
    zps.push([]);
    for (let b = 0; b < nb; b++) {
      const block = Array.from(
        W.subarray(n * K + b * blockSize, n * K + Math.min((b + 1) * blockSize, K)),
      );
      let scale: number;
      let zp: number;
      if (format === 'uint4') {
        const lo = Math.min(0, ...block);
        const hi = Math.max(0, ...block);
        scale = f(f(hi - lo) / 15);
        zp = scale === 0 ? 0 : Math.min(15, Math.max(0, roundf(f(-f(lo / scale)))));
      } else {
        scale = f(Math.max(...block.map(Math.abs)) / 7);
        zp = 8;
      }
      scales[n].push(scale);
      zps[n].push(zp);
      const inv = scale === 0 ? 0 : f(1 / scale);
      for (const v of block) {
        const code =
          format === 'uint4'
            ? Math.min(15, Math.max(0, roundf(f(f(v * inv) + zp))))
            : Math.min(7, Math.max(-7, roundf(f(v * inv)))) + 8;
        q[n].push(code);
      }
    }
  }
  return { q, scales, zps };
}

describe('MatMulNBits by hand', () => {
  it('uint4: scale, zero point and codes of one block (MLAS rules), low nibble first', () => {
    // min -1.5, max 6: scale = 7.5/15 = 0.5, zp = roundf(1.5/0.5) = 3, q = roundf(2v + 3).
    const row = [-1.5, 6, 0, 0.25, -0.25, 1.1, 0.5, -1, 2, 3, 4, 5, 5.75, -1.25, 0.75, 1.0];
    const w = quantizeMatMulNBits(new Float32Array(row), 1, 16, { format: 'uint4', blockSize: 16 });
    // Expected codes: -1.5->0, 6->15, 0->3, 0.25->roundf(3.5)=4, -0.25->roundf(2.5)=3, 1.1->5,
    // 0.5->4, -1->1, 2->7, 3->9, 4->11, 5->13, 5.75->roundf(14.5)=15, -1.25->roundf(0.5)=1, 0.75->roundf(4.5)=5, 1->5.
    const codes = [0, 15, 3, 4, 3, 5, 4, 1, 7, 9, 11, 13, 15, 1, 5, 5];
    const bytes = [];
    for (let j = 0; j < 8; j++) bytes.push(codes[2 * j] | (codes[2 * j + 1] << 4));
    expect([...w.B]).toEqual(bytes);
    expect([...w.scales]).toEqual([0.5]);
    expect([...w.zeroPoints!]).toEqual([3]);
    expect(hex(w.B)).toBe('f043531497db1f55'); // the same bytes written out by hand
    const back = dequantizeMatMulNBits(w);
    expect(back[3]).toBe(0.5); // (4 - 3) * 0.5
    expect(back[4]).toBe(0); // (3 - 3) * 0.5
  });

  it('uint4: all-positive block clamps min to 0 (zp 0); all-zero block has scale 0 and q = zp', () => {
    const w = quantizeMatMulNBits(new Float32Array([1.5, 3, 0.75, 0, 0, 0, 0, 0]), 2, 4, {
      format: 'uint4',
      blockSize: 16,
    });
    expect([...w.scales]).toEqual([0.2, 0].map(Math.fround));
    expect(nbitsZeroPoint(w, 0, 0)).toBe(0);
    expect(nbitsZeroPoint(w, 1, 0)).toBe(0);
    // row 0: 1.5/0.2 = 7.5 -> roundf 8; 3 -> 15; 0.75 -> 3.75 -> 4; 0 -> 0. K=4 < block 16: rest of the block is 0.
    expect([...w.B.subarray(0, 8)]).toEqual([8 | (15 << 4), 4 | 0, 0, 0, 0, 0, 0, 0]);
    expect([...w.B.subarray(8)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
  });

  it('int4: scale = absmax/7, symmetric rounding (halves away from zero), stored q + 8, no zero points', () => {
    // absmax 3.5: scale 0.5. -3.5 -> -7 -> 1; 3.5 -> 15; 1.25 -> roundf(2.5)=3 -> 11; -1.25 -> -3 -> 5; 0 -> 8.
    const w = quantizeMatMulNBits(new Float32Array([-3.5, 3.5, 1.25, -1.25, 0]), 1, 5, {
      format: 'int4',
      blockSize: 16,
    });
    expect(w.zeroPoints).toBeUndefined();
    expect([...w.scales]).toEqual([0.5]);
    // 5 values: bytes (1 | 15<<4), (11 | 5<<4), (8 | pad 8 << 4), then zeros.
    expect([...w.B.subarray(0, 4)]).toEqual([1 | (15 << 4), 11 | (5 << 4), 8 | (8 << 4), 0]);
    expect([...dequantizeMatMulNBits(w)]).toEqual([-3.5, 3.5, 1.5, -1.5, 0]);
  });

  it('row stride is ceil(K/bs) * bs/2 and zero points are padded per row when K is not a multiple of the block', () => {
    const N = 3;
    const K = 40; // 3 blocks of 16 (last has 8 values); zero points: 2 bytes per row
    const W = createRng(9).normalArray(N * K, 0, 1, 'f32');
    const w = quantizeMatMulNBits(W, N, K, { format: 'uint4', blockSize: 16 });
    expect(w.B.length).toBe(N * 3 * 8);
    expect(w.scales.length).toBe(N * 3);
    expect(w.zeroPoints!.length).toBe(N * 2);
    const ref = referenceCodes(W, N, K, 16, 'uint4');
    for (let n = 0; n < N; n++) {
      expect(w.zeroPoints![n * 2 + 1] >> 4).toBe(0); // padding nibble
      for (let b = 0; b < 3; b++) expect(nbitsZeroPoint(w, n, b)).toBe(ref.zps[n][b]);
    }
  });

  it('roundHalfAwayFromZero is C roundf', () => {
    expect([2.5, -2.5, 0.5, -0.5, 1.4999999, 0.49999997].map(roundHalfAwayFromZero)).toEqual([
      3, -3, 1, -1, 1, 0,
    ]);
  });
});

describe.each(['uint4', 'int4'] as NBitsFormat[])('%s (ggml-style checks)', (format) => {
  it('fast quantize equals the one-value-at-a-time reference for every block size and ragged K', () => {
    for (const blockSize of NBITS_BLOCK_SIZES) {
      for (const K of [blockSize, 3 * blockSize + 5]) {
        const N = 4;
        const W = createRng(blockSize + K).normalArray(N * K, 0, 1, 'f32');
        const w = quantizeMatMulNBits(W, N, K, { format, blockSize });
        const ref = referenceCodes(W, N, K, blockSize, format);
        const nb = Math.ceil(K / blockSize);
        for (let n = 0; n < N; n++) {
          for (let k = 0; k < K; k++) {
            const b = Math.floor(k / blockSize);
            const inBlock = k - b * blockSize;
            const byte = w.B[(n * nb + b) * (blockSize / 2) + (inBlock >> 1)];
            expect((inBlock & 1) === 0 ? byte & 15 : byte >> 4).toBe(ref.q[n][k]);
          }
          for (let b = 0; b < nb; b++) expect(w.scales[n * nb + b]).toBe(ref.scales[n][b]);
        }
      }
    }
  });

  it('round trip error is at most half a step (plus clamping at the ends)', () => {
    const N = 16;
    const K = 256;
    const W = createRng(11).normalArray(N * K, 0, 1, 'f32');
    const w = quantizeMatMulNBits(W, N, K, { format, blockSize: 32 });
    const back = dequantizeMatMulNBits(w);
    let sse = 0;
    for (let i = 0; i < W.length; i++) {
      const scale = w.scales[Math.floor(i / 32)];
      expect(Math.abs(W[i] - back[i])).toBeLessThanOrEqual(0.5 * Math.abs(scale) * (1 + 1e-5));
      sse += (W[i] - back[i]) ** 2;
    }
    expect(Math.sqrt(sse / W.length)).toBeLessThan(format === 'uint4' ? 0.1 : 0.11);
  });

  it('dot-product error stays within a few RMSE * |x|', () => {
    const K = 4096;
    const W = createRng(12).normalArray(K, 0, 1, 'f32');
    const x = createRng(13).normalArray(K, 0, 1, 'f32');
    const back = dequantizeMatMulNBits(quantizeMatMulNBits(W, 1, K, { format, blockSize: 32 }));
    let exact = 0;
    let approx = 0;
    let xx = 0;
    for (let k = 0; k < K; k++) {
      exact += x[k] * W[k];
      approx += x[k] * back[k];
      xx += x[k] * x[k];
    }
    expect(Math.abs(exact - approx)).toBeLessThan(4 * 0.11 * Math.sqrt(xx));
  });

  it('refuses NaN with the tensor name and index, and block sizes MatMulNBits cannot run', () => {
    const W = new Float32Array(64);
    W[33] = Number.NaN;
    expect(() =>
      quantizeMatMulNBits(W, 2, 32, { format, name: 'mlp.up_proj.weight' }),
    ).toThrowError(/mlp\.up_proj\.weight: value NaN at flat index 33/);
    expect(() =>
      quantizeMatMulNBits(new Float32Array(64), 2, 32, { format, blockSize: 8 }),
    ).toThrowError(/Block size 8 is not allowed/);
    expect(() =>
      quantizeMatMulNBits(new Float32Array(64), 2, 32, { format, blockSize: 48 }),
    ).toThrowError(/Block size 48/);
  });
});
