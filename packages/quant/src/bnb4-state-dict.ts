import { parseJsonText, type Tensor, type TensorToWrite, writeSafetensors } from '@lora/core';
import { codeTable } from './blockwise.js';
import { DYNAMIC_MAP } from './codebooks.js';
import { DOUBLE_QUANT_BLOCK_SIZE, type DoubleQuantizedAbsmax } from './double-quant.js';
import { QuantError } from './errors.js';
import { type Bnb4Weight, isDoubleQuantized, numelOf, type WeightDType } from './bnb4-weight.js';
import type { Bnb4Format } from './formats.js';
import { PyFloat, pythonJsonDumps } from './python-json.js';

/**
 * The bitsandbytes state-dict layout, as transformers saves a 4-bit `Linear4bit` (one weight
 * `<name>` becomes several tensors):
 *
 * | key | contents |
 * |---|---|
 * | `<name>` | packed codes, uint8 `[ceil(n/2), 1]` |
 * | `<name>.absmax` | float32 `[blocks]`, or uint8 `[blocks]` when double-quantized |
 * | `<name>.quant_map` | float32 `[16]`, the code table |
 * | `<name>.nested_absmax` | float32 `[ceil(blocks/256)]` (double quant only) |
 * | `<name>.nested_quant_map` | float32 `[256]`, the dynamic map (double quant only) |
 * | `<name>.quant_state.bitsandbytes__nf4` (or `__fp4`) | uint8 UTF-8 JSON: quant_type, blocksize, dtype, shape, nested_* |
 */
export const BNB4_QUANT_STATE_PREFIX = '.quant_state.bitsandbytes__';

const TORCH_DTYPE: Record<WeightDType, string> = {
  f32: 'float32',
  f16: 'float16',
  bf16: 'bfloat16',
};
const FROM_TORCH_DTYPE: Record<string, WeightDType> = {
  float32: 'f32',
  float16: 'f16',
  bfloat16: 'bf16',
};

/** The torch name of a weight dtype (`float32`, `float16`, `bfloat16`). */
export function torchDTypeName(dtype: WeightDType): string {
  return TORCH_DTYPE[dtype];
}

/** What the JSON state of a bitsandbytes weight records. */
export interface Bnb4StateDescriptor {
  format: Bnb4Format;
  blockSize: number;
  dtype: WeightDType;
  shape: readonly number[];
  /** Present when absmax is double-quantized. */
  nested?: { blockSize: number; offset: number };
}

export function describeBnb4(w: Bnb4Weight): Bnb4StateDescriptor {
  const { format, blockSize, dtype, shape } = w;
  return isDoubleQuantized(w.absmax)
    ? {
        format,
        blockSize,
        dtype,
        shape,
        nested: { blockSize: w.absmax.blockSize, offset: w.absmax.offset },
      }
    : { format, blockSize, dtype, shape };
}

/** The JSON bitsandbytes packs into `quant_state.bitsandbytes__<type>`, byte for byte. */
export function bnb4QuantStateJson(w: Bnb4Weight | Bnb4StateDescriptor): string {
  const d = 'packed' in w ? describeBnb4(w) : w;
  const state: Record<string, unknown> = {
    quant_type: d.format,
    blocksize: d.blockSize,
    dtype: TORCH_DTYPE[d.dtype],
    shape: [...d.shape],
  };
  if (d.nested) {
    state.nested_blocksize = d.nested.blockSize;
    state.nested_dtype = 'float32';
    state.nested_offset = new PyFloat(d.nested.offset);
  }
  return pythonJsonDumps(state);
}

/** Names, dtypes and shapes of the tensors {@link bnb4StateDictEntries} writes, without data. */
export function bnb4StateDictSpecs(
  name: string,
  d: Bnb4StateDescriptor,
): { name: string; dtype: 'u8' | 'f32'; shape: number[] }[] {
  const n = numelOf(d.shape);
  const blocks = Math.ceil(n / d.blockSize);
  const json = new TextEncoder().encode(bnb4QuantStateJson(d));
  const specs: { name: string; dtype: 'u8' | 'f32'; shape: number[] }[] = [
    { name, dtype: 'u8', shape: [Math.ceil(n / 2), 1] },
  ];
  if (d.nested) {
    specs.push(
      { name: `${name}.absmax`, dtype: 'u8', shape: [blocks] },
      {
        name: `${name}.nested_absmax`,
        dtype: 'f32',
        shape: [Math.ceil(blocks / d.nested.blockSize)],
      },
      { name: `${name}.nested_quant_map`, dtype: 'f32', shape: [256] },
    );
  } else {
    specs.push({ name: `${name}.absmax`, dtype: 'f32', shape: [blocks] });
  }
  specs.push(
    { name: `${name}.quant_map`, dtype: 'f32', shape: [16] },
    { name: `${name}${BNB4_QUANT_STATE_PREFIX}${d.format}`, dtype: 'u8', shape: [json.length] },
  );
  return specs;
}

/**
 * The tensors of one weight in the bitsandbytes layout, in the order they are written.
 * Data may be given lazily (`weight` a function) so files can be streamed.
 */
export function bnb4StateDictEntries(name: string, w: Bnb4Weight): TensorToWrite[] {
  const n = numelOf(w.shape);
  const json = new TextEncoder().encode(bnb4QuantStateJson(w));
  const entries: TensorToWrite[] = [
    { name, dtype: 'u8', shape: [Math.ceil(n / 2), 1], data: w.packed },
  ];
  if (isDoubleQuantized(w.absmax)) {
    entries.push(
      { name: `${name}.absmax`, dtype: 'u8', shape: [w.absmax.codes.length], data: w.absmax.codes },
      {
        name: `${name}.nested_absmax`,
        dtype: 'f32',
        shape: [w.absmax.absmax2.length],
        data: w.absmax.absmax2,
      },
      {
        name: `${name}.nested_quant_map`,
        dtype: 'f32',
        shape: [256],
        data: new Float32Array(w.absmax.codeTable),
      },
    );
  } else {
    entries.push({
      name: `${name}.absmax`,
      dtype: 'f32',
      shape: [w.absmax.length],
      data: w.absmax,
    });
  }
  entries.push(
    {
      name: `${name}.quant_map`,
      dtype: 'f32',
      shape: [16],
      data: new Float32Array(codeTable(w.format)),
    },
    {
      name: `${name}${BNB4_QUANT_STATE_PREFIX}${w.format}`,
      dtype: 'u8',
      shape: [json.length],
      data: json,
    },
  );
  return entries;
}

/** Writes weights (and any plain tensors) as one safetensors file in the bitsandbytes layout, atomically. */
export async function writeBnb4StateDict(
  path: string,
  weights: ReadonlyMap<string, Bnb4Weight>,
  plain: ReadonlyMap<string, Tensor> = new Map(),
  metadata: Record<string, string> = { format: 'pt' },
): Promise<void> {
  const entries: TensorToWrite[] = [];
  for (const [name, w] of weights) entries.push(...bnb4StateDictEntries(name, w));
  for (const [name, t] of plain)
    entries.push({ name, dtype: t.dtype, shape: t.shape, data: t.data });
  await writeSafetensors(path, entries, { metadata });
}

/** Where tensors are read from: an open `SafetensorsFile` or a map of tensors. */
export interface TensorSource {
  has(name: string): boolean;
  read(name: string): Promise<Tensor> | Tensor;
}

/** Wraps a map of tensors as a {@link TensorSource}. */
export function mapSource(tensors: ReadonlyMap<string, Tensor>): TensorSource {
  return {
    has: (name) => tensors.has(name),
    read: (name) => {
      const t = tensors.get(name);
      if (!t)
        throw new QuantError('QUANT_STATE_INVALID', `tensor "${name}" is missing.`, {
          tensor: name,
        });
      return t;
    },
  };
}

/** Names of the bitsandbytes 4-bit weights among `names` (those with a `quant_state` sibling). */
export function findBnb4Weights(names: Iterable<string>): string[] {
  const out: string[] = [];
  for (const n of names) {
    const i = n.indexOf(BNB4_QUANT_STATE_PREFIX);
    if (i > 0) out.push(n.slice(0, i));
  }
  return out;
}

/** All keys a bitsandbytes weight occupies (to tell them from plain tensors). */
export function bnb4Keys(name: string, format: Bnb4Format): string[] {
  return [
    name,
    `${name}.absmax`,
    `${name}.quant_map`,
    `${name}.nested_absmax`,
    `${name}.nested_quant_map`,
    `${name}${BNB4_QUANT_STATE_PREFIX}${format}`,
  ];
}

function bad(name: string, what: string): never {
  throw new QuantError('QUANT_STATE_INVALID', `${name}: ${what}`, { tensor: name });
}

/** Reads one bitsandbytes 4-bit weight (and checks every size against its JSON state). */
export async function readBnb4Weight(source: TensorSource, name: string): Promise<Bnb4Weight> {
  const format: Bnb4Format | undefined = source.has(`${name}${BNB4_QUANT_STATE_PREFIX}nf4`)
    ? 'nf4'
    : source.has(`${name}${BNB4_QUANT_STATE_PREFIX}fp4`)
      ? 'fp4'
      : undefined;
  if (!format)
    bad(
      name,
      'no quant_state.bitsandbytes__nf4 / __fp4 tensor; this is not a bitsandbytes 4-bit weight.',
    );
  const stateTensor = await source.read(`${name}${BNB4_QUANT_STATE_PREFIX}${format}`);
  let state: Record<string, unknown>;
  try {
    state = parseJsonText(
      new TextDecoder().decode(stateTensor.data as Uint8Array),
      'quant_state',
    ) as Record<string, unknown>;
  } catch (e) {
    bad(name, `the quant_state tensor is not usable UTF-8 JSON (${(e as Error).message}).`);
  }
  const blockSize = state.blocksize;
  const shape = state.shape;
  const dtype = FROM_TORCH_DTYPE[String(state.dtype)];
  if (typeof blockSize !== 'number' || !Array.isArray(shape) || !dtype) {
    bad(
      name,
      `quant_state needs blocksize, shape and dtype (float32/float16/bfloat16); got ${JSON.stringify(state)}.`,
    );
  }
  if (state.quant_type !== format)
    bad(
      name,
      `quant_state says quant_type ${String(state.quant_type)} but the key says ${format}.`,
    );
  const n = numelOf(shape as number[]);
  const blocks = Math.ceil(n / blockSize);
  const packed = await source.read(name);
  if (packed.dtype !== 'u8' || packed.data.length !== Math.ceil(n / 2)) {
    bad(
      name,
      `packed weight must be uint8 with ${Math.ceil(n / 2)} bytes for shape [${(shape as number[]).join(', ')}], got ${packed.dtype} with ${packed.data.length}.`,
    );
  }
  const absmaxTensor = await source.read(`${name}.absmax`);
  let absmax: Float32Array | DoubleQuantizedAbsmax;
  if (state.nested_blocksize !== undefined) {
    const nestedBlockSize = Number(state.nested_blocksize);
    const absmax2 = await source.read(`${name}.nested_absmax`);
    const map = source.has(`${name}.nested_quant_map`)
      ? await source.read(`${name}.nested_quant_map`)
      : undefined;
    if (absmaxTensor.dtype !== 'u8' || absmaxTensor.data.length !== blocks)
      bad(name, `nested absmax codes must be uint8 [${blocks}].`);
    if (absmax2.dtype !== 'f32' || absmax2.data.length !== Math.ceil(blocks / nestedBlockSize)) {
      bad(name, `nested_absmax must be float32 [${Math.ceil(blocks / nestedBlockSize)}].`);
    }
    absmax = {
      codes: absmaxTensor.data as Uint8Array,
      absmax2: absmax2.data as Float32Array,
      offset: Math.fround(Number(state.nested_offset)),
      blockSize: nestedBlockSize || DOUBLE_QUANT_BLOCK_SIZE,
      codeTable:
        map && map.dtype === 'f32' && map.data.length === 256
          ? (map.data as Float32Array)
          : DYNAMIC_MAP,
    };
  } else {
    if (absmaxTensor.dtype !== 'f32' || absmaxTensor.data.length !== blocks)
      bad(name, `absmax must be float32 [${blocks}].`);
    absmax = absmaxTensor.data as Float32Array;
  }
  return {
    format,
    shape: (shape as number[]).map(Number),
    dtype,
    blockSize,
    packed: packed.data as Uint8Array,
    absmax,
  };
}

/** Reads every bitsandbytes 4-bit weight of a source, keyed by weight name. */
export async function readBnb4StateDict(
  source: TensorSource,
  names: Iterable<string>,
): Promise<Map<string, Bnb4Weight>> {
  const out = new Map<string, Bnb4Weight>();
  for (const name of findBnb4Weights(names)) out.set(name, await readBnb4Weight(source, name));
  return out;
}
