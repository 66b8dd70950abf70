import { availableParallelism } from 'node:os';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tensor, writeSafetensors } from '@lora/core';
import { PARALLEL_MIN_VALUES } from '@lora/quant';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../src/test-utils/run-cli.js';
import {
  hashTree,
  writeSyntheticAdapter,
  writeSyntheticLlama,
} from '../src/test-utils/synthetic-model.js';

/**
 * Same inputs and seed, same bytes: every command that writes weights is run twice (quantize
 * with 1 and with 2 threads) and the outputs' SHA-256 are compared file by file.
 */

let root: string;
let model: string;
let tuned: string;
let adapter: string;
let adapter2: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'lora-determinism-'));
  model = join(root, 'model');
  tuned = join(root, 'tuned');
  adapter = join(root, 'adapter');
  adapter2 = join(root, 'adapter2');
  await writeSyntheticLlama(model);
  await writeSyntheticLlama(tuned, 2);
  await writeSyntheticAdapter(adapter, 1);
  await writeSyntheticAdapter(adapter2, 2);
});
afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

const outcomes: string[] = [];
afterAll(() =>
  process.stderr.write(`\ndeterminism (same inputs, same bytes):\n${outcomes.join('\n')}\n`),
);

/** Runs the command twice (`args(out, run)`), returns the two outputs' file hashes. */
async function twice(name: string, args: (out: string, run: number) => string[], ext = '') {
  const hashes: Record<string, string>[] = [];
  for (const run of [1, 2]) {
    const out = join(root, `${name.replace(/\W+/g, '-')}-${run}${ext}`);
    const r = await runCli([...args(out, run), '-o', out, '--quiet']);
    expect(r.code, r.stderr).toBe(0);
    hashes.push(hashTree(out));
  }
  const files = Object.keys(hashes[0]);
  outcomes.push(
    `${name.padEnd(40)} ${files.length} files  ${JSON.stringify(hashes[0]) === JSON.stringify(hashes[1]) ? 'identical' : 'DIFFER'}`,
  );
  expect(files.length).toBeGreaterThan(0);
  expect(hashes[1]).toEqual(hashes[0]);
}

describe('determinism', () => {
  it('quantize nf4: 1 thread and 2 threads give the same bytes', async () => {
    const threads = Math.min(2, availableParallelism());
    // 1024 x 1024 values: above PARALLEL_MIN_VALUES, so --threads 2 splits the tensor across workers
    const big = join(root, 'big.safetensors');
    const values = Float32Array.from({ length: 1 << 20 }, (_, i) => Math.sin(i * 0.37) * 0.05);
    expect(values.length).toBeGreaterThanOrEqual(PARALLEL_MIN_VALUES);
    await writeSafetensors(
      big,
      new Map([['model.layers.0.mlp.up_proj.weight', tensor('f32', [1024, 1024], values)]]),
    );
    await twice(
      `quantize nf4 1M values (--threads 1 vs ${threads})`,
      (_out, run) => ['quantize', big, '--threads', String(run === 1 ? 1 : threads)],
      '.safetensors',
    );
  });

  it('merge', async () => {
    await twice('merge', () => ['merge', '--base', model, '--adapter', adapter]);
  });

  it('combine: cat and seeded dare_linear', async () => {
    await twice('combine cat', () => [
      'combine',
      '--adapter',
      adapter,
      '--adapter',
      `${adapter2}:0.5`,
    ]);
    await twice('combine dare_linear --seed 7', () => [
      'combine',
      '--adapter',
      adapter,
      '--adapter',
      adapter2,
      '--method',
      'dare_linear',
      '--density',
      '0.5',
      '--seed',
      '7',
    ]);
  });

  it('extract (exact and randomized SVD)', async () => {
    await twice('extract --rank 4', () => [
      'extract',
      '--base',
      model,
      '--tuned',
      tuned,
      '--rank',
      '4',
    ]);
  });

  it('train: two runs of 3 steps give the same adapter', async () => {
    const fixture = fileURLToPath(
      new URL('../../../packages/train/src/testdata/trajectory/', import.meta.url),
    );
    await twice('train 3 steps', () => [
      'train',
      '--model',
      join(fixture, 'model'),
      '--data',
      join(fixture, 'train.jsonl'),
      '--steps',
      '3',
      '--batch-size',
      '2',
      '--seed',
      '5',
      '--threads',
      '1',
    ]);
  });
});
