import { type Dirent, existsSync, readdirSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { CoreError } from '../errors.js';
import { assertRegularInputs, fileKind } from './file-kind.js';
import { isFsError, writeFailed } from './fs-errors.js';
import { isMarkedKind, OUTPUT_WRITER_KEY, readOutputWriter } from './output-marker.js';
import {
  lockContent,
  lockOwner,
  lockPath,
  processAlive,
  removeStaleTemporaries,
  trackTemporary,
  untrackTemporary,
} from './temporaries.js';

/** The real path of `path`, or of its nearest existing ancestor joined with the rest. */
function realOrPlanned(path: string): string {
  const abs = resolve(path);
  let existing = abs;
  const rest: string[] = [];
  while (!existsSync(existing)) {
    const up = dirname(existing);
    if (up === existing) break;
    rest.unshift(basename(existing));
    existing = up;
  }
  try {
    return join(realpathSync(existing), ...rest);
  } catch {
    return abs;
  }
}

/** True when `inner` is `outer` or lies below it. */
function within(inner: string, outer: string): boolean {
  const rel = relative(outer, inner);
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel));
}

/**
 * Refuses an output that is, lies inside, or contains any input (after resolving symbolic
 * links), or that contains the current folder: writing it would destroy or change an input.
 * Checked before anything is read.
 */
export function assertOutputSeparate(output: string, inputs: readonly string[]): void {
  const out = realOrPlanned(output);
  for (const input of inputs) {
    const inp = realOrPlanned(input);
    let how: string | undefined;
    if (out === inp) how = 'is the input';
    else if (within(out, inp)) how = 'is inside the input';
    else if (within(inp, out)) how = 'contains the input';
    if (how) {
      throw new CoreError(
        'OUTPUT_OVERLAPS_INPUT',
        `The output ${output} ${how} ${input}; writing it would destroy or change that input. Choose an output path outside every input.`,
        { output, input },
      );
    }
  }
  const cwd = realOrPlanned(process.cwd());
  if (within(cwd, out)) {
    throw new CoreError(
      'OUTPUT_CONTAINS_CWD',
      `The output ${output} is the current folder or contains it; it cannot be replaced. Choose a new folder, e.g. ${join(output, 'out')}.`,
      { output },
    );
  }
}

/** Relative paths of every file below `folder` (folders themselves not listed). */
export async function listFilesRecursive(folder: string): Promise<string[]> {
  return relativeFiles(folder, await readdir(folder, { recursive: true, withFileTypes: true }));
}

/** {@link listFilesRecursive}, synchronous (for the checks made before a command starts). */
export function listFilesRecursiveSync(folder: string): string[] {
  return relativeFiles(folder, readdirSync(folder, { recursive: true, withFileTypes: true }));
}

function relativeFiles(folder: string, entries: Dirent[]): string[] {
  return entries
    .filter((e) => !e.isDirectory())
    .map((e) =>
      relative(folder, join(e.parentPath ?? (e as { path?: string }).path ?? folder, e.name)),
    )
    .sort();
}

/**
 * Refuses to replace an existing folder that holds files the new output does not (replacing it
 * would delete them): a folder is replaced only when it holds nothing but what this write
 * produces, i.e. what an earlier run of the same command wrote. Names the files in the way.
 */
export async function assertReplaceable(path: string, newFiles: readonly string[]): Promise<void> {
  const kind = fileKind(path);
  if (kind === 'missing') return;
  if (kind !== 'folder') {
    throw new CoreError(
      'OUTPUT_NOT_REPLACEABLE',
      `${path} is a ${kind === 'file' ? 'file' : kind}, but the output is a folder; it was not replaced. Choose another output.`,
      { path },
    );
  }
  const expected = new Set(newFiles);
  const foreign = (await listFilesRecursive(path)).filter((f) => !expected.has(f));
  if (foreign.length > 0) {
    const shown = foreign.slice(0, 8).join(', ');
    const more = foreign.length > 8 ? ` and ${foreign.length - 8} more` : '';
    throw new CoreError(
      'OUTPUT_NOT_REPLACEABLE',
      `Replacing ${path} would delete ${foreign.length} file(s) that this output does not contain: ${shown}${more}. Nothing was replaced: move them away or choose another output.`,
      { path, files: foreign },
    );
  }
}

/**
 * Claims `output` for this process with a lock file `.NAME.lock` holding the PID, so that a
 * second process writing the same output fails at once (`OUTPUT_BUSY`) instead of racing.
 * A lock of a dead process is taken over. Returns the release function (also run on exit).
 */
export function claimOutput(output: string): () => void {
  const lock = lockPath(output);
  if (!existsSync(dirname(lock))) return () => {}; // a new folder: the final rename detects races
  trackTemporary(lock); // before it exists: a kill right after the create leaves nothing unknown
  for (let attempt = 0; ; attempt++) {
    try {
      writeFileSync(lock, lockContent(), { flag: 'wx' });
      break;
    } catch (e) {
      untrackTemporary(lock);
      const err = e as NodeJS.ErrnoException;
      if (err.code !== 'EEXIST') throw isFsError(err) ? writeFailed(output, err) : err;
      const owner = lockOwner(lock);
      if (owner === undefined) {
        throw new CoreError(
          'OUTPUT_BUSY',
          `${lock} exists but is not a lock this program wrote; remove it if nothing is writing ${output}.`,
          { output, lock },
        );
      }
      if (owner !== process.pid && processAlive(owner)) {
        throw new CoreError(
          'OUTPUT_BUSY',
          `${output} is being written by another process (PID ${owner}); wait for it to finish or choose another output.`,
          { output, pid: owner },
        );
      }
      if (attempt > 0) throw writeFailed(output, err);
      rmSync(lock, { force: true }); // stale: its process is gone
      trackTemporary(lock);
    }
  }
  let released = false;
  return () => {
    if (released) return;
    released = true;
    rmSync(lock, { force: true });
    untrackTemporary(lock);
  };
}

export interface GuardOutputOptions {
  /** Every file or folder the command reads. */
  readonly inputs: readonly string[];
  /**
   * Replace an existing output, but only one that an earlier run of the same `writer` wrote
   * (and, for a folder, that holds nothing but what the command writes).
   */
  readonly force?: boolean;
  /**
   * The command writing the output (e.g. `"quantize"`), which it records in the files it writes
   * (`lora.writer`, see {@link outputMarker}); an existing output is replaced only when its
   * weights files carry this same name.
   */
  readonly writer: string;
  /**
   * Files written beside `output` that belong to it (e.g. `model.onnx.data`, a residual): checked
   * and claimed with it, and replaced only together with a recognised `output`.
   */
  readonly companions?: readonly string[];
}

/** How an existing file's writer reads in a message. */
function writtenBy(writer: string | undefined): string {
  return writer === undefined ? 'not written by lora' : `written by \`lora ${writer}\``;
}

/**
 * Refuses to replace an existing output that the same command did not write. A single-file
 * output, and each weights-file companion (a merge residual), must carry `lora.writer` equal to
 * `writer` ({@link readOutputWriter}). A folder must hold at least one weights file
 * (`.safetensors`, `.onnx`, at any depth) carrying `writer` and none naming another command;
 * unmarked files in it (e.g. an `.onnx` a command copied from its input) are left to the
 * file-set check made when the new folder replaces it ({@link assertReplaceable}). A companion
 * that is not a weights file (`model.onnx.data`) is replaced only with a recognised output.
 * Reads headers only. The error names every file replacing would delete and who wrote them.
 */
export function assertWrittenBy(
  output: string,
  writer: string,
  companions: readonly string[] = [],
): void {
  const existing: string[] = []; // every file that would be replaced, as shown to the user
  const read: { file: string; writer: string | undefined }[] = [];
  const reasons: string[] = [];
  const mustCarry = (file: string) => {
    const w = readOutputWriter(file);
    read.push({ file, writer: w });
    if (w !== writer) reasons.push(`${file} is ${writtenBy(w)}`);
  };
  const kind = fileKind(output);
  if (kind === 'folder') {
    for (const f of listFilesRecursiveSync(output)) {
      const file = join(output, f);
      existing.push(file);
      if (isMarkedKind(f)) read.push({ file, writer: readOutputWriter(file) });
    }
    for (const r of read) {
      if (r.writer !== undefined && r.writer !== writer) {
        reasons.push(`${r.file} is ${writtenBy(r.writer)}`);
      }
    }
    if (reasons.length === 0 && !read.some((r) => r.writer === writer)) {
      const unmarked = read.filter((r) => r.writer === undefined).map((r) => r.file);
      reasons.push(
        unmarked.length > 0
          ? `${unmarked.slice(0, 3).join(', ')}${unmarked.length > 3 ? ' ...' : ''} ${unmarked.length > 1 ? 'are' : 'is'} not written by lora`
          : `${output} holds no weights file written by \`lora ${writer}\``,
      );
    }
  } else if (kind !== 'missing') {
    existing.push(output);
    mustCarry(output); // a single-file output of any kind
  }
  for (const c of companions) {
    if (fileKind(c) === 'missing') continue;
    existing.push(c);
    if (isMarkedKind(c)) mustCarry(c);
    else if (kind === 'missing') {
      // e.g. model.onnx.data alone: raw bytes that cannot carry a marker (a run killed between
      // its two renames leaves one; only the user can tell)
      reasons.push(
        `${c} belongs to no ${output} written by \`lora ${writer}\` (a run killed midway can leave it alone)`,
      );
    }
  }
  if (reasons.length === 0) return;
  const older = reasons.some((r) => r.endsWith('not written by lora'))
    ? ` Outputs of lora versions before the ${OUTPUT_WRITER_KEY} marker carry none and are never replaced.`
    : '';
  const shown = existing.slice(0, 8).join(', ');
  const more = existing.length > 8 ? ` and ${existing.length - 8} more` : '';
  throw new CoreError(
    'OUTPUT_NOT_REPLACEABLE',
    `--force replaces only what an earlier \`lora ${writer}\` wrote, and ${reasons.join('; ')}. Replacing it would delete ${existing.length} file(s): ${shown}${more}. Nothing was replaced: choose another output, or delete these files by hand if you no longer need them.${older}`,
    {
      path: output,
      files: existing,
      writers: Object.fromEntries(read.map((r) => [r.file, r.writer ?? null])),
    },
  );
}

/**
 * Everything a command checks before it reads anything for an output: the output is separate
 * from every input; the inputs are regular files or folders (no FIFO or device); an existing
 * output (or companion) is refused unless `force`, and with `force` unless the same `writer`
 * wrote it ({@link assertWrittenBy}); stale temporaries of dead processes next to the output are
 * removed; and the output is claimed against concurrent writers. Returns the release function.
 */
export function guardOutput(output: string, options: GuardOutputOptions): () => void {
  const paths = [output, ...(options.companions ?? [])];
  for (const p of paths) assertOutputSeparate(p, options.inputs);
  assertRegularInputs(options.inputs);
  removeStaleTemporaries([...new Set(paths.map((p) => dirname(resolve(p))))]);
  for (const p of paths) {
    const kind = fileKind(p);
    if (kind !== 'missing' && !options.force) {
      throw new CoreError(
        'OUTPUT_EXISTS',
        `${p} already exists. Choose another output, or pass --force to replace what an earlier run of the same command wrote there.`,
        { path: p },
      );
    }
    if (kind === 'fifo' || kind === 'socket' || kind === 'device') {
      throw new CoreError(
        'OUTPUT_NOT_REPLACEABLE',
        `${p} is a ${kind}, not a file or folder; it was not replaced. Choose another output.`,
        { path: p },
      );
    }
  }
  const releases: (() => void)[] = [];
  const release = () => {
    for (const r of releases.splice(0)) r();
  };
  try {
    for (const p of paths) releases.push(claimOutput(p));
    // Checked under the claim: no other lora process changes the output meanwhile.
    if (options.force) assertWrittenBy(output, options.writer, options.companions);
  } catch (e) {
    release();
    throw e;
  }
  return release;
}
