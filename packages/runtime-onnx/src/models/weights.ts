import { existsSync } from 'node:fs';
import { join } from 'node:path';
import {
  type DType,
  readJsonFile,
  resolveInsideFolder,
  SafetensorsFile,
  type Tensor,
} from '@lora/core';
import { RuntimeError } from '../errors.js';

/** Where a model's tensors come from: a folder of safetensors files, or tensors in memory. */
export interface WeightSource {
  /** Shown in error messages (a folder path, or "in-memory weights"). */
  readonly description: string;
  names(): string[];
  /** dtype and shape of a tensor without reading it, or undefined when absent. */
  info(name: string): { dtype: DType; shape: readonly number[] } | undefined;
  /** Reads one tensor as stored (any dtype). */
  read(name: string): Promise<Tensor>;
  /**
   * Optional: reads `into.length` bytes of a stored tensor, from `byteOffset` on, into a buffer the
   * caller reuses. Sources backed by files offer it so large tensors stream through small buffers.
   */
  readInto?(name: string, byteOffset: number, into: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

/** Tensors already in memory (tests, benchmarks, weights generated on the fly). */
export function memoryWeights(
  tensors: ReadonlyMap<string, Tensor>,
  description = 'in-memory weights',
): WeightSource {
  return {
    description,
    names: () => [...tensors.keys()],
    info: (name) => {
      const t = tensors.get(name);
      return t && { dtype: t.dtype, shape: t.shape };
    },
    read: async (name) => {
      const t = tensors.get(name);
      if (!t)
        throw new RuntimeError('WEIGHT_MISSING', `${description}: no tensor "${name}".`, {
          tensor: name,
        });
      return t;
    },
    close: async () => {},
  };
}

/**
 * The safetensors of a Hugging Face model folder: `model.safetensors`, or the shards listed in
 * `model.safetensors.index.json`. Files are opened lazily and tensors read one at a time.
 */
export async function folderWeights(dir: string): Promise<WeightSource> {
  const single = join(dir, 'model.safetensors');
  const indexPath = join(dir, 'model.safetensors.index.json');
  const fileOf = new Map<string, string>();
  const files = new Map<string, SafetensorsFile>();
  if (existsSync(indexPath)) {
    let index: { weight_map?: Record<string, string> };
    try {
      index = (await readJsonFile(indexPath)) as typeof index;
    } catch (error) {
      throw new RuntimeError('WEIGHTS_INDEX', `${indexPath}: not valid JSON (${String(error)}).`, {
        file: indexPath,
      });
    }
    if (!index.weight_map || typeof index.weight_map !== 'object') {
      throw new RuntimeError('WEIGHTS_INDEX', `${indexPath}: no "weight_map" object.`, {
        file: indexPath,
      });
    }
    for (const [name, file] of Object.entries(index.weight_map))
      fileOf.set(name, resolveInsideFolder(dir, file, indexPath));
  } else if (!existsSync(single)) {
    throw new RuntimeError(
      'WEIGHTS_NOT_FOUND',
      `${dir}: no model.safetensors or model.safetensors.index.json; point --model at a Hugging Face model folder.`,
      { dir },
    );
  }
  for (const path of new Set(fileOf.size > 0 ? fileOf.values() : [single])) {
    if (!existsSync(path)) {
      throw new RuntimeError(
        'WEIGHTS_NOT_FOUND',
        `${dir}: shard ${path} listed in the index is missing.`,
        { file: path },
      );
    }
    files.set(path, await SafetensorsFile.open(path));
  }
  if (fileOf.size === 0)
    for (const name of files.get(single)?.names() ?? []) fileOf.set(name, single);
  const fileFor = (name: string) => {
    const path = fileOf.get(name);
    return path === undefined ? undefined : files.get(path);
  };
  return {
    description: dir,
    names: () => [...fileOf.keys()],
    info: (name) => {
      const f = fileFor(name);
      if (!f?.has(name)) return undefined;
      const e = f.entry(name);
      return { dtype: e.dtype, shape: e.shape };
    },
    read: async (name) => {
      const f = fileFor(name);
      if (!f)
        throw new RuntimeError('WEIGHT_MISSING', `${dir}: no tensor "${name}".`, {
          dir,
          tensor: name,
        });
      return f.read(name);
    },
    readInto: async (name, byteOffset, into) => {
      const f = fileFor(name);
      if (!f)
        throw new RuntimeError('WEIGHT_MISSING', `${dir}: no tensor "${name}".`, {
          dir,
          tensor: name,
        });
      await f.readInto(name, byteOffset, into);
    },
    close: async () => {
      for (const f of files.values()) await f.close();
    },
  };
}

/** Reads `config.json` of a model folder. */
export async function readConfigJson(dir: string): Promise<{ json: unknown; path: string }> {
  const path = join(dir, 'config.json');
  if (!existsSync(path)) {
    throw new RuntimeError(
      'CONFIG_NOT_FOUND',
      `${dir}: no config.json; point --model at a Hugging Face model folder.`,
      {
        dir,
      },
    );
  }
  try {
    return { json: await readJsonFile(path), path };
  } catch (error) {
    throw new RuntimeError('CONFIG_INVALID', `${path}: not valid JSON (${String(error)}).`, {
      file: path,
    });
  }
}
