import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { type Blockwise4Bit, BUCKET_TABLES, blockCount, quantizeBlocksInto } from './blockwise.js';
import { quantizeBlocksKernel } from './blockwise-kernel.js';
import { QuantError } from './errors.js';
import {
  BLOCKWISE_WASM_MIN_VALUES,
  BLOCKWISE_WASM_TABLES,
  blockwiseWasmBytes,
  instantiateBlockwiseWasm,
  quantizeRangeWithWasm,
} from './wasm/blockwise-wasm.js';
import {
  assertBlockSize,
  assertFinite,
  type Bnb4Format,
  BNB4_DEFAULT_BLOCK_SIZE,
  isBnb4Format,
} from './formats.js';

/**
 * The worker's program: the kernels' own source text plus a message loop. Workers run exactly the
 * functions the main thread runs (the SIMD wasm kernel for large ranges, where WebAssembly SIMD
 * exists, else the TypeScript kernel), so outputs are byte-identical by construction (and tested).
 */
const WORKER_SOURCE = `
// Runs as CommonJS or as an ES module (the parent may run with --input-type=module): dynamic import works in both.
const quantizeBlocksKernel = ${quantizeBlocksKernel.toString()};
const instantiateBlockwiseWasm = ${instantiateBlockwiseWasm.toString()};
const quantizeRangeWithWasm = ${quantizeRangeWithWasm.toString()};
import('node:worker_threads').then(({ parentPort, workerData }) => {
  let wasm;
  try {
    wasm = globalThis.WebAssembly && instantiateBlockwiseWasm(globalThis.WebAssembly, workerData.wasmBytes, workerData.wasmTables);
  } catch {
    wasm = undefined;
  }
  parentPort.on('message', (job) => {
    const values = new Float32Array(job.values, job.valuesOffset, job.length);
    const packed = new Uint8Array(job.packed, 0, job.packedLength);
    const absmax = new Float32Array(job.absmax, 0, job.absmaxLength);
    const t = job.tables;
    const span = Math.min(job.endBlock * job.blockSize, job.length) - job.firstBlock * job.blockSize;
    const bad = wasm && span >= workerData.wasmMinValues
      ? quantizeRangeWithWasm(wasm, values, job.format === 'fp4', job.blockSize, job.firstBlock, job.endBlock, packed, absmax)
      : quantizeBlocksKernel(values, job.blockSize, job.firstBlock, job.endBlock, packed, absmax,
          t.threshold, t.below, t.above, t.zeroCode, t.posInfCode, t.negInfCode, t.nanCode);
    parentPort.postMessage({ id: job.id, bad });
  });
});
`;

/** Below this many values a tensor is quantized on the calling thread (messages cost more). */
export const PARALLEL_MIN_VALUES = 1 << 20;

/**
 * A pool of worker threads for NF4/FP4 quantization of large tensors (a class because it has a
 * lifecycle: create once, `close()` when done). Splits a tensor's blocks into one contiguous
 * range per thread; tensors under {@link PARALLEL_MIN_VALUES} values stay on the calling thread.
 */
export class QuantizeWorkerPool {
  private readonly workers: Worker[];
  private nextId = 0;
  private readonly pending = new Map<
    number,
    { resolve: (bad: number) => void; reject: (e: Error) => void }
  >();

  /** `threads` defaults to the number of CPUs the process may use. */
  constructor(readonly threads: number = availableParallelism()) {
    this.workers = [];
    for (let i = 0; i < Math.max(1, threads); i++) {
      const w = new Worker(WORKER_SOURCE, {
        eval: true,
        workerData: {
          wasmBytes: blockwiseWasmBytes(),
          wasmTables: BLOCKWISE_WASM_TABLES,
          wasmMinValues: BLOCKWISE_WASM_MIN_VALUES,
        },
      });
      w.on('message', (m: { id: number; bad: number }) => {
        const p = this.pending.get(m.id);
        this.pending.delete(m.id);
        w.unref(); // idle threads must not keep the process alive
        p?.resolve(m.bad);
      });
      w.on('error', (e) => {
        for (const p of this.pending.values()) p.reject(e);
        this.pending.clear();
      });
      w.unref();
      this.workers.push(w);
    }
  }

  /**
   * Same result as `quantizeBlockwise(values, options)`, computed on all threads. Copies `values`
   * into shared memory unless it already lives there.
   */
  quantizeBlockwise(
    values: Float32Array,
    options: { format: Bnb4Format; blockSize?: number; name?: string },
  ): Promise<Blockwise4Bit> {
    // One call at a time: calls share the pool's buffers.
    const run = this.queue.then(() => this.quantizeNow(values, options));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private queue: Promise<unknown> = Promise.resolve();

  private async quantizeNow(
    values: Float32Array,
    options: { format: Bnb4Format; blockSize?: number; name?: string },
  ): Promise<Blockwise4Bit> {
    const { format } = options;
    if (!isBnb4Format(format))
      throw new QuantError('QUANT_FORMAT', `quantizeBlockwise takes nf4 or fp4, got ${format}.`, {
        format,
      });
    const blockSize = options.blockSize ?? BNB4_DEFAULT_BLOCK_SIZE;
    assertBlockSize(format, blockSize);
    const n = values.length;
    const blocks = blockCount(n, blockSize);
    if (n < PARALLEL_MIN_VALUES || this.workers.length < 2) {
      const packed = new Uint8Array(Math.ceil(n / 2));
      const absmax = new Float32Array(blocks);
      quantizeBlocksInto(values, format, blockSize, 0, blocks, packed, absmax, options.name);
      return { format, blockSize, length: n, packed, absmax };
    }
    // Shared buffers are reused from call to call: a worker that keeps an old one alive until its
    // own (rare) garbage collection would otherwise pin a tensor-sized buffer per call.
    let shared = values;
    if (!(values.buffer instanceof SharedArrayBuffer)) {
      shared = new Float32Array(this.sharedBuffer('input', n * 4), 0, n);
      shared.set(values);
    }
    const packedShared = this.sharedBuffer('packed', Math.ceil(n / 2));
    const absmaxShared = this.sharedBuffer('absmax', blocks * 4);
    const tables = BUCKET_TABLES[format];
    const perThread = Math.ceil(blocks / this.workers.length);
    const jobs: Promise<number>[] = [];
    for (let t = 0; t < this.workers.length; t++) {
      const firstBlock = t * perThread;
      const endBlock = Math.min(blocks, firstBlock + perThread);
      if (firstBlock >= endBlock) break;
      const id = this.nextId++;
      jobs.push(
        new Promise<number>((resolve, reject) => {
          this.pending.set(id, { resolve, reject });
          this.workers[t].ref(); // a busy thread keeps the process alive until it answers
          this.workers[t].postMessage({
            id,
            values: shared.buffer,
            valuesOffset: shared.byteOffset,
            length: n,
            packed: packedShared,
            packedLength: Math.ceil(n / 2),
            absmaxLength: blocks,
            absmax: absmaxShared,
            blockSize,
            firstBlock,
            endBlock,
            format,
            tables,
          });
        }),
      );
    }
    const bad = (await Promise.all(jobs)).filter((b) => b >= 0);
    if (bad.length > 0) {
      const first = Math.min(...bad);
      assertFinite(values, options.name, first * blockSize, Math.min((first + 1) * blockSize, n));
    }
    // Copy out of shared memory: callers get ordinary arrays (1/8 and 1/128 of the input size).
    return {
      format,
      blockSize,
      length: n,
      packed: new Uint8Array(packedShared, 0, Math.ceil(n / 2)).slice(),
      absmax: new Float32Array(absmaxShared, 0, blocks).slice(),
    };
  }

  private readonly buffers = new Map<string, SharedArrayBuffer>();

  /** A shared buffer of at least `bytes`, grown (never shrunk) as tensors need. */
  private sharedBuffer(role: string, bytes: number): SharedArrayBuffer {
    let b = this.buffers.get(role);
    if (!b || b.byteLength < bytes) {
      b = new SharedArrayBuffer(Math.max(bytes, 8));
      this.buffers.set(role, b);
    }
    return b;
  }

  /** Stops the threads and releases the shared buffers. */
  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers.length = 0;
    this.buffers.clear();
  }
}
