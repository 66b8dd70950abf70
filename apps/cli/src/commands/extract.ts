import { existsSync } from 'node:fs';
import { extractAdapter, savePeftAdapter } from '@lora/adapters';
import type { Command } from 'commander';
import { UsageError } from '../errors.js';
import { startProgress } from '../progress.js';
import {
  type CommonOptions,
  checkOutput,
  emit,
  parseNumber,
  parsePositiveInt,
  table,
  FORCE_HELP,
} from '../output.js';
import { resolveModelPath } from '../model-source.js';

interface ExtractOptions extends CommonOptions {
  base: string;
  tuned: string;
  rank: number;
  alpha?: number;
  fanInFanOut?: boolean;
  seed: number;
  output: string;
}

export function registerExtract(program: Command): void {
  program
    .command('extract')
    .description(
      'A LoRA adapter approximating tuned - base: truncated SVD of every 2-D weight that differs (randomized for large ones), with the captured energy (share of the squared Frobenius norm) per module.',
    )
    .requiredOption('--base <model>', 'base model folder or .safetensors file')
    .requiredOption('--tuned <model>', 'fine-tuned model with the same tensor names')
    .requiredOption('--rank <r>', 'rank of every extracted module', parsePositiveInt('rank'))
    .option(
      '--alpha <a>',
      'lora_alpha of the adapter (default: the rank, scaling 1)',
      parseNumber('alpha'),
    )
    .option(
      '--fan-in-fan-out',
      'weights are stored [in, out] (GPT-2 Conv1D); default: from config.json model_type',
    )
    .option('--seed <n>', 'seed of the randomized SVD', parsePositiveInt('seed'), 0)
    .requiredOption('-o, --output <dir>', 'output adapter folder')
    .option('--force', FORCE_HELP)
    .option('--json', 'print one JSON document')
    .option('--quiet', 'no progress on stderr')
    .option('--revision <rev>', 'for a hub model name: branch, tag or commit (default main)')
    .action(async (options: ExtractOptions) => {
      options.base = await resolveModelPath(options.base, options);
      options.tuned = await resolveModelPath(options.tuned, options);
      for (const p of [options.base, options.tuned])
        if (!existsSync(p)) throw new UsageError(`${p} does not exist.`);
      checkOutput(options.output, options, {
        writer: 'extract',
        inputs: [options.base, options.tuned],
      });
      const progress = startProgress(options, 'extract');
      const result = await extractAdapter(options.base, options.tuned, {
        rank: options.rank,
        alpha: options.alpha,
        fanInFanOut: options.fanInFanOut,
        seed: options.seed,
        onProgress: (p) => progress.update(p.done, p.total, p.module),
      }).finally(() => progress.stop());
      await savePeftAdapter(options.output, result.adapter, {
        overwrite: Boolean(options.force),
        writer: 'extract',
      });
      emit(
        options,
        {
          output: options.output,
          rank: options.rank,
          totalEnergy: result.totalEnergy,
          modules: result.modules,
          skipped: result.skipped,
        },
        () => {
          const lines = [
            table(
              ['module', 'shape', 'energy %', 'svd'],
              result.modules.map((m) => [
                m.module,
                m.shape.join('x'),
                Number((100 * m.energy).toFixed(3)),
                m.method,
              ]),
            ),
            `rank ${options.rank}: ${result.modules.length} module(s), ${(100 * result.totalEnergy).toFixed(3)} % of the total squared difference captured; wrote ${options.output}`,
          ];
          for (const s of result.skipped) lines.push(`skipped ${s.tensor}: ${s.reason}`);
          return lines.join('\n');
        },
      );
    });
}
