import { TrainError } from '../errors.js';
import { type Example, IGNORE_INDEX } from './example.js';

/**
 * A micro-batch laid out for a static-shape training graph: `batchSize` rows of `seqLen` tokens,
 * real tokens first (right padding). Padding positions have mask 0 and label -100; rows beyond
 * the real ones (an epoch's last, partial batch) are all padding, so they add nothing to the loss
 * or the gradients. Arrays are row-major [batchSize, seqLen].
 */
export interface MicroBatch {
  readonly batchSize: number;
  readonly seqLen: number;
  readonly inputIds: Int32Array;
  /** 1 for a real token, 0 for padding. */
  readonly attentionMask: Uint8Array;
  /** Label of each position (the token itself or -100); position t is scored against labels[t+1]. */
  readonly labels: Int32Array;
  /** Rows holding an example. */
  readonly rows: number;
  /** Real tokens in the micro-batch. */
  readonly tokens: number;
  /** Positions whose next-token label is not -100: the loss's denominator contribution. */
  readonly labelTokens: number;
}

/** Builds a right-padded micro-batch from examples (at most `batchSize`, each at most `seqLen` long). */
export function buildMicroBatch(
  examples: readonly Example[],
  batchSize: number,
  seqLen: number,
  padId = 0,
): MicroBatch {
  if (examples.length > batchSize || examples.some((e) => e.inputIds.length > seqLen)) {
    throw new TrainError(
      'INTERNAL',
      `micro-batch of ${examples.length} rows (longest ${Math.max(...examples.map((e) => e.inputIds.length))}) does not fit [${batchSize}, ${seqLen}].`,
    );
  }
  const inputIds = new Int32Array(batchSize * seqLen).fill(padId);
  const attentionMask = new Uint8Array(batchSize * seqLen);
  const labels = new Int32Array(batchSize * seqLen).fill(IGNORE_INDEX);
  let tokens = 0;
  let labelTokens = 0;
  examples.forEach((e, b) => {
    const n = e.inputIds.length;
    inputIds.set(e.inputIds, b * seqLen);
    labels.set(e.labels, b * seqLen);
    attentionMask.fill(1, b * seqLen, b * seqLen + n);
    tokens += n;
    for (let t = 1; t < n; t++) if (e.labels[t] !== IGNORE_INDEX) labelTokens++;
  });
  return {
    batchSize,
    seqLen,
    inputIds,
    attentionMask,
    labels,
    rows: examples.length,
    tokens,
    labelTokens,
  };
}
