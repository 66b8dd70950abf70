import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LoraError } from '../errors.js';
import { type Tensor, tensor } from '../tensor.js';
import { parseSafetensorsBuffer, SafetensorsFile } from './reader.js';
import { writeSafetensors } from './writer.js';

// A small deterministic generator for the fuzzer itself (independent of the library's RNG).
function lcg(seed: number) {
  let s = seed >>> 0;
  return (n: number) => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return Math.floor((s / 2 ** 32) * n);
  };
}

const DTYPE_NAMES = [
  'F64',
  'F32',
  'F16',
  'BF16',
  'I64',
  'I32',
  'I16',
  'I8',
  'U8',
  'BOOL',
  'U16',
  'F8_E4M3',
  'X',
  '',
];

function mutate(valid: Uint8Array, rand: (n: number) => number): Uint8Array {
  const headerLen = Number(new DataView(valid.buffer, valid.byteOffset).getBigUint64(0, true));
  const text = new TextDecoder().decode(valid.subarray(8, 8 + headerLen));
  const withHeader = (t: string, keepLength = false) => {
    const json = new TextEncoder().encode(t);
    const out = new Uint8Array(8 + json.length + valid.length - 8 - headerLen);
    new DataView(out.buffer).setBigUint64(0, BigInt(keepLength ? headerLen : json.length), true);
    out.set(json, 8);
    out.set(valid.subarray(8 + headerLen), 8 + json.length);
    return out;
  };
  switch (rand(9)) {
    case 0: // truncate anywhere
      return valid.slice(0, rand(valid.length));
    case 1: {
      // flip random bytes in the header
      const out = valid.slice();
      for (let k = 1 + rand(4); k > 0; k--) out[8 + rand(headerLen)] ^= 1 << rand(8);
      return out;
    }
    case 2: {
      // random header length
      const out = valid.slice();
      const choices = [
        0n,
        1n,
        BigInt(headerLen - 1),
        BigInt(headerLen + 1),
        BigInt(valid.length),
        2n ** 63n,
        BigInt(rand(2 ** 31)),
      ];
      new DataView(out.buffer).setBigUint64(0, choices[rand(choices.length)], true);
      return out;
    }
    case 3: {
      // change one number in the header (offsets or shapes)
      const numbers = [...text.matchAll(/\d+/g)];
      if (numbers.length === 0) return valid;
      const m = numbers[rand(numbers.length)];
      const replacement = String(
        [0, 1, 2, 7, 8, 1e6, 2 ** 53, 2 ** 60, Number(m[0]) + 1, Number(m[0]) - 1][rand(10)],
      );
      return withHeader(text.slice(0, m.index) + replacement + text.slice(m.index! + m[0].length));
    }
    case 4: {
      // change a dtype
      const dt = [...text.matchAll(/"dtype":"([A-Z0-9_]*)"/g)];
      const m = dt[rand(dt.length)];
      const start = m.index! + 9;
      return withHeader(
        text.slice(0, start) +
          DTYPE_NAMES[rand(DTYPE_NAMES.length)] +
          text.slice(start + m[1].length),
      );
    }
    case 5: {
      // delete a slice of the header text, keeping or fixing the declared length
      const a = rand(text.length);
      const b = a + 1 + rand(10);
      return withHeader(text.slice(0, a) + text.slice(b), rand(2) === 0);
    }
    case 6: {
      // duplicate a key or inject structure
      const injections = [
        '"__metadata__":{"x":1},',
        '"w0":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},',
        '"zz":{"dtype":"U8","shape":[],"data_offsets":[0,1]},',
        '"q":[1,2],',
        '"r":null,',
        '"s":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]},',
        '"t":{"dtype":"F32","shape":[1e400],"data_offsets":[0,4]},',
      ];
      return withHeader(`{${injections[rand(injections.length)]}${text.slice(1)}`);
    }
    case 7: {
      // append or remove data bytes
      if (rand(2) === 0) return valid.slice(0, valid.length - 1 - rand(4));
      const out = new Uint8Array(valid.length + 1 + rand(16));
      out.set(valid);
      return out;
    }
    default: {
      // random garbage of a random size
      const out = new Uint8Array(rand(64));
      for (let i = 0; i < out.length; i++) out[i] = rand(256);
      return out;
    }
  }
}

/** Parses; returns 'ok' or the error code. Anything but a LoraError fails the test. */
function classify(bytes: Uint8Array): string {
  try {
    const { tensors } = parseSafetensorsBuffer(bytes);
    let total = 0;
    for (const t of tensors.values()) total += t.data.byteLength;
    // Nothing beyond the file's own size is ever allocated for tensor data.
    expect(total).toBeLessThanOrEqual(bytes.length);
    return 'ok';
  } catch (e) {
    if (!(e instanceof LoraError))
      throw new Error(`untyped error ${String(e)} for input of ${bytes.length} bytes`);
    return e.code;
  }
}

async function validFile(dir: string, variant: number): Promise<Uint8Array> {
  const path = join(dir, `valid-${variant}.safetensors`);
  const t = [
    ['w0', tensor('f32', [2, 3], new Float32Array([1, 2, 3, 4, 5, 6]))],
    ['w1', tensor('f16', [4], new Uint16Array([1, 2, 3, 4]))],
    ['w2', tensor('i64', [1], new BigInt64Array([9n]))],
    ['w3', tensor('u8', [3], new Uint8Array([1, 2, 3]))],
    ['w4', tensor('bf16', [0], new Uint16Array(0))],
  ] as const;
  await writeSafetensors(
    path,
    new Map<string, Tensor>(t.slice(0, 2 + (variant % 4))),
    variant % 2 ? { metadata: { format: 'pt' } } : {},
  );
  const { readFile } = await import('node:fs/promises');
  return new Uint8Array(await readFile(path));
}

describe('safetensors fuzz', () => {
  it('10,000 seeded mutations: every case reads correctly or raises the typed error', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lora-fuzz-'));
    try {
      const valids = await Promise.all([0, 1, 2, 3].map((v) => validFile(dir, v)));
      const rand = lcg(20261129);
      const outcomes = new Map<string, number>();
      for (let i = 0; i < 10_000; i++) {
        const code = classify(mutate(valids[i % valids.length], rand));
        outcomes.set(code, (outcomes.get(code) ?? 0) + 1);
      }
      // The mutations must exercise both outcomes and many distinct failure codes.
      expect(outcomes.get('ok') ?? 0).toBeGreaterThan(0);
      expect([...outcomes.keys()].filter((k) => k !== 'ok').length).toBeGreaterThanOrEqual(6);

      // The same through real files on disk, for a subset.
      const rand2 = lcg(7);
      for (let i = 0; i < 300; i++) {
        const bytes = mutate(valids[i % valids.length], rand2);
        const path = join(dir, 'mutant.safetensors');
        await writeFile(path, bytes);
        const expected = classify(bytes);
        let got = 'ok';
        try {
          const f = await SafetensorsFile.open(path);
          await f.readAll();
          await f.close();
        } catch (e) {
          if (!(e instanceof LoraError)) throw e;
          got = e.code;
        }
        expect(got).toBe(expected);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
