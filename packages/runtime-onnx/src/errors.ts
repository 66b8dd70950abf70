import { LoraError } from '@lora/core';

/**
 * The error type of `@lora/runtime-onnx`. Codes are stable, e.g. `CONFIG_INVALID`,
 * `WEIGHT_MISSING`, `WEIGHT_SHAPE`, `DEVICE_UNAVAILABLE`, `GRAPH_INVALID`.
 */
export class RuntimeError extends LoraError {}
