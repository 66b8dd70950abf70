import { existsSync } from 'node:fs';
import {
  type ErrorStats,
  errorRow,
  parseQuantFormat,
  QUANT_FORMATS,
  type QuantFormat,
  type QuantizeReport,
  QuantizeWorkerPool,
  quantizeModel,
  type TensorReport,
} from '@lora/quant';
import { LoraError } from '@lora/core';
import { compilePythonRegex, type PythonRegex } from '@lora/core/internal';
import { type Command, Option } from 'commander';
import { UsageError } from '../errors.js';
import { startProgress } from '../progress.js';
import { BNB4_FORMAT_LIST, NBITS_FORMAT_LIST } from '../quant-formats.js';
import {
  type CommonOptions,
  checkOutput,
  emit,
  formatBytes,
  parsePositiveInt,
  parseThreads,
  table,
  FORCE_HELP,
} from '../output.js';
import { resolveModelOrBundled } from '../model-source.js';

interface QuantizeOptions extends CommonOptions {
  output: string;
  format: string;
  blockSize?: number;
  doubleQuant?: boolean;
  layout?: 'bnb' | 'ort';
  include?: string;
  exclude?: string;
  computeDtype: 'f32' | 'f16' | 'bf16';
  threads?: number;
}

export function registerQuantize(program: Command): void {
  program
    .command('quantize')
    .argument(
      '[input]',
      'a .safetensors file or a model folder (HF layout); default: the bundled model',
    )
    .description(
      `4-bit quantization (bitsandbytes-exact ${BNB4_FORMAT_LIST}, MatMulNBits ${NBITS_FORMAT_LIST}), tensor by tensor; prints per-tensor and total error (RMSE, max abs, SNR) and bits per parameter.`,
    )
    .requiredOption(
      '-o, --output <path>',
      'output folder (or a .safetensors file when the input is a file)',
    )
    .addOption(
      new Option('--format <format>', '4-bit format').choices(QUANT_FORMATS).default('nf4'),
    )
    .option(
      '--block-size <n>',
      'values per block (nf4/fp4: 32..4096, default 64; int4/uint4: 16..256, default 32)',
      parsePositiveInt('block-size'),
    )
    .option(
      '--double-quant',
      'quantize the nf4/fp4 absmax again (QLoRA double quantization, bnb layout)',
    )
    .addOption(
      new Option(
        '--layout <layout>',
        'bnb: bitsandbytes state dict (nf4/fp4); ort: onnxruntime MatMulNBits/MatMulBnb4 initializers',
      ).choices(['bnb', 'ort']),
    )
    .option(
      '--include <regex>',
      'also quantize tensors whose name matches (Python re.search syntax, e.g. lm_head)',
    )
    .option('--exclude <regex>', 'never quantize tensors whose name matches (Python re.search)')
    .addOption(
      new Option('--compute-dtype <dtype>', 'bnb_4bit_compute_dtype recorded in config.json')
        .choices(['f32', 'f16', 'bf16'])
        .default('f32'),
    )
    .option('--threads <n>', 'threads for large nf4/fp4 tensors (default: all CPUs)', parseThreads)
    .option('--json', 'print one JSON document')
    .option('--quiet', 'no progress on stderr')
    .option('--force', FORCE_HELP)
    .option('--revision <rev>', 'for a hub model name: branch, tag or commit (default main)')
    .action(async (arg: string | undefined, options: QuantizeOptions) => {
      const input = await resolveModelOrBundled(arg, options);
      if (!existsSync(input)) throw new UsageError(`${input} does not exist.`);
      checkOutput(options.output, options, { writer: 'quantize', inputs: [input] });
      const format = parseQuantFormat(options.format);
      const include = compileRegex('include', options.include);
      const exclude = compileRegex('exclude', options.exclude);
      const pool =
        (format === 'nf4' || format === 'fp4') && options.threads !== 1
          ? new QuantizeWorkerPool(options.threads)
          : undefined;
      let report: QuantizeReport;
      const progress = startProgress(options, 'quantize');
      let done = 0;
      try {
        report = await quantizeModel(input, options.output, {
          format,
          blockSize: options.blockSize,
          doubleQuant: options.doubleQuant,
          layout: options.layout,
          include,
          exclude,
          computeDType: options.computeDtype,
          pool,
          force: options.force,
          writer: 'quantize',
          onTensor: (row) => progress.update(++done, undefined, row.name),
        });
      } finally {
        progress.stop();
        await pool?.close();
      }
      emit(options, quantizeJson(report), () => renderQuantize(report));
    });
}

/** A name filter: Python `re.search` syntax, matched in linear time as config regexes are. */
function compileRegex(flag: string, source: string | undefined): PythonRegex | undefined {
  if (source === undefined) return undefined;
  try {
    return compilePythonRegex(source, 'search', { key: `--${flag}`, pattern: source });
  } catch (e) {
    if (e instanceof LoraError && e.code.startsWith('REGEX_')) throw new UsageError(e.message);
    throw e;
  }
}

export function errorTableRows(
  tensors: readonly TensorReport[],
  total: ErrorStats,
): (string | number)[][] {
  const row = (name: string, s: ErrorStats): (string | number)[] => [
    name,
    s.count,
    s.rmse,
    s.maxAbsError,
    Number.isFinite(s.snrDb) ? s.snrDb : 'inf',
    s.bitsPerParameter,
  ];
  return [...tensors.map((t) => row(t.name, t.stats)), row('total', total)];
}

export const ERROR_TABLE_HEADER = ['tensor', 'params', 'rmse', 'max abs', 'snr dB', 'bits/param'];

function quantizeJson(r: QuantizeReport) {
  return {
    format: r.format as QuantFormat,
    layout: r.layout,
    blockSize: r.blockSize,
    doubleQuant: r.doubleQuant,
    tensors: r.tensors.map((t) => ({ ...errorRow(t.name, t.stats), shape: t.shape })),
    total: errorRow('total', r.total),
    kept: r.kept,
    inputBytes: r.inputBytes,
    outputBytes: r.outputBytes,
    outputFiles: r.outputFiles,
  };
}

function renderQuantize(r: QuantizeReport): string {
  const lines = [
    `${r.format}${r.doubleQuant ? ' + double quant' : ''}, block ${r.blockSize}, ${r.layout} layout: ${r.tensors.length} tensors quantized, ${r.kept.length} kept`,
    table(ERROR_TABLE_HEADER, errorTableRows(r.tensors, r.total)),
    `${formatBytes(r.inputBytes)} -> ${formatBytes(r.outputBytes)} (${r.outputFiles.join(', ')})`,
  ];
  return lines.join('\n');
}
