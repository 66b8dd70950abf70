export * from './byte-tokenizer.js';
export * from './detokenizer.js';
export * from './generate.js';
export * from './hf-tokenizer.js';
export * from './load-tokenizer.js';
export * from './sampling.js';
export * from './stop-sequences.js';
export * from './tokenizer.js';
