import {
  COMBINATION_METHODS,
  type CombinationMethod,
  combineAdapters,
  loraParameterCount,
  savePeftAdapter,
} from '@lora/adapters';
import { type Command, Option } from 'commander';
import { type AdapterSpec, collectAdapter, loadAdapters } from '../adapter-spec.js';
import { UsageError } from '../errors.js';
import {
  type CommonOptions,
  checkOutput,
  emit,
  log,
  parseNumber,
  parsePositiveInt,
  FORCE_HELP,
} from '../output.js';

interface CombineOptions extends CommonOptions {
  adapter: AdapterSpec[];
  method: CombinationMethod;
  density?: number;
  rank?: number;
  majoritySign?: 'total' | 'frequency';
  svdClamp?: number;
  seed?: number;
  output: string;
}

export function registerCombine(program: Command): void {
  program
    .command('combine')
    .description(
      'A new PEFT adapter from several (PEFT add_weighted_adapter semantics). cat is exact (rank = sum of ranks); svd truncates the exact weighted sum to --rank (scaling applied once); linear/ties/dare_*/magnitude_prune combine A and B separately.',
    )
    .requiredOption(
      '--adapter <dir[:weight]>',
      'PEFT adapter folder, optional weight (default 1); repeatable',
      collectAdapter,
    )
    .addOption(
      new Option('--method <method>', 'combination method')
        .choices([...COMBINATION_METHODS])
        .default('cat'),
    )
    .option(
      '--density <d>',
      'share of entries kept by ties, dare_linear, dare_ties, magnitude_prune, in (0, 1]',
      parseNumber('density'),
    )
    .option(
      '--rank <r>',
      'svd: rank of the result (default: the largest input rank)',
      parsePositiveInt('rank'),
    )
    .addOption(
      new Option(
        '--majority-sign <method>',
        'ties and dare_ties: sign election (default total)',
      ).choices(['total', 'frequency']),
    )
    .option(
      '--svd-clamp <q>',
      'svd: clamp entries at this quantile (e.g. 0.99)',
      parseNumber('svd-clamp'),
    )
    .option(
      '--seed <n>',
      'dare_linear and dare_ties: seed of the drop masks (default 0)',
      parsePositiveIntOrZero,
    )
    .requiredOption('-o, --output <dir>', 'output adapter folder')
    .option('--force', FORCE_HELP)
    .option('--json', 'print one JSON document')
    .option('--quiet', 'no progress on stderr')
    .action(async (options: CombineOptions) => {
      checkOutput(options.output, options, {
        writer: 'combine',
        inputs: options.adapter.map((a) => a.dir),
      });
      if (options.density !== undefined && !(options.density > 0 && options.density <= 1))
        throw new UsageError(`--density must be in (0, 1], got ${options.density}.`);
      if (options.svdClamp !== undefined && !(options.svdClamp > 0 && options.svdClamp <= 1))
        throw new UsageError(`--svd-clamp must be in (0, 1], got ${options.svdClamp}.`);
      const { sources, warnings } = await loadAdapters(options.adapter);
      const { adapter, warnings: more } = combineAdapters(sources, {
        method: options.method,
        density: options.density,
        rank: options.rank,
        majoritySignMethod: options.majoritySign,
        svdClamp: options.svdClamp,
        seed: options.seed,
      });
      const all = [...warnings, ...more];
      for (const w of all) log(options, `warning: ${w}`);
      await savePeftAdapter(options.output, adapter, {
        overwrite: Boolean(options.force),
        writer: 'combine',
      });
      const summary = {
        output: options.output,
        method: options.method,
        r: adapter.config.r,
        lora_alpha: adapter.config.lora_alpha,
        modules: adapter.modules.size,
        loraParameterCount: loraParameterCount(adapter),
        warnings: all,
      };
      emit(
        options,
        summary,
        () =>
          `combined ${sources.length} adapter(s) with ${options.method}: r = ${summary.r}, lora_alpha = ${summary.lora_alpha} (scaling 1), ${summary.modules} modules, ${summary.loraParameterCount.toLocaleString('en-US')} LoRA parameters; wrote ${options.output}`,
      );
    });
}

function parsePositiveIntOrZero(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0)
    throw new UsageError(`--seed must be a non-negative integer, got "${value}".`);
  return n;
}
