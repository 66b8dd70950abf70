import { RuntimeError } from '../errors.js';
import {
  type FinishReason,
  GenerationRow,
  type GenerationOutput,
  type RowSettings,
  resolveRowSettings,
} from './row.js';
import type { TokenStepper } from './stepper.js';
import type { Tokenizer } from './tokenizer.js';

export type { FinishReason, GenerationOutput } from './row.js';

/** Options of {@link generate}. Sampling defaults to greedy (temperature 0). */
export interface GenerateOptions extends RowSettings {
  /** One prompt, or several generated together as one batch (each row finishes on its own). */
  prompt: string | readonly string[];
  /**
   * Index of the first prompt when a larger job is split over several calls (default 0): prompt
   * r samples from stream `firstRow + r` (see {@link RowSettings.seed}) and is named so in
   * messages, so a job gives the same text however it is split.
   */
  firstRow?: number;
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
  if (prompts.length === 0)
    throw new RuntimeError('GENERATE_OPTIONS_INVALID', 'generate needs at least one prompt.');
  const settings = resolveRowSettings(tokenizer, options);
  const firstRow = options.firstRow ?? 0;
  if (!Number.isSafeInteger(firstRow) || firstRow < 0) {
    throw new RuntimeError(
      'GENERATE_OPTIONS_INVALID',
      `firstRow must be a non-negative integer, got ${firstRow}.`,
      { firstRow },
    );
  }
  const rows = prompts.map(
    (prompt, r) => new GenerationRow(tokenizer, prompt, settings, firstRow + r),
  );

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
      const event = row.accept(logits[r]);
      options.onToken?.({ row: r, ...event });
    }
    if (rows.every((row) => row.done)) break;
    // Finished rows still occupy their place in the batch: feed them their last token.
    logits = await stepper.step(rows.map((row) => row.lastToken));
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

function checkLogits(logits: readonly Float32Array[], rows: number, vocabSize: number): void {
  if (logits.length !== rows || logits.some((l) => l.length !== vocabSize)) {
    throw new RuntimeError(
      'RUNTIME_FAILED',
      `the model returned ${logits.length} logit rows of lengths ${[...new Set(logits.map((l) => l.length))].join('/')}; expected ${rows} rows of ${vocabSize}.`,
    );
  }
}
