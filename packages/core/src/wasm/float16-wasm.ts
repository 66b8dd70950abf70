/**
 * The SIMD128 WebAssembly kernels of float16.wat behind the array conversions of float16.ts:
 * same bits as the TypeScript loops (tested element by element), several times faster. Large
 * arrays go through the module's memory in 1 MiB chunks (copy in, convert, copy out), so memory
 * stays bounded. The module is compiled once, on first use; where WebAssembly SIMD is missing
 * {@link float16Wasm} returns undefined and callers keep the TypeScript loops.
 */
import { FLOAT16_WASM_BASE64 } from './float16-bytes.js';

/** The parts of the WebAssembly global used here (the repo's TS config has no DOM/wasm lib). */
export interface WasmGlobal {
  validate(bytes: Uint8Array): boolean;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: unknown };
}

/** The WebAssembly global, when the runtime has one. */
export function wasmGlobal(): WasmGlobal | undefined {
  return (globalThis as { WebAssembly?: WasmGlobal }).WebAssembly;
}

interface Float16Exports {
  memory: { buffer: ArrayBuffer };
  f32_to_f16(src: number, dst: number, n: number): void;
  f16_to_f32(src: number, dst: number, n: number): void;
  f32_to_bf16(src: number, dst: number, n: number): void;
  bf16_to_f32(src: number, dst: number, n: number): void;
}

/** Elements per chunk: 1 MiB of float32 in, at most 1 MiB out (the memory holds 2 MiB). */
export const FLOAT16_WASM_CHUNK = 1 << 18;
const IN = 0;
const OUT = FLOAT16_WASM_CHUNK * 4;

/** Below this many elements the TypeScript loops are used (no copies, no setup). */
export const FLOAT16_WASM_MIN_LENGTH = 4096;

/** Compiled-and-instantiated kernels: undefined = not tried yet, null = unavailable. */
let kernels: Float16Exports | null | undefined;

/** The wasm bytes of float16.wat. */
export function float16WasmBytes(): Uint8Array {
  return new Uint8Array(Buffer.from(FLOAT16_WASM_BASE64, 'base64'));
}

/** The instantiated kernels, or undefined when this runtime lacks WebAssembly SIMD. */
export function float16Wasm(): Float16Exports | undefined {
  if (kernels === undefined) {
    kernels = null;
    try {
      const bytes = float16WasmBytes();
      const wasm = wasmGlobal();
      if (wasm?.validate(bytes)) {
        const instance = new wasm.Instance(new wasm.Module(bytes), {});
        kernels = instance.exports as unknown as Float16Exports;
      }
    } catch {
      kernels = null; // no usable WebAssembly: the TypeScript loops serve
    }
  }
  return kernels ?? undefined;
}

type Kernel = 'f32_to_f16' | 'f16_to_f32' | 'f32_to_bf16' | 'bf16_to_f32';

/**
 * Runs `kernel` over `src` into `out` chunk by chunk. Copies go through 32- or 16-bit integer
 * views so that every bit pattern (NaN payloads included) moves unchanged.
 */
function convertChunked(
  k: Float16Exports,
  kernel: Kernel,
  src: Int32Array | Uint16Array,
  out: Int32Array | Uint16Array,
): void {
  const buffer = k.memory.buffer;
  const wide = src instanceof Int32Array;
  const inView = wide
    ? new Int32Array(buffer, IN, FLOAT16_WASM_CHUNK)
    : new Uint16Array(buffer, IN, FLOAT16_WASM_CHUNK);
  const outView = wide
    ? new Uint16Array(buffer, OUT, FLOAT16_WASM_CHUNK)
    : new Int32Array(buffer, OUT, FLOAT16_WASM_CHUNK);
  const run = k[kernel];
  for (let start = 0; start < src.length; start += FLOAT16_WASM_CHUNK) {
    const count = Math.min(FLOAT16_WASM_CHUNK, src.length - start);
    inView.set(src.subarray(start, start + count));
    run(IN, OUT, count);
    out.set(outView.subarray(0, count), start);
  }
}

/** f32 -> f16 through wasm; false when wasm is unavailable or the array is small. */
export function f32ToF16Wasm(src: Float32Array, out: Uint16Array): boolean {
  const k = src.length >= FLOAT16_WASM_MIN_LENGTH ? float16Wasm() : undefined;
  if (!k) return false;
  convertChunked(k, 'f32_to_f16', new Int32Array(src.buffer, src.byteOffset, src.length), out);
  return true;
}

/** f32 -> bf16 through wasm; false when wasm is unavailable or the array is small. */
export function f32ToBf16Wasm(src: Float32Array, out: Uint16Array): boolean {
  const k = src.length >= FLOAT16_WASM_MIN_LENGTH ? float16Wasm() : undefined;
  if (!k) return false;
  convertChunked(k, 'f32_to_bf16', new Int32Array(src.buffer, src.byteOffset, src.length), out);
  return true;
}

/** f16 -> f32 through wasm; false when wasm is unavailable or the array is small. */
export function f16ToF32Wasm(src: Uint16Array, out: Float32Array): boolean {
  const k = src.length >= FLOAT16_WASM_MIN_LENGTH ? float16Wasm() : undefined;
  if (!k) return false;
  convertChunked(k, 'f16_to_f32', src, new Int32Array(out.buffer, out.byteOffset, src.length));
  return true;
}

/** bf16 -> f32 through wasm; false when wasm is unavailable or the array is small. */
export function bf16ToF32Wasm(src: Uint16Array, out: Float32Array): boolean {
  const k = src.length >= FLOAT16_WASM_MIN_LENGTH ? float16Wasm() : undefined;
  if (!k) return false;
  convertChunked(k, 'bf16_to_f32', src, new Int32Array(out.buffer, out.byteOffset, src.length));
  return true;
}
