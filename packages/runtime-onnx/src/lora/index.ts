export * from './branches.js';
export * from './merged.js';
export * from './slots.js';
