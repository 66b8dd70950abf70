import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeSafetensors } from '@lora/core';
import { afterEach, describe, expect, it } from 'vitest';
import { cliBuilt, LORA_BIN, runCliChild, startCli, stopChildren } from './helpers/child-cli.js';

/**
 * The built CLI with a real pipe on stdout whose reader goes away after the first bytes, as
 * `lora ... | head -c 10` does: every command stops quietly with exit 0 (no EPIPE stack trace),
 * and leaves no temporary behind. `generate --batch` has its own case in batch-streaming.test.ts.
 */

let tmp: string | undefined;
afterEach(async () => {
  await stopChildren();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
  tmp = undefined;
});

/** Runs `lora <args>`, destroys its stdout once the first bytes arrive, and waits for the exit. */
async function readFirstBytesThenLeave(args: readonly string[]) {
  const { child, done } = startCli(args);
  let first = '';
  child.stdout!.once('data', (d) => {
    first = String(d);
    child.stdout!.destroy();
  });
  const result = await done;
  return { ...result, first };
}

/** What a crash on EPIPE prints: Node's stack frames or the raw error. */
const STACK = /\n\s+at |EPIPE|Error/;

describe.skipIf(!cliBuilt)('stdout closed by its reader (child process)', () => {
  it('lora generate --prompt (streaming tokens) stops quietly with exit 0', async () => {
    const r = await readFirstBytesThenLeave([
      'generate',
      '--prompt',
      'Once upon a time',
      '--max-tokens',
      '200',
    ]);
    expect(r.first.length).toBeGreaterThan(0);
    expect(r.stderr).not.toMatch(STACK);
    expect(r.code, r.stderr).toBe(0);
  }, 60_000);

  it('lora inspect --json of a file with a large listing stops quietly with exit 0', async () => {
    tmp = mkdtempSync(join(tmpdir(), 'lora-stdout-'));
    const file = join(tmp, 'many.safetensors');
    // 3000 tensors: a JSON listing of ~500 KB, far more than a pipe holds (64 KiB), so most
    // of it is still queued when the reader leaves.
    await writeSafetensors(
      file,
      Array.from({ length: 3000 }, (_, i) => ({
        name: `t${i}`,
        dtype: 'f32' as const,
        shape: [1],
        data: new Float32Array([i]),
      })),
    );
    const whole = await runCliChild(['inspect', file, '--json']);
    expect(whole.code, whole.stderr).toBe(0);
    expect(whole.stdout.length).toBeGreaterThan(256 * 1024);

    const r = await readFirstBytesThenLeave(['inspect', file, '--json']);
    expect(r.first.length).toBeGreaterThan(0);
    expect(r.first.length).toBeLessThan(whole.stdout.length);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  }, 60_000);

  it.skipIf(!existsSync('/dev/full'))(
    'another write error (stdout on /dev/full: ENOSPC) ends with a clear message and exit 1',
    async () => {
      const full = openSync('/dev/full', 'w');
      try {
        const r = spawnSync(process.execPath, [LORA_BIN, 'plan', '--params', '7e9', '--json'], {
          stdio: ['ignore', full, 'pipe'],
          encoding: 'utf8',
        });
        expect(r.status).toBe(1);
        expect(r.stderr).toMatch(/^lora: cannot write to standard output: ENOSPC/);
        expect(r.stderr).not.toMatch(/\n\s+at /);
      } finally {
        closeSync(full);
      }
    },
    60_000,
  );
});
