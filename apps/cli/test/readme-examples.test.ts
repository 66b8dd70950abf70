import { mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { runCli } from '../src/test-utils/run-cli.js';

/**
 * The root README's "try it yourself" commands run as written on the bundled model, with no
 * --model and nothing downloaded, in order (later lines use what earlier ones wrote). Training runs
 * 3 steps instead of 150 to keep the suite fast: what the adapter learns is `lora demo`'s check.
 */
const root = fileURLToPath(new URL('../../../', import.meta.url));
const readme = readFileSync(join(root, 'README.md'), 'utf8');
const marker = '<!-- readme-examples:';
const block = readme.slice(readme.indexOf(marker)).match(/```sh\n([\s\S]*?)```/)?.[1] ?? '';
const commands = block
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l.startsWith('lora '));

/** Splits a README line like a shell would (double quotes, \n escapes inside them). */
function argv(line: string): string[] {
  const out: string[] = [];
  for (const m of line.matchAll(/"((?:[^"\\]|\\.)*)"|(\S+)/g)) {
    out.push(m[1] !== undefined ? m[1].replace(/\\n/g, '\n').replace(/\\"/g, '"') : m[2]);
  }
  return out.slice(1); // drop "lora"
}

const work = mkdtempSync(join(tmpdir(), 'lora-readme-'));
symlinkSync(join(root, 'models'), join(work, 'models'));
const cwd = process.cwd();
afterAll(() => {
  process.chdir(cwd);
  rmSync(work, { recursive: true, force: true });
});

describe('README examples on the bundled model', () => {
  it('has examples to run', () => {
    expect(commands.length).toBeGreaterThan(8);
    for (const c of commands) expect(c).not.toMatch(/--model models|--base models/);
  });

  it('runs every line in order', async () => {
    process.chdir(work);
    for (const line of commands) {
      const args = argv(line).map((a, i, all) => (all[i - 1] === '--steps' ? '3' : a));
      const r = await runCli(args);
      expect(r.code, `${line}\n${r.stderr}`).toBe(0);
    }
    process.chdir(cwd);
  });
});
