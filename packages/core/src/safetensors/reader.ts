import { type FileHandle, open } from 'node:fs/promises';
import { basename } from 'node:path';
import { DTYPES, type DType } from '../dtype.js';
import { CoreError } from '../errors.js';
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
  ) {}

  /** Opens and validates a file. Throws `CoreError` (codes `SAFETENSORS_*`) on anything wrong. */
  static async open(path: string): Promise<SafetensorsFile> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new CoreError(
        err.code === 'ENOENT' ? 'FILE_NOT_FOUND' : 'FILE_UNREADABLE',
        `${path}: cannot open (${err.code ?? err.message}).`,
        { file: path },
        { cause: e },
      );
    }
    try {
      const { size } = await handle.stat();
      const prefix = new Uint8Array(8);
      await readExactly(handle, prefix, 0, Math.min(8, size));
      const headerLength = parseHeaderLength(prefix, size, path);
      const headerBytes = new Uint8Array(headerLength);
      await readExactly(handle, headerBytes, 8, headerLength);
      const header = parseHeader(headerBytes, size, path);
      return new SafetensorsFile(path, size, header, handle);
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

  /** Reads one tensor's raw bytes into a fresh, aligned buffer. */
  async readBytes(name: string): Promise<Uint8Array> {
    const e = this.entry(name);
    const bytes = new Uint8Array(e.byteLength);
    await readExactly(
      this.fileHandle(),
      bytes,
      this.header.dataStart + e.dataOffsets[0],
      e.byteLength,
    );
    return bytes;
  }

  /** Reads one tensor. Data is little-endian on disk, as on every platform Node.js runs on. */
  async read<D extends DType = DType>(name: string): Promise<Tensor<D>> {
    const e = this.entry(name);
    const bytes = await this.readBytes(name);
    const data = DTYPES[e.dtype].view(bytes.buffer, 0, e.byteLength / DTYPES[e.dtype].itemSize);
    return { dtype: e.dtype, shape: [...e.shape], data } as unknown as Tensor<D>;
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
