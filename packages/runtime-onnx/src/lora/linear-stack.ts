import { type Tensor, tensor } from '@lora/core';
import { GraphBuilder } from '../graph/builder.js';
import * as op from '../graph/ops.js';
import type { Graph, Value } from '../graph/types.js';
import { denseLinear, emitLinear, type LinearHook } from '../models/linear.js';

/**
 * A stack of LLaMA-shaped linears without attention or norms, for measuring what LoRA branches
 * cost: per layer q, k, v (reading the same x), o, then gate and up (reading the same x) and
 * down, joined by adds and a product so every linear's output is used:
 *
 *   a = x + o(q(x) + k(x) + v(x));   out = a + down(gate(a) * up(a))      x: [batch, seq, hidden]
 *
 * Module names are LLaMA's (`model.layers.{l}.self_attn.q_proj`, ...), so LoRA adapters and the
 * {@link LinearHook} see exactly what they see on the real model.
 */
export interface LinearStackShape {
  readonly hidden: number;
  readonly intermediate: number;
  readonly layers: number;
}

const ATTN = ['q_proj', 'k_proj', 'v_proj', 'o_proj'] as const;
const MLP = ['gate_proj', 'up_proj', 'down_proj'] as const;

/** Module names and torch shapes [out, in] of every linear of the stack. */
export function linearStackModules(
  shape: LinearStackShape,
): { module: string; out: number; in: number }[] {
  const list: { module: string; out: number; in: number }[] = [];
  const { hidden: H, intermediate: I } = shape;
  for (let l = 0; l < shape.layers; l++) {
    for (const n of ATTN) list.push({ module: `model.layers.${l}.self_attn.${n}`, out: H, in: H });
    list.push({ module: `model.layers.${l}.mlp.gate_proj`, out: I, in: H });
    list.push({ module: `model.layers.${l}.mlp.up_proj`, out: I, in: H });
    list.push({ module: `model.layers.${l}.mlp.down_proj`, out: H, in: I });
  }
  return list;
}

/**
 * The stack's graph: input `x` [batch, seq, hidden], output `y`. `weights` maps
 * `<module>.weight` to torch-layout [out, in] f32 tensors.
 */
export function buildLinearStackGraph(
  shape: LinearStackShape,
  weights: ReadonlyMap<string, Tensor<'f32'>>,
  linearHook?: LinearHook,
): Graph {
  const g = new GraphBuilder('linear_stack');
  let x: Value = g.input('x', 'f32', ['batch', 'sequence', shape.hidden]);
  const linear = (module: string, input: Value, layer: number) => {
    const w = weights.get(`${module}.weight`);
    if (!w) throw new Error(`linear stack: no weight for ${module}`);
    const [out, inF] = w.shape;
    return emitLinear(
      g,
      module,
      input,
      denseLinear(w.data, out, inF),
      undefined,
      linearHook && { fn: linearHook, layer },
    );
  };
  for (let l = 0; l < shape.layers; l++) {
    const p = `model.layers.${l}`;
    const [q, k, v] = ATTN.slice(0, 3).map((n) => linear(`${p}.self_attn.${n}`, x, l));
    const attn = linear(`${p}.self_attn.o_proj`, op.add(g, op.add(g, q, k), v), l);
    const a = op.add(g, x, attn);
    const [gate, up] = MLP.slice(0, 2).map((n) => linear(`${p}.mlp.${n}`, a, l));
    x = op.add(g, a, linear(`${p}.mlp.down_proj`, op.mul(g, gate, up), l));
  }
  g.output(x, 'y');
  return g.build();
}

/** Random weights for the stack (uniform in ±1/sqrt(in), so activations stay O(1)). */
export function randomLinearStackWeights(
  shape: LinearStackShape,
  seed = 1,
): Map<string, Tensor<'f32'>> {
  let state = seed >>> 0;
  const rand = () => {
    // xorshift32: fast, deterministic; quality is irrelevant for timing
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 4294967296;
  };
  const out = new Map<string, Tensor<'f32'>>();
  for (const { module, out: o, in: i } of linearStackModules(shape)) {
    const data = new Float32Array(o * i);
    const s = 1 / Math.sqrt(i);
    for (let k = 0; k < data.length; k++) data[k] = (rand() * 2 - 1) * s;
    out.set(`${module}.weight`, tensor('f32', [o, i], data));
  }
  return out;
}
