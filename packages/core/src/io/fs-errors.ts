import { CoreError, LoraError } from '../errors.js';

/** What each file-system error code means, in words a user can act on. */
const CAUSES: Readonly<Record<string, string>> = {
  ENOSPC: 'no space left on the device',
  EDQUOT: 'the disk quota is exhausted',
  EFBIG: 'the file size limit of this process (ulimit -f) is exceeded',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'the file system is read-only',
  EISDIR: 'a folder is where a file is expected',
  ENOTDIR: 'a file is where a folder is expected',
  ENOENT: 'no such file or folder',
  EBUSY: 'the path is busy (in use, or a mount point)',
  ENOTEMPTY: 'the folder is not empty',
  EEXIST: 'the path already exists',
  EMFILE: 'too many open files',
  ENFILE: 'too many open files in the system',
  EIO: 'an input/output error',
  ENAMETOOLONG: 'the name is too long',
  ELOOP: 'too many symbolic links',
  EXDEV: 'the temporary and the output are on different devices',
};

/** The cause of a file-system error as a phrase, e.g. "no space left on the device (ENOSPC)". */
export function describeFsError(error: unknown): string {
  const err = error as NodeJS.ErrnoException;
  const cause = err?.code ? CAUSES[err.code] : undefined;
  if (cause) return `${cause} (${err.code})`;
  return err?.code ?? err?.message ?? String(error);
}

/** True for a Node.js file-system error (has an errno `code`), not one of ours. */
export function isFsError(error: unknown): error is NodeJS.ErrnoException {
  return (
    !(error instanceof LoraError) &&
    typeof (error as NodeJS.ErrnoException)?.code === 'string' &&
    (error as NodeJS.ErrnoException).code!.startsWith('E')
  );
}

/**
 * The `FILE_WRITE_FAILED` error for a write to `target` that failed with a file-system error:
 * one sentence naming the path and the cause (and the exact path involved when it differs).
 */
export function writeFailed(target: string, error: NodeJS.ErrnoException): CoreError {
  const at = error.path && error.path !== target ? ` (at ${error.path})` : '';
  const fix =
    error.code === 'EFBIG'
      ? ' Raise the limit or choose another output.'
      : error.code === 'ENOSPC' || error.code === 'EDQUOT'
        ? ' Free space or choose another output.'
        : error.code === 'EACCES' || error.code === 'EPERM' || error.code === 'EROFS'
          ? ' Choose a writable output folder.'
          : '';
  return new CoreError(
    'FILE_WRITE_FAILED',
    `Could not write ${target}: ${describeFsError(error)}${at}; nothing was written.${fix}`,
    { file: target, errno: error.code },
    { cause: error },
  );
}
