import { RuntimeError } from '../errors.js';
import type { DecodeOptions, EncodeOptions, Tokenizer } from './tokenizer.js';

/** Options of {@link ByteTokenizer}. */
export interface ByteTokenizerOptions {
  /** BOS id, at least 256 (ids 0..255 are bytes). No BOS when absent. */
  bosId?: number;
  /** EOS id, at least 256. No EOS when absent. */
  eosId?: number;
  /** Prepend BOS when encoding with special tokens (default: true when `bosId` is set). */
  addBos?: boolean;
  /** Append EOS when encoding with special tokens (default false: prompts do not end). */
  addEos?: boolean;
}

const BYTE_COUNT = 256;

/**
 * Byte-level tokenizer: the id of each byte of the UTF-8 encoded text is the byte's value
 * (0..255), so any text round-trips and no vocabulary file is needed. Optional BOS/EOS ids sit
 * above the bytes (e.g. 256 and 257); `vocabSize` is one past the largest id in use.
 * Decoding ignores the special ids; bytes that do not form valid UTF-8 decode to U+FFFD.
 */
export class ByteTokenizer implements Tokenizer {
  readonly kind = 'byte' as const;
  /** One token per UTF-8 byte: at most one UTF-16 code unit. */
  readonly maxTokenChars = 1;
  readonly vocabSize: number;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  private readonly addBos: boolean;
  private readonly addEos: boolean;
  private readonly utf8 = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

  constructor(options: ByteTokenizerOptions = {}) {
    for (const key of ['bosId', 'eosId'] as const) {
      const id = options[key];
      if (id !== undefined && (!Number.isSafeInteger(id) || id < BYTE_COUNT)) {
        throw new RuntimeError(
          'TOKENIZER_INVALID',
          `byte tokenizer: ${key} must be an integer of at least ${BYTE_COUNT} (ids 0..255 are the bytes), got ${id}.`,
          { [key]: id },
        );
      }
    }
    if (options.bosId !== undefined && options.bosId === options.eosId) {
      throw new RuntimeError(
        'TOKENIZER_INVALID',
        `byte tokenizer: bosId and eosId are both ${options.bosId}; give them different ids.`,
      );
    }
    this.bosId = options.bosId;
    this.eosId = options.eosId;
    this.addBos = options.addBos ?? options.bosId !== undefined;
    this.addEos = options.addEos ?? false;
    if (this.addBos && this.bosId === undefined) {
      throw new RuntimeError(
        'TOKENIZER_INVALID',
        'byte tokenizer: addBos is true but no bosId is given.',
      );
    }
    if (this.addEos && this.eosId === undefined) {
      throw new RuntimeError(
        'TOKENIZER_INVALID',
        'byte tokenizer: addEos is true but no eosId is given.',
      );
    }
    this.vocabSize = Math.max(BYTE_COUNT, (this.bosId ?? 0) + 1, (this.eosId ?? 0) + 1);
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    const special = options.addSpecialTokens ?? true;
    const bytes = Buffer.from(text, 'utf8');
    const ids: number[] = [];
    if (special && this.addBos) ids.push(this.bosId!);
    for (const b of bytes) ids.push(b);
    if (special && this.addEos) ids.push(this.eosId!);
    return ids;
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    const skipSpecial = options.skipSpecialTokens ?? true;
    const bytes = new Uint8Array(ids.length);
    let n = 0;
    const parts: string[] = [];
    for (const id of ids) {
      if (Number.isInteger(id) && id >= 0 && id < BYTE_COUNT) {
        bytes[n++] = id;
        continue;
      }
      if (id === this.bosId || id === this.eosId) {
        if (skipSpecial) continue;
        // A special token splits the byte stream: flush what came before it.
        parts.push(this.utf8.decode(bytes.subarray(0, n)), id === this.bosId ? '<s>' : '</s>');
        n = 0;
        continue;
      }
      throw new RuntimeError(
        'TOKENIZER_INVALID_ID',
        `byte tokenizer: id ${id} is neither a byte (0..255) nor the BOS/EOS id (${this.bosId ?? 'none'}/${this.eosId ?? 'none'}). Is the model's vocabulary meant for another tokenizer?`,
        { id },
      );
    }
    parts.push(this.utf8.decode(bytes.subarray(0, n)));
    return parts.join('');
  }
}
