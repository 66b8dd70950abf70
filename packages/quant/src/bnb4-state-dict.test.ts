import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRng, SafetensorsFile } from '@lora/core';
import { afterAll, describe, expect, it } from 'vitest';
import { bnb4QuantStateJson, readBnb4StateDict, writeBnb4StateDict } from './bnb4-state-dict.js';
import { dequantizeBnb4, quantizeBnb4 } from './bnb4-weight.js';
import { pythonFloatRepr } from './python-json.js';

const dir = await mkdtemp(join(tmpdir(), 'lora-quant-'));
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('bitsandbytes state-dict layout', () => {
  it('writes the keys, dtypes and shapes transformers saves, and reads them back bit for bit', async () => {
    const W = createRng(31).normalArray(48 * 40, 0, 0.05, 'f32');
    const dq = quantizeBnb4(W, [48, 40], {
      format: 'nf4',
      blockSize: 64,
      doubleQuant: true,
      dtype: 'bf16',
    });
    const plain = quantizeBnb4(W, [48, 40], { format: 'fp4', blockSize: 128 });
    const path = join(dir, 'model.safetensors');
    await writeBnb4StateDict(
      path,
      new Map([
        ['model.layers.0.self_attn.q_proj.weight', dq],
        ['model.layers.0.mlp.up_proj.weight', plain],
      ]),
    );
    const file = await SafetensorsFile.open(path);
    try {
      const e = (n: string) => {
        const x = file.entry(n);
        return [x.dtype, x.shape];
      };
      const q = 'model.layers.0.self_attn.q_proj.weight';
      expect(e(q)).toEqual(['u8', [960, 1]]);
      expect(e(`${q}.absmax`)).toEqual(['u8', [30]]);
      expect(e(`${q}.quant_map`)).toEqual(['f32', [16]]);
      expect(e(`${q}.nested_absmax`)).toEqual(['f32', [1]]);
      expect(e(`${q}.nested_quant_map`)).toEqual(['f32', [256]]);
      expect(file.has(`${q}.quant_state.bitsandbytes__nf4`)).toBe(true);
      const u = 'model.layers.0.mlp.up_proj.weight';
      expect(e(`${u}.absmax`)).toEqual(['f32', [15]]);
      expect(file.has(`${u}.nested_absmax`)).toBe(false);
      const state = JSON.parse(
        new TextDecoder().decode(
          (await file.read(`${q}.quant_state.bitsandbytes__nf4`)).data as Uint8Array,
        ),
      );
      expect(state).toMatchObject({
        quant_type: 'nf4',
        blocksize: 64,
        dtype: 'bfloat16',
        shape: [48, 40],
        nested_blocksize: 256,
        nested_dtype: 'float32',
      });
      expect(Object.keys(state)).toEqual([
        'quant_type',
        'blocksize',
        'dtype',
        'shape',
        'nested_blocksize',
        'nested_dtype',
        'nested_offset',
      ]);

      const back = await readBnb4StateDict(file, file.names());
      expect([...back.keys()].sort()).toEqual([u, q]);
      expect(Buffer.from(back.get(q)!.packed).equals(Buffer.from(dq.packed))).toBe(true);
      expect([...dequantizeBnb4(back.get(q)!)]).toEqual([...dequantizeBnb4(dq)]);
      expect([...dequantizeBnb4(back.get(u)!)]).toEqual([...dequantizeBnb4(plain)]);
      expect(back.get(q)!.dtype).toBe('bf16');
    } finally {
      await file.close();
    }
  });

  it('the JSON is what Python json.dumps writes (separators, float repr)', () => {
    const w = quantizeBnb4(new Float32Array([1, -1, 0, 0.5]), [2, 2], {
      format: 'fp4',
      blockSize: 64,
    });
    expect(bnb4QuantStateJson(w)).toBe(
      '{"quant_type": "fp4", "blocksize": 64, "dtype": "float32", "shape": [2, 2]}',
    );
    expect(
      ['0.0', '1e-05', '0.0518', '1.0', '123.5', '1e+16', '-2.5e-07']
        .map(Number)
        .map(pythonFloatRepr),
    ).toEqual(['0.0', '1e-05', '0.0518', '1.0', '123.5', '1e+16', '-2.5e-07']);
    expect(pythonFloatRepr(0.0001)).toBe('0.0001');
  });
});
