import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Adapter, savePeftAdapter } from '@lora/adapters';
import {
  createLoraConfig,
  f32ToF16Array,
  readSafetensors,
  tensor,
  toFloat64Array,
  writeSafetensors,
} from '@lora/core';
import { afterAll, describe, expect, it } from 'vitest';
import { runCli } from '../test-utils/run-cli.js';

const peft = fileURLToPath(new URL('../../../../../shared/fixtures/peft/', import.meta.url));
const havePeft = existsSync(peft);
if (!havePeft)
  console.warn(`SKIPPED: ${peft} is absent; the fixture parts of the merge CLI tests do not run.`);

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

function values(n: number, seed: number, scale: number): Float32Array {
  const out = new Float32Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = (x / 2 ** 32 - 0.5) * scale;
  }
  return out;
}

/** An f16 model folder with one [64, 96] projection, and an adapter for it (r 4, alpha 8). */
async function setup() {
  const dir = await mkdtemp(join(tmpdir(), 'lora-cli-merge-'));
  dirs.push(dir);
  const base = join(dir, 'base');
  await mkdir(base);
  await writeSafetensors(
    join(base, 'model.safetensors'),
    new Map([
      ['layers.0.q_proj.weight', tensor('f16', [64, 96], f32ToF16Array(values(64 * 96, 1, 0.2)))],
    ]),
  );
  await writeFile(join(base, 'config.json'), '{}\n');
  const A = tensor('f32', [4, 96], values(4 * 96, 2, 0.2));
  const B = tensor('f32', [64, 4], values(64 * 4, 3, 0.2));
  const adapter: Adapter = {
    config: createLoraConfig({ r: 4, lora_alpha: 8, target_modules: ['q_proj'] }),
    modules: new Map([['layers.0.q_proj', { A, B }]]),
    modulesToSave: new Map(),
  };
  await savePeftAdapter(join(dir, 'adapter'), adapter);
  return { dir, base, adapter: join(dir, 'adapter'), A, B };
}

describe('lora merge / unmerge', () => {
  it('merges (weight 0.5) and unmerges back to identical bytes', async () => {
    const { dir, base, adapter, A, B } = await setup();
    const out = join(dir, 'merged');
    const r = await runCli([
      'merge',
      '--base',
      base,
      '--adapter',
      `${adapter}:0.5`,
      '-o',
      out,
      '--dtype',
      'f32',
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.merged[0].tensor).toBe('layers.0.q_proj.weight');
    expect(report.residual.bytes).toBeGreaterThan(0);
    // W + 0.5 · (8/4) · B·A, checked at one element by hand-written arithmetic
    const merged = (await readSafetensors(join(out, 'model.safetensors'))).tensors.get(
      'layers.0.q_proj.weight',
    )!;
    expect(merged.dtype).toBe('f32');
    const baseW = toFloat64Array(
      (await readSafetensors(join(base, 'model.safetensors'))).tensors.get(
        'layers.0.q_proj.weight',
      )!,
    );
    const a = toFloat64Array(A);
    const b = toFloat64Array(B);
    const [o, i] = [5, 17];
    let dot = 0;
    for (let k = 0; k < 4; k++) dot += b[o * 4 + k] * a[k * 96 + i];
    expect(toFloat64Array(merged)[o * 96 + i]).toBeCloseTo(baseW[o * 96 + i] + 0.5 * 2 * dot, 6);

    const restored = join(dir, 'restored');
    const u = await runCli(['unmerge', '--merged', out, '--adapter', adapter, '-o', restored]);
    expect(u.code, u.stderr).toBe(0);
    for (const f of await readdir(base))
      expect((await readFile(join(restored, f))).equals(await readFile(join(base, f)))).toBe(true);
  });

  it('refuses an adapter for another shape: exit 2, clear message, no output', async () => {
    const { dir, base } = await setup();
    const wrong: Adapter = {
      config: createLoraConfig({ r: 2, lora_alpha: 2, target_modules: ['q_proj'] }),
      modules: new Map([
        [
          'layers.0.q_proj',
          {
            A: tensor('f32', [2, 64], values(128, 4, 1)),
            B: tensor('f32', [96, 2], values(192, 5, 1)),
          },
        ],
      ]),
      modulesToSave: new Map(),
    };
    await savePeftAdapter(join(dir, 'wrong'), wrong);
    const out = join(dir, 'merged');
    const r = await runCli(['merge', '--base', base, '--adapter', join(dir, 'wrong'), '-o', out]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('layers.0.q_proj');
    expect(r.stderr).toContain('[64, 96]');
    expect(r.stderr).toContain('[96, 64]');
    expect(existsSync(out)).toBe(false);
  });

  it('refuses to overwrite without --force', async () => {
    const { dir, base, adapter } = await setup();
    await mkdir(join(dir, 'taken'));
    const r = await runCli([
      'merge',
      '--base',
      base,
      '--adapter',
      adapter,
      '-o',
      join(dir, 'taken'),
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--force');
  });
});

describe('lora combine / extract', () => {
  it.skipIf(!havePeft)(
    'combine --method cat of a real adapter with itself: r and alpha = 16, all 48 modules, PEFT config',
    async () => {
      const dir = await mkdtemp(join(tmpdir(), 'lora-cli-combine-'));
      dirs.push(dir);
      const src = join(peft, 'qwen2.5-0.5b-qv');
      const r = await runCli([
        'combine',
        '--adapter',
        `${src}:0.5`,
        '--adapter',
        `${src}:0.5`,
        '--method',
        'cat',
        '-o',
        join(dir, 'c'),
        '--json',
      ]);
      expect(r.code, r.stderr).toBe(0);
      const summary = JSON.parse(r.stdout);
      expect(summary.r).toBe(16);
      expect(summary.lora_alpha).toBe(16);
      expect(summary.modules).toBe(48);
      const cfg = JSON.parse(await readFile(join(dir, 'c', 'adapter_config.json'), 'utf8'));
      expect(cfg.r).toBe(16);
      expect(cfg.peft_type).toBe('LORA');
    },
  );

  it('narrowing --dtype writes no residual by default and says why; --residual forces it', async () => {
    const { dir, base, adapter } = await setup(); // f16 base
    const out = join(dir, 'narrow');
    const r = await runCli([
      'merge',
      '--base',
      base,
      '--adapter',
      adapter,
      '-o',
      out,
      '--dtype',
      'bf16',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(
      /no unmerge residual written: the output dtype bf16 is narrower than the base's f16/,
    );
    expect(await readdir(out)).not.toContain('unmerge-residual.safetensors');
    const forced = join(dir, 'forced');
    const f = await runCli([
      'merge',
      '--base',
      base,
      '--adapter',
      adapter,
      '-o',
      forced,
      '--dtype',
      'bf16',
      '--residual',
      '--json',
    ]);
    expect(f.code, f.stderr).toBe(0);
    const report = JSON.parse(f.stdout);
    expect(report.residualSkipped).toBeUndefined();
    // f16 -> bf16 loses 3 significand bits: most elements need an entry
    expect(report.residual.patchedElements).toBeGreaterThan(64 * 96 * 0.5);
    const restored = join(dir, 'restored-narrow');
    const u = await runCli(['unmerge', '--merged', forced, '--adapter', adapter, '-o', restored]);
    expect(u.code, u.stderr).toBe(0);
    expect(
      (await readFile(join(restored, 'model.safetensors'))).equals(
        await readFile(join(base, 'model.safetensors')),
      ),
    ).toBe(true);
  });

  it('combine with ties and no --density is a usage error', async () => {
    const { dir, adapter } = await setup();
    const r = await runCli([
      'combine',
      '--adapter',
      adapter,
      '--method',
      'ties',
      '-o',
      join(dir, 'c'),
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('density');
  });

  it('extract recovers a rank-1 change and reports ~100 % energy', async () => {
    const { dir, base } = await setup();
    const tunedDir = join(dir, 'tuned');
    await mkdir(tunedDir);
    const W = toFloat64Array(
      (await readSafetensors(join(base, 'model.safetensors'))).tensors.get(
        'layers.0.q_proj.weight',
      )!,
    );
    const u = values(64, 7, 1);
    const v = values(96, 8, 1);
    const T = new Float32Array(64 * 96);
    for (let o = 0; o < 64; o++)
      for (let i = 0; i < 96; i++) T[o * 96 + i] = W[o * 96 + i] + u[o] * v[i];
    await writeSafetensors(
      join(tunedDir, 'model.safetensors'),
      new Map([['layers.0.q_proj.weight', tensor('f32', [64, 96], T)]]),
    );
    const r = await runCli([
      'extract',
      '--base',
      base,
      '--tuned',
      tunedDir,
      '--rank',
      '1',
      '-o',
      join(dir, 'x'),
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.modules[0].module).toBe('layers.0.q_proj');
    expect(out.totalEnergy).toBeGreaterThan(0.999999);
    expect(existsSync(join(dir, 'x', 'adapter_model.safetensors'))).toBe(true);
  });
});
