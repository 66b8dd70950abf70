import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  mergeWeightExact,
  readSafetensors,
  type Tensor,
  tensor,
  tensorBytes,
  writeSafetensors,
} from '@lora/core';
import { afterEach, describe, expect, it } from 'vitest';
import { randomTensor, syntheticAdapter } from '../test-utils/synthetic.js';
import { mergeIntoModel } from './merge-model.js';
import { streamBlock } from './streamed.js';
import { unmergeModel } from './unmerge-model.js';

// mergeIntoModel streams each tensor from the base file through reused block buffers. Block
// boundaries must not show in the output: tiny blocks (one row, a few rows that do not divide the
// row count, a piece of a copied tensor) give the bytes of the default blocks and of core's
// in-memory merge, and the residual still restores the base exactly.

const DEFAULT_BLOCK = streamBlock.bytes;
let dir: string | undefined;
afterEach(async () => {
  streamBlock.bytes = DEFAULT_BLOCK;
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

const adapter = syntheticAdapter(
  { 'layers.0.q_proj': { in: 40, out: 67 }, 'layers.0.v_proj': { in: 40, out: 12 } },
  { r: 8, lora_alpha: 16 },
  3,
);

function base(): Map<string, Tensor> {
  return new Map<string, Tensor>([
    ['layers.0.q_proj.weight', randomTensor(1, [67, 40], 'f16')], // 67 rows: no block divides it
    ['layers.0.v_proj.weight', randomTensor(2, [12, 40], 'f16')],
    ['layers.0.norm.weight', randomTensor(3, [40], 'f16')],
    ['untouched.weight', randomTensor(4, [9, 7], 'f16')], // 126 bytes: copied in pieces
    ['ids', tensor('i64', [3], BigInt64Array.from([5n, -1n, 7n]))],
  ]);
}

async function mergeWith(blockBytes: number, out: string, dtype?: 'f32') {
  streamBlock.bytes = blockBytes;
  try {
    return await mergeIntoModel(join(dir!, 'base.safetensors'), [{ adapter }], out, {
      residual: true,
      dtype,
    });
  } finally {
    streamBlock.bytes = DEFAULT_BLOCK;
  }
}

describe('merge streams tensors in blocks of rows', () => {
  it('tiny blocks give the bytes of the default blocks and of the in-memory merge; unmerge restores the base', async () => {
    dir = await mkdtemp(join(tmpdir(), 'lora-merge-blocks-'));
    const tensors = base();
    await writeSafetensors(join(dir, 'base.safetensors'), tensors);
    const ref = join(dir, 'ref.safetensors');
    await mergeWith(DEFAULT_BLOCK, ref);
    const refBytes = await readFile(ref);
    const refResidual = await readFile(join(dir, 'ref.unmerge-residual.safetensors'));

    // core's in-memory merge of the whole weight, the same scaling (alpha / r)
    const { tensors: merged } = await readSafetensors(ref);
    for (const module of ['layers.0.q_proj', 'layers.0.v_proj']) {
      const m = adapter.modules.get(module)!;
      const whole = mergeWeightExact(tensors.get(`${module}.weight`)!, [
        { A: m.A, B: m.B, scaling: 16 / 8 },
      ]);
      expect(
        Buffer.from(tensorBytes(merged.get(`${module}.weight`)!)).equals(
          Buffer.from(tensorBytes(whole.merged)),
        ),
        module,
      ).toBe(true);
    }
    for (const name of ['layers.0.norm.weight', 'untouched.weight', 'ids'])
      expect(Buffer.from(tensorBytes(merged.get(name)!))).toEqual(
        Buffer.from(tensorBytes(tensors.get(name)!)),
      );

    // 64 bytes: one 80-byte row per block; 200: 2 rows (67 = 33·2 + 1); 50: pieces of a copy
    for (const blockBytes of [64, 200, 50]) {
      const out = join(dir, `merged-${blockBytes}.safetensors`);
      await mergeWith(blockBytes, out);
      expect((await readFile(out)).equals(refBytes), `${blockBytes} B`).toBe(true);
      const residual = await readFile(
        join(dir, `merged-${blockBytes}.unmerge-residual.safetensors`),
      );
      expect(residual.equals(refResidual), `${blockBytes} B residual`).toBe(true);
    }

    const restored = join(dir, 'restored.safetensors');
    await unmergeModel(join(dir, 'merged-64.safetensors'), [{ adapter }], restored);
    expect((await readFile(restored)).equals(await readFile(join(dir, 'base.safetensors')))).toBe(
      true,
    );
  });

  it('casts (merged as f32) stream too: same bytes for any block size, exact unmerge', async () => {
    dir = await mkdtemp(join(tmpdir(), 'lora-merge-blocks-'));
    await writeSafetensors(join(dir, 'base.safetensors'), base());
    await mergeWith(DEFAULT_BLOCK, join(dir, 'ref.safetensors'), 'f32');
    await mergeWith(64, join(dir, 'tiny.safetensors'), 'f32');
    const { tensors } = await readSafetensors(join(dir, 'tiny.safetensors'));
    expect(tensors.get('untouched.weight')!.dtype).toBe('f32');
    // f16 -> f32 is exact: the cast tensor holds the base's values
    const original = base().get('untouched.weight')!;
    expect(Array.from(tensors.get('untouched.weight')!.data as Float32Array)).toEqual(
      Array.from({ length: 63 }, (_, i) => readF16(original, i)),
    );
    expect(
      (await readFile(join(dir, 'tiny.safetensors'))).equals(
        await readFile(join(dir, 'ref.safetensors')),
      ),
    ).toBe(true);
    const restored = join(dir, 'restored.safetensors');
    await unmergeModel(join(dir, 'tiny.safetensors'), [{ adapter }], restored);
    expect((await readFile(restored)).equals(await readFile(join(dir, 'base.safetensors')))).toBe(
      true,
    );
  });

  it('a NaN/Inf in a later block: refused, naming its row, and no output', async () => {
    dir = await mkdtemp(join(tmpdir(), 'lora-merge-blocks-'));
    await writeSafetensors(join(dir, 'base.safetensors'), base());
    const out = join(dir, 'merged.safetensors');
    streamBlock.bytes = 200;
    const huge = syntheticAdapter(
      { 'layers.0.q_proj': { in: 40, out: 67 } },
      { r: 8, lora_alpha: 16 },
      3,
    );
    const B = huge.modules.get('layers.0.q_proj')!.B.data as Float32Array;
    B.fill(0);
    B.fill(1e9, 50 * 8, 51 * 8); // row 50 only: blocks 0-24 are written before it is reached
    await expect(
      mergeIntoModel(join(dir, 'base.safetensors'), [{ adapter: huge }], out),
    ).rejects.toMatchObject({
      code: 'MERGE_NOT_FINITE',
      message: expect.stringContaining('first in row 50'),
    });
    expect(existsSync(out)).toBe(false);
    expect(existsSync(join(dir, 'merged.unmerge-residual.safetensors'))).toBe(false);
  });
});

/** Value of element i of an f16 tensor, decoded by hand from its bits. */
function readF16(t: Tensor, i: number): number {
  const h = (t.data as Uint16Array)[i];
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}
