import type { BigIntStats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { basename } from 'node:path';
import { DTYPES, type DType } from '../dtype.js';
import { CoreError } from '../errors.js';
import { openRegularFile } from '../io/file-kind.js';
import type { Tensor } from '../tensor.js';
import {
  parseHeader,
  parseHeaderLength,
  type SafetensorsEntry,
  type SafetensorsHeader,
} from './header.js';

/**
 * A safetensors file opened lazily: `open` reads and validates only the header (milliseconds,
 * whatever the file size); each tensor is read on request, straight into its own buffer.
 */
export class SafetensorsFile {
  private constructor(
    /** Path as given to `open`. */
    readonly path: string,
    readonly fileSize: number,
    readonly header: SafetensorsHeader,
    private handle: FileHandle | undefined,
    /** Identity of the file when opened: every read checks it still holds. */
    private readonly opened: BigIntStats,
  ) {}

  /**
   * Opens and validates a file. Throws `CoreError` (codes `SAFETENSORS_*`) on anything wrong,
   * `FILE_NOT_REGULAR` for a FIFO or device (never blocks on one).
   */
  static async open(path: string): Promise<SafetensorsFile> {
    const handle = await openRegularFile(path);
    try {
      const opened = await handle.stat({ bigint: true });
      const size = Number(opened.size);
      const prefix = new Uint8Array(8);
      await readExactly(handle, prefix, 0, Math.min(8, size));
      const headerLength = parseHeaderLength(prefix, size, path);
      const headerBytes = new Uint8Array(headerLength);
      await readExactly(handle, headerBytes, 8, headerLength);
      const header = parseHeader(headerBytes, size, path);
      return new SafetensorsFile(path, size, header, handle, opened);
    } catch (e) {
      await handle.close();
      throw e;
    }
  }

  get metadata(): Readonly<Record<string, string>> {
    return this.header.metadata;
  }

  /** Tensor names in file order. */
  names(): string[] {
    return this.header.entries.map((e) => e.name);
  }

  has(name: string): boolean {
    return this.header.byName.has(name);
  }

  /** Header entry of a tensor (dtype, shape, offsets); throws TENSOR_NOT_FOUND. */
  entry(name: string): SafetensorsEntry {
    const e = this.header.byName.get(name);
    if (!e) {
      throw new CoreError(
        'TENSOR_NOT_FOUND',
        `${this.path}: no tensor named "${name}" (the file has ${this.header.entries.length}).`,
        {
          file: this.path,
          tensor: name,
        },
      );
    }
    return e;
  }

  /**
   * Reads one tensor's raw bytes into a fresh, aligned buffer. A single `Uint8Array` holds at
   * most 4 GiB; larger tensors are read with {@link read}, whose typed view can be longer.
   */
  async readBytes(name: string): Promise<Uint8Array> {
    const e = this.entry(name);
    if (e.byteLength > MAX_BYTE_VIEW) {
      throw new CoreError(
        'TENSOR_TOO_LARGE_FOR_BYTES',
        `${this.path}: tensor "${name}" has ${e.byteLength} bytes, more than one Uint8Array can hold (${MAX_BYTE_VIEW}); read it with read(), which returns a typed view of its dtype.`,
        { file: this.path, tensor: name, byteLength: e.byteLength },
      );
    }
    return new Uint8Array(await this.readBuffer(e));
  }

  /** Reads one tensor. Data is little-endian on disk, as on every platform Node.js runs on. */
  async read<D extends DType = DType>(name: string): Promise<Tensor<D>> {
    const e = this.entry(name);
    const length = e.byteLength / DTYPES[e.dtype].itemSize;
    if (length > MAX_BYTE_VIEW) {
      throw new CoreError(
        'TENSOR_TOO_LARGE',
        `${this.path}: tensor "${name}" has ${length} elements; a JavaScript typed array holds at most ${MAX_BYTE_VIEW}.`,
        { file: this.path, tensor: name, elements: length },
      );
    }
    const data = DTYPES[e.dtype].view(await this.readBuffer(e), 0, length);
    return { dtype: e.dtype, shape: [...e.shape], data } as unknown as Tensor<D>;
  }

  /**
   * Reads `into.length` bytes of one tensor, starting `byteOffset` bytes into its data, into a
   * buffer the caller owns and reuses: no allocation per call. Streaming a large tensor through
   * one small buffer this way avoids touching fresh memory (a page fault per 4 KiB), which is
   * what dominates reading into new buffers. Checks the file was not modified meanwhile.
   */
  async readInto(name: string, byteOffset: number, into: Uint8Array): Promise<void> {
    const e = this.entry(name);
    if (
      !Number.isSafeInteger(byteOffset) ||
      byteOffset < 0 ||
      byteOffset + into.length > e.byteLength
    ) {
      throw new CoreError(
        'RANGE_INVALID',
        `${this.path}: bytes ${byteOffset}..${byteOffset + into.length} are outside tensor "${name}" (${e.byteLength} bytes).`,
        { file: this.path, tensor: name, byteOffset, length: into.length },
      );
    }
    const start = this.header.dataStart + e.dataOffsets[0] + byteOffset;
    for (let at = 0; at < into.length; at += READ_PIECE) {
      const n = Math.min(READ_PIECE, into.length - at);
      await readExactly(this.fileHandle(), into.subarray(at, at + n), start + at, n);
    }
    await this.assertUnchanged();
  }

  /**
   * Reads a tensor's bytes into a fresh ArrayBuffer, in pieces of at most {@link READ_PIECE}
   * bytes (one read call and one Uint8Array are limited to 2 and 4 GiB; a tensor can be more),
   * then checks the file was not modified meanwhile.
   */
  private async readBuffer(e: SafetensorsEntry): Promise<ArrayBuffer> {
    const buffer = new ArrayBuffer(e.byteLength);
    const start = this.header.dataStart + e.dataOffsets[0];
    for (let at = 0; at < e.byteLength; at += READ_PIECE) {
      const n = Math.min(READ_PIECE, e.byteLength - at);
      await readExactly(this.fileHandle(), new Uint8Array(buffer, at, n), start + at, n);
    }
    await this.assertUnchanged();
    return buffer;
  }

  /**
   * Refuses to go on when the file was modified since it was opened (size, modification time or
   * identity differ): data read before and after the change would be mixed silently.
   */
  async assertUnchanged(): Promise<void> {
    const now = await this.fileHandle().stat({ bigint: true });
    const was = this.opened;
    if (now.size !== was.size || now.mtimeNs !== was.mtimeNs || now.ino !== was.ino) {
      throw new CoreError(
        'FILE_CHANGED',
        `${this.path} was modified while it was being read (size ${was.size} -> ${now.size} bytes); the result would mix old and new data, so nothing was written. Run again once nothing else writes the file.`,
        { file: this.path },
      );
    }
  }

  /** Reads every tensor, in file order. */
  async readAll(): Promise<Map<string, Tensor>> {
    const out = new Map<string, Tensor>();
    for (const e of this.header.entries) out.set(e.name, await this.read(e.name));
    return out;
  }

  async close(): Promise<void> {
    const h = this.handle;
    this.handle = undefined;
    await h?.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  private fileHandle(): FileHandle {
    if (!this.handle) {
      throw new CoreError('FILE_CLOSED', `${basename(this.path)}: the file was closed.`, {
        file: this.path,
      });
    }
    return this.handle;
  }
}

/** Largest Uint8Array (and typed array length) V8 allows: 2^32. */
const MAX_BYTE_VIEW = 2 ** 32;
/** Bytes per read call: below the 2 GiB limit of one read, large enough to be fast. */
const READ_PIECE = 1 << 30;

async function readExactly(
  handle: FileHandle,
  into: Uint8Array,
  position: number,
  length: number,
): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(into, done, length - done, position + done);
    if (bytesRead === 0) {
      throw new CoreError(
        'SAFETENSORS_TRUNCATED',
        `unexpected end of file at byte ${position + done}: the file changed or is truncated.`,
        {
          position: position + done,
        },
      );
    }
    done += bytesRead;
  }
}

/** Opens a file, reads the header only, and closes it. */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  const f = await SafetensorsFile.open(path);
  await f.close();
  return f.header;
}

/** Reads a whole safetensors file into memory. Prefer `SafetensorsFile` for large files. */
export async function readSafetensors(
  path: string,
): Promise<{ tensors: Map<string, Tensor>; metadata: Record<string, string> }> {
  const f = await SafetensorsFile.open(path);
  try {
    return { tensors: await f.readAll(), metadata: { ...f.metadata } };
  } finally {
    await f.close();
  }
}

/** Parses a safetensors file held in memory (validated exactly as files are). */
export function parseSafetensorsBuffer(
  bytes: Uint8Array,
  name = '<buffer>',
): { tensors: Map<string, Tensor>; metadata: Record<string, string> } {
  const headerLength = parseHeaderLength(bytes.subarray(0, 8), bytes.length, name);
  const header = parseHeader(bytes.subarray(8, 8 + headerLength), bytes.length, name);
  const tensors = new Map<string, Tensor>();
  for (const e of header.entries) {
    const copy = bytes.slice(
      header.dataStart + e.dataOffsets[0],
      header.dataStart + e.dataOffsets[1],
    );
    const data = DTYPES[e.dtype].view(copy.buffer, 0, e.byteLength / DTYPES[e.dtype].itemSize);
    tensors.set(e.name, { dtype: e.dtype, shape: [...e.shape], data } as Tensor);
  }
  return { tensors, metadata: { ...header.metadata } };
}
