import type { Tokenizer } from './tokenizer.js';

/** How many prompt tokens are decoded as context in front of the first generated token. */
const PROMPT_CONTEXT_TOKENS = 6;

/**
 * Streams text from a growing token sequence, emitting only text that can no longer change.
 *
 * Decoding token by token is wrong for byte-level and byte-fallback vocabularies (one character
 * may span several tokens) and for decoders that strip or merge spaces. So it decodes a short
 * window twice, without and with the new tokens, and emits the difference, holding it back
 * while it ends in U+FFFD (an unfinished UTF-8 sequence). The window starts at the tokens of the
 * previous emission, so its decode is always complete text; the work per token stays small.
 */
export class IncrementalDetokenizer {
  private readonly ids: number[];
  /** Start of the decode window: the first token of the previous emission. */
  private prefixOffset: number;
  /** End of what has been emitted. */
  private readOffset: number;

  /** @param promptIds the prompt, decoded as context so that spacing of the first new token is right */
  constructor(
    private readonly tokenizer: Tokenizer,
    promptIds: readonly number[] = [],
  ) {
    this.ids = [...promptIds];
    this.readOffset = this.ids.length;
    this.prefixOffset = Math.max(0, this.ids.length - PROMPT_CONTEXT_TOKENS);
  }

  /** Adds one generated token; returns the text that became stable ('' if none yet). */
  push(id: number): string {
    this.ids.push(id);
    return this.emit(false);
  }

  /** At the end of generation: returns whatever is still held back, even an unfinished character. */
  flush(): string {
    return this.emit(true);
  }

  private emit(final: boolean): string {
    if (this.readOffset === this.ids.length) return '';
    const prefixText = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const fullText = this.tokenizer.decode(this.ids.slice(this.prefixOffset));
    const stable = fullText.length > prefixText.length && (final || !fullText.endsWith('\uFFFD'));
    if (!stable) return '';
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return fullText.slice(prefixText.length);
  }
}
