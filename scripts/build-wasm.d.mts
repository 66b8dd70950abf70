/** The wasm bytes of a .wat text, compiled with wabt (SIMD on, no debug names). */
export function compileWat(path: string, text: string): Promise<Uint8Array>;
/** The TS module text embedding `bytes` as base64 under `name`. */
export function bytesModule(name: string, watFile: string, bytes: Uint8Array): string;
