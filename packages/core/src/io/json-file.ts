import { CoreError } from '../errors.js';
import { openRegularFile } from './file-kind.js';

/**
 * Deepest nesting accepted in a JSON file. Configs, tokenizers and adapter configs nest a few
 * levels; a file nested hundreds deep is damaged or hostile, and would overflow the stack of any
 * recursive walk (formatting an error message included).
 */
export const MAX_JSON_DEPTH = 128;

/** Largest JSON file read by default (tokenizer.json of large vocabularies is tens of MB). */
export const MAX_JSON_BYTES = 256 * 2 ** 20;

/** The deepest `[`/`{` nesting of JSON text, found by one linear scan (strings skipped). */
function jsonDepth(text: string, limit: number): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c)
        i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      depth++;
      if (depth > max) {
        max = depth;
        if (max > limit) return max;
      }
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return max;
}

/**
 * `JSON.parse` with the checks every file from a stranger needs: nesting bounded by
 * {@link MAX_JSON_DEPTH} (checked before parsing), and errors as `CoreError` naming `source`:
 * `JSON_INVALID` for bad syntax, `JSON_TOO_DEEP` for nesting.
 */
export function parseJsonText(text: string, source: string, maxDepth = MAX_JSON_DEPTH): unknown {
  if (jsonDepth(text, maxDepth) > maxDepth) {
    throw new CoreError(
      'JSON_TOO_DEEP',
      `${source}: JSON nested more than ${maxDepth} levels deep; no config or tokenizer needs that, so the file is damaged or not what it claims to be.`,
      { source, maxDepth },
    );
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new CoreError(
      'JSON_INVALID',
      `${source}: not valid JSON (${(e as Error).message}).`,
      { source },
      { cause: e },
    );
  }
}

/**
 * Reads and parses a JSON file: regular files only (a FIFO or device is refused, never waited
 * on), at most `maxBytes` (checked before reading), then {@link parseJsonText}.
 */
export async function readJsonFile(path: string, maxBytes = MAX_JSON_BYTES): Promise<unknown> {
  const handle = await openRegularFile(path);
  let text: string;
  try {
    const { size } = await handle.stat();
    if (size > maxBytes) {
      throw new CoreError(
        'JSON_TOO_LARGE',
        `${path}: ${size} bytes, more than the ${maxBytes} bytes a JSON file may have here.`,
        { file: path, size, maxBytes },
      );
    }
    text = await handle.readFile('utf8');
  } finally {
    await handle.close();
  }
  return parseJsonText(text, path);
}
