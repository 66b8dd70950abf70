import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { AdamW } from './adamw.js';
import { clipGradNorm } from './clip.js';
import { decaysWeight, type Parameter } from './parameters.js';
import { lrFactor, type ScheduleName } from './schedule.js';

// Made by scripts/reference/train-optim.py with torch 2.13 and transformers 5.17.
const ref = JSON.parse(
  readFileSync(new URL('./testdata/optim-reference.json', import.meta.url), 'utf8'),
) as {
  adamw: {
    lr: number;
    betas: [number, number];
    eps: number;
    weight_decay_w: number;
    max_grad_norm: number;
    warmup: number;
    total: number;
    init: { w: number[]; b: number[] };
    steps: {
      grad_w: number[];
      grad_b: number[];
      lr: number;
      grad_norm: number;
      w: number[];
      b: number[];
      exp_avg_w: number[];
      exp_avg_sq_b: number[];
    }[];
  };
  schedules: Record<ScheduleName, { warmup: number; total: number; factors: number[] }>;
};

function expectClose(actual: ArrayLike<number>, expected: readonly number[], rel: number, abs = 0) {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    const tol = abs + rel * Math.abs(expected[i]);
    if (Math.abs(actual[i] - expected[i]) > tol) {
      throw new Error(`element ${i}: ${actual[i]} vs torch ${expected[i]} (tolerance ${tol})`);
    }
  }
}

describe('AdamW + clip_grad_norm_ + cosine warmup against torch', () => {
  it('six steps give torch.optim.AdamW parameters and moments to float32 precision', () => {
    const a = ref.adamw;
    const w: Parameter = {
      name: 'w',
      shape: [3, 5],
      data: Float32Array.from(a.init.w),
      decay: true,
    };
    // A bias: the Trainer's rule puts it in the no-decay group.
    const b: Parameter = {
      name: 'layer.bias',
      shape: [4],
      data: Float32Array.from(a.init.b),
      decay: decaysWeight('layer.bias'),
    };
    expect(b.decay).toBe(false);
    const opt = new AdamW([w, b], { betas: a.betas, eps: a.eps, weightDecay: a.weight_decay_w });
    a.steps.forEach((s, k) => {
      const lr = a.lr * lrFactor({ name: 'cosine', warmupSteps: a.warmup, totalSteps: a.total }, k);
      expect(lr).toBeCloseTo(s.lr, 15);
      const grads = [Float32Array.from(s.grad_w), Float32Array.from(s.grad_b)];
      const norm = clipGradNorm(grads, a.max_grad_norm);
      expect(Math.abs(norm - s.grad_norm)).toBeLessThan(1e-6 * s.grad_norm);
      opt.step(grads, lr);
      expectClose(w.data, s.w, 1e-6, 1e-7);
      expectClose(b.data, s.b, 1e-6, 1e-7);
      const state = opt.saveState();
      // Moments are sums of terms of either sign: absolute tolerance at float32 precision of the gradients.
      expectClose(state.expAvg[0], s.exp_avg_w, 1e-6, 3e-8);
      expectClose(state.expAvgSq[1], s.exp_avg_sq_b, 1e-6, 1e-9);
    });
    // The first step ran with lr 0 (warmup), and the large gradient of step 3 was clipped.
    expect(a.steps[0].lr).toBe(0);
    expect(a.steps[3].grad_norm).toBeGreaterThan(1);
  });

  it('a restored state continues exactly like the original', () => {
    const mk = () => ({
      name: 'w',
      shape: [4],
      data: Float32Array.from([1, -2, 3, -4]),
      decay: true,
    });
    const p1 = mk();
    const p2 = mk();
    const o1 = new AdamW([p1], { weightDecay: 0.01 });
    const g = Float32Array.from([0.5, -0.25, 0.125, 1]);
    o1.step([g], 0.1);
    const o2 = new AdamW([p2], { weightDecay: 0.01 });
    p2.data.set(p1.data);
    o2.loadState(o1.saveState());
    o1.step([g], 0.05);
    o2.step([g], 0.05);
    expect(Array.from(p2.data)).toEqual(Array.from(p1.data));
  });
});

describe('schedules against transformers get_*_schedule_with_warmup', () => {
  for (const name of ['constant', 'linear', 'cosine'] as const) {
    it(name, () => {
      const s = ref.schedules[name];
      const ours = s.factors.map((_, k) =>
        lrFactor({ name, warmupSteps: s.warmup, totalSteps: s.total }, k),
      );
      expectClose(ours, s.factors, 1e-12, 1e-15);
    });
  }
});

describe('weight decay groups (transformers Trainer rule)', () => {
  it('decays linears, embeddings and LoRA factors, not biases or norms', () => {
    for (const n of [
      'model.layers.0.self_attn.q_proj.weight',
      'model.embed_tokens.weight',
      'lm_head.weight',
      'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight',
    ])
      expect(decaysWeight(n), n).toBe(true);
    for (const n of [
      'model.layers.0.self_attn.q_proj.bias',
      'model.layers.0.input_layernorm.weight',
      'model.layers.0.post_attention_layernorm.weight',
      'model.norm.weight',
    ])
      expect(decaysWeight(n), n).toBe(false);
  });
});

describe('clipGradNorm', () => {
  it('norm of all gradients together; coefficient max/(norm+1e-6) when above max', () => {
    const g = [Float32Array.from([3, 0]), Float32Array.from([0, 4])];
    expect(clipGradNorm(g, 0)).toBe(5);
    expect(Array.from(g[0])).toEqual([3, 0]);
    expect(clipGradNorm(g, 1)).toBe(5);
    const c = Math.fround(1 / (5 + 1e-6));
    expect(Array.from(g[0])).toEqual([Math.fround(3 * c), 0]);
    expect(Array.from(g[1])).toEqual([0, Math.fround(4 * c)]);
  });
});
