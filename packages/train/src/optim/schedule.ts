import { TrainError } from '../errors.js';

/** Learning-rate schedules, as transformers' `get_*_schedule_with_warmup`. */
export type ScheduleName = 'constant' | 'linear' | 'cosine';

export const SCHEDULES: readonly ScheduleName[] = ['constant', 'linear', 'cosine'];

export interface ScheduleOptions {
  readonly name: ScheduleName;
  readonly warmupSteps: number;
  /** Optimizer steps of the whole run. */
  readonly totalSteps: number;
}

/**
 * The multiplier of the base learning rate for optimizer step `step` (0-based), exactly
 * transformers' `lr_lambda`s: a linear warmup `step / max(1, warmup)` (so the first step's rate is
 * 0 with warmup), then `constant` 1, `linear` `max(0, (total - step) / max(1, total - warmup))`,
 * or `cosine` `max(0, 0.5 (1 + cos(pi * progress)))` with `progress = (step - warmup) /
 * max(1, total - warmup)` (half a cycle). The scheduler steps after each optimizer step, so step
 * k trains with `lr * lrFactor(k)`.
 */
export function lrFactor(options: ScheduleOptions, step: number): number {
  const { name, warmupSteps: warmup, totalSteps: total } = options;
  if (step < warmup) return step / Math.max(1, warmup);
  switch (name) {
    case 'constant':
      return 1;
    case 'linear':
      return Math.max(0, (total - step) / Math.max(1, total - warmup));
    case 'cosine': {
      const progress = (step - warmup) / Math.max(1, total - warmup);
      return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * 0.5 * 2 * progress)));
    }
    default:
      throw new TrainError(
        'SETTINGS_INVALID',
        `unknown schedule "${name as string}"; use ${SCHEDULES.join(', ')}.`,
      );
  }
}
