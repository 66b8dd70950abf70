import { lstat, mkdir, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { CoreError } from '../errors.js';
import { syncPath } from './atomic-write.js';
import { isFsError, writeFailed } from './fs-errors.js';
import { assertReplaceable, listFilesRecursive } from './output-guard.js';
import { temporaryPath, trackTemporary, untrackTemporary } from './temporaries.js';

export interface WriteFolderAtomicOptions {
  /**
   * Replace an existing folder at `path`, but only when it holds nothing except files this
   * write produces (`OUTPUT_NOT_REPLACEABLE` otherwise, naming the others).
   */
  overwrite?: boolean;
}

async function exists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}

/**
 * Builds a folder atomically: `build` fills a temporary sibling `.NAME.tmp-PID-*`, whose files
 * are fsynced and which is renamed to `path` only when `build` succeeded. On any error the
 * temporary is removed and `path` is untouched, so no partial output is ever visible.
 *
 * An existing `path` is refused with `OUTPUT_EXISTS` unless `overwrite`. Replacing moves the old
 * folder aside (`.NAME.old-PID-*`), renames the new one in, then deletes the old one: if the
 * process dies between the two renames, `path` is briefly absent and the next run (or the exit
 * hook) puts the old folder back. When another process completes the same output first, this
 * write fails with `OUTPUT_CONFLICT` and leaves the other's output whole. File-system failures
 * become `FILE_WRITE_FAILED` naming the path and the cause. Returns what `build` returns.
 */
export async function writeFolderAtomic<T>(
  path: string,
  build: (tmpDir: string) => Promise<T>,
  options: WriteFolderAtomicOptions = {},
): Promise<T> {
  const existed = await exists(path);
  if (existed && !options.overwrite) {
    throw new CoreError(
      'OUTPUT_EXISTS',
      `${path} already exists. Choose another output or allow overwriting (--force).`,
      { path },
    );
  }
  const tmp = temporaryPath(path);
  trackTemporary(tmp); // before it exists: a kill right after the mkdir leaves nothing unknown
  try {
    await mkdir(dirname(path), { recursive: true });
    await mkdir(tmp);
  } catch (e) {
    untrackTemporary(tmp);
    // mkdir -p reports a file standing where a parent folder should be as EEXIST
    if (isFsError(e) && e.code === 'EEXIST' && e.path !== tmp) e.code = 'ENOTDIR';
    throw isFsError(e) ? writeFailed(path, e) : e;
  }
  try {
    const result = await build(tmp);
    const files = await listFilesRecursive(tmp);
    for (const f of files) await syncPath(join(tmp, f));
    await syncPath(tmp);
    if (existed) await assertReplaceable(path, files);
    await moveIntoPlace(tmp, path, existed);
    await syncPath(dirname(path));
    return result;
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    if (isFsError(e)) throw writeFailed(path, e);
    // A file of the folder failed: name the output the user asked for, not the temporary.
    if (e instanceof CoreError && e.code === 'FILE_WRITE_FAILED' && e.message.includes(tmp)) {
      throw new CoreError(e.code, e.message.replaceAll(tmp, path), { ...e.details }, { cause: e });
    }
    throw e;
  } finally {
    untrackTemporary(tmp);
  }
}

function conflict(path: string, cause: unknown): CoreError {
  return new CoreError(
    'OUTPUT_CONFLICT',
    `${path} was written by another process at the same time; its output was kept and this one discarded. Run again to replace it (--force).`,
    { path },
    { cause },
  );
}

const TAKEN = new Set(['ENOTEMPTY', 'EEXIST', 'ENOTDIR', 'EISDIR']);

/**
 * Renames `tmp` to `path`. With `replace`, an existing `path` is moved aside first and deleted
 * after; without, a `path` that appeared meanwhile (another writer) makes this write fail.
 */
async function moveIntoPlace(tmp: string, path: string, replace: boolean): Promise<void> {
  const old = temporaryPath(path, 'old');
  trackTemporary(old);
  try {
    let movedAside = replace;
    if (replace) {
      await rename(path, old).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
        movedAside = false; // nothing (any more) at path
      });
    }
    try {
      await rename(tmp, path);
    } catch (e) {
      // Put the previous output back, unless another writer's output now stands there.
      if (movedAside) {
        if (await exists(path)) await rm(old, { recursive: true, force: true });
        else await rename(old, path);
      }
      throw TAKEN.has((e as NodeJS.ErrnoException).code ?? '') ? conflict(path, e) : e;
    }
    if (movedAside) await rm(old, { recursive: true, force: true });
  } finally {
    untrackTemporary(old);
  }
}
