import type { Adapter } from '@lora/adapters';
import { createLoraConfig, f32, type LoraConfig, loraScaling, type Tensor } from '@lora/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  llamaLinearShape,
  LLAMA_LINEARS,
  type LlamaConfig,
  llamaModuleName,
} from '../models/llama/config.js';
import { LlamaModel } from '../models/llama/model.js';
import { referenceForward } from '../models/llama/reference.js';
import { dequantizeLinear, quantizeLinear } from '../models/quantize-linear.js';
import { memoryWeights } from '../models/weights.js';
import { expectClose } from '../test-utils/parity.js';
import { randomF32, seededRandom } from '../test-utils/random.js';
import { randomLlamaWeights, tinyConfig } from '../test-utils/tiny-llama.js';
import { createLoraHook } from './branches.js';
import { mergedWeights } from './merged.js';
import { LoraSlots } from './slots.js';

/**
 * Tolerance between the unmerged LoRA graph and a model with the adapter merged into W: both
 * float32, they differ only by summation order (x W' vs x W + (x A) B), about 1e-6 on logits of
 * size ~1 here (observed at most 4e-6); 1e-4 leaves room and still catches a wrong slot, scale or transpose
 * (those change logits by > 1e-2 with these adapters).
 */
const TOL = { atol: 1e-4, rtol: 1e-4 };

const config: LlamaConfig = tinyConfig();
const base = randomLlamaWeights(config, 7);

/** A random adapter: A and B both nonzero (B = 0 would make every test pass trivially). */
function randomAdapter(
  seed: number,
  fields: Partial<LoraConfig>,
  linears: readonly string[],
): Adapter {
  const cfg = createLoraConfig({ ...fields, target_modules: [...linears] });
  const rand = seededRandom(seed);
  const modules = new Map<string, { A: Tensor; B: Tensor }>();
  for (let l = 0; l < config.numLayers; l++) {
    for (const linear of linears) {
      const module = llamaModuleName(l, linear as (typeof LLAMA_LINEARS)[number]);
      const [out, inF] = llamaLinearShape(config, linear as (typeof LLAMA_LINEARS)[number]);
      const r = cfg.rank_pattern[linear] ?? cfg.r;
      modules.set(module, {
        A: f32([r, inF], randomF32(r * inF, rand, 0.4)),
        B: f32([out, r], randomF32(out * r, rand, 0.4)),
      });
    }
  }
  return { config: cfg, modules, modulesToSave: new Map() };
}

// Four adapters of different ranks and targets.
const a1 = randomAdapter(11, { r: 2, lora_alpha: 4 }, ['q_proj', 'v_proj']);
const a2 = randomAdapter(12, { r: 4, lora_alpha: 8, use_rslora: true }, [...LLAMA_LINEARS]);
const a3 = randomAdapter(13, { r: 8, lora_alpha: 16 }, ['k_proj', 'o_proj']);
const a4 = randomAdapter(14, { r: 3, lora_alpha: 3, rank_pattern: { down_proj: 5 } }, [
  'gate_proj',
  'up_proj',
  'down_proj',
]);
const adapters = [a1, a2, a3, a4];

/** Five prompts of equal length (no padding), one per batch row. */
const prompts = [
  [1, 5, 9, 2, 33],
  [4, 4, 17, 60, 3],
  [8, 21, 1, 0, 12],
  [63, 2, 2, 40, 7],
  [10, 11, 12, 13, 14],
];

function row(t: Tensor, b: number): Float32Array {
  const per = t.data.length / t.shape[0];
  return (t.data as Float32Array).subarray(b * per, (b + 1) * per);
}

describe.each(['gather', 'dense'] as const)(
  'LoRA branches as graph inputs on a LLaMA model (%s)',
  (mixing) => {
    let lora: LlamaModel;
    let baseModel: LlamaModel;
    let slots: LoraSlots;
    const merged = new Map<number, LlamaModel>(); // adapter index -> merged model
    const mergedLogits = async (k: number, tokens: number[]) => {
      let m = merged.get(k);
      if (!m) {
        m = await LlamaModel.create(
          config,
          mergedWeights(memoryWeights(base), [{ adapter: adapters[k] }]),
          {
            intraOpNumThreads: 1,
          },
        );
        merged.set(k, m);
      }
      return (await m.forward({ inputIds: [tokens] })).logits.data as Float32Array;
    };

    beforeAll(async () => {
      const { hook, plan } = createLoraHook({ targets: 'all-linear', slots: 6, rank: 8, mixing });
      lora = await LlamaModel.create(config, memoryWeights(base), {
        linearHook: hook,
        intraOpNumThreads: 1,
      });
      baseModel = await LlamaModel.create(config, memoryWeights(base), { intraOpNumThreads: 1 });
      slots = new LoraSlots(plan);
      // q/k/v and gate/up share their A-projection: 2 layers x (qkv, gate+up, o, down) A inputs.
      expect(plan.sites.size).toBe(14);
      // (dense: one A per linear, all slots side by side)
      expect(new Set([...plan.sites.values()].map((s) => s.aInput)).size).toBe(
        mixing === 'gather' ? 8 : 14,
      );
      for (const [k, a] of adapters.entries())
        slots.assign(k + 1, [{ adapter: a, name: `a${k + 1}` }]);
    });
    afterAll(async () => {
      for (const m of [lora, baseModel, ...merged.values()]) await m?.release();
    });

    it('a batch mixing four adapters and base rows matches each row run alone with its adapter merged', async () => {
      const rowSlots = [1, 2, 3, 4, 0];
      const out = await lora.forward({ inputIds: prompts, extraFeeds: slots.feeds(rowSlots) });
      const baseOut = await baseModel.forward({ inputIds: prompts });
      for (let b = 0; b < rowSlots.length; b++) {
        const slot = rowSlots[b];
        if (slot === 0) {
          // No adapter: exactly the base model's logits for the same batch.
          expect(Array.from(row(out.logits, b))).toEqual(Array.from(row(baseOut.logits, b)));
          continue;
        }
        const expected = await mergedLogits(slot - 1, prompts[b]);
        expectClose(row(out.logits, b), expected, TOL, `row ${b} (adapter a${slot})`);
        // And the adapter really changes the output (so the comparison above means something).
        const diff = Math.max(
          ...row(out.logits, b).map((v, i) => Math.abs(v - row(baseOut.logits, b)[i])),
        );
        expect(diff).toBeGreaterThan(1e-2);
      }
    });

    it('matches a float64 reference forward with the LoRA delta added beside each linear', async () => {
      const out = await lora.forward({ inputIds: [prompts[1]], extraFeeds: slots.feeds([2]) });
      const adapter = a2;
      const ref = referenceForward(config, base, prompts[1], {
        linearHook: (module, x, y, T) => {
          const m = adapter.modules.get(module);
          if (!m) return;
          const s = loraScaling(adapter.config, module);
          const [r, inF] = m.A.shape;
          const outF = m.B.shape[0];
          const A = m.A.data as Float32Array;
          const B = m.B.data as Float32Array;
          for (let t = 0; t < T; t++) {
            const h = new Float64Array(r);
            for (let k = 0; k < r; k++)
              for (let i = 0; i < inF; i++) h[k] += A[k * inF + i] * x[t * inF + i];
            for (let o = 0; o < outF; o++) {
              let acc = 0;
              for (let k = 0; k < r; k++) acc += B[o * r + k] * h[k];
              y[t * outF + o] += s * acc;
            }
          }
        },
      });
      expectClose(out.logits.data as Float32Array, ref, TOL, 'LoRA graph vs float64 reference');
    });

    it('hot-swaps adapters between runs of one session by changing feeds only', async () => {
      const first = await lora.forward({
        inputIds: [prompts[0], prompts[1]],
        extraFeeds: slots.feeds([1, 3]),
      });
      expectClose(row(first.logits, 0), await mergedLogits(0, prompts[0]), TOL, 'run 1 row 0 (a1)');
      expectClose(row(first.logits, 1), await mergedLogits(2, prompts[1]), TOL, 'run 1 row 1 (a3)');
      const second = await lora.forward({
        inputIds: [prompts[0], prompts[1]],
        extraFeeds: slots.feeds([3, 1]),
      });
      expectClose(
        row(second.logits, 0),
        await mergedLogits(2, prompts[0]),
        TOL,
        'run 2 row 0 (a3)',
      );
      expectClose(
        row(second.logits, 1),
        await mergedLogits(0, prompts[1]),
        TOL,
        'run 2 row 1 (a1)',
      );
      // Replacing a slot's adapter is also only new feed values.
      slots.assign(5, [{ adapter: a4, name: 'a4' }]);
      const third = await lora.forward({ inputIds: [prompts[2]], extraFeeds: slots.feeds([5]) });
      expectClose(row(third.logits, 0), await mergedLogits(3, prompts[2]), TOL, 'slot 5 = a4');
      slots.assign(5, [{ adapter: a2, name: 'a2' }]);
      const fourth = await lora.forward({ inputIds: [prompts[2]], extraFeeds: slots.feeds([5]) });
      expectClose(row(fourth.logits, 0), await mergedLogits(1, prompts[2]), TOL, 'slot 5 = a2');
    });

    it('runs several adapters on one request with per-adapter scales (deltas add)', async () => {
      slots.assign(5, [
        { adapter: a1, scale: 1, name: 'a1' },
        { adapter: a2, scale: 0.5, name: 'a2*0.5' },
      ]);
      const out = await lora.forward({ inputIds: [prompts[3]], extraFeeds: slots.feeds([5]) });
      const both = await LlamaModel.create(
        config,
        mergedWeights(memoryWeights(base), [
          { adapter: a1, scale: 1 },
          { adapter: a2, scale: 0.5 },
        ]),
        { intraOpNumThreads: 1 },
      );
      const expected = (await both.forward({ inputIds: [prompts[3]] })).logits.data as Float32Array;
      await both.release();
      expectClose(out.logits.data as Float32Array, expected, TOL, 'a1 + 0.5 a2');
    });

    it('a slot with scale 0 gives exactly the base logits', async () => {
      slots.setScale(3, 0);
      const out = await lora.forward({ inputIds: [prompts[4]], extraFeeds: slots.feeds([3]) });
      const ref = await baseModel.forward({ inputIds: [prompts[4]] });
      expect(Array.from(out.logits.data as Float32Array)).toEqual(
        Array.from(ref.logits.data as Float32Array),
      );
      slots.setScale(3, 1);
    });

    it('refuses adapters the graph cannot hold, and leaves the slot unchanged', async () => {
      const wide = randomAdapter(21, { r: 16, lora_alpha: 16 }, ['q_proj']);
      expect(() => slots.assign(2, [{ adapter: wide, name: 'wide' }])).toThrow(
        expect.objectContaining({ code: 'LORA_RANK_EXCEEDS_SLOT' }),
      );
      expect(() => slots.assign(0, [{ adapter: a1 }])).toThrow(/reserved/);
      expect(() => slots.feeds([9])).toThrow(expect.objectContaining({ code: 'LORA_SLOT' }));
      // Slot 2 still holds a2 after the failed assign.
      const out = await lora.forward({ inputIds: [prompts[0]], extraFeeds: slots.feeds([2]) });
      expectClose(
        out.logits.data as Float32Array,
        await mergedLogits(1, prompts[0]),
        TOL,
        'slot 2 unchanged',
      );
    });
  },
);

describe('LoRA branches beside 4-bit base linears', () => {
  it.each(['int4', 'nf4'] as const)(
    '%s base + unmerged adapter matches the dequantized base with the adapter merged',
    async (format) => {
      // The 4-bit session computes with dequantize(quantize(W)); merge the adapter into that.
      const blockSize = format === 'nf4' ? 32 : 16;
      const dequantized = new Map(base);
      for (let l = 0; l < config.numLayers; l++) {
        for (const linear of LLAMA_LINEARS) {
          const name = `${llamaModuleName(l, linear)}.weight`;
          const [out, inF] = llamaLinearShape(config, linear);
          const q = quantizeLinear(base.get(name)!.data, out, inF, { format, blockSize }, name);
          dequantized.set(name, f32([out, inF], dequantizeLinear(q)));
        }
      }
      const { hook, plan } = createLoraHook({
        targets: ['q_proj', 'k_proj', 'v_proj', 'down_proj'],
        slots: 2,
        rank: 8,
      });
      const qlora = await LlamaModel.create(config, memoryWeights(base), {
        linearHook: hook,
        quant: { format, blockSize },
        intraOpNumThreads: 1,
      });
      const slots = new LoraSlots(plan);
      const adapter = randomAdapter(31, { r: 4, lora_alpha: 8 }, ['q_proj', 'v_proj', 'down_proj']);
      slots.assign(1, [{ adapter }]);
      const out = await qlora.forward({
        inputIds: [prompts[0], prompts[1]],
        extraFeeds: slots.feeds([1, 0]),
      });
      const ref = await LlamaModel.create(
        config,
        mergedWeights(memoryWeights(dequantized), [{ adapter }]),
        {
          intraOpNumThreads: 1,
        },
      );
      const refBase = await LlamaModel.create(config, memoryWeights(dequantized), {
        intraOpNumThreads: 1,
      });
      const expected = (await ref.forward({ inputIds: [prompts[0]] })).logits.data as Float32Array;
      const expectedBase = (await refBase.forward({ inputIds: [prompts[1]] })).logits
        .data as Float32Array;
      // MatMulNBits accumulates in its own order: allow 1e-3.
      expectClose(row(out.logits, 0), expected, { atol: 1e-3, rtol: 1e-3 }, `${format} + LoRA row`);
      expectClose(
        row(out.logits, 1),
        expectedBase,
        { atol: 1e-3, rtol: 1e-3 },
        `${format} base row`,
      );
      for (const m of [qlora, ref, refBase]) await m.release();
    },
  );
});
