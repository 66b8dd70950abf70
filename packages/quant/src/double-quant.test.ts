import { createRng } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { createDynamicMap, DYNAMIC_MAP } from './codebooks.js';
import {
  dequantizeAbsmax,
  doubleQuantize,
  nearestDynamicCode,
  statisticsBitsPerParameter,
} from './double-quant.js';
import { STORED_DYNAMIC_MAP } from './test-utils/dynamic-map-table.js';

describe('signed dynamic map', () => {
  it('generated in float32 equals the stored bitsandbytes table, all 256 values', () => {
    const generated = createDynamicMap();
    expect(generated.length).toBe(256);
    expect([...generated]).toEqual(STORED_DYNAMIC_MAP.map(Math.fround));
  });

  it('has 127 negatives, 0 at index 127, 1.0 at 255 and min f32(-0.99296875)', () => {
    expect(DYNAMIC_MAP[127]).toBe(0);
    expect(DYNAMIC_MAP[255]).toBe(1);
    expect(DYNAMIC_MAP[0]).toBe(Math.fround(-0.99296875));
    expect(DYNAMIC_MAP.filter((v) => v < 0).length).toBe(127);
  });

  it('a float64 recomputation does NOT reproduce it (why the generator works in float32)', () => {
    const values: number[] = [0, 1];
    for (let i = 0; i < 7; i++) {
      const n = 2 ** i + 1;
      for (let j = 0; j + 1 < n; j++) {
        const mean = 0.1 + (0.9 * (j + 0.5)) / (n - 1);
        values.push(Number(`1e${i - 6}`) * mean, -Number(`1e${i - 6}`) * mean);
      }
    }
    values.sort((a, b) => a - b);
    const f64 = values.map(Math.fround);
    expect(f64.filter((v, i) => v !== DYNAMIC_MAP[i]).length).toBeGreaterThan(0);
  });
});

describe('double quantization', () => {
  it('nearest code equals a brute-force argmin (ties to the lower index)', () => {
    const rng = createRng(21);
    const probes = [...rng.uniformArray(2000, -1, 1)];
    // Exact midpoints are ties: the lower index wins.
    for (let k = 0; k < 255; k++) probes.push((DYNAMIC_MAP[k] + DYNAMIC_MAP[k + 1]) / 2);
    for (const y of probes) {
      let best = 0;
      for (let c = 1; c < 256; c++)
        if (Math.abs(y - DYNAMIC_MAP[c]) < Math.abs(y - DYNAMIC_MAP[best])) best = c;
      expect(nearestDynamicCode(y)).toBe(best);
    }
  });

  it('by hand: offset = mean, block absmax2, codes and reconstruction formula', () => {
    const absmax = new Float32Array([1, 2, 3]);
    const dq = doubleQuantize(absmax);
    expect(dq.offset).toBe(2);
    expect([...dq.absmax2]).toEqual([1]); // |[-1, 0, 1]| max
    expect([...dq.codes]).toEqual([0, 127, 255]); // -1 -> nearest is the min code -0.99296875; 0; 1
    const back = dequantizeAbsmax(dq);
    expect(back[0]).toBe(Math.fround(Math.fround(DYNAMIC_MAP[0] * 1) + 2));
    expect(back[1]).toBe(2);
    expect(back[2]).toBe(3);
  });

  it('keeps one absmax2 per 256 values (partial last block) and reconstructs within half a code gap', () => {
    const absmax = createRng(22).uniformArray(600, 0.5, 3, 'f32');
    const dq = doubleQuantize(absmax);
    expect(dq.codes.length).toBe(600);
    expect(dq.absmax2.length).toBe(3);
    const back = dequantizeAbsmax(dq);
    for (let i = 0; i < 600; i++) {
      // Widest gap of the map is near |y| = 1: 0.0140625; half of it times absmax2 (plus rounding).
      expect(Math.abs(back[i] - absmax[i])).toBeLessThanOrEqual(
        0.5 * 0.0140625 * dq.absmax2[Math.floor(i / 256)] + 1e-6,
      );
    }
  });

  it('codes equal a brute-force nearest code of f32((absmax - offset) * f32(1/absmax2)), ties low', () => {
    // Varied magnitudes (so y spans many binades of the map) plus absmax values that land y on
    // exact midpoints of the map: the fast prefix-table lookup must agree with an argmin.
    const rng = createRng(23);
    const absmax = rng.uniformArray(3000, 0, 1, 'f32');
    for (let i = 0; i < absmax.length; i += 3) absmax[i] *= 2 ** -Math.floor(rng.uniform() * 20);
    const dq = doubleQuantize(absmax);
    for (let i = 0; i < absmax.length; i++) {
      const m = dq.absmax2[Math.floor(i / 256)];
      const y = Math.fround(Math.fround(absmax[i] - dq.offset) * Math.fround(1 / m));
      let best = 0;
      for (let c = 1; c < 256; c++)
        if (Math.abs(y - DYNAMIC_MAP[c]) < Math.abs(y - DYNAMIC_MAP[best])) best = c;
      expect(dq.codes[i]).toBe(best);
    }
    // Exact midpoints: with values [1, -1, m, -m, ...] the float32 mean (offset) is exactly 0 and
    // absmax2 is 1, so y is the value itself and every exact midpoint is a tie (lower code wins).
    const ties: number[] = [1, -1];
    for (let k = 0; k < 255; k++) {
      const mid = (DYNAMIC_MAP[k] + DYNAMIC_MAP[k + 1]) / 2;
      if (mid > 0 && Math.fround(mid) === mid) ties.push(mid, -mid);
    }
    expect(ties.length).toBeGreaterThan(100);
    const tied = doubleQuantize(new Float32Array(ties), 4096);
    expect([tied.offset, tied.absmax2[0]]).toEqual([0, 1]);
    for (let i = 0; i < ties.length; i++) {
      let best = 0;
      for (let c = 1; c < 256; c++)
        if (Math.abs(ties[i] - DYNAMIC_MAP[c]) < Math.abs(ties[i] - DYNAMIC_MAP[best])) best = c;
      expect(tied.codes[i]).toBe(best);
    }
  });

  it('bits per parameter: 0.5 plain, 8/64 + 32/(64*256) = 0.127 with DQ at block 64', () => {
    expect(statisticsBitsPerParameter(64, false)).toBe(0.5);
    expect(statisticsBitsPerParameter(64, true)).toBeCloseTo(0.126953125, 12);
  });
});
