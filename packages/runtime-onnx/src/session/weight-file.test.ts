import { existsSync } from 'node:fs';
import { readFile, statfs } from 'node:fs/promises';
import { freemem, platform, tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { f32, tensorBytes } from '@lora/core';
import { afterEach, describe, expect, it } from 'vitest';
import { GraphBuilder } from '../graph/builder.js';
import * as op from '../graph/ops.js';
import { randomF32, seededRandom } from '../test-utils/random.js';
import { ModelSession } from './session.js';
import { WEIGHT_FILE_NAME, WeightFile, weightFileParent } from './weight-file.js';

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

  it('spillChunks writes a tensor that arrives in chunks, page-aligned after what came before, and refuses a short stream', async () => {
    const file = await WeightFile.create();
    try {
      const first = f32([5], randomF32(5, seededRandom(2)));
      await file.add(first);
      const values = randomF32(1000, seededRandom(4));
      // Two buffers used in turn, as a producer reusing memory delivers them.
      const buffers = [new Float32Array(300), new Float32Array(300)];
      async function* chunks(): AsyncGenerator<Float32Array> {
        for (let at = 0, turn = 0; at < values.length; at += 300, turn ^= 1) {
          const c = buffers[turn].subarray(0, Math.min(300, values.length - at));
          c.set(values.subarray(at, at + c.length));
          yield c;
        }
      }
      const standIn = await file.spillChunks([10, 100], chunks());
      expect(standIn.shape).toEqual([10, 100]);
      expect(standIn.data.every((v) => v === 0)).toBe(true);
      expect(file.placement(standIn)).toEqual({ location: WEIGHT_FILE_NAME, offset: 4096 });
      await file.flush();
      const onDisk = await readFile(join(file.dir, WEIGHT_FILE_NAME));
      expect(onDisk.length).toBe(4096 + 4000);
      expect(Buffer.compare(onDisk.subarray(4096), Buffer.from(values.buffer))).toBe(0);

      async function* short(): AsyncGenerator<Float32Array> {
        yield new Float32Array(10);
      }
      await expect(file.spillChunks([4, 4], short())).rejects.toMatchObject({
        code: 'WEIGHT_FILE',
        message: expect.stringContaining('delivered 10 of 16 values'),
      });
    } finally {
      await file.remove();
    }
  });

  it('the folder is a tracked temporary named for this process, removed with the file', async () => {
    const file = await WeightFile.create();
    // The temporary-name pattern of @lora/core: the next run removes it if this process is killed.
    expect(basename(file.dir)).toMatch(
      new RegExp(`^\\.lora-session\\.tmp-${process.pid}-[0-9a-f]{8}$`),
    );
    await file.remove();
    expect(existsSync(file.dir)).toBe(false);
  });
});

describe('weightFileParent', () => {
  const saved = { session: process.env.LORA_SESSION_DIR, tmp: process.env.TMPDIR };
  afterEach(() => {
    for (const [key, value] of [
      ['LORA_SESSION_DIR', saved.session],
      ['TMPDIR', saved.tmp],
    ] as const) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  });

  it('LORA_SESSION_DIR first, then a TMPDIR the user set', async () => {
    process.env.LORA_SESSION_DIR = '/some/where';
    process.env.TMPDIR = '/else/where';
    expect(await weightFileParent(1)).toBe('/some/where');
    delete process.env.LORA_SESSION_DIR;
    expect(await weightFileParent(1)).toBe('/else/where');
  });

  it('otherwise RAM (a tmpfs /dev/shm) when the weights fit in half the free RAM, else the OS temp folder', async () => {
    delete process.env.LORA_SESSION_DIR;
    delete process.env.TMPDIR;
    const shm = await statfs('/dev/shm').catch(() => undefined);
    const shmUsable = platform() === 'linux' && shm?.type === 0x01021994;
    if (!shmUsable) console.warn('SKIPPED part: no tmpfs /dev/shm on this machine');
    else if (shm.bavail * shm.bsize > 2 ** 31)
      expect(await weightFileParent(2 ** 20)).toBe('/dev/shm');
    // More than the free RAM: never RAM-backed.
    expect(await weightFileParent(freemem() + 1)).toBe(tmpdir());
  });
});
