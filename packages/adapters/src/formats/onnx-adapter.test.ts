import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { f32, tensor } from '@lora/core';
import { afterAll, describe, expect, it } from 'vitest';
import {
  decodeOnnxAdapter,
  encodeOnnxAdapter,
  readOnnxAdapter,
  writeOnnxAdapter,
} from './onnx-adapter.js';

/**
 * A minimal FlatBuffers reader written for this test only (Node Buffer accessors, no flatbuffers
 * package), following the schema by hand: it checks that what we write is what the format
 * says, independently of the encoder's and decoder's code.
 */
function minimalRead(bytes: Uint8Array) {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const field = (table: number, slot: number) => {
    const vt = table - b.readInt32LE(table);
    const vtSize = b.readUInt16LE(vt);
    const at = 4 + 2 * slot;
    const rel = at < vtSize ? b.readUInt16LE(vt + at) : 0;
    return rel === 0 ? 0 : table + rel;
  };
  const deref = (pos: number) => pos + b.readUInt32LE(pos);
  const root = b.readUInt32LE(0);
  const int = (t: number, slot: number) => (field(t, slot) ? b.readInt32LE(field(t, slot)) : 0);
  const params = deref(field(root, 3));
  const out = [];
  for (let i = 0; i < b.readUInt32LE(params); i++) {
    const p = deref(params + 4 + 4 * i);
    const name = deref(field(p, 0));
    const dims = deref(field(p, 1));
    const raw = deref(field(p, 3));
    const rawStart = raw + 4;
    out.push({
      name: b.toString('utf8', name + 4, name + 4 + b.readUInt32LE(name)),
      dims: Array.from({ length: b.readUInt32LE(dims) }, (_, d) =>
        Number(b.readBigInt64LE(dims + 4 + 8 * d)),
      ),
      dataType: int(p, 2),
      rawStart,
      raw: bytes.subarray(rawStart, rawStart + b.readUInt32LE(raw)),
    });
  }
  return {
    identifier: b.toString('latin1', 4, 8),
    formatVersion: int(root, 0),
    adapterVersion: int(root, 1),
    modelVersion: int(root, 2),
    params: out,
  };
}

/** A two-element f32 parameter "abc" assembled byte by byte from the schema (see offsets). */
function handAssembled(): Uint8Array {
  const b = Buffer.alloc(112);
  b.writeUInt32LE(20, 0); // root table at 20
  b.write('TORT', 4, 'latin1');
  // Adapter vtable at 8: vtable size 12, table size 16, fields at +4 +8 (absent) +12.
  for (const [i, v] of [12, 16, 4, 8, 0, 12].entries()) b.writeUInt16LE(v, 8 + 2 * i);
  b.writeInt32LE(20 - 8, 20); // table -> vtable
  b.writeInt32LE(1, 24); // format_version
  b.writeInt32LE(7, 28); // adapter_version; model_version absent = 0
  b.writeUInt32LE(36 - 32, 32); // parameters vector at 36
  b.writeUInt32LE(1, 36);
  b.writeUInt32LE(56 - 40, 40); // parameter table at 56
  // Parameter vtable at 44: size 12, table size 20, fields at +4 +8 +12 +16.
  for (const [i, v] of [12, 20, 4, 8, 12, 16].entries()) b.writeUInt16LE(v, 44 + 2 * i);
  b.writeInt32LE(56 - 44, 56);
  b.writeUInt32LE(76 - 60, 60); // name
  b.writeUInt32LE(84 - 64, 64); // dims
  b.writeInt32LE(1, 68); // FLOAT
  b.writeUInt32LE(100 - 72, 72); // raw_data
  b.writeUInt32LE(3, 76);
  b.write('abc', 80, 'utf8');
  b.writeUInt32LE(1, 84);
  b.writeBigInt64LE(2n, 88);
  b.writeUInt32LE(8, 100);
  b.writeFloatLE(1.5, 104);
  b.writeFloatLE(-2, 108);
  return new Uint8Array(b);
}

describe('.onnx_adapter container', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('decodes a buffer assembled by hand from the schema', () => {
    const file = decodeOnnxAdapter(handAssembled());
    expect(file.formatVersion).toBe(1);
    expect(file.adapterVersion).toBe(7);
    expect(file.modelVersion).toBe(0);
    const t = file.parameters.get('abc')!;
    expect(t.dtype).toBe('f32');
    expect(t.shape).toEqual([2]);
    expect([...t.data]).toEqual([1.5, -2]);
  });

  it('writes the structure of the schema: identifier, versions, names, dims, types, aligned raw data', () => {
    const a = f32([3, 2], [1, 2, 3, 4, 5, -6.25]);
    const h = tensor('f16', [1, 3], new Uint16Array([0x3c00, 0xc000, 0x7bff])); // 1, -2, 65504
    const ids = tensor('i64', [2], new BigInt64Array([-1n, 2n ** 40n]));
    const bytes = encodeOnnxAdapter(
      [
        ['x.lora_A', a],
        ['y', h],
        ['ids', ids],
      ],
      { adapterVersion: 3, modelVersion: 5 },
    );
    expect(new TextDecoder().decode(bytes.subarray(4, 8))).toBe('TORT');
    const m = minimalRead(bytes);
    expect(m).toMatchObject({
      identifier: 'TORT',
      formatVersion: 1,
      adapterVersion: 3,
      modelVersion: 5,
    });
    expect(m.params.map((p) => [p.name, p.dims, p.dataType])).toEqual([
      ['x.lora_A', [3, 2], 1],
      ['y', [1, 3], 10],
      ['ids', [2], 7],
    ]);
    for (const p of m.params) expect(p.rawStart % 8).toBe(0); // force_align: 8
    const raw0 = Buffer.from(m.params[0].raw);
    expect([0, 1, 2, 3, 4, 5].map((i) => raw0.readFloatLE(4 * i))).toEqual([1, 2, 3, 4, 5, -6.25]);
    const raw1 = Buffer.from(m.params[1].raw);
    expect([0, 1, 2].map((i) => raw1.readUInt16LE(2 * i))).toEqual([0x3c00, 0xc000, 0x7bff]);
    expect(Buffer.from(m.params[2].raw).readBigInt64LE(8)).toBe(2n ** 40n);

    const back = decodeOnnxAdapter(bytes);
    expect([...back.parameters.keys()]).toEqual(['x.lora_A', 'y', 'ids']);
    expect(back.parameters.get('x.lora_A')).toEqual(a);
    expect(back.parameters.get('y')).toEqual(h);
    expect(back.parameters.get('ids')).toEqual(ids);
  });

  it('round-trips through a file on disk, atomically', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'onnx-adapter-'));
    dirs.push(dir);
    const path = join(dir, 'a.onnx_adapter');
    const big = f32(
      [64, 33],
      Float32Array.from({ length: 64 * 33 }, (_, i) => Math.sin(i)),
    );
    await writeOnnxAdapter(path, new Map([['w', big]]));
    expect(await readdir(dir)).toEqual(['a.onnx_adapter']); // no temporary left behind
    const back = await readOnnxAdapter(path);
    expect(back.parameters.get('w')).toEqual(big);
  });

  it('rejects foreign, truncated and unsupported files with clear errors', async () => {
    const good = handAssembled();
    const foreign = good.slice();
    foreign.set([0x58, 0x58, 0x58, 0x58], 4);
    expect(() => decodeOnnxAdapter(foreign, 'f.onnx_adapter')).toThrow(
      /not an \.onnx_adapter file/,
    );
    for (const cut of [3, 30, 60, 90, 108]) {
      expect(() => decodeOnnxAdapter(good.subarray(0, cut))).toThrow(
        expect.objectContaining({ code: 'ONNX_ADAPTER_INVALID' }),
      );
    }
    const v2 = Buffer.from(good);
    v2.writeInt32LE(2, 24);
    expect(() => decodeOnnxAdapter(v2)).toThrow(
      expect.objectContaining({ code: 'ONNX_ADAPTER_VERSION' }),
    );
    const complex = Buffer.from(good);
    complex.writeInt32LE(14, 68); // COMPLEX64
    expect(() => decodeOnnxAdapter(complex)).toThrow(
      expect.objectContaining({ code: 'ONNX_ADAPTER_UNSUPPORTED_TYPE' }),
    );
    const wrongSize = Buffer.from(good);
    wrongSize.writeBigInt64LE(3n, 88); // dims say 3 floats, data has 2
    expect(() => decodeOnnxAdapter(wrongSize)).toThrow(/needs 12/);
    const dir = await mkdtemp(join(tmpdir(), 'onnx-adapter-'));
    dirs.push(dir);
    await expect(readOnnxAdapter(join(dir, 'missing.onnx_adapter'))).rejects.toMatchObject({
      code: 'ONNX_ADAPTER_READ_FAILED',
    });
    await writeFile(join(dir, 'empty.onnx_adapter'), '');
    await expect(readOnnxAdapter(join(dir, 'empty.onnx_adapter'))).rejects.toMatchObject({
      code: 'ONNX_ADAPTER_INVALID',
    });
    expect(await readFile(join(dir, 'empty.onnx_adapter'))).toHaveLength(0);
  });

  it('refuses duplicate or empty names and bad versions when writing', () => {
    const t = f32([1], [1]);
    expect(() =>
      encodeOnnxAdapter([
        ['a', t],
        ['a', t],
      ]),
    ).toThrow(/appears twice/);
    expect(() => encodeOnnxAdapter([['', t]])).toThrow(/non-empty name/);
    expect(() => encodeOnnxAdapter([['a', t]], { modelVersion: 2 ** 31 })).toThrow(/32-bit/);
  });
});
