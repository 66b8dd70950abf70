import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  cliBuilt,
  hashTree,
  runCliChild,
  stopChildren,
  writeSyntheticAdapter,
  writeSyntheticLlama,
} from './helpers/child-cli.js';

/**
 * A write that fails (full disk, file size limit, read-only folder) ends with one sentence
 * naming the path and the cause, exit 1, temporaries removed and the inputs intact. Runs the
 * built CLI as a child process so limits and mounts apply to it alone.
 */

let root: string;
let model: string;
let adapter: string;
const mounts: string[] = [];

beforeAll(async () => {
  if (!cliBuilt) return;
  root = await mkdtemp(join(tmpdir(), 'lora-write-failures-'));
  model = join(root, 'model');
  adapter = join(root, 'adapter');
  await writeSyntheticLlama(model);
  await writeSyntheticAdapter(adapter);
});

afterAll(async () => {
  await stopChildren();
  for (const m of mounts) {
    try {
      execFileSync('umount', [m]);
    } catch {
      /* not mounted */
    }
  }
  if (root) {
    await chmod(join(root, 'readonly'), 0o755).catch(() => {});
    await rm(root, { recursive: true, force: true });
  }
});

/** Mounts a tmpfs at `dir` (root only); false when this machine does not allow it. */
function mountTmpfs(dir: string, options: string): boolean {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', options, 'tmpfs', dir], { stdio: 'ignore' });
    mounts.push(dir);
    return true;
  } catch {
    return false;
  }
}

function expectCleanFailure(
  r: { code: number | null; stderr: string },
  cause: RegExp,
  dir: string,
) {
  expect(r.code).toBe(1);
  const lines = r.stderr.trim().split('\n');
  expect(lines).toHaveLength(1); // one sentence: no stack, no raw error dump
  expect(lines[0]).toMatch(/^lora: Could not write \S+: /);
  expect(lines[0]).toMatch(cause);
  expect(lines[0]).not.toContain('.tmp-'); // names the output asked for, not a temporary
  expect(readdirSync(dir).filter((n) => n.startsWith('.'))).toEqual([]); // temporaries removed
}

describe.skipIf(!cliBuilt)('write failures', () => {
  it('file size limit (RLIMIT_FSIZE via ulimit -f): EFBIG named, exit 1, nothing left', async () => {
    const dir = join(root, 'fsize');
    await mkdir(dir);
    const before = hashTree(model);
    // 64 blocks of at most 1 KiB: far below the quantized model (~300 KB).
    const r = await runCliChild(['quantize', model, '-o', join(dir, 'q'), '--quiet'], {
      shellPrefix: 'ulimit -f 64',
    });
    expectCleanFailure(
      r,
      /file size limit of this process \(ulimit -f\) is exceeded \(EFBIG\)/,
      dir,
    );
    expect(existsSync(join(dir, 'q'))).toBe(false);
    expect(hashTree(model)).toEqual(before);
  });

  it('full disk (a 256 KiB tmpfs): ENOSPC named, exit 1, nothing left, for quantize and merge', async () => {
    const dir = join(root, 'full');
    await mkdir(dir);
    if (!mountTmpfs(dir, 'size=256k')) {
      console.warn(
        'SKIPPED: cannot mount a tmpfs here (needs root); the ulimit test covers EFBIG.',
      );
      return;
    }
    for (const args of [
      ['quantize', model, '-o', join(dir, 'q'), '--quiet'],
      ['merge', '--base', model, '--adapter', adapter, '-o', join(dir, 'm'), '--quiet'],
    ]) {
      const r = await runCliChild(args);
      expectCleanFailure(r, /no space left on the device \(ENOSPC\)/, dir);
      expect(readdirSync(dir)).toEqual([]);
    }
  });

  it('read-only output folder: the cause is named before any work, exit 1', async () => {
    const dir = join(root, 'readonly');
    await mkdir(dir);
    const asRoot = process.getuid?.() === 0;
    if (asRoot ? !mountTmpfs(dir, 'ro,size=64k') : false) {
      console.warn('SKIPPED: cannot mount a read-only tmpfs here.');
      return;
    }
    if (!asRoot) await chmod(dir, 0o555);
    const r = await runCliChild(['quantize', model, '-o', join(dir, 'q'), '--quiet']);
    expectCleanFailure(
      r,
      /the file system is read-only \(EROFS\)|permission denied \(EACCES\)/,
      dir,
    );
  });
});
