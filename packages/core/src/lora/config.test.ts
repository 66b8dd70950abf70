import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { CoreError } from '../errors.js';
import {
  createLoraConfig,
  LORA_CONFIG_DEFAULTS,
  loraConfigToJson,
  parseLoraConfig,
} from './config.js';

const FIXTURES = fileURLToPath(new URL('../../../../../shared/fixtures/peft/', import.meta.url));
const haveFixtures = existsSync(FIXTURES);
if (!haveFixtures)
  console.warn(`[config.test] PEFT fixtures not found at ${FIXTURES}: fixture tests skipped.`);

function fixtureJson(name: string): unknown {
  return JSON.parse(readFileSync(`${FIXTURES}${name}/adapter_config.json`, 'utf8'));
}

function errorOf(fn: () => unknown): CoreError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(CoreError);
    return e as CoreError;
  }
  throw new Error('expected a CoreError');
}

describe('parseLoraConfig', () => {
  it('fills PEFT defaults when only peft_type is given', () => {
    const { config, unknownKeys, warnings } = parseLoraConfig({ peft_type: 'LORA' }, 'a.json');
    // PEFT's LoraConfig defaults, written out by hand.
    expect(config.r).toBe(8);
    expect(config.lora_alpha).toBe(8);
    expect(config.lora_dropout).toBe(0);
    expect(config.target_modules).toBeNull();
    expect(config.bias).toBe('none');
    expect(config.fan_in_fan_out).toBe(false);
    expect(config.init_lora_weights).toBe(true);
    expect(config.rank_pattern).toEqual({});
    expect(config.inference_mode).toBe(false);
    expect(unknownKeys).toEqual([]);
    expect(warnings).toEqual([]);
  });

  it('does not share default objects between configs', () => {
    const a = parseLoraConfig({ peft_type: 'LORA' }, 'a').config;
    a.rank_pattern.x = 4;
    expect(parseLoraConfig({ peft_type: 'LORA' }, 'b').config.rank_pattern).toEqual({});
    expect(LORA_CONFIG_DEFAULTS.rank_pattern).toEqual({});
  });

  it('rejects bad fields naming the field and the file', () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ r: 0 }, '"r"'],
      [{ r: 2.5 }, '"r"'],
      [{ r: '8' }, '"r"'],
      [{ lora_alpha: Number.NaN }, '"lora_alpha"'],
      [{ lora_alpha: 'x' }, '"lora_alpha"'],
      [{ lora_dropout: 1 }, '"lora_dropout"'],
      [{ target_modules: [1, 2] }, '"target_modules"'],
      [{ bias: 'some' }, '"bias"'],
      [{ fan_in_fan_out: 'yes' }, '"fan_in_fan_out"'],
      [{ layers_to_transform: [-1] }, '"layers_to_transform"'],
      [{ rank_pattern: { q_proj: 0 } }, '"rank_pattern"'],
      [{ alpha_pattern: { q_proj: 'big' } }, '"alpha_pattern"'],
      [{ modules_to_save: 'score' }, '"modules_to_save"'],
      [{ peft_version: 3 }, '"peft_version"'],
    ];
    for (const [fields, field] of cases) {
      const e = errorOf(() =>
        parseLoraConfig({ peft_type: 'LORA', ...fields }, 'dir/adapter_config.json'),
      );
      expect(e.code).toBe('LORA_CONFIG_INVALID');
      expect(e.message).toContain(field);
      expect(e.message).toContain('dir/adapter_config.json');
    }
  });

  it('requires peft_type LORA', () => {
    expect(errorOf(() => parseLoraConfig({ r: 8 }, 'x.json')).message).toContain('peft_type');
    expect(errorOf(() => parseLoraConfig({ peft_type: 'IA3' }, 'x.json')).code).toBe(
      'LORA_CONFIG_NOT_LORA',
    );
    expect(errorOf(() => parseLoraConfig([1], 'x.json')).code).toBe('LORA_CONFIG_INVALID');
  });

  it("applies PEFT's cross-field rules", () => {
    expect(
      errorOf(() =>
        parseLoraConfig(
          { peft_type: 'LORA', target_modules: '.*q', layers_to_transform: [0] },
          'x',
        ),
      ).message,
    ).toContain('layers_to_transform');
    expect(
      errorOf(() =>
        parseLoraConfig(
          { peft_type: 'LORA', target_modules: ['q'], layers_pattern: 'layers' },
          'x',
        ),
      ).message,
    ).toContain('layers_pattern');
  });

  it('keeps unknown keys in extra, reports them, and warns about settings it does not apply', () => {
    const { config, unknownKeys, warnings } = parseLoraConfig(
      { peft_type: 'LORA', loftq_config: {}, future_field: 1, layer_replication: [[0, 4]] },
      'x.json',
    );
    expect(unknownKeys).toEqual(['future_field']);
    expect(config.extra).toEqual({
      loftq_config: {},
      future_field: 1,
      layer_replication: [[0, 4]],
    });
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain('layer_replication');
  });

  it('round-trips to sorted JSON', () => {
    const { config } = parseLoraConfig(
      { r: 4, peft_type: 'LORA', zeta: true, alpha_pattern: { q: 2 } },
      'x',
    );
    const json = loraConfigToJson(config);
    const keys = Object.keys(json);
    expect(keys).toEqual([...keys].sort());
    expect(json.zeta).toBe(true);
    expect(json.r).toBe(4);
    expect(parseLoraConfig(JSON.parse(JSON.stringify(json)), 'again').config).toEqual(config);
  });

  it('createLoraConfig validates like a file', () => {
    expect(createLoraConfig({ r: 16, lora_alpha: 32 }).r).toBe(16);
    expect(() => createLoraConfig({ r: -1 })).toThrow(/"r"/);
  });
});

describe.skipIf(!haveFixtures)('parseLoraConfig on real PEFT files', () => {
  const expected: Record<
    string,
    { r: number; alpha: number; targets: string[]; fifo: boolean; toSave: string[] | null }
  > = {
    // Values from SOURCES.md (written by hand from the files).
    'gpt2-causal-cattn-cproj': {
      r: 8,
      alpha: 32,
      targets: ['c_attn', 'c_proj'],
      fifo: true,
      toSave: null,
    },
    'gpt2-seqcls-score': { r: 8, alpha: 8, targets: ['c_attn'], fifo: true, toSave: null },
    'distilbert-seqcls': {
      r: 8,
      alpha: 16,
      targets: ['q_lin', 'v_lin'],
      fifo: false,
      toSave: ['pre_classifier', 'classifier', 'classifier', 'score'],
    },
    'roberta-seqcls-fullpath-targets': {
      r: 36,
      alpha: 32,
      targets: [
        'roberta.encoder.layer.0.attention.self.query',
        'roberta.encoder.layer.5.attention.self.query',
        'roberta.encoder.layer.0.attention.self.key',
        'roberta.encoder.layer.10.attention.self.query',
      ],
      fifo: false,
      toSave: ['classifier', 'score'],
    },
    'qwen2.5-0.5b-qv': {
      r: 8,
      alpha: 16,
      targets: ['q_proj', 'v_proj'],
      fifo: false,
      toSave: null,
    },
    'smollm2-360m-nested-prefix': {
      r: 8,
      alpha: 16,
      targets: ['v_proj', 'q_proj'],
      fifo: false,
      toSave: null,
    },
    'flan-t5-small-qkv': { r: 8, alpha: 16, targets: ['k', 'q', 'v'], fifo: false, toSave: null },
    'open-calm-1b-fp16-r1': {
      r: 1,
      alpha: 32,
      targets: ['query_key_value'],
      fifo: false,
      toSave: null,
    },
  };
  for (const [name, want] of Object.entries(expected)) {
    it(name, () => {
      const { config, unknownKeys, warnings } = parseLoraConfig(
        fixtureJson(name),
        `${name}/adapter_config.json`,
      );
      expect(config.r).toBe(want.r);
      expect(config.lora_alpha).toBe(want.alpha);
      expect(config.target_modules).toEqual(want.targets);
      expect(config.fan_in_fan_out).toBe(want.fifo);
      expect(config.modules_to_save).toEqual(want.toSave);
      expect(config.use_rslora).toBe(false);
      // Every key in these files is a PEFT field of some version.
      expect(unknownKeys).toEqual([]);
      expect(warnings).toEqual([]);
      // Saving keeps every key and value of the file (older files gain PEFT's newer fields
      // at their defaults, as PEFT itself writes them).
      const saved = loraConfigToJson(config);
      expect(saved).toMatchObject(fixtureJson(name) as object);
      for (const k of Object.keys(saved)) {
        if (!(k in (fixtureJson(name) as object)))
          expect(saved[k]).toEqual(LORA_CONFIG_DEFAULTS[k as keyof typeof LORA_CONFIG_DEFAULTS]);
      }
    });
  }
});
