export * from './attention.js';
export * from './cross-entropy.js';
export * from './rms-norm.js';
export * from './rope.js';
export * from './swiglu.js';
