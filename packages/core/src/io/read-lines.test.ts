import { describe, expect, it } from 'vitest';
import { CoreError } from '../errors.js';
import { readLines } from './read-lines.js';

/** A byte source that yields `chunks` one by one and records how many were pulled and whether it was closed. */
function source(chunks: (string | Uint8Array)[]) {
  const state = { pulled: 0, closed: false };
  async function* gen() {
    try {
      for (const c of chunks) {
        state.pulled++;
        yield c;
      }
    } finally {
      state.closed = true;
    }
  }
  return { input: gen(), state };
}

async function all(input: AsyncIterable<string | Uint8Array>, max = 1024) {
  const out: [number, string][] = [];
  for await (const l of readLines(input, 'in.jsonl', max)) out.push([l.number, l.text]);
  return out;
}

describe('readLines', () => {
  it('splits at \\n across chunk boundaries, drops \\r and a leading BOM, keeps the last line without \\n', async () => {
    // "é" is two bytes: split it between chunks to check that bytes, not strings, are joined
    const e = Buffer.from('é');
    const { input } = source([
      '\uFEFFa\r\nb',
      'c\n\n',
      Buffer.concat([Buffer.from('x'), e.subarray(0, 1)]),
      Buffer.concat([e.subarray(1), Buffer.from('\nlast')]),
    ]);
    expect(await all(input)).toEqual([
      [1, 'a'],
      [2, 'bc'],
      [3, ''],
      [4, 'xé'],
      [5, 'last'],
    ]);
  });

  it('yields a line as soon as its \\n arrives, pulling no further chunk', async () => {
    const { input, state } = source(['one\ntw', 'o\n', 'three\n', 'four\n']);
    const lines = readLines(input, 'in.jsonl', 1024);
    expect((await lines.next()).value).toEqual({ number: 1, text: 'one' });
    expect(state.pulled).toBe(1);
    expect((await lines.next()).value).toEqual({ number: 2, text: 'two' });
    expect(state.pulled).toBe(2);
    await lines.return(undefined);
    expect(state.pulled).toBe(2);
  });

  it('refuses a line longer than the limit, naming it, before reading it to its end', async () => {
    const { input, state } = source(['ok\n', 'x'.repeat(6), 'x'.repeat(6), 'x'.repeat(6), '\n']);
    const error = await all(input, 10).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CoreError);
    expect(error).toMatchObject({
      code: 'LINE_TOO_LONG',
      message: expect.stringMatching(
        /^in\.jsonl:2: line longer than 10 bytes \(the limit for one line\)/,
      ),
      details: { source: 'in.jsonl', line: 2, maxLineBytes: 10 },
    });
    expect(state.pulled).toBe(3); // 12 bytes of line 2 seen: the rest of it was never pulled
    expect(state.closed).toBe(true);
    // exactly at the limit is accepted
    expect(await all(source(['0123456789\n']).input, 10)).toEqual([[1, '0123456789']]);
    // the limit counts bytes, not characters: 6 x "é" is 12 bytes
    await expect(all(source(['éééééé\n']).input, 10)).rejects.toThrow(/^in\.jsonl:1: /);
  });

  it('ends lines at \n only: a lone \r is text (JSON Lines), invalid UTF-8 decodes to U+FFFD', async () => {
    const bytes = Uint8Array.from([0x61, 0x0d, 0x62, 0x0a, 0xff, 0x63, 0x0a]);
    expect(await all(source([bytes]).input)).toEqual([
      [1, 'a\rb'],
      [2, '\uFFFDc'],
    ]);
  });
});
