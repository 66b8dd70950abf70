import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensorsHeader } from '@lora/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  cliBuilt,
  hashTree,
  runCliChild,
  startCli,
  stopChildren,
  temporariesIn,
  waitFor,
  writeSyntheticAdapter,
  writeSyntheticLlama,
} from './helpers/child-cli.js';

/**
 * Two real `lora` processes writing one output: one wins whole, the others fail clearly and
 * leave nothing. A base rewritten in place while `lora merge` reads it stops the merge.
 */

let root: string;
let model: string;
let adapter: string;

beforeAll(async () => {
  if (!cliBuilt) return;
  root = await mkdtemp(join(tmpdir(), 'lora-concurrency-'));
  model = join(root, 'model');
  adapter = join(root, 'adapter');
  await writeSyntheticLlama(model);
  await writeSyntheticAdapter(adapter);
});

afterAll(async () => {
  await stopChildren();
  if (root) await rm(root, { recursive: true, force: true });
});

const LOSER_MESSAGE =
  /being written by another process \(PID \d+\)|written by another process at the same time|already exists/;

describe.skipIf(!cliBuilt)('concurrent writers', () => {
  it('three quantize processes on one output: one wins whole, the others fail clearly', async () => {
    const reference = join(root, 'reference');
    expect((await runCliChild(['quantize', model, '-o', reference, '--quiet'])).code).toBe(0);
    const dir = join(root, 'race');
    await mkdir(dir);
    const out = join(dir, 'q');
    const results = await Promise.all(
      [0, 1, 2].map(() => runCliChild(['quantize', model, '-o', out, '--quiet'])),
    );
    const winners = results.filter((r) => r.code === 0);
    const losers = results.filter((r) => r.code !== 0);
    expect(winners).toHaveLength(1);
    for (const l of losers) {
      expect(l.code).toBe(2);
      expect(l.stderr).toMatch(LOSER_MESSAGE);
      expect(l.stderr.trim().split('\n')).toHaveLength(1);
    }
    expect(hashTree(out)).toEqual(hashTree(reference)); // whole, not mixed
    expect(temporariesIn(dir)).toEqual([]);
    console.log(
      `losers said: ${losers.map((l) => l.stderr.trim().replace(/.*: /, '')).join(' | ')}`,
    );
  }, 120_000);
});

describe.skipIf(!cliBuilt)('inputs changing under a command', () => {
  it('a base overwritten in place (same size) while merge reads it: the merge stops, nothing written', async () => {
    const base = join(root, 'base-changing');
    await cp(model, base, { recursive: true });
    const file = join(base, 'model.safetensors');
    const header = await readSafetensorsHeader(file);
    const last = header.entries.at(-1)!; // read last by the merge
    const dir = join(root, 'merge-out');
    await mkdir(dir);
    const out = join(dir, 'merged');
    const { done } = startCli([
      'merge',
      '--base',
      base,
      '--adapter',
      adapter,
      '-o',
      out,
      '--quiet',
    ]);
    let exited = false;
    done.then(() => {
      exited = true;
    });
    await waitFor(() => exited || temporariesIn(dir).some((n) => n.includes('.tmp-')), 60_000);
    const h = await open(file, 'r+'); // another program rewrites the data in place
    try {
      const at = header.dataStart + last.dataOffsets[0];
      await h.write(new Uint8Array(last.byteLength).fill(0x3f), 0, last.byteLength, at);
    } finally {
      await h.close();
    }
    const r = await done;
    if (r.code === 0) {
      // The merge had read everything before the rewrite: its output is the old base's.
      console.warn('the merge finished before the base was rewritten; detection not exercised');
    } else {
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/was modified while it was being read/);
      expect(existsSync(out)).toBe(false);
    }
    expect(temporariesIn(dir)).toEqual([]);
  }, 120_000);
});
