import { readJsonFile } from '@lora/core';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { RuntimeError } from '../errors.js';
import { ByteTokenizer } from './byte-tokenizer.js';
import { HfTokenizer } from './hf-tokenizer.js';
import type { Tokenizer } from './tokenizer.js';

/**
 * The tokenizer of a model folder:
 * - `tokenizer.json` present: a {@link HfTokenizer} (with `tokenizer_config.json` if present);
 * - otherwise a {@link ByteTokenizer}, taking `bos_token_id` / `eos_token_id` from `config.json`
 *   when they are integers of at least 256 (BOS is then prepended to prompts). A `config.json`
 *   whose `vocab_size` is below 256 cannot be byte-level and is refused.
 */
export async function loadTokenizer(modelDir: string): Promise<Tokenizer> {
  if (!existsSync(modelDir) || !statSync(modelDir).isDirectory()) {
    throw new RuntimeError(
      'TOKENIZER_NOT_FOUND',
      `${modelDir} is not a folder. Pass a model folder (config.json, model.safetensors, tokenizer files).`,
      {
        path: modelDir,
      },
    );
  }
  if (existsSync(join(modelDir, 'tokenizer.json'))) return HfTokenizer.fromFolder(modelDir);

  const configPath = join(modelDir, 'config.json');
  let config: Record<string, unknown> = {};
  if (existsSync(configPath)) {
    try {
      config = (await readJsonFile(configPath)) as Record<string, unknown>;
    } catch (e) {
      throw new RuntimeError(
        'TOKENIZER_INVALID',
        `${configPath} is not valid JSON: ${(e as Error).message}`,
        { path: configPath },
        { cause: e },
      );
    }
  }
  const vocabSize = config.vocab_size;
  if (typeof vocabSize === 'number' && vocabSize < 256) {
    throw new RuntimeError(
      'TOKENIZER_NOT_FOUND',
      `${modelDir} has no tokenizer.json and its vocab_size (${vocabSize}) is too small for the byte-level tokenizer (256 byte ids). Add the model's tokenizer.json.`,
      { path: modelDir },
    );
  }
  const special = (key: string): number | undefined => {
    const v = config[key];
    return typeof v === 'number' && Number.isSafeInteger(v) && v >= 256 ? v : undefined;
  };
  return new ByteTokenizer({ bosId: special('bos_token_id'), eosId: special('eos_token_id') });
}
