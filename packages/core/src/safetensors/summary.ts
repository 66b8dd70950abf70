import { stat } from 'node:fs/promises';
import type { DType } from '../dtype.js';
import { numel } from '../tensor.js';
import { SafetensorsFile } from './reader.js';

export interface TensorSummary {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly params: number;
  readonly bytes: number;
}

export interface SafetensorsSummary {
  readonly path: string;
  readonly fileBytes: number;
  readonly headerBytes: number;
  readonly metadata: Readonly<Record<string, string>>;
  readonly tensors: readonly TensorSummary[];
  /** Elements over all tensors. */
  readonly params: number;
  /** Tensor data bytes by dtype. */
  readonly bytesByDType: Readonly<Partial<Record<DType, number>>>;
}

/** Names, dtypes, shapes, element and byte counts of a safetensors file, from its header only. */
export async function summarizeSafetensors(path: string): Promise<SafetensorsSummary> {
  const f = await SafetensorsFile.open(path);
  await f.close();
  const { size } = await stat(path);
  const tensors = f.header.entries.map((e) => ({
    name: e.name,
    dtype: e.dtype,
    shape: e.shape,
    params: numel(e.shape),
    bytes: e.byteLength,
  }));
  const bytesByDType: Partial<Record<DType, number>> = {};
  for (const t of tensors) bytesByDType[t.dtype] = (bytesByDType[t.dtype] ?? 0) + t.bytes;
  return {
    path,
    fileBytes: size,
    headerBytes: f.header.headerByteLength,
    metadata: f.metadata,
    tensors,
    params: tensors.reduce((a, t) => a + t.params, 0),
    bytesByDType,
  };
}
