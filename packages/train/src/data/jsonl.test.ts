import { createReadStream } from 'node:fs';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ByteTokenizer } from '@lora/runtime-onnx';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { TrainError } from '../errors.js';
import { loadDataset } from './dataset.js';
import { MAX_JSONL_LINE_BYTES, readJsonl, readJsonlStream } from './jsonl.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lora-train-jsonl-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const MiB = 2 ** 20;
const FIRST_LINE = '{"input_ids": [1, 2, 3]}\n';

/**
 * Writes a JSONL file whose second line is one `{"text": "xxx..."}` row of `lineBytes` bytes,
 * streamed through one reused 1 MiB buffer (the test itself never holds the line).
 */
async function fileWithLongSecondLine(lineBytes: number): Promise<string> {
  const path = join(dir, 'big.jsonl');
  const file = await open(path, 'w');
  try {
    await file.write(`${FIRST_LINE}{"text": "`);
    const xs = Buffer.alloc(MiB, 'x');
    let left = lineBytes - '{"text": ""}'.length;
    for (; left >= MiB; left -= MiB) await file.write(xs);
    await file.write(xs.subarray(0, left));
    await file.write('"}\n{"input_ids": [4, 5]}\n');
  } finally {
    await file.close();
  }
  return path;
}

describe('readJsonl', () => {
  it('refuses a second line over the limit naming line 2, having read little more than the limit', async () => {
    const lineBytes = 40 * MiB;
    expect(lineBytes).toBeGreaterThan(2 * MAX_JSONL_LINE_BYTES);
    const path = await fileWithLongSecondLine(lineBytes);
    // Count the bytes pulled from the file by the reader.
    let pulled = 0;
    const stream = createReadStream(path);
    async function* counted() {
      for await (const chunk of stream) {
        pulled += (chunk as Buffer).length;
        yield chunk as Buffer;
      }
    }
    const rows: number[] = [];
    let error: unknown;
    try {
      for await (const row of readJsonlStream(counted(), path)) rows.push(row.line);
    } catch (e) {
      error = e;
    }
    expect(rows).toEqual([1]);
    expect(error).toBeInstanceOf(TrainError);
    expect(error).toMatchObject({
      code: 'DATA_LINE_TOO_LONG',
      message: expect.stringMatching(/big\.jsonl:2: line longer than 16777216 bytes/),
      details: { path, line: 2, maxLineBytes: MAX_JSONL_LINE_BYTES },
    });
    // the first line, the limit, and at most one read chunk (64 KiB) beyond it: not the 40 MiB line
    expect(pulled).toBeLessThanOrEqual(FIRST_LINE.length + MAX_JSONL_LINE_BYTES + 64 * 1024);
    expect(stream.destroyed).toBe(true);

    // The path training and evaluation take: the same error, and memory far below the line's size.
    const rss = process.memoryUsage().rss;
    await expect(
      loadDataset(path, { vocabSize: 258, tokenizer: async () => new ByteTokenizer() }),
    ).rejects.toMatchObject({
      code: 'DATA_LINE_TOO_LONG',
      message: expect.stringMatching(/big\.jsonl:2: /),
    });
    expect(process.memoryUsage().rss - rss).toBeLessThan(lineBytes);
  });

  it('accepts a line of exactly the limit', async () => {
    const path = await fileWithLongSecondLine(MAX_JSONL_LINE_BYTES);
    const lines: number[] = [];
    for await (const row of readJsonl(path)) lines.push(row.line);
    expect(lines).toEqual([1, 2, 3]);
  });

  it('reads CRLF line ends and a byte-order mark as LF: same rows, same line numbers', async () => {
    const rows = ['{"input_ids": [1]}', '', '{"text": "a\\r\\nb"}', '{"input_ids": [2]}'];
    const read = async (content: string) => {
      const path = join(dir, 'rows.jsonl');
      await writeFile(path, content);
      const out: [number, unknown][] = [];
      for await (const row of readJsonl(path)) out.push([row.line, row.value]);
      return out;
    };
    const expected: [number, unknown][] = [
      [1, { input_ids: [1] }],
      [3, { text: 'a\r\nb' }],
      [4, { input_ids: [2] }],
    ];
    expect(await read(`${rows.join('\n')}\n`)).toEqual(expected);
    expect(await read(`\uFEFF${rows.join('\r\n')}`)).toEqual(expected);
  });

  it('a folder or a missing file is DATA_NOT_FOUND naming it', async () => {
    for (const path of [dir, join(dir, 'missing.jsonl')]) {
      const read = async () => {
        for await (const _ of readJsonl(path)) {
          // nothing: the open or the first read fails
        }
      };
      await expect(read()).rejects.toMatchObject({
        code: 'DATA_NOT_FOUND',
        message: expect.stringContaining(`${path}: cannot read the data file`),
      });
    }
  });
});
