import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ByteTokenizer } from '@lora/runtime-onnx';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadDataset } from './dataset.js';
import { buildMicroBatch } from './micro-batch.js';
import { DataOrder, stepsPerEpoch } from './order.js';

// Byte tokenizer: ids are the UTF-8 bytes, BOS 256 before and EOS 257 after each text, so every
// expected id below is computed by hand ("h" = 104, "i" = 105, ...).
const tokenizer = async () => new ByteTokenizer({ bosId: 256, eosId: 257, addEos: true });
const VOCAB = 258;
let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lora-train-data-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function jsonl(lines: readonly string[]): Promise<string> {
  const path = join(dir, 'data.jsonl');
  await writeFile(path, `${lines.join('\n')}\n`);
  return path;
}

describe('loadDataset', () => {
  it('tokenizes the three row kinds with the tokenizer framing and -100 where no loss', async () => {
    const path = await jsonl([
      '{"text": "hi"}',
      '',
      '{"prompt": "a", "completion": "bc"}',
      '{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}',
      '{"input_ids": [9, 8]}',
    ]);
    const ds = await loadDataset(path, { vocabSize: VOCAB, tokenizer });
    expect(ds.rows).toBe(4);
    const rows = ds.examples.map((e) => [Array.from(e.inputIds), Array.from(e.labels)]);
    expect(rows).toEqual([
      [
        [256, 104, 105, 257],
        [256, 104, 105, 257],
      ],
      // BOS + prompt are context only; the completion and the EOS are learned.
      [
        [256, 97, 98, 99, 257],
        [-100, -100, 98, 99, 257],
      ],
      [
        [5, 6, 7],
        [-100, 6, 7],
      ],
      [
        [9, 8],
        [9, 8],
      ],
    ]);
    // Predicted positions after the shift: 3 + 3 + 2 + 1.
    expect(ds.labelTokens).toBe(9);
    expect(ds.maxLength).toBe(5);
  });

  it('--seq-len keeps the first T tokens; --packing concatenates and cuts, keeping the tail', async () => {
    const path = await jsonl(['{"text": "abcd"}', '{"input_ids": [1, 2, 3]}']);
    const cut = await loadDataset(path, { vocabSize: VOCAB, tokenizer, seqLen: 3 });
    expect(cut.examples.map((e) => Array.from(e.inputIds))).toEqual([
      [256, 97, 98],
      [1, 2, 3],
    ]);
    expect(cut.truncatedRows).toBe(1);
    const packed = await loadDataset(path, {
      vocabSize: VOCAB,
      tokenizer,
      seqLen: 4,
      packing: true,
    });
    expect(packed.examples.map((e) => Array.from(e.inputIds))).toEqual([
      [256, 97, 98, 99],
      [100, 257, 1, 2],
      [3],
    ]);
  });

  it('names the file and line of a malformed row before anything else happens', async () => {
    const cases: [string, RegExp][] = [
      ['{"text": "ok"}\n{"text": 3}', /data\.jsonl:2: "text" must be a string/],
      ['{"text": "ok"}\n{not json', /data\.jsonl:2: not valid JSON/],
      [
        '{"input_ids": [1, 999]}',
        /data\.jsonl:1: "input_ids"\[1\] is 999; token ids are integers in 0\.\.257/,
      ],
      ['{"input_ids": [1, 2], "labels": [1]}', /data\.jsonl:1: "labels" has 1 entries/],
      [
        '{"input_ids": [1, 2], "labels": [1, 3]}',
        /data\.jsonl:1: "labels"\[1\] is 3 but "input_ids"\[1\] is 2/,
      ],
      ['{"prompt": "x"}', /data\.jsonl:1: "prompt" and "completion" must both be strings/],
      ['[1, 2]', /data\.jsonl:1: expected a JSON object/],
      [
        '{"txt": "a"}',
        /data\.jsonl:1: no "text", "prompt"\/"completion" or "input_ids" field \(found "txt"\)/,
      ],
    ];
    for (const [content, message] of cases) {
      const path = join(dir, 'data.jsonl');
      await writeFile(path, content);
      await expect(loadDataset(path, { vocabSize: VOCAB, tokenizer })).rejects.toThrow(message);
    }
  });

  it('refuses empty data and data with nothing to learn', async () => {
    await expect(
      loadDataset(await jsonl(['']), { vocabSize: VOCAB, tokenizer }),
    ).rejects.toMatchObject({
      code: 'DATA_EMPTY',
    });
    await expect(
      loadDataset(
        await jsonl(['{"input_ids": [4]}', '{"input_ids": [1, 2], "labels": [1, -100]}']),
        {
          vocabSize: VOCAB,
          tokenizer,
        },
      ),
    ).rejects.toMatchObject({ code: 'DATA_EMPTY' });
  });

  it('text rows without a loadable tokenizer: a clear error naming the line', async () => {
    const path = await jsonl(['{"input_ids": [1, 2]}', '{"text": "a"}']);
    const noTokenizer = async () => {
      throw new Error('no tokenizer.json');
    };
    await expect(
      loadDataset(path, { vocabSize: VOCAB, tokenizer: noTokenizer }),
    ).rejects.toMatchObject({
      code: 'TOKENIZER_MISSING',
      message: expect.stringMatching(/data\.jsonl:2: text rows need the model's tokenizer/),
    });
  });

  it('streams a file far larger than one read chunk', async () => {
    const lines = Array.from({ length: 5000 }, (_, i) =>
      JSON.stringify({ input_ids: [i % 250, 1, 2] }),
    );
    const ds = await loadDataset(await jsonl(lines), { vocabSize: VOCAB, tokenizer });
    expect(ds.rows).toBe(5000);
    expect(ds.examples[4999].inputIds[0]).toBe(4999 % 250);
  });
});

describe('data order (transformers Trainer rules)', () => {
  it('no shuffle: file order, last partial batch kept, epoch tail step has fewer micro-batches', () => {
    // 5 examples, batch 2 -> batches {0,1} {2,3} {4}; grad-accum 2 -> steps [{0,1},{2,3}] [{4}]
    const order = new DataOrder({
      numExamples: 5,
      batchSize: 2,
      gradAccum: 2,
      shuffle: false,
      seed: 0,
    });
    expect(order.stepsPerEpoch).toBe(2);
    expect(order.step(0)).toEqual({
      epoch: 0,
      microBatches: [
        [0, 1],
        [2, 3],
      ],
    });
    expect(order.step(1)).toEqual({ epoch: 0, microBatches: [[4]] });
    expect(order.step(2)).toEqual({
      epoch: 1,
      microBatches: [
        [0, 1],
        [2, 3],
      ],
    });
    expect(stepsPerEpoch({ numExamples: 13, batchSize: 2, gradAccum: 2 })).toBe(4);
  });

  it('shuffle: a permutation per epoch, seeded, different across epochs', () => {
    const o = { numExamples: 10, batchSize: 10, gradAccum: 1, shuffle: true, seed: 7 };
    const a = new DataOrder(o);
    const e0 = a.step(0).microBatches[0];
    const e1 = a.step(1).microBatches[0];
    expect([...e0].sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(e0).not.toEqual(e1);
    expect(new DataOrder(o).step(1).microBatches[0]).toEqual(e1);
    expect(new DataOrder({ ...o, seed: 8 }).step(0).microBatches[0]).not.toEqual(e0);
  });
});

describe('buildMicroBatch', () => {
  it('right-pads rows, counts label tokens after the shift, leaves empty rows inert', () => {
    const mb = buildMicroBatch(
      [
        { inputIds: Int32Array.from([1, 2, 3]), labels: Int32Array.from([-100, 2, 3]) },
        { inputIds: Int32Array.from([4, 5]), labels: Int32Array.from([4, -100]) },
      ],
      3,
      4,
    );
    expect(Array.from(mb.inputIds)).toEqual([1, 2, 3, 0, 4, 5, 0, 0, 0, 0, 0, 0]);
    expect(Array.from(mb.attentionMask)).toEqual([1, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0]);
    expect(Array.from(mb.labels)).toEqual([
      -100, 2, 3, -100, 4, -100, -100, -100, -100, -100, -100, -100,
    ]);
    expect(mb.labelTokens).toBe(2);
    expect(mb.tokens).toBe(5);
    expect(mb.rows).toBe(2);
  });
});
