import { CoreError } from '../errors.js';

/** One line of a text stream: its 1-based number and its text (without `\n` or `\r\n`). */
export interface TextLine {
  readonly number: number;
  readonly text: string;
}

/**
 * Splits a byte stream into UTF-8 lines as the bytes arrive: only the line being read is held,
 * so a stream of any length takes bounded memory, and a line is yielded as soon as its `\n`
 * arrives (the input is read only as far as the consumer asks). A line longer than
 * `maxLineBytes` throws `CoreError` `LINE_TOO_LONG` naming `source` and the line number
 * (`details.line`), without reading it to its end; the input is then closed. Lines end at `\n`
 * (a `\r` before it is dropped; a lone `\r` is text, as in JSON Lines). A UTF-8 byte-order mark
 * before the first line is dropped; invalid UTF-8 decodes to U+FFFD.
 */
export async function* readLines(
  input: AsyncIterable<Uint8Array | string>,
  source: string,
  maxLineBytes: number,
): AsyncGenerator<TextLine> {
  let parts: Buffer[] = [];
  let lineBytes = 0;
  let number = 1;
  const take = (bytes: Buffer) => {
    lineBytes += bytes.length;
    if (lineBytes > maxLineBytes) {
      throw new CoreError(
        'LINE_TOO_LONG',
        `${source}:${number}: line longer than ${maxLineBytes} bytes (the limit for one line). Each line holds one row; shorten or split it.`,
        { source, line: number, maxLineBytes },
      );
    }
    parts.push(bytes);
  };
  const finish = (): TextLine => {
    // One part (the usual case: the line lies inside one chunk) decodes without a copy.
    let text = (parts.length === 1 ? parts[0] : Buffer.concat(parts)).toString('utf8');
    if (text.endsWith('\r')) text = text.slice(0, -1);
    if (number === 1 && text.startsWith('\uFEFF')) text = text.slice(1);
    const line = { number, text };
    parts = [];
    lineBytes = 0;
    number++;
    return line;
  };
  for await (const chunk of input) {
    const bytes =
      typeof chunk === 'string'
        ? Buffer.from(chunk, 'utf8')
        : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    let start = 0;
    for (let nl = bytes.indexOf(0x0a); nl !== -1; nl = bytes.indexOf(0x0a, start)) {
      take(bytes.subarray(start, nl));
      start = nl + 1;
      yield finish();
    }
    if (start < bytes.length) take(bytes.subarray(start));
  }
  if (lineBytes > 0) yield finish();
}
