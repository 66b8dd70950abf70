import { convertBench } from './convert.js';
import { generateBench } from './generate.js';
import { gradBench } from './grad.js';
import { linalgBench } from './linalg.js';
import { loadBench } from './load.js';
import { loraBench } from './lora.js';
import { mergeBench } from './merge.js';
import { quantBench, quantStreamBench } from './quant.js';
import { safetensorsBench } from './safetensors.js';
import { serveBench } from './serve.js';
import { trainBench } from './train.js';
import { runtimeBench } from './runtime.js';
import type { BenchSection } from './types.js';

/** Every `lora bench` section, in the order they run. Add a section: one file, one line here. */
export const sections: readonly BenchSection[] = [
  safetensorsBench,
  convertBench,
  generateBench,
  linalgBench,
  runtimeBench,
  loadBench,
  loraBench,
  mergeBench,
  quantBench,
  quantStreamBench,
  gradBench,
  trainBench,
  serveBench,
];
