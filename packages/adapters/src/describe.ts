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
  /**
   * `lora` for LoRA tensors (A, B, bias, magnitude, embedding), `saved` for full modules,
   * `base` for a LoRA layer's own base weight (`<module>.base_layer.weight`, PEFT's
   * `save_embedding_layers`): it replaces the base's and is not trained.
   */
  readonly role: 'lora' | 'saved' | 'base';
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
  /** Parameters of saved base-layer weights (`base_layer.weight`), which replace the base's. */
  readonly baseLayerParameterCount: number;
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
  let baseLayerParameterCount = 0;
  const dtypes = new Set<string>();
  for (const e of header.entries) {
    const parsed = parseAdapterKey(stripPeftPrefix(e.name).name);
    const role =
      parsed?.type === 'lora' ? 'lora' : /\.base_layer\.[^.]+$/.test(e.name) ? 'base' : 'saved';
    if (parsed?.type === 'lora') modules.add(parsed.module);
    if (role === 'lora') loraParameterCount += numel(e.shape);
    else if (role === 'base') baseLayerParameterCount += numel(e.shape);
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
    baseLayerParameterCount,
    dtypes: [...dtypes].sort(),
    bytesOnDisk: { config: configBytes, weights: weightsBytes, total: configBytes + weightsBytes },
    warnings,
  };
}

/**
 * What PEFT's `print_trainable_parameters` prints for this adapter loaded trainable on a base of
 * `baseParams` parameters: LoRA tensors and saved modules are trainable; a saved module is a
 * trainable COPY next to the frozen original, so it counts twice in "all params"; a saved
 * `base_layer.weight` stands for a base weight already counted, and is frozen.
 */
export function peftParameterCounts(
  adapter: Pick<AdapterDescription, 'loraParameterCount' | 'savedParameterCount'>,
  baseParams: number,
): { trainableParams: number; allParams: number } {
  const trainableParams = adapter.loraParameterCount + adapter.savedParameterCount;
  return { trainableParams, allParams: baseParams + trainableParams };
}
