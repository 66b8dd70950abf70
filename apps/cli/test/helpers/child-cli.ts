import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The built `lora` executable: these tests run it as a real process (kills, limits, signals). */
export const LORA_BIN = fileURLToPath(new URL('../../bin/lora.js', import.meta.url));
export const cliBuilt = existsSync(fileURLToPath(new URL('../../dist/main.js', import.meta.url)));
if (!cliBuilt) {
  console.warn(
    'SKIPPED: apps/cli/dist is absent; the child-process CLI tests need `pnpm build` first.',
  );
}

export interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Children still running, so that a test ending early (timeout, failure) can stop them. */
const live = new Set<ChildProcess>();

/**
 * Kills every child still running and waits for them: call before removing a test's folder, so
 * that no process writes into it afterwards.
 */
export async function stopChildren(): Promise<void> {
  const waits = [...live].map(
    (c) =>
      new Promise<void>((resolve) =>
        c.exitCode !== null ? resolve() : c.once('close', () => resolve()),
      ),
  );
  for (const c of live) c.kill('SIGKILL');
  await Promise.all(waits);
}

/** Starts `lora <args>` as a child process. */
export function startCli(
  args: readonly string[],
  options: { cwd?: string; input?: string; shellPrefix?: string } = {},
): { child: ChildProcess; done: Promise<ChildResult> } {
  const child = options.shellPrefix
    ? spawn(
        'sh',
        ['-c', `${options.shellPrefix}; exec "$0" "$@"`, process.execPath, LORA_BIN, ...args],
        { cwd: options.cwd, stdio: 'pipe' },
      )
    : spawn(process.execPath, [LORA_BIN, ...args], { cwd: options.cwd, stdio: 'pipe' });
  live.add(child);
  child.once('close', () => live.delete(child));
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => {
    stdout += d;
  });
  child.stderr!.on('data', (d) => {
    stderr += d;
  });
  if (options.input !== undefined) child.stdin!.end(options.input);
  else child.stdin!.end();
  const done = new Promise<ChildResult>((resolve) => {
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  return { child, done };
}

/** Runs `lora <args>` to the end. */
export function runCliChild(
  args: readonly string[],
  options: { cwd?: string; input?: string; shellPrefix?: string } = {},
): Promise<ChildResult> {
  return startCli(args, options).done;
}

/** Names in `dir` that are our temporaries (`.NAME.tmp-*`, `.NAME.old-*`, `.NAME.lock`). */
export function temporariesIn(dir: string): string[] {
  return readdirSync(dir).filter((n) => /^\..+\.(tmp-|old-|lock$)/.test(n));
}

/** Resolves when `predicate` holds (polled every 2 ms), or after `timeoutMs` with false. */
export async function waitFor(predicate: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (predicate()) return true;
    await new Promise((r) => setTimeout(r, 2));
  }
  return predicate();
}

export {
  hashTree,
  writeSyntheticAdapter,
  writeSyntheticLlama,
} from '../../src/test-utils/synthetic-model.js';
