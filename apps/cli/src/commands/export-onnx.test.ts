import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openLlamaFolder, readLlamaWeightsF32, referenceForward } from '@lora/runtime-onnx';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../test-utils/run-cli.js';

const FIXTURE = fileURLToPath(
  new URL('../../../../../shared/fixtures/llama2c-stories260k', import.meta.url),
);
const present = existsSync(join(FIXTURE, 'model.safetensors'));
if (!present) console.warn(`SKIPPED: export-onnx fixture tests need ${FIXTURE}`);

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lora-export-'));
});
afterAll(async () => rm(dir, { recursive: true, force: true }));

/** Runs an exported decoder on one sequence from an empty cache; returns logits [T, V]. */
async function runExported(
  path: string,
  tokens: number[],
  layers: number,
  kvHeads: number,
  headDim: number,
) {
  const session = await ort.InferenceSession.create(path);
  const T = tokens.length;
  const feeds: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor('int64', BigInt64Array.from(tokens, BigInt), [1, T]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(T).fill(1n), [1, T]),
    position_ids: new ort.Tensor('int64', BigInt64Array.from(tokens.map((_, i) => BigInt(i))), [
      1,
      T,
    ]),
  };
  for (let l = 0; l < layers; l++) {
    feeds[`past_key_values.${l}.key`] = new ort.Tensor('float32', new Float32Array(0), [
      1,
      kvHeads,
      0,
      headDim,
    ]);
    feeds[`past_key_values.${l}.value`] = new ort.Tensor('float32', new Float32Array(0), [
      1,
      kvHeads,
      0,
      headDim,
    ]);
  }
  const out = await session.run(feeds);
  await session.release();
  return out;
}

describe.skipIf(!present)('lora export-onnx on the stories260K fixture', () => {
  it('writes a model onnxruntime opens from disk, whose logits equal the float64 reference', async () => {
    const out = join(dir, 'stories.onnx');
    const r = await runCli(['export-onnx', '--model', FIXTURE, '-o', out, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.inputs.map((i: { name: string }) => i.name).slice(0, 3)).toEqual([
      'input_ids',
      'attention_mask',
      'position_ids',
    ]);
    expect(report.ops.MatMul).toBeGreaterThan(0);
    const { config, source } = await openLlamaFolder(FIXTURE);
    const weights = await readLlamaWeightsF32(config, source);
    await source.close();
    const tokens = [1, 403, 407, 261, 378];
    const result = await runExported(
      out,
      tokens,
      config.numLayers,
      config.numKvHeads,
      config.headDim,
    );
    const logits = result.logits.data as Float32Array;
    const want = referenceForward(config, weights, tokens);
    let maxErr = 0;
    for (let i = 0; i < want.length; i++) maxErr = Math.max(maxErr, Math.abs(logits[i] - want[i]));
    expect(maxErr).toBeLessThan(2e-4);
    expect(result['present.0.key'].dims).toEqual([
      1,
      config.numKvHeads,
      tokens.length,
      config.headDim,
    ]);
  });

  it('--quant nf4 --external-data: MatMulBnb4 nodes, weights in a side file, runs from disk', async () => {
    const out = join(dir, 'stories-nf4.onnx');
    const r = await runCli([
      'export-onnx',
      '--model',
      FIXTURE,
      '-o',
      out,
      '--quant',
      'nf4',
      '--external-data',
      '--logits',
      'last',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/nf4 base/);
    expect(r.stdout).toMatch(/MatMulBnb4 35/); // 5 layers x 7 linears
    expect(existsSync(`${out}.data`)).toBe(true);
    const result = await runExported(out, [1, 403, 407], 5, 4, 8);
    expect(result.logits.dims).toEqual([1, 1, 512]);
  });

  it('refuses to overwrite without --force', async () => {
    const out = join(dir, 'exists.onnx');
    await writeFile(out, 'x');
    const r = await runCli(['export-onnx', '--model', FIXTURE, '-o', out]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/exists.*--force/);
  });
});

describe('lora export-onnx: bad usage and bad input', () => {
  it('names a --model that does not exist', async () => {
    const r = await runCli([
      'export-onnx',
      '--model',
      join(dir, 'no-such-model'),
      '-o',
      join(dir, 'x.onnx'),
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/no-such-model/);
  });

  it('names the config field that is wrong (exit 2, nothing written)', async () => {
    const bad = join(dir, 'bad-model');
    await mkdir(bad, { recursive: true });
    await writeFile(
      join(bad, 'config.json'),
      JSON.stringify({
        model_type: 'llama',
        hidden_size: 30,
        num_attention_heads: 4,
        intermediate_size: 8,
        num_hidden_layers: 1,
        vocab_size: 8,
      }),
    );
    const out = join(dir, 'never.onnx');
    const r = await runCli(['export-onnx', '--model', bad, '-o', out]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/"hidden_size" \(30\) is not divisible by num_attention_heads \(4\)/);
    expect(existsSync(out)).toBe(false);
  });
});
