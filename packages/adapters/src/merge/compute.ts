import {
  castFloat,
  concatLowRank,
  DTYPES,
  deltaRow,
  type FloatDType,
  isFloatDType,
  type LowRankDelta,
  lowRankDelta,
  mergeLowRank,
  packLowRank,
  roundF64Into,
  type Tensor,
  type TypedArrayOf,
  toFloat64Array,
  type UnmergeResidual,
  zeroLowRankDelta,
} from '@lora/core';
import { AdapterError } from '../errors.js';
import type { LoraTerm, TensorPlan } from './plan.js';

/** The summed ΔW (core's definition) of LoRA terms on one weight of shape [rows, cols] (stored layout). */
export function deltaOfTerms(terms: readonly LoraTerm[], rows: number, cols: number): LowRankDelta {
  if (terms.length === 0) return zeroLowRankDelta(rows, cols);
  return concatLowRank(
    terms.map((t) =>
      lowRankDelta(
        { A: t.lora.A, B: t.lora.B, scaling: t.scale, fanInFanOut: t.transpose },
        t.module,
      ),
    ),
  );
}

/** The result of merging one base tensor. */
export interface MergedTensor {
  readonly tensor: Tensor;
  /** Sparse record for the exact unmerge (LoRA and dtype-cast tensors). */
  readonly residual?: UnmergeResidual;
  /** The original kept in full when the change cannot be inverted (DoRA, replaced, bias). */
  readonly original?: Tensor;
}

/** The error for a merged tensor with NaN/Inf values (nothing is written). */
export function notFinite(name: string, row: number): AdapterError {
  return new AdapterError(
    'MERGE_NOT_FINITE',
    `${name}: the merged weight has NaN or infinite values (first in row ${row}). The adapter holds NaN/Inf or its scale is too large for the output dtype; nothing was written. Check the adapter, lower its weight, or merge into a wider dtype (--dtype f32).`,
    { tensor: name, row },
  );
}

/**
 * Merges one base tensor according to its plan (undefined: only cast to `outDtype`), refusing
 * NaN/Inf results. With `capture`, also returns what the exact unmerge needs.
 */
export function mergeTensor(
  name: string,
  base: Tensor,
  plan: TensorPlan | undefined,
  outDtype: FloatDType,
  capture: boolean,
): MergedTensor {
  if (!isFloatDType(base.dtype)) {
    if (plan)
      throw new AdapterError(
        'MERGE_DTYPE_UNSUPPORTED',
        `${name}: cannot merge into a ${base.dtype} tensor.`,
        { tensor: name },
      );
    return { tensor: base };
  }
  if (!plan) {
    if (base.dtype === outDtype) return { tensor: base };
    if (base.shape.length === 0 || base.data.length === 0)
      return { tensor: castFloat(base, outDtype), original: capture ? base : undefined };
    // A cast is a merge with a rank-0 delta: same rounding, same residual.
    const rows = base.shape.length === 1 ? 1 : base.shape[0];
    const cols = base.data.length / rows;
    const flat = { dtype: base.dtype, shape: [rows, cols], data: base.data } as Tensor;
    const r = mergeLowRank(flat, deltaOfTerms([], rows, cols), outDtype, {
      captureResidual: capture,
      name,
    });
    if (r.firstNonFiniteRow >= 0) throw notFinite(name, r.firstNonFiniteRow);
    return {
      tensor: { ...r.merged, shape: [...base.shape] } as Tensor,
      residual: r.residual ? { ...r.residual, shape: [...base.shape] } : undefined,
    };
  }
  switch (plan.kind) {
    case 'replace': {
      const t = castFloat(plan.tensor, outDtype);
      checkFinite(name, t);
      return { tensor: t, original: capture ? base : undefined };
    }
    case 'bias': {
      const v = Float64Array.from(toFloat64Array(base));
      for (const term of plan.terms) {
        const b = toFloat64Array(term.bias);
        for (let i = 0; i < v.length; i++) v[i] += term.scale * b[i];
      }
      const out = DTYPES[outDtype].create(v.length);
      if (!roundF64Into(v, outDtype, out as TypedArrayOf[FloatDType])) throw notFinite(name, 0);
      return {
        tensor: { dtype: outDtype, shape: [...base.shape], data: out } as Tensor,
        original: capture ? base : undefined,
      };
    }
    case 'lora': {
      const [rows, cols] = base.shape;
      if (plan.dora)
        return {
          tensor: mergeDora(name, base, plan.terms, outDtype),
          original: capture ? base : undefined,
        };
      const r = mergeLowRank(base, deltaOfTerms(plan.terms, rows, cols), outDtype, {
        captureResidual: capture,
        name,
      });
      if (r.firstNonFiniteRow >= 0) throw notFinite(name, r.firstNonFiniteRow);
      return { tensor: r.merged, residual: r.residual };
    }
  }
}

function checkFinite(name: string, t: Tensor): void {
  const v = toFloat64Array(t);
  for (let i = 0; i < v.length; i++)
    if (!Number.isFinite(v[i])) throw notFinite(name, Math.floor(i / (t.shape.at(-1) || 1)));
}

/**
 * DoRA, as PEFT merges it, adapters applied in order: for a plain term V += ΔW; for a DoRA term
 * V = (m / ||V + ΔW||) · (V + ΔW), the norm taken per OUTPUT feature (a row of `[out, in]`, a
 * column of a fan_in_fan_out `[in, out]` weight). Works on a float64 copy of the tensor.
 */
function mergeDora(
  name: string,
  base: Tensor,
  terms: readonly LoraTerm[],
  outDtype: FloatDType,
): Tensor {
  const [rows, cols] = base.shape;
  const V = Float64Array.from(toFloat64Array(base)); // [rows, cols]
  const d = new Float64Array(cols);
  for (const term of terms) {
    const packed = packLowRank(deltaOfTerms([term], rows, cols));
    for (let i = 0; i < rows; i++) {
      deltaRow(packed, i, d);
      const o = i * cols;
      for (let j = 0; j < cols; j++) V[o + j] += d[j];
    }
    if (!term.lora.magnitude) continue;
    const m = toFloat64Array(term.lora.magnitude); // [out]
    if (!term.transpose) {
      for (let i = 0; i < rows; i++) {
        let ss = 0;
        for (let j = 0; j < cols; j++) ss += V[i * cols + j] ** 2;
        const f = m[i] / Math.sqrt(ss);
        for (let j = 0; j < cols; j++) V[i * cols + j] *= f;
      }
    } else {
      const ss = new Float64Array(cols);
      for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) ss[j] += V[i * cols + j] ** 2;
      for (let j = 0; j < cols; j++) ss[j] = m[j] / Math.sqrt(ss[j]);
      for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) V[i * cols + j] *= ss[j];
    }
  }
  const out = DTYPES[outDtype].create(rows * cols) as TypedArrayOf[FloatDType];
  for (let i = 0; i < rows; i++) {
    if (!roundF64Into(V.subarray(i * cols, (i + 1) * cols), outDtype, out, i * cols))
      throw notFinite(name, i);
  }
  return { dtype: outDtype, shape: [rows, cols], data: out } as Tensor;
}
