import { createRng, type Rng } from '@lora/core';
import { RuntimeError } from '../errors.js';
import { IncrementalDetokenizer } from './detokenizer.js';
import { type SamplingOptions, sampleToken, validateSamplingOptions } from './sampling.js';
import { findStop, stopHoldback } from './stop-sequences.js';
import type { Tokenizer } from './tokenizer.js';

/**
 * Why a row stopped: it reached `maxTokens` (or the model's `maxSequenceLength`), produced a
 * stop string, or sampled EOS.
 */
export type FinishReason = 'length' | 'stop' | 'eos';

/** How every row of a generation samples and ends (see {@link GenerateOptions}). */
export interface RowSettings extends SamplingOptions {
  /** Most tokens to generate per row (EOS not counted). Default 64. */
  maxTokens?: number;
  /** Context length (prompt + generated tokens): a row reaching it ends with 'length'. */
  maxSequenceLength?: number;
  /** Seed of the sampler. Row r draws from `createRng(seed, r)` (PCG32 stream r). Default 0. */
  seed?: number;
  /** Stop strings: a row ends when its text contains one; the text ends before it. */
  stop?: readonly string[];
  /** Ids that end a row when sampled. Default: the tokenizer's EOS (none if it has none). */
  eosIds?: readonly number[];
  /** Add the tokenizer's BOS (etc.) to each prompt. Default true. */
  addSpecialTokens?: boolean;
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

/** What one sampled token of a row produced. */
export interface RowEvent {
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

/**
 * One row of a generation: its prompt tokens, sampler stream, streaming detokenizer and stop
 * handling. The caller runs the model and hands the row its next-token logits ({@link accept});
 * the row samples, decides whether it is done and returns the text that became final.
 * `generate()` drives a fixed batch of rows; a server drives rows that join and leave a
 * running batch. Either way a row's output depends only on its own logits.
 */
export class GenerationRow {
  readonly output: GenerationOutput;
  /** Prompt and generated ids (EOS excluded): what the model has seen or will see next. */
  readonly history: number[];
  done = false;
  readonly #detokenizer: IncrementalDetokenizer;
  readonly #rng: Rng;
  readonly #settings: ResolvedRowSettings;
  /** Length of `output.text` already returned as event text. */
  #emitted = 0;

  /**
   * @param index the row's place in its request: its sampler stream and the name in messages
   * Throws `GENERATE_OPTIONS_INVALID` for an empty prompt or one that fills the context.
   */
  constructor(tokenizer: Tokenizer, prompt: string, settings: ResolvedRowSettings, index = 0) {
    // Normalizers may shrink text (composing accents): allow 4x before calling it hopeless.
    const cannotFit =
      4 * (tokenizer.maxTokenChars ?? Number.POSITIVE_INFINITY) * settings.maxSequenceLength;
    if (prompt.length > cannotFit) {
      throw new RuntimeError(
        'GENERATE_OPTIONS_INVALID',
        `prompt ${index} has ${prompt.length} characters; the model's context is ${settings.maxSequenceLength} tokens of at most ${tokenizer.maxTokenChars} characters each, so it cannot fit (refused before tokenizing). Shorten the prompt.`,
        { row: index, promptChars: prompt.length, maxSequenceLength: settings.maxSequenceLength },
      );
    }
    const promptTokens = tokenizer.encode(prompt, { addSpecialTokens: settings.addSpecialTokens });
    if (promptTokens.length >= settings.maxSequenceLength) {
      throw new RuntimeError(
        'GENERATE_OPTIONS_INVALID',
        `prompt ${index} has ${promptTokens.length} tokens; the model's context is ${settings.maxSequenceLength}, so no token can be generated. Shorten the prompt.`,
        {
          row: index,
          promptTokens: promptTokens.length,
          maxSequenceLength: settings.maxSequenceLength,
        },
      );
    }
    if (promptTokens.length === 0) {
      throw new RuntimeError(
        'GENERATE_OPTIONS_INVALID',
        `prompt ${index} is empty and the tokenizer adds no BOS: the model needs at least one token.`,
        { row: index },
      );
    }
    this.output = { prompt, promptTokens, text: '', tokens: [], finishReason: 'length' };
    this.history = [...promptTokens];
    this.#detokenizer = new IncrementalDetokenizer(tokenizer, promptTokens);
    this.#rng = createRng(settings.seed, index);
    this.#settings = settings;
  }

  /** The id to feed the model next (the last sampled one, or the prompt's last). */
  get lastToken(): number {
    return this.history[this.history.length - 1];
  }

  /** Samples the next token from this row's logits and advances the row. Not after `done`. */
  accept(logits: Float32Array): RowEvent {
    if (this.done) throw new RuntimeError('STEPPER_STATE', 'accept: the row is already done.');
    const s = this.#settings;
    const out = this.output;
    const token = sampleToken(logits, s.sampling, () => this.#rng.uniform(), this.history);
    let text: string;
    if (s.eosIds.has(token)) {
      out.finishReason = 'eos';
      this.done = true;
      text = this.#advance(this.#detokenizer.flush(), true);
    } else {
      out.tokens.push(token);
      this.history.push(token);
      text = this.#advance(this.#detokenizer.push(token), false);
      if (
        !this.done &&
        (out.tokens.length >= s.maxTokens || this.history.length >= s.maxSequenceLength)
      ) {
        this.done = true;
        text += this.#advance(this.#detokenizer.flush(), true);
      }
    }
    return this.done ? { token, text, finishReason: out.finishReason } : { token, text };
  }

  /** Appends new text; ends the row if a stop string completed. Returns the text to stream. */
  #advance(piece: string, final: boolean): string {
    const { stops, maxStopLength } = this.#settings;
    const out = this.output;
    const searchFrom = Math.max(0, out.text.length - maxStopLength + 1);
    out.text += piece;
    const stopAt = stops.length > 0 ? findStop(out.text, stops, searchFrom) : -1;
    if (stopAt >= 0) {
      out.text = out.text.slice(0, stopAt);
      out.finishReason = 'stop';
      this.done = true;
    }
    const end =
      this.done || final ? out.text.length : out.text.length - stopHoldback(out.text, stops);
    const fresh = out.text.slice(this.#emitted, end);
    this.#emitted = end;
    return fresh;
  }
}

/** {@link RowSettings} checked and with defaults filled in ({@link resolveRowSettings}). */
export interface ResolvedRowSettings {
  readonly maxTokens: number;
  readonly maxSequenceLength: number;
  readonly seed: number;
  readonly stops: readonly string[];
  readonly maxStopLength: number;
  readonly eosIds: ReadonlySet<number>;
  readonly addSpecialTokens: boolean;
  readonly sampling: SamplingOptions;
}

/** Checks the settings (throws `GENERATE_OPTIONS_INVALID`) and fills in the defaults. */
export function resolveRowSettings(
  tokenizer: Tokenizer,
  options: RowSettings,
): ResolvedRowSettings {
  const maxTokens = options.maxTokens ?? 64;
  const stops = options.stop ?? [];
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
  return {
    maxTokens,
    maxSequenceLength: ctx ?? Number.POSITIVE_INFINITY,
    seed: options.seed ?? 0,
    stops,
    maxStopLength: Math.max(0, ...stops.map((s) => s.length)),
    eosIds: new Set(options.eosIds ?? (tokenizer.eosId === undefined ? [] : [tokenizer.eosId])),
    addSpecialTokens: options.addSpecialTokens ?? true,
    sampling: options,
  };
}
