import type { SessionOptions } from '../session/session.js';

/**
 * onnxruntime optimizer settings for training graphs (forward + backward in one inference session).
 *
 * Measured on onnxruntime-node 1.30 (`session-options.test.ts` keeps the evidence):
 * - at the default level (`'all'`, and already at `'basic'`), ConstantFolding evaluates the in-graph
 *   dequantize of a 4-bit initializer once and stores the result as a float32 initializer: the
 *   session then holds W in float32 and the 4-bit saving is gone;
 * - with only ConstantFolding turned off, the packed bytes stay the initializers, and the other
 *   optimizers still run: `MatMul(dY, Transpose(W))` becomes one `FusedMatMul(transB = 1)` on the
 *   single W (no transposed copy), elementwise fusions apply;
 * - common-subexpression elimination stays on: it would merge a recomputed subgraph back into the
 *   original (defeating gradient checkpointing), but these graphs do not recompute, and merging
 *   identical work is then a pure saving.
 *
 * The key is onnxruntime's session config entry `optimization.disable_specified_optimizers`.
 */
export const TRAINING_OPTIMIZATION: NonNullable<SessionOptions['optimization']> = {
  level: 'all',
  disabledOptimizers: ['ConstantFolding'],
};
