import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { isLoraError, readJsonFile } from '@lora/core';
import { RuntimeError } from '../errors.js';
import type { LlamaConfig } from '../models/llama/config.js';
import type { Tokenizer } from './tokenizer.js';

/**
 * The ids that end generation for a model folder: `eos_token_id` of config.json and of
 * generation_config.json (Llama 3 lists several there), and the tokenizer's EOS.
 */
export async function modelEosIds(
  dir: string,
  config: Pick<LlamaConfig, 'eosTokenId'>,
  tokenizer: Tokenizer,
): Promise<number[]> {
  const eos = new Set<number>([...idList(config.eosTokenId), ...(await generationConfigEos(dir))]);
  if (tokenizer.eosId !== undefined) eos.add(tokenizer.eosId);
  return [...eos];
}

function idList(value: unknown): number[] {
  const list = Array.isArray(value) ? value : [value];
  return list.filter((v): v is number => Number.isSafeInteger(v) && v >= 0);
}

/** `eos_token_id` of `generation_config.json` (a number or a list), if the file has one. */
async function generationConfigEos(dir: string): Promise<number[]> {
  const path = join(dir, 'generation_config.json');
  if (!existsSync(path)) return [];
  try {
    return idList(((await readJsonFile(path)) as { eos_token_id?: unknown } | null)?.eos_token_id);
  } catch (e) {
    // readJsonFile's typed errors already name the file and the cause.
    const why = isLoraError(e) ? e.message : `${path}: ${(e as Error).message}`;
    throw new RuntimeError('GENERATION_CONFIG_INVALID', `${why} Fix or remove it.`, { path });
  }
}
