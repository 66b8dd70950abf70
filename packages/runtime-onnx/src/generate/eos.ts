import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
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
    return idList(
      (JSON.parse(await readFile(path, 'utf8')) as { eos_token_id?: unknown }).eos_token_id,
    );
  } catch (e) {
    throw new RuntimeError(
      'GENERATION_CONFIG_INVALID',
      `${path} is not valid JSON (${(e as Error).message}); fix or remove it.`,
      { path },
    );
  }
}
