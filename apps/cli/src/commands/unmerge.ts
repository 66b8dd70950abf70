import { existsSync } from 'node:fs';
import { unmergeModel } from '@lora/adapters';
import type { Command } from 'commander';
import { type AdapterSpec, collectAdapter, loadAdapters } from '../adapter-spec.js';
import { UsageError } from '../errors.js';
import { type CommonOptions, checkOutput, emit, log } from '../output.js';

interface UnmergeOptions extends CommonOptions {
  merged: string;
  adapter: AdapterSpec[];
  output: string;
  residual?: string;
}

export function registerUnmerge(program: Command): void {
  program
    .command('unmerge')
    .description(
      'Restore the base model, bit for bit, from a model written by `lora merge`, the same adapters, and the merge residual.',
    )
    .requiredOption('--merged <model>', 'merged model folder or .safetensors file')
    .requiredOption(
      '--adapter <dir[:weight]>',
      'the adapter folder(s) that were merged, in the same order; repeatable',
      collectAdapter,
    )
    .requiredOption('-o, --output <path>', 'output folder (or .safetensors file)')
    .option('--residual <file>', 'the residual file (default: beside the merged model)')
    .option(
      '--force',
      "replace an existing output: refused all the same, since the restored base carries its own marker, not unmerge's (delete it by hand)",
    )
    .option('--json', 'print one JSON document')
    .option('--quiet', 'no progress on stderr')
    .action(async (options: UnmergeOptions) => {
      if (!existsSync(options.merged))
        throw new UsageError(`--merged ${options.merged} does not exist.`);
      // The restored base is the original byte for byte (header included), so it carries the
      // base's marker, not unmerge's: --force never replaces an existing output here.
      checkOutput(options.output, options, {
        writer: 'unmerge',
        inputs: [
          options.merged,
          ...options.adapter.map((a) => a.dir),
          ...(options.residual ? [options.residual] : []),
        ],
      });
      const { sources, warnings } = await loadAdapters(options.adapter);
      for (const w of warnings) log(options, `warning: ${w}`);
      const report = await unmergeModel(options.merged, sources, options.output, {
        residualPath: options.residual,
        overwrite: Boolean(options.force),
      });
      emit(
        options,
        { ...report, warnings },
        () =>
          `restored the base into ${options.output}: ${report.unmerged} weight(s) computed back and patched, ${report.restoredWhole} restored from the residual, ${report.copied} copied; checksums verified`,
      );
    });
}
