import { CoreError } from '../errors.js';

/** How biases are trained, as PEFT's `bias` field. */
export type LoraBiasMode = 'none' | 'all' | 'lora_only';

/**
 * A LoRA adapter configuration with PEFT's `adapter_config.json` field names, so it reads and
 * writes those files without renaming. Defaults (see {@link LORA_CONFIG_DEFAULTS}) are PEFT's.
 */
export interface LoraConfig {
  /** Always `"LORA"`. */
  peft_type: 'LORA';
  /** Rank of A `[r, in]` and B `[out, r]`. */
  r: number;
  /** Scaling numerator: scaling = lora_alpha / r (or / sqrt(r) with `use_rslora`). */
  lora_alpha: number;
  /** Dropout probability on the LoRA branch input (training only). */
  lora_dropout: number;
  /** Module-name suffixes (list), a Python regex matched in full (string), `"all-linear"`, or null (model default). */
  target_modules: string[] | string | null;
  /** Modules never adapted: regex fullmatch (string) or exact / suffix names (list). */
  exclude_modules: string[] | string | null;
  /** True when the base weight is stored `[in, out]` (GPT-2 Conv1D): the delta is transposed. */
  fan_in_fan_out: boolean;
  bias: LoraBiasMode;
  /** Rank-stabilised scaling lora_alpha / sqrt(r). */
  use_rslora: boolean;
  /** Weight-decomposed LoRA (magnitude vector). */
  use_dora: boolean;
  /** Modules trained in full and saved with the adapter (never LoRA-targeted). */
  modules_to_save: string[] | null;
  /** `true` (A kaiming-uniform, B = 0), `false` (both random), or a method name ("gaussian", "pissa", "olora", ...). */
  init_lora_weights: boolean | string;
  /** Only these layer indices (int or list) are adapted. */
  layers_to_transform: number[] | number | null;
  /** Name(s) of the layer list, e.g. "layers" or "h", used to find the layer index. */
  layers_pattern: string[] | string | null;
  /** Per-module rank overrides: regex key -> r. */
  rank_pattern: Record<string, number>;
  /** Per-module alpha overrides: regex key -> alpha. */
  alpha_pattern: Record<string, number>;
  /** Whether lora_B has a bias. */
  lora_bias: boolean;
  base_model_name_or_path: string | null;
  task_type: string | null;
  inference_mode: boolean;
  revision: string | null;
  /** PEFT version that wrote the file (absent in older files). */
  peft_version?: string;
  /**
   * Every other key of the JSON, value untouched (PEFT fields this package does not interpret,
   * such as `loftq_config` or `megatron_core`, and keys unknown to PEFT), so a load/save round
   * trip keeps them.
   */
  extra: Record<string, unknown>;
}

/** PEFT's defaults for the fields of {@link LoraConfig}. */
export const LORA_CONFIG_DEFAULTS: Readonly<
  Omit<LoraConfig, 'peft_type' | 'extra' | 'peft_version'>
> = Object.freeze({
  r: 8,
  lora_alpha: 8,
  lora_dropout: 0,
  target_modules: null,
  exclude_modules: null,
  fan_in_fan_out: false,
  bias: 'none',
  use_rslora: false,
  use_dora: false,
  modules_to_save: null,
  init_lora_weights: true,
  layers_to_transform: null,
  layers_pattern: null,
  rank_pattern: {},
  alpha_pattern: {},
  lora_bias: false,
  base_model_name_or_path: null,
  task_type: null,
  inference_mode: false,
  revision: null,
});

/**
 * Fields of PEFT's LoraConfig (0.9 to 0.20) that this package keeps in `extra` without
 * interpreting. They are not "unknown"; a non-default value in one of {@link SEMANTIC_EXTRAS}
 * produces a warning because the adapter then means more than A and B.
 */
const KNOWN_PEFT_FIELDS = new Set([
  'auto_mapping',
  'loftq_config',
  'megatron_config',
  'megatron_core',
  'layer_replication',
  'eva_config',
  'corda_config',
  'trainable_token_indices',
  'target_parameters',
  'use_qalora',
  'qalora_group_size',
  'alora_invocation_tokens',
  'arrow_config',
  'ensure_weight_tying',
  'lora_ga_config',
  'monteclora_config',
  'use_bdlora',
  'velora_config',
]);

/** Extra fields that change what the adapter computes when set (value, how to phrase it). */
const SEMANTIC_EXTRAS: ReadonlyArray<[string, (v: unknown) => boolean]> = [
  ['layer_replication', (v) => v != null],
  ['trainable_token_indices', (v) => v != null],
  ['target_parameters', (v) => v != null && !(Array.isArray(v) && v.length === 0)],
  ['use_qalora', (v) => v === true],
  ['alora_invocation_tokens', (v) => v != null],
  ['use_bdlora', (v) => v != null && v !== false],
];

/** The result of {@link parseLoraConfig}. */
export interface ParsedLoraConfig {
  config: LoraConfig;
  /** Keys that are not LoraConfig fields in any PEFT version known here (kept in `config.extra`). */
  unknownKeys: string[];
  /** Settings present in the file that this package does not apply (e.g. `layer_replication`). */
  warnings: string[];
}

/**
 * Validates an `adapter_config.json` object (already JSON-parsed) and fills PEFT's defaults.
 * `source` names the file in error messages. Throws `CoreError` (`LORA_CONFIG_INVALID`) naming
 * the field and the file.
 */
export function parseLoraConfig(json: unknown, source: string): ParsedLoraConfig {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw configError(source, '(root)', 'must be a JSON object');
  }
  const raw = json as Record<string, unknown>;
  if (!('peft_type' in raw)) {
    throw configError(
      source,
      'peft_type',
      'is missing (an adapter_config.json must say "peft_type": "LORA")',
    );
  }
  if (raw.peft_type !== 'LORA') {
    throw new CoreError(
      'LORA_CONFIG_NOT_LORA',
      `${source}: peft_type is ${JSON.stringify(raw.peft_type)}, not "LORA". Only LoRA adapters are supported.`,
      { source, field: 'peft_type' },
    );
  }
  const get = <T>(
    field: keyof typeof LORA_CONFIG_DEFAULTS,
    check: (v: unknown) => v is T,
    expected: string,
  ): T => {
    const v = raw[field];
    if (v === undefined) return structuredClone(LORA_CONFIG_DEFAULTS[field]) as T;
    if (!check(v)) throw configError(source, field, `must be ${expected}, got ${describe(v)}`);
    return v;
  };

  const config: LoraConfig = {
    peft_type: 'LORA',
    r: get('r', isRank, `a positive integer up to ${MAX_LORA_RANK}`),
    lora_alpha: get('lora_alpha', isFiniteNumber, 'a finite number'),
    lora_dropout: get('lora_dropout', isProbability, 'a number in [0, 1)'),
    target_modules: get(
      'target_modules',
      isStringListOrStringOrNull,
      'a list of strings, a regex string or null',
    ),
    exclude_modules: get(
      'exclude_modules',
      isStringListOrStringOrNull,
      'a list of strings, a regex string or null',
    ),
    fan_in_fan_out: get('fan_in_fan_out', isBoolean, 'true or false'),
    bias: get('bias', isBiasMode, '"none", "all" or "lora_only"'),
    use_rslora: get('use_rslora', isBoolean, 'true or false'),
    use_dora: get('use_dora', isBoolean, 'true or false'),
    modules_to_save: get('modules_to_save', isStringListOrNull, 'a list of strings or null'),
    init_lora_weights: get('init_lora_weights', isBooleanOrString, 'true, false or a method name'),
    layers_to_transform: get(
      'layers_to_transform',
      isLayerIndices,
      'a non-negative integer, a list of them, or null',
    ),
    layers_pattern: get(
      'layers_pattern',
      isStringListOrStringOrNull,
      'a string, a list of strings or null',
    ),
    rank_pattern: get(
      'rank_pattern',
      isRankPattern,
      `an object mapping patterns to positive integers up to ${MAX_LORA_RANK}`,
    ),
    alpha_pattern: get(
      'alpha_pattern',
      isAlphaPattern,
      'an object mapping patterns to finite numbers',
    ),
    lora_bias: get('lora_bias', isBoolean, 'true or false'),
    base_model_name_or_path: get('base_model_name_or_path', isStringOrNull, 'a string or null'),
    task_type: get('task_type', isStringOrNull, 'a string or null'),
    inference_mode: get('inference_mode', isBoolean, 'true or false'),
    revision: get('revision', isStringOrNull, 'a string or null'),
    extra: {},
  };
  if (raw.peft_version !== undefined) {
    if (typeof raw.peft_version !== 'string') {
      throw configError(
        source,
        'peft_version',
        `must be a string, got ${describe(raw.peft_version)}`,
      );
    }
    config.peft_version = raw.peft_version;
  }

  const modelled = new Set<string>([
    'peft_type',
    'peft_version',
    ...Object.keys(LORA_CONFIG_DEFAULTS),
  ]);
  const unknownKeys: string[] = [];
  for (const [key, value] of Object.entries(raw)) {
    if (modelled.has(key)) continue;
    config.extra[key] = value;
    if (!KNOWN_PEFT_FIELDS.has(key)) unknownKeys.push(key);
  }

  const warnings: string[] = [];
  for (const [key, isSet] of SEMANTIC_EXTRAS) {
    if (isSet(raw[key])) {
      warnings.push(
        `${source}: "${key}" is set (${JSON.stringify(raw[key])}); it is kept but not applied by @lora.`,
      );
    }
  }
  checkConsistency(config, source);
  return { config, unknownKeys, warnings };
}

/** PEFT's own cross-field rules (raised by `LoraConfig.__post_init__`). */
function checkConsistency(c: LoraConfig, source: string): void {
  const usesLayers = c.layers_to_transform !== null;
  if (typeof c.target_modules === 'string' && usesLayers) {
    throw configError(
      source,
      'layers_to_transform',
      'cannot be used when target_modules is a regex string (put the layer numbers in the regex)',
    );
  }
  if (
    typeof c.target_modules === 'string' &&
    c.layers_pattern !== null &&
    c.layers_pattern.length > 0
  ) {
    throw configError(
      source,
      'layers_pattern',
      'cannot be used when target_modules is a regex string',
    );
  }
  if (c.layers_pattern !== null && c.layers_pattern.length > 0 && !usesLayers) {
    throw configError(source, 'layers_pattern', 'needs layers_to_transform as well');
  }
}

/**
 * A config from a few fields plus PEFT defaults, validated as if read from a file.
 * `createLoraConfig({ r: 16, lora_alpha: 32, target_modules: ['q_proj', 'v_proj'] })`.
 */
export function createLoraConfig(fields: Partial<Omit<LoraConfig, 'peft_type'>> = {}): LoraConfig {
  const { extra, ...rest } = fields;
  return parseLoraConfig({ ...extra, ...rest, peft_type: 'LORA' }, 'LoraConfig').config;
}

/**
 * The JSON object PEFT writes for this config: every field (extras included) with keys sorted,
 * ready for `JSON.stringify(obj, null, 2)`.
 */
export function loraConfigToJson(config: LoraConfig): Record<string, unknown> {
  const { extra, ...fields } = config;
  const merged: Record<string, unknown> = { ...extra, ...fields };
  const sorted: Record<string, unknown> = {};
  for (const key of Object.keys(merged).sort()) sorted[key] = merged[key];
  return sorted;
}

function configError(source: string, field: string, problem: string): CoreError {
  return new CoreError(
    'LORA_CONFIG_INVALID',
    `${source}: "${field}" ${problem}. Fix the field or remove it to use the default.`,
    {
      source,
      field,
    },
  );
}

function describe(v: unknown): string {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

const isBoolean = (v: unknown): v is boolean => typeof v === 'boolean';
const isFiniteNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isPositiveInt = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) > 0;
/**
 * The largest LoRA rank accepted: 2^16. A rank is at most a layer's smaller side, and no published
 * model has a hidden size that large; a config claiming r = 1e9 is refused before anything is sized by it.
 */
export const MAX_LORA_RANK = 2 ** 16;
const isRank = (v: unknown): v is number => isPositiveInt(v) && v <= MAX_LORA_RANK;
const isProbability = (v: unknown): v is number => isFiniteNumber(v) && v >= 0 && v < 1;
const isStringOrNull = (v: unknown): v is string | null => v === null || typeof v === 'string';
const isBooleanOrString = (v: unknown): v is boolean | string =>
  typeof v === 'boolean' || typeof v === 'string';
const isBiasMode = (v: unknown): v is LoraBiasMode =>
  v === 'none' || v === 'all' || v === 'lora_only';
const isStringList = (v: unknown): v is string[] =>
  Array.isArray(v) && v.every((x) => typeof x === 'string');
const isStringListOrNull = (v: unknown): v is string[] | null => v === null || isStringList(v);
const isStringListOrStringOrNull = (v: unknown): v is string[] | string | null =>
  v === null || typeof v === 'string' || isStringList(v);
const isLayerIndex = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const isLayerIndices = (v: unknown): v is number[] | number | null =>
  v === null || isLayerIndex(v) || (Array.isArray(v) && v.every(isLayerIndex));
const isRecordOf =
  <T>(check: (x: unknown) => x is T) =>
  (v: unknown): v is Record<string, T> =>
    v !== null && typeof v === 'object' && !Array.isArray(v) && Object.values(v).every(check);
const isRankPattern = isRecordOf(isRank);
const isAlphaPattern = isRecordOf(isFiniteNumber);
