import { randomBytes } from 'node:crypto';
import { type FileHandle, open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { CoreError, LoraError } from '../errors.js';

/**
 * Writes a file atomically: the content goes to a temporary file in the same folder, which is
 * fsynced and then renamed over the target, and the folder is fsynced. A crash, a full disk or
 * an exception in `write` leaves either the old file or nothing; the temporary file is removed.
 */
export async function writeFileAtomic(
  path: string,
  write: (handle: FileHandle) => Promise<void>,
): Promise<void> {
  const tmp = join(
    dirname(path),
    `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`,
  );
  let handle: FileHandle | undefined;
  try {
    handle = await open(tmp, 'wx');
    await write(handle);
    await handle.sync();
    await handle.close();
    handle = undefined;
    await rename(tmp, path);
  } catch (e) {
    await handle?.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    const err = e as NodeJS.ErrnoException;
    if (e instanceof LoraError || !err.code) throw e; // errors of ours pass through unchanged
    const hint = err.code === 'ENOSPC' ? ' The disk is full; free space and try again.' : '';
    throw new CoreError(
      'FILE_WRITE_FAILED',
      `${path}: write failed (${err.code}).${hint} Nothing was written.`,
      { file: path },
      { cause: e },
    );
  }
  await syncDirectory(dirname(path));
}

/** Writes bytes or text atomically. */
export async function writeBytesAtomic(path: string, content: Uint8Array | string): Promise<void> {
  await writeFileAtomic(path, async (h) => {
    await writeAll(h, typeof content === 'string' ? new TextEncoder().encode(content) : content);
  });
}

/** Writes the whole buffer (handles short writes). */
export async function writeAll(handle: FileHandle, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const { bytesWritten } = await handle.write(bytes, done, bytes.length - done);
    done += bytesWritten;
  }
}

async function syncDirectory(dir: string): Promise<void> {
  // Makes the rename durable; not supported on every platform/filesystem, so best effort.
  try {
    const h = await open(dir, 'r');
    try {
      await h.sync();
    } finally {
      await h.close();
    }
  } catch {
    /* best effort */
  }
}
