import type { Tensor } from '@lora/core';
import { RuntimeError } from '../errors.js';
import { OPS } from './opset.js';
import type { Graph, RefTensor } from './types.js';

/** Any core tensor as a float64 reference tensor (bf16/f16 decoded exactly, int64 as doubles). */
export function toRef(t: Tensor): RefTensor {
  let data: Float64Array;
  if (t.data instanceof BigInt64Array || t.data instanceof BigUint64Array)
    data = Float64Array.from(t.data, Number);
  else if (t.dtype === 'f16' || t.dtype === 'bf16') {
    throw new RuntimeError('GRAPH_DTYPE', `toRef: decode ${t.dtype} to f32 first.`);
  } else data = Float64Array.from(t.data as ArrayLike<number>);
  return { dtype: t.dtype, shape: [...t.shape], data };
}

/**
 * Runs a graph with the float64 reference implementation of every op: the independent side of
 * every parity test. Slow on purpose (plain loops); only for test-sized graphs.
 */
export function evaluateReference(
  graph: Graph,
  feeds: Readonly<Record<string, RefTensor>>,
): Record<string, RefTensor> {
  const env = new Map<string, RefTensor>();
  for (const input of graph.inputs) {
    const fed = feeds[input.name];
    if (!fed)
      throw new RuntimeError(
        'GRAPH_INPUT',
        `evaluateReference: no feed for input "${input.name}".`,
      );
    env.set(input.name, fed);
  }
  for (const [name, t] of graph.initializers) env.set(name, toRef(t));
  for (const node of graph.nodes) {
    const ins = node.inputs.map((n) => {
      if (n === '') return undefined;
      const v = env.get(n);
      if (!v)
        throw new RuntimeError(
          'GRAPH_INVALID',
          `evaluateReference: "${n}" is not computed before ${node.name}.`,
        );
      return v;
    });
    const outs = OPS[node.op].reference(ins, node.attrs);
    for (let i = 0; i < node.outputs.length; i++) env.set(node.outputs[i], outs[i]);
  }
  const result: Record<string, RefTensor> = {};
  for (const o of graph.outputs) result[o.name] = env.get(o.name) as RefTensor;
  return result;
}
