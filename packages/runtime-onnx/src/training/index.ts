export * from './lora-branch.js';
export * from './quantized-backward.js';
export * from './session-options.js';
export * from './training-session.js';
