import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFolderAtomic } from './atomic-folder.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lora-folder-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('writeFolderAtomic', () => {
  it('makes the folder appear complete, and returns what build returns', async () => {
    const out = join(dir, 'a');
    const r = await writeFolderAtomic(out, async (tmp) => {
      await writeFile(join(tmp, 'x.txt'), 'x');
      expect(existsSync(out)).toBe(false); // nothing visible while building
      return 42;
    });
    expect(r).toBe(42);
    expect(await readFile(join(out, 'x.txt'), 'utf8')).toBe('x');
  });

  it('leaves nothing behind when build fails, and keeps an existing folder', async () => {
    const out = join(dir, 'b');
    await writeFolderAtomic(out, async (tmp) => writeFile(join(tmp, 'old.txt'), 'old'));
    await expect(
      writeFolderAtomic(
        out,
        async (tmp) => {
          await writeFile(join(tmp, 'half.txt'), 'half');
          throw new Error('disk full');
        },
        { overwrite: true },
      ),
    ).rejects.toThrow('disk full');
    expect(await readdir(out)).toEqual(['old.txt']);
    expect((await readdir(dir)).filter((n) => n.includes('.tmp-') || n.includes('.old-'))).toEqual(
      [],
    );
  });

  it('refuses an existing folder without overwrite; with it, replaces only a folder holding what this write produces', async () => {
    const out = join(dir, 'c');
    await writeFolderAtomic(out, async (tmp) => writeFile(join(tmp, '1.txt'), '1'));
    await expect(writeFolderAtomic(out, async () => {})).rejects.toMatchObject({
      code: 'OUTPUT_EXISTS',
    });
    // Same file set (an earlier run of the same writer): replaced.
    await writeFolderAtomic(out, async (tmp) => writeFile(join(tmp, '1.txt'), 'one'), {
      overwrite: true,
    });
    expect(await readFile(join(out, '1.txt'), 'utf8')).toBe('one');
    // A file the new output does not contain (the user's): refused, named, nothing changed.
    await writeFile(join(out, 'notes.txt'), 'mine');
    await expect(
      writeFolderAtomic(out, async (tmp) => writeFile(join(tmp, '1.txt'), 'two'), {
        overwrite: true,
      }),
    ).rejects.toMatchObject({ code: 'OUTPUT_NOT_REPLACEABLE', message: /notes\.txt/ });
    expect((await readdir(out)).sort()).toEqual(['1.txt', 'notes.txt']);
    expect(await readFile(join(out, '1.txt'), 'utf8')).toBe('one');
    expect((await readdir(dir)).filter((n) => n.startsWith('.c.'))).toEqual([]);
  });

  it('two concurrent writers of one output: one wins whole, the other fails clearly, nothing leaks', async () => {
    const out = join(dir, 'd');
    const slowBuild = (label: string) => async (tmp: string) => {
      for (let i = 0; i < 20; i++) {
        await writeFile(join(tmp, `f${i}.txt`), `${label}${i}`);
        await new Promise((r) => setImmediate(r));
      }
    };
    const results = await Promise.allSettled([
      writeFolderAtomic(out, slowBuild('a')),
      writeFolderAtomic(out, slowBuild('b')),
    ]);
    const ok = results.filter((r) => r.status === 'fulfilled');
    const failed = results.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
    expect(ok).toHaveLength(1);
    expect(failed).toHaveLength(1);
    expect(failed[0].reason).toMatchObject({ code: 'OUTPUT_CONFLICT' });
    const contents = await Promise.all(
      Array.from({ length: 20 }, (_, i) => readFile(join(out, `f${i}.txt`), 'utf8')),
    );
    const winner = contents[0][0];
    expect(contents).toEqual(Array.from({ length: 20 }, (_, i) => `${winner}${i}`)); // not mixed
    expect((await readdir(dir)).filter((n) => n.startsWith('.d.'))).toEqual([]);
  });

  it('a failed write names the path and the cause in one sentence (read-only or missing parent)', async () => {
    const blocker = join(dir, 'a-file');
    await writeFile(blocker, 'x');
    const err = await writeFolderAtomic(join(blocker, 'out'), async () => {}).catch((e) => e);
    expect(err).toMatchObject({ code: 'FILE_WRITE_FAILED' });
    expect(err.message).toMatch(
      /^Could not write .*a-file\/out: a file is where a folder is expected \(E[A-Z]+\)/,
    );
  });
});
