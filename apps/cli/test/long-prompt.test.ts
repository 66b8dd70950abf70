import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../src/test-utils/run-cli.js';
import { cliBuilt, runCliChild } from './helpers/child-cli.js';

/**
 * onnxruntime-node's telemetry used to crash the process (SIGSEGV) when the command line held
 * a long argument, e.g. a 34 KB prompt. Long prompts also come from a file or standard input.
 */

const stories = fileURLToPath(
  new URL('../../../../shared/fixtures/llama2c-stories260k', import.meta.url),
);
const haveStories = existsSync(stories);
if (!haveStories) console.warn(`SKIPPED: ${stories} is absent; the long-prompt tests do not run.`);
const runtimeBuilt = existsSync(
  fileURLToPath(new URL('../../../packages/runtime-onnx/dist/index.js', import.meta.url)),
);

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lora-long-prompt-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** 40 KB of prose, above the ~34 KB at which the telemetry crash happened. */
const LONG = 'Once upon a time there was a little dog. '.repeat(1000);

describe.skipIf(!cliBuilt || !haveStories)('long prompts', () => {
  it('a 40 KB --prompt on the command line ends with a clean message, not SIGSEGV', async () => {
    const r = await runCliChild([
      'generate',
      '--model',
      stories,
      '--prompt',
      LONG,
      '--max-tokens',
      '1',
    ]);
    expect(r.signal).toBeNull();
    expect(r.code).not.toBe(139);
    expect([0, 2]).toContain(r.code); // too long for the context: a usage error, said in one line
    if (r.code === 2) expect(r.stderr.trim().split('\n')).toHaveLength(1);
  }, 120_000);

  it.skipIf(!runtimeBuilt)(
    'the runtime package alone (no CLI) survives a 40 KB argument when it starts onnxruntime',
    async () => {
      const script = `
        const { loadLlama } = await import('@lora/runtime-onnx');
        const m = await loadLlama(process.argv[1]);
        await m.release?.();
        console.log('session created');`;
      const cliDir = fileURLToPath(new URL('..', import.meta.url));
      const env = { ...process.env };
      delete env.ORT_DISABLE_TELEMETRY;
      const child = spawn(process.execPath, ['--input-type=module', '-e', script, stories, LONG], {
        cwd: cliDir,
        env,
        stdio: 'pipe',
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d) => {
        stdout += d;
      });
      child.stderr.on('data', (d) => {
        stderr += d;
      });
      const [code, signal] = await new Promise<[number | null, string | null]>((resolve) =>
        child.on('close', (c, s) => resolve([c, s])),
      );
      expect(signal, stderr).toBeNull();
      expect(code, stderr).toBe(0);
      expect(stdout).toContain('session created');
    },
    120_000,
  );

  it('--prompt-file and --prompt - (stdin) give the same text as --prompt', async () => {
    const prompt = 'Once upon a time, a little girl named Lily';
    const file = join(dir, 'prompt.txt');
    await writeFile(file, prompt);
    const common = ['generate', '--model', stories, '--max-tokens', '8', '--json'];
    // In this process (sources) for the flag and the file; standard input needs a child.
    const viaArg = await runCli([...common, '--prompt', prompt]);
    const viaFile = await runCli([...common, '--prompt-file', file]);
    const viaStdin = await runCliChild([...common, '--prompt', '-'], { input: prompt });
    for (const r of [viaArg, viaFile, viaStdin]) expect(r.code, r.stderr).toBe(0);
    const text = (r: { stdout: string }) => JSON.parse(r.stdout).text;
    expect(text(viaArg).length).toBeGreaterThan(0);
    expect(text(viaFile)).toBe(text(viaArg));
    expect(text(viaStdin)).toBe(text(viaArg));
    const both = await runCli([...common, '--prompt', prompt, '--prompt-file', file]);
    expect(both.code).toBe(2);
    expect(both.stderr).toMatch(/exclude each other/);
  }, 120_000);
});
