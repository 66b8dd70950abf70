import { existsSync } from 'node:fs';
import { type LoraError, readJsonFile } from '@lora/core';
import { join } from 'node:path';
import { Tokenizer as HfJsTokenizer } from '@huggingface/tokenizers';
import { RuntimeError } from '../errors.js';
import type { DecodeOptions, EncodeOptions, Tokenizer } from './tokenizer.js';

/** The fields of `tokenizer_config.json` this wrapper reads (all optional). */
export interface HfTokenizerConfig {
  bos_token?: string | { content: string } | null;
  eos_token?: string | { content: string } | null;
  add_bos_token?: boolean;
  add_eos_token?: boolean;
  clean_up_tokenization_spaces?: boolean;
  [key: string]: unknown;
}

/**
 * A Hugging Face `tokenizer.json` run by `@huggingface/tokenizers` (pure JS).
 *
 * BOS/EOS come from `tokenizer_config.json` (`bos_token`, `eos_token`). Whether BOS/EOS are added
 * follows `add_bos_token` / `add_eos_token` when the config states them (as transformers' Llama
 * tokenizers do); otherwise whatever the `tokenizer.json` post-processor adds.
 */
export class HfTokenizer implements Tokenizer {
  readonly kind = 'huggingface' as const;
  readonly vocabSize: number;
  readonly maxTokenChars: number;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  private readonly inner: HfJsTokenizer;
  private readonly addBos: boolean | undefined;
  private readonly addEos: boolean | undefined;
  private readonly source: string;

  /**
   * @param tokenizerJson the parsed `tokenizer.json`
   * @param config the parsed `tokenizer_config.json` (`{}` when the folder has none)
   * @param source where the JSON came from, for error messages
   */
  constructor(tokenizerJson: unknown, config: HfTokenizerConfig = {}, source = 'tokenizer.json') {
    if (
      typeof tokenizerJson !== 'object' ||
      tokenizerJson === null ||
      !('model' in tokenizerJson)
    ) {
      throw new RuntimeError(
        'TOKENIZER_INVALID',
        `${source}: not a Hugging Face tokenizer (no "model" field).`,
        { source },
      );
    }
    checkTokenIds(tokenizerJson, source);
    this.source = source;
    try {
      this.inner = new HfJsTokenizer(tokenizerJson, config);
    } catch (e) {
      throw new RuntimeError(
        'TOKENIZER_INVALID',
        `${source}: @huggingface/tokenizers could not load it: ${(e as Error).message}`,
        { source },
        { cause: e },
      );
    }
    const vocab = this.inner.get_vocab(true);
    this.vocabSize = vocab.size;
    // byte-level and SentencePiece vocabularies spell one input unit per character
    let longest = 1;
    for (const token of vocab.keys())
      if (typeof token === 'string' && token.length > longest) longest = token.length;
    this.maxTokenChars = longest;
    this.bosId = this.specialId(config.bos_token, 'bos_token', source);
    this.eosId = this.specialId(config.eos_token, 'eos_token', source);
    this.addBos = typeof config.add_bos_token === 'boolean' ? config.add_bos_token : undefined;
    this.addEos = typeof config.add_eos_token === 'boolean' ? config.add_eos_token : undefined;
    if (this.addBos && this.bosId === undefined) {
      throw new RuntimeError(
        'TOKENIZER_INVALID',
        `${source}: add_bos_token is true but bos_token is not set.`,
        { source },
      );
    }
    if (this.addEos && this.eosId === undefined) {
      throw new RuntimeError(
        'TOKENIZER_INVALID',
        `${source}: add_eos_token is true but eos_token is not set.`,
        { source },
      );
    }
  }

  /** Loads `tokenizer.json` and, when present, `tokenizer_config.json` from a model folder. */
  static async fromFolder(modelDir: string): Promise<HfTokenizer> {
    const jsonPath = join(modelDir, 'tokenizer.json');
    const tokenizerJson = await readJson(jsonPath, true);
    const config = (await readJson(join(modelDir, 'tokenizer_config.json'), false)) ?? {};
    return new HfTokenizer(tokenizerJson, config as HfTokenizerConfig, jsonPath);
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    const special = options.addSpecialTokens ?? true;
    // The post-processor decides when the config is silent; an explicit config wins.
    const configDecides = this.addBos !== undefined || this.addEos !== undefined;
    const ids = this.inner.encode(text, { add_special_tokens: special && !configDecides }).ids;
    if (!ids.every(Number.isInteger)) {
      throw new RuntimeError(
        'TOKENIZER_INVALID',
        `${this.source}: the tokenizer maps text to no token id (its "model" section is incomplete). Use the model's original tokenizer.json.`,
        { source: this.source },
      );
    }
    if (special && configDecides) {
      if (this.addBos) ids.unshift(this.bosId!);
      if (this.addEos) ids.push(this.eosId!);
    }
    return ids;
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    // the library throws on an empty list; nothing decodes to nothing
    if (ids.length === 0) return '';
    return this.inner.decode(ids as number[], {
      skip_special_tokens: options.skipSpecialTokens ?? true,
    });
  }

  private specialId(
    token: HfTokenizerConfig['bos_token'],
    field: string,
    source: string,
  ): number | undefined {
    if (token === undefined || token === null) return undefined;
    const content = typeof token === 'string' ? token : token.content;
    const id = this.inner.token_to_id(content);
    if (id === undefined) {
      throw new RuntimeError(
        'TOKENIZER_INVALID',
        `${source}: tokenizer_config.json ${field} "${content}" is not in the vocabulary. Fix the config or the tokenizer.json.`,
        { source, field },
      );
    }
    return id;
  }
}

/**
 * Largest token id accepted (exclusive): 2^24, far above any real vocabulary (the largest are about
 * 256k). `@huggingface/tokenizers` sizes tables by the largest id, so an id such as 1e9 would
 * stall or exhaust memory before anything could be refused.
 */
export const MAX_TOKEN_ID = 2 ** 24;

/**
 * Checks every token id a `tokenizer.json` declares (vocabulary values, `id`, `unk_id`, `ids`
 * lists) is an integer in [0, {@link MAX_TOKEN_ID}), before the library builds anything from them.
 */
function checkTokenIds(json: object, source: string): void {
  const bad = (where: string, value: unknown) =>
    new RuntimeError(
      'TOKENIZER_INVALID',
      `${source}: token id ${JSON.stringify(value)?.slice(0, 40)} at ${where} is not an integer in [0, ${MAX_TOKEN_ID}). A real tokenizer's ids are small non-negative integers; the file is damaged or not a tokenizer.`,
      { source, where },
    );
  const isId = (v: unknown) =>
    Number.isInteger(v) && (v as number) >= 0 && (v as number) < MAX_TOKEN_ID;
  const walk = (v: unknown, where: string): void => {
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) walk(v[i], `${where}[${i}]`);
      return;
    }
    if (v === null || typeof v !== 'object') return;
    for (const [key, x] of Object.entries(v)) {
      const at = `${where}.${key}`;
      // string ids name template pieces (TemplateProcessing's "$A", "<s>"), not token ids
      if ((key === 'id' || key === 'unk_id') && x !== null && typeof x !== 'string' && !isId(x))
        throw bad(at, x);
      if (key === 'ids' && Array.isArray(x)) {
        for (const id of x) if (!isId(id)) throw bad(at, id);
      } else if (key === 'vocab' && x !== null && typeof x === 'object' && !Array.isArray(x)) {
        for (const [token, id] of Object.entries(x))
          if (!isId(id)) throw bad(`${at}[${JSON.stringify(token).slice(0, 40)}]`, id);
      } else walk(x, at);
    }
  };
  walk(json, '$');
}

async function readJson(path: string, required: boolean): Promise<unknown> {
  if (!required && !existsSync(path)) return undefined;
  try {
    return await readJsonFile(path);
  } catch (e) {
    const code = (e as LoraError).code;
    throw new RuntimeError(
      code === 'FILE_NOT_FOUND' || code === 'FILE_UNREADABLE'
        ? 'TOKENIZER_NOT_FOUND'
        : 'TOKENIZER_INVALID',
      (e as Error).message,
      { path },
      { cause: e },
    );
  }
}
