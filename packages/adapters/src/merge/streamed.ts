import {
  type AnyTypedArray,
  DTYPES,
  type DType,
  type FloatDType,
  isFloatDType,
  LowRankMerger,
  numel,
  type UnmergeResidual,
} from '@lora/core';
import type { ModelFiles } from '../model/model-files.js';
import { deltaOfTerms, notFinite } from './compute.js';
import type { TensorPlan } from './plan.js';

/**
 * Merging a base tensor on its way from the base file to the output, a block of rows at a time
 * through two buffers reused for every tensor of the merge: no memory is allocated per tensor
 * (first touches of fresh memory can cost more than the merge arithmetic itself), and only one
 * block of input and one of output are held. Rows are merged by core's {@link LowRankMerger}, so
 * the bytes are those of merging the whole tensor at once.
 */

/**
 * Bytes per block (input side, and output side): large enough for few system calls, small
 * enough to keep memory flat. Tests set it tiny to cross block boundaries on small tensors.
 */
export const streamBlock = { bytes: 4 << 20 };

/** The two buffers blocks go through, grown when a single row needs more. */
export class BlockBuffers {
  private input = new ArrayBuffer(0);
  private output = new ArrayBuffer(0);
  readonly blockBytes = streamBlock.bytes;

  /** Rows of `cols` elements per block when reading `inSize`-byte and writing `outSize`-byte elements. */
  rowsPerBlock(cols: number, inSize: number, outSize: number): number {
    return Math.max(1, Math.floor(this.blockBytes / (cols * Math.max(inSize, outSize))));
  }

  /** The input buffer's first `bytes` bytes. */
  in(bytes: number): Uint8Array {
    if (this.input.byteLength < bytes)
      this.input = new ArrayBuffer(Math.max(bytes, this.blockBytes));
    return new Uint8Array(this.input, 0, bytes);
  }

  /** The output buffer's first `length` elements of `dtype`. */
  out(dtype: DType, length: number): AnyTypedArray {
    const bytes = length * DTYPES[dtype].itemSize;
    if (this.output.byteLength < bytes)
      this.output = new ArrayBuffer(Math.max(bytes, this.blockBytes));
    return DTYPES[dtype].view(this.output, 0, length);
  }
}

/**
 * The output pieces of base tensor `name` (see {@link TensorToWrite}) when it can be streamed:
 * copied unchanged (no plan, same dtype), cast (no plan, another float dtype), or a plain LoRA
 * merge (not DoRA, no adapter-saved base weight). Undefined otherwise: the caller merges it in
 * memory. `done` gets the tensor's unmerge residual (with `capture`, for casts and merges) after
 * the last piece.
 */
export function streamedTensor(
  model: ModelFiles,
  name: string,
  plan: TensorPlan | undefined,
  outDtype: DType,
  capture: boolean,
  buffers: BlockBuffers,
  done: (residual: UnmergeResidual | undefined) => void,
): (() => AsyncIterable<AnyTypedArray>) | undefined {
  const e = model.entry(name);
  const elements = numel(e.shape);
  if (!plan && outDtype === e.dtype)
    return () => copyPieces(model, name, e.dtype, elements, buffers, done);
  const inDtype = e.dtype;
  if (!isFloatDType(inDtype) || !isFloatDType(outDtype) || elements === 0) return undefined;
  if (!plan) {
    if (e.shape.length === 0) return undefined;
    // A cast is a merge with a rank-0 delta (as in mergeTensor): same rounding, same residual.
    const rows = e.shape.length === 1 ? 1 : e.shape[0];
    const delta = deltaOfTerms([], rows, elements / rows);
    return () =>
      mergedPieces(model, name, e.shape, delta, inDtype, outDtype, capture, buffers, done);
  }
  if (plan.kind !== 'lora' || plan.dora || plan.newBase || e.shape.length !== 2) return undefined;
  const [rows, cols] = e.shape;
  return () => {
    const delta = deltaOfTerms(plan.terms, rows, cols); // built when written: one at a time
    return mergedPieces(model, name, e.shape, delta, inDtype, outDtype, capture, buffers, done);
  };
}

async function* copyPieces(
  model: ModelFiles,
  name: string,
  dtype: DType,
  elements: number,
  buffers: BlockBuffers,
  done: (residual: undefined) => void,
): AsyncGenerator<AnyTypedArray> {
  const size = DTYPES[dtype].itemSize;
  const per = Math.max(1, Math.floor(buffers.blockBytes / size));
  for (let at = 0; at < elements; at += per) {
    const n = Math.min(per, elements - at);
    const bytes = buffers.in(n * size);
    await model.readInto(name, at * size, bytes);
    yield DTYPES[dtype].view(bytes.buffer, 0, n);
  }
  done(undefined);
}

async function* mergedPieces(
  model: ModelFiles,
  name: string,
  shape: readonly number[],
  delta: ReturnType<typeof deltaOfTerms>,
  inDtype: FloatDType,
  outDtype: FloatDType,
  capture: boolean,
  buffers: BlockBuffers,
  done: (residual: UnmergeResidual | undefined) => void,
): AsyncGenerator<AnyTypedArray> {
  const merger = new LowRankMerger(delta, inDtype, outDtype, { captureResidual: capture, name });
  const { rows, cols } = delta;
  const inSize = DTYPES[inDtype].itemSize;
  const per = buffers.rowsPerBlock(cols, inSize, DTYPES[outDtype].itemSize);
  for (let r0 = 0; r0 < rows; r0 += per) {
    const n = Math.min(per, rows - r0);
    const bytes = buffers.in(n * cols * inSize);
    await model.readInto(name, r0 * cols * inSize, bytes);
    const out = buffers.out(outDtype, n * cols);
    const bad = merger.mergeRows(DTYPES[inDtype].view(bytes.buffer, 0, n * cols), out);
    if (bad >= 0) throw notFinite(name, bad);
    yield out;
  }
  done(capture ? merger.residual(shape) : undefined);
}
