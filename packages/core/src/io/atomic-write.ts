import { type FileHandle, mkdir, open, rename, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { isFsError, writeFailed } from './fs-errors.js';
import { temporaryPath, trackTemporary, untrackTemporary } from './temporaries.js';

export interface WriteFileAtomicOptions {
  /**
   * Runs after the content is complete and fsynced, just before the rename: for example to
   * remove a file that refers to the one being replaced, so the two are never mismatched.
   */
  beforeRename?: () => Promise<void>;
}

/**
 * Writes a file atomically: the content goes to a temporary file `.NAME.tmp-PID-*` in the same
 * folder, which is fsynced and then renamed over the target, and the folder is fsynced. A crash,
 * a full disk or an exception in `write` leaves either the old file or nothing; the temporary
 * is removed (on a signal or a kill, by the exit hook or the next run). File-system failures
 * become `FILE_WRITE_FAILED` with one sentence naming the path and the cause.
 */
export async function writeFileAtomic(
  path: string,
  write: (handle: FileHandle) => Promise<void>,
  options: WriteFileAtomicOptions = {},
): Promise<void> {
  const tmp = temporaryPath(path);
  let handle: FileHandle | undefined;
  trackTemporary(tmp); // before it exists: a kill right after the open leaves nothing unknown
  try {
    await mkdir(dirname(path), { recursive: true });
    handle = await open(tmp, 'wx');
    await write(handle);
    await handle.sync();
    await handle.close();
    handle = undefined;
    await options.beforeRename?.();
    await rename(tmp, path);
    untrackTemporary(tmp);
  } catch (e) {
    await handle?.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    untrackTemporary(tmp);
    throw isFsError(e) ? writeFailed(path, e) : e; // errors of ours pass through unchanged
  }
  await syncPath(dirname(path)); // makes the rename durable
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

/** Fsyncs a file or folder: makes a rename or a copied file durable. Best effort. */
export async function syncPath(path: string): Promise<void> {
  // Not supported on every platform/filesystem (folders on some), hence best effort.
  try {
    const h = await open(path, 'r');
    try {
      await h.sync();
    } finally {
      await h.close();
    }
  } catch {
    /* best effort */
  }
}
