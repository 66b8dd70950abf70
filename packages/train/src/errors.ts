import { LoraError } from '@lora/core';

/**
 * The error type of `@lora/train`. Codes are stable, e.g. `DATA_INVALID` (a malformed JSONL row,
 * named by file and line), `DATA_LINE_TOO_LONG` (a line over `MAX_JSONL_LINE_BYTES`), `DATA_EMPTY`,
 * `SETTINGS_INVALID`, `LOSS_NOT_FINITE`, `CHECKPOINT_INVALID`.
 */
export class TrainError extends LoraError {}
