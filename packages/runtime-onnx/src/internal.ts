/**
 * Everything @lora/runtime-onnx has, for the other @lora packages and for tools: no stability promise.
 * The public API is the package root.
 */
export * from './errors.js';
export * from './generate/index.js';
export * from './generate/stepper.js';
export * from './graph/builder.js';
export * from './graph/describe.js';
export * from './graph/dtypes.js';
export * as ops from './graph/ops.js';
export * from './graph/opset.js';
export * from './graph/reference.js';
export * from './graph/serialize.js';
export * from './graph/types.js';
export * from './session/device.js';
export * from './session/session.js';
export * from './session/weight-file.js';
export * from './models/linear.js';
export * from './models/llama/config.js';
export * from './models/llama/graph.js';
export * from './models/llama/model.js';
export * from './models/llama/prepare.js';
export * from './models/llama/reference.js';
export * from './models/quantize-linear.js';
export * from './models/weights.js';
export * from './lora/index.js';
export * from './graph/gradients.js';
export * from './graph/composites/index.js';
export * from './graph/vjp-helpers.js';
export * from './models/dequantize-graph.js';
export * from './models/llama/training-graph.js';
export * from './training/index.js';
