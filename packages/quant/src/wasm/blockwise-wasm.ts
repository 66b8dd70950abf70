/**
 * The SIMD128 WebAssembly kernel of blockwise.wat behind NF4/FP4 quantization: the same bytes as
 * the TypeScript kernel (tested block by block), several times faster. Values go through the
 * module's memory in 1 MiB chunks of whole blocks (copy in, quantize, copy out), so memory stays
 * bounded. The module is compiled once, on first use; where WebAssembly SIMD is missing,
 * {@link quantizeBlocksWasm} returns undefined and the caller runs the TypeScript kernel.
 */
import { FP4_MAGNITUDE_CODES, FP4_SIGN_BIT, FP4_THRESHOLDS, NF4_THRESHOLDS } from '../codebooks.js';
import type { Bnb4Format } from '../formats.js';
import { BLOCKWISE_WASM_BASE64 } from './blockwise-bytes.js';

/** The parts of the WebAssembly global used here (the repo's TS config has no DOM/wasm lib). */
export interface WasmGlobal {
  validate(bytes: Uint8Array): boolean;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: unknown };
}

export interface BlockwiseExports {
  memory: { buffer: ArrayBuffer };
  quantize_blocks(
    values: number,
    n: number,
    blockSize: number,
    packed: number,
    absmax: number,
    tables: number,
    fp4: number,
  ): number;
}

/** Values per chunk: 1 MiB of float32, a whole number of blocks for every block size (<= 4096). */
export const BLOCKWISE_WASM_CHUNK = 1 << 18;

/** Below this many values the TypeScript kernel runs (no copies, no setup). */
export const BLOCKWISE_WASM_MIN_VALUES = 4096;

let kernel: BlockwiseExports | null | undefined;

/** The wasm bytes of blockwise.wat. */
export function blockwiseWasmBytes(): Uint8Array {
  return new Uint8Array(Buffer.from(BLOCKWISE_WASM_BASE64, 'base64'));
}

/** The constant tables the kernel reads (see blockwise.wat), as plain arrays a worker can receive. */
export interface BlockwiseWasmTables {
  readonly nf4Thresholds: Float32Array;
  readonly fp4Thresholds: Float32Array;
  readonly fp4MagnitudeCodes: Uint8Array;
  readonly fp4SignBit: number;
}

export const BLOCKWISE_WASM_TABLES: BlockwiseWasmTables = {
  nf4Thresholds: NF4_THRESHOLDS,
  fp4Thresholds: FP4_THRESHOLDS,
  fp4MagnitudeCodes: FP4_MAGNITUDE_CODES,
  fp4SignBit: FP4_SIGN_BIT,
};

/**
 * Instantiates the kernel from its bytes and writes both formats' tables into its memory.
 * Self-contained (no imports, no outer variables): worker threads run it from its source text.
 */
export function instantiateBlockwiseWasm(
  wasm: WasmGlobal,
  bytes: Uint8Array,
  tables: BlockwiseWasmTables,
): BlockwiseExports | undefined {
  if (!wasm.validate(bytes)) return undefined;
  const exports = new wasm.Instance(new wasm.Module(bytes), {}).exports as BlockwiseExports;
  const chunk = 1 << 18; // BLOCKWISE_WASM_CHUNK
  const tablesAt = chunk * 4 + chunk / 2 + (chunk / 32) * 4;
  for (const [at, format] of [
    [tablesAt, 'nf4'],
    [tablesAt + 128, 'fp4'],
  ] as const) {
    const memory = exports.memory.buffer;
    new Float32Array(memory, at, 15).set(tables.nf4Thresholds);
    new Float32Array(memory, at + 64, 7).set(tables.fp4Thresholds);
    const codes = new Uint8Array(memory, at + 96, 16);
    for (let index = 0; index < 16; index++) {
      // NF4: the rank is the code. FP4: index = magnitude level + 8 for negative values.
      codes[index] =
        format === 'nf4'
          ? index
          : (index & 8 ? tables.fp4SignBit : 0) | tables.fp4MagnitudeCodes[index & 7];
    }
  }
  return exports;
}

/** The instantiated kernel with its tables written, or undefined without WebAssembly SIMD. */
export function blockwiseWasm(): BlockwiseExports | undefined {
  if (kernel === undefined) {
    kernel = null;
    try {
      const wasm = (globalThis as { WebAssembly?: WasmGlobal }).WebAssembly;
      if (wasm)
        kernel =
          instantiateBlockwiseWasm(wasm, blockwiseWasmBytes(), BLOCKWISE_WASM_TABLES) ?? null;
    } catch {
      kernel = null; // no usable WebAssembly: the TypeScript kernel serves
    }
  }
  return kernel ?? undefined;
}

/**
 * Same contract as `quantizeBlocksKernel` (blocks `[firstBlock, endBlock)` of `values` into the
 * full-size `packed` and `absmax`; returns -1 or the first block holding NaN/Inf, whose outputs
 * and those of later blocks stay unwritten), or undefined when the wasm path does not apply
 * (no WebAssembly SIMD, or fewer than {@link BLOCKWISE_WASM_MIN_VALUES} values).
 */
export function quantizeBlocksWasm(
  values: Float32Array,
  format: Bnb4Format,
  blockSize: number,
  firstBlock: number,
  endBlock: number,
  packed: Uint8Array,
  absmax: Float32Array,
): number | undefined {
  const n = values.length;
  const first = firstBlock * blockSize;
  const last = Math.min(endBlock * blockSize, n);
  if (last - first < BLOCKWISE_WASM_MIN_VALUES) return undefined;
  const k = blockwiseWasm();
  if (!k) return undefined;
  return quantizeRangeWithWasm(
    k,
    values,
    format === 'fp4',
    blockSize,
    firstBlock,
    endBlock,
    packed,
    absmax,
  );
}

/**
 * The chunk loop over an instantiated kernel: blocks `[firstBlock, endBlock)` of `values` into
 * `packed` and `absmax`; returns -1 or the first block holding NaN/Inf. Self-contained (no
 * imports, no outer variables): worker threads run it from its source text.
 */
export function quantizeRangeWithWasm(
  k: BlockwiseExports,
  values: Float32Array,
  fp4: boolean,
  blockSize: number,
  firstBlock: number,
  endBlock: number,
  packed: Uint8Array,
  absmax: Float32Array,
): number {
  // Memory layout (2 MiB): values, then packed codes, absmax (blocks of 32 at the smallest), tables.
  const chunk = 1 << 18; // BLOCKWISE_WASM_CHUNK
  const valuesAt = 0;
  const packedAt = chunk * 4;
  const absmaxAt = packedAt + chunk / 2;
  const tablesAt = absmaxAt + (chunk / 32) * 4 + (fp4 ? 128 : 0);
  const n = values.length;
  const last = Math.min(endBlock * blockSize, n);
  const memory = k.memory.buffer;
  const valuesView = new Float32Array(memory, valuesAt, chunk);
  const packedView = new Uint8Array(memory, packedAt, chunk / 2);
  const absmaxView = new Float32Array(memory, absmaxAt, chunk / 32);
  const blocksPerChunk = chunk / blockSize;
  for (let b0 = firstBlock; b0 < endBlock; b0 += blocksPerChunk) {
    const start = b0 * blockSize; // even: block sizes are even
    const count = Math.min(blocksPerChunk * blockSize, last - start);
    // Same-type TypedArray.set copies bytes, so NaN patterns arrive unchanged.
    valuesView.set(values.subarray(start, start + count));
    valuesView.fill(0, count, (count + 15) & ~15); // padding lanes: 0.0, as the reference pads
    const bad = k.quantize_blocks(
      valuesAt,
      count,
      blockSize,
      packedAt,
      absmaxAt,
      tablesAt,
      fp4 ? 1 : 0,
    );
    const done = bad < 0 ? Math.ceil(count / blockSize) : bad;
    const doneValues = Math.min(done * blockSize, count);
    packed.set(packedView.subarray(0, Math.ceil(doneValues / 2)), start >> 1);
    absmax.set(absmaxView.subarray(0, done), b0);
    if (bad >= 0) return b0 + bad;
  }
  return -1;
}
