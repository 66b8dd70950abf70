import { LoraError } from '@lora/core';

/**
 * The error type of `@lora/quant`. Codes: `QUANT_NON_FINITE` (NaN/Inf in a weight),
 * `QUANT_BLOCK_SIZE` (block size the format does not allow), `QUANT_DTYPE` (a tensor dtype
 * that cannot be quantized or dequantized), `QUANT_FORMAT` (unknown format or a format the
 * layout cannot hold), `QUANT_SHAPE` (sizes that do not agree), `QUANT_STATE_INVALID`
 * (a stored quantization state that cannot be read), `QUANT_INPUT` (missing or empty input),
 * `QUANT_OUTPUT_EXISTS` (output exists and no force), `QUANT_INTERNAL` (a bug: please report).
 */
export class QuantError extends LoraError {}
