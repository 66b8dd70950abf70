import { describe, expect, it } from 'vitest';
import { CoreError } from './errors.js';
import { createRng, restoreRng } from './random.js';

// The published expected output of the PCG reference demo/check program
// (imneme/pcg-c, test-high/expected/check-pcg32.out), seeded with pcg32_srandom_r(42, 54).
// Each round prints six raw outputs, 65 coin flips (boundedrand(2) ? H : T), 33 dice rolls
// (boundedrand(6) + 1) and a Fisher-Yates shuffle of 52 cards; rounds continue one stream.
const PCG32_DEMO = [
  {
    raw: [0xa15c02b7, 0x7b47f409, 0xba1d3330, 0x83d2f293, 0xbfa4784b, 0xcbed606e],
    coins: 'HHTTTHTHHHTHTTTHHHHHTTTHHHTHTHTHTTHTTTHHHHHHTTTTHHTTTTTHTTTTTTTHT',
    rolls: '3 4 1 1 2 2 3 2 4 3 2 4 3 3 5 2 3 1 3 1 5 1 4 1 5 6 4 6 6 2 6 3 3',
    cards:
      'Qd Ks 6d 3s 3d 4c 3h Td Kc 5c Jh Kd Jd As 4s 4h Ad Th Ac Jc 7s Qs ' +
      '2s 7h Kh 2d 6c Ah 4d Qh 9h 6s 5s 2c 9c Ts 8d 9s 3c 8c Js 5d 2h 6h ' +
      '7d 8s 9d 5h 8h Qc 7c Tc',
  },
  {
    raw: [0x74ab93ad, 0x1c1da000, 0x494ff896, 0x34462f2f, 0xd308a3e5, 0x0fa83bab],
    coins: 'HHHHHHHHHHTHHHTHTHTHTHTTTTHHTTTHHTHHTHTTHHTTTHHHHHHTHTTHTHTTTTTTT',
    rolls: '5 1 1 3 3 2 4 5 3 2 2 6 4 3 2 4 2 4 3 2 3 6 3 2 3 4 2 4 1 1 5 4 4',
    cards:
      '7d 2s 7h Td 8s 3c 3d Js 2d Tc 4h Qs 5c 9c Th 2c Jc Qd 9d Qc 7s 3s ' +
      '5s 6h 4d Jh 4c Ac 4s 5h 5d Kc 8h 8d Jd 9s Ad 6s 6c Kd 2h 3h Kh Ts ' +
      'Qh 9h 6d As 7c Ks Ah 8c',
  },
];

describe('PCG32 against the published reference output', () => {
  it('reproduces two full rounds of pcg32-demo(42, 54): raw outputs, coins, dice and card shuffle', () => {
    const rng = createRng(42, 54);
    const numbers = 'A23456789TJQK';
    const suits = 'hcds';
    for (const round of PCG32_DEMO) {
      expect(Array.from({ length: 6 }, () => rng.nextUint32())).toEqual(round.raw);
      const coins = Array.from({ length: 65 }, () => (rng.integer(2) ? 'H' : 'T')).join('');
      expect(coins).toBe(round.coins);
      const rolls = Array.from({ length: 33 }, () => rng.integer(6) + 1).join(' ');
      expect(rolls).toBe(round.rolls);
      // The demo shuffles cards[i] = i exactly like permutation(52).
      const deck = Array.from(rng.permutation(52), (c) => numbers[c >> 2] + suits[c & 3]).join(' ');
      expect(deck).toBe(round.cards);
    }
  });

  it('accepts bigint seeds (mod 2^64) with the same meaning as numbers', () => {
    const a = createRng(42n, 54n);
    const b = createRng(42n + 2n ** 64n, 54n);
    expect(a.nextUint32()).toBe(0xa15c02b7);
    expect(b.nextUint32()).toBe(0xa15c02b7);
  });

  it('matches an independent BigInt transcription of pcg32_random_r for a large seed and stream', () => {
    // Written separately from the 32-bit-halves implementation: plain 64-bit BigInt arithmetic.
    const mask = (1n << 64n) - 1n;
    const seed = 0x853c49e6748fea9bn;
    const seq = 0xda3e39cb94b95bdbn;
    const inc = ((seq << 1n) | 1n) & mask;
    let state = 0n;
    const step = (): number => {
      const old = state;
      state = (old * 6364136223846793005n + inc) & mask;
      const xorshifted = Number((((old >> 18n) ^ old) >> 27n) & 0xffffffffn);
      const rot = Number(old >> 59n);
      return ((xorshifted >>> rot) | (xorshifted << (-rot & 31))) >>> 0;
    };
    step();
    state = (state + seed) & mask;
    step();
    const expected = Array.from({ length: 1000 }, step);
    const rng = createRng(seed, seq);
    expect(Array.from({ length: 1000 }, () => rng.nextUint32())).toEqual(expected);
  });
});

describe('derived distributions', () => {
  it('uniform() builds 53-bit floats from two raw outputs: (a >>> 5) * 2^26 + (b >>> 6), over 2^53', () => {
    const raw = createRng(7, 3);
    const rng = createRng(7, 3);
    for (let i = 0; i < 100; i++) {
      const a = raw.nextUint32() >>> 5;
      const b = raw.nextUint32() >>> 6;
      expect(rng.uniform()).toBe((a * 2 ** 26 + b) / 2 ** 53);
    }
  });

  it('normal() is Box-Muller on (1 - u1, u2): cos output first, then the cached sin output', () => {
    const raw = createRng(11, 4);
    const rng = createRng(11, 4);
    for (let i = 0; i < 50; i++) {
      const u1 = 1 - raw.uniform();
      const u2 = raw.uniform();
      const radius = Math.sqrt(-2 * Math.log(u1));
      expect(rng.normal()).toBe(radius * Math.cos(2 * Math.PI * u2));
      expect(rng.normal()).toBe(radius * Math.sin(2 * Math.PI * u2));
    }
  });

  it('uniform has mean 1/2 and variance 1/12 over 1e5 draws', () => {
    const x = createRng(1).uniformArray(100_000);
    const { mean, variance, min, max } = moments(x);
    // Standard error of the mean: sqrt(1/12 / 1e5) ~ 9.1e-4; allow 5 sigma.
    expect(Math.abs(mean - 0.5)).toBeLessThan(5 * 9.1e-4);
    expect(Math.abs(variance - 1 / 12)).toBeLessThan(0.002);
    expect(min).toBeGreaterThanOrEqual(0);
    expect(max).toBeLessThan(1);
  });

  it('normal has mean 0, variance 1 and the right tail mass over 1e5 draws', () => {
    const x = createRng(2).normalArray(100_000);
    const { mean, variance } = moments(x);
    expect(Math.abs(mean)).toBeLessThan(5 * Math.sqrt(1 / 100_000));
    // Var of the sample variance of N(0,1) is 2/n: sd ~ 0.0045.
    expect(Math.abs(variance - 1)).toBeLessThan(5 * 0.0045);
    // P(|z| > 1.96) = 0.05; binomial sd = sqrt(0.05 * 0.95 / 1e5) ~ 6.9e-4.
    const tail = x.reduce((n, v) => n + (Math.abs(v) > 1.959964 ? 1 : 0), 0) / x.length;
    expect(Math.abs(tail - 0.05)).toBeLessThan(5 * 6.9e-4);
  });

  it('normalArray and uniformArray honour mean/std and lo/hi, in float32 or float64', () => {
    const n = createRng(3).normalArray(50_000, 3, 0.5, 'f32');
    expect(n).toBeInstanceOf(Float32Array);
    const m = moments(n);
    expect(Math.abs(m.mean - 3)).toBeLessThan(5 * (0.5 / Math.sqrt(50_000)));
    expect(Math.abs(Math.sqrt(m.variance) - 0.5)).toBeLessThan(0.01);
    const u = createRng(4).uniformArray(50_000, -2, 6, 'f64');
    const mu = moments(u);
    expect(mu.min).toBeGreaterThanOrEqual(-2);
    expect(mu.max).toBeLessThan(6);
    expect(Math.abs(mu.mean - 2)).toBeLessThan(5 * Math.sqrt(64 / 12 / 50_000));
  });

  it('bernoulli(p) hits at rate p', () => {
    const rng = createRng(5);
    for (const p of [0.1, 0.5, 0.9]) {
      let hits = 0;
      for (let i = 0; i < 100_000; i++) hits += rng.bernoulli(p) ? 1 : 0;
      expect(Math.abs(hits / 100_000 - p)).toBeLessThan(5 * Math.sqrt((p * (1 - p)) / 100_000));
    }
    expect(rng.bernoulli(0)).toBe(false);
    expect(rng.bernoulli(1)).toBe(true);
  });

  it('integer(bound) is uniform over [0, bound) for a bound that does not divide 2^32', () => {
    const rng = createRng(6);
    const counts = new Array(7).fill(0);
    for (let i = 0; i < 70_000; i++) counts[rng.integer(7)]++;
    // Chi-square with 6 degrees of freedom; 22.46 is the 0.999 quantile.
    const chi2 = counts.reduce((s, c) => s + (c - 10_000) ** 2 / 10_000, 0);
    expect(chi2).toBeLessThan(22.46);
  });

  it('permutation(n) is a permutation, and each position is uniform', () => {
    const rng = createRng(8);
    const p = rng.permutation(1000);
    expect(Array.from(p).sort((a, b) => a - b)).toEqual(Array.from({ length: 1000 }, (_, i) => i));
    expect(rng.permutation(0)).toEqual(new Uint32Array(0));
    expect(rng.permutation(1)).toEqual(Uint32Array.of(0));
    // Where does element 0 land over many shuffles of 5? Uniform over 5 positions.
    const counts = new Array(5).fill(0);
    for (let i = 0; i < 25_000; i++) counts[rng.permutation(5).indexOf(0)]++;
    const chi2 = counts.reduce((s, c) => s + (c - 5000) ** 2 / 5000, 0);
    expect(chi2).toBeLessThan(18.47); // 0.999 quantile, 4 degrees of freedom
  });
});

describe('determinism, streams, fork and state', () => {
  it('the same seed gives the same stream; another seed or stream gives another', () => {
    const a = createRng(123).normalArray(64);
    expect(createRng(123).normalArray(64)).toEqual(a);
    expect(createRng(124).normalArray(64)).not.toEqual(a);
    expect(createRng(123, 1).normalArray(64)).not.toEqual(a);
  });

  it('fork() is deterministic, and child and parent streams differ', () => {
    const p1 = createRng(9);
    const p2 = createRng(9);
    const c1 = p1.fork();
    const c2 = p2.fork();
    const child = Array.from({ length: 32 }, () => c1.nextUint32());
    expect(Array.from({ length: 32 }, () => c2.nextUint32())).toEqual(child);
    expect(Array.from({ length: 32 }, () => p1.nextUint32())).not.toEqual(child);
  });

  it('saveState/restoreRng continue the exact stream, including a cached normal', () => {
    const rng = createRng(10);
    rng.normal(); // leaves the second Box-Muller value cached
    const saved = JSON.parse(JSON.stringify(rng.saveState()));
    const expected = rng.normalArray(9);
    expect(restoreRng(saved).normalArray(9)).toEqual(expected);
  });

  it('rejects bad seeds, bounds, probabilities and states with CoreError', () => {
    expect(() => createRng(-1)).toThrow(CoreError);
    expect(() => createRng(1.5)).toThrow(/non-negative safe integer/);
    const rng = createRng(1);
    expect(() => rng.integer(0)).toThrow(CoreError);
    expect(() => rng.bernoulli(1.5)).toThrow(/p in \[0, 1\]/);
    expect(() => rng.uniformArray(3, 0, Number.NaN)).toThrow(CoreError);
    expect(() =>
      restoreRng({ algorithm: 'pcg32', state: 'xyz', inc: '1', spareNormal: null }),
    ).toThrow(CoreError);
  });
});

function moments(x: ArrayLike<number>): {
  mean: number;
  variance: number;
  min: number;
  max: number;
} {
  let sum = 0;
  let min = Number.POSITIVE_INFINITY;
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < x.length; i++) {
    sum += x[i];
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
  }
  const mean = sum / x.length;
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += (x[i] - mean) ** 2;
  return { mean, variance: ss / (x.length - 1), min, max };
}
