import { assertRegularInputs } from '@lora/core';
import type { Device, GenerateResult } from '@lora/runtime-onnx';
import type { QuantFormat } from '@lora/quant';
import type { Command } from 'commander';
import { UsageError } from '../errors.js';
import { type CommonOptions, emit, log, parseNumber, parsePositiveInt } from '../output.js';
import { readPrompt } from '../prompt-input.js';
import { parseQuantFlag, QUANT_FORMAT_LIST } from '../quant-formats.js';
import { resolveModelOrBundled } from '../model-source.js';
import { writeStdout } from '../stdout.js';
// LoRA flags (--adapter, --merged) live in generate-adapters.ts, --batch in generate-batch.ts.
import { type AdapterOptions, addAdapterOptions, LoadedAdapters } from './generate-adapters.js';
import { addBatchOptions, type BatchOptions, runBatch } from './generate-batch.js';
import { generationHeader, jsonRow, jsonTimings } from './generate-json.js';
import { openModel } from './generate-model.js';

/** Parsed flags of `lora generate`. Later flags (adapters, batch files) extend this object. */
export interface GenerateCommandOptions extends CommonOptions, AdapterOptions, BatchOptions {
  model?: string;
  prompt?: string;
  promptFile?: string;
  maxTokens: number;
  temperature: number;
  topK?: number;
  topP?: number;
  repetitionPenalty?: number;
  seed: number;
  stop?: string[];
  quant?: QuantFormat;
  device: Device;
  echo: boolean;
}

export function registerGenerate(program: Command): void {
  addBatchOptions(addAdapterOptions(program.command('generate')))
    .description(
      'Generate text with a model folder (HF layout), streaming tokens to stdout as they come.',
    )
    .option(
      '--model <dir>',
      'model folder: config.json, model.safetensors, tokenizer.json (or byte-level without one)',
    )
    .option('--prompt <text>', 'the prompt ("-": read it from standard input)')
    .option('--prompt-file <path>', 'read the prompt from a file ("-": standard input)')
    .option('--max-tokens <n>', 'most tokens to generate', parsePositiveInt('max-tokens'), 64)
    .option(
      '--temperature <t>',
      '0 = greedy (argmax); higher = more random',
      parseNonNegative('temperature'),
      0,
    )
    .option('--top-k <k>', 'sample among the k most likely tokens only', parsePositiveInt('top-k'))
    .option(
      '--top-p <p>',
      'nucleus sampling: smallest set of tokens with probability >= p, in (0, 1]',
      parseNumber('top-p'),
    )
    .option(
      '--repetition-penalty <x>',
      'penalise tokens already seen (1 = off; 1.1 is mild)',
      parseNumber('repetition-penalty'),
    )
    .option('--seed <n>', 'seed of the sampler (same seed, same text)', parseSeed, 0)
    .option('--stop <text>', 'stop when this text appears (not printed); repeatable', collect)
    .option(
      '--quant <format>',
      `quantize the base weights to 4 bits at load: ${QUANT_FORMAT_LIST}`,
      parseQuantFlag('quant'),
    )
    .option(
      '--device <device>',
      'cpu, cuda or auto (CUDA if available, else CPU)',
      parseDeviceFlag,
      'cpu' as Device,
    )
    .option('--no-echo', 'print only the generated text, not the prompt before it')
    .option('--json', 'print one JSON document (text, token ids, timings) instead of streaming')
    .option('--quiet', 'no statistics on stderr')
    .option('--revision <rev>', 'for a hub model name: branch, tag or commit (default main)')
    .action(async (options: GenerateCommandOptions) => {
      options.model = await resolveModelOrBundled(options.model, options);
      assertRegularInputs([options.model]);
      if (options.batch !== undefined && (options.prompt ?? options.promptFile) !== undefined)
        throw new UsageError('--batch and --prompt/--prompt-file exclude each other: give one.');
      if (options.jsonl && options.batch === undefined)
        throw new UsageError('--jsonl writes one line per --batch row: it needs --batch.');
      options.prompt = await readPrompt(options);
      if (options.prompt === undefined && options.batch === undefined)
        throw new UsageError(
          '--prompt <text>, --prompt-file <path> or --batch <file.jsonl> is required.',
        );
      if (options.merged && !options.adapter?.length)
        throw new UsageError('--merged needs at least one --adapter to merge.');
      await runGenerate(options);
    });
}

async function runGenerate(options: GenerateCommandOptions): Promise<void> {
  if (
    options.temperature === 0 &&
    (options.topK !== undefined || options.topP !== undefined || options.seed !== 0)
  ) {
    log(
      options,
      'note: --temperature 0 is greedy decoding; --top-k, --top-p and --seed only matter with --temperature > 0.',
    );
  }
  if (options.batch !== undefined) return runBatch(options);
  const prompt = options.prompt!;
  const set = options.adapter ?? [];
  const loaded = new LoadedAdapters();
  await loaded.add(set);
  const opened = await openModel(options, [set], loaded);
  const streaming = !options.json;
  let result: GenerateResult;
  // The prompt is echoed with the first token, so a refused run prints only its error.
  let echo = streaming && options.echo;
  const echoPrompt = () => {
    if (echo) writeStdout(prompt);
    echo = false;
  };
  try {
    result = await opened.generate(
      [prompt],
      [set],
      0,
      streaming
        ? (e) => {
            echoPrompt();
            if (e.text) writeStdout(e.text);
          }
        : undefined,
    );
    echoPrompt();
  } finally {
    await opened.release();
  }
  const { timings } = result;
  const out = result.outputs[0];
  if (streaming) {
    writeStdout('\n');
    log(
      options,
      `[${out.tokens.length} tokens, finish: ${out.finishReason}; prompt ${out.promptTokens.length} tokens in ${timings.prefillMs.toFixed(1)} ms, ` +
        `${timings.tokensPerSecond.toFixed(1)} tokens/s on ${opened.device}${options.quant ? `, ${options.quant}` : ''}]`,
    );
    return;
  }
  emit(
    options,
    {
      ...generationHeader(options, opened.device),
      ...jsonRow(out, set),
      timings: jsonTimings(timings),
    },
    () => '', // --json only: the human output was streamed above
  );
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

function parseNonNegative(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isFinite(n) || n < 0)
      throw new UsageError(`--${name} must be a number >= 0, got "${value}".`);
    return n;
  };
}

function parseSeed(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0)
    throw new UsageError(`--seed must be a non-negative integer, got "${value}".`);
  return n;
}

const DEVICE_NAMES: readonly Device[] = ['cpu', 'cuda', 'auto'];

function parseDeviceFlag(value: string): Device {
  if ((DEVICE_NAMES as readonly string[]).includes(value)) return value as Device;
  throw new UsageError(`Unknown device "${value}": use cpu, cuda or auto.`);
}
