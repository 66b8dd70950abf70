import { readFile } from 'node:fs/promises';
import { assertRegularInputs, describeFsError } from '@lora/core';
import { UsageError } from './errors.js';

/** Reads all of standard input as UTF-8 text. */
async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * The prompt from `--prompt <text>`, `--prompt -` (standard input) or `--prompt-file <path>`
 * (`-` for standard input). Long prompts belong in a file or on stdin: the command line has
 * size limits of its own.
 */
export async function readPrompt(options: {
  prompt?: string;
  promptFile?: string;
}): Promise<string | undefined> {
  if (options.prompt !== undefined && options.promptFile !== undefined)
    throw new UsageError('--prompt and --prompt-file exclude each other: give one.');
  const source = options.promptFile ?? (options.prompt === '-' ? '-' : undefined);
  if (source === undefined) return options.prompt;
  if (source === '-') return readStdin();
  assertRegularInputs([source]);
  try {
    return await readFile(source, 'utf8');
  } catch (e) {
    throw new UsageError(`Could not read --prompt-file ${source}: ${describeFsError(e)}.`);
  }
}
