import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { readSafetensorsHeader } from '../safetensors/reader.js';
import { createLoraConfig, parseLoraConfig } from './config.js';
import {
  compileTargetMatcher,
  expandAllLinear,
  isTargetModule,
  matchTargets,
  type TargetConfig,
} from './target-modules.js';

const FIXTURES = fileURLToPath(new URL('../../../../../shared/fixtures/peft/', import.meta.url));
const haveFixtures = existsSync(FIXTURES);
if (!haveFixtures)
  console.warn(
    `[target-modules.test] PEFT fixtures not found at ${FIXTURES}: fixture tests skipped.`,
  );

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** Module names of real architectures, written from the HF model code. */
const gpt2Modules = [
  'transformer.wte',
  'transformer.wpe',
  ...range(12).flatMap((i) => [
    `transformer.h.${i}.ln_1`,
    `transformer.h.${i}.attn.c_attn`,
    `transformer.h.${i}.attn.c_proj`,
    `transformer.h.${i}.ln_2`,
    `transformer.h.${i}.mlp.c_fc`,
    `transformer.h.${i}.mlp.c_proj`,
  ]),
  'transformer.ln_f',
  'lm_head',
];
const robertaModules = [
  ...range(12).flatMap((i) => [
    `roberta.encoder.layer.${i}.attention.self.query`,
    `roberta.encoder.layer.${i}.attention.self.key`,
    `roberta.encoder.layer.${i}.attention.self.value`,
    `roberta.encoder.layer.${i}.attention.output.dense`,
    `roberta.encoder.layer.${i}.intermediate.dense`,
    `roberta.encoder.layer.${i}.output.dense`,
  ]),
  'classifier.dense',
  'classifier.out_proj',
];
const t5Modules = [
  ...range(8).flatMap((i) => [
    ...['q', 'k', 'v', 'o'].map((p) => `encoder.block.${i}.layer.0.SelfAttention.${p}`),
    ...['wi_0', 'wi_1', 'wo'].map((p) => `encoder.block.${i}.layer.1.DenseReluDense.${p}`),
  ]),
  ...range(8).flatMap((i) => [
    ...['q', 'k', 'v', 'o'].map((p) => `decoder.block.${i}.layer.0.SelfAttention.${p}`),
    ...['q', 'k', 'v', 'o'].map((p) => `decoder.block.${i}.layer.1.EncDecAttention.${p}`),
    ...['wi_0', 'wi_1', 'wo'].map((p) => `decoder.block.${i}.layer.2.DenseReluDense.${p}`),
  ]),
  'lm_head',
];
const distilbertModules = [
  ...range(6).flatMap((i) => [
    ...['q_lin', 'k_lin', 'v_lin', 'out_lin'].map(
      (p) => `distilbert.transformer.layer.${i}.attention.${p}`,
    ),
    `distilbert.transformer.layer.${i}.ffn.lin1`,
    `distilbert.transformer.layer.${i}.ffn.lin2`,
  ]),
  'pre_classifier',
  'classifier',
];
const llamaModules = (layers: number) => [
  'model.embed_tokens',
  ...range(layers).flatMap((i) => [
    ...['q_proj', 'k_proj', 'v_proj', 'o_proj'].map((p) => `model.layers.${i}.self_attn.${p}`),
    ...['gate_proj', 'up_proj', 'down_proj'].map((p) => `model.layers.${i}.mlp.${p}`),
  ]),
  'model.norm',
  'lm_head',
];

const base = {
  exclude_modules: null,
  modules_to_save: null,
  layers_to_transform: null,
  layers_pattern: null,
} as const;

describe('list target_modules', () => {
  it('matches whole dotted parts only', () => {
    const c = { ...base, target_modules: ['q_proj'] };
    expect(isTargetModule(c, 'model.layers.0.self_attn.q_proj')).toBe(true);
    expect(isTargetModule(c, 'q_proj')).toBe(true);
    expect(isTargetModule(c, 'model.layers.0.self_attn.xq_proj')).toBe(false);
    expect(
      isTargetModule({ ...c, target_modules: ['proj'] }, 'model.layers.0.self_attn.q_proj'),
    ).toBe(false);
    expect(
      isTargetModule(
        { ...c, target_modules: ['self_attn.q_proj'] },
        'model.layers.0.self_attn.q_proj',
      ),
    ).toBe(true);
    expect(
      isTargetModule({ ...c, target_modules: ['attn.q_proj'] }, 'model.layers.0.self_attn.q_proj'),
    ).toBe(false);
  });

  it('GPT-2: c_proj matches attention and MLP', () => {
    const got = matchTargets({ ...base, target_modules: ['c_attn', 'c_proj'] }, gpt2Modules);
    expect(got).toHaveLength(36);
    expect(got).toContain('transformer.h.0.attn.c_proj');
    expect(got).toContain('transformer.h.0.mlp.c_proj');
    expect(got).not.toContain('transformer.h.0.mlp.c_fc');
  });

  it('T5: single letters q, k, v match encoder, decoder and cross attention, not o or wo', () => {
    const got = matchTargets({ ...base, target_modules: ['k', 'q', 'v'] }, t5Modules);
    expect(got).toHaveLength(8 * 3 + 8 * 6);
    expect(got).toContain('decoder.block.3.layer.1.EncDecAttention.k');
    expect(got.some((n) => n.endsWith('.o') || n.endsWith('.wo'))).toBe(false);
  });

  it('RoBERTa: full dotted paths select exactly those modules', () => {
    const targets = [
      'roberta.encoder.layer.0.attention.self.query',
      'roberta.encoder.layer.10.attention.self.query',
    ];
    expect(matchTargets({ ...base, target_modules: targets }, robertaModules)).toEqual(targets);
  });
});

describe('regex target_modules (fullmatch)', () => {
  it('must match the whole name', () => {
    const c = { ...base, target_modules: 'q_proj' };
    expect(isTargetModule(c, 'q_proj')).toBe(true);
    expect(isTargetModule(c, 'model.layers.0.self_attn.q_proj')).toBe(false);
    const c2 = { ...base, target_modules: '.*\\.(q|v)_proj' };
    expect(matchTargets(c2, llamaModules(2))).toEqual([
      'model.layers.0.self_attn.q_proj',
      'model.layers.0.self_attn.v_proj',
      'model.layers.1.self_attn.q_proj',
      'model.layers.1.self_attn.v_proj',
    ]);
    // An alternation must still cover the whole name (fullmatch wraps it in a group).
    expect(
      isTargetModule(
        { ...base, target_modules: 'a|model.layers.0.mlp.up_proj' },
        'model.layers.0.mlp.up_proj_x',
      ),
    ).toBe(false);
  });

  it('accepts Python-only syntax', () => {
    const c = {
      ...base,
      target_modules: '(?P<stack>model\\.layers)\\.\\d{,2}\\.self_attn\\.[qv]_proj',
    };
    expect(isTargetModule(c, 'model.layers.12.self_attn.q_proj')).toBe(true);
    expect(isTargetModule(c, 'model.layers.123.self_attn.q_proj')).toBe(false);
    expect(
      isTargetModule(
        { ...base, target_modules: '(?i).*Q_PROJ' },
        'model.layers.0.self_attn.q_proj',
      ),
    ).toBe(true);
    expect(isTargetModule({ ...base, target_modules: '\\A.*[]q]_proj\\Z' }, 'x.]_proj')).toBe(true);
  });

  it('refuses what a linear-time engine cannot run, with a clear message', () => {
    expect(() => isTargetModule({ ...base, target_modules: '(?>a)' }, 'a')).toThrow(
      /target_modules.*\(\?>.*atomic group/,
    );
    expect(() => isTargetModule({ ...base, target_modules: 'a++' }, 'a')).toThrow(/possessive/);
    expect(() => isTargetModule({ ...base, target_modules: '(a)\\1' }, 'aa')).toThrow(
      /back-reference/,
    );
    expect(() => isTargetModule({ ...base, target_modules: '(' }, 'a')).toThrow(/invalid/);
    expect(() =>
      matchTargets(
        {
          ...base,
          target_modules: ['q_proj'],
          layers_pattern: '(?<=x)layers',
          layers_to_transform: [0],
        },
        ['model.layers.0.q_proj'],
      ),
    ).toThrow(/^layers_pattern: .*lookbehind/);
    expect(() =>
      matchTargets({ ...base, target_modules: ['q_proj'], modules_to_save: ['(a)\\1'] }, [
        'q_proj',
      ]),
    ).toThrow(/^modules_to_save: .*back-reference/);
  });

  it('a catastrophic regex answers at once on long adversarial names', () => {
    const names = [`${'a'.repeat(80)}!`, 'a'.repeat(80), `model.${'a'.repeat(90)}.q_proj`];
    expect(matchTargets({ ...base, target_modules: '(a|a)*$' }, names)).toEqual([names[1]]);
    expect(matchTargets({ ...base, target_modules: '(a+)+' }, names)).toEqual([names[1]]);
    expect(
      matchTargets({ ...base, target_modules: ['q_proj'], exclude_modules: '(.*a)*\\..*' }, names),
    ).toEqual([]);
  });
});

describe("PEFT's check_target_module_exists (reference: PEFT 0.21)", () => {
  // scripts/reference/regex-targets.py
  const reference = JSON.parse(
    readFileSync(new URL('./testdata/regex-targets.json', import.meta.url), 'utf8'),
  ) as { targets: { config: Partial<TargetConfig>; name: string; matched: boolean }[] };

  it(`agrees on ${reference.targets.length} (config, module) pairs`, () => {
    const wrong = reference.targets
      .filter((t) => isTargetModule({ ...base, ...t.config } as TargetConfig, t.name) !== t.matched)
      .map((t) => `${JSON.stringify(t.config)} ${t.name} -> PEFT ${t.matched}`);
    expect(wrong).toEqual([]);
    // the cases are not all one answer
    expect(new Set(reference.targets.map((t) => t.matched))).toEqual(new Set([true, false]));
  });
});

describe('exclude_modules and modules_to_save', () => {
  it('exclude list: exact or suffix; exclude string: fullmatch', () => {
    const c = {
      ...base,
      target_modules: ['q_proj', 'v_proj'],
      exclude_modules: ['layers.1.self_attn.q_proj'],
    };
    expect(matchTargets(c, llamaModules(2))).toEqual([
      'model.layers.0.self_attn.q_proj',
      'model.layers.0.self_attn.v_proj',
      'model.layers.1.self_attn.v_proj',
    ]);
    const c2 = { ...c, exclude_modules: '.*layers\\.0\\..*' };
    expect(matchTargets(c2, llamaModules(2))).toEqual([
      'model.layers.1.self_attn.q_proj',
      'model.layers.1.self_attn.v_proj',
    ]);
    // fullmatch, not search: "layers" alone excludes nothing.
    expect(matchTargets({ ...c, exclude_modules: 'layers' }, llamaModules(1))).toHaveLength(2);
  });

  it('modules_to_save wins over targets, including children, but not look-alikes', () => {
    const c = {
      ...base,
      target_modules: ['dense', 'out_proj', 'query'],
      modules_to_save: ['classifier'],
    };
    const decide = compileTargetMatcher(c);
    expect(decide('classifier.dense')).toBe('modules-to-save');
    expect(decide('classifier.out_proj')).toBe('modules-to-save');
    expect(decide('pre_classifier.dense')).toBe('targeted');
    expect(decide('roberta.encoder.layer.0.attention.self.query')).toBe('targeted');
  });
});

describe('layers_to_transform', () => {
  it('with and without layers_pattern', () => {
    const c = { ...base, target_modules: ['q_proj'], layers_to_transform: [0, 2] };
    expect(matchTargets(c, llamaModules(4))).toEqual([
      'model.layers.0.self_attn.q_proj',
      'model.layers.2.self_attn.q_proj',
    ]);
    expect(matchTargets({ ...c, layers_pattern: 'layers' }, llamaModules(4))).toEqual([
      'model.layers.0.self_attn.q_proj',
      'model.layers.2.self_attn.q_proj',
    ]);
    expect(matchTargets({ ...c, layers_pattern: ['blocks'] }, llamaModules(4))).toEqual([]);
    expect(matchTargets({ ...c, layers_to_transform: 3 }, llamaModules(4))).toEqual([
      'model.layers.3.self_attn.q_proj',
    ]);
    // An empty list means "all layers", as in PEFT.
    expect(matchTargets({ ...c, layers_to_transform: [] }, llamaModules(4))).toHaveLength(4);
  });

  it('GPT-2 layers_pattern "h"', () => {
    const c = {
      ...base,
      target_modules: ['c_attn'],
      layers_to_transform: [11],
      layers_pattern: 'h',
    };
    expect(matchTargets(c, gpt2Modules)).toEqual(['transformer.h.11.attn.c_attn']);
  });

  it('takes the first number (layer), not an expert index further on', () => {
    const c = { ...base, target_modules: ['w1'], layers_to_transform: [1] };
    expect(isTargetModule(c, 'model.layers.1.mlp.experts.0.w1')).toBe(true);
    expect(isTargetModule(c, 'model.layers.0.mlp.experts.1.w1')).toBe(false);
  });

  it('without layers_pattern, needs a name part before the layer list; exact names skip the filter (PEFT quirks)', () => {
    const c = { ...base, target_modules: ['q_proj'], layers_to_transform: [0] };
    expect(compileTargetMatcher(c)('layers.0.q_proj')).toBe('layer-not-selected');
    // PEFT 0.21: with a layers_pattern the list may also start the name.
    expect(compileTargetMatcher({ ...c, layers_pattern: 'layers' })('layers.0.q_proj')).toBe(
      'targeted',
    );
    const exact = { ...c, target_modules: ['model.layers.5.self_attn.q_proj'] };
    expect(isTargetModule(exact, 'model.layers.5.self_attn.q_proj')).toBe(true);
  });
});

describe('all-linear', () => {
  const linear = llamaModules(2).filter((n) => n.includes('proj') || n === 'lm_head');
  it('targets every linear layer except the output head', () => {
    const c = { ...base, target_modules: 'all-linear' };
    const got = matchTargets(c, llamaModules(2), { linearModules: linear });
    expect(got).toHaveLength(14);
    expect(got).not.toContain('lm_head');
    expect(got).not.toContain('model.embed_tokens');
    expect(
      matchTargets({ ...c, target_modules: 'ALL-LINEAR' }, llamaModules(2), {
        linearModules: linear,
      }),
    ).toEqual(got);
    expect(expandAllLinear(linear)).toEqual([...got].sort());
  });

  it('still honours exclude_modules and a custom head name', () => {
    const c = { ...base, target_modules: 'all-linear', exclude_modules: ['down_proj'] };
    expect(matchTargets(c, linear, { linearModules: linear })).toHaveLength(12);
    expect(
      matchTargets({ ...base, target_modules: 'all-linear' }, ['score', 'lm_head'], {
        outputHead: 'score',
      }),
    ).toEqual(['lm_head']);
  });
});

describe('target_modules null', () => {
  it('uses the model type default or explains what to set', () => {
    const c = { ...base, target_modules: null };
    expect(matchTargets(c, llamaModules(1), { modelType: 'llama' })).toEqual([
      'model.layers.0.self_attn.q_proj',
      'model.layers.0.self_attn.v_proj',
    ]);
    expect(() => matchTargets(c, llamaModules(1))).toThrow(/target_modules is null/);
    expect(() => matchTargets(c, llamaModules(1), { modelType: 'mamba' })).toThrow(/mamba/);
  });

  it('works on a full config object', () => {
    expect(isTargetModule(createLoraConfig({ target_modules: ['q_proj'] }), 'a.q_proj')).toBe(true);
  });
});

/**
 * The strongest check: PEFT itself decided which modules to adapt when it wrote these files.
 * Matching the hand-written module list of the architecture with the file's config must give
 * exactly the modules that have lora_A/lora_B tensors in the file.
 */
describe.skipIf(!haveFixtures)('matches what PEFT adapted in real files', () => {
  const cases: [string, string[]][] = [
    ['gpt2-causal-cattn-cproj', gpt2Modules],
    ['gpt2-seqcls-score', gpt2Modules],
    ['roberta-seqcls-fullpath-targets', robertaModules],
    ['flan-t5-small-qkv', t5Modules],
    ['distilbert-seqcls', distilbertModules],
    ['qwen2.5-0.5b-qv', llamaModules(24)],
  ];
  for (const [name, modules] of cases) {
    it(name, async () => {
      const { config } = parseLoraConfig(
        JSON.parse(readFileSync(`${FIXTURES}${name}/adapter_config.json`, 'utf8')),
        name,
      );
      const header = await readSafetensorsHeader(`${FIXTURES}${name}/adapter_model.safetensors`);
      const adapted = header.entries
        .map((e) => /^base_model\.model\.(.*)\.lora_A\.weight$/.exec(e.name)?.[1])
        .filter((n): n is string => n !== undefined)
        .sort();
      expect(adapted.length).toBeGreaterThan(0);
      expect(matchTargets(config, modules).sort()).toEqual(adapted);
    });
  }
});
