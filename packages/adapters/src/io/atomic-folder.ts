import { randomBytes } from 'node:crypto';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { AdapterError } from '../errors.js';

/**
 * Builds a folder atomically: `build` fills a temporary sibling folder, which is renamed to
 * `path` only when `build` succeeded. On any error the temporary folder is removed and `path`
 * is untouched (no partial output is ever visible). With `overwrite`, an existing `path` is
 * moved aside first and deleted after the new folder is in place.
 */
export async function writeFolderAtomic(
  path: string,
  build: (tmpDir: string) => Promise<void>,
  options: { overwrite?: boolean } = {},
): Promise<void> {
  const exists = await stat(path).then(
    () => true,
    () => false,
  );
  if (exists && !options.overwrite) {
    throw new AdapterError(
      'OUTPUT_EXISTS',
      `${path} already exists. Choose another output or allow overwriting (--force).`,
      { path },
    );
  }
  const tag = `${process.pid}-${randomBytes(4).toString('hex')}`;
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${tag}`);
  await mkdir(tmp, { recursive: true });
  try {
    await build(tmp);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
  if (exists) {
    const old = join(dirname(path), `.${basename(path)}.old-${tag}`);
    await rename(path, old);
    await rename(tmp, path);
    await rm(old, { recursive: true, force: true });
  } else {
    await rename(tmp, path);
  }
}
