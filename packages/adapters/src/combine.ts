import {
  createRng,
  type LoraConfig,
  qr,
  type Rng,
  svd,
  type Tensor,
  tensor,
  toFloat64Array,
} from '@lora/core';
import { escapePythonRegex } from '@lora/core/internal';
import { type Adapter, type LoraModule, moduleScaling } from './adapter.js';
import { AdapterError } from './errors.js';

/** PEFT `add_weighted_adapter` combination types supported here. */
export type CombinationMethod =
  | 'linear'
  | 'cat'
  | 'svd'
  | 'ties'
  | 'dare_linear'
  | 'dare_ties'
  | 'magnitude_prune';
export const COMBINATION_METHODS: readonly CombinationMethod[] = [
  'linear',
  'cat',
  'svd',
  'ties',
  'dare_linear',
  'dare_ties',
  'magnitude_prune',
];

export interface CombineOptions {
  readonly method: CombinationMethod;
  /** Share of entries kept by ties, dare_linear, dare_ties and magnitude_prune (0 < density <= 1). */
  readonly density?: number;
  /** TIES sign election: `total` = sign of the sum (default), `frequency` = sign of the sum of signs. */
  readonly majoritySignMethod?: 'total' | 'frequency';
  /** svd: rank of the result (default: the largest input rank). */
  readonly rank?: number;
  /** svd: clamp the entries of B and A to ±(this quantile of all their values), PEFT's `svd_clamp`, e.g. 0.99. */
  readonly svdClamp?: number;
  /** Seed of the DARE drop masks (default 0). */
  readonly seed?: number;
}

export interface WeightedAdapter {
  readonly adapter: Adapter;
  /** Default 1. */
  readonly weight?: number;
  readonly label?: string;
}

export interface CombineResult {
  readonly adapter: Adapter;
  readonly warnings: string[];
}

type Values = Float64Array;

/**
 * A new adapter from several, with PEFT's `add_weighted_adapter` semantics (w = weight, s = the
 * adapter's scaling; the result has lora_alpha = r, so its scaling is 1):
 *
 * - `cat`: A = rows of w_i·s_i·A_i, B = columns of B_i; rank = sum of ranks; EXACT:
 *   B·A = Σ w_i s_i B_i A_i.
 * - `svd`: Σ w_i s_i B_i A_i computed exactly, truncated SVD to `rank` (B = U_k S_k, A = V_k^T).
 *   The scaling is applied ONCE; PEFT before 0.21 applied it twice on this path (its delta
 *   already contains the scaling, and it multiplied by weight·scaling again).
 * - `linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`: A and B are combined
 *   separately (A_i weighted by sign(w s)·sqrt(|w s|), B_i by sqrt(|w s|)); equal ranks needed;
 *   NOT the sum of the deltas (cross terms), as in PEFT. Pruning: magnitude keeps the top
 *   `density` share by |x|; DARE drops with probability 1 - density (seeded) and rescales by
 *   1/density; TIES elects a sign per entry on the pruned, unweighted tensors (as PEFT) and
 *   averages the weighted entries whose sign agrees with it.
 *
 * lora_B biases are summed as Σ w_i s_i b_i (exact for every method). DoRA adapters cannot be
 * combined (their magnitudes do not add). rslora is folded in (the result has use_rslora false).
 */
export function combineAdapters(
  inputs: readonly WeightedAdapter[],
  options: CombineOptions,
): CombineResult {
  const { method } = options;
  if (!COMBINATION_METHODS.includes(method)) {
    throw new AdapterError(
      'COMBINE_METHOD_UNKNOWN',
      `Unknown combination method "${method}". Use one of: ${COMBINATION_METHODS.join(', ')}.`,
      { method },
    );
  }
  if (inputs.length === 0)
    throw new AdapterError('COMBINE_NO_ADAPTER', 'Nothing to combine: give at least one adapter.');
  const warnings: string[] = [];
  const label = (i: number) => inputs[i].label ?? `adapter ${i + 1}`;
  const needsDensity =
    method === 'ties' || method.startsWith('dare') || method === 'magnitude_prune';
  const density = options.density;
  if (needsDensity && (density === undefined || !(density > 0 && density <= 1))) {
    throw new AdapterError(
      'COMBINE_DENSITY_INVALID',
      `--density must be in (0, 1] for ${method} (got ${density}).`,
      { density },
    );
  }
  refuseUnusedOptions(options);
  const fanInFanOut = inputs[0].adapter.config.fan_in_fan_out;
  inputs.forEach((inp, i) => {
    if (inp.adapter.config.use_dora || [...inp.adapter.modules.values()].some((m) => m.magnitude)) {
      throw new AdapterError(
        'COMBINE_DORA_UNSUPPORTED',
        `${label(i)} is a DoRA adapter; DoRA magnitudes cannot be combined. Merge it into the base instead.`,
      );
    }
    if (inp.adapter.config.fan_in_fan_out !== fanInFanOut) {
      throw new AdapterError(
        'COMBINE_CONFIG_MISMATCH',
        `${label(i)} has fan_in_fan_out = ${inp.adapter.config.fan_in_fan_out}, ${label(0)} has ${fanInFanOut}: they are for different layer types.`,
      );
    }
  });

  // Every module of any adapter, in a stable order.
  const moduleNames = [...new Set(inputs.flatMap((x) => [...x.adapter.modules.keys()]))].sort();
  if (method === 'svd' && options.rank !== undefined) {
    // The weighted sum has at most the summed input ranks; a larger r is only zero padding.
    const reachable = Math.max(
      ...moduleNames.map((name) =>
        inputs.reduce((acc, x) => acc + (x.adapter.modules.get(name)?.A.shape[0] ?? 0), 0),
      ),
    );
    if (options.rank > reachable) {
      throw new AdapterError(
        'COMBINE_RANK_TOO_LARGE',
        `--rank ${options.rank} is above the rank of any weighted sum of these adapters (at most ${reachable}, the sum of their ranks); the extra rows would be zeros. Use --rank ${reachable} or less (or --method cat, which is exact).`,
        { rank: options.rank, reachable },
      );
    }
  }
  const rng = createRng(options.seed ?? 0);
  const modules = new Map<string, LoraModule>();
  const ranks = new Map<string, number>();

  for (const name of moduleNames) {
    const parts = inputs
      .map((x, i) => ({
        i,
        m: x.adapter.modules.get(name),
        ws: (x.weight ?? 1) * (x.adapter.modules.has(name) ? moduleScaling(x.adapter, name) : 0),
      }))
      .filter((p): p is { i: number; m: LoraModule; ws: number } => p.m !== undefined);
    const first = parts[0].m;
    const inF = first.A.shape[1];
    const outF = first.B.shape[0];
    for (const p of parts) {
      if (
        p.m.A.shape[1] !== inF ||
        p.m.B.shape[0] !== outF ||
        Boolean(p.m.embedding) !== Boolean(first.embedding)
      ) {
        throw new AdapterError(
          'COMBINE_SHAPE_MISMATCH',
          `module ${name}: ${label(p.i)} has A [${p.m.A.shape.join(', ')}] and B [${p.m.B.shape.join(', ')}], ${label(parts[0].i)} has A [${first.A.shape.join(', ')}] and B [${first.B.shape.join(', ')}]; the adapters are for different models.`,
          { module: name },
        );
      }
    }
    if (parts.length < inputs.length && method === 'cat') {
      warnings.push(
        `module ${name} is in ${parts.length} of ${inputs.length} adapters; the others contribute zeros.`,
      );
    }

    let A: Values;
    let B: Values;
    let r: number;
    if (method === 'cat') {
      // Rank = the sum of ALL inputs' ranks at this module (zeros where an adapter lacks it), as PEFT.
      r = inputs.reduce(
        (acc, x) => acc + (x.adapter.modules.get(name)?.A.shape[0] ?? x.adapter.config.r),
        0,
      );
      ({ A, B } = catFactors(inputs, name, r, inF, outF));
    } else if (method === 'svd') {
      r = options.rank ?? Math.max(...parts.map((p) => p.m.A.shape[0]));
      ({ A, B } = svdFactors(parts, r, inF, outF, options.svdClamp));
    } else {
      const rs = new Set(parts.map((p) => p.m.A.shape[0]));
      if (rs.size !== 1) {
        throw new AdapterError(
          'COMBINE_RANK_MISMATCH',
          `module ${name}: ${method} needs equal ranks, got ${[...rs].join(', ')}. Use --method cat (exact) or svd --rank r.`,
          { module: name },
        );
      }
      r = first.A.shape[0];
      const wA = parts.map((p) => Math.sign(p.ws) * Math.sqrt(Math.abs(p.ws)));
      const wB = parts.map((p) => Math.sqrt(Math.abs(p.ws)));
      A = taskArithmetic(
        method,
        parts.map((p) => toFloat64Array(p.m.A)),
        wA,
        options,
        rng,
      );
      B = taskArithmetic(
        method,
        parts.map((p) => toFloat64Array(p.m.B)),
        wB,
        options,
        rng,
      );
    }
    const mod: { -readonly [K in keyof LoraModule]: LoraModule[K] } = {
      A: tensor('f32', [r, inF], Float32Array.from(A)),
      B: tensor('f32', [outF, r], Float32Array.from(B)),
    };
    if (first.embedding) mod.embedding = true;
    const withBias = parts.filter((p) => p.m.bias);
    if (withBias.length > 0) {
      const b = new Float64Array(outF);
      for (const p of withBias) {
        const v = toFloat64Array(p.m.bias!);
        for (let o = 0; o < outF; o++) b[o] += p.ws * v[o];
      }
      mod.bias = tensor('f32', [outF], Float32Array.from(b));
    }
    for (const [part, t] of [
      ['A', mod.A],
      ['B', mod.B],
      ['bias', mod.bias],
    ] as const) {
      const bad = t ? (t.data as Float32Array).findIndex((v) => !Number.isFinite(v)) : -1;
      if (bad >= 0) {
        throw new AdapterError(
          'COMBINE_NOT_FINITE',
          `module ${name}: the combined ${part} has ${(t!.data as Float32Array)[bad]} at flat index ${bad} (beyond float32: a weight or an input value is too large). Nothing was written; use smaller --adapter weights.`,
          { module: name },
        );
      }
    }
    modules.set(name, mod);
    ranks.set(name, r);
  }

  return {
    adapter: {
      config: combinedConfig(inputs, ranks),
      modules,
      modulesToSave: combinedSaved(inputs, warnings),
    },
    warnings,
  };
}

/** Options that the chosen method does not use are refused: silently ignoring them misleads. */
function refuseUnusedOptions(options: CombineOptions): void {
  const { method } = options;
  const unused = (flag: string, usedBy: string) =>
    new AdapterError(
      'COMBINE_OPTION_UNUSED',
      `${flag} does nothing with --method ${method} (it is used by ${usedBy}); drop it or choose another method.`,
      { method, option: flag },
    );
  const pruning = method === 'ties' || method.startsWith('dare') || method === 'magnitude_prune';
  if (options.density !== undefined && !pruning)
    throw unused('--density', 'ties, dare_linear, dare_ties and magnitude_prune');
  if (options.rank !== undefined && method !== 'svd') throw unused('--rank', 'svd');
  if (options.svdClamp !== undefined && method !== 'svd') throw unused('--svd-clamp', 'svd');
  if (options.majoritySignMethod !== undefined && method !== 'ties' && method !== 'dare_ties')
    throw unused('--majority-sign', 'ties and dare_ties');
  if (options.seed !== undefined && !method.startsWith('dare'))
    throw unused('--seed', 'dare_linear and dare_ties');
}

function catFactors(
  inputs: readonly WeightedAdapter[],
  name: string,
  r: number,
  inF: number,
  outF: number,
): { A: Values; B: Values } {
  const A = new Float64Array(r * inF); // [r, in]
  const B = new Float64Array(outF * r); // [out, r]
  let k0 = 0;
  for (const x of inputs) {
    const m = x.adapter.modules.get(name);
    const ri = m?.A.shape[0] ?? x.adapter.config.r;
    if (m) {
      const ws = (x.weight ?? 1) * moduleScaling(x.adapter, name);
      const a = toFloat64Array(m.A);
      for (let j = 0; j < ri * inF; j++) A[k0 * inF + j] = ws * a[j];
      const b = toFloat64Array(m.B);
      for (let o = 0; o < outF; o++) for (let k = 0; k < ri; k++) B[o * r + k0 + k] = b[o * ri + k];
    }
    k0 += ri;
  }
  return { A, B };
}

/**
 * Truncated SVD of Σ w_i s_i B_i A_i without forming it: with Bc = [w_i s_i B_i] [out, R] and
 * Ac = [A_i] [R, in], QR of Bc and of Ac^T gives Bc·Ac = Qb (Rb Ra^T) Qa^T, so the SVD of the
 * small R x R core gives the exact SVD of the sum (R = sum of ranks).
 */
function svdFactors(
  parts: readonly { m: LoraModule; ws: number }[],
  r: number,
  inF: number,
  outF: number,
  clamp?: number,
): { A: Values; B: Values } {
  const R = parts.reduce((a, p) => a + p.m.A.shape[0], 0);
  const Bc = new Float64Array(outF * R);
  const AcT = new Float64Array(inF * R); // Ac^T [in, R]
  let k0 = 0;
  for (const p of parts) {
    const ri = p.m.A.shape[0];
    const a = toFloat64Array(p.m.A);
    const b = toFloat64Array(p.m.B);
    for (let o = 0; o < outF; o++)
      for (let k = 0; k < ri; k++) Bc[o * R + k0 + k] = p.ws * b[o * ri + k];
    for (let k = 0; k < ri; k++) for (let j = 0; j < inF; j++) AcT[j * R + k0 + k] = a[k * inF + j];
    k0 += ri;
  }
  const qb = qr(tensor('f64', [outF, R], Bc)); // q [out, kb], r [kb, R]
  const qa = qr(tensor('f64', [inF, R], AcT)); // q [in, ka], r [ka, R]
  const kb = qb.q.shape[1];
  const ka = qa.q.shape[1];
  const rb = qb.r.data as Float64Array;
  const ra = qa.r.data as Float64Array;
  const core = new Float64Array(kb * ka); // Rb Ra^T
  for (let i = 0; i < kb; i++)
    for (let j = 0; j < ka; j++) {
      let acc = 0;
      for (let k = 0; k < R; k++) acc += rb[i * R + k] * ra[j * R + k];
      core[i * ka + j] = acc;
    }
  const { u, s, vt } = svd(tensor('f64', [kb, ka], core)); // u [kb, kk], vt [kk, ka]
  const kk = s.length;
  const keep = Math.min(r, kk);
  const U = u.data as Float64Array;
  const VT = vt.data as Float64Array;
  const Qb = qb.q.data as Float64Array;
  const Qa = qa.q.data as Float64Array;
  const B = new Float64Array(outF * r); // U_k diag(S_k)
  for (let o = 0; o < outF; o++)
    for (let k = 0; k < keep; k++) {
      let acc = 0;
      for (let t = 0; t < kb; t++) acc += Qb[o * kb + t] * U[t * kk + k];
      B[o * r + k] = acc * s[k];
    }
  const A = new Float64Array(r * inF); // V_k^T
  for (let k = 0; k < keep; k++)
    for (let j = 0; j < inF; j++) {
      let acc = 0;
      for (let t = 0; t < ka; t++) acc += VT[k * ka + t] * Qa[j * ka + t];
      A[k * inF + j] = acc;
    }
  if (clamp !== undefined) {
    const hi = quantile(Float64Array.from([...B, ...A]), clamp);
    for (const arr of [A, B])
      for (let i = 0; i < arr.length; i++) arr[i] = Math.min(hi, Math.max(-hi, arr[i]));
  }
  return { A, B };
}

/** torch.quantile (linear interpolation between order statistics). */
export function quantile(values: Float64Array, q: number): number {
  const sorted = Float64Array.from(values).sort();
  const pos = q * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (pos - lo) * (sorted[hi] - sorted[lo]);
}

/** The non-SVD methods on one tensor list (all A's or all B's) with per-adapter weights. */
function taskArithmetic(
  method: CombinationMethod,
  tensors: Values[],
  weights: number[],
  options: CombineOptions,
  rng: Rng,
): Values {
  const density = options.density ?? 1;
  const n = tensors[0].length;
  let pruned = tensors;
  if (method === 'ties' || method === 'magnitude_prune')
    pruned = tensors.map((t) => magnitudePrune(t, density));
  if (method === 'dare_linear' || method === 'dare_ties')
    pruned = tensors.map((t) => darePrune(t, density, rng));
  if (method === 'linear' || method === 'dare_linear' || method === 'magnitude_prune') {
    const out = new Float64Array(n);
    pruned.forEach((t, i) => {
      for (let j = 0; j < n; j++) out[j] += weights[i] * t[j];
    });
    return out;
  }
  // TIES as PEFT: the sign is elected on the pruned, UNWEIGHTED tensors; an entry takes part
  // when its own (unweighted) sign is the elected one; the agreeing weighted entries are averaged.
  const out = new Float64Array(n);
  const frequency = options.majoritySignMethod === 'frequency';
  for (let j = 0; j < n; j++) {
    let vote = 0;
    for (const t of pruned) vote += frequency ? Math.sign(t[j]) : t[j];
    const elected = vote >= 0 ? 1 : -1;
    let sum = 0;
    let count = 0;
    pruned.forEach((t, i) => {
      if (Math.sign(t[j]) === elected) {
        sum += weights[i] * t[j];
        count++;
      }
    });
    out[j] = sum / Math.max(count, 1);
  }
  return out;
}

/** Keeps the floor(density · n) entries of largest magnitude (ties: lower index first), zeros the rest. */
export function magnitudePrune(t: Values, density: number): Values {
  const k = Math.floor(density * t.length);
  const order = Array.from({ length: t.length }, (_, i) => i).sort(
    (a, b) => Math.abs(t[b]) - Math.abs(t[a]) || a - b,
  );
  const out = new Float64Array(t.length);
  for (let i = 0; i < k; i++) out[order[i]] = t[order[i]];
  return out;
}

/** DARE: keeps each entry with probability `density` (seeded Bernoulli) and rescales it by 1/density. */
export function darePrune(t: Values, density: number, rng: Rng): Values {
  const out = new Float64Array(t.length);
  for (let i = 0; i < t.length; i++) if (rng.bernoulli(density)) out[i] = t[i] / density;
  return out;
}

function combinedConfig(
  inputs: readonly WeightedAdapter[],
  ranks: ReadonlyMap<string, number>,
): LoraConfig {
  const base = inputs[0].adapter.config;
  const counts = new Map<number, number>();
  for (const r of ranks.values()) counts.set(r, (counts.get(r) ?? 0) + 1);
  // The most common rank is r; other modules get exact rank_pattern / alpha_pattern entries.
  const r = [...counts].sort((a, b) => b[1] - a[1] || a[0] - b[0])[0][0];
  const rank_pattern: Record<string, number> = {};
  for (const [name, rm] of ranks) if (rm !== r) rank_pattern[escapePythonRegex(name)] = rm;
  const targets = inputs.map((x) => x.adapter.config.target_modules);
  let target_modules: LoraConfig['target_modules'];
  if (targets.every((t) => Array.isArray(t)))
    target_modules = [...new Set(targets.flat() as string[])].sort();
  else
    target_modules = targets
      // A list entry matches the name itself or a `.entry` suffix: `(.*\.)?entry` under fullmatch.
      .map((t) =>
        Array.isArray(t) ? `(.*\\.)?(${t.map(escapePythonRegex).join('|')})` : String(t),
      )
      .map((t) => `(${t})`)
      .join('|');
  return {
    ...base,
    r,
    lora_alpha: r,
    use_rslora: false,
    use_dora: false,
    rank_pattern,
    alpha_pattern: { ...rank_pattern },
    target_modules,
    lora_bias: inputs.some((x) => x.adapter.config.lora_bias),
    extra: { ...base.extra },
  };
}

function combinedSaved(
  inputs: readonly WeightedAdapter[],
  warnings: string[],
): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  inputs.forEach((x, i) => {
    for (const [p, t] of x.adapter.modulesToSave) {
      if (out.has(p)) {
        warnings.push(
          `saved module parameter ${p} is in several adapters; the first one's is kept (${x.label ?? `adapter ${i + 1}`}'s is dropped).`,
        );
        continue;
      }
      out.set(p, t);
    }
  });
  return out;
}
