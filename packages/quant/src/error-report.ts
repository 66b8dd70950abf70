/**
 * Quantization error of one tensor (or a total over several), accumulated in float64.
 * `snrDb = 10 log10(sum x^2 / sum (x - x')^2)`.
 */
export interface ErrorStats {
  readonly count: number;
  readonly sumSquaredError: number;
  readonly sumSquaredSignal: number;
  readonly maxAbsError: number;
  /** Bits stored (codes + statistics) over all parameters. */
  readonly storedBits: number;
  readonly rmse: number;
  readonly snrDb: number;
  /** `storedBits / count`. */
  readonly bitsPerParameter: number;
}

function finish(
  count: number,
  sse: number,
  sss: number,
  maxAbsError: number,
  storedBits: number,
): ErrorStats {
  return {
    count,
    sumSquaredError: sse,
    sumSquaredSignal: sss,
    maxAbsError,
    storedBits,
    rmse: count > 0 ? Math.sqrt(sse / count) : 0,
    snrDb: sse === 0 ? Number.POSITIVE_INFINITY : 10 * Math.log10(sss / sse),
    bitsPerParameter: count > 0 ? storedBits / count : 0,
  };
}

/** Measures the error of `reconstructed` against `original` (same length). */
export function measureError(
  original: ArrayLike<number>,
  reconstructed: ArrayLike<number>,
  storedBits = 0,
): ErrorStats {
  if (original.length !== reconstructed.length)
    throw new RangeError(`lengths differ: ${original.length} vs ${reconstructed.length}`);
  let sse = 0;
  let sss = 0;
  let maxAbs = 0;
  for (let i = 0; i < original.length; i++) {
    const x = original[i];
    const d = x - reconstructed[i];
    sse += d * d;
    sss += x * x;
    const a = Math.abs(d);
    if (a > maxAbs) maxAbs = a;
  }
  return finish(original.length, sse, sss, maxAbs, storedBits);
}

/** The total over several tensors (RMSE and SNR over all values together). */
export function combineErrors(parts: readonly ErrorStats[]): ErrorStats {
  let count = 0;
  let sse = 0;
  let sss = 0;
  let maxAbs = 0;
  let bits = 0;
  for (const p of parts) {
    count += p.count;
    sse += p.sumSquaredError;
    sss += p.sumSquaredSignal;
    maxAbs = Math.max(maxAbs, p.maxAbsError);
    bits += p.storedBits;
  }
  return finish(count, sse, sss, maxAbs, bits);
}

/** A JSON-friendly row: name plus the statistics (Infinity SNR as null). */
export function errorRow(
  name: string,
  s: ErrorStats,
): {
  name: string;
  count: number;
  rmse: number;
  maxAbsError: number;
  snrDb: number | null;
  bitsPerParameter: number;
} {
  return {
    name,
    count: s.count,
    rmse: s.rmse,
    maxAbsError: s.maxAbsError,
    snrDb: Number.isFinite(s.snrDb) ? s.snrDb : null,
    bitsPerParameter: s.bitsPerParameter,
  };
}
