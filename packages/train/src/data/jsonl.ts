import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseJsonText } from '@lora/core';
import { TrainError } from '../errors.js';

/** One parsed line of a JSONL file, with its 1-based line number. */
export interface JsonlRow {
  readonly line: number;
  readonly value: unknown;
}

/**
 * Reads a JSONL file one line at a time (a stream: the file is never held whole in memory) and
 * yields each non-blank line parsed. A line that is not JSON throws `DATA_INVALID` naming the file
 * and the line; a missing file throws `DATA_NOT_FOUND`.
 */
export async function* readJsonl(path: string): AsyncGenerator<JsonlRow> {
  const stream = createReadStream(path, { encoding: 'utf8' });
  const opened = new Promise<void>((resolve, reject) => {
    stream.once('open', () => resolve());
    stream.once('error', reject);
  });
  try {
    await opened;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new TrainError(
      err.code === 'ENOENT' || err.code === 'EISDIR' ? 'DATA_NOT_FOUND' : 'DATA_READ_FAILED',
      `${path}: cannot read the data file (${err.code ?? err.message}). Pass a .jsonl file with one JSON object per line.`,
      { path },
      { cause: e },
    );
  }
  const lines = createInterface({ input: stream, crlfDelay: Number.POSITIVE_INFINITY });
  let line = 0;
  try {
    for await (const text of lines) {
      line++;
      if (text.trim() === '') continue;
      let value: unknown;
      try {
        // nesting-depth bounded: a row nested 20,000 deep would overflow the stack later
        value = parseJsonText(text, `${path}:${line}`);
      } catch (e) {
        throw new TrainError(
          'DATA_INVALID',
          `${path}:${line}: not valid JSON (${(e as Error).message}). Each line must be one JSON object.`,
          { path, line },
        );
      }
      yield { line, value };
    }
  } finally {
    lines.close();
    stream.destroy();
  }
}
