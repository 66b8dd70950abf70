import type {
  Device,
  GenerateResult,
  GenerationOutput,
  Tokenizer,
  TokenStepper,
} from '@lora/runtime-onnx';
import { assertRegularInputs } from '@lora/core';
import type { Command } from 'commander';
import { UsageError } from '../errors.js';
import { type CommonOptions, emit, log, parseNumber, parsePositiveInt } from '../output.js';
import { readPrompt } from '../prompt-input.js';
// LoRA flags (--adapter, --batch, --merged) live in generate-adapters.ts.
import {
  type AdapterOptions,
  addAdapterOptions,
  type BatchRow,
  prepareAdapters,
  readBatchFile,
} from './generate-adapters.js';
import { resolveModelOrBundled } from '../model-source.js';
import { startProgress } from '../progress.js';

/** 4-bit formats `--quant` accepts for the base weights. */
const QUANT_FORMATS = ['nf4', 'fp4', 'int4', 'uint4'] as const;
type QuantFormat = (typeof QUANT_FORMATS)[number];

/** Parsed flags of `lora generate`. Later flags (adapters, batch files) extend this object. */
export interface GenerateCommandOptions extends CommonOptions, AdapterOptions {
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
  addAdapterOptions(program.command('generate'))
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
      `quantize the base weights to 4 bits at load: ${QUANT_FORMATS.join(', ')}`,
      parseQuant,
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
      options.prompt = await readPrompt(options);
      if (options.prompt === undefined && !options.batch)
        throw new UsageError(
          '--prompt <text>, --prompt-file <path> or --batch <file.jsonl> is required.',
        );
      if (options.merged && !options.adapter?.length)
        throw new UsageError('--merged needs at least one --adapter to merge.');
      await runGenerate(options);
    });
}

/** The model and tokenizer for a run: the one place where the model is opened. */
interface OpenedModel {
  tokenizer: Tokenizer;
  /** A fresh batch (KV cache) on the model. */
  stepper(): TokenStepper;
  device: 'cpu' | 'cuda';
  eosIds: number[];
  /** Context length from config.json (`max_position_embeddings`), if stated. */
  maxSequenceLength?: number;
  /** The prompts of the batch (one without --batch) and the adapters of each row. */
  prompts: string[];
  rowLabels: string[];
  release(): Promise<void>;
}

async function openModel(options: GenerateCommandOptions): Promise<OpenedModel> {
  // Imported here so that other commands do not load onnxruntime at startup.
  const { loadLlama, loadTokenizer, modelEosIds } = await import('@lora/runtime-onnx');
  const dir = options.model!;
  const tokenizer = await loadTokenizer(dir);
  // LoRA: rows from --batch or the one --prompt, each with its adapter set.
  const rows: BatchRow[] = options.batch
    ? await readBatchFile(options.batch, options.adapter ?? [])
    : [{ prompt: options.prompt!, adapters: options.adapter ?? [] }];
  const lora = rows.some((r) => r.adapters.length > 0)
    ? await prepareAdapters(rows, options.merged ?? false)
    : undefined;
  const loading = startProgress(options, 'loading');
  const modelOptions = {
    logits: 'last' as const,
    quant: options.quant,
    device: options.device,
    warn: (m: string) => log(options, m),
    onProgress: (done: number, total: number, name: string) => loading.update(done, total, name),
  };
  const model = await (lora ? lora.open(dir, modelOptions) : loadLlama(dir, modelOptions)).finally(
    () => loading.stop(),
  );
  const eosIds = await modelEosIds(dir, model.config, tokenizer);
  return {
    tokenizer,
    stepper: () => model.stepper(lora?.feeds),
    device: model.device,
    eosIds,
    maxSequenceLength: model.config.maxPositionEmbeddings,
    prompts: rows.map((r) => r.prompt),
    rowLabels: lora?.rowLabels ?? rows.map(() => 'base'),
    release: () => model.release(),
  };
}

/** The library's option names, as the flags users typed. */
const FLAG_OF_OPTION: Record<string, string> = {
  maxTokens: '--max-tokens',
  topK: '--top-k',
  topP: '--top-p',
  repetitionPenalty: '--repetition-penalty',
  maxSequenceLength: "the model's context (max_position_embeddings)",
  temperature: '--temperature',
  seed: '--seed',
};

/** An options error of the library, reworded with flag names as a usage error. */
function withFlagNames(e: unknown): unknown {
  const code = (e as { code?: string })?.code;
  if (code !== 'SAMPLING_OPTIONS_INVALID' && code !== 'GENERATE_OPTIONS_INVALID') return e;
  const message = (e as Error).message.replace(
    /\b(maxTokens|topK|topP|repetitionPenalty|maxSequenceLength|temperature|seed)\b/g,
    (name) => FLAG_OF_OPTION[name],
  );
  return new UsageError(message);
}

async function runGenerate(options: GenerateCommandOptions): Promise<void> {
  const { generate } = await import('@lora/runtime-onnx');
  if (
    options.temperature === 0 &&
    (options.topK !== undefined || options.topP !== undefined || options.seed !== 0)
  ) {
    log(
      options,
      'note: --temperature 0 is greedy decoding; --top-k, --top-p and --seed only matter with --temperature > 0.',
    );
  }
  const opened = await openModel(options);
  const streaming = !options.json && opened.prompts.length === 1;
  let result: GenerateResult;
  // The prompt is echoed with the first token, so a refused run prints only its error.
  let echo = streaming && options.echo;
  const echoPrompt = () => {
    if (echo) process.stdout.write(opened.prompts[0]);
    echo = false;
  };
  try {
    result = await generate(opened.stepper(), opened.tokenizer, {
      prompt: opened.prompts.length === 1 ? opened.prompts[0] : opened.prompts,
      maxTokens: options.maxTokens,
      temperature: options.temperature,
      topK: options.topK,
      topP: options.topP,
      repetitionPenalty: options.repetitionPenalty,
      seed: options.seed,
      stop: options.stop ?? [],
      eosIds: opened.eosIds,
      maxSequenceLength: opened.maxSequenceLength,
      onToken: streaming
        ? (e) => {
            echoPrompt();
            if (e.text) process.stdout.write(e.text);
          }
        : undefined,
    }).catch((e) => {
      throw withFlagNames(e);
    });
    echoPrompt();
  } finally {
    await opened.release();
  }
  const { timings } = result;
  if (streaming) {
    process.stdout.write('\n');
    const out = result.outputs[0];
    log(
      options,
      `[${out.tokens.length} tokens, finish: ${out.finishReason}; prompt ${out.promptTokens.length} tokens in ${timings.prefillMs.toFixed(1)} ms, ` +
        `${timings.tokensPerSecond.toFixed(1)} tokens/s on ${opened.device}${options.quant ? `, ${options.quant}` : ''}]`,
    );
    return;
  }
  const rows = result.outputs.map((o, i) => ({ ...jsonRow(o), adapters: opened.rowLabels[i] }));
  emit(
    options,
    {
      model: options.model,
      device: opened.device,
      quant: options.quant ?? null,
      sampling: {
        temperature: options.temperature,
        topK: options.topK ?? null,
        topP: options.topP ?? null,
        repetitionPenalty: options.repetitionPenalty ?? null,
        seed: options.seed,
      },
      ...(rows.length === 1 ? rows[0] : { outputs: rows }),
      timings: {
        prefillMs: round(timings.prefillMs),
        decodeMs: round(timings.decodeMs),
        decodeTokens: timings.decodeTokens,
        tokensPerSecond: round(timings.tokensPerSecond),
      },
    },
    // Human output for a batch (a single prompt was streamed above).
    () =>
      result.outputs
        .map(
          (o, i) =>
            `## row ${i + 1} (${opened.rowLabels[i]})\n${options.echo ? o.prompt : ''}${o.text}`,
        )
        .join('\n\n'),
  );
}

function jsonRow(o: GenerationOutput) {
  return {
    prompt: o.prompt,
    text: o.text,
    tokens: o.tokens,
    promptTokens: o.promptTokens,
    finishReason: o.finishReason,
  };
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
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

function parseQuant(value: string): QuantFormat {
  if ((QUANT_FORMATS as readonly string[]).includes(value)) return value as QuantFormat;
  throw new UsageError(`--quant must be one of ${QUANT_FORMATS.join(', ')}, got "${value}".`);
}

const DEVICE_NAMES: readonly Device[] = ['cpu', 'cuda', 'auto'];

function parseDeviceFlag(value: string): Device {
  if ((DEVICE_NAMES as readonly string[]).includes(value)) return value as Device;
  throw new UsageError(`Unknown device "${value}": use cpu, cuda or auto.`);
}
