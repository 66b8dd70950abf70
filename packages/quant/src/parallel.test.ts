import { createRng } from '@lora/core';
import { afterAll, describe, expect, it } from 'vitest';
import { quantizeBlockwise } from './blockwise.js';
import { PARALLEL_MIN_VALUES, QuantizeWorkerPool } from './parallel.js';

describe('QuantizeWorkerPool', () => {
  const pool = new QuantizeWorkerPool(2);
  afterAll(() => pool.close());

  it.each(['nf4', 'fp4'] as const)(
    '%s on two threads is byte-identical to one thread (odd lengths, zero block, reused buffers)',
    async (format) => {
      // A larger tensor first, then a smaller one: the pool reuses its shared buffers.
      for (const n of [PARALLEL_MIN_VALUES + 12_345, PARALLEL_MIN_VALUES + 7]) {
        const x = createRng(n).normalArray(n, 0, 1, 'f32');
        x.fill(0, 640, 704); // an all-zero block
        const one = quantizeBlockwise(x, { format, blockSize: 64 });
        const two = await pool.quantizeBlockwise(x, { format, blockSize: 64 });
        expect(two.packed.length).toBe(one.packed.length);
        expect(Buffer.from(two.packed).equals(Buffer.from(one.packed))).toBe(true);
        expect(Buffer.from(two.absmax.buffer).equals(Buffer.from(one.absmax.buffer))).toBe(true);
      }
    },
  );

  it('reports NaN found by a worker with the tensor name and index', async () => {
    const x = createRng(52).normalArray(PARALLEL_MIN_VALUES + 3, 0, 1, 'f32');
    x[PARALLEL_MIN_VALUES - 7] = Number.NaN;
    await expect(pool.quantizeBlockwise(x, { format: 'nf4', name: 'w' })).rejects.toThrowError(
      new RegExp(`w: value NaN at flat index ${PARALLEL_MIN_VALUES - 7}`),
    );
  });
});
