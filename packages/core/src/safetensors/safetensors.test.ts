import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CoreError } from '../errors.js';
import { type Tensor, tensor } from '../tensor.js';
import { parseSafetensorsBuffer, readSafetensors, SafetensorsFile } from './reader.js';
import { writeSafetensors } from './writer.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lora-st-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Builds a safetensors file by hand from the format's definition (independent of the writer). */
function handMade(header: object, data: Uint8Array, pad = 0): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header) + ' '.repeat(pad));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function expectCode(fn: () => unknown, code: string): void {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(CoreError);
    expect((e as CoreError).code).toBe(code);
    return;
  }
  throw new Error(`expected CoreError ${code}, nothing was thrown`);
}

describe('safetensors reader', () => {
  it('reads a hand-made file: dtypes, shapes, values, metadata', async () => {
    const f32 = new Float32Array([1.5, -2, 3.25, 0]);
    const i64 = new BigInt64Array([-1n, 2n ** 40n]);
    const data = new Uint8Array(16 + 16 + 2);
    data.set(new Uint8Array(f32.buffer), 0);
    data.set(new Uint8Array(i64.buffer), 16);
    data.set([0x00, 0x3c], 32); // f16 1.0, little-endian
    const bytes = handMade(
      {
        __metadata__: { format: 'pt' },
        w: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] },
        ids: { dtype: 'I64', shape: [2], data_offsets: [16, 32] },
        h: { dtype: 'F16', shape: [], data_offsets: [32, 34] },
      },
      data,
      3,
    );
    const path = join(dir, 'hand.safetensors');
    await writeFile(path, bytes);
    const f = await SafetensorsFile.open(path);
    expect(f.names()).toEqual(['w', 'ids', 'h']);
    expect(f.metadata).toEqual({ format: 'pt' });
    const w = await f.read('w');
    expect(w.dtype).toBe('f32');
    expect(w.shape).toEqual([2, 2]);
    expect([...(w.data as Float32Array)]).toEqual([1.5, -2, 3.25, 0]);
    expect([...((await f.read('ids')).data as BigInt64Array)]).toEqual([-1n, 2n ** 40n]);
    const h = await f.read('h');
    expect(h.shape).toEqual([]);
    expect((h.data as Uint16Array)[0]).toBe(0x3c00);
    await f.close();
  });

  it('writes what it reads back, for every dtype, with a header padded to 8 bytes', async () => {
    const tensors = new Map<string, Tensor>([
      ['a.f64', tensor('f64', [3], new Float64Array([1, 2, 3]))],
      ['b.f32', tensor('f32', [2, 3], new Float32Array([1, 2, 3, 4, 5, 6]))],
      ['c.f16', tensor('f16', [2], new Uint16Array([0x3c00, 0xc000]))],
      ['d.bf16', tensor('bf16', [1], new Uint16Array([0x4049]))],
      ['e.i64', tensor('i64', [1], new BigInt64Array([-5n]))],
      ['f.i32', tensor('i32', [2], new Int32Array([-7, 9]))],
      ['g.i16', tensor('i16', [1], new Int16Array([-300]))],
      ['h.i8', tensor('i8', [2], new Int8Array([-1, 1]))],
      ['i.u8', tensor('u8', [3], new Uint8Array([0, 128, 255]))],
      ['j.bool', tensor('bool', [2], new Uint8Array([1, 0]))],
      ['k.empty', tensor('f32', [0, 4], new Float32Array(0))],
    ]);
    const path = join(dir, 'all.safetensors');
    await writeSafetensors(path, tensors, { metadata: { format: 'pt' } });
    const raw = await readFile(path);
    const headerLen = Number(new DataView(raw.buffer, raw.byteOffset).getBigUint64(0, true));
    expect(headerLen % 8).toBe(0);
    const header = JSON.parse(raw.subarray(8, 8 + headerLen).toString('utf8'));
    expect(header['c.f16']).toEqual({ dtype: 'F16', shape: [2], data_offsets: [48, 52] });
    const back = await readSafetensors(path);
    expect(back.metadata).toEqual({ format: 'pt' });
    for (const [name, t] of tensors) {
      const r = back.tensors.get(name)!;
      expect(r.dtype).toBe(t.dtype);
      expect(r.shape).toEqual(t.shape);
      expect([...(r.data as ArrayLike<unknown> as unknown[])]).toEqual([
        ...(t.data as ArrayLike<unknown> as unknown[]),
      ]);
    }
    // No temporary files left behind.
    expect((await readdir(dir)).filter((n) => n.includes('.tmp-'))).toEqual([]);
  });

  it('streams tensors produced on demand, one at a time', async () => {
    const produced: string[] = [];
    const path = join(dir, 'stream.safetensors');
    await writeSafetensors(path, [
      {
        name: 'x',
        dtype: 'f32',
        shape: [2],
        data: () => {
          produced.push('x');
          return new Float32Array([1, 2]);
        },
      },
      {
        name: 'y',
        dtype: 'u8',
        shape: [1],
        data: async () => {
          produced.push('y');
          return new Uint8Array([7]);
        },
      },
    ]);
    expect(produced).toEqual(['x', 'y']);
    const { tensors } = await readSafetensors(path);
    expect([...(tensors.get('y')!.data as Uint8Array)]).toEqual([7]);
  });

  it('writes a tensor given in pieces through one reused buffer: the bytes of the whole tensor', async () => {
    const values = Float32Array.from({ length: 10 }, (_, i) => i * 1.5 - 4);
    const path = join(dir, 'pieces.safetensors');
    const reused = new Float32Array(4);
    const requested: number[] = [];
    async function* pieces() {
      for (let at = 0; at < values.length; at += 4) {
        const n = Math.min(4, values.length - at);
        requested.push(at);
        reused.set(values.subarray(at, at + n));
        yield reused.subarray(0, n); // the previous piece must already be on its way to disk
      }
    }
    await writeSafetensors(path, [
      { name: 'w', dtype: 'f32', shape: [2, 5], data: pieces },
      { name: 'b', dtype: 'u8', shape: [1], data: new Uint8Array([9]) },
    ]);
    expect(requested).toEqual([0, 4, 8]);
    const header = {
      w: { dtype: 'F32', shape: [2, 5], data_offsets: [0, 40] },
      b: { dtype: 'U8', shape: [1], data_offsets: [40, 41] },
    };
    const data = new Uint8Array(41);
    data.set(new Uint8Array(values.buffer), 0);
    data[40] = 9;
    const json = JSON.stringify(header);
    expect(await readFile(path)).toEqual(
      Buffer.from(handMade(header, data, Math.ceil(json.length / 8) * 8 - json.length)),
    );
  });

  it('refuses pieces that do not add up to the declared tensor, leaving nothing behind', async () => {
    for (const [label, make] of [
      [
        'too few',
        async function* () {
          yield new Float32Array(3);
        },
      ],
      [
        'too many',
        async function* () {
          yield new Float32Array(3);
          yield new Float32Array(2);
        },
      ],
      [
        'wrong dtype',
        async function* () {
          yield new Float64Array(4);
        },
      ],
    ] as const) {
      const path = join(dir, `bad-pieces-${label.replace(' ', '-')}.safetensors`);
      await expect(
        writeSafetensors(path, [{ name: 'w', dtype: 'f32', shape: [4], data: make }]),
        label,
      ).rejects.toMatchObject({ code: 'SHAPE_MISMATCH' });
      expect(existsSync(path), label).toBe(false);
    }
    expect((await readdir(dir)).filter((n) => n.includes('.tmp-'))).toEqual([]);
  });

  it('leaves nothing behind and keeps the old file when a write fails', async () => {
    const path = join(dir, 'keep.safetensors');
    await writeSafetensors(path, [
      { name: 'x', dtype: 'f32', shape: [1], data: new Float32Array([42]) },
    ]);
    const before = await readFile(path);
    await expect(
      writeSafetensors(path, [
        { name: 'x', dtype: 'f32', shape: [4], data: new Float32Array(3) }, // wrong length
      ]),
    ).rejects.toMatchObject({ code: 'SHAPE_MISMATCH' });
    expect(await readFile(path)).toEqual(before);
    expect((await readdir(dir)).filter((n) => n.includes('.tmp-'))).toEqual([]);
  });

  it('opens a large file lazily: the header only', async () => {
    // A sparse 3 GB file: the tensor data is never read, only the header.
    const path = join(dir, 'big.safetensors');
    const size = 3 * 1024 ** 3;
    const header = handMade(
      { big: { dtype: 'U8', shape: [size], data_offsets: [0, size] } },
      new Uint8Array(0),
    );
    await writeFile(path, header);
    const { truncate } = await import('node:fs/promises');
    await truncate(path, header.length + size);
    const rssBefore = process.memoryUsage().rss;
    const f = await SafetensorsFile.open(path);
    expect(f.entry('big').byteLength).toBe(size);
    await f.close();
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(64 * 1024 * 1024);
  });
});

describe('safetensors validation', () => {
  const ok = () => ({
    a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
    b: { dtype: 'U8', shape: [4], data_offsets: [8, 12] },
  });
  const data = new Uint8Array(12);

  it('accepts the valid base case', () => {
    expect(parseSafetensorsBuffer(handMade(ok(), data)).tensors.size).toBe(2);
  });
  it('refuses a short file', () =>
    expectCode(() => parseSafetensorsBuffer(new Uint8Array(5)), 'SAFETENSORS_TRUNCATED'));
  it('refuses a header length past the end', () => {
    const b = handMade(ok(), data);
    new DataView(b.buffer).setBigUint64(0, BigInt(b.length), true);
    expectCode(() => parseSafetensorsBuffer(b), 'SAFETENSORS_TRUNCATED');
  });
  it('refuses an absurd header length', () => {
    const b = handMade(ok(), data);
    new DataView(b.buffer).setBigUint64(0, 2n ** 62n, true);
    expectCode(() => parseSafetensorsBuffer(b), 'SAFETENSORS_HEADER_TOO_LARGE');
  });
  it('refuses truncated data', () =>
    expectCode(
      () => parseSafetensorsBuffer(handMade(ok(), data).subarray(0, -1)),
      'SAFETENSORS_TRUNCATED',
    ));
  it('refuses trailing bytes', () =>
    expectCode(
      () => parseSafetensorsBuffer(handMade(ok(), new Uint8Array(13))),
      'SAFETENSORS_LAYOUT_INVALID',
    ));
  it('refuses non-JSON', () => {
    const b = handMade(ok(), data);
    b[9] = 0x7b; // '{{' is not JSON
    expectCode(() => parseSafetensorsBuffer(b), 'SAFETENSORS_HEADER_INVALID');
  });
  it('refuses unknown dtypes', () => {
    const h = ok();
    h.a.dtype = 'F8_E4M3';
    expectCode(() => parseSafetensorsBuffer(handMade(h, data)), 'SAFETENSORS_DTYPE_UNSUPPORTED');
  });
  it('refuses shape x itemsize != byte length', () => {
    const h = ok();
    h.a.shape = [3];
    expectCode(() => parseSafetensorsBuffer(handMade(h, data)), 'SAFETENSORS_SIZE_MISMATCH');
  });
  it('refuses negative and fractional shapes', () => {
    const h = ok();
    h.a.shape = [-2];
    expectCode(() => parseSafetensorsBuffer(handMade(h, data)), 'SAFETENSORS_HEADER_INVALID');
    h.a.shape = [1.5];
    expectCode(() => parseSafetensorsBuffer(handMade(h, data)), 'SAFETENSORS_HEADER_INVALID');
  });
  it('refuses overlaps and gaps', () => {
    const h = ok();
    h.b.data_offsets = [4, 8];
    h.b.shape = [4];
    expectCode(
      () => parseSafetensorsBuffer(handMade(h, new Uint8Array(8))),
      'SAFETENSORS_LAYOUT_INVALID',
    );
    const g = ok();
    g.b.data_offsets = [9, 13];
    expectCode(
      () => parseSafetensorsBuffer(handMade(g, new Uint8Array(13))),
      'SAFETENSORS_LAYOUT_INVALID',
    );
  });
  it('refuses duplicate tensor names (which JSON.parse would silently merge)', () => {
    const text =
      '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}';
    const json = new TextEncoder().encode(text);
    const b = new Uint8Array(8 + json.length + 1);
    new DataView(b.buffer).setBigUint64(0, BigInt(json.length), true);
    b.set(json, 8);
    expectCode(() => parseSafetensorsBuffer(b), 'SAFETENSORS_DUPLICATE');
  });
  it('refuses non-string metadata and names the file and tensor', () => {
    const h = { __metadata__: { n: 1 }, ...ok() };
    expectCode(() => parseSafetensorsBuffer(handMade(h, data)), 'SAFETENSORS_HEADER_INVALID');
    const bad = ok();
    bad.b.shape = [5];
    try {
      parseSafetensorsBuffer(handMade(bad, data), 'model.safetensors');
    } catch (e) {
      expect((e as Error).message).toContain('model.safetensors');
      expect((e as Error).message).toContain('"b"');
    }
  });
  it('gives FILE_NOT_FOUND for a missing path and TENSOR_NOT_FOUND for a missing name', async () => {
    await expect(SafetensorsFile.open(join(dir, 'nope.safetensors'))).rejects.toMatchObject({
      code: 'FILE_NOT_FOUND',
    });
    const path = join(dir, 'small.safetensors');
    await writeFile(path, handMade(ok(), data));
    const f = await SafetensorsFile.open(path);
    expect(() => f.entry('zzz')).toThrow(expect.objectContaining({ code: 'TENSOR_NOT_FOUND' }));
    await f.close();
  });
});

describe('atomic writes keep our errors', () => {
  it("passes another package's LoraError through unchanged (not wrapped as FILE_WRITE_FAILED)", async () => {
    const { LoraError } = await import('../errors.js');
    class OtherError extends LoraError {}
    const path = join(dir, 'other-error.safetensors');
    await expect(
      writeSafetensors(path, [
        {
          name: 'x',
          dtype: 'f32',
          shape: [1],
          data: () => {
            throw new OtherError('WEIGHT_NOT_FINITE', 'x has a NaN at index 0');
          },
        },
      ]),
    ).rejects.toMatchObject({ code: 'WEIGHT_NOT_FINITE' });
    expect(existsSync(path)).toBe(false);
  });
});
