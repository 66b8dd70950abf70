import { stat } from 'node:fs/promises';
import { loraConfigToJson, loraRank, loraScaling, numel, readSafetensorsHeader } from '@lora/core';
import { adapterFiles } from './peft/files.js';
import { readAdapterConfig } from './peft/load.js';
import { parseAdapterKey, stripPeftPrefix } from './peft/keys.js';

/** One tensor of an adapter file, as listed by {@link describeAdapter}. */
export interface AdapterTensorInfo {
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
  /** `lora` for LoRA tensors (A, B, bias, magnitude, embedding), `saved` for full modules. */
  readonly role: 'lora' | 'saved';
}

/** What `lora inspect` shows for a PEFT adapter folder. */
export interface AdapterDescription {
  readonly path: string;
  /** adapter_config.json as PEFT writes it (sorted keys, extras included). */
  readonly config: Record<string, unknown>;
  readonly r: number;
  readonly alpha: number;
  /** Default scaling (alpha / r, or alpha / sqrt(r) with rslora). */
  readonly scaling: number;
  readonly useRslora: boolean;
  readonly useDora: boolean;
  readonly fanInFanOut: boolean;
  /** `target_modules` as in the config (list, regex string or null). */
  readonly targets: string[] | string | null;
  /** Adapted module names (no prefix), sorted. */
  readonly modules: string[];
  /** Ranks present when a rank_pattern gives modules different ranks: rank -> module count. */
  readonly ranks: Record<string, number>;
  readonly modulesToSave: string[] | null;
  readonly tensors: AdapterTensorInfo[];
  readonly loraParameterCount: number;
  /** Parameters of saved full modules (modules_to_save, heads). */
  readonly savedParameterCount: number;
  /** Distinct dtypes of the tensors, e.g. ["f32"]. */
  readonly dtypes: string[];
  readonly bytesOnDisk: {
    readonly config: number;
    readonly weights: number;
    readonly total: number;
  };
  readonly warnings: string[];
}

/**
 * Describes a PEFT adapter folder from its config and the safetensors header only (no tensor
 * data is read, so it is instant on any size): config, r, alpha, scaling, targets, modules,
 * tensors, parameter counts, dtypes and bytes.
 */
export async function describeAdapter(dir: string): Promise<AdapterDescription> {
  const { configPath, weightsPath } = await adapterFiles(dir);
  const { config, warnings } = await readAdapterConfig(configPath);
  const header = await readSafetensorsHeader(weightsPath);
  const tensors: AdapterTensorInfo[] = [];
  const modules = new Set<string>();
  let loraParameterCount = 0;
  let savedParameterCount = 0;
  const dtypes = new Set<string>();
  for (const e of header.entries) {
    const parsed = parseAdapterKey(stripPeftPrefix(e.name).name);
    const role = parsed && parsed.type === 'lora' ? 'lora' : 'saved';
    if (parsed?.type === 'lora') modules.add(parsed.module);
    if (role === 'lora') loraParameterCount += numel(e.shape);
    else savedParameterCount += numel(e.shape);
    dtypes.add(e.dtype);
    tensors.push({ name: e.name, dtype: e.dtype, shape: [...e.shape], role });
  }
  const ranks: Record<string, number> = {};
  for (const m of modules) {
    const r = String(loraRank(config, m));
    ranks[r] = (ranks[r] ?? 0) + 1;
  }
  const [configBytes, weightsBytes] = await Promise.all([stat(configPath), stat(weightsPath)]).then(
    (s) => s.map((x) => x.size),
  );
  return {
    path: dir,
    config: loraConfigToJson(config),
    r: config.r,
    alpha: config.lora_alpha,
    scaling: loraScaling(config),
    useRslora: config.use_rslora,
    useDora: config.use_dora,
    fanInFanOut: config.fan_in_fan_out,
    targets: config.target_modules,
    modules: [...modules].sort(),
    ranks,
    modulesToSave: config.modules_to_save,
    tensors,
    loraParameterCount,
    savedParameterCount,
    dtypes: [...dtypes].sort(),
    bytesOnDisk: { config: configBytes, weights: weightsBytes, total: configBytes + weightsBytes },
    warnings,
  };
}
