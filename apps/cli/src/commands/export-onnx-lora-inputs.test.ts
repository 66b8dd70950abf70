import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Adapter } from '@lora/adapters';
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
import { runExportedDecoder } from '../test-utils/exported-model.js';
import { runCli } from '../test-utils/run-cli.js';

const stories = fileURLToPath(
  new URL('../../../../../shared/fixtures/llama2c-stories260k', import.meta.url),
);
const haveStories = existsSync(stories);
if (!haveStories)
  console.warn(`SKIPPED: ${stories} is absent; the export-onnx --lora-inputs tests do not run.`);

const tokens = [1, 403, 407, 261, 378, 9, 30];

describe.skipIf(!haveStories)('lora export-onnx --lora-inputs', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it.each(['standard', 'ort'])(
    '--ops %s: writes a model that takes adapters as inputs: its logits equal the in-process LoRA graph, slot 0 the base',
    async (ops) => {
      const dir = await mkdtemp(join(tmpdir(), 'export-lora-inputs-'));
      dirs.push(dir);
      const out = join(dir, 'lora.onnx');
      const targets = ['q_proj', 'v_proj', 'down_proj'];
      const r = await runCli([
        'export-onnx',
        '--model',
        stories,
        '--lora-inputs',
        '--lora-targets',
        targets.join(','),
        '--lora-rank',
        '4',
        '--lora-slots',
        '3',
        '--ops',
        ops,
        '-o',
        out,
        '--json',
      ]);
      expect(r.code).toBe(0);
      const report = JSON.parse(r.stdout);
      const names = report.inputs.map((i: { name: string }) => i.name);
      expect(names).toContain('lora.index');
      expect(names).toContain('lora.scale');

      // An adapter of rank 3 (< slot rank 4) on the three targets, fed into slot 2.
      const { config, source } = await openLlamaFolder(stories);
      const rng = createRng(11);
      const modules = new Map<string, { A: Tensor; B: Tensor }>();
      for (let l = 0; l < config.numLayers; l++) {
        for (const linear of targets as ('q_proj' | 'v_proj' | 'down_proj')[]) {
          const [outF, inF] = llamaLinearShape(config, linear);
          modules.set(llamaModuleName(l, linear), {
            A: tensor('f32', [3, inF], rng.uniformArray(3 * inF, -0.5, 0.5, 'f32')),
            B: tensor('f32', [outF, 3], rng.uniformArray(outF * 3, -0.5, 0.5, 'f32')),
          });
        }
      }
      const adapter: Adapter = {
        config: createLoraConfig({ r: 3, lora_alpha: 6 }),
        modules,
        modulesToSave: new Map(),
      };
      // The in-process graph built with the same options gives the reference and the feeds.
      const { hook, plan } = createLoraHook({ targets, slots: 3, rank: 4 });
      const model = await LlamaModel.create(config, source, { linearHook: hook });
      await source.close();
      const slots = new LoraSlots(plan);
      slots.assign(2, [{ adapter, scale: 1 }]);
      const inProcess = (await model.forward({ inputIds: [tokens], extraFeeds: slots.feeds([2]) }))
        .logits.data as Float32Array;
      const base = (await model.forward({ inputIds: [tokens], extraFeeds: slots.feeds([0]) }))
        .logits.data as Float32Array;
      await model.release();

      const session = await ort.InferenceSession.create(out);
      const run = (slot: number) =>
        runExportedDecoder(session, config, tokens, slots.feeds([slot]));
      const exported = await run(2);
      const exportedBase = await run(0);
      await session.release();

      let maxErr = 0;
      let maxBaseErr = 0;
      let maxDelta = 0;
      for (let i = 0; i < exported.length; i++) {
        maxErr = Math.max(maxErr, Math.abs(exported[i] - inProcess[i]));
        maxBaseErr = Math.max(maxBaseErr, Math.abs(exportedBase[i] - base[i]));
        maxDelta = Math.max(maxDelta, Math.abs(inProcess[i] - base[i]));
      }
      expect(maxErr).toBeLessThan(1e-4);
      expect(maxBaseErr).toBeLessThan(1e-4);
      expect(maxDelta).toBeGreaterThan(1e-2); // the adapter really changes the logits
    },
  );

  it('refuses --merged together with --lora-inputs', async () => {
    const r = await runCli([
      'export-onnx',
      '--model',
      stories,
      '--lora-inputs',
      '--merged',
      '--adapter',
      'x',
      '-o',
      join(tmpdir(), 'never.onnx'),
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/exclude each other/);
  });
});
