import { type FileHandle, mkdir, open, rm, statfs } from 'node:fs/promises';
import { freemem, platform } from 'node:os';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  type Tensor,
  temporaryPath,
  tensor,
  tensorBytes,
  trackTemporary,
  untrackTemporary,
  writeAll,
} from '@lora/core';
import { RuntimeError } from '../errors.js';
import type { ExternalPlacement } from '../graph/serialize.js';

/** File name of the weights inside the folder; the model file refers to it by this name. */
export const WEIGHT_FILE_NAME = 'weights.bin';
/** Tensor offsets are page-aligned, so onnxruntime can map each one straight from the file. */
const ALIGN = 4096;
/** Stand-ins view a zero buffer at least this large: always a fresh mapping of untouched pages. */
const MIN_ZERO_BYTES = 64 * 2 ** 20;

/** statfs type of a RAM-backed filesystem (tmpfs). */
const TMPFS_MAGIC = 0x01021994;
/** The RAM-backed folder Linux systems provide. */
const SHM_DIR = '/dev/shm';

/**
 * Where session weight files go. The file's pages are what the session holds, so where RAM
 * allows they are best in RAM from the start: on this project's reference machine writing them to
 * a tmpfs runs ~3x faster than to a disk-backed temp folder (whose writeback is wasted work).
 * Order: `LORA_SESSION_DIR`; `TMPDIR` when the user set it; `/dev/shm` when it is a tmpfs with
 * room for the weights plus 1 GiB and the weights take at most half of the free RAM (a disk-backed
 * file lets the OS drop and re-read pages under memory pressure, so tight RAM keeps it on disk);
 * else the OS temp folder.
 */
export async function weightFileParent(expectedBytes: number): Promise<string> {
  const chosen = process.env.LORA_SESSION_DIR || process.env.TMPDIR;
  if (chosen) return chosen;
  if (platform() === 'linux' && expectedBytes <= freemem() / 2) {
    try {
      const fs = await statfs(SHM_DIR);
      if (fs.type === TMPFS_MAGIC && fs.bavail * fs.bsize >= expectedBytes + 2 ** 30)
        return SHM_DIR;
    } catch {
      /* no /dev/shm: the OS temp folder serves */
    }
  }
  return tmpdir();
}

/**
 * A temporary folder holding the weights of a model about to become an onnxruntime session, in
 * one file that onnxruntime maps into memory (no copy through the JavaScript heap, none through
 * the protobuf). Weights are appended one tensor at a time as they are prepared, so a model never
 * exists twice: {@link WeightFile.spill} writes a tensor and returns a stand-in that holds no
 * memory.
 */
export class WeightFile {
  private end = 0;
  private readonly offsets = new WeakMap<object, number>();
  private zero = new ArrayBuffer(0);
  private handle: FileHandle | undefined;
  private pending: Promise<void> = Promise.resolve();

  private constructor(
    /** The temporary folder; {@link WeightFile.remove} deletes it. */
    readonly dir: string,
    handle: FileHandle,
  ) {
    this.handle = handle;
  }

  /**
   * A new, empty weight file in a fresh temporary folder under `parent` (default: see
   * {@link weightFileParent}, given the bytes the weights will take). The folder is a tracked
   * temporary: removed on exit or Ctrl-C, and by the next run if this process is killed.
   */
  static async create(parent?: string, expectedBytes = 0): Promise<WeightFile> {
    const where = parent ?? (await weightFileParent(expectedBytes));
    const dir = temporaryPath(join(where, 'lora-session'));
    trackTemporary(dir); // before it exists: a kill right after the mkdir leaves nothing unknown
    try {
      await mkdir(dir, { mode: 0o700 });
    } catch (error) {
      untrackTemporary(dir);
      throw new RuntimeError(
        'WEIGHT_FILE',
        `Cannot create a temporary folder for the model's weights under ${where} (${String(error)}); set LORA_SESSION_DIR (or TMPDIR) to a writable folder with room for the weights.`,
        { dir: where },
      );
    }
    try {
      return new WeightFile(dir, await open(join(dir, WEIGHT_FILE_NAME), 'w'));
    } catch (error) {
      await rm(dir, { recursive: true, force: true }).catch(() => {});
      untrackTemporary(dir);
      throw error;
    }
  }

  /** Bytes written so far (padding included). */
  get bytes(): number {
    return this.end;
  }

  /**
   * Appends a tensor's bytes (once per tensor); the graph keeps using `t`. Returns once the
   * previous tensor is on disk and this one's write has started, so preparing the next tensor
   * overlaps with writing this one (one write in flight; {@link WeightFile.close} waits for it).
   */
  async add(t: Tensor): Promise<void> {
    if (this.offsets.has(t.data)) return;
    const { handle, start } = await this.reserve(t.data.byteLength);
    this.offsets.set(t.data, start);
    this.startWrite(handle, tensorBytes(t));
  }

  /**
   * Appends a tensor's bytes and returns a stand-in of the same dtype and shape whose data is a
   * view on never-touched zero pages (no resident memory). The graph holds the stand-in; the
   * session reads the real bytes from this file. Do not read a stand-in's data: it is zeros.
   */
  async spill<T extends Tensor>(t: T): Promise<T> {
    await this.add(t);
    const View = t.data.constructor as new (
      b: ArrayBuffer,
      offset: number,
      length: number,
    ) => T['data'];
    const data = new View(this.zeros(t.data.byteLength), 0, t.data.length);
    this.offsets.set(data, this.offsets.get(t.data) as number);
    return { dtype: t.dtype, shape: t.shape, data } as T;
  }

  /**
   * Appends a float32 tensor that arrives in chunks (views on buffers the producer reuses), and
   * returns its stand-in, as {@link WeightFile.spill} does for a whole tensor. The tensor never
   * exists whole in memory. One write is in flight at a time: a chunk is written while the
   * producer fills the next, so a producer alternating two buffers never overwrites one that is
   * still being written (also across consecutive calls).
   */
  async spillChunks(
    shape: readonly number[],
    chunks: AsyncIterable<Float32Array>,
  ): Promise<Tensor<'f32'>> {
    const elements = shape.reduce((a, b) => a * b, 1);
    const { handle, start } = await this.reserve(elements * 4);
    let written = 0;
    for await (const chunk of chunks) {
      await this.pending;
      written += chunk.length;
      this.startWrite(handle, new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    }
    if (written !== elements) {
      await this.pending;
      throw new RuntimeError(
        'WEIGHT_FILE',
        `${this.dir}: a streamed tensor of shape [${shape.join(', ')}] delivered ${written} of ${elements} values.`,
      );
    }
    const data = new Float32Array(this.zeros(elements * 4), 0, elements);
    this.offsets.set(data, start);
    return tensor('f32', [...shape], data);
  }

  /**
   * Waits for the write in flight, then reserves `byteLength` bytes at the next page-aligned
   * offset (starting the padding's write) and returns where they start.
   */
  private async reserve(byteLength: number): Promise<{ handle: FileHandle; start: number }> {
    await this.pending;
    const handle = this.handle;
    if (!handle)
      throw new RuntimeError('WEIGHT_FILE', `${this.dir}: the weight file is already closed.`);
    const start = Math.ceil(this.end / ALIGN) * ALIGN;
    if (start > this.end) this.startWrite(handle, new Uint8Array(start - this.end));
    this.end = start + byteLength;
    return { handle, start };
  }

  /** Starts writing `bytes` once the write in flight is done; its error surfaces at the next wait. */
  private startWrite(handle: FileHandle, bytes: Uint8Array): void {
    this.pending = this.pending
      .then(() => writeAll(handle, bytes))
      .catch((error) => {
        if (error instanceof RuntimeError) throw error;
        throw new RuntimeError(
          'WEIGHT_FILE',
          `Cannot write the model's weights to ${this.dir} (${String(error)}); the temporary folder needs room for the weights (set LORA_SESSION_DIR or TMPDIR elsewhere).`,
          { dir: this.dir },
        );
      });
    // Marked handled here; the error is rethrown by the next wait (add, spillChunks, close).
    this.pending.catch(() => {});
  }

  /** A buffer of at least `bytes` zeros that is never written: stand-ins view it, no memory used. */
  private zeros(bytes: number): ArrayBuffer {
    if (this.zero.byteLength < bytes) this.zero = new ArrayBuffer(Math.max(bytes, MIN_ZERO_BYTES));
    return this.zero;
  }

  /** Where a tensor (or its stand-in) sits in the file, or undefined if it was not added. */
  placement(t: Tensor): ExternalPlacement | undefined {
    const offset = this.offsets.get(t.data);
    return offset === undefined ? undefined : { location: WEIGHT_FILE_NAME, offset };
  }

  /** Waits until every tensor added so far is written (a write error is thrown here). */
  async flush(): Promise<void> {
    await this.pending;
  }

  /** Waits for the last write and closes the file (the folder stays until {@link WeightFile.remove}). */
  async close(): Promise<void> {
    const handle = this.handle;
    this.handle = undefined;
    try {
      await this.flush();
    } finally {
      await handle?.close();
    }
  }

  /**
   * Deletes the folder. A session already created keeps its mapping of the weights (the data
   * stays readable until the session is released), so this runs right after session creation.
   */
  async remove(): Promise<void> {
    await this.close().catch(() => {});
    // Best effort: where mapped files cannot be deleted (Windows), the OS's temp cleanup gets it.
    await rm(this.dir, { recursive: true, force: true }).catch(() => {});
    untrackTemporary(this.dir);
  }
}
