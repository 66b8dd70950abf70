import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

/**
 * Every package must work as a single npm install: pack each one as it would be published,
 * install the tarballs into a fresh npm project, import every public entry point and run every
 * ```js example of its README; the CLI (@lora/cli) runs through `npx` from the tarball. Needs
 * the packages built (turbo runs build before test) and the npm registry.
 */
const repo = fileURLToPath(new URL('../../../', import.meta.url));
const packageDirs = readdirSync(join(repo, 'packages'))
  .map((d) => join(repo, 'packages', d))
  .filter((d) => existsSync(join(d, 'package.json')));
const packages = packageDirs.map((dir) => ({
  dir,
  json: JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')),
}));
const cliDir = join(repo, 'apps', 'cli');

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

/** Every ```js block of a README, in order (```ts blocks are fragments and are not run). */
export function readmeExamples(readme: string): string[] {
  return [...readme.matchAll(/^```js\n([\s\S]*?)^```/gm)].map((m) => m[1]);
}

describe('packaging: each package installs alone from its tarball', () => {
  let project: string;
  beforeAll(async () => {
    project = await mkdtemp(join(tmpdir(), 'lora-pack-'));
    const tarballs: string[] = [];
    for (const p of [...packages, { dir: cliDir, json: { name: '@lora/cli' } }]) {
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
      it('ships only dist, README, LICENSE and package.json, with types and an ESM entry', () => {
        const installed = join(project, 'node_modules', p.json.name);
        expect(readFileSync(join(installed, 'LICENSE'), 'utf8')).toMatch(/^MIT License/);
        expect(existsSync(join(installed, 'README.md'))).toBe(true);
        expect(existsSync(join(installed, 'dist', 'index.js'))).toBe(true);
        expect(existsSync(join(installed, 'dist', 'index.d.ts'))).toBe(true);
        expect(existsSync(join(installed, 'src'))).toBe(false);
        const pj = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8'));
        expect(JSON.stringify(pj.dependencies ?? {})).not.toContain('workspace:');
        expect(pj.engines?.node).toBe('>=20');
      });

      it('imports every entry point; their exported names match the committed API snapshot', async () => {
        const entries = Object.keys(p.json.exports).filter((k) => !k.endsWith('package.json'));
        const lines: string[] = [];
        for (const entry of entries) {
          const spec = entry === '.' ? p.json.name : `${p.json.name}/${entry.slice(2)}`;
          const out = execFileSync(
            process.execPath,
            [
              '--input-type=module',
              '-e',
              `const m = await import(${JSON.stringify(spec)}); console.log(JSON.stringify(Object.keys(m)));`,
            ],
            { cwd: project, encoding: 'utf8' },
          );
          const values: string[] = JSON.parse(out);
          expect(values.length).toBeGreaterThan(0);
          // Type-only names, from the entry's declarations when they are named exports.
          const dts = readFileSync(
            join(project, 'node_modules', p.json.name, p.json.exports[entry].types),
            'utf8',
          );
          const types = [...dts.matchAll(/^export type \{([^}]*)\}/gm)].flatMap((m) =>
            m[1]
              .split(',')
              .map((n) => n.trim())
              .filter(Boolean),
          );
          lines.push(
            ...values.map((n) => `${entry} ${n}`),
            ...types.map((n) => `${entry} type ${n}`),
          );
        }
        // An API change is a visible diff of this file (update with vitest -u after a deliberate change).
        await expect(`${lines.sort().join('\n')}\n`).toMatchFileSnapshot(
          `api/${p.json.name.replace('@lora/', '')}.api.txt`,
        );
      });

      it('runs every ```js example of its README', async () => {
        const readme = readFileSync(join(p.dir, 'README.md'), 'utf8');
        const examples = readmeExamples(readme);
        expect(
          examples.length,
          `${p.json.name}/README.md needs a \`\`\`js example`,
        ).toBeGreaterThan(0);
        for (const [i, example] of examples.entries()) {
          const file = join(project, `example-${p.json.name.replace(/\W/g, '_')}-${i + 1}.mjs`);
          await writeFile(file, example);
          const out = execFileSync(process.execPath, [file], {
            cwd: project,
            encoding: 'utf8',
            timeout: 60_000,
          });
          expect(
            out.trim().length,
            `${p.json.name} README example ${i + 1} printed nothing`,
          ).toBeGreaterThan(0);
        }
      });
    });
  }

  describe('@lora/cli', () => {
    let elsewhere: string;
    beforeAll(async () => {
      elsewhere = await mkdtemp(join(tmpdir(), 'lora-cli-cwd-'));
      // A small safetensors file to inspect, written by the installed @lora/core.
      execFileSync(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          `import { tensor, writeSafetensors } from '@lora/core';
           await writeSafetensors(${JSON.stringify(join(elsewhere, 'w.safetensors'))},
             new Map([['layers.0.q_proj.weight', tensor('f32', [4, 8], new Float32Array(32).fill(0.5))]]));`,
        ],
        { cwd: project },
      );
    });
    afterAll(async () => {
      if (elsewhere) await rm(elsewhere, { recursive: true, force: true });
    });

    it('`npx @lora/cli inspect` runs the packed binary', () => {
      const out = execFileSync(
        'npx',
        ['--no-install', '@lora/cli', 'inspect', join(elsewhere, 'w.safetensors')],
        {
          cwd: project,
          encoding: 'utf8',
        },
      );
      expect(out).toMatch(/layers\.0\.q_proj\.weight/);
      expect(out).toMatch(/32/); // parameters
    });

    it('the installed `lora` binary runs from any folder, with relative paths', () => {
      const bin = join(project, 'node_modules', '.bin', 'lora');
      const out = execFileSync(bin, ['inspect', 'w.safetensors', '--json'], {
        cwd: elsewhere,
        encoding: 'utf8',
      });
      expect(JSON.stringify(JSON.parse(out))).toMatch(/q_proj/);
      const pj = JSON.parse(
        readFileSync(join(project, 'node_modules', '@lora', 'cli', 'package.json'), 'utf8'),
      );
      expect(pj.bin).toEqual({ lora: './bin/lora.js' });
      expect(pj.private).toBeUndefined();
      expect(
        readFileSync(join(project, 'node_modules', '@lora', 'cli', 'LICENSE'), 'utf8'),
      ).toMatch(/^MIT License/);
    });

    it('ships the bundled model, which commands use when no model is given', () => {
      const bin = join(project, 'node_modules', '.bin', 'lora');
      const report = JSON.parse(
        execFileSync(bin, ['inspect', '--json'], { cwd: elsewhere, encoding: 'utf8' }),
      ) as { path: string; params: number };
      expect(report.path).toContain(join('node_modules', '@lora', 'cli', 'models', 'tiny'));
      expect(report.params).toBe(1_624_320); // the models/tiny README's count
      const gen = JSON.parse(
        execFileSync(
          bin,
          ['generate', '--prompt', 'copy: kqz =', '--max-tokens', '6', '--stop', '\n', '--json'],
          {
            cwd: elsewhere,
            encoding: 'utf8',
          },
        ),
      ) as { text: string };
      expect(gen.text).toBe(' kqz');
    });
  });
});
