import { RuntimeError } from '../errors.js';

/**
 * How the next token is chosen from a row of logits.
 *
 * Order of operations (the same as Hugging Face transformers' `generate`):
 * repetition penalty → temperature → top-k → top-p → softmax → draw.
 * Temperature 0 is greedy decoding: the argmax (after the repetition penalty), ties to the lowest id.
 */
export interface SamplingOptions {
  /** Divides the logits; 0 means greedy. Default 0. */
  temperature?: number;
  /** Keep only the k most likely tokens (exactly k: ties at the cut go to the lower id). 0 or absent: off. */
  topK?: number;
  /**
   * Nucleus sampling: keep the smallest set of most likely tokens whose probability (after
   * temperature and top-k, renormalised) sums to at least p. 1 or absent: off.
   */
  topP?: number;
  /**
   * Penalise tokens already in the sequence (prompt and generated), as CTRL / transformers do:
   * a positive logit is divided by it, a negative one multiplied. 1 or absent: off.
   */
  repetitionPenalty?: number;
}

/** A filtered, renormalised next-token distribution, most likely first (ties: lower id first). */
export interface TokenDistribution {
  ids: Int32Array;
  probs: Float64Array;
}

/** Checks sampling options; throws `SAMPLING_OPTIONS_INVALID` naming the bad one. */
export function validateSamplingOptions(options: SamplingOptions): void {
  const { temperature, topK, topP, repetitionPenalty } = options;
  const bad = (what: string, value: unknown) =>
    new RuntimeError('SAMPLING_OPTIONS_INVALID', `${what}, got ${value}.`, {
      option: what.split(' ')[0],
      value,
    });
  if (temperature !== undefined && !(Number.isFinite(temperature) && temperature >= 0)) {
    throw bad('temperature must be a finite number >= 0 (0 = greedy)', temperature);
  }
  if (topK !== undefined && !(Number.isSafeInteger(topK) && topK >= 0))
    throw bad('topK must be an integer >= 0 (0 = off)', topK);
  if (topP !== undefined && !(topP > 0 && topP <= 1))
    throw bad('topP must be in (0, 1] (1 = off)', topP);
  if (
    repetitionPenalty !== undefined &&
    !(Number.isFinite(repetitionPenalty) && repetitionPenalty > 0)
  ) {
    throw bad('repetitionPenalty must be a finite number > 0 (1 = off)', repetitionPenalty);
  }
}

/** Index of the largest logit; ties go to the lowest id. Throws on NaN. */
export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  let bestValue = logits[0];
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i];
    if (Number.isNaN(v)) throw nanLogits(i);
    if (v > bestValue) {
      bestValue = v;
      best = i;
    }
  }
  return best;
}

/**
 * Returns a copy of `logits` with every id in `previous` penalised once (see
 * {@link SamplingOptions.repetitionPenalty}). The input is not modified.
 */
export function applyRepetitionPenalty(
  logits: Float32Array,
  previous: Iterable<number>,
  penalty: number,
): Float32Array {
  const out = new Float32Array(logits);
  if (penalty === 1) return out;
  const seen = new Set<number>();
  for (const id of previous) {
    if (seen.has(id) || id < 0 || id >= out.length) continue;
    seen.add(id);
    const v = out[id];
    out[id] = v > 0 ? v / penalty : v * penalty;
  }
  return out;
}

/**
 * The distribution a draw would use for temperature > 0: softmax(logits / temperature),
 * restricted by top-k then top-p, renormalised. Computed in float64.
 */
export function samplingDistribution(
  logits: ArrayLike<number>,
  options: SamplingOptions,
): TokenDistribution {
  const kept = keptWeights(logits, options);
  const weights = kept.weights;
  const ids = kept.ids ?? allIds(weights.length);
  sortByWeight(ids, weights);
  let sum = 0;
  for (let j = 0; j < ids.length; j++) sum += weights[ids[j]];
  const probs = new Float64Array(ids.length);
  for (let j = 0; j < ids.length; j++) probs[j] = weights[ids[j]] / sum;
  return { ids, probs };
}

/**
 * Chooses the next token: greedy when temperature is 0, else one draw from
 * {@link samplingDistribution}: the inverse of its cumulative distribution at `uniform()`,
 * walking the kept ids in ascending id order. `uniform` returns floats in [0, 1) (e.g. `rng.uniform`
 * of @lora/core's `createRng`); `previous` is the sequence so far, for the repetition penalty.
 * Cost: O(vocab) plus sorting the nucleus when top-p is on; no full sort of the vocabulary.
 */
export function sampleToken(
  logits: Float32Array,
  options: SamplingOptions,
  uniform: () => number,
  previous: readonly number[] = [],
): number {
  const penalty = options.repetitionPenalty ?? 1;
  const scores = penalty === 1 ? logits : applyRepetitionPenalty(logits, previous, penalty);
  if ((options.temperature ?? 0) === 0) return argmax(scores);
  const { ids, weights } = keptWeights(scores, options);
  if (ids === null) {
    // No filter: every id, in id order.
    let sum = 0;
    for (let i = 0; i < weights.length; i++) sum += weights[i];
    const target = uniform() * sum;
    let cumulative = 0;
    for (let i = 0; i < weights.length; i++) {
      cumulative += weights[i];
      if (target < cumulative) return i;
    }
    return weights.length - 1; // target within rounding of the sum
  }
  ids.sort();
  let sum = 0;
  for (let j = 0; j < ids.length; j++) sum += weights[ids[j]];
  const target = uniform() * sum;
  let cumulative = 0;
  for (let j = 0; j < ids.length; j++) {
    cumulative += weights[ids[j]];
    if (target < cumulative) return ids[j];
  }
  return ids[ids.length - 1];
}

/**
 * Unnormalised probabilities `weights[i] = exp((logit_i - max) / T)` (the largest is 1) and
 * the ids that survive top-k then top-p, in no particular order (null: no filter, all ids).
 */
function keptWeights(
  logits: ArrayLike<number>,
  options: SamplingOptions,
): { ids: Int32Array | null; weights: Float64Array } {
  validateSamplingOptions(options); // a few comparisons; guards the loops below
  const temperature = options.temperature ?? 0;
  if (!(temperature > 0)) {
    throw new RuntimeError(
      'SAMPLING_OPTIONS_INVALID',
      'sampling needs temperature > 0; temperature 0 is greedy (use argmax).',
    );
  }
  const vocab = logits.length;
  const maxLogit = logits[argmax(logits)];
  if (!Number.isFinite(maxLogit)) {
    throw new RuntimeError(
      'LOGITS_INVALID',
      `the largest logit is ${maxLogit}; the model produced no usable distribution.`,
    );
  }
  const weights = new Float64Array(vocab);
  const topK = options.topK ?? 0;
  const topP = options.topP ?? 1;
  // Top-k on the logits (same order as the weights) so that only the k survivors need exp.
  let ids = topK > 0 && topK < vocab ? topKIds(logits, topK) : null;
  if (ids) for (const id of ids) weights[id] = Math.exp((logits[id] - maxLogit) / temperature);
  else for (let i = 0; i < vocab; i++) weights[i] = Math.exp((logits[i] - maxLogit) / temperature);
  if (topP < 1) ids = nucleusIds(weights, ids, topP);
  return { ids, weights };
}

function allIds(vocab: number): Int32Array {
  const ids = new Int32Array(vocab);
  for (let i = 0; i < vocab; i++) ids[i] = i;
  return ids;
}

/** The k ids of largest value; ties at the k-th value go to the lower ids. */
function topKIds(weights: ArrayLike<number>, k: number): Int32Array {
  const threshold = kthLargest(Float64Array.from(weights), k);
  const ids = new Int32Array(k);
  let n = 0;
  for (let i = 0; i < weights.length; i++) if (weights[i] > threshold) ids[n++] = i;
  for (let i = 0; i < weights.length && n < k; i++) if (weights[i] === threshold) ids[n++] = i;
  return ids;
}

/** The k-th largest value (k >= 1) by quickselect, O(n) on average; reorders `values`. */
function kthLargest(values: Float64Array, k: number): number {
  let lo = 0;
  let hi = values.length - 1;
  const want = k - 1; // index in descending order
  while (lo < hi) {
    const pivot = values[(lo + hi) >>> 1];
    let i = lo;
    let j = hi;
    // Hoare partition, descending: [lo, j] >= pivot >= [i, hi]
    while (i <= j) {
      while (values[i] > pivot) i++;
      while (values[j] < pivot) j--;
      if (i <= j) {
        const t = values[i];
        values[i] = values[j];
        values[j] = t;
        i++;
        j--;
      }
    }
    if (want <= j) hi = j;
    else if (want >= i) lo = i;
    else return values[want];
  }
  return values[want];
}

/**
 * The nucleus: the smallest most-likely subset of `candidates` (all ids when null) whose weight
 * reaches `topP` of the candidates' total, ties at the cut going to the lower ids; the same set
 * as sorting by weight and cutting the cumulative sum, found without a sort by three-way
 * partitioning around pivot weights (quickselect on mass), O(n) on average.
 */
function nucleusIds(
  weights: Float64Array,
  candidates: Int32Array | null,
  topP: number,
): Int32Array {
  const pool = candidates ?? heavyIds(weights, topP);
  let total = 0;
  if (candidates) for (let j = 0; j < pool.length; j++) total += weights[pool[j]];
  else for (let i = 0; i < weights.length; i++) total += weights[i];
  let needed = topP * total; // mass still to collect from the current ids
  // Three buffers take turns: the current ids, and the heavier / lighter side of a partition.
  const buffers = [pool, new Int32Array(pool.length), new Int32Array(pool.length)];
  let current = 0;
  let n = pool.length;
  const kept = new Int32Array(pool.length);
  let keptCount = 0;
  for (;;) {
    const ids = buffers[current];
    const heavier = buffers[(current + 1) % 3];
    const lighter = buffers[(current + 2) % 3];
    const pivot = median3(weights[ids[0]], weights[ids[n >> 1]], weights[ids[n - 1]]);
    const equal: number[] = [];
    let nHeavier = 0;
    let nLighter = 0;
    let massHeavier = 0;
    let massEqual = 0;
    for (let j = 0; j < n; j++) {
      const id = ids[j];
      const w = weights[id];
      if (w > pivot) {
        heavier[nHeavier++] = id;
        massHeavier += w;
      } else if (w === pivot) {
        equal.push(id);
        massEqual += w;
      } else lighter[nLighter++] = id;
    }
    if (massHeavier >= needed) {
      current = (current + 1) % 3; // the nucleus ends among the heavier ids
      n = nHeavier;
      continue;
    }
    for (let j = 0; j < nHeavier; j++) kept[keptCount++] = heavier[j];
    if (massHeavier + massEqual >= needed || nLighter === 0) {
      // The cut falls among the ties at `pivot`: take the lowest ids until the mass is reached.
      equal.sort((a, b) => a - b);
      let remaining = needed - massHeavier;
      for (const id of equal) {
        kept[keptCount++] = id;
        remaining -= pivot;
        if (remaining <= 0) break;
      }
      return kept.slice(0, keptCount);
    }
    for (const id of equal) kept[keptCount++] = id;
    needed -= massHeavier + massEqual;
    current = (current + 2) % 3;
    n = nLighter;
  }
}

/**
 * A shortcut for the whole vocabulary: the ids of weight >= 1e-3 (the largest weight is 1) when
 * they already hold `topP` of the total (then the nucleus is among them), else every id.
 */
function heavyIds(weights: Float64Array, topP: number): Int32Array {
  const floor = 1e-3;
  const heavy = new Int32Array(weights.length);
  let n = 0;
  let heavyMass = 0;
  let total = 0;
  for (let i = 0; i < weights.length; i++) {
    const w = weights[i];
    total += w;
    if (w >= floor) {
      heavy[n++] = i;
      heavyMass += w;
    }
  }
  return heavyMass >= topP * total ? heavy.subarray(0, n) : allIds(weights.length);
}

function median3(a: number, b: number, c: number): number {
  return Math.max(Math.min(a, b), Math.min(Math.max(a, b), c));
}

/** Sorts ids in place: larger weight first, then lower id. */
function sortByWeight(ids: Int32Array, weights: Float64Array): void {
  ids.sort((a, b) => weights[b] - weights[a] || a - b);
}

function nanLogits(index: number): RuntimeError {
  return new RuntimeError(
    'LOGITS_INVALID',
    `logit ${index} is NaN; the model produced no usable distribution (check the weights for NaN/Inf).`,
    { index },
  );
}
