/**
 * `torch.nn.utils.clip_grad_norm_(params, maxNorm)` with the 2-norm: the total norm is the norm of
 * all gradients together; when `maxNorm > 0` every gradient is multiplied by
 * `min(1, maxNorm / (totalNorm + 1e-6))` (in place). Returns the total norm BEFORE clipping (what
 * transformers logs as `grad_norm`). Accumulates in float64 (torch: float32 per-tensor norms).
 * `maxNorm` 0 computes the norm and leaves the gradients alone.
 */
export function clipGradNorm(grads: readonly Float32Array[], maxNorm: number): number {
  let sumSquares = 0;
  for (const g of grads) {
    let s = 0;
    for (let i = 0; i < g.length; i++) s += g[i] * g[i];
    sumSquares += s;
  }
  const totalNorm = Math.sqrt(sumSquares);
  if (maxNorm > 0) {
    const coef = Math.min(1, maxNorm / (totalNorm + 1e-6));
    if (coef < 1) {
      const c = Math.fround(coef);
      for (const g of grads) for (let i = 0; i < g.length; i++) g[i] *= c;
    }
  }
  return totalNorm;
}
