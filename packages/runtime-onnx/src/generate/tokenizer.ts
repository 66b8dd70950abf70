/**
 * The text side of generation: one interface for every tokenizer the runtime can load.
 *
 * Two kinds exist:
 * - `huggingface`: a model folder's `tokenizer.json` (+ `tokenizer_config.json`), run by the
 *   pure-JS `@huggingface/tokenizers` (BPE with byte fallback, Unigram, WordPiece...).
 * - `byte`: ids 0..255 are the bytes of the UTF-8 text, optional BOS/EOS ids above 255. For tiny
 *   models trained on raw bytes, which ship no tokenizer files.
 */
export interface Tokenizer {
  readonly kind: 'byte' | 'huggingface';
  /** Number of ids the tokenizer can produce (the model's vocabulary may be larger). */
  readonly vocabSize: number;
  /** Beginning-of-sequence id, if the tokenizer has one. */
  readonly bosId: number | undefined;
  /** End-of-sequence id, if the tokenizer has one: generation stops when it is sampled. */
  readonly eosId: number | undefined;
  /**
   * The most UTF-16 code units of text one token stands for, when known: a prompt longer than
   * this times the context (times a margin for normalization) cannot fit, and is refused before
   * tokenizing it (megabytes of text take minutes to tokenize).
   */
  readonly maxTokenChars?: number;
  /**
   * Text to ids. With `addSpecialTokens` (default true) the BOS (and EOS) the tokenizer's config
   * asks for are added, as for a prompt.
   */
  encode(text: string, options?: EncodeOptions): number[];
  /**
   * Ids to text. Special tokens (BOS, EOS, unk...) are left out unless `skipSpecialTokens` is false.
   * An incomplete UTF-8 sequence at the end decodes to U+FFFD; {@link IncrementalDetokenizer}
   * holds such tails back when streaming.
   */
  decode(ids: readonly number[], options?: DecodeOptions): string;
}

export interface EncodeOptions {
  /** Add the BOS/EOS the tokenizer is configured to add (default true). */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Leave special tokens out of the text (default true). */
  skipSpecialTokens?: boolean;
}
