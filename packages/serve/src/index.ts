export * from './adapter-folder.js';
export * from './batch-cache.js';
export * from './chat-template.js';
export * from './engine.js';
export * from './errors.js';
export * from './metrics.js';
export * from './server.js';
export * from './service.js';
