import { createRng, type Rng } from '@lora/core';
import { RuntimeError } from '../errors.js';
import { IncrementalDetokenizer } from './detokenizer.js';
import { type SamplingOptions, sampleToken, validateSamplingOptions } from './sampling.js';
import type { TokenStepper } from './stepper.js';
import { findStop, stopHoldback } from './stop-sequences.js';
import type { Tokenizer } from './tokenizer.js';

/**
 * Why a row stopped: it reached `maxTokens` (or the model's `maxSequenceLength`), produced a
 * stop string, or sampled EOS.
 */
export type FinishReason = 'length' | 'stop' | 'eos';

/** Options of {@link generate}. Sampling defaults to greedy (temperature 0). */
export interface GenerateOptions extends SamplingOptions {
  /** One prompt, or several generated together as one batch (each row finishes on its own). */
  prompt: string | readonly string[];
  /** Most tokens to generate per row (EOS not counted). Default 64. */
  maxTokens?: number;
  /**
   * The model's context length (prompt + generated tokens), e.g. `max_position_embeddings`:
   * a row that reaches it finishes with 'length'; a prompt that fills it is refused.
   */
  maxSequenceLength?: number;
  /** Seed of the sampler. Row r draws from `createRng(seed, r)` (PCG32 stream r). Default 0. */
  seed?: number;
  /** Stop strings: generation of a row ends when its text contains one; the text ends before it. */
  stop?: readonly string[];
  /** Ids that end a row when sampled. Default: the tokenizer's EOS (none if it has none). */
  eosIds?: readonly number[];
  /** Add the tokenizer's BOS (etc.) to each prompt. Default true. */
  addSpecialTokens?: boolean;
  /** Called once per sampled token of each row, in order; see {@link TokenEvent}. */
  onToken?: (event: TokenEvent) => void;
}

/** One sampled token of one row, with the text it made final. */
export interface TokenEvent {
  row: number;
  /** The sampled id (an EOS id on the last event of a row that finished by EOS). */
  token: number;
  /**
   * Text that became final with this token ('' while an unfinished character or the start of
   * a possible stop string is held back). The `text` of a row's events concatenate to its output.
   */
  text: string;
  /** Set on the row's last event. */
  finishReason?: FinishReason;
}

/** The result for one prompt. */
export interface GenerationOutput {
  prompt: string;
  /** The prompt as the model saw it (with BOS when the tokenizer adds one). */
  promptTokens: number[];
  /**
   * The generated continuation. Its leading space is kept ("Once upon a time" + " there was"),
   * and it ends before the stop string when `finishReason` is 'stop'.
   */
  text: string;
  /** Generated ids: every sampled token except EOS (including those that formed a stop string). */
  tokens: number[];
  finishReason: FinishReason;
}

/** Wall-clock times of one {@link generate} call. */
export interface GenerationTimings {
  /** The prompt pass (`stepper.start`), which yields the first token. */
  prefillMs: number;
  /** All later steps (`stepper.step` and sampling). */
  decodeMs: number;
  /** Tokens sampled from the logits of later steps, over all rows. */
  decodeTokens: number;
  /** decodeTokens / decode seconds (0 when there was no later step). */
  tokensPerSecond: number;
}

export interface GenerateResult {
  outputs: GenerationOutput[];
  timings: GenerationTimings;
}

/** Per-row state while generating. */
interface Row {
  output: GenerationOutput;
  history: number[];
  detokenizer: IncrementalDetokenizer;
  rng: Rng;
  /** Length of `output.text` already passed to onToken. */
  emitted: number;
  done: boolean;
}

/**
 * Generates text for one or more prompts with a model (`stepper`) and its tokenizer: samples a
 * token per row and step (see {@link SamplingOptions} for the order of operations), feeds it
 * back, and ends each row on EOS, a stop string or `maxTokens`. Streams through `onToken`.
 * The stepper's batch is disposed at the end (also on error).
 */
export async function generate(
  stepper: TokenStepper,
  tokenizer: Tokenizer,
  options: GenerateOptions,
): Promise<GenerateResult> {
  try {
    return await runGeneration(stepper, tokenizer, options);
  } finally {
    await stepper.dispose();
  }
}

async function runGeneration(
  stepper: TokenStepper,
  tokenizer: Tokenizer,
  options: GenerateOptions,
): Promise<GenerateResult> {
  const prompts = typeof options.prompt === 'string' ? [options.prompt] : [...options.prompt];
  const maxTokens = options.maxTokens ?? 64;
  const maxSequenceLength = options.maxSequenceLength ?? Number.POSITIVE_INFINITY;
  const stops = options.stop ?? [];
  const eosIds = new Set(
    options.eosIds ?? (tokenizer.eosId === undefined ? [] : [tokenizer.eosId]),
  );
  validateGenerateOptions(prompts, maxTokens, stops, options);
  const seed = options.seed ?? 0;
  const maxStopLength = Math.max(0, ...stops.map((s) => s.length));

  const rows: Row[] = prompts.map((prompt, r) => {
    const promptTokens = tokenizer.encode(prompt, {
      addSpecialTokens: options.addSpecialTokens ?? true,
    });
    if (promptTokens.length >= maxSequenceLength) {
      throw new RuntimeError(
        'GENERATE_OPTIONS_INVALID',
        `prompt ${r} has ${promptTokens.length} tokens; the model's context is ${maxSequenceLength}, so no token can be generated. Shorten the prompt.`,
        { row: r, promptTokens: promptTokens.length, maxSequenceLength },
      );
    }
    if (promptTokens.length === 0) {
      throw new RuntimeError(
        'GENERATE_OPTIONS_INVALID',
        `prompt ${r} is empty and the tokenizer adds no BOS: the model needs at least one token.`,
        { row: r },
      );
    }
    return {
      output: { prompt, promptTokens, text: '', tokens: [], finishReason: 'length' },
      history: [...promptTokens],
      detokenizer: new IncrementalDetokenizer(tokenizer, promptTokens),
      rng: createRng(seed, r),
      emitted: 0,
      done: false,
    };
  });

  /** Appends new text; ends the row if a stop string completed. Returns the text to stream. */
  const advance = (row: Row, piece: string, final: boolean): string => {
    const out = row.output;
    const searchFrom = Math.max(0, out.text.length - maxStopLength + 1);
    out.text += piece;
    const stopAt = stops.length > 0 ? findStop(out.text, stops, searchFrom) : -1;
    if (stopAt >= 0) {
      out.text = out.text.slice(0, stopAt);
      out.finishReason = 'stop';
      row.done = true;
    }
    const end =
      row.done || final ? out.text.length : out.text.length - stopHoldback(out.text, stops);
    const fresh = out.text.slice(row.emitted, end);
    row.emitted = end;
    return fresh;
  };

  const sampling: SamplingOptions = options;
  const t0 = performance.now();
  let logits = await stepper.start(rows.map((r) => r.output.promptTokens));
  const prefillMs = performance.now() - t0;
  let decodeTokens = 0;
  const t1 = performance.now();
  for (let step = 0; ; step++) {
    checkLogits(logits, rows.length, stepper.vocabSize);
    for (let r = 0; r < rows.length; r++) {
      const row = rows[r];
      if (row.done) continue;
      if (step > 0) decodeTokens++;
      const token = sampleToken(logits[r], sampling, () => row.rng.uniform(), row.history);
      let text: string;
      if (eosIds.has(token)) {
        row.output.finishReason = 'eos';
        row.done = true;
        text = advance(row, row.detokenizer.flush(), true);
      } else {
        row.output.tokens.push(token);
        row.history.push(token);
        text = advance(row, row.detokenizer.push(token), false);
        const length = row.output.tokens.length;
        if (!row.done && (length >= maxTokens || row.history.length >= maxSequenceLength)) {
          row.done = true;
          text += advance(row, row.detokenizer.flush(), true);
        }
      }
      options.onToken?.({
        row: r,
        token,
        text,
        ...(row.done ? { finishReason: row.output.finishReason } : {}),
      });
    }
    if (rows.every((row) => row.done)) break;
    // Finished rows still occupy their place in the batch: feed them their last token.
    logits = await stepper.step(rows.map((row) => row.history[row.history.length - 1]));
  }
  const decodeMs = performance.now() - t1;
  return {
    outputs: rows.map((r) => r.output),
    timings: {
      prefillMs,
      decodeMs,
      decodeTokens,
      tokensPerSecond: decodeTokens > 0 ? decodeTokens / (decodeMs / 1000) : 0,
    },
  };
}

function validateGenerateOptions(
  prompts: readonly string[],
  maxTokens: number,
  stops: readonly string[],
  options: GenerateOptions,
): void {
  if (prompts.length === 0)
    throw new RuntimeError('GENERATE_OPTIONS_INVALID', 'generate needs at least one prompt.');
  if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) {
    throw new RuntimeError(
      'GENERATE_OPTIONS_INVALID',
      `maxTokens must be a positive integer, got ${maxTokens}.`,
      { maxTokens },
    );
  }
  const ctx = options.maxSequenceLength;
  if (ctx !== undefined && !(Number.isSafeInteger(ctx) && ctx >= 1)) {
    throw new RuntimeError(
      'GENERATE_OPTIONS_INVALID',
      `maxSequenceLength must be a positive integer, got ${ctx}.`,
      { maxSequenceLength: ctx },
    );
  }
  if (stops.some((s) => typeof s !== 'string' || s.length === 0)) {
    throw new RuntimeError('GENERATE_OPTIONS_INVALID', 'stop strings must be non-empty strings.', {
      stop: stops,
    });
  }
  if (options.seed !== undefined && !(Number.isSafeInteger(options.seed) && options.seed >= 0)) {
    throw new RuntimeError(
      'GENERATE_OPTIONS_INVALID',
      `seed must be a non-negative integer, got ${options.seed}.`,
      { seed: options.seed },
    );
  }
  validateSamplingOptions(options);
}

function checkLogits(logits: readonly Float32Array[], rows: number, vocabSize: number): void {
  if (logits.length !== rows || logits.some((l) => l.length !== vocabSize)) {
    throw new RuntimeError(
      'RUNTIME_FAILED',
      `the model returned ${logits.length} logit rows of lengths ${[...new Set(logits.map((l) => l.length))].join('/')}; expected ${rows} rows of ${vocabSize}.`,
    );
  }
}
