import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SafetensorsFile } from '../safetensors/reader.js';
import { resolveInsideFolder } from './file-kind.js';
import { assertOutputSeparate, claimOutput, guardOutput } from './output-guard.js';
import { lockContent, lockPath, removeStaleTemporaries } from './temporaries.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lora-guard-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The error `fn` throws (fails the test when it throws nothing). */
function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected an error');
}

/** The PID of a process that has already exited. */
function deadPid(): number {
  return spawnSync(process.execPath, ['-e', '0']).pid!;
}

describe('assertOutputSeparate', () => {
  it('refuses an output equal to, inside, or containing an input, also through a symlink', async () => {
    const model = join(dir, 'model');
    await mkdir(model);
    await symlink(model, join(dir, 'link'));
    expect(thrown(() => assertOutputSeparate(model, [model]))).toMatchObject({
      code: 'OUTPUT_OVERLAPS_INPUT',
    });
    expect(() => assertOutputSeparate(join(dir, 'link'), [model])).toThrow(/is the input/);
    expect(() => assertOutputSeparate(join(model, 'q4'), [model])).toThrow(/inside the input/);
    expect(() => assertOutputSeparate(dir, [join(dir, 'link')])).toThrow(/contains the input/);
    expect(() => assertOutputSeparate(join(dir, 'out'), [model])).not.toThrow();
    expect(() => assertOutputSeparate(join(dir, 'model2'), [model])).not.toThrow();
  });

  it('refuses the current folder or one containing it', () => {
    expect(thrown(() => assertOutputSeparate('.', []))).toMatchObject({
      code: 'OUTPUT_CONTAINS_CWD',
    });
  });
});

describe('guardOutput', () => {
  it('refuses an existing output without force, and FIFOs as inputs (without blocking)', async () => {
    const out = join(dir, 'out');
    await mkdir(out);
    expect(thrown(() => guardOutput(out, { inputs: [] }))).toMatchObject({
      code: 'OUTPUT_EXISTS',
    });
    const model = join(dir, 'model');
    await mkdir(model);
    execFileSync('mkfifo', [join(model, 'model.safetensors')]);
    expect(thrown(() => guardOutput(join(dir, 'o2'), { inputs: [model] }))).toMatchObject({
      code: 'FILE_NOT_REGULAR',
      message: /named pipe/,
    });
    await expect(SafetensorsFile.open(join(model, 'model.safetensors'))).rejects.toMatchObject({
      code: 'FILE_NOT_REGULAR',
    });
  });

  it('lets one process write an output at a time; a dead holder is taken over', async () => {
    const out = join(dir, 'out');
    const sleeper = spawn('sleep', ['30']);
    try {
      await writeFile(lockPath(out), lockContent(sleeper.pid!));
      expect(thrown(() => claimOutput(out))).toMatchObject({
        code: 'OUTPUT_BUSY',
        message: new RegExp(`PID ${sleeper.pid}`),
      });
    } finally {
      sleeper.kill('SIGKILL');
    }
    await writeFile(lockPath(out), lockContent(deadPid()));
    const release = claimOutput(out);
    expect(await readFile(lockPath(out), 'utf8')).toBe(lockContent());
    release();
    expect(existsSync(lockPath(out))).toBe(false);
  });
});

describe('removeStaleTemporaries', () => {
  it("removes dead processes' temporaries, puts back an .old whose target is missing, keeps live ones", async () => {
    const dead = deadPid();
    await mkdir(join(dir, `.a.tmp-${dead}-0123abcd`));
    await writeFile(join(dir, `.a.tmp-${dead}-0123abcd`, 'x'), 'partial');
    await mkdir(join(dir, `.b.old-${dead}-0123abcd`)); // killed between the renames of a replace
    await writeFile(join(dir, `.b.old-${dead}-0123abcd`, 'w'), 'previous output');
    await mkdir(join(dir, 'c'));
    await mkdir(join(dir, `.c.old-${dead}-0123abcd`)); // killed after the new c was in place
    await writeFile(join(dir, `.d.tmp-${process.pid}-0123abcd`), 'mine, in progress');
    await writeFile(join(dir, '.e.lock'), lockContent(dead));
    await writeFile(join(dir, '.f.lock'), `${dead}\n`); // not one of ours: kept
    await writeFile(join(dir, '.not-ours.tmp-x'), 'unrelated');
    const removed = removeStaleTemporaries([dir]);
    expect(removed).toHaveLength(4);
    expect((await readdir(dir)).sort()).toEqual([
      `.d.tmp-${process.pid}-0123abcd`,
      '.f.lock',
      '.not-ours.tmp-x',
      'b',
      'c',
    ]);
    expect(await readFile(join(dir, 'b', 'w'), 'utf8')).toBe('previous output');
  });

  it("follows a dead process's journal to temporaries in any folder", async () => {
    const dead = deadPid();
    const elsewhere = join(dir, 'elsewhere');
    await mkdir(elsewhere);
    const tmp = join(elsewhere, `.out.tmp-${dead}-89abcdef`);
    const done = join(elsewhere, `.out2.tmp-${dead}-89abcdef`);
    await mkdir(tmp);
    await writeFile(done, 'renamed into place before the kill: not in the pending set');
    const journals = join(tmpdir(), '.lora-temporaries');
    await mkdir(journals, { recursive: true });
    await writeFile(join(journals, String(dead)), `+${tmp}\n+${done}\n-${done}\n`);
    removeStaleTemporaries();
    expect(existsSync(tmp)).toBe(false);
    expect(existsSync(done)).toBe(true);
    expect(existsSync(join(journals, String(dead)))).toBe(false);
  });
});

describe('resolveInsideFolder', () => {
  it('accepts names inside the folder and refuses absolute paths and .. escapes', () => {
    expect(resolveInsideFolder('/m', 'model-00001.safetensors', 'index')).toBe(
      '/m/model-00001.safetensors',
    );
    expect(resolveInsideFolder('/m', 'sub/../x.safetensors', 'index')).toBe('/m/x.safetensors');
    for (const bad of ['../outside/x.safetensors', '/etc/passwd', 'a/../../x', '..', '']) {
      expect(thrown(() => resolveInsideFolder('/m', bad, 'index'))).toMatchObject({
        code: 'PATH_OUTSIDE_FOLDER',
      });
    }
  });
});
