/**
 * Everything @lora/quant has, for the other @lora packages and for tools: no stability promise.
 * The public API is the package root.
 */
export * from './blockwise.js';
export * from './bnb4-state-dict.js';
export * from './bnb4-weight.js';
export * from './codebooks.js';
export * from './double-quant.js';
export * from './error-report.js';
export * from './errors.js';
export * from './formats.js';
export * from './nbits.js';
export * from './ort-layout.js';
export * from './python-json.js';
export * from './qlora.js';
export * from './quantization-config.js';
export * from './quantized-weight.js';
export * from './blockwise-kernel.js';
export * from './parallel.js';
export * from './dequantize-model.js';
export * from './quantize-model.js';
