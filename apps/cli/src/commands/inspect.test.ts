import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tensor, writeSafetensors } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { runCli } from '../test-utils/run-cli.js';

const shared = fileURLToPath(new URL('../../../../../shared/', import.meta.url));
const stories = join(shared, 'fixtures/llama2c-stories260k');
const haveStories = existsSync(stories);
if (!haveStories) console.warn(`SKIPPED: ${stories} is absent; the real-model inspect tests do not run.`);

describe('lora inspect', () => {
  it('summarises a safetensors file: tensors, dtypes, shapes, parameters, bytes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lora-inspect-'));
    try {
      const path = join(dir, 'w.safetensors');
      await writeSafetensors(
        path,
        new Map([
          ['a', tensor('f32', [3, 4])],
          ['b', tensor('bf16', [5])],
        ]),
        { metadata: { format: 'pt' } },
      );
      const r = await runCli(['inspect', path, '--json']);
      expect(r.code).toBe(0);
      const j = JSON.parse(r.stdout);
      expect(j.kind).toBe('safetensors');
      expect(j.file.params).toBe(17);
      expect(j.file.tensors.map((t: { name: string; bytes: number }) => [t.name, t.bytes])).toEqual([
        ['a', 48],
        ['b', 10],
      ]);
      expect(j.file.metadata).toEqual({ format: 'pt' });
      const human = await runCli(['inspect', path]);
      expect(human.stdout).toContain('17 parameters');
      expect(human.stdout).toMatch(/a\s+f32\s+\[3, 4\]\s+12\s+48/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('exits 2 with a clear message for a missing path and for a corrupt file', async () => {
    const missing = await runCli(['inspect', '/nonexistent/model.safetensors']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('does not exist');
    const dir = await mkdtemp(join(tmpdir(), 'lora-inspect-'));
    try {
      const { writeFile } = await import('node:fs/promises');
      await writeFile(join(dir, 'bad.safetensors'), new Uint8Array([200, 0, 0, 0, 0, 0, 0, 0, 123]));
      const bad = await runCli(['inspect', join(dir, 'bad.safetensors')]);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toContain('truncated');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it.skipIf(!haveStories)('summarises the stories260K model folder (figures from its SOURCE.md)', async () => {
    const r = await runCli(['inspect', stories, '--json']);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.kind).toBe('model');
    expect(j.params).toBe(260_032);
    expect(j.files[0].tensors.length).toBe(47);
    expect(j.bytes).toBe(1_044_992);
    expect(j.config).toMatchObject({ hiddenSize: 64, numLayers: 5, numHeads: 8, numKvHeads: 4, headDim: 8, vocabSize: 512 });
  });
});
