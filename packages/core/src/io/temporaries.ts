import { randomBytes } from 'node:crypto';
import {
  appendFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  unlinkSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve, sep } from 'node:path';

/**
 * Temporary paths that atomic writes create next to their target, and their cleanup.
 *
 * - `.NAME.tmp-PID-HEX`: a file or folder being built; renamed to `NAME` when complete.
 * - `.NAME.old-PID-HEX`: the previous `NAME`, moved aside for the instant of a replace.
 * - `.NAME.lock`: holds the PID of the process writing `NAME` (see `claimOutput`).
 *
 * Every process records the temporaries it creates in a journal (one file per PID in
 * `<os tmpdir>/.lora-temporaries/`), removes them on exit or on a signal, and, when a process was
 * killed (SIGKILL, power loss), the next run removes the temporaries of dead PIDs: from their
 * journals and from the folders it writes into. An `.old` left behind is put back when `NAME` is
 * missing, so a kill between the two renames of a replace loses nothing.
 */
export type TemporaryKind = 'tmp' | 'old' | 'lock';

const TEMPORARY_NAME = /^\.(.+)\.(tmp|old)-(\d+)-[0-9a-f]{8}$/;
const LOCK_NAME = /^\.(.+)\.lock$/;

/** A fresh temporary path next to `target` (same folder, so the final rename is atomic). */
export function temporaryPath(target: string, kind: 'tmp' | 'old' = 'tmp'): string {
  const tag = `${process.pid}-${randomBytes(4).toString('hex')}`;
  return join(dirname(target), `.${basename(target)}.${kind}-${tag}`);
}

/** The lock file of `target`. */
export function lockPath(target: string): string {
  return join(dirname(target), `.${basename(target)}.lock`);
}

/** Recognises our temporary names; `undefined` for anything else. */
export function parseTemporaryPath(
  path: string,
): { target: string; kind: TemporaryKind; pid: number | undefined } | undefined {
  const name = basename(path);
  const m = TEMPORARY_NAME.exec(name);
  if (m)
    return { target: join(dirname(path), m[1]), kind: m[2] as 'tmp' | 'old', pid: Number(m[3]) };
  const l = LOCK_NAME.exec(name);
  if (!l) return undefined;
  return { target: join(dirname(path), l[1]), kind: 'lock', pid: lockOwner(path) };
}

/** What a lock file holds: the PID and a tag, so that only our own locks are ever recognised. */
export function lockContent(pid = process.pid): string {
  return `${pid} lora\n`;
}

/** The PID written in one of our lock files, or `undefined` (unreadable, empty, or not ours). */
export function lockOwner(path: string): number | undefined {
  try {
    const m = /^(\d+) lora\n$/.exec(readFileSync(path, 'utf8'));
    const pid = Number(m?.[1]);
    return m && Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** True when a process with this PID exists (a PID of another user counts as alive). */
export function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const tracked = new Set<string>();
let exitHookInstalled = false;

function journalDir(): string {
  return join(tmpdir(), '.lora-temporaries');
}

function journalPath(pid = process.pid): string {
  return join(journalDir(), String(pid));
}

function appendJournal(line: string): void {
  try {
    mkdirSync(journalDir(), { recursive: true });
    appendFileSync(journalPath(), `${line}\n`);
  } catch {
    /* the journal only helps the next run; writing the output must not depend on it */
  }
}

/**
 * Records a temporary this process created, so that it is removed on exit, on a signal
 * (`removeTemporariesSync`), or by the next run if this process is killed. Paths inside an
 * already tracked folder are covered by it.
 */
export function trackTemporary(path: string): void {
  const abs = resolve(path);
  for (const t of tracked) if (abs.startsWith(t + sep)) return;
  tracked.add(abs);
  appendJournal(`+${abs}`);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', removeTemporariesSync);
  }
}

/** Forgets a temporary that was renamed into place or removed. */
export function untrackTemporary(path: string): void {
  const abs = resolve(path);
  if (!tracked.delete(abs)) return;
  if (tracked.size === 0) removeJournal(process.pid);
  else appendJournal(`-${abs}`);
}

function removeJournal(pid: number): void {
  try {
    unlinkSync(journalPath(pid));
  } catch {
    /* already gone */
  }
}

/**
 * Removes every temporary this process still has (newest first; an `.old` is put back when its
 * target is missing). Synchronous, for signal handlers and `process.on('exit')`.
 */
export function removeTemporariesSync(): void {
  for (const path of [...tracked].reverse()) {
    const parsed = parseTemporaryPath(path);
    if (parsed) cleanUp(path, parsed.kind, parsed.target);
    else rmSync(path, { recursive: true, force: true });
    tracked.delete(path);
  }
  removeJournal(process.pid);
}

function cleanUp(path: string, kind: TemporaryKind, target: string): void {
  try {
    if (kind === 'old' && !existsSync(target)) renameSync(path, target);
    else rmSync(path, { recursive: true, force: true });
  } catch {
    /* best effort: another run will try again */
  }
}

/** Removes `path` if it is one of our temporaries and the process that made it is dead. */
function removeIfStale(path: string, expectedPid?: number): boolean {
  const parsed = parseTemporaryPath(path);
  if (!parsed) return false;
  // A lock its dead creator had no time to write its PID into (killed between create and write)
  if (parsed.kind === 'lock' && parsed.pid === undefined && expectedPid !== undefined) {
    parsed.pid = expectedPid;
  }
  if (parsed.pid === undefined) return false;
  if (expectedPid !== undefined && parsed.pid !== expectedPid) return false;
  if (processAlive(parsed.pid)) return false;
  cleanUp(path, parsed.kind, parsed.target);
  return true;
}

/**
 * Removes the temporaries left by dead processes: those listed in their journals, and those in
 * `folders` (the folders the caller is about to write into). Returns the paths removed or put
 * back. Live processes' temporaries are never touched.
 */
export function removeStaleTemporaries(folders: readonly string[] = []): string[] {
  const removed: string[] = [];
  let journals: string[] = [];
  try {
    journals = readdirSync(journalDir());
  } catch {
    /* no journal yet */
  }
  for (const name of journals) {
    const pid = Number(name);
    if (!Number.isSafeInteger(pid) || processAlive(pid)) continue;
    let lines: string[] = [];
    try {
      lines = readFileSync(journalPath(pid), 'utf8').split('\n');
    } catch {
      continue;
    }
    const pending = new Set<string>();
    for (const line of lines) {
      if (line.startsWith('+')) pending.add(line.slice(1));
      else if (line.startsWith('-')) pending.delete(line.slice(1));
    }
    for (const path of pending) if (removeIfStale(path, pid)) removed.push(path);
    removeJournal(pid);
  }
  for (const folder of folders) {
    let names: string[] = [];
    try {
      names = readdirSync(folder);
    } catch {
      continue;
    }
    for (const name of names) {
      const path = join(folder, name);
      if (name.startsWith('.') && removeIfStale(path)) removed.push(path);
    }
  }
  return removed;
}
