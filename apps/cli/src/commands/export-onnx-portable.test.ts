import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { f32ToF16Array, readSafetensors, type Tensor, tensor, writeSafetensors } from '@lora/core';
import {
  describeOnnxModel,
  LLAMA_LINEARS,
  loadLlama,
  llamaModuleName,
  openLlamaFolder,
} from '@lora/runtime-onnx';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ExportOnnxReport } from './export-onnx.js';
import { readOnnxInitializers, runExportedDecoder } from '../test-utils/exported-model.js';
import { runCli } from '../test-utils/run-cli.js';
import { writeSyntheticAdapter, writeSyntheticLlama } from '../test-utils/synthetic-model.js';

// Float exports use only standard ONNX operators (default domain) unless --ops ort asks for
// onnxruntime's contrib operators; 4-bit exports need onnxruntime and refuse --ops standard.

const stories = fileURLToPath(
  new URL('../../../../../shared/fixtures/llama2c-stories260k', import.meta.url),
);
const haveStories = existsSync(join(stories, 'model.safetensors'));
if (!haveStories)
  console.warn(
    `SKIPPED: ${stories} is absent; the stories260K cases of export-onnx --ops do not run.`,
  );

/** Prompts (token ids) run through every compared model. */
const PROMPTS = [
  [1, 403, 407, 261, 378, 9, 30],
  [1, 7, 300, 12],
  [1, 511, 2, 45, 88, 120, 64, 5, 99],
];

let dir: string;
/** A random LLaMA with an untied lm_head (the fixture's head is tied), and an adapter for it. */
let synthetic: string;
let syntheticAdapter: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lora-export-portable-'));
  synthetic = join(dir, 'synthetic');
  syntheticAdapter = join(dir, 'synthetic-adapter');
  await writeSyntheticLlama(synthetic, 3);
  await writeSyntheticAdapter(syntheticAdapter, 4);
});
afterAll(async () => rm(dir, { recursive: true, force: true }));

async function exportOnnx(
  name: string,
  args: string[],
): Promise<{ path: string; report: ExportOnnxReport }> {
  const path = join(dir, name);
  const r = await runCli(['export-onnx', ...args, '-o', path, '--json']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  return { path, report: JSON.parse(r.stdout) as ExportOnnxReport };
}

/**
 * Asserts, from the written file (parsed with the project's ONNX reader), that every node is in
 * the default domain and that no other opset is declared.
 */
async function expectStandardOnly(path: string): Promise<void> {
  const summary = await describeOnnxModel(path);
  // describeOnnxModel names ops of another domain `domain.OpType`.
  const offending = Object.keys(summary.ops).filter((op) => op.includes('.'));
  expect(offending, `non-standard operators in ${path}: ${offending.join(', ')}`).toEqual([]);
  expect(summary.opsets.map((o) => o.domain)).toEqual(['ai.onnx']);
  expect(summary.ops.MatMul).toBeGreaterThan(0);
}

/** Logits [T, V] of each prompt, from a session on an exported file. */
async function exportedLogits(path: string, folder: string): Promise<Float32Array[]> {
  const { config, source } = await openLlamaFolder(folder);
  await source.close();
  const session = await ort.InferenceSession.create(path);
  try {
    const out: Float32Array[] = [];
    for (const p of PROMPTS) out.push(await runExportedDecoder(session, config, p));
    return out;
  } finally {
    await session.release();
  }
}

/** Logits of each prompt from the runtime's own session (what `lora generate` runs). */
async function inProcessLogits(folder: string): Promise<Float32Array[]> {
  const model = await loadLlama(folder);
  try {
    const out: Float32Array[] = [];
    for (const p of PROMPTS) {
      out.push((await model.forward({ inputIds: [p] })).logits.data as Float32Array);
    }
    return out;
  } finally {
    await model.release();
  }
}

/** Largest absolute difference, and whether every position's argmax (the greedy token) agrees. */
function compare(a: Float32Array[], b: Float32Array[], vocab: number) {
  let maxErr = 0;
  let sameTokens = true;
  for (let k = 0; k < a.length; k++) {
    expect(a[k].length).toBe(b[k].length);
    for (let i = 0; i < a[k].length; i++) maxErr = Math.max(maxErr, Math.abs(a[k][i] - b[k][i]));
    for (let t = 0; t < a[k].length / vocab; t++) {
      const row = (x: Float32Array) => x.subarray(t * vocab, (t + 1) * vocab);
      if (argmax(row(a[k])) !== argmax(row(b[k]))) sameTokens = false;
    }
  }
  return { maxErr, sameTokens };
}

function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** [rows, cols] float32 bytes -> [cols, rows] float32 bytes (written out plainly: the reference). */
function transposedBytes(bytes: Buffer, rows: number, cols: number): Buffer {
  const src = new Float32Array(
    bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length),
  );
  const dst = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++)
    for (let j = 0; j < cols; j++) dst[j * rows + i] = src[i * cols + j];
  return Buffer.from(dst.buffer);
}

/** Every linear of the decoder and the lm_head: the initializers a standard export transposes. */
function linearNames(layers: number): string[] {
  const names = ['lm_head.weight'];
  for (let l = 0; l < layers; l++)
    for (const linear of LLAMA_LINEARS) names.push(`${llamaModuleName(l, linear)}.weight`);
  return names.sort();
}

describe('lora export-onnx: standard ONNX operators for float exports', () => {
  it('the synthetic model (untied lm_head): standard by default, logits equal --ops ort and the in-process model', async () => {
    const std = await exportOnnx('syn.onnx', ['--model', synthetic]);
    const ortOps = await exportOnnx('syn-ort.onnx', ['--model', synthetic, '--ops', 'ort']);
    expect(std.report.opSet).toBe('standard');
    expect(ortOps.report.opSet).toBe('ort');
    await expectStandardOnly(std.path);
    // The onnxruntime form really uses the contrib operator (and declares its domain).
    const ortSummary = await describeOnnxModel(ortOps.path);
    expect(ortSummary.ops['com.microsoft.FusedMatMul']).toBe(2 * 7 + 1);
    expect(ortSummary.opsets.map((o) => o.domain)).toContain('com.microsoft');

    const vocab = 512;
    const a = await exportedLogits(std.path, synthetic);
    const b = await exportedLogits(ortOps.path, synthetic);
    const c = await inProcessLogits(synthetic);
    const vsOrt = compare(a, b, vocab);
    const vsSession = compare(a, c, vocab);
    expect(vsOrt.maxErr).toBeLessThan(1e-4);
    expect(vsSession.maxErr).toBeLessThan(1e-4);
    expect(vsOrt.sameTokens).toBe(true);
    expect(vsSession.sameTokens).toBe(true);
    // Not trivially equal: the model's logits spread well beyond the tolerance.
    let spread = 0;
    for (const x of c[0]) spread = Math.max(spread, Math.abs(x - c[0][0]));
    expect(spread).toBeGreaterThan(1e-2);
  });

  it('--merged: standard, and its linears are the transposed linears of `lora merge` + `export-onnx --ops ort` (byte for byte)', async () => {
    const merged = join(dir, 'syn-merged');
    const m = await runCli([
      'merge',
      '--base',
      synthetic,
      '--adapter',
      `${syntheticAdapter}:0.7`,
      '-o',
      merged,
      '--quiet',
    ]);
    expect(m.stderr).toBe('');
    expect(m.code).toBe(0);
    const ref = await exportOnnx('syn-merge-then-ort.onnx', ['--model', merged, '--ops', 'ort']);
    const std = await exportOnnx('syn-merged-std.onnx', [
      '--model',
      synthetic,
      '--adapter',
      `${syntheticAdapter}:0.7`,
      '--merged',
    ]);
    await expectStandardOnly(std.path);
    const a = await readOnnxInitializers(std.path);
    const b = await readOnnxInitializers(ref.path);
    const base = await readOnnxInitializers(
      (await exportOnnx('syn-base-ort.onnx', ['--model', synthetic, '--ops', 'ort'])).path,
    );
    expect([...a.keys()].sort()).toEqual([...b.keys()].sort());
    const linears = new Set(linearNames(2));
    let adapted = 0;
    for (const [name, want] of b) {
      const got = a.get(name)!;
      if (linears.has(name)) {
        // A linear: [out, in] in the onnxruntime form, [in, out] in the standard one.
        expect(got.dims, name).toEqual([want.dims[1], want.dims[0]]);
        const wantBytes = transposedBytes(want.bytes, want.dims[0], want.dims[1]);
        expect(Buffer.compare(got.bytes, wantBytes), name).toBe(0);
      } else {
        expect(got.dims, name).toEqual(want.dims);
        expect(Buffer.compare(got.bytes, want.bytes), name).toBe(0);
      }
      if (Buffer.compare(want.bytes, base.get(name)!.bytes) !== 0) adapted++;
    }
    for (const name of linears) expect(b.has(name), name).toBe(true);
    expect(adapted).toBe(2 * 7); // the adapter covers every decoder linear
    const vocab = 512;
    const logits = compare(
      await exportedLogits(std.path, synthetic),
      await exportedLogits(ref.path, synthetic),
      vocab,
    );
    expect(logits.maxErr).toBeLessThan(1e-4);
  });

  it.skipIf(!haveStories)(
    'stories260K (tied lm_head), plain, --lora-inputs all-linear and f16 weights: standard only, logits equal --ops ort',
    async () => {
      const { config, source } = await openLlamaFolder(stories);
      await source.close();
      // The same model stored as float16.
      const f16 = join(dir, 'stories-f16');
      const weights = await readSafetensors(join(stories, 'model.safetensors'));
      const halves = new Map<string, Tensor>();
      for (const [name, t] of weights.tensors) {
        halves.set(name, tensor('f16', t.shape, f32ToF16Array(t.data as Float32Array)));
      }
      await writeSafetensorsInto(f16, halves);

      for (const [label, folder, extra] of [
        ['plain', stories, []],
        ['lora-inputs', stories, ['--lora-inputs', '--lora-targets', 'all-linear']],
        ['f16', f16, ['--logits', 'last']],
      ] as const) {
        const std = await exportOnnx(`stories-${label}.onnx`, ['--model', folder, ...extra]);
        await expectStandardOnly(std.path);
        expect(std.report.ops.MatMul, label).toBeGreaterThanOrEqual(config.numLayers * 7 + 1);
        if (label === 'lora-inputs') continue; // logits with LoRA inputs: export-onnx-lora-inputs.test.ts, both --ops
        const ortOps = await exportOnnx(`stories-${label}-ort.onnx`, [
          '--model',
          folder,
          '--ops',
          'ort',
          ...extra,
        ]);
        const cmp = compare(
          await exportedLogits(std.path, folder),
          await exportedLogits(ortOps.path, folder),
          config.vocabSize,
        );
        expect(cmp.maxErr, label).toBeLessThan(1e-4);
        expect(cmp.sameTokens, label).toBe(true);
      }
    },
  );
});

/** Greedy decoding on an exported file through its KV cache: prefill, then one token per call. */
async function greedyExported(
  path: string,
  config: { numLayers: number; numKvHeads: number; headDim: number },
  prompt: readonly number[],
  steps: number,
): Promise<number[]> {
  const session = await ort.InferenceSession.create(path);
  try {
    const ids = (a: readonly number[]) =>
      new ort.Tensor('int64', BigInt64Array.from(a, BigInt), [1, a.length]);
    let past: Record<string, ort.Tensor> = {};
    for (let l = 0; l < config.numLayers; l++) {
      for (const kind of ['key', 'value']) {
        past[`past_key_values.${l}.${kind}`] = new ort.Tensor('float32', new Float32Array(0), [
          1,
          config.numKvHeads,
          0,
          config.headDim,
        ]);
      }
    }
    const out: number[] = [];
    let input = [...prompt];
    let done = 0; // tokens already in the cache
    for (let s = 0; s < steps; s++) {
      const r = await session.run({
        input_ids: ids(input),
        attention_mask: ids(new Array(done + input.length).fill(1)),
        position_ids: ids(input.map((_, i) => done + i)),
        ...past,
      });
      const logits = r.logits.data as Float32Array;
      const V = r.logits.dims[2];
      out.push(argmax(logits.subarray((input.length - 1) * V, input.length * V)));
      done += input.length;
      input = [out[out.length - 1]];
      past = {};
      for (let l = 0; l < config.numLayers; l++) {
        past[`past_key_values.${l}.key`] = r[`present.${l}.key`];
        past[`past_key_values.${l}.value`] = r[`present.${l}.value`];
      }
    }
    return out;
  } finally {
    await session.release();
  }
}

describe.skipIf(!haveStories)('lora export-onnx: standard export vs lora generate', () => {
  it('greedy tokens through the exported KV cache equal `lora generate --json` (three prompts)', async () => {
    const { config, source } = await openLlamaFolder(stories);
    await source.close();
    const std = await exportOnnx('stories-generate.onnx', ['--model', stories]);
    await expectStandardOnly(std.path);
    let compared = 0;
    for (const prompt of ['Once upon a time', 'Tom had a red ball', 'The cat was']) {
      const g = await runCli([
        'generate',
        '--model',
        stories,
        '--prompt',
        prompt,
        '--max-tokens',
        '8',
        '--json',
      ]);
      expect(g.code, g.stderr).toBe(0);
      const { tokens, promptTokens } = JSON.parse(g.stdout) as {
        tokens: number[];
        promptTokens: number[];
      };
      expect(tokens.length).toBeGreaterThan(0);
      const exported = await greedyExported(std.path, config, promptTokens, tokens.length);
      expect(exported, prompt).toEqual(tokens);
      compared += tokens.length;
    }
    expect(compared).toBeGreaterThanOrEqual(12);
  });
});

describe('lora export-onnx: 4-bit exports need onnxruntime', () => {
  it('--quant without --ops: onnxruntime operators (MatMulNBits), the report says so, onnxruntime runs it', async () => {
    const q = await exportOnnx('syn-int4.onnx', ['--model', synthetic, '--quant', 'int4']);
    expect(q.report.opSet).toBe('ort');
    const summary = await describeOnnxModel(q.path);
    expect(summary.ops['com.microsoft.MatMulNBits']).toBe(2 * 7);
    const logits = await exportedLogits(q.path, synthetic);
    expect(logits[0].every(Number.isFinite)).toBe(true);
    const text = await runCli([
      'export-onnx',
      '--model',
      synthetic,
      '--quant',
      'int4',
      '-o',
      join(dir, 'syn-int4-text.onnx'),
    ]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/needs onnxruntime/);
  });

  it('--ops standard --quant: refused before anything is read or written (exit 2)', async () => {
    const out = join(dir, 'never-nf4.onnx');
    const r = await runCli([
      'export-onnx',
      '--model',
      synthetic,
      '--ops',
      'standard',
      '--quant',
      'nf4',
      '-o',
      out,
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--ops standard and --quant nf4 exclude each other/);
    expect(r.stderr).toMatch(/MatMulBnb4/);
    expect(existsSync(out)).toBe(false);
  });

  it('a folder written by lora quantize: onnxruntime operators by default, --ops standard refused naming a 4-bit tensor', async () => {
    const quantized = join(dir, 'syn-nf4');
    const q = await runCli(['quantize', synthetic, '--format', 'nf4', '-o', quantized, '--quiet']);
    expect(q.code, q.stderr).toBe(0);
    const auto = await exportOnnx('syn-nf4-folder.onnx', ['--model', quantized]);
    expect(auto.report.opSet).toBe('ort');
    expect((await describeOnnxModel(auto.path)).ops['com.microsoft.MatMulBnb4']).toBe(2 * 7);
    const out = join(dir, 'never-nf4-folder.onnx');
    const r = await runCli(['export-onnx', '--model', quantized, '--ops', 'standard', '-o', out]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(
      /--ops standard: .* holds 4-bit linears \(model\.layers\.\d+\.[a-z_.]+\.weight, /,
    );
    expect(r.stderr).toMatch(/Use --ops ort/);
    expect(r.stderr).toMatch(/onnxruntime/);
    expect(existsSync(out)).toBe(false);
  });
});

/** A model folder: the fixture's config.json beside the given tensors. */
async function writeSafetensorsInto(folder: string, tensors: Map<string, Tensor>): Promise<void> {
  await rm(folder, { recursive: true, force: true });
  await mkdir(folder, { recursive: true });
  await copyFile(join(stories, 'config.json'), join(folder, 'config.json'));
  await writeSafetensors(join(folder, 'model.safetensors'), tensors);
}
