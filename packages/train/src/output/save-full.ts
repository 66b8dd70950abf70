import { copyFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import {
  castFloat,
  type FloatDType,
  outputMarker,
  type Tensor,
  writeFolderAtomic,
  writeSafetensors,
} from '@lora/core';
import type { WeightSource } from '@lora/runtime-onnx';
import type { Parameter } from '../optim/parameters.js';

/**
 * Writes a fully fine-tuned model as a folder in the base's layout: `model.safetensors` with the
 * base's tensor names, each in the dtype the base stored it in (float32 values rounded once), and
 * every other file of the base folder (config.json, tokenizer files, generation_config.json)
 * copied unchanged; so transformers loads it like the base. Atomic: the folder appears whole or
 * not at all.
 */
export async function saveFullModel(
  dir: string,
  baseDir: string,
  base: WeightSource,
  parameters: readonly Parameter[],
  options: {
    overwrite?: boolean;
    /** The command writing the model, recorded in its metadata (`lora.writer`). */
    writer?: string;
  } = {},
): Promise<void> {
  const entries = await readdir(baseDir, { withFileTypes: true });
  const others = entries
    .filter(
      (e) =>
        e.isFile() && !e.name.startsWith('.') && !/\.safetensors(\.index\.json)?$/.test(e.name),
    )
    .map((e) => e.name);
  const tensors = new Map<string, Tensor>();
  for (const p of parameters) {
    const stored = (base.info(p.name)?.dtype ?? 'f32') as FloatDType;
    const t: Tensor<'f32'> = { dtype: 'f32', shape: p.shape, data: p.data };
    tensors.set(p.name, stored === 'f32' ? t : castFloat(t, stored));
  }
  await writeFolderAtomic(
    dir,
    async (tmp) => {
      await writeSafetensors(join(tmp, 'model.safetensors'), tensors, {
        metadata: { format: 'pt', ...outputMarker(options.writer) },
      });
      for (const name of others) await copyFile(join(baseDir, name), join(tmp, name));
    },
    { overwrite: options.overwrite },
  );
}
