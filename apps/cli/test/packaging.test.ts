import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

/**
 * Every package must work as a single npm install: pack each one as it would be published,
 * install the tarballs into a fresh npm project, import every public entry point and run the
 * README's example. Needs the packages built (turbo runs build before test) and the npm registry.
 */
const repo = fileURLToPath(new URL('../../../', import.meta.url));
const packageDirs = readdirSync(join(repo, 'packages'))
  .map((d) => join(repo, 'packages', d))
  .filter((d) => existsSync(join(d, 'package.json')));
const packages = packageDirs.map((dir) => ({
  dir,
  json: JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')),
}));

function pnpm(args: string[], cwd: string): string {
  // Under `pnpm test`, npm_execpath is the running pnpm: a script (run with node) or, from
  // pnpm 12 on, a native binary (run directly). Otherwise fall back to npx.
  const execpath = process.env.npm_execpath;
  const [cmd, pre] =
    execpath && /pnpm/.test(execpath)
      ? /\.[cm]?js$/.test(execpath)
        ? [process.execPath, [execpath]]
        : [execpath, []]
      : ['npx', ['-y', 'pnpm@12.4.2']];
  return execFileSync(cmd, [...pre, ...args], {
    cwd,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/** The first ```js block under the README's "## Example" heading. */
export function readmeExample(readme: string): string | undefined {
  const section = readme.split(/^## Example\s*$/m)[1];
  return section?.match(/```js\n([\s\S]*?)```/)?.[1];
}

describe('packaging: each package installs alone from its tarball', () => {
  let project: string;
  beforeAll(async () => {
    project = await mkdtemp(join(tmpdir(), 'lora-pack-'));
    const tarballs: string[] = [];
    for (const p of packages) {
      const out = pnpm(['pack', '--pack-destination', project], p.dir);
      const tgz = out
        .trim()
        .split('\n')
        .map((l) => l.trim())
        .find((l) => l.endsWith('.tgz'));
      if (!tgz) throw new Error(`pnpm pack printed no tarball for ${p.json.name}:\n${out}`);
      tarballs.push(tgz.startsWith('/') ? tgz : join(project, tgz));
    }
    await writeFile(
      join(project, 'package.json'),
      JSON.stringify({ name: 'pack-check', private: true, type: 'module' }),
    );
    execFileSync('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error', ...tarballs], {
      cwd: project,
      stdio: ['ignore', 'pipe', 'pipe'],
      // onnxruntime-node's install script would fetch CUDA libraries; the CPU build is bundled.
      env: { ...process.env, ONNXRUNTIME_NODE_INSTALL: 'skip' },
    });
  }, 600_000);
  afterAll(async () => {
    if (project) await rm(project, { recursive: true, force: true });
  });

  for (const p of packages) {
    describe(p.json.name, () => {
      it('ships only dist, README and package.json, with types and an ESM entry', () => {
        const installed = join(project, 'node_modules', p.json.name);
        expect(existsSync(join(installed, 'dist', 'index.js'))).toBe(true);
        expect(existsSync(join(installed, 'dist', 'index.d.ts'))).toBe(true);
        expect(existsSync(join(installed, 'src'))).toBe(false);
        const pj = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8'));
        expect(JSON.stringify(pj.dependencies ?? {})).not.toContain('workspace:');
        expect(pj.engines?.node).toBe('>=20');
      });

      it('imports every public entry point', () => {
        const entries = Object.keys(p.json.exports).filter((k) => !k.endsWith('package.json'));
        for (const entry of entries) {
          const spec = entry === '.' ? p.json.name : `${p.json.name}/${entry.slice(2)}`;
          const out = execFileSync(
            process.execPath,
            [
              '--input-type=module',
              '-e',
              `const m = await import(${JSON.stringify(spec)}); console.log(Object.keys(m).length);`,
            ],
            {
              cwd: project,
              encoding: 'utf8',
            },
          );
          expect(Number(out.trim())).toBeGreaterThan(0);
        }
      });

      it("runs the README's example", async () => {
        const readme = readFileSync(join(p.dir, 'README.md'), 'utf8');
        const example = readmeExample(readme);
        expect(
          example,
          `${p.json.name}/README.md needs a \`\`\`js block under "## Example"`,
        ).toBeDefined();
        const file = join(project, `example-${p.json.name.replace(/\W/g, '_')}.mjs`);
        await writeFile(file, example!);
        const out = execFileSync(process.execPath, [file], {
          cwd: project,
          encoding: 'utf8',
          timeout: 60_000,
        });
        expect(out.trim().length).toBeGreaterThan(0);
      });
    });
  }
});
