import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadPeftAdapter } from './peft/load.js';
import { checkAdapterTargets, moduleNamesOf } from './targets.js';
import { HAVE_PEFT_FIXTURES, PEFT_FIXTURES } from './test-utils/fixtures.js';

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

describe.skipIf(!HAVE_PEFT_FIXTURES)('checkAdapterTargets on real adapters', () => {
  it('qwen2.5 (24 layers, q/v targeted): all 48 targeted modules have weights', async () => {
    const { adapter } = await loadPeftAdapter(join(PEFT_FIXTURES, 'qwen2.5-0.5b-qv'));
    const tensors = range(24).flatMap((l) =>
      [
        'self_attn.q_proj',
        'self_attn.k_proj',
        'self_attn.v_proj',
        'self_attn.o_proj',
        'mlp.gate_proj',
        'mlp.up_proj',
        'mlp.down_proj',
        'input_layernorm',
      ].map((m) => `model.layers.${l}.${m}.weight`),
    );
    const c = checkAdapterTargets(
      adapter,
      moduleNamesOf([...tensors, 'model.embed_tokens.weight', 'lm_head.weight']),
    );
    expect(c.targeted.length).toBe(48);
    expect(c.ok).toBe(true);
    // A model with fewer layers: the adapter's extra layers are not in it.
    const short = checkAdapterTargets(
      adapter,
      moduleNamesOf(tensors.filter((t) => !/layers\.(2[0-3])\./.test(t))),
    );
    expect(short.notInModel.length).toBe(8);
    expect(short.ok).toBe(false);
  });

  it('roberta with full-path targets: exactly the 4 named modules; GPT-2 checkpoint names without "transformer."', async () => {
    const { adapter } = await loadPeftAdapter(
      join(PEFT_FIXTURES, 'roberta-seqcls-fullpath-targets'),
    );
    const names = range(12).flatMap((l) =>
      ['query', 'key', 'value'].map((p) => `roberta.encoder.layer.${l}.attention.self.${p}`),
    );
    const c = checkAdapterTargets(adapter, names);
    expect(c.targeted.sort()).toEqual([
      'roberta.encoder.layer.0.attention.self.key',
      'roberta.encoder.layer.0.attention.self.query',
      'roberta.encoder.layer.10.attention.self.query',
      'roberta.encoder.layer.5.attention.self.query',
    ]);
    expect(c.ok).toBe(true);

    const gpt2 = (await loadPeftAdapter(join(PEFT_FIXTURES, 'gpt2-causal-cattn-cproj'))).adapter;
    const g = checkAdapterTargets(
      gpt2,
      range(12).flatMap((l) => [
        `h.${l}.attn.c_attn`,
        `h.${l}.attn.c_proj`,
        `h.${l}.mlp.c_fc`,
        `h.${l}.mlp.c_proj`,
      ]),
    );
    expect(g.targeted.length).toBe(36); // c_attn, attn.c_proj and mlp.c_proj, not c_fc
    expect(g.ok).toBe(true);
  });
});
