import { bf16ToF32Array, f16ToF32Array, f32ToBf16Array, f32ToF16Array } from '@lora/core';
import { gbPerSecond, medianMs } from './timing.js';
import type { BenchSection } from './types.js';

/** f32 <-> f16/bf16 conversion speed on one core, next to a plain typed-array copy. */
export const convertBench: BenchSection = {
  name: 'convert',
  title: 'dtype conversion: f32 <-> f16 / bf16 on one core (GB/s of f32 data)',
  async run(ctx) {
    const n = (ctx.quick ? 4 : 32) * 1024 * 1024;
    const src = new Float32Array(n);
    // Normal-range values with varied mantissas (the common case for weights).
    let s = 1;
    for (let i = 0; i < n; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      src[i] = (s / 2 ** 32 - 0.5) * 0.2;
    }
    const half = new Uint16Array(n);
    const back = new Float32Array(n);
    const copy = new Float32Array(n);
    const repeats = ctx.quick ? 3 : 7;
    const bytes = n * 4;
    const copyMs = await medianMs(() => copy.set(src), repeats);
    const rows: (string | number)[][] = [
      ['TypedArray.set copy (f32)', copyMs, gbPerSecond(bytes, copyMs), 1],
    ];
    const cases: [string, () => unknown][] = [
      ['f32 -> f16', () => f32ToF16Array(src, half)],
      ['f16 -> f32', () => f16ToF32Array(half, back)],
      ['f32 -> bf16', () => f32ToBf16Array(src, half)],
      ['bf16 -> f32', () => bf16ToF32Array(half, back)],
    ];
    let slowest = Number.POSITIVE_INFINITY;
    for (const [name, fn] of cases) {
      const ms = await medianMs(fn, repeats);
      const rate = gbPerSecond(bytes, ms);
      slowest = Math.min(slowest, rate);
      rows.push([name, ms, rate, ms / copyMs]);
    }
    return {
      columns: ['operation', 'median ms', 'GB/s of f32', 'time / copy time'],
      rows,
      notes: [
        'the copy column is measured in the same run: it shows how loaded the machine was',
        `${n.toLocaleString('en-US')} elements; slowest conversion ${slowest.toFixed(2)} GB/s (goal: >= 2 GB/s on one core): ${slowest >= 2 ? 'met' : 'NOT met'}`,
      ],
    };
  },
};
