import { type DType, numel, strides } from '@lora/core';
import type { RefTensor } from './types.js';

/** Plain float64 helpers the reference ops share. Clarity over speed: these only run at test sizes. */

export function ref(
  dtype: DType,
  shape: readonly number[],
  data?: Float64Array | readonly number[],
): RefTensor {
  const values = data === undefined ? new Float64Array(numel(shape)) : Float64Array.from(data);
  return { dtype, shape: [...shape], data: values };
}

/** NumPy broadcast of concrete shapes. */
export function broadcastConcrete(shapes: readonly (readonly number[])[]): number[] {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out = new Array<number>(rank).fill(1);
  for (const s of shapes) {
    for (let i = 0; i < s.length; i++) {
      const o = rank - s.length + i;
      if (s[i] !== 1) {
        if (out[o] !== 1 && out[o] !== s[i])
          throw new Error(`reference: shapes do not broadcast: ${JSON.stringify(shapes)}`);
        out[o] = s[i];
      }
    }
  }
  return out;
}

/** Strides of `shape` seen through a broadcast to `outShape` (0 along broadcast dimensions). */
export function broadcastStrides(shape: readonly number[], outShape: readonly number[]): number[] {
  const own = strides(shape);
  const out = new Array<number>(outShape.length).fill(0);
  for (let i = 0; i < shape.length; i++) {
    const o = outShape.length - shape.length + i;
    out[o] = shape[i] === 1 ? 0 : own[i];
  }
  return out;
}

/** Calls `visit(outIndex, offsets)` for every element of `outShape`, with each input's flat offset. */
export function forEachBroadcast(
  outShape: readonly number[],
  inputStrides: readonly (readonly number[])[],
  visit: (outIndex: number, offsets: readonly number[]) => void,
): void {
  const rank = outShape.length;
  const total = numel(outShape);
  const counter = new Array<number>(rank).fill(0);
  const offsets = new Array<number>(inputStrides.length).fill(0);
  for (let flat = 0; flat < total; flat++) {
    visit(flat, offsets);
    for (let d = rank - 1; d >= 0; d--) {
      counter[d]++;
      for (let k = 0; k < offsets.length; k++) offsets[k] += inputStrides[k][d];
      if (counter[d] < outShape[d]) break;
      for (let k = 0; k < offsets.length; k++) offsets[k] -= inputStrides[k][d] * outShape[d];
      counter[d] = 0;
    }
  }
}

/** Elementwise op over broadcast inputs. */
export function mapBroadcast(
  inputs: readonly RefTensor[],
  dtype: DType,
  fn: (values: readonly number[]) => number,
): RefTensor {
  const outShape = broadcastConcrete(inputs.map((t) => t.shape));
  const out = new Float64Array(numel(outShape));
  const st = inputs.map((t) => broadcastStrides(t.shape, outShape));
  const vals = new Array<number>(inputs.length);
  forEachBroadcast(outShape, st, (i, offs) => {
    for (let k = 0; k < inputs.length; k++) vals[k] = inputs[k].data[offs[k]];
    out[i] = fn(vals);
  });
  return { dtype, shape: outShape, data: out };
}

/** Generic gather of elements by output multi-index: out[idx] = src[source(idx)]. */
export function permuteCopy(
  src: RefTensor,
  outShape: readonly number[],
  sourceOffset: (index: readonly number[]) => number,
): RefTensor {
  const out = new Float64Array(numel(outShape));
  const counter = new Array<number>(outShape.length).fill(0);
  for (let flat = 0; flat < out.length; flat++) {
    out[flat] = src.data[sourceOffset(counter)];
    for (let d = outShape.length - 1; d >= 0; d--) {
      counter[d]++;
      if (counter[d] < outShape[d]) break;
      counter[d] = 0;
    }
  }
  return { dtype: src.dtype, shape: [...outShape], data: out };
}

/** Rounds a double to the value a dtype can hold (floats keep full precision: the reference is float64). */
export function castValue(v: number, to: DType): number {
  switch (to) {
    case 'f64':
    case 'f32':
    case 'f16':
    case 'bf16':
      return v;
    case 'bool':
      return v !== 0 ? 1 : 0;
    default:
      return Math.trunc(v);
  }
}
