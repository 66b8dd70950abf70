/**
 * Everything @lora/core has, for the other @lora packages and for tools: no stability promise.
 * The public API is the package root.
 */
export * from './convert.js';
export * from './dtype.js';
export * from './errors.js';
export * from './float16.js';
export * from './io/atomic-folder.js';
export * from './io/atomic-write.js';
export * from './io/file-kind.js';
export * from './io/json-file.js';
export * from './io/fs-errors.js';
export * from './io/output-guard.js';
export * from './io/output-marker.js';
export * from './io/read-lines.js';
export * from './io/temporaries.js';
export * from './safetensors/header.js';
export * from './safetensors/reader.js';
export * from './safetensors/summary.js';
export * from './safetensors/writer.js';
export * from './tensor.js';
export * from './random.js';
export * from './accounting/memory.js';
export * from './accounting/model-config.js';
export * from './accounting/params.js';
export * from './lora/config.js';
export * from './lora/delta.js';
export * from './lora/linear.js';
export * from './lora/merge.js';
export * from './lora/python-regex.js';
export * from './lora/round-once.js';
export * from './lora/scaling.js';
export * from './lora/target-modules.js';
export * from './linalg/matmul.js';
export * from './linalg/matrix.js';
export * from './linalg/transpose.js';
export * from './linalg/qr.js';
export * from './linalg/svd.js';
export * from './linalg/randomized-svd.js';
export * from './init.js';
export * from './lora/init.js';
export * from './linalg/low-rank-svd.js';
