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

  it('refuses an existing folder without overwrite, replaces it with', async () => {
    const out = join(dir, 'c');
    await writeFolderAtomic(out, async (tmp) => writeFile(join(tmp, '1.txt'), '1'));
    await expect(writeFolderAtomic(out, async () => {})).rejects.toMatchObject({
      code: 'OUTPUT_EXISTS',
    });
    await writeFolderAtomic(out, async (tmp) => writeFile(join(tmp, '2.txt'), '2'), {
      overwrite: true,
    });
    expect(await readdir(out)).toEqual(['2.txt']);
  });
});
