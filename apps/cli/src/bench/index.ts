import { convertBench } from './convert.js';
import { generateBench } from './generate.js';
import { linalgBench } from './linalg.js';
import { safetensorsBench } from './safetensors.js';
import type { BenchSection } from './types.js';

/** Every `lora bench` section, in the order they run. Add a section: one file, one line here. */
export const sections: readonly BenchSection[] = [
  safetensorsBench,
  convertBench,
  generateBench,
  linalgBench,
];
