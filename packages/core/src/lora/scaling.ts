import type { LoraConfig } from './config.js';
import { compilePythonRegex, type PythonRegex } from './python-regex.js';

/**
 * The key of `pattern` (a `rank_pattern` / `alpha_pattern` dict) that applies to `moduleName`:
 * the first key, in dict order, for which Python `re.match(rf"(.*\.)?({key})$", moduleName)`
 * succeeds (so `"q_proj"` matches `model.layers.0.self_attn.q_proj`, and `"layers.0.self_attn.q_proj"`
 * only that one module). Undefined when none applies.
 *
 * The key is matched by PEFT's own expression in linear time ({@link compilePythonRegex});
 * `configKey` names the dict in errors.
 *
 * Note: JavaScript objects list integer-like keys ("0", "12") first whatever the file order;
 * pattern keys are module names, never bare integers, in practice.
 */
export function findPatternKey(
  pattern: Readonly<Record<string, unknown>>,
  moduleName: string,
  configKey = 'rank_pattern',
): string | undefined {
  for (const [key, re] of compiledKeys(pattern, configKey)) if (re.test(moduleName)) return key;
  return undefined;
}

type CompiledKeys = (readonly [string, PythonRegex])[];

/** Each pattern dict's keys compiled once (recompiled if the dict's keys changed since). */
const compiled = new WeakMap<object, CompiledKeys>();

function compiledKeys(pattern: Readonly<Record<string, unknown>>, configKey: string): CompiledKeys {
  const keys = Object.keys(pattern);
  const cached = compiled.get(pattern);
  if (cached && cached.length === keys.length && cached.every(([k], i) => k === keys[i])) {
    return cached;
  }
  const fresh = keys.map(
    (key) =>
      [
        key,
        compilePythonRegex(`(.*\\.)?(${key})$`, 'match', { key: configKey, pattern: key }),
      ] as const,
  );
  compiled.set(pattern, fresh);
  return fresh;
}

/** Rank of one module: its `rank_pattern` entry if one applies, else `config.r`. */
export function loraRank(
  config: Pick<LoraConfig, 'r' | 'rank_pattern'>,
  moduleName?: string,
): number {
  if (moduleName === undefined) return config.r;
  const key = findPatternKey(config.rank_pattern, moduleName);
  return key === undefined ? config.r : config.rank_pattern[key];
}

/** Alpha of one module: its `alpha_pattern` entry if one applies, else `config.lora_alpha`. */
export function loraAlpha(
  config: Pick<LoraConfig, 'lora_alpha' | 'alpha_pattern'>,
  moduleName?: string,
): number {
  if (moduleName === undefined) return config.lora_alpha;
  const key = findPatternKey(config.alpha_pattern, moduleName, 'alpha_pattern');
  return key === undefined ? config.lora_alpha : config.alpha_pattern[key];
}

/**
 * The factor s in `dW = s * B @ A` for a module (or the config's default when no name is given):
 * `alpha / r`, or `alpha / sqrt(r)` with `use_rslora`; r and alpha each follow their pattern
 * dict independently, as PEFT does.
 */
export function loraScaling(
  config: Pick<LoraConfig, 'r' | 'lora_alpha' | 'use_rslora' | 'rank_pattern' | 'alpha_pattern'>,
  moduleName?: string,
): number {
  const r = loraRank(config, moduleName);
  const alpha = loraAlpha(config, moduleName);
  return config.use_rslora ? alpha / Math.sqrt(r) : alpha / r;
}
