import { constants, readdirSync, type Stats, statSync } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';
import { isAbsolute, join, normalize, relative, resolve, sep } from 'node:path';
import { CoreError } from '../errors.js';
import { describeFsError } from './fs-errors.js';

/** What a path is: only `file` and `folder` are ever read as model, adapter or data inputs. */
export type FileKind = 'file' | 'folder' | 'fifo' | 'device' | 'socket' | 'missing';

function kindOf(s: Stats): FileKind {
  if (s.isFile()) return 'file';
  if (s.isDirectory()) return 'folder';
  if (s.isFIFO()) return 'fifo';
  if (s.isSocket()) return 'socket';
  return 'device';
}

/** The kind of `path` (symbolic links followed). Never opens it, so a FIFO cannot block. */
export function fileKind(path: string): FileKind {
  try {
    return kindOf(statSync(path));
  } catch {
    return 'missing';
  }
}

function notRegular(path: string, kind: FileKind): CoreError {
  const what =
    kind === 'fifo' ? 'a named pipe (FIFO)' : kind === 'socket' ? 'a socket' : `a ${kind}`;
  return new CoreError(
    'FILE_NOT_REGULAR',
    `${path} is ${what}, not a regular file; reading it could block forever or never end. Give a regular file.`,
    { file: path, kind },
  );
}

/**
 * Refuses inputs that are FIFOs, sockets or devices, and folders holding such entries (a model
 * folder whose `model.safetensors` is a pipe would hang every reader). Missing paths pass: the
 * caller reports them in its own words.
 */
export function assertRegularInputs(paths: readonly string[]): void {
  for (const path of paths) {
    const kind = fileKind(path);
    if (kind === 'fifo' || kind === 'socket' || kind === 'device') throw notRegular(path, kind);
    if (kind !== 'folder') continue;
    let names: string[] = [];
    try {
      names = readdirSync(path);
    } catch {
      continue;
    }
    for (const name of names) {
      const k = fileKind(join(path, name));
      if (k === 'fifo' || k === 'socket' || k === 'device') throw notRegular(join(path, name), k);
    }
  }
}

/**
 * Opens a file for reading without ever blocking: the open is non-blocking (a FIFO without a
 * writer returns at once) and anything but a regular file is refused with `FILE_NOT_REGULAR`.
 */
export async function openRegularFile(path: string): Promise<FileHandle> {
  let handle: FileHandle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new CoreError(
      err.code === 'ENOENT' ? 'FILE_NOT_FOUND' : 'FILE_UNREADABLE',
      `${path}: cannot open (${describeFsError(err)}).`,
      { file: path },
      { cause: e },
    );
  }
  const kind = kindOf(await handle.stat());
  if (kind !== 'file') {
    await handle.close();
    if (kind === 'folder') {
      throw new CoreError('FILE_IS_FOLDER', `${path} is a folder, not a file.`, { file: path });
    }
    throw notRegular(path, kind);
  }
  return handle;
}

/**
 * Resolves a file name that a model folder's own metadata gives (a shard in
 * `model.safetensors.index.json`, a data file named by a config) to a path inside `folder`, and
 * refuses anything that would leave it: absolute paths and `..` segments. The check is on the
 * name as written, so symbolic links inside the folder (as in the Hugging Face cache) still work.
 */
export function resolveInsideFolder(folder: string, name: unknown, listedIn: string): string {
  if (typeof name !== 'string') {
    throw new CoreError(
      'PATH_OUTSIDE_FOLDER',
      `${listedIn} names ${JSON.stringify(name)} where a file name is expected; the file is corrupt.`,
      { folder, listedIn },
    );
  }
  const rel = normalize(name);
  if (
    name.length === 0 ||
    name.includes('\0') ||
    isAbsolute(name) ||
    rel === '..' ||
    rel.startsWith(`..${sep}`) ||
    relative(resolve(folder), resolve(folder, rel)).startsWith('..')
  ) {
    throw new CoreError(
      'PATH_OUTSIDE_FOLDER',
      `${listedIn} names "${name}", which is outside the folder ${folder}; every file a model folder lists must be inside it. The file is corrupt or malicious.`,
      { folder, name, listedIn },
    );
  }
  return join(folder, rel);
}
