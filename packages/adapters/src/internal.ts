/**
 * Everything @lora/adapters has, for the other @lora packages and for tools: no stability promise.
 * The public API is the package root.
 */
export * from './adapter.js';
export * from './errors.js';
export * from './peft/files.js';
export * from './peft/keys.js';
export * from './peft/load.js';
export * from './peft/save.js';
export * from './describe.js';
export * from './merge/compute.js';
export * from './merge/merge-model.js';
export * from './merge/plan.js';
export * from './merge/residual-file.js';
export * from './merge/unmerge-model.js';
export * from './model/model-files.js';
export * from './combine.js';
export * from './extract.js';
export * from './formats/onnx-adapter.js';
export * from './formats/onnx-adapter-peft.js';
export * from './registry.js';
export * from './targets.js';
