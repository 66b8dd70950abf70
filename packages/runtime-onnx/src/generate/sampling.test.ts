import { createRng } from '@lora/core';
import { describe, expect, it } from 'vitest';
import {
  applyRepetitionPenalty,
  argmax,
  sampleToken,
  samplingDistribution,
  validateSamplingOptions,
} from './sampling.js';

// Logits whose softmax at temperature 1 is exactly q = [0.1, 0.2, 0.3, 0.4] (up to float32 rounding).
const q = [0.1, 0.2, 0.3, 0.4];
const logits = Float32Array.from(q, Math.log);

/** The distribution as {id: prob}, for comparison with hand-computed values. */
function asMap(d: { ids: Int32Array; probs: Float64Array }): Record<number, number> {
  return Object.fromEntries([...d.ids].map((id, j) => [id, d.probs[j]]));
}

function expectDistribution(actual: Record<number, number>, expected: Record<number, number>) {
  expect(Object.keys(actual).sort()).toEqual(Object.keys(expected).sort());
  for (const [id, p] of Object.entries(expected)) expect(actual[Number(id)]).toBeCloseTo(p, 6);
}

describe('greedy', () => {
  it('takes the argmax, ties to the lowest id', () => {
    expect(argmax(Float32Array.of(1, 3, 3, 2))).toBe(1);
    expect(argmax(Float32Array.of(-5, -Infinity, -1))).toBe(2);
    expect(sampleToken(logits, { temperature: 0 }, () => 0.99)).toBe(3);
    expect(() => argmax(Float32Array.of(1, Number.NaN))).toThrow(/logit 1 is NaN/);
  });
});

describe('samplingDistribution (hand-computed, q = [.1 .2 .3 .4])', () => {
  it('temperature 1 is softmax; temperature 2 is proportional to sqrt(q); 0.5 to q^2', () => {
    expectDistribution(asMap(samplingDistribution(logits, { temperature: 1 })), {
      0: 0.1,
      1: 0.2,
      2: 0.3,
      3: 0.4,
    });
    const s = q.map(Math.sqrt);
    const sSum = s.reduce((a, b) => a + b);
    expectDistribution(
      asMap(samplingDistribution(logits, { temperature: 2 })),
      Object.fromEntries(s.map((v, i) => [i, v / sSum])),
    );
    // q^2 = [.01 .04 .09 .16], sum .30
    expectDistribution(asMap(samplingDistribution(logits, { temperature: 0.5 })), {
      0: 0.01 / 0.3,
      1: 0.04 / 0.3,
      2: 0.09 / 0.3,
      3: 0.16 / 0.3,
    });
  });

  it('orders the kept ids by probability, most likely first', () => {
    expect([...samplingDistribution(logits, { temperature: 1 }).ids]).toEqual([3, 2, 1, 0]);
  });

  it('top-k keeps exactly k, renormalised, ties at the cut to the lower id', () => {
    expectDistribution(asMap(samplingDistribution(logits, { temperature: 1, topK: 2 })), {
      3: 0.4 / 0.7,
      2: 0.3 / 0.7,
    });
    expectDistribution(asMap(samplingDistribution(logits, { temperature: 1, topK: 1 })), { 3: 1 });
    const tied = Float32Array.of(0, 1, 1, 1); // three equal logits compete for two places
    expectDistribution(asMap(samplingDistribution(tied, { temperature: 1, topK: 2 })), {
      1: 0.5,
      2: 0.5,
    });
  });

  it('top-p keeps the smallest most-likely set reaching p', () => {
    expectDistribution(asMap(samplingDistribution(logits, { temperature: 1, topP: 0.35 })), {
      3: 1,
    });
    expectDistribution(asMap(samplingDistribution(logits, { temperature: 1, topP: 0.5 })), {
      3: 0.4 / 0.7,
      2: 0.3 / 0.7,
    });
    expectDistribution(asMap(samplingDistribution(logits, { temperature: 1, topP: 0.75 })), {
      3: 0.4 / 0.9,
      2: 0.3 / 0.9,
      1: 0.2 / 0.9,
    });
    // after temperature 0.5 the probabilities are [.033 .133 .3 .533]: 0.55 needs two of them
    expectDistribution(asMap(samplingDistribution(logits, { temperature: 0.5, topP: 0.55 })), {
      3: 0.16 / 0.25,
      2: 0.09 / 0.25,
    });
  });

  it('applies top-k before top-p (top-p sees the renormalised top-k set)', () => {
    // top-k 2 gives {3: .571, 2: .429}; p = .55 is then reached by id 3 alone.
    // (top-p first would keep {3, 2}: .4 < .55 on the full distribution.)
    expectDistribution(
      asMap(samplingDistribution(logits, { temperature: 1, topK: 2, topP: 0.55 })),
      { 3: 1 },
    );
  });

  it('top-k on a large random vocabulary keeps the same set as a full sort', () => {
    const rng = createRng(5);
    const big = Float32Array.from({ length: 5_000 }, () => rng.normal() * 3);
    for (const k of [1, 2, 37, 4_999]) {
      const bySort = [...big.keys()].sort((a, b) => big[b] - big[a] || a - b).slice(0, k);
      const d = samplingDistribution(big, { temperature: 0.7, topK: k });
      expect([...d.ids].sort((a, b) => a - b)).toEqual(bySort.sort((a, b) => a - b));
    }
  });

  it('top-p on a large random vocabulary with ties keeps the prefix a full sort gives', () => {
    const rng = createRng(9);
    // Logits on a coarse grid, so many ties, some at the cut.
    const big = Float32Array.from({ length: 3_000 }, () => Math.round(rng.normal() * 4) / 2);
    for (const [temperature, topP] of [
      [1, 0.3],
      [0.7, 0.9],
      [2, 0.5],
      [1, 0.999],
    ]) {
      const w = Array.from(big, (l) => Math.exp(l / temperature));
      const order = [...w.keys()].sort((a, b) => w[b] - w[a] || a - b);
      const total = w.reduce((a, b) => a + b, 0);
      const expected: number[] = [];
      let cumulative = 0;
      for (const id of order) {
        if (cumulative >= topP * total) break;
        expected.push(id);
        cumulative += w[id];
      }
      const d = samplingDistribution(big, { temperature, topP });
      expect(
        [...d.ids].sort((a, b) => a - b),
        `T=${temperature} p=${topP}`,
      ).toEqual(expected.sort((a, b) => a - b));
    }
  });

  it('finds the nucleus in a large vocabulary with a long flat tail', () => {
    // 1 token with weight 1, then 50,000 tokens each 1e-6 as likely: total 1.05.
    const big = new Float32Array(50_001).fill(Math.log(1e-6));
    big[7] = 0;
    const d = samplingDistribution(big, { temperature: 1, topP: 0.96 });
    // 1/1.05 = .952 < .96, so the nucleus needs (0.96 * 1.05 - 1) / 1e-6 = 8,000 tail tokens, the lowest ids first.
    expect(d.ids[0]).toBe(7);
    expect(d.ids.length).toBeGreaterThanOrEqual(8_000 + 1 - 2);
    expect(d.ids.length).toBeLessThanOrEqual(8_000 + 1 + 2);
    expect([...d.ids.slice(1, 4)]).toEqual([0, 1, 2]);
  });
});

describe('sampleToken', () => {
  it('draws with the expected frequencies (20,000 seeded draws, within 4.5 standard deviations)', () => {
    const cases = [
      { options: { temperature: 1 }, expected: [0.1, 0.2, 0.3, 0.4] },
      { options: { temperature: 1, topK: 3 }, expected: [0, 0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9] },
      { options: { temperature: 0.5, topP: 0.55 }, expected: [0, 0, 0.09 / 0.25, 0.16 / 0.25] },
    ];
    const n = 20_000;
    for (const { options, expected } of cases) {
      const rng = createRng(1234);
      const counts = [0, 0, 0, 0];
      for (let i = 0; i < n; i++) counts[sampleToken(logits, options, () => rng.uniform())]++;
      expected.forEach((p, id) => {
        const sd = Math.sqrt((p * (1 - p)) / n);
        expect(
          Math.abs(counts[id] / n - p),
          `${JSON.stringify(options)} id ${id}`,
        ).toBeLessThanOrEqual(4.5 * sd + 1e-12);
      });
    }
  });

  it('is deterministic for a seed and differs between seeds', () => {
    const run = (seed: number) => {
      const rng = createRng(seed);
      return Array.from({ length: 200 }, () =>
        sampleToken(logits, { temperature: 1.3, topP: 0.9 }, () => rng.uniform()),
      );
    };
    expect(run(7)).toEqual(run(7));
    expect(run(7)).not.toEqual(run(8));
  });

  it('maps the uniform draw through the cumulative distribution, in ascending id order', () => {
    // ids 0..3 with probabilities .1 .2 .3 .4: cumulative .1 .3 .6 1
    const draws = [0, 0.09, 0.11, 0.29, 0.31, 0.59, 0.61, 0.999];
    expect(draws.map((u) => sampleToken(logits, { temperature: 1 }, () => u))).toEqual([
      0, 0, 1, 1, 2, 2, 3, 3,
    ]);
    // top-k 2 keeps ids 2 (.3/.7) and 3 (.4/.7): cumulative .4286 1
    expect(
      [0.42, 0.43].map((u) => sampleToken(logits, { temperature: 1, topK: 2 }, () => u)),
    ).toEqual([2, 3]);
  });
});

describe('repetition penalty', () => {
  it('divides positive and multiplies negative logits of seen ids, once each, without touching the input', () => {
    const input = Float32Array.of(2, -2, 1, 4);
    const out = applyRepetitionPenalty(input, [0, 1, 0, 1], 2);
    expect([...out]).toEqual([1, -4, 1, 4]);
    expect([...input]).toEqual([2, -2, 1, 4]);
    // with the penalty, greedy goes from id 0 (logit 3) to id 2 (logit 2.5)
    const l = Float32Array.of(3, 0, 2.5);
    expect(sampleToken(l, { temperature: 0 }, Math.random, [0])).toBe(0);
    expect(sampleToken(l, { temperature: 0, repetitionPenalty: 1.5 }, Math.random, [0])).toBe(2);
  });
});

describe('validateSamplingOptions', () => {
  it('names the bad option', () => {
    expect(() => validateSamplingOptions({ temperature: -1 })).toThrow(
      /temperature must be a finite number >= 0/,
    );
    expect(() => validateSamplingOptions({ topK: 1.5 })).toThrow(/topK must be an integer/);
    expect(() => validateSamplingOptions({ topP: 0 })).toThrow(/topP must be in \(0, 1\]/);
    expect(() => validateSamplingOptions({ topP: 1.1 })).toThrow(/topP/);
    expect(() => validateSamplingOptions({ repetitionPenalty: 0 })).toThrow(/repetitionPenalty/);
    expect(() =>
      validateSamplingOptions({ temperature: 0.7, topK: 40, topP: 0.95, repetitionPenalty: 1.1 }),
    ).not.toThrow();
    // sampleToken checks too, rather than loop on a nucleus of mass 0
    expect(() => sampleToken(logits, { temperature: 1, topP: 0 }, () => 0.5)).toThrow(
      /topP must be in/,
    );
  });
});
