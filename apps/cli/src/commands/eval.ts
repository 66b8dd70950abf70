import type { QuantFormat } from '@lora/quant';
import type { Command } from 'commander';
import { UsageError } from '../errors.js';
import { resolveModelOrBundled } from '../model-source.js';
import { type CommonOptions, emit, log, parsePositiveInt } from '../output.js';
import { parseQuantFlag, QUANT_FORMAT_LIST } from '../quant-formats.js';

interface EvalCommandOptions extends CommonOptions {
  model?: string;
  adapter?: string;
  data?: string;
  batchSize: number;
  seqLen?: number;
  quant?: QuantFormat;
  exactMatch: boolean;
  device: 'cpu' | 'cuda' | 'auto';
}

export function registerEval(program: Command): void {
  program
    .command('eval')
    .description(
      'Loss, perplexity and greedy exact-match accuracy of a model (optionally with an adapter) on JSONL data.',
    )
    .option('--model <dir>', 'model folder (config.json, safetensors, tokenizer.json)')
    .option('--adapter <dir>', 'PEFT adapter folder to evaluate with')
    .option(
      '--data <file>',
      'JSONL rows: {"text"}, {"prompt","completion"} or {"input_ids","labels"} (at most 16 MiB a line)',
    )
    .option('--batch-size <n>', 'rows per forward pass', parsePositiveInt('batch-size'), 8)
    .option('--seq-len <t>', 'keep the first T tokens of each row', parsePositiveInt('seq-len'))
    .option(
      '--quant <format>',
      `quantize the base to 4 bits on load: ${QUANT_FORMAT_LIST}`,
      parseQuantFlag('quant'),
    )
    .option('--no-exact-match', 'skip greedy generation on prompt/completion rows')
    .option('--device <d>', 'cpu, cuda or auto', 'cpu')
    .option('--json', 'print one JSON document')
    .option('--quiet', 'no log lines')
    .action(async (options: EvalCommandOptions) => {
      options.model = await resolveModelOrBundled(options.model, options);
      if (!options.data) throw new UsageError('--data <file.jsonl> is required.');
      if (!['cpu', 'cuda', 'auto'].includes(options.device))
        throw new UsageError(`--device must be cpu, cuda or auto, got "${options.device}".`);
      const { evaluateModel } = await import('@lora/train');
      const r = await evaluateModel({
        model: options.model,
        adapter: options.adapter,
        data: options.data,
        batchSize: options.batchSize,
        seqLen: options.seqLen,
        quant: options.quant,
        exactMatch: options.exactMatch,
        device: options.device,
        warn: (m) => log(options, m),
      });
      emit(
        options,
        {
          model: options.model,
          adapter: options.adapter ?? null,
          data: options.data,
          rows: r.rows,
          tokens: r.tokens,
          loss: r.loss,
          perplexity: r.perplexity,
          exactMatch: r.exactMatch ?? null,
        },
        () =>
          [
            `loss ${r.loss.toFixed(4)}  perplexity ${r.perplexity.toFixed(3)}  (${r.tokens} label tokens, ${r.rows} rows)`,
            r.exactMatch
              ? `exact match ${r.exactMatch.matches}/${r.exactMatch.rows} = ${(100 * r.exactMatch.accuracy).toFixed(1)}% (greedy)`
              : 'exact match: no prompt/completion rows',
          ].join('\n'),
      );
    });
}
