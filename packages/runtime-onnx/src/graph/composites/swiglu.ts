import type { GraphBuilder } from '../builder.js';
import * as op from '../ops.js';
import type { Value } from '../types.js';
import { scalarLike, sumToShape } from '../vjp-helpers.js';

/**
 * The SwiGLU gate of LLaMA's MLP: silu(gate) * up = gate * sigmoid(gate) * up (elementwise).
 *
 * Backward as one rule, with s = sigmoid(gate) from the forward pass:
 * dup = dy * silu(gate), dgate = dy * up * (s + silu(gate) * (1 - s)).
 */
export function swiglu(g: GraphBuilder, gate: Value, up: Value): Value {
  const [y] = g.region(
    'swiglu',
    [gate, up],
    () => {
      const s = op.sigmoid(g, gate);
      const silu = op.mul(g, gate, s);
      return { outputs: [op.mul(g, silu, up)], saved: [s, silu] };
    },
    (g, { inputs: [gt, u], grads: [dy], saved: [s, silu], needs }) => {
      const d = dy as Value;
      const gateValue = gt as Value;
      const one = scalarLike(g, gateValue, 1);
      // silu'(gate) = s * (1 + gate * (1 - s)) = s + silu * (1 - s): one pass fewer.
      const dsilu = needs[0] ? op.add(g, s, op.mul(g, silu, op.sub(g, one, s))) : undefined;
      const upValue = u as Value;
      return [
        dsilu && sumToShape(g, op.mul(g, op.mul(g, d, upValue), dsilu), gateValue.shape),
        needs[1] ? sumToShape(g, op.mul(g, d, silu), upValue.shape) : undefined,
      ];
    },
  );
  return y;
}
