import { join } from 'node:path';
import {
  createLoraConfig,
  matchTargets,
  svd,
  type Tensor,
  tensor,
  toFloat64Array,
} from '@lora/core';
import { describe, expect, it } from 'vitest';
import type { Adapter, LoraModule } from './adapter.js';
import { combineAdapters } from './combine.js';
import { loadPeftAdapter } from './peft/load.js';
import { HAVE_PEFT_FIXTURES, PEFT_FIXTURES } from './test-utils/fixtures.js';
import { syntheticAdapter } from './test-utils/synthetic.js';

/** B·A in float64 (plain loops, independent of the package). */
function product(m: LoraModule): Float64Array {
  const A = toFloat64Array(m.A);
  const B = toFloat64Array(m.B);
  const [r, inF] = m.A.shape;
  const outF = m.B.shape[0];
  const out = new Float64Array(outF * inF);
  for (let o = 0; o < outF; o++)
    for (let i = 0; i < inF; i++)
      for (let k = 0; k < r; k++) out[o * inF + i] += B[o * r + k] * A[k * inF + i];
  return out;
}

function maxRelDiff(a: Float64Array, b: Float64Array): number {
  let scale = 0;
  for (const v of b) scale = Math.max(scale, Math.abs(v));
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d / scale;
}

/** A one-module adapter from literal numbers: A [r, in], B [out, r]. */
function literal(A: number[][], B: number[][], alpha: number): Adapter {
  const r = A.length;
  const m: LoraModule = {
    A: tensor('f32', [r, A[0].length], Float32Array.from(A.flat())),
    B: tensor('f32', [B.length, r], Float32Array.from(B.flat())),
  };
  return {
    config: createLoraConfig({ r, lora_alpha: alpha, target_modules: ['q'] }),
    modules: new Map([['m.q', m]]),
    modulesToSave: new Map(),
  };
}
const values = (t: Tensor) => Array.from(toFloat64Array(t));

const a1 = syntheticAdapter(
  { 'l.0.q': { in: 40, out: 24 }, 'l.0.v': { in: 40, out: 8 } },
  { r: 4, lora_alpha: 8 },
  1,
);
const a2 = syntheticAdapter(
  { 'l.0.q': { in: 40, out: 24 }, 'l.0.v': { in: 40, out: 8 } },
  { r: 6, lora_alpha: 3, use_rslora: true },
  2,
);
const s1 = 8 / 4;
const s2 = 3 / Math.sqrt(6);

function weightedSum(name: string, w1: number, w2: number): Float64Array {
  const p1 = product(a1.modules.get(name)!);
  const p2 = product(a2.modules.get(name)!);
  return p1.map((v, i) => w1 * s1 * v + w2 * s2 * p2[i]);
}

describe('combineAdapters', () => {
  it('cat is exact: B·A = Σ w_i s_i B_i A_i, rank = sum of ranks, alpha = rank', () => {
    const { adapter } = combineAdapters(
      [
        { adapter: a1, weight: 0.7 },
        { adapter: a2, weight: -0.4 },
      ],
      { method: 'cat' },
    );
    expect(adapter.config.r).toBe(10);
    expect(adapter.config.lora_alpha).toBe(10);
    expect(adapter.config.use_rslora).toBe(false);
    for (const name of ['l.0.q', 'l.0.v']) {
      expect(
        maxRelDiff(product(adapter.modules.get(name)!), weightedSum(name, 0.7, -0.4)),
      ).toBeLessThan(1e-6);
    }
  });

  it('svd applies the scaling once: with enough rank it reproduces the weighted sum', () => {
    const { adapter } = combineAdapters(
      [
        { adapter: a1, weight: 0.7 },
        { adapter: a2, weight: 0.3 },
      ],
      { method: 'svd', rank: 10 },
    );
    expect(adapter.config.r).toBe(10);
    expect(adapter.config.lora_alpha).toBe(10);
    expect(
      maxRelDiff(product(adapter.modules.get('l.0.q')!), weightedSum('l.0.q', 0.7, 0.3)),
    ).toBeLessThan(1e-6);
  });

  it('svd truncation is optimal (Eckart-Young): error^2 = sum of the dropped singular values^2', () => {
    const { adapter } = combineAdapters([{ adapter: a1 }, { adapter: a2 }], {
      method: 'svd',
      rank: 3,
    });
    const M = weightedSum('l.0.q', 1, 1);
    const { s } = svd(tensor('f64', [24, 40], M)); // dense SVD of the full sum
    const tail = s.slice(3).reduce((acc, v) => acc + v * v, 0);
    const approx = product(adapter.modules.get('l.0.q')!);
    let err = 0;
    for (let i = 0; i < M.length; i++) err += (M[i] - approx[i]) ** 2;
    expect(Math.abs(err - tail) / tail).toBeLessThan(1e-5);
  });

  it('linear: A weighted by sign(ws)·sqrt|ws|, B by sqrt|ws| (hand-computed)', () => {
    // ws1 = 1 · 4/1 = 4 -> A·2, B·2; ws2 = -1 · 1/1 = -1 -> A·(-1), B·1.
    const x = literal([[1, 2]], [[1], [0]], 4);
    const y = literal([[3, 4]], [[0], [1]], 1);
    const { adapter } = combineAdapters([{ adapter: x }, { adapter: y, weight: -1 }], {
      method: 'linear',
    });
    const m = adapter.modules.get('m.q')!;
    expect(values(m.A)).toEqual([-1, 0]);
    expect(values(m.B)).toEqual([2, 1]);
  });

  it('ties: sign election by total or by frequency, mean of the agreeing entries (hand-computed)', () => {
    const t = (a: number[]) => literal([a], [[1]], 1); // s = 1, weight 1: A and B weights are 1
    const ties = (inputs: Adapter[], majoritySignMethod: 'total' | 'frequency') =>
      values(
        combineAdapters(
          inputs.map((adapter) => ({ adapter })),
          { method: 'ties', density: 1, majoritySignMethod },
        ).adapter.modules.get('m.q')!.A,
      );
    expect(ties([t([3, -1, 2, 0]), t([-1, -2, 2, 5])], 'total')).toEqual([3, -1.5, 2, 5]);
    expect(ties([t([10]), t([-1]), t([-1])], 'total')).toEqual([10]);
    expect(ties([t([10]), t([-1]), t([-1])], 'frequency')).toEqual([-1]);
  });

  it('magnitude_prune keeps the top density share by |x| (hand-computed)', () => {
    const x = literal([[1, -4, 2, 3]], [[1]], 1);
    const { adapter } = combineAdapters([{ adapter: x }], {
      method: 'magnitude_prune',
      density: 0.5,
    });
    expect(values(adapter.modules.get('m.q')!.A)).toEqual([0, -4, 0, 3]);
  });

  it('dare_linear: each entry dropped or rescaled by 1/density, seeded', () => {
    const big = syntheticAdapter({ 'l.q': { in: 500, out: 4 } }, { r: 8, lora_alpha: 8 }, 3);
    const run = (seed: number) =>
      combineAdapters([{ adapter: big }], {
        method: 'dare_linear',
        density: 0.25,
        seed,
      }).adapter.modules.get('l.q')!;
    const a = run(5);
    const orig = toFloat64Array(big.modules.get('l.q')!.A);
    const got = toFloat64Array(a.A);
    let kept = 0;
    for (let i = 0; i < got.length; i++) {
      if (got[i] !== 0) {
        kept++;
        expect(Math.abs(got[i] - orig[i] / 0.25)).toBeLessThan(1e-6 * Math.abs(orig[i] / 0.25));
      }
    }
    expect(kept / got.length).toBeGreaterThan(0.2);
    expect(kept / got.length).toBeLessThan(0.3);
    expect(values(run(5).A)).toEqual(values(a.A));
    expect(values(run(6).A)).not.toEqual(values(a.A));
  });

  it('a list and a regex target_modules combine into a regex that targets what either did', () => {
    const modules = { 'model.l.0.q': { in: 8, out: 8 }, 'model.l.0.v': { in: 8, out: 8 } };
    const listed = syntheticAdapter(modules, { r: 2, lora_alpha: 2, target_modules: ['q'] }, 3);
    const regex = syntheticAdapter(modules, { r: 2, lora_alpha: 2, target_modules: '.*\\.v' }, 4);
    const { adapter } = combineAdapters(
      [
        { adapter: listed, weight: 1 },
        { adapter: regex, weight: 1 },
      ],
      { method: 'cat' },
    );
    const names = ['model.l.0.q', 'model.l.0.v', 'model.l.0.k', 'q', 'model.l.0.xq'];
    // PEFT's meaning of each input: a list entry is the name or a `.entry` suffix.
    expect(matchTargets(adapter.config, names)).toEqual(['model.l.0.q', 'model.l.0.v', 'q']);
  });

  it('refuses unequal ranks for linear, and a missing density', () => {
    expect(() => combineAdapters([{ adapter: a1 }, { adapter: a2 }], { method: 'linear' })).toThrow(
      /equal ranks/,
    );
    expect(() => combineAdapters([{ adapter: a1 }], { method: 'ties' })).toThrow(/density/);
  });

  it('refuses options the method does not use, and an svd rank above the summed input ranks', () => {
    const both = [{ adapter: a1 }, { adapter: a2 }];
    expect(() => combineAdapters(both, { method: 'cat', density: 0.5 })).toThrow(
      /--density does nothing with --method cat/,
    );
    expect(() => combineAdapters(both, { method: 'cat', rank: 4 })).toThrow(/--rank does nothing/);
    expect(() => combineAdapters(both, { method: 'svd', svdClamp: 0.9, rank: 4 })).not.toThrow();
    expect(() =>
      combineAdapters([{ adapter: a1 }], { method: 'linear', majoritySignMethod: 'frequency' }),
    ).toThrow(/--majority-sign does nothing with --method linear/);
    expect(() =>
      combineAdapters([{ adapter: a1 }], { method: 'ties', density: 0.5, seed: 3 }),
    ).toThrow(/--seed does nothing with --method ties/);
    // a1 has rank 4, a2 rank 6: no weighted sum has rank above 10.
    expect(() => combineAdapters(both, { method: 'svd', rank: 11 })).toThrow(
      /--rank 11 is above the rank of any weighted sum of these adapters \(at most 10/,
    );
  });

  it.skipIf(!HAVE_PEFT_FIXTURES)(
    'real adapter: cat of qwen with itself at weights 0.5 + 0.5 is the adapter',
    async () => {
      const { adapter } = await loadPeftAdapter(join(PEFT_FIXTURES, 'qwen2.5-0.5b-qv'));
      const { adapter: c } = combineAdapters(
        [
          { adapter, weight: 0.5 },
          { adapter, weight: 0.5 },
        ],
        { method: 'cat' },
      );
      const name = 'model.layers.3.self_attn.v_proj';
      const want = product(adapter.modules.get(name)!).map((v) => v * (16 / 8));
      expect(maxRelDiff(product(c.modules.get(name)!), want)).toBeLessThan(1e-6);
    },
  );
});
