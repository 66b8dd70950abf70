import {
  isFloatDType,
  LORA_CONFIG_DEFAULTS,
  type LoraConfig,
  loraRank,
  parseLoraConfig,
  readJsonFile,
  SafetensorsFile,
  type Tensor,
} from '@lora/core';
import type { Adapter, LoraModule } from '../adapter.js';
import { AdapterError } from '../errors.js';
import { adapterFiles } from './files.js';
import { type AdapterKeyKind, parseAdapterKey, stripPeftPrefix } from './keys.js';

/** An adapter as read from disk, with what was noticed on the way. */
export interface LoadedAdapter {
  readonly adapter: Adapter;
  /** Things the user should know (unknown config keys, doubled key prefix, ...). Not printed. */
  readonly warnings: string[];
  /** Paths read. */
  readonly configPath: string;
  readonly weightsPath: string;
}

/** Reads and validates `adapter_config.json` (PEFT field names; unknown keys kept). */
export async function readAdapterConfig(
  configPath: string,
): Promise<{ config: LoraConfig; warnings: string[] }> {
  let json: unknown;
  try {
    json = await readJsonFile(configPath);
  } catch (e) {
    throw new AdapterError(
      'ADAPTER_CONFIG_INVALID',
      `${configPath}: not valid JSON (${(e as Error).message}).`,
      { path: configPath },
      { cause: e },
    );
  }
  const { config, unknownKeys, warnings } = parseLoraConfig(json, configPath);
  const out = [...warnings, ...missingFieldWarnings(json as Record<string, unknown>, configPath)];
  if (unknownKeys.length > 0) {
    out.push(
      `${configPath}: unknown config key(s) ${unknownKeys.map((k) => `"${k}"`).join(', ')} kept as they are (PEFT drops unknown keys when it loads).`,
    );
  }
  return { config, warnings: out };
}

/**
 * Fields PEFT fills with defaults when absent: said out loud, since a missing `r` or `lora_alpha`
 * changes the scaling (a rank that disagrees with the tensors is refused when they are read).
 */
function missingFieldWarnings(raw: Record<string, unknown>, configPath: string): string[] {
  const out: string[] = [];
  for (const [field, value] of [
    ['r', LORA_CONFIG_DEFAULTS.r],
    ['lora_alpha', LORA_CONFIG_DEFAULTS.lora_alpha],
  ] as const) {
    if (raw[field] === undefined)
      out.push(
        `${configPath}: "${field}" is missing; PEFT's default ${field} = ${value} applies (scaling lora_alpha / r). Add it to adapter_config.json if the adapter was trained with another value.`,
      );
  }
  if (raw.target_modules === undefined || raw.target_modules === null) {
    out.push(
      `${configPath}: "target_modules" is missing; PEFT then picks its defaults for the model type (q_proj and v_proj for LLaMA-family models) and refuses unknown models. Here the modules present in the weights file are used.`,
    );
  }
  return out;
}

interface PartialModule {
  A?: Tensor;
  B?: Tensor;
  bias?: Tensor;
  magnitude?: Tensor;
  embeddingA?: Tensor;
  embeddingB?: Tensor;
}

/**
 * Loads a PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
 * Accepts f32, f16 and bf16 tensors (kept as they are), the `base_model.model.` prefix once or
 * repeated (an adapter trained on an already wrapped model), adapter names inside keys
 * (`.lora_A.default.weight`, `.modules_to_save.default.weight`), DoRA magnitudes, `lora_B.bias`,
 * embedding LoRA, and saved full modules (declared in `modules_to_save` or not). Checks that
 * every module has both A and B with matching ranks.
 */
export async function loadPeftAdapter(dir: string): Promise<LoadedAdapter> {
  const { configPath, weightsPath } = await adapterFiles(dir);
  const { config, warnings } = await readAdapterConfig(configPath);
  const file = await SafetensorsFile.open(weightsPath);
  const parts = new Map<string, PartialModule>();
  const modulesToSave = new Map<string, Tensor>();
  const adapterNames = new Set<string>();
  let maxPrefix = 0;
  try {
    for (const key of file.names()) {
      const { name, prefixCount } = stripPeftPrefix(key);
      maxPrefix = Math.max(maxPrefix, prefixCount);
      const parsed = parseAdapterKey(name);
      if (!parsed) {
        throw new AdapterError(
          'ADAPTER_KEY_UNKNOWN',
          `${weightsPath}: tensor "${key}" is not a LoRA tensor PEFT writes (lora_A/B weight, lora_B bias, magnitude, embedding A/B).`,
          {
            path: weightsPath,
            tensor: key,
          },
        );
      }
      if (parsed.adapterName) adapterNames.add(parsed.adapterName);
      const t = await file.read(key);
      if (parsed.type === 'saved') {
        if (modulesToSave.has(parsed.parameter)) {
          throw new AdapterError(
            'ADAPTER_KEY_DUPLICATE',
            `${weightsPath}: parameter "${parsed.parameter}" appears twice (keys with and without an adapter name).`,
            {
              path: weightsPath,
              tensor: key,
            },
          );
        }
        modulesToSave.set(parsed.parameter, t);
        continue;
      }
      if (!isFloatDType(t.dtype)) {
        throw new AdapterError(
          'ADAPTER_DTYPE_UNSUPPORTED',
          `${weightsPath}: "${key}" is ${t.dtype}; LoRA tensors must be f32, f16, bf16 or f64.`,
          {
            path: weightsPath,
            tensor: key,
          },
        );
      }
      const entry = parts.get(parsed.module) ?? {};
      const field = kindField(parsed.kind);
      if (entry[field]) {
        throw new AdapterError(
          'ADAPTER_KEY_DUPLICATE',
          `${weightsPath}: two tensors for ${parsed.module} ${field} (e.g. "${key}").`,
          {
            path: weightsPath,
            tensor: key,
          },
        );
      }
      entry[field] = t;
      parts.set(parsed.module, entry);
    }
  } finally {
    await file.close();
  }

  if (maxPrefix > 1) {
    warnings.push(
      `${weightsPath}: keys carry the "base_model.model." prefix ${maxPrefix} times (the adapter was trained on an already wrapped model); module names were taken after the last one. Saving writes the single prefix PEFT expects.`,
    );
  }
  if (adapterNames.size > 0) {
    warnings.push(
      `${weightsPath}: keys contain the adapter name(s) ${[...adapterNames].map((n) => `"${n}"`).join(', ')}; removed, as PEFT does when it saves.`,
    );
  }

  const modules = new Map<string, LoraModule>();
  for (const [name, p] of parts)
    modules.set(name, buildModule(name, p, config, weightsPath, warnings));
  if (modules.size === 0) {
    throw new AdapterError(
      'ADAPTER_EMPTY',
      `${weightsPath}: no LoRA tensors (lora_A / lora_B) in the file.`,
      { path: weightsPath },
    );
  }
  const declared = config.modules_to_save ?? [];
  const undeclared = [...modulesToSave.keys()].filter(
    (p) => !declared.some((m) => p === m || p.startsWith(`${m}.`) || p.includes(`.${m}.`)),
  );
  if (undeclared.length > 0) {
    warnings.push(
      `${weightsPath}: full parameter(s) ${undeclared.map((p) => `"${p}"`).join(', ')} are saved but not declared in modules_to_save (PEFT adds classifier heads this way for SEQ_CLS); they are kept and replace the base model's on merge.`,
    );
  }
  return { adapter: { config, modules, modulesToSave }, warnings, configPath, weightsPath };
}

function kindField(kind: AdapterKeyKind): keyof PartialModule {
  return kind;
}

function buildModule(
  name: string,
  p: PartialModule,
  config: LoraConfig,
  file: string,
  warnings: string[],
): LoraModule {
  const embedding = p.embeddingA !== undefined || p.embeddingB !== undefined;
  const A = embedding ? p.embeddingA : p.A;
  const B = embedding ? p.embeddingB : p.B;
  const where = { path: file, module: name };
  if (embedding && (p.A || p.B)) {
    throw new AdapterError(
      'ADAPTER_MODULE_INVALID',
      `${file}: module ${name} has both lora_A/lora_B and lora_embedding_A/B tensors.`,
      where,
    );
  }
  if (!A || !B) {
    const missing = embedding
      ? A
        ? 'lora_embedding_B'
        : 'lora_embedding_A'
      : A
        ? 'lora_B.weight'
        : 'lora_A.weight';
    throw new AdapterError(
      'ADAPTER_TENSOR_MISSING',
      `${file}: module ${name} has no ${missing}; the file is incomplete.`,
      where,
    );
  }
  if (A.shape.length !== 2 || B.shape.length !== 2 || A.shape[0] !== B.shape[1]) {
    throw new AdapterError(
      'ADAPTER_RANK_MISMATCH',
      `${file}: module ${name}: A is [${A.shape.join(', ')}] and B is [${B.shape.join(', ')}]; they must be [r, in] and [out, r] with the same r.`,
      where,
    );
  }
  const r = A.shape[0];
  const expectedR = loraRank(config, name);
  if (r !== expectedR) {
    throw new AdapterError(
      'ADAPTER_RANK_MISMATCH',
      `${file}: module ${name} has rank ${r} in its tensors but the config says r = ${expectedR}${Object.keys(config.rank_pattern).length > 0 ? ' (after rank_pattern)' : ''}. Fix "r" / "rank_pattern" in adapter_config.json.`,
      { ...where, expected: expectedR, actual: r },
    );
  }
  const out = B.shape[0];
  for (const [label, t] of [
    ['lora_B.bias', p.bias],
    ['lora_magnitude_vector', p.magnitude],
  ] as const) {
    if (t && (t.shape.length !== 1 || t.shape[0] !== out)) {
      throw new AdapterError(
        'ADAPTER_MODULE_INVALID',
        `${file}: module ${name}: ${label} has shape [${t.shape.join(', ')}], expected [${out}].`,
        where,
      );
    }
  }
  if (p.magnitude && !config.use_dora)
    warnings.push(
      `${file}: module ${name} has a DoRA magnitude but use_dora is false; it is kept and applied.`,
    );
  if (!p.magnitude && config.use_dora && !embedding) {
    throw new AdapterError(
      'ADAPTER_TENSOR_MISSING',
      `${file}: use_dora is true but module ${name} has no lora_magnitude_vector.`,
      where,
    );
  }
  if (p.bias && !config.lora_bias)
    warnings.push(
      `${file}: module ${name} has lora_B.bias but lora_bias is false; it is kept and applied.`,
    );
  const m: { -readonly [K in keyof LoraModule]: LoraModule[K] } = { A, B };
  if (p.bias) m.bias = p.bias;
  if (p.magnitude) m.magnitude = p.magnitude;
  if (embedding) m.embedding = true;
  return m;
}
