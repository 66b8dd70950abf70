import { CoreError } from './errors.js';

/**
 * Seeded random numbers that are bit-identical on every platform.
 *
 * The generator is PCG32 (M. E. O'Neill, 2014: "PCG-XSH-RR 64/32"): a 64-bit linear
 * congruential state `state = state * 6364136223846793005 + inc` with an odd increment `inc`
 * chosen by a stream number, and the output permutation "xorshift high, random rotate".
 * Seeding follows the reference `pcg32_srandom_r(initstate, initseq)` exactly, so
 * `createRng(42, 54)` reproduces the published `pcg32-demo` output
 * (`0xa15c02b7 0x7b47f409 0xba1d3330 ...`).
 *
 * The 64-bit state is kept as two unsigned 32-bit halves and advanced with exact integer
 * arithmetic (`Math.imul` plus 16-bit partial products), so no BigInt sits on the hot path
 * and the integer stream cannot depend on the platform.
 *
 * Derived values:
 * - `uniform()`: 53 random bits (27 from one draw, 26 from the next) / 2^53, in [0, 1).
 * - `integer(bound)`: unbiased, by rejection below `(2^32 - bound) mod bound`
 *   (the reference `pcg32_boundedrand_r`).
 * - `normal()`: Box-Muller on two `uniform()`s, both outputs used (the second is cached).
 *   It calls `Math.log`, `Math.sqrt`, `Math.cos` and `Math.sin`; V8 (Node.js) implements these
 *   with its own fdlibm port (sqrt is correctly rounded by IEEE 754), so normals are identical
 *   across operating systems and CPUs under Node. Other JS engines may differ in the last bit.
 */
export interface Rng {
  /** The next raw 32-bit output, an integer in [0, 2^32). */
  nextUint32(): number;
  /** A float64 uniform in [0, 1) with 53 random bits (consumes two 32-bit outputs). */
  uniform(): number;
  /** An unbiased integer in [0, bound), for 1 <= bound <= 2^32 (as `pcg32_boundedrand_r`). */
  integer(bound: number): number;
  /** A standard normal N(0, 1) by Box-Muller (two normals per pair of uniforms). */
  normal(): number;
  /** True with probability `p` (`uniform() < p`), for p in [0, 1]. */
  bernoulli(p: number): boolean;
  /**
   * A uniformly random permutation of 0..n-1 by Fisher-Yates: for i = n down to 2,
   * swap element i-1 with element `integer(i)` (the order of the reference demo's card shuffle).
   */
  permutation(n: number): Uint32Array;
  /** `n` uniforms in [lo, hi) as float64 (float32 rounding may produce `hi` exactly). */
  uniformArray(n: number, lo?: number, hi?: number): Float64Array;
  uniformArray(n: number, lo: number, hi: number, dtype: 'f32'): Float32Array;
  uniformArray(n: number, lo: number, hi: number, dtype: 'f64'): Float64Array;
  /** `n` normals with the given mean and standard deviation. */
  normalArray(n: number, mean?: number, std?: number): Float64Array;
  normalArray(n: number, mean: number, std: number, dtype: 'f32'): Float32Array;
  normalArray(n: number, mean: number, std: number, dtype: 'f64'): Float64Array;
  /** Fills `out` with uniforms in [lo, hi) (in element order) and returns it. */
  fillUniform<T extends Float32Array | Float64Array>(out: T, lo?: number, hi?: number): T;
  /** Fills `out` with normals N(mean, std^2) (in element order) and returns it. */
  fillNormal<T extends Float32Array | Float64Array>(out: T, mean?: number, std?: number): T;
  /**
   * A new generator whose stream is independent of this one: it takes four outputs of this
   * generator, two as the child's 64-bit seed and two as its 64-bit stream selector.
   * Deterministic: the same parent state always forks the same child.
   */
  fork(): Rng;
  /** A JSON-safe snapshot of the full state (for checkpoints); see {@link restoreRng}. */
  saveState(): RngState;
}

/** Serializable generator state: 64-bit values as 16-digit hex strings. */
export interface RngState {
  readonly algorithm: 'pcg32';
  readonly state: string;
  readonly inc: string;
  /** The cached second Box-Muller output, or null. */
  readonly spareNormal: number | null;
}

/** A 64-bit seed or stream number: a non-negative safe integer or a bigint (taken mod 2^64). */
export type Seed64 = number | bigint;

const TWO_32 = 4294967296;
const TWO_53 = 9007199254740992;
const TWO_26 = 67108864;
// The PCG multiplier 6364136223846793005 = 0x5851f42d_4c957f2d.
const MUL_HI = 0x5851f42d;
const MUL_LO = 0x4c957f2d;

/** High 32 bits of the 64-bit product of two unsigned 32-bit integers (exact in float64). */
function mulHigh32(a: number, b: number): number {
  const a1 = a >>> 16;
  const a0 = a & 0xffff;
  const b1 = b >>> 16;
  const b0 = b & 0xffff;
  const mid = a1 * b0 + a0 * b1; // < 2^33
  const low = a0 * b0 + (mid % 65536) * 65536; // < 2^33
  return (a1 * b1 + Math.floor(mid / 65536) + Math.floor(low / TWO_32)) >>> 0;
}

function splitSeed(value: Seed64, what: string): [hi: number, lo: number] {
  if (typeof value === 'bigint') {
    const v = BigInt.asUintN(64, value);
    return [Number(v >> 32n), Number(v & 0xffffffffn)];
  }
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new CoreError(
      'RNG_SEED_INVALID',
      `Random ${what} must be a non-negative safe integer or a bigint, got ${value}.`,
      { [what]: value },
    );
  }
  return [Math.floor(value / TWO_32), value >>> 0];
}

function hex64(hi: number, lo: number): string {
  return hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');
}

function parseHex64(text: string, what: string): [number, number] {
  if (!/^[0-9a-f]{16}$/i.test(text)) {
    throw new CoreError(
      'RNG_STATE_INVALID',
      `Saved random ${what} must be 16 hex digits, got "${text}".`,
    );
  }
  return [Number.parseInt(text.slice(0, 8), 16), Number.parseInt(text.slice(8), 16)];
}

class Pcg32 implements Rng {
  private stateHi = 0;
  private stateLo = 0;
  private incHi = 0;
  private incLo = 1;
  private spare: number | null = null;

  static seeded(initState: Seed64, initSeq: Seed64): Pcg32 {
    const [seedHi, seedLo] = splitSeed(initState, 'seed');
    const [seqHi, seqLo] = splitSeed(initSeq, 'stream');
    const rng = new Pcg32();
    // pcg32_srandom_r: state = 0; inc = (initseq << 1) | 1; step; state += initstate; step.
    rng.incHi = ((seqHi << 1) | (seqLo >>> 31)) >>> 0;
    rng.incLo = ((seqLo << 1) | 1) >>> 0;
    rng.nextUint32();
    const lo = rng.stateLo + seedLo;
    rng.stateLo = lo >>> 0;
    rng.stateHi = (rng.stateHi + seedHi + (lo >= TWO_32 ? 1 : 0)) >>> 0;
    rng.nextUint32();
    return rng;
  }

  static restored(saved: RngState): Pcg32 {
    if (saved?.algorithm !== 'pcg32') {
      throw new CoreError(
        'RNG_STATE_INVALID',
        `Saved random state has algorithm ${JSON.stringify(saved?.algorithm)}; only "pcg32" is supported.`,
      );
    }
    const rng = new Pcg32();
    [rng.stateHi, rng.stateLo] = parseHex64(saved.state, 'state');
    [rng.incHi, rng.incLo] = parseHex64(saved.inc, 'inc');
    if ((rng.incLo & 1) === 0) {
      throw new CoreError('RNG_STATE_INVALID', `Saved random inc must be odd, got ${saved.inc}.`);
    }
    rng.spare = typeof saved.spareNormal === 'number' ? saved.spareNormal : null;
    return rng;
  }

  nextUint32(): number {
    const hi = this.stateHi;
    const lo = this.stateLo;
    // state = state * MUL + inc (mod 2^64), on 32-bit halves.
    const prodLo = Math.imul(lo, MUL_LO) >>> 0;
    const prodHi = (mulHigh32(lo, MUL_LO) + Math.imul(hi, MUL_LO) + Math.imul(lo, MUL_HI)) >>> 0;
    const sumLo = prodLo + this.incLo;
    this.stateLo = sumLo >>> 0;
    this.stateHi = (prodHi + this.incHi + (sumLo >= TWO_32 ? 1 : 0)) >>> 0;
    // Output XSH-RR of the OLD state: xorshifted = ((old >> 18) ^ old) >> 27, rot = old >> 59.
    const xHi = hi ^ (hi >>> 18);
    const xLo = lo ^ ((lo >>> 18) | (hi << 14));
    const xorshifted = ((xLo >>> 27) | (xHi << 5)) >>> 0;
    const rot = hi >>> 27;
    return ((xorshifted >>> rot) | (xorshifted << (-rot & 31))) >>> 0;
  }

  uniform(): number {
    const a = this.nextUint32() >>> 5;
    const b = this.nextUint32() >>> 6;
    return (a * TWO_26 + b) / TWO_53;
  }

  integer(bound: number): number {
    if (!Number.isInteger(bound) || bound < 1 || bound > TWO_32) {
      throw new CoreError(
        'RNG_BOUND_INVALID',
        `integer(bound) needs an integer bound in [1, 2^32], got ${bound}.`,
        {
          bound,
        },
      );
    }
    // Reject the lowest (2^32 mod bound) outputs so every residue is equally likely.
    const threshold = (TWO_32 - bound) % bound;
    for (;;) {
      const r = this.nextUint32();
      if (r >= threshold) return r % bound;
    }
  }

  normal(): number {
    if (this.spare !== null) {
      const z = this.spare;
      this.spare = null;
      return z;
    }
    const u1 = 1 - this.uniform(); // (0, 1]: log stays finite
    const u2 = this.uniform();
    const radius = Math.sqrt(-2 * Math.log(u1));
    const angle = 2 * Math.PI * u2;
    this.spare = radius * Math.sin(angle);
    return radius * Math.cos(angle);
  }

  bernoulli(p: number): boolean {
    if (!(p >= 0 && p <= 1)) {
      throw new CoreError('RNG_PROBABILITY_INVALID', `bernoulli(p) needs p in [0, 1], got ${p}.`, {
        p,
      });
    }
    return this.uniform() < p;
  }

  permutation(n: number): Uint32Array {
    if (!Number.isSafeInteger(n) || n < 0 || n > TWO_32) {
      throw new CoreError(
        'RNG_BOUND_INVALID',
        `permutation(n) needs an integer n in [0, 2^32], got ${n}.`,
        { n },
      );
    }
    const out = new Uint32Array(n);
    for (let i = 0; i < n; i++) out[i] = i;
    for (let i = n; i > 1; i--) {
      const j = this.integer(i);
      const t = out[j];
      out[j] = out[i - 1];
      out[i - 1] = t;
    }
    return out;
  }

  uniformArray(
    n: number,
    lo = 0,
    hi = 1,
    dtype: 'f32' | 'f64' = 'f64',
  ): Float64Array & Float32Array {
    const out = dtype === 'f32' ? new Float32Array(n) : new Float64Array(n);
    return this.fillUniform(out, lo, hi) as Float64Array & Float32Array;
  }

  normalArray(
    n: number,
    mean = 0,
    std = 1,
    dtype: 'f32' | 'f64' = 'f64',
  ): Float64Array & Float32Array {
    const out = dtype === 'f32' ? new Float32Array(n) : new Float64Array(n);
    return this.fillNormal(out, mean, std) as Float64Array & Float32Array;
  }

  fillUniform<T extends Float32Array | Float64Array>(out: T, lo = 0, hi = 1): T {
    checkFinite({ lo, hi });
    const width = hi - lo;
    for (let i = 0; i < out.length; i++) out[i] = lo + width * this.uniform();
    return out;
  }

  fillNormal<T extends Float32Array | Float64Array>(out: T, mean = 0, std = 1): T {
    checkFinite({ mean, std });
    for (let i = 0; i < out.length; i++) out[i] = mean + std * this.normal();
    return out;
  }

  fork(): Rng {
    const seed = BigInt(this.nextUint32()) * BigInt(TWO_32) + BigInt(this.nextUint32());
    const stream = BigInt(this.nextUint32()) * BigInt(TWO_32) + BigInt(this.nextUint32());
    return Pcg32.seeded(seed, stream);
  }

  saveState(): RngState {
    return {
      algorithm: 'pcg32',
      state: hex64(this.stateHi, this.stateLo),
      inc: hex64(this.incHi, this.incLo),
      spareNormal: this.spare,
    };
  }
}

function checkFinite(values: Record<string, number>): void {
  for (const [name, v] of Object.entries(values)) {
    if (!Number.isFinite(v)) {
      throw new CoreError(
        'RNG_PARAMETER_INVALID',
        `Random parameter ${name} must be finite, got ${v}.`,
        {
          [name]: v,
        },
      );
    }
  }
}

/**
 * Creates a PCG32 generator: `seed` is the reference `initstate`, `stream` the `initseq`
 * (default 0). Different streams with the same seed give different sequences.
 *
 * @example
 * const rng = createRng(42, 54);
 * rng.nextUint32(); // 0xa15c02b7, as the PCG reference demo prints
 */
export function createRng(seed: Seed64, stream: Seed64 = 0): Rng {
  return Pcg32.seeded(seed, stream);
}

/** Rebuilds a generator from {@link Rng.saveState}; it continues exactly where the saved one was. */
export function restoreRng(saved: RngState): Rng {
  return Pcg32.restored(saved);
}
