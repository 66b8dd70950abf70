import { readFileSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { WeightFile } from './weight-file.js';

// mkdir is wrapped to look at the temporaries journal at the instant the folder is created.
vi.mock('node:fs/promises', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:fs/promises')>();
  return { ...actual, mkdir: vi.fn(actual.mkdir) };
});

/** This process's temporaries journal (see @lora/core's temporaries.ts). */
function journal(): string {
  try {
    return readFileSync(join(tmpdir(), '.lora-temporaries', String(process.pid)), 'utf8');
  } catch {
    return '';
  }
}

let parent: string | undefined;
afterEach(async () => {
  if (parent) await fsp.rm(parent, { recursive: true, force: true });
});

describe('WeightFile.create', () => {
  it('names its folder in the temporaries journal before creating it (a kill right after the mkdir leaves nothing unknown to the next run)', async () => {
    parent = await fsp.mkdtemp(join(tmpdir(), 'lora-weight-file-journal-'));
    const realMkdir = (await vi.importActual<typeof import('node:fs/promises')>('node:fs/promises'))
      .mkdir;
    let journaledAtMkdir: boolean | undefined;
    vi.mocked(fsp.mkdir).mockImplementationOnce(async (path, options) => {
      journaledAtMkdir = journal()
        .split('\n')
        .includes(`+${String(path)}`);
      return realMkdir(path, options);
    });
    const file = await WeightFile.create(parent);
    try {
      expect(journaledAtMkdir).toBe(true);
    } finally {
      await file.remove();
    }
  });
});
