import { type Adapter, AdapterRegistry } from '@lora/adapters';
import { createLoraConfig, f32, type Tensor } from '@lora/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LLAMA_LINEARS, llamaLinearShape, llamaModuleName } from '../models/llama/config.js';
import { LlamaModel } from '../models/llama/model.js';
import { memoryWeights } from '../models/weights.js';
import { expectClose } from '../test-utils/parity.js';
import { randomF32, seededRandom } from '../test-utils/random.js';
import { randomLlamaWeights, tinyConfig } from '../test-utils/tiny-llama.js';
import { createLoraHook } from './branches.js';
import { mergedWeights } from './merged.js';
import { LoraSlotCache } from './slot-cache.js';
import { LoraSlots } from './slots.js';

const config = tinyConfig();
const base = randomLlamaWeights(config, 3);
const prompt = [3, 14, 15, 9, 26];

function adapterFor(seed: number): Adapter {
  const rand = seededRandom(seed);
  const modules = new Map<string, { A: Tensor; B: Tensor }>();
  for (let l = 0; l < config.numLayers; l++) {
    for (const linear of LLAMA_LINEARS) {
      const [out, inF] = llamaLinearShape(config, linear);
      modules.set(llamaModuleName(l, linear), {
        A: f32([2, inF], randomF32(2 * inF, rand, 0.4)),
        B: f32([out, 2], randomF32(out * 2, rand, 0.4)),
      });
    }
  }
  return { config: createLoraConfig({ r: 2, lora_alpha: 4 }), modules, modulesToSave: new Map() };
}

describe('LoraSlotCache: adapters by name into slots, through the registry', () => {
  const catalogue = new Map([
    ['a', adapterFor(1)],
    ['b', adapterFor(2)],
    ['c', adapterFor(3)],
  ]);
  const loads: string[] = [];
  let model: LlamaModel;
  let slots: LoraSlots;
  let cache: LoraSlotCache;
  beforeAll(async () => {
    // Two usable slots (1 and 2) for three adapters.
    const { hook, plan } = createLoraHook({ targets: 'all-linear', slots: 3, rank: 4 });
    model = await LlamaModel.create(config, memoryWeights(base), {
      linearHook: hook,
      intraOpNumThreads: 1,
    });
    slots = new LoraSlots(plan);
    const registry = new AdapterRegistry<Adapter>({
      loader: async (name) => {
        await new Promise((r) => setImmediate(r));
        const adapter = catalogue.get(name);
        if (adapter) loads.push(name);
        return adapter && { adapter, bytes: 1000 };
      },
    });
    cache = new LoraSlotCache(slots, registry);
  });
  afterAll(async () => {
    await model?.release();
  });

  const expected = async (set: { adapter: Adapter; scale?: number }[]) => {
    const m = await LlamaModel.create(config, mergedWeights(memoryWeights(base), set), {
      intraOpNumThreads: 1,
    });
    const out = (await m.forward({ inputIds: [prompt] })).logits.data as Float32Array;
    await m.release();
    return out;
  };
  const run = async (slot: number) =>
    (await model.forward({ inputIds: [prompt], extraFeeds: slots.feeds([slot]) })).logits
      .data as Float32Array;

  it('fills free slots, hits on reuse, refills the least recently used idle slot, never a busy one', async () => {
    const [la, lb] = await Promise.all([
      cache.acquire([{ name: 'a' }]),
      cache.acquire([{ name: 'b' }]),
    ]);
    expect(new Set([la.slot, lb.slot])).toEqual(new Set([1, 2]));
    expectClose(
      await run(la.slot),
      await expected([{ adapter: catalogue.get('a')! }]),
      { atol: 1e-4, rtol: 1e-4 },
      'a',
    );
    expectClose(
      await run(lb.slot),
      await expected([{ adapter: catalogue.get('b')! }]),
      { atol: 1e-4, rtol: 1e-4 },
      'b',
    );
    // Both slots busy: a third set cannot get one.
    await expect(cache.acquire([{ name: 'c' }])).rejects.toMatchObject({ code: 'LORA_SLOTS_BUSY' });
    const again = await cache.acquire([{ name: 'a' }]);
    expect(again.slot).toBe(la.slot);
    expect(cache.hits).toBe(1);
    again.release();
    la.release();
    // a is idle now (b still busy): c replaces a.
    const lc = await cache.acquire([{ name: 'c' }]);
    expect(lc.slot).toBe(la.slot);
    expectClose(
      await run(lc.slot),
      await expected([{ adapter: catalogue.get('c')! }]),
      { atol: 1e-4, rtol: 1e-4 },
      'c',
    );
    expectClose(
      await run(lb.slot),
      await expected([{ adapter: catalogue.get('b')! }]),
      { atol: 1e-4, rtol: 1e-4 },
      'b kept',
    );
    lb.release();
    lc.release();
    expect(() => lc.release()).toThrow(/already released/);
  });

  it('puts several named adapters with scales in one slot, and reports unknown names', async () => {
    const l = await cache.acquire([
      { name: 'a', scale: 1 },
      { name: 'c', scale: -0.5 },
    ]);
    expectClose(
      await run(l.slot),
      await expected([
        { adapter: catalogue.get('a')!, scale: 1 },
        { adapter: catalogue.get('c')!, scale: -0.5 },
      ]),
      { atol: 1e-4, rtol: 1e-4 },
      'a - 0.5 c',
    );
    l.release();
    await expect(cache.acquire([{ name: 'zzz' }])).rejects.toMatchObject({
      code: 'REGISTRY_UNKNOWN_ADAPTER',
    });
    expect((await cache.acquire([])).slot).toBe(0);
  });
});
