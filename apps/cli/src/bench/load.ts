import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import {
  countModelParameters,
  fromFloat32Array,
  parseModelConfig,
  planMemory,
  SafetensorsFile,
  writeSafetensors,
} from '@lora/core';
import { llamaWeightSpec, loadLlama, parseLlamaConfig } from '@lora/runtime-onnx';
import { weightFileParent } from '@lora/runtime-onnx/internal';
import { randomWeightSource } from './runtime.js';
import type { BenchSection } from './types.js';

/** A full GC, so resident memory is the model's, not garbage awaiting collection. */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as (() => void) | undefined)?.();
}

/** TinyLlama-1.1B's shape (untied head): 1.1 billion parameters. */
const FULL = {
  model_type: 'llama',
  hidden_size: 2048,
  intermediate_size: 5632,
  num_attention_heads: 32,
  num_key_value_heads: 4,
  num_hidden_layers: 22,
  vocab_size: 32000,
  tie_word_embeddings: false,
};
const QUICK = {
  ...FULL,
  hidden_size: 512,
  intermediate_size: 1408,
  num_attention_heads: 8,
  num_key_value_heads: 2,
  num_hidden_layers: 4,
  vocab_size: 4096,
};

const MiB = 2 ** 20;

export const loadBench: BenchSection = {
  name: 'load',
  title: 'Loading a bf16 checkpoint: load time, peak RSS vs weight bytes, plan vs measured',
  async run(ctx) {
    const configJson = ctx.quick ? QUICK : FULL;
    const config = parseLlamaConfig(configJson);
    const dir = await mkdtemp(join(tmpdir(), 'lora-bench-load-'));
    try {
      const params = countModelParameters(parseModelConfig(configJson, 'bench config')).total;
      ctx.log(`writing a random ${(params / 1e9).toFixed(2)}B-parameter bf16 LLaMA to ${dir}`);
      const random = randomWeightSource(config);
      await writeFile(join(dir, 'config.json'), JSON.stringify(configJson));
      await writeSafetensors(
        join(dir, 'model.safetensors'),
        llamaWeightSpec(config).map(({ name, shape }) => ({
          name,
          dtype: 'bf16' as const,
          shape,
          data: async () =>
            fromFloat32Array((await random.read(name)).data as Float32Array, 'bf16'),
        })),
      );

      // The same bytes read by the safetensors reader, tensor by tensor (file in the page cache):
      // into a fresh buffer per tensor, and streamed through one reused 16 MiB buffer (the floor:
      // no fresh memory touched).
      const file = await SafetensorsFile.open(join(dir, 'model.safetensors'));
      let fileBytes = 0;
      const r0 = performance.now();
      for (const name of file.names()) fileBytes += (await file.read(name)).data.byteLength;
      const readSeconds = (performance.now() - r0) / 1000;
      const piece = new Uint8Array(16 * MiB);
      const s0 = performance.now();
      for (const name of file.names()) {
        const bytes = file.entry(name).byteLength;
        for (let at = 0; at < bytes; at += piece.length)
          await file.readInto(name, at, piece.subarray(0, Math.min(piece.length, bytes - at)));
      }
      const streamSeconds = (performance.now() - s0) / 1000;
      await file.close();
      const weightFolder = await weightFileParent(params * 4);
      // The least any load into an f32 session must do: write the f32 bytes once, from one reused
      // buffer, into a file where the weight file goes (fresh pages, as the session's are).
      const floorPath = join(await mkdtemp(join(weightFolder, 'lora-bench-floor-')), 'w.bin');
      const w0 = performance.now();
      try {
        const h = await open(floorPath, 'w');
        try {
          for (let at = 0; at < params * 4; at += piece.length)
            await h.write(piece, 0, Math.min(piece.length, params * 4 - at), at);
        } finally {
          await h.close();
        }
      } finally {
        await rm(dirname(floorPath), { recursive: true, force: true });
      }
      const writeSeconds = (performance.now() - w0) / 1000;

      collectGarbage();
      const rssBefore = process.memoryUsage().rss;
      ctx.log('loading with loadLlama (logits: last)');
      const t0 = performance.now();
      let lastLog = 0;
      let preparedAt = t0;
      const model = await loadLlama(dir, {
        logits: 'last',
        onProgress: (done, total) => {
          preparedAt = performance.now();
          if (done - lastLog >= total / 4) {
            lastLog = done;
            ctx.log(`  ${done}/${total} tensors`);
          }
        },
      });
      const loadSeconds = (performance.now() - t0) / 1000;
      const prepareSeconds = (preparedAt - t0) / 1000;
      const prompt = Array.from({ length: 16 }, (_, i) => (i * 37 + 1) % config.vocabSize);
      const steps = 8;
      let decodeMs = 0;
      try {
        // Generation touches every weight, so the mapped weight file is resident from here on.
        const stepper = model.stepper();
        await stepper.start([prompt]);
        const d0 = performance.now();
        for (let i = 0; i < steps; i++) await stepper.step([(i * 7 + 3) % config.vocabSize]);
        decodeMs = (performance.now() - d0) / steps;
        await stepper.dispose();
      } finally {
        collectGarbage();
      }
      const rssAfter = process.memoryUsage().rss;
      const peakRss = process.resourceUsage().maxRSS * 1024;
      await model.release();

      const plan = planMemory({
        shape: parseModelConfig(configJson, 'bench config'),
        batchSize: 1,
        seqLen: prompt.length + steps,
      });
      const planned = plan.scenarios.find((s) => s.name === 'generate')!.memory;
      // As the session holds them: every weight in f32.
      const weightBytes = planned.weights;
      const loadGbs = fileBytes / 1e9 / loadSeconds;
      const readGbs = fileBytes / 1e9 / readSeconds;
      const peakRatio = peakRss / weightBytes;
      const planError = planned.total / peakRss - 1;
      return {
        columns: ['measure', 'value', 'unit'],
        rows: [
          ['parameters', params / 1e9, 'billion'],
          ['checkpoint (bf16)', fileBytes / MiB, 'MiB'],
          ['weights as the session holds them (f32)', weightBytes / MiB, 'MiB'],
          ['read the checkpoint, a fresh buffer per tensor', readSeconds, 's'],
          ['read the checkpoint through one reused buffer', streamSeconds, 's'],
          ['write the f32 bytes once (floor of any load into an f32 session)', writeSeconds, 's'],
          ['load (loadLlama, to a ready session)', loadSeconds, 's'],
          ['  of which read + widen + lay out + write (last tensor prepared)', prepareSeconds, 's'],
          ['  of which session creation', loadSeconds - prepareSeconds, 's'],
          ['load rate to a ready session (checkpoint bytes / load)', loadGbs, 'GB/s'],
          [
            'weights into the session file (checkpoint bytes / read + widen + write)',
            fileBytes / 1e9 / prepareSeconds,
            'GB/s',
          ],
          ['load vs plain read (fresh buffers)', loadSeconds / readSeconds, 'x'],
          ['load vs plain read (reused buffer)', loadSeconds / streamSeconds, 'x'],
          [
            'load vs read (reused buffer) + write of the f32 bytes',
            loadSeconds / (streamSeconds + writeSeconds),
            'x',
          ],
          ['decode (after load)', decodeMs, 'ms/token'],
          ['RSS added by the model (after generating)', (rssAfter - rssBefore) / MiB, 'MiB'],
          ['peak RSS of the process', peakRss / MiB, 'MiB'],
          ['peak RSS / f32 weight bytes', peakRatio, 'x'],
          ['lora plan, "lora generate" row', planned.total / MiB, 'MiB'],
          ['plan vs measured peak', planError * 100, '%'],
        ],
        notes: [
          `model: random LLaMA, ${config.numLayers} layers, hidden ${config.hiddenSize}, intermediate ${config.intermediateSize}, heads ${config.numHeads}/${config.numKvHeads} kv, vocab ${config.vocabSize}, written once as bf16 safetensors in a temporary folder and removed afterwards`,
          `load: each tensor streamed in 16 MiB chunks through reused buffers, widened to f32 on the way, into the session weight file that onnxruntime maps (pre-packing off; weight file in ${weightFolder}): weights are held once`,
          `goal load rate >= 1 GB/s of checkpoint: ${loadGbs.toFixed(2)} GB/s to a ready session: ${loadGbs >= 1 ? 'met' : 'NOT met'}; the weights alone reach the session's weight file at ${(fileBytes / 1e9 / prepareSeconds).toFixed(2)} GB/s (${fileBytes / 1e9 / prepareSeconds >= 1 ? 'met' : 'NOT met'}), onnxruntime's session creation adds ${(loadSeconds - prepareSeconds).toFixed(2)} s; the plain read of the same bytes ran at ${readGbs.toFixed(2)} GB/s into fresh buffers, ${(fileBytes / 1e9 / streamSeconds).toFixed(2)} GB/s through one reused buffer; writing the ${((params * 4) / 2 ** 30).toFixed(1)} GiB of f32 the session holds, alone, takes ${writeSeconds.toFixed(2)} s here (${(fileBytes / 1e9 / writeSeconds).toFixed(2)} GB/s of checkpoint at best for an f32 session)`,
          `goal peak RSS <= 1.3 x the f32 weight bytes: ${peakRatio.toFixed(2)}x: ${peakRatio <= 1.3 ? 'met' : 'NOT met'} (peak includes writing the checkpoint, one tensor at a time, and ${(planned.runtime / MiB).toFixed(0)} MiB of Node.js + onnxruntime)`,
          `lora plan's "lora generate" row vs the measured peak: ${planError >= 0 ? '+' : ''}${(planError * 100).toFixed(0)} %`,
          'machine shared and noisy: times vary between runs, ratios less so',
        ],
      };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
};
