import type { GraphBuilder } from '../builder.js';
import * as op from '../ops.js';
import type { Value } from '../types.js';
import { sumToShape } from '../vjp-helpers.js';

/**
 * Hugging Face rotate-half rotary embedding: x * cos + rotate_half(x) * sin, with
 * rotate_half(x) = [-x2, x1] (x1, x2 the two halves of the last axis). x: [B, heads, T, D],
 * cos, sin: broadcastable to x (e.g. [B, 1, T, D]).
 *
 * Backward as one rule (cos and sin are tables, not differentiated): the transpose of a rotation
 * by the angle is the rotation by minus the angle, dx = dy * cos + [z2, -z1] with z = dy * sin.
 */
export function rope(g: GraphBuilder, x: Value, cos: Value, sin: Value, headDim: number): Value {
  const half = headDim / 2;
  const [y] = g.region(
    'rope',
    [x],
    () => {
      const x1 = op.slice(g, x, -1, 0, half);
      const x2 = op.slice(g, x, -1, half, headDim);
      const rotated = op.concat(g, [op.neg(g, x2), x1], -1);
      return { outputs: [op.add(g, op.mul(g, x, cos), op.mul(g, rotated, sin))] };
    },
    (g, { grads: [dy] }) => {
      const d = dy as Value;
      const z = op.mul(g, d, sin);
      const unrotated = op.concat(
        g,
        [op.slice(g, z, -1, half, headDim), op.neg(g, op.slice(g, z, -1, 0, half))],
        -1,
      );
      return [sumToShape(g, op.add(g, op.mul(g, d, cos), unrotated), x.shape)];
    },
  );
  return y;
}
