import { type FileHandle, mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Tensor, tensorBytes, writeAll } from '@lora/core';
import { RuntimeError } from '../errors.js';
import type { ExternalPlacement } from '../graph/serialize.js';

/** File name of the weights inside the folder; the model file refers to it by this name. */
export const WEIGHT_FILE_NAME = 'weights.bin';
/** Tensor offsets are page-aligned, so onnxruntime can map each one straight from the file. */
const ALIGN = 4096;
/** Stand-ins view a zero buffer at least this large: always a fresh mapping of untouched pages. */
const MIN_ZERO_BYTES = 64 * 2 ** 20;

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

  /** A new, empty weight file in a fresh temporary folder (under `parent`, default the OS's). */
  static async create(parent = tmpdir()): Promise<WeightFile> {
    let dir: string;
    try {
      dir = await mkdtemp(join(parent, 'lora-session-'));
    } catch (error) {
      throw new RuntimeError(
        'WEIGHT_FILE',
        `Cannot create a temporary folder for the model's weights under ${parent} (${String(error)}); set TMPDIR to a writable folder with room for the weights.`,
        { dir: parent },
      );
    }
    return new WeightFile(dir, await open(join(dir, WEIGHT_FILE_NAME), 'w'));
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
    await this.pending;
    const handle = this.handle;
    if (!handle)
      throw new RuntimeError('WEIGHT_FILE', `${this.dir}: the weight file is already closed.`);
    const start = Math.ceil(this.end / ALIGN) * ALIGN;
    const padding = start - this.end;
    this.offsets.set(t.data, start);
    this.end = start + t.data.byteLength;
    this.pending = (async () => {
      if (padding > 0) await writeAll(handle, new Uint8Array(padding));
      await writeAll(handle, tensorBytes(t));
    })().catch((error) => {
      throw new RuntimeError(
        'WEIGHT_FILE',
        `Cannot write the model's weights to ${this.dir} (${String(error)}); the temporary folder needs room for the weights (set TMPDIR elsewhere).`,
        { dir: this.dir },
      );
    });
    // Marked handled here; the error is rethrown by the next add() or close().
    this.pending.catch(() => {});
  }

  /**
   * Appends a tensor's bytes and returns a stand-in of the same dtype and shape whose data is a
   * view on never-touched zero pages (no resident memory). The graph holds the stand-in; the
   * session reads the real bytes from this file. Do not read a stand-in's data: it is zeros.
   */
  async spill<T extends Tensor>(t: T): Promise<T> {
    await this.add(t);
    const bytes = t.data.byteLength;
    if (this.zero.byteLength < bytes) this.zero = new ArrayBuffer(Math.max(bytes, MIN_ZERO_BYTES));
    const View = t.data.constructor as new (
      b: ArrayBuffer,
      offset: number,
      length: number,
    ) => T['data'];
    const data = new View(this.zero, 0, t.data.length);
    this.offsets.set(data, this.offsets.get(t.data) as number);
    return { dtype: t.dtype, shape: t.shape, data } as T;
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
  }
}
