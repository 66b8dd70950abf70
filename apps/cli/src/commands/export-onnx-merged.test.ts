import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Adapter, savePeftAdapter } from '@lora/adapters';
import { createLoraConfig, createRng, type Tensor, tensor } from '@lora/core';
import {
  createLoraHook,
  LlamaModel,
  llamaLinearShape,
  llamaModuleName,
  LoraSlots,
  openLlamaFolder,
} from '@lora/runtime-onnx';
import * as ort from 'onnxruntime-node';
import { afterAll, describe, expect, it } from 'vitest';
import { readOnnxInitializers, runExportedDecoder } from '../test-utils/exported-model.js';
import { runCli } from '../test-utils/run-cli.js';

const stories = fileURLToPath(
  new URL('../../../../../shared/fixtures/llama2c-stories260k', import.meta.url),
);
const haveStories = existsSync(stories);
if (!haveStories)
  console.warn(`SKIPPED: ${stories} is absent; the export-onnx --merged tests do not run.`);

const tokens = [1, 403, 407, 261, 378, 9, 30];

describe.skipIf(!haveStories)('lora export-onnx --merged', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('writes a model whose logits equal the unmerged LoRA graph (within 1e-4)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'export-merged-'));
    dirs.push(dir);
    const { config, source } = await openLlamaFolder(stories);
    const rng = createRng(5);
    const modules = new Map<string, { A: Tensor; B: Tensor }>();
    for (let l = 0; l < config.numLayers; l++) {
      for (const linear of ['q_proj', 'o_proj', 'up_proj'] as const) {
        const [out, inF] = llamaLinearShape(config, linear);
        modules.set(llamaModuleName(l, linear), {
          A: tensor('f32', [3, inF], rng.uniformArray(3 * inF, -0.5, 0.5, 'f32')),
          B: tensor('f32', [out, 3], rng.uniformArray(out * 3, -0.5, 0.5, 'f32')),
        });
      }
    }
    const adapter: Adapter = {
      config: createLoraConfig({ r: 3, lora_alpha: 6 }),
      modules,
      modulesToSave: new Map(),
    };
    await savePeftAdapter(join(dir, 'ad'), adapter);
    const out = join(dir, 'merged.onnx');
    const r = await runCli([
      'export-onnx',
      '--model',
      stories,
      '--adapter',
      `${join(dir, 'ad')}:0.75`,
      '--merged',
      '-o',
      out,
      '--json',
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(await readdir(dir)).toContain('merged.onnx');

    // The exported file, run from disk.
    const session = await ort.InferenceSession.create(out);
    const exported = await runExportedDecoder(session, config, tokens);
    await session.release();

    // The unmerged graph: LoRA branches fed at run time, same adapter at scale 0.75.
    const { hook, plan } = createLoraHook({ targets: [...modules.keys()], slots: 2, rank: 3 });
    const model = await LlamaModel.create(config, source, { linearHook: hook });
    await source.close();
    const slots = new LoraSlots(plan);
    slots.assign(1, [{ adapter, scale: 0.75 }]);
    const unmerged = (await model.forward({ inputIds: [tokens], extraFeeds: slots.feeds([1]) }))
      .logits.data as Float32Array;
    const base = (await model.forward({ inputIds: [tokens], extraFeeds: slots.feeds([0]) })).logits
      .data as Float32Array;
    await model.release();

    expect(exported.length).toBe(unmerged.length);
    let maxErr = 0;
    let maxDelta = 0;
    for (let i = 0; i < exported.length; i++) {
      maxErr = Math.max(maxErr, Math.abs(exported[i] - unmerged[i]));
      maxDelta = Math.max(maxDelta, Math.abs(unmerged[i] - base[i]));
    }
    expect(maxErr).toBeLessThan(1e-4);
    expect(maxDelta).toBeGreaterThan(1e-2); // the adapter changes the logits
  });

  it.each(['standard', 'ort'])(
    '--ops %s: writes the same weights as `lora merge` followed by `lora export-onnx` (byte for byte)',
    async (ops) => {
      const dir = await mkdtemp(join(tmpdir(), 'export-merged-same-'));
      dirs.push(dir);
      const { config, source } = await openLlamaFolder(stories);
      await source.close();
      const rng = createRng(9);
      const modules = new Map<string, { A: Tensor; B: Tensor }>();
      for (let l = 0; l < config.numLayers; l++) {
        for (const linear of ['k_proj', 'v_proj', 'down_proj'] as const) {
          const [out, inF] = llamaLinearShape(config, linear);
          modules.set(llamaModuleName(l, linear), {
            A: tensor('f32', [5, inF], rng.uniformArray(5 * inF, -0.5, 0.5, 'f32')),
            B: tensor('f32', [out, 5], rng.uniformArray(out * 5, -0.5, 0.5, 'f32')),
          });
        }
      }
      const ad = join(dir, 'ad');
      await savePeftAdapter(ad, {
        config: createLoraConfig({ r: 5, lora_alpha: 7 }),
        modules,
        modulesToSave: new Map(),
      });
      const cli = async (args: string[]) => {
        const r = await runCli([...args, '--quiet']);
        expect(r.stderr).toBe('');
        expect(r.code).toBe(0);
      };
      const merged = join(dir, 'merged');
      await cli(['merge', '--base', stories, '--adapter', `${ad}:0.6`, '-o', merged]);
      await cli(['export-onnx', '--model', merged, '--ops', ops, '-o', join(dir, 'a.onnx')]);
      await cli([
        'export-onnx',
        '--model',
        stories,
        '--adapter',
        `${ad}:0.6`,
        '--merged',
        '--ops',
        ops,
        '-o',
        join(dir, 'b.onnx'),
      ]);
      await cli(['export-onnx', '--model', stories, '--ops', ops, '-o', join(dir, 'base.onnx')]);
      const a = await readOnnxInitializers(join(dir, 'a.onnx'));
      const b = await readOnnxInitializers(join(dir, 'b.onnx'));
      const base = await readOnnxInitializers(join(dir, 'base.onnx'));
      expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
      let changed = 0;
      for (const [name, { dims, bytes }] of a) {
        expect(b.get(name)?.dims, name).toEqual(dims);
        expect(Buffer.compare(bytes, b.get(name)!.bytes), name).toBe(0);
        if (Buffer.compare(bytes, base.get(name)!.bytes) !== 0) changed++;
      }
      // k, v and down of every layer carry the adapter: those initializers differ from the base.
      expect(changed).toBe(3 * config.numLayers);
    },
  );

  it('needs --merged with --adapter, and an adapter with --merged', async () => {
    const a = await runCli([
      'export-onnx',
      '--model',
      stories,
      '--adapter',
      'x',
      '-o',
      join(tmpdir(), 'never.onnx'),
    ]);
    expect(a.code).toBe(2);
    expect(a.stderr).toMatch(/--adapter needs --merged/);
    const b = await runCli([
      'export-onnx',
      '--model',
      stories,
      '--merged',
      '-o',
      join(tmpdir(), 'never.onnx'),
    ]);
    expect(b.code).toBe(2);
    expect(b.stderr).toMatch(/--merged needs/);
  });
});
