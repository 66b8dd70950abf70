import type { Command } from 'commander';
import { registerBench } from './bench.js';
import { registerGenerate } from './generate.js';
import { registerInspect } from './inspect.js';
import { registerPlan } from './plan.js';
import { registerQuantize } from './quantize.js';
import { registerDequantize } from './dequantize.js';
import { registerExportOnnx } from './export-onnx.js';
import { registerMerge } from './merge.js';
import { registerUnmerge } from './unmerge.js';
import { registerCombine } from './combine.js';
import { registerExtract } from './extract.js';

/** Every subcommand registers itself on the program. One file per command, one line here. */
export const commands: ReadonlyArray<(program: Command) => void> = [
  registerInspect,
  registerBench,
  registerGenerate,
  registerPlan,
  registerQuantize,
  registerDequantize,
  registerExportOnnx,
  registerMerge,
  registerUnmerge,
  registerCombine,
  registerExtract,
];
