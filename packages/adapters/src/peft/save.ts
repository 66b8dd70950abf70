import { join } from 'node:path';
import {
  type LoraConfig,
  loraConfigToJson,
  type TensorToWrite,
  outputMarker,
  writeBytesAtomic,
  writeFolderAtomic,
  writeSafetensors,
} from '@lora/core';
import type { Adapter } from '../adapter.js';
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE } from './files.js';
import { loraKey, savedKey } from './keys.js';

export interface SavePeftOptions {
  /** Replace an existing folder (atomically: the old one is removed only once the new one is complete). */
  overwrite?: boolean;
  /**
   * The command writing the adapter, recorded in `adapter_model.safetensors`' metadata
   * (`lora.writer`, which PEFT ignores) so that a later `--force` recognises it.
   */
  writer?: string;
}

/** Sorts object keys at every level, as Python's `json.dump(..., sort_keys=True)` does. */
function sortKeysDeep(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeysDeep);
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(value).sort())
      out[k] = sortKeysDeep((value as Record<string, unknown>)[k]);
    return out;
  }
  return value;
}

/** `adapter_config.json` text as PEFT writes it: keys sorted, indent 2 (extra keys kept). */
export function adapterConfigJson(config: LoraConfig): string {
  return `${JSON.stringify(sortKeysDeep(loraConfigToJson(config)), null, 2)}\n`;
}

/** The tensors of an adapter under PEFT's key names (single `base_model.model.` prefix, no adapter name), sorted by key. */
export function adapterTensorsToWrite(adapter: Adapter): TensorToWrite[] {
  const list: TensorToWrite[] = [];
  const add = (
    name: string,
    t: { dtype: TensorToWrite['dtype']; shape: readonly number[]; data: TensorToWrite['data'] },
  ) => list.push({ name, dtype: t.dtype, shape: t.shape, data: t.data });
  for (const [module, m] of adapter.modules) {
    add(loraKey(module, m.embedding ? 'embeddingA' : 'A'), m.A);
    add(loraKey(module, m.embedding ? 'embeddingB' : 'B'), m.B);
    if (m.bias) add(loraKey(module, 'bias'), m.bias);
    if (m.magnitude) add(loraKey(module, 'magnitude'), m.magnitude);
  }
  for (const [param, t] of adapter.modulesToSave) add(savedKey(param), t);
  return list.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/**
 * Saves an adapter as a PEFT folder that PEFT's `PeftModel.from_pretrained` loads:
 * `adapter_config.json` (sorted keys, indent 2, unknown keys kept) and
 * `adapter_model.safetensors` (PEFT key names, metadata `{"format": "pt"}`, tensors in the dtype
 * they have). The folder appears complete or not at all.
 */
export async function savePeftAdapter(
  dir: string,
  adapter: Adapter,
  options: SavePeftOptions = {},
): Promise<void> {
  await writeFolderAtomic(
    dir,
    async (tmp) => {
      await writeSafetensors(join(tmp, ADAPTER_WEIGHTS_FILE), adapterTensorsToWrite(adapter), {
        metadata: { format: 'pt', ...outputMarker(options.writer) },
      });
      await writeBytesAtomic(join(tmp, ADAPTER_CONFIG_FILE), adapterConfigJson(adapter.config));
    },
    { overwrite: options.overwrite },
  );
}
