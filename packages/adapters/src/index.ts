export {};
export * from './formats/onnx-adapter.js';
export * from './registry.js';
