export * from './branches.js';
export * from './merged.js';
export * from './slots.js';
export * from './linear-stack.js';
export * from './slot-cache.js';
