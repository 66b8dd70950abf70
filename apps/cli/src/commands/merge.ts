import { existsSync, statSync } from 'node:fs';
import { mergeIntoModel, residualPathFor } from '@lora/adapters';
import { errorRow } from '@lora/quant';
import { type Command, Option } from 'commander';
import { type AdapterSpec, collectAdapter, loadAdapters } from '../adapter-spec.js';
import { UsageError } from '../errors.js';
import { startProgress } from '../progress.js';
import {
  type CommonOptions,
  checkOutput,
  emit,
  formatBytes,
  log,
  table,
  FORCE_HELP,
} from '../output.js';
import { resolveModelOrBundled } from '../model-source.js';

interface MergeOptions extends CommonOptions {
  base?: string;
  adapter: AdapterSpec[];
  output: string;
  dtype?: 'f32' | 'f16' | 'bf16';
  requantize?: boolean;
  residual?: boolean;
}

export function registerMerge(program: Command): void {
  program
    .command('merge')
    .description(
      'Write base + adapter(s) as a new model (W + Σ weight·s·B·A). Checks every module name and shape before writing, refuses NaN/Inf, writes atomically, and leaves a small unmerge residual so `lora unmerge` restores the base bit for bit.',
    )
    .option(
      '--base <model>',
      'base model folder (HF layout) or .safetensors file; a 4-bit bitsandbytes folder is dequantized (default: the bundled model)',
    )
    .requiredOption(
      '--adapter <dir[:weight]>',
      'PEFT adapter folder, optional weight (default 1); repeat to merge several',
      collectAdapter,
    )
    .requiredOption(
      '-o, --output <path>',
      'output folder (or .safetensors file when the base is a file)',
    )
    .addOption(
      new Option(
        '--dtype <dtype>',
        'dtype of the float tensors written (default: as in the base)',
      ).choices(['f32', 'f16', 'bf16']),
    )
    .option(
      '--requantize',
      '4-bit base: quantize the merged weights again (same format and block size) and report the error',
    )
    .option(
      '--residual',
      'write the unmerge residual even when --dtype narrows the base (it is then about as large as the model)',
    )
    .option(
      '--no-residual',
      'do not write the unmerge residual (the merge can then not be undone exactly); default: written unless --dtype narrows the base',
    )
    .option('--force', FORCE_HELP)
    .option('--json', 'print one JSON document')
    .option('--quiet', 'no progress on stderr')
    .option('--revision <rev>', 'for a hub model name: branch, tag or commit (default main)')
    .action(async (options: MergeOptions) => {
      options.base = await resolveModelOrBundled(options.base, options);
      if (!existsSync(options.base)) throw new UsageError(`--base ${options.base} does not exist.`);
      checkOutput(options.output, options, {
        writer: 'merge',
        inputs: [options.base, ...options.adapter.map((a) => a.dir)],
        // A single-file base gives a single file and its residual beside it: one output.
        companions: statSync(options.base).isFile() ? [residualPathFor(options.output, false)] : [],
      });
      const { sources, warnings } = await loadAdapters(options.adapter);
      for (const w of warnings) log(options, `warning: ${w}`);
      log(options, `merging ${sources.length} adapter(s) into ${options.base} ...`);
      const progress = startProgress(options, 'merge');
      const report = await mergeIntoModel(options.base, sources, options.output, {
        dtype: options.dtype,
        requantize: options.requantize,
        residual: options.residual,
        overwrite: Boolean(options.force),
        writer: 'merge',
        onProgress: (p) => progress.update(p.done, p.total, p.tensor),
      }).finally(() => progress.stop());
      for (const w of report.warnings) log(options, `warning: ${w}`);
      const requant = report.requantizationError;
      emit(
        options,
        {
          ...report,
          requantizationError: requant && {
            total: errorRow('total', requant.total),
            perTensor: requant.perTensor.map((t) => errorRow(t.tensor, t.stats)),
          },
          warnings: [...warnings, ...report.warnings],
        },
        () => {
          const lines = [
            `merged ${sources.length} adapter(s) into ${report.merged.length} weight(s)${report.replaced.length ? `, replaced ${report.replaced.length} saved module tensor(s)` : ''}${report.biases.length ? `, ${report.biases.length} bias(es)` : ''}; wrote ${options.output}`,
          ];
          if (report.quantized.length > 0) {
            lines.push(
              `${report.quantized.length} 4-bit weight(s) ${options.requantize ? 're-quantized after the merge' : 'dequantized: the output is full precision'}`,
            );
          }
          if (requant) {
            lines.push(
              table(
                ['tensor', 'rmse', 'max abs', 'snr dB'],
                [
                  ...requant.perTensor.map((t) => [
                    t.tensor,
                    t.stats.rmse,
                    t.stats.maxAbsError,
                    t.stats.snrDb,
                  ]),
                  ['total', requant.total.rmse, requant.total.maxAbsError, requant.total.snrDb],
                ],
              ),
            );
          }
          if (report.residualSkipped) lines.push(report.residualSkipped);
          if (report.residual) {
            lines.push(
              `unmerge residual: ${report.residual.path} (${formatBytes(report.residual.bytes)}, ${report.residual.patchedElements} patched elements); \`lora unmerge --merged ${options.output} ${options.adapter.map((a) => `--adapter ${a.dir}`).join(' ')} -o <dir>\` restores the base exactly`,
            );
          }
          return lines.join('\n');
        },
      );
    });
}
