import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  readSafetensors,
  svd,
  type Tensor,
  tensor,
  toFloat64Array,
  writeSafetensors,
} from '@lora/core';
import { afterAll, describe, expect, it } from 'vitest';
import { extractAdapter } from './extract.js';
import { mergeIntoModel } from './merge/merge-model.js';
import { randomTensor } from './test-utils/synthetic.js';

const tmpDirs: string[] = [];
afterAll(async () => {
  for (const d of tmpDirs) await rm(d, { recursive: true, force: true });
});

/** W + P·Q with P [m, k], Q [k, n] random: a difference of rank k (almost surely). */
function plusLowRank(W: Tensor, k: number, seed: number): Tensor {
  const [m, n] = W.shape;
  const P = toFloat64Array(randomTensor(seed, [m, k], 'f32', 1));
  const Q = toFloat64Array(randomTensor(seed + 1, [k, n], 'f32', 0.1));
  const w = toFloat64Array(W);
  const out = new Float32Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let t = 0; t < k; t++) acc += P[i * k + t] * Q[t * n + j];
      out[i * n + j] = w[i * n + j] + acc;
    }
  return tensor('f32', [m, n], out);
}

async function pair(base: Map<string, Tensor>, tuned: Map<string, Tensor>, config?: object) {
  const dir = await mkdtemp(join(tmpdir(), 'lora-extract-'));
  tmpDirs.push(dir);
  for (const [sub, t] of [
    ['base', base],
    ['tuned', tuned],
  ] as const) {
    await mkdir(join(dir, sub));
    await writeSafetensors(join(dir, sub, 'model.safetensors'), t);
    if (config) await writeFile(join(dir, sub, 'config.json'), JSON.stringify(config));
  }
  return { dir, base: join(dir, 'base'), tuned: join(dir, 'tuned') };
}

function maxAbsDiff(a: Tensor, b: Tensor): number {
  const x = toFloat64Array(a);
  const y = toFloat64Array(b);
  let d = 0;
  for (let i = 0; i < x.length; i++) d = Math.max(d, Math.abs(x[i] - y[i]));
  return d;
}

describe('extractAdapter', () => {
  it('recovers a rank-3 difference exactly (randomized SVD) and merging it gives the tuned model', async () => {
    const W = randomTensor(1, [300, 200]);
    const T = plusLowRank(W, 3, 10);
    const same = randomTensor(2, [50, 20]);
    const bias = randomTensor(3, [300]);
    const biasTuned = tensor(
      'f32',
      [300],
      (bias.data as Float32Array).map((v) => v + 0.01),
    );
    const p = await pair(
      new Map([
        ['l.fc.weight', W],
        ['l.same.weight', same],
        ['l.fc.bias', bias],
      ]),
      new Map([
        ['l.fc.weight', T],
        ['l.same.weight', same],
        ['l.fc.bias', biasTuned],
      ]),
    );
    const r = await extractAdapter(p.base, p.tuned, { rank: 3, exactUpTo: 64 });
    expect(r.modules.map((m) => m.module)).toEqual(['l.fc']);
    expect(r.modules[0].method).toBe('randomized');
    expect(r.modules[0].energy).toBeGreaterThan(1 - 1e-6);
    expect(r.skipped.map((s) => s.tensor)).toEqual(['l.fc.bias']);
    const out = join(p.dir, 'merged');
    await mergeIntoModel(p.base, [{ adapter: r.adapter }], out, { residual: false });
    const merged = (await readSafetensors(join(out, 'model.safetensors'))).tensors.get(
      'l.fc.weight',
    )!;
    expect(maxAbsDiff(merged, T)).toBeLessThan(1e-5);
  });

  it('reports the captured energy of a truncated difference (against a dense SVD), exact and randomized', async () => {
    const W = randomTensor(4, [40, 30]);
    const T = plusLowRank(W, 6, 20);
    const big = randomTensor(5, [120, 100]);
    const bigT = plusLowRank(big, 8, 30);
    const p = await pair(
      new Map([
        ['a.weight', W],
        ['b.weight', big],
      ]),
      new Map([
        ['a.weight', T],
        ['b.weight', bigT],
      ]),
    );
    const r = await extractAdapter(p.base, p.tuned, { rank: 2, exactUpTo: 32 });
    const expected = (base: Tensor, tuned: Tensor) => {
      const d = toFloat64Array(tuned).map((v, i) => v - toFloat64Array(base)[i]);
      const { s } = svd(tensor('f64', [...base.shape], d));
      const all = s.reduce((a, v) => a + v * v, 0);
      return (s[0] ** 2 + s[1] ** 2) / all;
    };
    const a = r.modules.find((m) => m.module === 'a')!;
    const b = r.modules.find((m) => m.module === 'b')!;
    expect(a.method).toBe('exact');
    expect(b.method).toBe('randomized');
    expect(Math.abs(a.energy - expected(W, T))).toBeLessThan(1e-9);
    expect(Math.abs(b.energy - expected(big, bigT))).toBeLessThan(1e-3);
    expect(a.energy).toBeLessThan(1);
  });

  it('GPT-2 layout (config model_type gpt2): fan_in_fan_out adapter in torch layout, merges back', async () => {
    const W = randomTensor(6, [48, 144]); // Conv1D [in, out]
    const T = plusLowRank(W, 2, 40);
    const p = await pair(
      new Map([['h.0.attn.c_attn.weight', W]]),
      new Map([['h.0.attn.c_attn.weight', T]]),
      { model_type: 'gpt2' },
    );
    const r = await extractAdapter(p.base, p.tuned, { rank: 2, alpha: 8 });
    expect(r.adapter.config.fan_in_fan_out).toBe(true);
    const m = r.adapter.modules.get('h.0.attn.c_attn')!;
    expect(m.A.shape).toEqual([2, 48]); // [r, in]
    expect(m.B.shape).toEqual([144, 2]); // [out, r]
    const out = join(p.dir, 'merged');
    await mergeIntoModel(p.base, [{ adapter: r.adapter }], out, { residual: false });
    const merged = (await readSafetensors(join(out, 'model.safetensors'))).tensors.get(
      'h.0.attn.c_attn.weight',
    )!;
    expect(maxAbsDiff(merged, T)).toBeLessThan(1e-5);
  });

  it('a rank above the rank a changed layer can have is refused, not padded with zeros', async () => {
    const W = randomTensor(7, [12, 40]);
    const p = await pair(
      new Map([['l.fc.weight', W]]),
      new Map([['l.fc.weight', plusLowRank(W, 2, 50)]]),
    );
    await expect(extractAdapter(p.base, p.tuned, { rank: 1000 })).rejects.toMatchObject({
      code: 'EXTRACT_RANK_TOO_LARGE',
      message: expect.stringMatching(
        /rank 1000 is above the largest rank of l.fc.weight \(\[12, 40\]: at most 12\)/,
      ),
    });
    const full = await extractAdapter(p.base, p.tuned, { rank: 12 });
    expect(full.adapter.modules.get('l.fc')!.A.shape).toEqual([12, 40]);
  });
});
