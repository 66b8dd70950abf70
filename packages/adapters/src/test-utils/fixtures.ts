import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** `shared/` beside the repository (see the preamble): real PEFT adapters live there. */
export const PEFT_FIXTURES = fileURLToPath(
  new URL('../../../../../shared/fixtures/peft/', import.meta.url),
);
export const HAVE_PEFT_FIXTURES = existsSync(PEFT_FIXTURES);
if (!HAVE_PEFT_FIXTURES) {
  console.warn(
    `[@lora/adapters] PEFT fixtures not found at ${PEFT_FIXTURES}: fixture tests are SKIPPED.`,
  );
}

/** Facts from shared/fixtures/peft/SOURCES.md, typed in by hand (not read from the files). */
export interface FixtureFacts {
  readonly name: string;
  readonly r: number;
  readonly alpha: number;
  readonly targets: readonly string[];
  readonly fanInFanOut: boolean;
  readonly modulesToSave: readonly string[] | null;
  readonly tensorCount: number;
  readonly loraTensorCount: number;
  readonly dtype: 'f32' | 'f16';
  readonly loraParameterCount: number;
  readonly savedParameterCount: number;
}

export const FIXTURES: readonly FixtureFacts[] = [
  {
    name: 'gpt2-causal-cattn-cproj',
    r: 8,
    alpha: 32,
    targets: ['c_attn', 'c_proj'],
    fanInFanOut: true,
    modulesToSave: null,
    tensorCount: 72,
    loraTensorCount: 72,
    dtype: 'f32',
    loraParameterCount: 811_008,
    savedParameterCount: 0,
  },
  {
    name: 'gpt2-seqcls-score',
    r: 8,
    alpha: 8,
    targets: ['c_attn'],
    fanInFanOut: true,
    modulesToSave: null,
    tensorCount: 25,
    loraTensorCount: 24,
    dtype: 'f32',
    loraParameterCount: 294_912,
    savedParameterCount: 4_608,
  },
  {
    name: 'distilbert-seqcls',
    r: 8,
    alpha: 16,
    targets: ['q_lin', 'v_lin'],
    fanInFanOut: false,
    modulesToSave: ['pre_classifier', 'classifier', 'classifier', 'score'],
    tensorCount: 28,
    loraTensorCount: 24,
    dtype: 'f32',
    loraParameterCount: 147_456,
    savedParameterCount: 595_206,
  },
  {
    name: 'roberta-seqcls-fullpath-targets',
    r: 36,
    alpha: 32,
    targets: [
      'roberta.encoder.layer.0.attention.self.query',
      'roberta.encoder.layer.5.attention.self.query',
      'roberta.encoder.layer.0.attention.self.key',
      'roberta.encoder.layer.10.attention.self.query',
    ],
    fanInFanOut: false,
    modulesToSave: ['classifier', 'score'],
    tensorCount: 12,
    loraTensorCount: 8,
    dtype: 'f32',
    loraParameterCount: 221_184,
    savedParameterCount: 593_668,
  },
  {
    name: 'qwen2.5-0.5b-qv',
    r: 8,
    alpha: 16,
    targets: ['q_proj', 'v_proj'],
    fanInFanOut: false,
    modulesToSave: null,
    tensorCount: 96,
    loraTensorCount: 96,
    dtype: 'f32',
    loraParameterCount: 540_672,
    savedParameterCount: 0,
  },
  {
    name: 'smollm2-360m-nested-prefix',
    r: 8,
    alpha: 16,
    targets: ['v_proj', 'q_proj'],
    fanInFanOut: false,
    modulesToSave: null,
    tensorCount: 128,
    loraTensorCount: 128,
    dtype: 'f32',
    loraParameterCount: 819_200,
    savedParameterCount: 0,
  },
  {
    name: 'flan-t5-small-qkv',
    r: 8,
    alpha: 16,
    targets: ['k', 'q', 'v'],
    fanInFanOut: false,
    modulesToSave: null,
    tensorCount: 144,
    loraTensorCount: 144,
    dtype: 'f32',
    loraParameterCount: 516_096,
    savedParameterCount: 0,
  },
  {
    name: 'open-calm-1b-fp16-r1',
    r: 1,
    alpha: 32,
    targets: ['query_key_value'],
    fanInFanOut: false,
    modulesToSave: null,
    tensorCount: 48,
    loraTensorCount: 48,
    dtype: 'f16',
    loraParameterCount: 196_608,
    savedParameterCount: 0,
  },
];
