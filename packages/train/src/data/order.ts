import { createRng, type Seed64 } from '@lora/core';

/** How examples become optimizer steps (transformers' Trainer rules). */
export interface DataOrderOptions {
  /** Examples in the dataset. */
  readonly numExamples: number;
  /** Rows per micro-batch. */
  readonly batchSize: number;
  /** Micro-batches per optimizer step. */
  readonly gradAccum: number;
  /** A new seeded permutation every epoch (false: file order every epoch). */
  readonly shuffle: boolean;
  readonly seed: Seed64;
}

/**
 * The random stream (PCG32 `stream` argument) of epoch e's permutation, `DATA_ORDER_STREAM + e`:
 * distinct from the dropout stream, so changing the dropout rate never changes the data order.
 */
export const DATA_ORDER_STREAM = 0x1000n;

/** Micro-batches in one epoch: the last, partial batch is kept (no drop_last). */
export function batchesPerEpoch(o: Pick<DataOrderOptions, 'numExamples' | 'batchSize'>): number {
  return Math.ceil(o.numExamples / o.batchSize);
}

/**
 * Optimizer steps in one epoch: ceil(batches / gradAccum). As in transformers' Trainer, an
 * epoch's last step takes only the micro-batches that remain (fewer than gradAccum when they do
 * not divide), and the next epoch starts on a fresh step.
 */
export function stepsPerEpoch(o: Omit<DataOrderOptions, 'shuffle' | 'seed'>): number {
  return Math.ceil(batchesPerEpoch(o) / o.gradAccum);
}

/**
 * The order of the examples in an epoch: file order, or `createRng(seed, DATA_ORDER_STREAM +
 * epoch).permutation(n)` (Fisher-Yates on PCG32; not torch's generator, so a shuffled order differs
 * from PyTorch's for the same seed: compare runs with --no-shuffle).
 */
export function epochOrder(o: DataOrderOptions, epoch: number): Uint32Array {
  if (!o.shuffle) return Uint32Array.from({ length: o.numExamples }, (_, i) => i);
  return createRng(o.seed, DATA_ORDER_STREAM + BigInt(epoch)).permutation(o.numExamples);
}

/** Where a step's data comes from. */
export interface StepData {
  readonly epoch: number;
  /** Example indices of each micro-batch of the step. */
  readonly microBatches: readonly (readonly number[])[];
}

/**
 * The data of optimizer step `step` (0-based), a pure function of the step and the options: the
 * epoch is `floor(step / stepsPerEpoch)`, and inside it batch k holds the next `batchSize` examples
 * of the epoch's order. Being pure, it needs no saved state to resume.
 */
export class DataOrder {
  private cachedEpoch = -1;
  private cachedOrder: Uint32Array = new Uint32Array(0);

  constructor(readonly options: DataOrderOptions) {}

  get stepsPerEpoch(): number {
    return stepsPerEpoch(this.options);
  }

  step(step: number): StepData {
    const { numExamples, batchSize, gradAccum } = this.options;
    const perEpoch = this.stepsPerEpoch;
    const epoch = Math.floor(step / perEpoch);
    if (epoch !== this.cachedEpoch) {
      this.cachedOrder = epochOrder(this.options, epoch);
      this.cachedEpoch = epoch;
    }
    const firstBatch = (step % perEpoch) * gradAccum;
    const lastBatch = Math.min(firstBatch + gradAccum, batchesPerEpoch(this.options));
    const microBatches: number[][] = [];
    for (let b = firstBatch; b < lastBatch; b++) {
      const start = b * batchSize;
      const end = Math.min(start + batchSize, numExamples);
      microBatches.push(Array.from(this.cachedOrder.subarray(start, end)));
    }
    return { epoch, microBatches };
  }
}
