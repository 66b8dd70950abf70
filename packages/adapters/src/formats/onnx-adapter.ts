import { readFile } from 'node:fs/promises';
import {
  DTYPES,
  dtypeFromOnnx,
  dtypeToOnnx,
  type DType,
  type Tensor,
  numel,
  tensor,
  tensorBytes,
  writeBytesAtomic,
} from '@lora/core';
import { Builder, ByteBuffer } from 'flatbuffers';
import { AdapterError } from '../errors.js';

/**
 * The `.onnx_adapter` container of onnxruntime (and onnxruntime-genai): a FlatBuffers buffer
 * with file identifier `TORT` at bytes 4..8, whose root table is
 *
 *   table Adapter   { format_version:int; adapter_version:int; model_version:int; parameters:[Parameter]; }
 *   table Parameter { name:string; dims:[int64]; data_type:TensorDataType(int32); raw_data:[uint8] (force_align: 8); }
 *
 * Each parameter is a named tensor whose name is the graph input it overrides. Field ids are
 * the declaration order above. `TensorDataType` uses ONNX's TensorProto numbering.
 * This file encodes and decodes the container; `onnx-adapter-peft.ts` maps LoRA adapters onto it.
 */

/** Four bytes at offset 4 of every `.onnx_adapter` file. */
export const ONNX_ADAPTER_IDENTIFIER = 'TORT';

/** The only container version onnxruntime reads so far. */
export const ONNX_ADAPTER_FORMAT_VERSION = 1;

/** Field slots (vtable indices) of the two tables. */
const ADAPTER_FIELDS = {
  formatVersion: 0,
  adapterVersion: 1,
  modelVersion: 2,
  parameters: 3,
} as const;
const PARAMETER_FIELDS = { name: 0, dims: 1, dataType: 2, rawData: 3 } as const;

/** The decoded content of an `.onnx_adapter` file. */
export interface OnnxAdapterFile {
  readonly formatVersion: number;
  /** Version of this adapter, free for the producer to set. */
  readonly adapterVersion: number;
  /** Version of the model the adapter was made for (the ONNX `model_version`). */
  readonly modelVersion: number;
  /** Parameters by name, in file order. */
  readonly parameters: ReadonlyMap<string, Tensor>;
}

/** Encodes parameters as an `.onnx_adapter` buffer (format version 1). */
export function encodeOnnxAdapter(
  parameters: ReadonlyMap<string, Tensor> | Iterable<readonly [string, Tensor]>,
  options: { adapterVersion?: number; modelVersion?: number } = {},
): Uint8Array {
  const entries = [...(parameters instanceof Map ? parameters.entries() : parameters)] as [
    string,
    Tensor,
  ][];
  const adapterVersion = checkInt32(options.adapterVersion ?? 1, 'adapterVersion');
  const modelVersion = checkInt32(options.modelVersion ?? 0, 'modelVersion');
  const seen = new Set<string>();
  let payload = 0;
  for (const [name, t] of entries) {
    if (name.length === 0 || seen.has(name)) {
      throw new AdapterError(
        'ONNX_ADAPTER_BAD_PARAMETER',
        name.length === 0
          ? 'A parameter of an .onnx_adapter needs a non-empty name.'
          : `Parameter "${name}" appears twice.`,
        { parameter: name },
      );
    }
    seen.add(name);
    if (t.data.length !== numel(t.shape)) {
      throw new AdapterError(
        'ONNX_ADAPTER_BAD_PARAMETER',
        `Parameter "${name}": shape [${t.shape.join(', ')}] does not match its ${t.data.length} elements.`,
        { parameter: name },
      );
    }
    payload += t.data.byteLength + 8 * t.shape.length + name.length * 3 + 64;
  }

  // FlatBuffers are built back to front: children (strings, vectors, tables) before parents.
  const builder = new Builder(payload + 256);
  const parameterOffsets: number[] = [];
  for (const [name, t] of entries) {
    const nameOffset = builder.createString(name);
    builder.startVector(8, t.shape.length, 8);
    for (let i = t.shape.length - 1; i >= 0; i--) builder.addInt64(BigInt(t.shape[i]));
    const dimsOffset = builder.endVector();
    const rawOffset = alignedByteVector(builder, littleEndianBytes(t), 8);
    builder.startObject(4);
    builder.addFieldOffset(PARAMETER_FIELDS.name, nameOffset, 0);
    builder.addFieldOffset(PARAMETER_FIELDS.dims, dimsOffset, 0);
    builder.addFieldInt32(PARAMETER_FIELDS.dataType, dtypeToOnnx(t.dtype), 0);
    builder.addFieldOffset(PARAMETER_FIELDS.rawData, rawOffset, 0);
    parameterOffsets.push(builder.endObject());
  }
  builder.startVector(4, parameterOffsets.length, 4);
  for (let i = parameterOffsets.length - 1; i >= 0; i--) builder.addOffset(parameterOffsets[i]);
  const parametersOffset = builder.endVector();
  builder.startObject(4);
  builder.addFieldInt32(ADAPTER_FIELDS.formatVersion, ONNX_ADAPTER_FORMAT_VERSION, 0);
  builder.addFieldInt32(ADAPTER_FIELDS.adapterVersion, adapterVersion, 0);
  builder.addFieldInt32(ADAPTER_FIELDS.modelVersion, modelVersion, 0);
  builder.addFieldOffset(ADAPTER_FIELDS.parameters, parametersOffset, 0);
  builder.finish(builder.endObject(), ONNX_ADAPTER_IDENTIFIER);
  return builder.asUint8Array();
}

/**
 * Decodes an `.onnx_adapter` buffer. Every offset is bounds-checked before it is followed, so a
 * truncated or foreign file gives an `ONNX_ADAPTER_INVALID` error naming what is wrong, never a
 * crash or garbage. Tensor data is copied out (the result does not alias `bytes`).
 */
export function decodeOnnxAdapter(bytes: Uint8Array, source = 'buffer'): OnnxAdapterFile {
  const r = new CheckedReader(bytes, source);
  if (bytes.length < 8 || r.identifier() !== ONNX_ADAPTER_IDENTIFIER) {
    throw new AdapterError(
      'ONNX_ADAPTER_INVALID',
      `${source}: not an .onnx_adapter file (bytes 4..8 must be "${ONNX_ADAPTER_IDENTIFIER}").`,
      { file: source },
    );
  }
  const root = r.table(r.u32(0), 'Adapter');
  const formatVersion = r.int32Field(root, ADAPTER_FIELDS.formatVersion);
  if (formatVersion !== ONNX_ADAPTER_FORMAT_VERSION) {
    throw new AdapterError(
      'ONNX_ADAPTER_VERSION',
      `${source}: .onnx_adapter format version ${formatVersion} is not supported (only ${ONNX_ADAPTER_FORMAT_VERSION}).`,
      { file: source, formatVersion },
    );
  }
  const parameters = new Map<string, Tensor>();
  const list = r.vectorField(root, ADAPTER_FIELDS.parameters, 4, 'Adapter.parameters');
  for (let i = 0; i < list.length; i++) {
    const where = `parameter #${i}`;
    const p = r.table(r.indirect(list.start + 4 * i, where), where);
    const name = r.stringField(p, PARAMETER_FIELDS.name, `${where}.name`);
    const dimsVector = r.vectorField(p, PARAMETER_FIELDS.dims, 8, `"${name}".dims`);
    const shape: number[] = [];
    for (let d = 0; d < dimsVector.length; d++) {
      const dim = r.int64(dimsVector.start + 8 * d);
      if (dim < 0n || dim > BigInt(Number.MAX_SAFE_INTEGER))
        r.fail(`"${name}" has an invalid dimension ${dim}`);
      shape.push(Number(dim));
    }
    const code = r.int32Field(p, PARAMETER_FIELDS.dataType);
    const dtype = dtypeFromOnnx(code);
    if (dtype === undefined) {
      throw new AdapterError(
        'ONNX_ADAPTER_UNSUPPORTED_TYPE',
        `${source}: parameter "${name}" has data type ${code}, which this reader does not support (supported: the ONNX numbers of ${Object.keys(DTYPES).join(', ')}).`,
        { file: source, parameter: name, dataType: code },
      );
    }
    const raw = r.vectorField(p, PARAMETER_FIELDS.rawData, 1, `"${name}".raw_data`);
    const expectedBytes = numel(shape) * DTYPES[dtype].itemSize;
    if (raw.length !== expectedBytes) {
      r.fail(
        `"${name}" has ${raw.length} data bytes; shape [${shape.join(', ')}] of ${dtype} needs ${expectedBytes}`,
      );
    }
    if (parameters.has(name)) r.fail(`parameter "${name}" appears twice`);
    parameters.set(
      name,
      fromLittleEndian(dtype, shape, bytes.subarray(raw.start, raw.start + raw.length)),
    );
  }
  return {
    formatVersion,
    adapterVersion: r.int32Field(root, ADAPTER_FIELDS.adapterVersion),
    modelVersion: r.int32Field(root, ADAPTER_FIELDS.modelVersion),
    parameters,
  };
}

/** Reads an `.onnx_adapter` file. */
export async function readOnnxAdapter(path: string): Promise<OnnxAdapterFile> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (e) {
    throw new AdapterError(
      'ONNX_ADAPTER_READ_FAILED',
      `${path}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}).`,
      { file: path },
      { cause: e },
    );
  }
  return decodeOnnxAdapter(bytes, path);
}

/** Writes an `.onnx_adapter` file atomically (the old file, if any, stays until the new one is complete). */
export async function writeOnnxAdapter(
  path: string,
  parameters: ReadonlyMap<string, Tensor> | Iterable<readonly [string, Tensor]>,
  options: { adapterVersion?: number; modelVersion?: number } = {},
): Promise<void> {
  await writeBytesAtomic(path, encodeOnnxAdapter(parameters, options));
}

/**
 * A byte vector whose first element is aligned to `alignment` bytes in the final buffer (the
 * schema's `force_align: 8` on raw_data, so readers can view it as a typed array in place).
 */
function alignedByteVector(builder: Builder, data: Uint8Array, alignment: number): number {
  builder.startVector(1, data.length, alignment);
  // Reserve the bytes with the public API, then copy them in one go.
  builder.pad(data.length);
  const buffer = builder.dataBuffer();
  buffer.bytes().set(data, buffer.capacity() - builder.offset());
  return builder.endVector();
}

/** The tensor's elements as little-endian bytes (a view when the platform is little-endian). */
function littleEndianBytes(t: Tensor): Uint8Array {
  if (t.dtype === 'bool') {
    const out = new Uint8Array(t.data.length);
    for (let i = 0; i < out.length; i++) out[i] = t.data[i] ? 1 : 0;
    return out;
  }
  if (IS_LITTLE_ENDIAN || DTYPES[t.dtype].itemSize === 1) return tensorBytes(t);
  throw new AdapterError(
    'ONNX_ADAPTER_BIG_ENDIAN',
    'Writing .onnx_adapter files on a big-endian platform is not supported.',
  );
}

function fromLittleEndian(dtype: DType, shape: number[], bytes: Uint8Array): Tensor {
  if (!IS_LITTLE_ENDIAN && DTYPES[dtype].itemSize > 1) {
    throw new AdapterError(
      'ONNX_ADAPTER_BIG_ENDIAN',
      'Reading .onnx_adapter files on a big-endian platform is not supported.',
    );
  }
  // A fresh, aligned copy owned by the tensor (not bytes.slice(): on a Node Buffer that is a view).
  const copy = new Uint8Array(bytes);
  const data = DTYPES[dtype].view(copy.buffer, 0, numel(shape));
  return tensor(dtype, shape, data as never);
}

const IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function checkInt32(value: number, what: string): number {
  if (!Number.isInteger(value) || value < -(2 ** 31) || value >= 2 ** 31) {
    throw new AdapterError(
      'ONNX_ADAPTER_BAD_PARAMETER',
      `${what} must be a 32-bit integer, got ${value}.`,
      { [what]: value },
    );
  }
  return value;
}

/**
 * Reads FlatBuffers tables, vectors and strings with a bounds check on every access.
 * Positions are absolute byte offsets into the buffer.
 */
class CheckedReader {
  readonly #bb: ByteBuffer;
  readonly #size: number;

  constructor(
    bytes: Uint8Array,
    readonly source: string,
  ) {
    this.#bb = new ByteBuffer(bytes);
    this.#size = bytes.length;
  }

  fail(what: string): never {
    throw new AdapterError(
      'ONNX_ADAPTER_INVALID',
      `${this.source}: corrupt .onnx_adapter file: ${what}.`,
      {
        file: this.source,
      },
    );
  }

  identifier(): string {
    return this.#bb.getBufferIdentifier();
  }

  #need(pos: number, length: number, what: string): void {
    if (!(pos >= 0 && length >= 0 && pos + length <= this.#size))
      this.fail(`${what} lies outside the file`);
  }

  u32(pos: number): number {
    this.#need(pos, 4, 'an offset');
    return this.#bb.readUint32(pos);
  }

  int64(pos: number): bigint {
    this.#need(pos, 8, 'a dimension');
    return this.#bb.readInt64(pos);
  }

  /** Follows a uoffset stored at `pos`. */
  indirect(pos: number, what: string): number {
    const target = pos + this.u32(pos);
    this.#need(target, 4, what);
    return target;
  }

  /** Checks a table at `pos` and returns its position and vtable. */
  table(pos: number, what: string): { pos: number; vtable: number; vtableSize: number } {
    this.#need(pos, 4, what);
    const vtable = pos - this.#bb.readInt32(pos);
    this.#need(vtable, 4, `${what} vtable`);
    const vtableSize = this.#bb.readUint16(vtable);
    if (vtableSize < 4 || vtableSize % 2 !== 0) this.fail(`${what} has a bad vtable`);
    this.#need(vtable, vtableSize, `${what} vtable`);
    const tableSize = this.#bb.readUint16(vtable + 2);
    this.#need(pos, tableSize, what);
    return { pos, vtable, vtableSize };
  }

  /** Absolute position of a field, or 0 when the field is absent (its default applies). */
  #field(t: { pos: number; vtable: number; vtableSize: number }, slot: number): number {
    const entry = 4 + 2 * slot;
    if (entry >= t.vtableSize) return 0;
    const offset = this.#bb.readUint16(t.vtable + entry);
    return offset === 0 ? 0 : t.pos + offset;
  }

  int32Field(t: { pos: number; vtable: number; vtableSize: number }, slot: number): number {
    const pos = this.#field(t, slot);
    if (pos === 0) return 0;
    this.#need(pos, 4, 'an int field');
    return this.#bb.readInt32(pos);
  }

  /** A vector field: its first element's position and its length (an absent vector is empty). */
  vectorField(
    t: { pos: number; vtable: number; vtableSize: number },
    slot: number,
    elementSize: number,
    what: string,
  ): { start: number; length: number } {
    const pos = this.#field(t, slot);
    if (pos === 0) return { start: 0, length: 0 };
    const vector = this.indirect(pos, what);
    const length = this.#bb.readUint32(vector);
    this.#need(vector + 4, length * elementSize, what);
    return { start: vector + 4, length };
  }

  stringField(
    t: { pos: number; vtable: number; vtableSize: number },
    slot: number,
    what: string,
  ): string {
    const { start, length } = this.vectorField(t, slot, 1, what);
    return new TextDecoder('utf-8', { fatal: false }).decode(
      this.#bb.bytes().subarray(start, start + length),
    );
  }
}
