import { createReadStream } from 'node:fs';
import { isLoraError, parseJsonText } from '@lora/core';
import { readLines } from '@lora/core/internal';
import { TrainError } from '../errors.js';

/**
 * Longest line of a training or evaluation JSONL file (16 MiB, as `lora generate --batch`): far
 * above any row a context can take, and what one line may hold in memory while it is read. A
 * longer line is refused as soon as its first 16 MiB have arrived, never read whole.
 */
export const MAX_JSONL_LINE_BYTES = 16 * 2 ** 20;

/** One parsed line of a JSONL file, with its 1-based line number. */
export interface JsonlRow {
  readonly line: number;
  readonly value: unknown;
}

/**
 * Reads a JSONL file one line at a time (a stream: the file is never held whole in memory) and
 * yields each non-blank line parsed: see {@link readJsonlStream}. A missing file throws
 * `DATA_NOT_FOUND`; a file that cannot be read, `DATA_READ_FAILED`.
 */
export async function* readJsonl(path: string): AsyncGenerator<JsonlRow> {
  const stream = createReadStream(path);
  const opened = new Promise<void>((resolve, reject) => {
    stream.once('open', () => resolve());
    stream.once('error', reject);
  });
  try {
    await opened;
  } catch (e) {
    throw readFailed(path, e);
  }
  try {
    yield* readJsonlStream(stream, path);
  } catch (e) {
    // A read error after the open (a folder: EISDIR on Linux, an I/O error).
    if (isLoraError(e) || typeof (e as NodeJS.ErrnoException).code !== 'string') throw e;
    throw readFailed(path, e);
  } finally {
    stream.destroy();
  }
}

/**
 * The rows of JSONL bytes (a file, standard input, a response body), read one line at a time as
 * they are asked for, `source` naming the input in errors. Lines end at `\n` (`\r\n` too); blank
 * lines are skipped; a UTF-8 byte-order mark is dropped. A line that is not JSON (or nested
 * deeper than core's `MAX_JSON_DEPTH`) throws `DATA_INVALID`; a line longer than
 * {@link MAX_JSONL_LINE_BYTES} throws `DATA_LINE_TOO_LONG` before the rest of it is read; both
 * name `source:line`.
 */
export async function* readJsonlStream(
  input: AsyncIterable<Uint8Array | string>,
  source: string,
): AsyncGenerator<JsonlRow> {
  try {
    for await (const { number: line, text } of readLines(input, source, MAX_JSONL_LINE_BYTES)) {
      if (text.trim() === '') continue;
      let value: unknown;
      try {
        // nesting-depth bounded: a row nested 20,000 deep would overflow the stack later
        value = parseJsonText(text, `${source}:${line}`);
      } catch (e) {
        throw new TrainError(
          'DATA_INVALID',
          `${source}:${line}: not valid JSON (${(e as Error).message}). Each line must be one JSON object.`,
          { path: source, line },
        );
      }
      yield { line, value };
    }
  } catch (e) {
    if (isLoraError(e) && e.code === 'LINE_TOO_LONG') {
      throw new TrainError(
        'DATA_LINE_TOO_LONG',
        e.message,
        { path: source, line: e.details.line, maxLineBytes: MAX_JSONL_LINE_BYTES },
        { cause: e },
      );
    }
    throw e;
  }
}

function readFailed(path: string, e: unknown): TrainError {
  const err = e as NodeJS.ErrnoException;
  return new TrainError(
    err.code === 'ENOENT' || err.code === 'EISDIR' ? 'DATA_NOT_FOUND' : 'DATA_READ_FAILED',
    `${path}: cannot read the data file (${err.code ?? err.message}). Pass a .jsonl file with one JSON object per line.`,
    { path },
    { cause: e },
  );
}
