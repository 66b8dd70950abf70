import { readdir, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { readJsonFile, type SafetensorsEntry, SafetensorsFile } from '@lora/core';
import { AdapterError } from '../errors.js';

/** One safetensors file of a model, opened lazily (header only). */
export interface ModelShard {
  /** File name inside the model folder (or the file's own name for a single file). */
  readonly fileName: string;
  readonly file: SafetensorsFile;
}

/**
 * A model on disk: a single `.safetensors` file, or a Hugging Face folder (`model.safetensors`,
 * or shards listed by `model.safetensors.index.json`, or any `*.safetensors`). Only headers are
 * read when opening; tensors are read one at a time on request.
 */
export class ModelFiles {
  private constructor(
    readonly path: string,
    readonly isFolder: boolean,
    readonly shards: readonly ModelShard[],
    /** Other files of the folder (config.json, tokenizer, index...), copied unchanged by merge. */
    readonly otherFiles: readonly string[],
    private readonly byName: ReadonlyMap<string, ModelShard>,
  ) {}

  static async open(path: string): Promise<ModelFiles> {
    const s = await stat(path).catch(() => undefined);
    if (!s)
      throw new AdapterError('MODEL_NOT_FOUND', `${path}: no such model file or folder.`, { path });
    let fileNames: string[];
    let otherFiles: string[] = [];
    let dir: string;
    if (s.isFile()) {
      if (!path.endsWith('.safetensors')) {
        throw new AdapterError(
          'MODEL_FORMAT_UNSUPPORTED',
          `${path}: a model must be a .safetensors file or a folder holding them.`,
          { path },
        );
      }
      dir = '';
      fileNames = [path];
    } else {
      dir = path;
      const entries = await readdir(path, { withFileTypes: true });
      const all = entries.filter((e) => e.isFile()).map((e) => e.name);
      fileNames = await shardNames(path, all);
      otherFiles = all.filter(
        (n) => !fileNames.includes(n) && !n.startsWith('.') && n !== 'unmerge-residual.safetensors',
      );
    }
    const shards: ModelShard[] = [];
    const byName = new Map<string, ModelShard>();
    try {
      for (const f of fileNames) {
        const shard = {
          fileName: dir ? f : basename(f),
          file: await SafetensorsFile.open(dir ? join(dir, f) : f),
        };
        shards.push(shard);
        for (const n of shard.file.names()) {
          if (byName.has(n)) {
            throw new AdapterError(
              'MODEL_TENSOR_DUPLICATE',
              `${path}: tensor "${n}" is in two files (${byName.get(n)!.fileName} and ${shard.fileName}).`,
              {
                path,
                tensor: n,
              },
            );
          }
          byName.set(n, shard);
        }
      }
    } catch (e) {
      for (const sh of shards) await sh.file.close();
      throw e;
    }
    return new ModelFiles(path, s.isDirectory(), shards, otherFiles, byName);
  }

  /** Every tensor name, shard by shard in file order. */
  names(): string[] {
    return this.shards.flatMap((s) => s.file.names());
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  entry(name: string): SafetensorsEntry {
    return this.shardOf(name).file.entry(name);
  }

  shardOf(name: string): ModelShard {
    const s = this.byName.get(name);
    if (!s)
      throw new AdapterError('MODEL_TENSOR_MISSING', `${this.path}: no tensor "${name}".`, {
        path: this.path,
        tensor: name,
      });
    return s;
  }

  async read(name: string) {
    return this.shardOf(name).file.read(name);
  }

  /** Reads `into.length` bytes of a tensor from `byteOffset` into a reused buffer (core's `readInto`). */
  async readInto(name: string, byteOffset: number, into: Uint8Array): Promise<void> {
    return this.shardOf(name).file.readInto(name, byteOffset, into);
  }

  async close(): Promise<void> {
    for (const s of this.shards) await s.file.close();
  }
}

async function shardNames(dir: string, files: string[]): Promise<string[]> {
  const indexName = 'model.safetensors.index.json';
  if (files.includes(indexName)) {
    let index: { weight_map?: Record<string, string> };
    try {
      index = (await readJsonFile(join(dir, indexName))) as typeof index;
    } catch (e) {
      throw new AdapterError(
        'MODEL_INDEX_INVALID',
        `${join(dir, indexName)}: not valid JSON (${(e as Error).message}).`,
        { path: dir },
        { cause: e },
      );
    }
    const shards = [...new Set(Object.values(index.weight_map ?? {}))].sort();
    const missing = shards.filter((s) => !files.includes(s));
    if (missing.length > 0 || shards.length === 0) {
      throw new AdapterError(
        'MODEL_INDEX_INVALID',
        `${join(dir, indexName)}: lists shard(s) ${missing.join(', ') || '(none)'} that are not in the folder.`,
        { path: dir },
      );
    }
    return shards;
  }
  if (files.includes('model.safetensors')) return ['model.safetensors'];
  const any = files
    .filter(
      (f) =>
        f.endsWith('.safetensors') &&
        !f.startsWith('.') &&
        f !== 'unmerge-residual.safetensors' &&
        f !== 'adapter_model.safetensors',
    )
    .sort();
  if (any.length === 0) {
    throw new AdapterError(
      'MODEL_WEIGHTS_MISSING',
      `${dir}: no model.safetensors (or other .safetensors file) in the folder.`,
      { path: dir },
    );
  }
  return any;
}
