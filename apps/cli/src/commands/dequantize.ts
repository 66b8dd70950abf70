import { existsSync } from 'node:fs';
import { type DequantizeReport, dequantizeModel, errorRow } from '@lora/quant';
import { type Command, Option } from 'commander';
import { UsageError } from '../errors.js';
import {
  type CommonOptions,
  checkOutput,
  emit,
  formatBytes,
  table,
  FORCE_HELP,
} from '../output.js';
import { ERROR_TABLE_HEADER, errorTableRows } from './quantize.js';

interface DequantizeOptions extends CommonOptions {
  output: string;
  dtype: 'f32' | 'f16' | 'bf16';
}

export function registerDequantize(program: Command): void {
  program
    .command('dequantize')
    .argument(
      '<input>',
      'a quantized .safetensors file or model folder (bitsandbytes or onnxruntime layout)',
    )
    .description(
      'The inverse of quantize: plain f32/f16/bf16 tensors. The error table shows the rounding of the output dtype against the exact float32 dequantization, and the bits per parameter of the input.',
    )
    .requiredOption(
      '-o, --output <path>',
      'output folder (or a .safetensors file when the input is a file)',
    )
    .addOption(
      new Option('--dtype <dtype>', 'output dtype').choices(['f32', 'f16', 'bf16']).default('f32'),
    )
    .option('--json', 'print one JSON document')
    .option('--quiet', 'no progress on stderr')
    .option('--force', FORCE_HELP)
    .action(async (input: string, options: DequantizeOptions) => {
      if (!existsSync(input)) throw new UsageError(`${input} does not exist.`);
      checkOutput(options.output, options, { writer: 'dequantize', inputs: [input] });
      const r = await dequantizeModel(input, options.output, {
        dtype: options.dtype,
        force: options.force,
        writer: 'dequantize',
      });
      emit(options, dequantizeJson(r), () => renderDequantize(r));
    });
}

function dequantizeJson(r: DequantizeReport) {
  return {
    dtype: r.dtype,
    tensors: r.tensors.map((t) => ({ ...errorRow(t.name, t.stats), shape: t.shape })),
    total: errorRow('total', r.total),
    kept: r.kept,
    inputBytes: r.inputBytes,
    outputBytes: r.outputBytes,
  };
}

function renderDequantize(r: DequantizeReport): string {
  return [
    `dequantized ${r.tensors.length} tensors to ${r.dtype}, ${r.kept.length} copied`,
    table(ERROR_TABLE_HEADER, errorTableRows(r.tensors, r.total)),
    `${formatBytes(r.inputBytes)} -> ${formatBytes(r.outputBytes)}`,
  ].join('\n');
}
