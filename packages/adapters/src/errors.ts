import { LoraError } from '@lora/core';

/**
 * The error type of `@lora/adapters`. Codes are stable, e.g. `ADAPTER_CONFIG_INVALID`,
 * `MERGE_MODULE_MISSING`, `MERGE_SHAPE_MISMATCH`, `MERGE_NOT_FINITE`, `UNMERGE_RESIDUAL_MISMATCH`.
 */
export class AdapterError extends LoraError {}
