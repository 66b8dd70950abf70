/**
 * Deterministic values in [-scale/2, scale/2) from a xorshift32 stream: fast filler for the
 * synthetic models and layers that tests and `lora bench` write (not a statistical generator).
 */
export function xorshiftValues(n: number, seed: number, scale: number): Float32Array {
  const out = new Float32Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = (x / 2 ** 32 - 0.5) * scale;
  }
  return out;
}
