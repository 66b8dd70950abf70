import { describe, expect, it } from 'vitest';
import { startProgress } from './progress.js';

function fakeStream(isTTY: boolean) {
  const chunks: string[] = [];
  return {
    chunks,
    stream: {
      isTTY,
      columns: 100,
      write: (c: string) => chunks.push(c),
      cursorTo() {},
      clearLine() {},
      moveCursor() {},
    },
  };
}

describe('progress', () => {
  it('draws a bar with done/total and the last item on a terminal', () => {
    const { chunks, stream } = fakeStream(true);
    const p = startProgress({}, 'quantize', stream);
    p.update(1, 3, 'a.weight');
    p.update(3, 3, 'c.weight');
    p.stop();
    const text = chunks.join('');
    expect(text).toContain('quantize');
    expect(text).toContain('3/3');
    expect(text).toContain('c.weight');
  });

  it('draws nothing when the stream is not a terminal, or with --quiet or --json', () => {
    for (const [tty, options] of [
      [false, {}],
      [true, { quiet: true }],
      [true, { json: true }],
    ] as const) {
      const { chunks, stream } = fakeStream(tty);
      const p = startProgress(options, 'merge', stream);
      p.update(1, 2, 'x');
      p.stop();
      expect(chunks).toEqual([]);
    }
  });
});
