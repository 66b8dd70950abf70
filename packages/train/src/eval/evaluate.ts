import { type Example, IGNORE_INDEX } from '../data/example.js';
import type { EvalModel } from './eval-model.js';

/** Mean next-token loss over a dataset. */
export interface LossReport {
  /** Sum of token cross-entropies / number of predicted label tokens (the training loss's rule). */
  readonly loss: number;
  readonly perplexity: number;
  readonly tokens: number;
}

/**
 * The loss of a model over examples, batches of `batchSize` rows in file order, right-padded to
 * the longest row of each batch. Cross-entropy from the logits in float64 (log-sum-exp per
 * predicted position).
 */
export async function evaluateLoss(
  model: EvalModel,
  examples: readonly Example[],
  batchSize: number,
): Promise<LossReport> {
  let lossSum = 0;
  let tokens = 0;
  const V = model.config.vocabSize;
  for (let start = 0; start < examples.length; start += batchSize) {
    const rows = examples.slice(start, start + batchSize);
    const T = Math.max(...rows.map((e) => e.inputIds.length));
    const ids = rows.map((e) =>
      Array.from({ length: T }, (_, t) => (t < e.inputIds.length ? e.inputIds[t] : 0)),
    );
    const mask = rows.map((e) =>
      Array.from({ length: T }, (_, t) => (t < e.inputIds.length ? 1 : 0)),
    );
    const logits = (await model.logits(ids, mask)).data; // [rows, T, V]
    rows.forEach((e, b) => {
      for (let t = 0; t + 1 < e.inputIds.length; t++) {
        const label = e.labels[t + 1];
        if (label === IGNORE_INDEX) continue;
        const base = (b * T + t) * V;
        let max = Number.NEGATIVE_INFINITY;
        for (let v = 0; v < V; v++) max = Math.max(max, logits[base + v]);
        let z = 0;
        for (let v = 0; v < V; v++) z += Math.exp(logits[base + v] - max);
        lossSum += max + Math.log(z) - logits[base + label];
        tokens++;
      }
    });
  }
  const loss = tokens > 0 ? lossSum / tokens : Number.NaN;
  return { loss, perplexity: Math.exp(loss), tokens };
}

/** Exact match of greedy completions against the reference completions. */
export interface ExactMatchReport {
  /** Rows with a prompt and a completion that were generated. */
  readonly rows: number;
  readonly matches: number;
  readonly accuracy: number;
}

/** A prompt/completion row as token ids: the model is given `prompt` and must produce `completion`. */
export interface CompletionCase {
  readonly prompt: readonly number[];
  readonly completion: readonly number[];
}

/**
 * Greedy decoding (argmax each step) of every prompt through the runtime's token stepper, as many
 * tokens as the reference completion has; a row matches when every generated token equals the
 * reference's (a reference ending in EOS must produce that EOS).
 */
export async function exactMatch(
  model: EvalModel,
  cases: readonly CompletionCase[],
  batchSize: number,
): Promise<ExactMatchReport> {
  let matches = 0;
  for (let start = 0; start < cases.length; start += batchSize) {
    const rows = cases.slice(start, start + batchSize);
    const stepper = model.stepper(rows.length);
    try {
      const ok = rows.map(() => true);
      let logits = await stepper.start(rows.map((r) => r.prompt));
      const longest = Math.max(...rows.map((r) => r.completion.length));
      for (let k = 0; k < longest; k++) {
        const next = logits.map((l) => argmax(l));
        rows.forEach((r, i) => {
          if (k < r.completion.length && next[i] !== r.completion[k]) ok[i] = false;
        });
        if (k + 1 < longest) logits = await stepper.step(next);
      }
      matches += ok.filter(Boolean).length;
    } finally {
      await stepper.dispose();
    }
  }
  return {
    rows: cases.length,
    matches,
    accuracy: cases.length > 0 ? matches / cases.length : Number.NaN,
  };
}

function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** The prompt/completion split of examples whose labels start with -100 and end trained. */
export function completionCases(examples: readonly Example[]): CompletionCase[] {
  const out: CompletionCase[] = [];
  for (const e of examples) {
    const first = e.labels.findIndex((l) => l !== IGNORE_INDEX);
    if (first <= 0) continue;
    if (e.labels.subarray(first).some((l) => l === IGNORE_INDEX)) continue;
    out.push({
      prompt: Array.from(e.inputIds.subarray(0, first)),
      completion: Array.from(e.inputIds.subarray(first)),
    });
  }
  return out;
}
