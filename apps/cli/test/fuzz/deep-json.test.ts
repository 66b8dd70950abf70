import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeOnnxAdapter, extractAdapter, loadOnnxAdapter } from '@lora/adapters';
import { ONNX_ADAPTER_METADATA, readResidualFile } from '@lora/adapters/internal';
import { LoraError, tensor, writeSafetensors } from '@lora/core';
import {
  BNB4_QUANT_STATE_PREFIX,
  ORT_QUANT_STATE_SUFFIX,
  readBnb4Weight,
  readOrtWeight,
} from '@lora/quant';
import { mapSource } from '@lora/quant/internal';
import { ByteTokenizer, modelEosIds } from '@lora/runtime-onnx';
import { ChatTemplate } from '@lora/serve';
import { loadCheckpoint } from '@lora/train';
import { afterAll, describe, expect, it } from 'vitest';
import { isCompleteModel } from '../../src/hub/cache.js';
import { runCli } from '../../src/test-utils/run-cli.js';

/**
 * Every place that parses JSON from a file (or from a tensor inside one) refuses JSON nested
 * 20,000 deep with the package's typed error naming the file, before any recursive walk of the
 * value (formatting an error message included) can overflow the stack. The fuzz in
 * parsers.test.ts covers adapter_config.json, config.json, tokenizer.json and JSONL rows; these
 * are the other files.
 */

const DEPTH = 20_000;
/** A JSON object with a value nested 20,000 arrays deep. */
const DEEP = `{"a": ${'['.repeat(DEPTH)}1${']'.repeat(DEPTH)}}`;
const deepBytes = () => tensor('u8', [DEEP.length], new TextEncoder().encode(DEEP));

const work = mkdtempSync(join(tmpdir(), 'lora-deep-json-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

let folders = 0;
/** A fresh folder holding `files` (name -> text). */
function folder(files: Record<string, string>): string {
  const dir = join(work, `case-${folders++}`);
  mkdirSync(dir);
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

/** The typed error `run` throws: a LoraError whose message names `file` and the nesting. */
async function expectDeepRefused(run: () => unknown, file: string): Promise<LoraError> {
  let error: unknown;
  try {
    await run();
  } catch (e) {
    error = e;
  }
  expect(error, 'no error thrown').toBeInstanceOf(LoraError);
  const message = (error as Error).message;
  expect(message).toContain(file);
  expect(message).toMatch(/nested more than 128 levels/);
  return error as LoraError;
}

/** A CLI run refused with exit 2 and one message naming `file` and the nesting. */
async function expectCliRefused(args: string[], file: string): Promise<void> {
  const r = await runCli(args);
  expect(r.code, r.stderr).toBe(2);
  expect(r.stderr).toContain(file);
  expect(r.stderr).toMatch(/nested more than 128 levels/);
  expect(r.stderr).not.toMatch(/Maximum call stack|RangeError/);
}

describe('JSON nested 20,000 deep gives the typed error naming the file', () => {
  it('lora inspect: config.json and model.safetensors.index.json', async () => {
    const config = folder({ 'config.json': DEEP });
    await expectCliRefused(['inspect', config], join(config, 'config.json'));
    const index = folder({
      'config.json': JSON.stringify({ model_type: 'llama', hidden_size: 8 }),
      'model.safetensors.index.json': DEEP,
    });
    await expectCliRefused(['inspect', index], join(index, 'model.safetensors.index.json'));
  });

  it('lora inspect: 4-bit quant states (bitsandbytes and onnxruntime layouts)', async () => {
    for (const stateKey of [`w${BNB4_QUANT_STATE_PREFIX}nf4`, `w${ORT_QUANT_STATE_SUFFIX}`]) {
      const dir = folder({});
      const file = join(dir, 'model.safetensors');
      await writeSafetensors(
        file,
        new Map([
          ['w', tensor('u8', [8], new Uint8Array(8))],
          [stateKey, deepBytes()],
        ]),
      );
      await expectCliRefused(['inspect', file], `${file} (${stateKey})`);
    }
  });

  it('lora plan: the config file', async () => {
    const dir = folder({ 'config.json': DEEP });
    await expectCliRefused(['plan', dir], join(dir, 'config.json'));
    await expectCliRefused(['plan', join(dir, 'config.json')], join(dir, 'config.json'));
  });

  it('hub cache: a deep shard index makes the snapshot incomplete, not a crash', () => {
    const dir = folder({ 'config.json': '{}', 'model.safetensors.index.json': DEEP });
    expect(isCompleteModel(dir)).toBe(false);
  });

  it('adapters: extract reads the base folder config.json', async () => {
    const weights = new Map([['layer.weight', tensor('f32', [2, 2], new Float32Array(4))]]);
    const base = folder({ 'config.json': DEEP });
    const tuned = folder({ 'config.json': '{"model_type": "llama"}' });
    await writeSafetensors(join(base, 'model.safetensors'), weights);
    await writeSafetensors(join(tuned, 'model.safetensors'), weights);
    await expectDeepRefused(
      () => extractAdapter(base, tuned, { rank: 1 }),
      join(base, 'config.json'),
    );
  });

  it('adapters: .onnx_adapter metadata', async () => {
    const path = join(work, 'deep.onnx_adapter');
    writeFileSync(path, encodeOnnxAdapter(new Map([[ONNX_ADAPTER_METADATA, deepBytes()]])));
    const e = await expectDeepRefused(() => loadOnnxAdapter(path), path);
    expect(e.code).toBe('ONNX_ADAPTER_METADATA');
  });

  it('adapters: the unmerge residual metadata', async () => {
    for (const key of ['adapters', 'shards']) {
      const path = join(work, `residual-${key}.safetensors`);
      await writeSafetensors(path, new Map(), {
        metadata: { format: 'lora-unmerge-residual', version: '1', [key]: DEEP },
      });
      await expectDeepRefused(() => readResidualFile(path), `${path} (metadata "${key}")`);
    }
  });

  it('quant: bitsandbytes and onnxruntime quant_state tensors', async () => {
    const bnb = mapSource(
      new Map([
        ['w', tensor('u8', [8], new Uint8Array(8))],
        [`w${BNB4_QUANT_STATE_PREFIX}nf4`, deepBytes()],
      ]),
    );
    const e1 = await expectDeepRefused(() => readBnb4Weight(bnb, 'w'), 'w: ');
    expect(e1.code).toBe('QUANT_STATE_INVALID');
    const ort = {
      has: (n: string) => n === 'w' || n === `w${ORT_QUANT_STATE_SUFFIX}`,
      read: (n: string) => (n === 'w' ? tensor('u8', [8], new Uint8Array(8)) : deepBytes()),
    };
    const e2 = await expectDeepRefused(() => readOrtWeight(ort, 'w'), 'w: ');
    expect(e2.code).toBe('QUANT_STATE_INVALID');
  });

  it('runtime: generation_config.json', async () => {
    const dir = folder({ 'generation_config.json': DEEP });
    const e = await expectDeepRefused(
      () => modelEosIds(dir, { eosTokenId: undefined }, new ByteTokenizer()),
      join(dir, 'generation_config.json'),
    );
    expect(e.code).toBe('GENERATION_CONFIG_INVALID');
  });

  it('serve: tokenizer_config.json of the chat template', async () => {
    const dir = folder({ 'tokenizer_config.json': DEEP });
    await expectDeepRefused(() => ChatTemplate.fromFolder(dir), join(dir, 'tokenizer_config.json'));
  });

  it('train: the checkpoint state of --resume', async () => {
    const dir = folder({ 'trainer_state.json': DEEP });
    const e = await expectDeepRefused(() => loadCheckpoint(dir, [], {}), dir);
    expect(e.code).toBe('CHECKPOINT_INVALID');
  });
});
