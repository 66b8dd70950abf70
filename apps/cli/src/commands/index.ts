import type { Command } from 'commander';
import { registerBench } from './bench.js';
import { registerCombine } from './combine.js';
import { registerDemo } from './demo.js';
import { registerDequantize } from './dequantize.js';
import { registerEval } from './eval.js';
import { registerExportOnnx } from './export-onnx.js';
import { registerExtract } from './extract.js';
import { registerGenerate } from './generate.js';
import { registerInspect } from './inspect.js';
import { registerMerge } from './merge.js';
import { registerPlan } from './plan.js';
import { registerQuantize } from './quantize.js';
import { registerServe } from './serve.js';
import { registerTrain } from './train.js';
import { registerUnmerge } from './unmerge.js';

/**
 * Every subcommand registers itself on the program, in the order `lora --help` lists them.
 * One file per command, one line here.
 */
export const commands: ReadonlyArray<(program: Command) => void> = [
  registerInspect,
  registerPlan,
  registerQuantize,
  registerDequantize,
  registerMerge,
  registerUnmerge,
  registerCombine,
  registerExtract,
  registerGenerate,
  registerExportOnnx,
  registerTrain,
  registerEval,
  registerServe,
  registerDemo,
  registerBench,
];
