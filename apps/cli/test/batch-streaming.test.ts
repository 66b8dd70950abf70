import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { cliBuilt, LORA_BIN, waitFor } from './helpers/child-cli.js';

/**
 * `lora generate --batch -` streams with real I/O: the built CLI gets one row on its standard
 * input, and its result must appear on stdout while the input is still open; only then is the
 * next row written. A command that read its input whole would never answer the first row.
 */

describe.skipIf(!cliBuilt)('lora generate --batch - (child process, bundled model)', () => {
  it('answers each row on stdout before the next row is written', async () => {
    const child = spawn(
      process.execPath,
      [LORA_BIN, 'generate', '--batch', '-', '--max-tokens', '2', '--jsonl'],
      { stdio: 'pipe' },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    const exited = new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
    const results = () => stdout.split('\n').filter((l) => l !== '');
    try {
      const prompts = ['Once upon a time', 'The cat', 'A little dog'];
      for (const [i, prompt] of prompts.entries()) {
        child.stdin.write(`${JSON.stringify({ prompt })}\n`);
        // the input stays open: the result must come from this row alone
        const answered = await waitFor(() => results().length === i + 1, 60_000);
        expect(
          answered,
          `row ${i + 1} got no result while stdin stayed open; stderr: ${stderr}`,
        ).toBe(true);
        const row = JSON.parse(results()[i]);
        expect(row.line).toBe(i + 1);
        expect(row.prompt).toBe(prompt);
        expect(row.tokens).toHaveLength(2);
      }
      child.stdin.end();
      expect(await exited, stderr).toBe(0);
      expect(results()).toHaveLength(prompts.length);
    } finally {
      child.kill('SIGKILL');
    }
  }, 120_000);

  it('stops quietly (exit 0, no stack) when the reader of stdout goes away, as with `| head -n 1`', async () => {
    const child = spawn(
      process.execPath,
      [LORA_BIN, 'generate', '--batch', '-', '--max-tokens', '1', '--jsonl'],
      { stdio: 'pipe' },
    );
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    const exited = new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
    try {
      // more rows than a pipe holds: the run is still going when the reader leaves
      child.stdin.on('error', () => {}); // the child may exit before taking them all
      child.stdin.end(`${JSON.stringify({ prompt: 'Once upon a time' })}\n`.repeat(5000));
      await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
      child.stdout.destroy();
      expect(await exited, stderr).toBe(0);
      expect(stderr).toBe('');
    } finally {
      child.kill('SIGKILL');
    }
  }, 120_000);
});
