import { type AnyTypedArray, DTYPES, type DType, dtypeToSafetensors } from '../dtype.js';
import { CoreError } from '../errors.js';
import { writeAll, writeFileAtomic } from '../io/atomic-write.js';
import { numel, type Tensor, tensorBytes } from '../tensor.js';

/**
 * A tensor's data: the whole array, or its consecutive pieces (row-major order) as an async
 * iterable. Each piece is written before the next one is asked for, so a producer may hand the
 * same reused buffer every time.
 */
export type TensorData = AnyTypedArray | AsyncIterable<AnyTypedArray>;

/**
 * A tensor to write. `data` may be a function so that tensors are produced one at a time while
 * the file is written (streaming: only one tensor's data needs to be in memory), and it may
 * produce the tensor in pieces (then only one piece needs to be).
 */
export interface TensorToWrite {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly data: AnyTypedArray | (() => TensorData | Promise<TensorData>);
}

export interface WriteSafetensorsOptions {
  /** String-to-string metadata stored as `__metadata__` (PEFT writes `{"format": "pt"}`). */
  metadata?: Record<string, string>;
}

/** Builds the header bytes (length prefix + JSON padded with spaces to a multiple of 8). */
export function encodeHeader(
  specs: readonly { name: string; dtype: DType; shape: readonly number[] }[],
  metadata?: Record<string, string>,
): { prefix: Uint8Array; dataSize: number } {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  const seen = new Set<string>();
  for (const s of specs) {
    if (s.name === '__metadata__' || seen.has(s.name)) {
      throw new CoreError(
        'SAFETENSORS_DUPLICATE',
        `Cannot write tensor "${s.name}": the name is reserved or used twice.`,
        {
          tensor: s.name,
        },
      );
    }
    seen.add(s.name);
    const bytes = numel(s.shape) * DTYPES[s.dtype].itemSize;
    header[s.name] = {
      dtype: dtypeToSafetensors(s.dtype),
      shape: [...s.shape],
      data_offsets: [offset, offset + bytes],
    };
    offset += bytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const prefix = new Uint8Array(8 + padded).fill(0x20);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(padded), true);
  prefix.set(json, 8);
  return { prefix, dataSize: offset };
}

/**
 * Writes a safetensors file atomically (temporary file, fsync, rename), tensors in the order
 * given, streaming each tensor's bytes. Data must match its declared dtype and shape; a
 * mismatch aborts with nothing written.
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorToWrite[] | ReadonlyMap<string, Tensor>,
  options: WriteSafetensorsOptions = {},
): Promise<void> {
  const list: TensorToWrite[] =
    tensors instanceof Map
      ? [...tensors].map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape, data: t.data }))
      : [...(tensors as readonly TensorToWrite[])];
  const { prefix } = encodeHeader(list, options.metadata);
  await writeFileAtomic(path, async (h) => {
    await writeAll(h, prefix);
    for (const t of list) {
      const data = typeof t.data === 'function' ? await t.data() : t.data;
      const expected = numel(t.shape);
      const mismatch = (got: string) =>
        new CoreError(
          'SHAPE_MISMATCH',
          `${path}: tensor "${t.name}" was declared ${t.dtype} [${t.shape.join(', ')}] (${expected} elements) but its data is ${got}. Nothing was written.`,
          { file: path, tensor: t.name },
        );
      const ctor = DTYPES[t.dtype].create(0).constructor;
      if (!(Symbol.asyncIterator in data)) {
        if (data.length !== expected || data.constructor !== ctor)
          throw mismatch(`a ${data.constructor.name} of ${data.length}`);
        await writeAll(h, tensorBytes({ data }));
        continue;
      }
      let done = 0;
      for await (const piece of data) {
        if (piece.constructor !== ctor || done + piece.length > expected)
          throw mismatch(
            `pieces of ${done} + ${piece.length} elements (${piece.constructor.name})`,
          );
        await writeAll(h, tensorBytes({ data: piece }));
        done += piece.length;
      }
      if (done !== expected) throw mismatch(`pieces of ${done} elements in all`);
    }
  });
}
