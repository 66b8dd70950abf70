import { RuntimeError } from '../../errors.js';

/**
 * Rotary position embedding as transformers computes it (`ROPE_INIT_FUNCTIONS` in
 * `modeling_rope_utils.py`). `dynamic` and `longrope` depend on the call's largest position id,
 * which the graph reads from its position ids.
 */
export type RopeScaling =
  | { readonly type: 'linear'; readonly factor: number }
  | {
      /** NTK scaling: beyond `maxPositionEmbeddings` the base grows with the sequence length. */
      readonly type: 'dynamic';
      readonly factor: number;
      readonly maxPositionEmbeddings: number;
    }
  | {
      readonly type: 'llama3';
      readonly factor: number;
      readonly lowFreqFactor: number;
      readonly highFreqFactor: number;
      readonly originalMaxPositionEmbeddings: number;
    }
  | {
      readonly type: 'yarn';
      readonly factor: number;
      readonly originalMaxPositionEmbeddings: number;
      readonly betaFast: number;
      readonly betaSlow: number;
      /** Round the correction range outward to whole dimensions (transformers' default). */
      readonly truncate: boolean;
    }
  | {
      readonly type: 'longrope';
      /** Per-frequency divisors while the sequence fits `originalMaxPositionEmbeddings`. */
      readonly shortFactor: readonly number[];
      /** Per-frequency divisors once a call's largest position id reaches it. */
      readonly longFactor: readonly number[];
      readonly originalMaxPositionEmbeddings: number;
    };

/** The rope of a model: base, optional scaling, and the factor cos and sin are multiplied by. */
export interface Rope {
  readonly theta: number;
  readonly scaling?: RopeScaling;
  /** transformers' `attention_scaling` (yarn's mscale, longrope's attention factor); 1 otherwise. */
  readonly attentionScaling: number;
}

/** Rope types transformers knows that this runtime refuses, and why. */
const REFUSED: Record<string, string> = {
  proportional:
    'proportional rope (partial rotary with zero frequencies) is not a LLaMA-family rope',
};
const SUPPORTED = ['default', 'linear', 'dynamic', 'llama3', 'yarn', 'longrope'];

function invalid(source: string, field: string, message: string): RuntimeError {
  return new RuntimeError('CONFIG_INVALID', `${source}: ${field} ${message}`, {
    file: source,
    field,
  });
}

function num(
  r: Record<string, unknown>,
  key: string,
  where: string,
  source: string,
  fallback?: number,
): number {
  const v = r[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw invalid(
      source,
      `"${where}.${key}"`,
      v === undefined ? 'is missing.' : `must be a positive number, got ${JSON.stringify(v)}.`,
    );
  }
  return v;
}

function factors(
  r: Record<string, unknown>,
  key: string,
  where: string,
  source: string,
  half: number,
): number[] {
  const v = r[key];
  if (!Array.isArray(v) || v.length !== half || v.some((x) => typeof x !== 'number' || !(x > 0))) {
    throw invalid(
      source,
      `"${where}.${key}"`,
      `must be a list of ${half} positive numbers (head_dim / 2), got ${JSON.stringify(v)?.slice(0, 80)}.`,
    );
  }
  return v as number[];
}

/** yarn's `get_mscale`. */
function yarnMscale(scale: number, mscale = 1): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

/**
 * Reads the rope of a config in either spelling: transformers 5's `rope_parameters`
 * (`{rope_type, rope_theta, factor, ...}`) or the older top-level `rope_theta` plus
 * `rope_scaling` (`type` or `rope_type`). As in transformers, `rope_scaling` wins over
 * `rope_parameters`, values inside the dict win over top-level ones, and a top-level
 * `original_max_position_embeddings` (Phi-3 style) wins over the dict's. Every rope type
 * transformers knows is either implemented exactly or refused by name.
 */
export function parseRope(
  c: Record<string, unknown>,
  headDim: number,
  maxPositionEmbeddings: number | undefined,
  source: string,
): Rope {
  const rawScaling = c.rope_scaling ?? undefined;
  const raw = rawScaling ?? c.rope_parameters ?? undefined;
  const where = rawScaling !== undefined ? 'rope_scaling' : 'rope_parameters';
  if (raw !== undefined && raw !== null && (typeof raw !== 'object' || Array.isArray(raw)))
    throw invalid(source, `"${where}"`, 'must be an object or null.');
  const r = (raw ?? {}) as Record<string, unknown>;
  const nested = Object.values(r).find(
    (v) => typeof v === 'object' && v !== null && !Array.isArray(v),
  );
  if (nested !== undefined) {
    throw invalid(
      source,
      `"${where}"`,
      'holds one rope per layer type (e.g. sliding and full attention layers); this runtime runs one rope for every layer.',
    );
  }
  const theta = num(
    { rope_theta: r.rope_theta ?? c.rope_theta },
    'rope_theta',
    where,
    source,
    10000,
  );
  const partial = r.partial_rotary_factor ?? c.partial_rotary_factor;
  if (partial !== undefined && partial !== null && partial !== 1) {
    throw invalid(
      source,
      '"partial_rotary_factor"',
      `is ${JSON.stringify(partial)}: rotary embeddings on part of each head are not part of LLaMA-family models; only 1 is supported.`,
    );
  }
  const rawType = r.rope_type ?? r.type ?? 'default';
  if (typeof rawType !== 'string')
    throw invalid(source, `"${where}.rope_type"`, `must be a string, got a ${typeof rawType}.`);
  const type = rawType;
  if (REFUSED[type]) {
    throw invalid(source, `"${where}.rope_type"`, `"${type}" is not supported: ${REFUSED[type]}.`);
  }
  if (!SUPPORTED.includes(type)) {
    throw invalid(
      source,
      `"${where}.rope_type"`,
      `"${type}" is not supported (supported: ${SUPPORTED.join(', ')}).`,
    );
  }
  if (type === 'default') return { theta, attentionScaling: 1 };
  if (type === 'linear')
    return {
      theta,
      scaling: { type, factor: num(r, 'factor', where, source) },
      attentionScaling: 1,
    };
  if (type === 'dynamic') {
    const max = num(
      { max_position_embeddings: maxPositionEmbeddings },
      'max_position_embeddings',
      'config',
      source,
    );
    return {
      theta,
      scaling: { type, factor: num(r, 'factor', where, source), maxPositionEmbeddings: max },
      attentionScaling: 1,
    };
  }

  const topOriginal = c.original_max_position_embeddings;
  const original = num(
    { original_max_position_embeddings: topOriginal ?? r.original_max_position_embeddings },
    'original_max_position_embeddings',
    where,
    source,
    maxPositionEmbeddings,
  );
  if (type === 'llama3') {
    return {
      theta,
      scaling: {
        type,
        factor: num(r, 'factor', where, source),
        lowFreqFactor: num(r, 'low_freq_factor', where, source),
        highFreqFactor: num(r, 'high_freq_factor', where, source),
        originalMaxPositionEmbeddings: original,
      },
      attentionScaling: 1,
    };
  }
  // yarn and longrope: a missing factor is the context extension max / original.
  const defaultFactor =
    maxPositionEmbeddings !== undefined ? maxPositionEmbeddings / original : undefined;
  const factor = num(r, 'factor', where, source, defaultFactor);
  const given = r.attention_factor;
  const attentionFactor =
    given === undefined || given === null ? undefined : num(r, 'attention_factor', where, source);
  if (type === 'yarn') {
    const mscale = typeof r.mscale === 'number' ? r.mscale : 0;
    const mscaleAllDim = typeof r.mscale_all_dim === 'number' ? r.mscale_all_dim : 0;
    return {
      theta,
      scaling: {
        type,
        factor,
        originalMaxPositionEmbeddings: original,
        // transformers: `beta_fast or 32`, `beta_slow or 1` (0 and null take the default).
        betaFast: typeof r.beta_fast === 'number' && r.beta_fast !== 0 ? r.beta_fast : 32,
        betaSlow: typeof r.beta_slow === 'number' && r.beta_slow !== 0 ? r.beta_slow : 1,
        truncate: r.truncate !== false,
      },
      attentionScaling:
        attentionFactor ??
        (mscale && mscaleAllDim
          ? yarnMscale(factor, mscale) / yarnMscale(factor, mscaleAllDim)
          : yarnMscale(factor)),
    };
  }
  // longrope
  const half = headDim / 2;
  return {
    theta,
    scaling: {
      type: 'longrope',
      shortFactor: factors(r, 'short_factor', where, source, half),
      longFactor: factors(r, 'long_factor', where, source, half),
      originalMaxPositionEmbeddings: original,
    },
    attentionScaling:
      attentionFactor ?? (factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(original))),
  };
}

/**
 * RoPE inverse frequencies for i < headDim / 2 (HF's rotate-half pairing: i with i + headDim/2),
 * float64, as transformers' rope init functions compute them for a call whose largest position
 * id + 1 is `sequenceLength` (default: a short call). Only `dynamic` (base grown beyond
 * `maxPositionEmbeddings`) and `longrope` (long factors beyond `originalMaxPositionEmbeddings`)
 * depend on it.
 */
export function ropeFrequencies(rope: Rope, headDim: number, sequenceLength = 1): Float64Array {
  const s = rope.scaling;
  const theta =
    s?.type === 'dynamic' ? dynamicBase(rope.theta, s, headDim, sequenceLength) : rope.theta;
  const half = headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / theta ** ((2 * i) / headDim);
  if (!s) return inv;
  switch (s.type) {
    case 'linear':
      return inv.map((f) => f / s.factor);
    case 'dynamic':
      return inv;
    case 'llama3': {
      // Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
      const lowFreqWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
      const highFreqWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
      return inv.map((f) => {
        const wavelen = (2 * Math.PI) / f;
        if (wavelen < highFreqWavelen) return f;
        if (wavelen > lowFreqWavelen) return f / s.factor;
        const smooth =
          (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) /
          (s.highFreqFactor - s.lowFreqFactor);
        return (1 - smooth) * (f / s.factor) + smooth * f;
      });
    }
    case 'yarn': {
      // Dimensions that rotate fewer than beta_slow times over the original context are
      // interpolated (divided by factor), more than beta_fast times kept; a linear ramp between.
      const correctionDim = (rotations: number) =>
        (headDim * Math.log(s.originalMaxPositionEmbeddings / (rotations * 2 * Math.PI))) /
        (2 * Math.log(rope.theta));
      let low = correctionDim(s.betaFast);
      let high = correctionDim(s.betaSlow);
      if (s.truncate) {
        low = Math.floor(low);
        high = Math.ceil(high);
      }
      low = Math.max(low, 0);
      high = Math.min(high, headDim - 1);
      if (low === high) high += 0.001;
      return inv.map((f, i) => {
        const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
        const extrapolation = 1 - ramp;
        return (f / s.factor) * (1 - extrapolation) + f * extrapolation;
      });
    }
    case 'longrope': {
      const ext = sequenceLength > s.originalMaxPositionEmbeddings ? s.longFactor : s.shortFactor;
      return inv.map((f, i) => f / ext[i]);
    }
  }
}

/**
 * Dynamic NTK base for a call whose largest position id + 1 is `sequenceLength`:
 * `theta · (factor · L / max - (factor - 1))^(d / (d - 2))` with `L = max(sequenceLength, max)`,
 * so calls within `max` positions keep `theta`.
 */
export function dynamicBase(
  theta: number,
  s: { readonly factor: number; readonly maxPositionEmbeddings: number },
  headDim: number,
  sequenceLength: number,
): number {
  const len = Math.max(sequenceLength, s.maxPositionEmbeddings);
  return (
    theta *
    ((s.factor * len) / s.maxPositionEmbeddings - (s.factor - 1)) ** (headDim / (headDim - 2))
  );
}
