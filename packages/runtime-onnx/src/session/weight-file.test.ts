import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { f32, tensorBytes } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { GraphBuilder } from '../graph/builder.js';
import * as op from '../graph/ops.js';
import { randomF32, seededRandom } from '../test-utils/random.js';
import { ModelSession } from './session.js';
import { WEIGHT_FILE_NAME, WeightFile } from './weight-file.js';

const K = 48;
const N = 300; // bias of 1200 bytes: large enough to go to the file too

/** y = x W, with W: [K, N], in float64. */
function reference(x: Float32Array, w: Float32Array): number[] {
  const y: number[] = [];
  for (let n = 0; n < N; n++) {
    let s = 0;
    for (let k = 0; k < K; k++) s += x[k] * w[k * N + n];
    y.push(s);
  }
  return y;
}

describe('WeightFile', () => {
  it('a session over spilled stand-ins computes with the real weights, and the folder is gone afterwards', async () => {
    const rand = seededRandom(3);
    const w = f32([K, N], randomF32(K * N, rand));
    const bias = f32([N], randomF32(N, rand));
    const x = randomF32(K, rand);
    const file = await WeightFile.create();
    const standIn = await file.spill(w);
    // The stand-in has the shape and dtype but none of the values.
    expect(standIn.shape).toEqual([K, N]);
    expect(standIn.data).toBeInstanceOf(Float32Array);
    expect(standIn.data.every((v) => v === 0)).toBe(true);
    expect(file.placement(standIn)).toEqual({ location: WEIGHT_FILE_NAME, offset: 0 });
    await file.flush();
    const onDisk = await readFile(join(file.dir, WEIGHT_FILE_NAME));
    expect(Buffer.compare(onDisk, Buffer.from(tensorBytes(w)))).toBe(0);

    const g = new GraphBuilder('spilled');
    const y = op.add(
      g,
      op.matmul(g, g.input('x', 'f32', [1, K]), g.initializer('w', standIn)),
      g.initializer('bias', bias), // not spilled: fromGraph appends it
    );
    g.output(y, 'y');
    const session = await ModelSession.fromGraph(g.build(), {
      weightFile: file,
      intraOpNumThreads: 1,
    });
    try {
      expect(existsSync(file.dir)).toBe(false);
      // The bias went in after W, page-aligned.
      expect(file.placement(bias)?.offset).toBe(Math.ceil((K * N * 4) / 4096) * 4096);
      const out = (await session.run({ x: f32([1, K], x) })).y.data as Float32Array;
      const ref = reference(x, w.data).map((v, n) => v + bias.data[n]);
      for (let n = 0; n < N; n++) expect(out[n]).toBeCloseTo(ref[n], 4);
    } finally {
      await session.release();
    }
  });

  it('the folder is removed when session creation fails', async () => {
    const file = await WeightFile.create();
    const g = new GraphBuilder('bad');
    g.output(op.mul(g, g.input('x', 'f32', [2]), g.scalar(2)), 'y');
    const err = await ModelSession.fromGraph(g.build(), {
      weightFile: file,
      factory: {
        listSupportedBackends: () => [{ name: 'cpu' }],
        create: async () => {
          throw new Error('no');
        },
      },
    }).catch((e) => e);
    expect(err).toMatchObject({ code: 'SESSION_FAILED' });
    expect(existsSync(file.dir)).toBe(false);
  });

  it('a tensor is written once, however often it is added', async () => {
    const file = await WeightFile.create();
    try {
      const t = f32([300], randomF32(300, seededRandom(1)));
      await file.add(t);
      await file.add(t);
      expect(file.bytes).toBe(1200);
    } finally {
      await file.remove();
    }
  });
});
