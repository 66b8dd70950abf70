import { randomBytes } from 'node:crypto';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { isLoraError } from '@lora/core';
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
    throw unwrapWriteError(e);
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

/**
 * core's `writeFileAtomic` reports any error that carries a `code` as FILE_WRITE_FAILED; when
 * the real cause is one of ours (a NaN found while streaming a tensor), surface that instead.
 */
export function unwrapWriteError(e: unknown): unknown {
  let err = e;
  while (isLoraError(err) && err.code === 'FILE_WRITE_FAILED' && isLoraError((err as Error).cause))
    err = (err as Error).cause;
  return err;
}
