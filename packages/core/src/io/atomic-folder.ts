import { randomBytes } from 'node:crypto';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { CoreError } from '../errors.js';

export interface WriteFolderAtomicOptions {
  /** Replace an existing folder at `path` (the old one is removed only after the new one is in place). */
  overwrite?: boolean;
}

/**
 * Builds a folder atomically: `build` fills a temporary sibling folder, which is renamed to
 * `path` only when `build` succeeded. On any error the temporary folder is removed and `path`
 * is untouched, so no partial output is ever visible. An existing `path` is refused with
 * `OUTPUT_EXISTS` unless `overwrite`; then it is moved aside, replaced, and deleted (or put
 * back if the final rename fails). Returns what `build` returns.
 */
export async function writeFolderAtomic<T>(
  path: string,
  build: (tmpDir: string) => Promise<T>,
  options: WriteFolderAtomicOptions = {},
): Promise<T> {
  const exists = await stat(path).then(
    () => true,
    () => false,
  );
  if (exists && !options.overwrite) {
    throw new CoreError(
      'OUTPUT_EXISTS',
      `${path} already exists. Choose another output or allow overwriting (--force).`,
      { path },
    );
  }
  const tag = `${process.pid}-${randomBytes(4).toString('hex')}`;
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${tag}`);
  await mkdir(dirname(path), { recursive: true });
  await mkdir(tmp);
  let result: T;
  try {
    result = await build(tmp);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
  const old = join(dirname(path), `.${basename(path)}.old-${tag}`);
  if (exists) await rename(path, old);
  try {
    await rename(tmp, path);
  } catch (e) {
    if (exists) await rename(old, path);
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
  if (exists) await rm(old, { recursive: true, force: true });
  return result;
}
