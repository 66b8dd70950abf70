import { createHash } from 'node:crypto';
import {
  outputMarker,
  parseJsonText,
  RESIDUAL_SUFFIXES,
  readSafetensors,
  residualFromTensors,
  residualToTensors,
  type Tensor,
  type TensorToWrite,
  type UnmergeResidual,
  writeSafetensors,
} from '@lora/core';
import type { Adapter } from '../adapter.js';
import { AdapterError } from '../errors.js';
import { adapterConfigJson, adapterTensorsToWrite } from '../peft/save.js';

/** File name of the residual written beside a merged model folder. */
export const RESIDUAL_FILE = 'unmerge-residual.safetensors';
const FORMAT = 'lora-unmerge-residual';
const SHARD_HEADER = '__shard_header__/';
const ORIGINAL_FILE = '__file__/';
const ORIGINAL = '.unmerge_original';

/** Which adapters were merged, so unmerge can refuse different ones before doing anything. */
export interface MergedAdapterRecord {
  readonly label: string;
  readonly weight: number;
  /** sha256 of the adapter's config and tensors (see {@link adapterFingerprint}). */
  readonly sha256: string;
}

/** Everything `unmergeModel` needs besides the merged model and the adapters. */
export interface ResidualContents {
  readonly adapters: readonly MergedAdapterRecord[];
  /** Each base safetensors file: name and its original header bytes (length prefix + JSON). */
  readonly shards: readonly { fileName: string; header: Uint8Array }[];
  /** Sparse exact-unmerge records (core's format) of LoRA-merged and dtype-cast tensors. */
  readonly residuals: ReadonlyMap<string, UnmergeResidual>;
  /** Tensors kept whole: replaced modules, DoRA and lora_bias targets, 4-bit weights. */
  readonly originals: ReadonlyMap<string, Tensor>;
  /** Other files of the base folder that the merge changed (e.g. config.json of a 4-bit base). */
  readonly files: ReadonlyMap<string, Uint8Array>;
}

/** sha256 over an adapter's config JSON and its tensors (names, dtypes, shapes, bytes). */
export function adapterFingerprint(adapter: Adapter): string {
  const h = createHash('sha256');
  h.update(adapterConfigJson(adapter.config));
  for (const t of adapterTensorsToWrite(adapter)) {
    const data = t.data as ArrayBufferView;
    h.update(`${t.name}|${t.dtype}|${t.shape.join(',')}|`);
    h.update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }
  return h.digest('hex');
}

/** Writes the residual as one safetensors file (atomically). Returns its size in bytes. */
export async function writeResidualFile(
  path: string,
  c: ResidualContents,
  writer?: string,
): Promise<void> {
  const list: TensorToWrite[] = [];
  for (const s of c.shards)
    list.push({
      name: `${SHARD_HEADER}${s.fileName}`,
      dtype: 'u8',
      shape: [s.header.length],
      data: s.header,
    });
  for (const [name, bytes] of c.files)
    list.push({ name: `${ORIGINAL_FILE}${name}`, dtype: 'u8', shape: [bytes.length], data: bytes });
  for (const [name, r] of c.residuals) {
    const t = residualToTensors(r);
    list.push({ name: `${name}.${RESIDUAL_SUFFIXES.indices}`, ...t.indices });
    list.push({ name: `${name}.${RESIDUAL_SUFFIXES.bits}`, ...t.bits });
    list.push({ name: `${name}.${RESIDUAL_SUFFIXES.info}`, ...t.info });
  }
  for (const [name, t] of c.originals)
    list.push({ name: `${name}${ORIGINAL}`, dtype: t.dtype, shape: t.shape, data: t.data });
  await writeSafetensors(path, list, {
    metadata: {
      format: FORMAT,
      version: '1',
      adapters: JSON.stringify(c.adapters),
      shards: JSON.stringify(c.shards.map((s) => s.fileName)),
      ...outputMarker(writer),
    },
  });
}

/** Reads and validates a residual file written by {@link writeResidualFile}. */
export async function readResidualFile(path: string): Promise<ResidualContents> {
  const { tensors, metadata } = await readSafetensors(path);
  if (metadata.format !== FORMAT || metadata.version !== '1') {
    throw new AdapterError(
      'UNMERGE_RESIDUAL_INVALID',
      `${path}: not an unmerge residual written by lora merge (metadata format "${metadata.format}").`,
      { path },
    );
  }
  const adapters = parseJsonText(
    metadata.adapters ?? '[]',
    `${path} (metadata "adapters")`,
  ) as MergedAdapterRecord[];
  const shardNames = parseJsonText(
    metadata.shards ?? '[]',
    `${path} (metadata "shards")`,
  ) as string[];
  const shards = shardNames.map((fileName) => {
    const t = tensors.get(`${SHARD_HEADER}${fileName}`);
    if (!t)
      throw new AdapterError(
        'UNMERGE_RESIDUAL_INVALID',
        `${path}: the header of ${fileName} is missing.`,
        { path },
      );
    return { fileName, header: t.data as Uint8Array };
  });
  const residuals = new Map<string, UnmergeResidual>();
  const originals = new Map<string, Tensor>();
  const files = new Map<string, Uint8Array>();
  const infoSuffix = `.${RESIDUAL_SUFFIXES.info}`;
  for (const [key, t] of tensors) {
    if (key.startsWith(ORIGINAL_FILE))
      files.set(key.slice(ORIGINAL_FILE.length), t.data as Uint8Array);
    else if (key.endsWith(ORIGINAL)) originals.set(key.slice(0, -ORIGINAL.length), t);
    else if (key.endsWith(infoSuffix)) {
      const name = key.slice(0, -infoSuffix.length);
      const indices = tensors.get(`${name}.${RESIDUAL_SUFFIXES.indices}`);
      const bits = tensors.get(`${name}.${RESIDUAL_SUFFIXES.bits}`);
      if (!indices || !bits)
        throw new AdapterError(
          'UNMERGE_RESIDUAL_INVALID',
          `${path}: the residual of ${name} is incomplete.`,
          { path, tensor: name },
        );
      residuals.set(name, residualFromTensors({ indices, bits, info: t }, `${path} (${name})`));
    }
  }
  return { adapters, shards, residuals, originals, files };
}

/** Stored size of a tensor list's data, for reports. */
export function residualDataBytes(c: ResidualContents): number {
  let n = 0;
  for (const s of c.shards) n += s.header.length;
  for (const f of c.files.values()) n += f.length;
  for (const r of c.residuals.values()) n += r.indices.byteLength + r.bits.byteLength;
  for (const t of c.originals.values()) n += t.data.byteLength;
  return n;
}
