import { describe, expect, it } from 'vitest';
import { readLines } from './read-lines.js';

/** A byte source that yields `chunks` one by one and records how many were pulled. */
function source(chunks: (string | Uint8Array)[]) {
  const state = { pulled: 0 };
  async function* gen() {
    for (const c of chunks) {
      state.pulled++;
      yield c;
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
    await expect(all(input, 10)).rejects.toThrow(
      /^in\.jsonl:2: line longer than 10 bytes \(the limit for one line\)/,
    );
    expect(state.pulled).toBe(3); // 12 bytes of line 2 seen: the rest of it was never pulled
    // exactly at the limit is accepted
    expect(await all(source(['0123456789\n']).input, 10)).toEqual([[1, '0123456789']]);
  });
});
