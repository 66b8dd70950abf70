import { RuntimeError } from '../errors.js';
import type { GraphBuilder } from './builder.js';
import { isFloat } from './dtypes.js';
import * as op from './ops.js';
import { OPS, type VjpRule } from './opset.js';
import type { Attrs, Value } from './types.js';
import { zerosLike } from './vjp-helpers.js';

export interface GradientOptions {
  /**
   * d(loss) to start from. Required when `loss` has more than one element (the gradient is then
   * a vector-Jacobian product with `seed`); a one-element loss is seeded with 1.
   */
  readonly seed?: Value;
  /**
   * What to return for a `wrt` value the loss does not depend on: `'error'` (default, like
   * `torch.autograd.grad`: an unused parameter is usually a wiring mistake) or `'zeros'`.
   */
  readonly unreachable?: 'error' | 'zeros';
  /**
   * Backward rules that replace the op set's, keyed by op type. This is the extension point for
   * rules that need knowledge the op set lacks, e.g. `MatMulNBits` / `MatMulBnb4`, whose input
   * gradient dA = dY · deq(W) needs the model's in-graph dequantization of the packed weight
   * (their default rule throws). The rule receives the node's name in `ctx.name` for per-node
   * decisions.
   */
  readonly overrides?: Readonly<Record<string, VjpRule>>;
  /**
   * `true` (default): regions recorded with `GraphBuilder.region` (the composites: RMSNorm,
   * RoPE, attention, SwiGLU, cross-entropy) are differentiated by their one rule. `false`:
   * every node by its own rule (slower graphs; used to cross-check the composite rules).
   */
  readonly regions?: boolean;
}

/** One step of the backward walk: a node, or a region treated as one node. */
interface Unit {
  readonly name: string;
  readonly inputs: readonly (Value | undefined)[];
  readonly outputs: readonly Value[];
  readonly attrs: Attrs;
  readonly saved: readonly Value[];
  /** undefined: non-differentiable. */
  readonly rule: VjpRule | undefined;
}

function gradError(message: string, details: Record<string, unknown> = {}): RuntimeError {
  return new RuntimeError('GRAPH_GRADIENT', message, details);
}

/**
 * Reverse mode on the graph being built: appends nodes computing d(loss)/d(w) for every `w` in
 * `wrt` and returns those values (new values of `g`; mark them with `g.output`). Only the nodes
 * between `loss` and `wrt` are differentiated; gradients of a value used several times are summed
 * with `Add`; broadcasting is undone by summing over the broadcast axes.
 *
 * `wrt` may hold graph inputs (trainable tensors fed per step), initializers or intermediate
 * values. Integer and bool values carry no gradient. Each op's rule is its `vjp` in `OPS`;
 * `options.overrides` replaces rules by op type, and regions (see `GraphBuilder.region`) use
 * their own rule.
 *
 * @throws RuntimeError `GRAPH_GRADIENT` when the loss or a `wrt` value is not an f32/f64 value of
 *   `g`, when the loss has more than one element and no seed is given,
 *   when a `wrt` value is unreachable (unless `unreachable: 'zeros'`), or when a rule cannot
 *   differentiate a node (a 4-bit matmul without an override, a strided Slice, ...).
 */
export function gradients(
  g: GraphBuilder,
  loss: Value,
  wrt: readonly Value[],
  options: GradientOptions = {},
): Value[] {
  for (const v of [loss, ...wrt]) {
    if (!g.valueOf(v.name)) throw gradError(`"${v.name}" is not a value of graph "${g.name}".`);
    if (v.dtype !== 'f32' && v.dtype !== 'f64') {
      throw gradError(
        `"${v.name}" is ${v.dtype}: gradients are built for f32 and f64 values (cast first).`,
      );
    }
  }
  const units = backwardUnits(g, loss, wrt, options);

  // Values that depend on wrt through differentiable ops, and values the loss depends on.
  const active = new Set(wrt.map((w) => w.name));
  for (const u of units) {
    if (u.rule && u.inputs.some((v) => v && active.has(v.name))) {
      for (const o of u.outputs) if (isFloat(o.dtype)) active.add(o.name);
    }
  }
  const lossDeps = new Set([loss.name]);
  for (let i = units.length - 1; i >= 0; i--) {
    const u = units[i];
    if (u.outputs.some((o) => lossDeps.has(o.name)))
      for (const v of u.inputs) if (v) lossDeps.add(v.name);
  }

  const grads = new Map<string, Value>();
  const accumulate = (v: Value, grad: Value, from: string) => {
    checkGradShape(v, grad, from);
    const prev = grads.get(v.name);
    grads.set(v.name, prev ? g.scope(`grad/${v.name}`, () => op.add(g, prev, grad)) : grad);
  };
  if (active.has(loss.name)) grads.set(loss.name, seedOf(g, loss, options.seed));

  for (let i = units.length - 1; i >= 0; i--) {
    const u = units[i];
    if (!u.rule) continue;
    const outGrads = u.outputs.map((o) => grads.get(o.name));
    if (outGrads.every((d) => d === undefined)) continue;
    const needs = u.inputs.map(
      (v) => v !== undefined && active.has(v.name) && lossDeps.has(v.name),
    );
    if (!needs.some(Boolean)) continue;
    const results = g.scope(`grad/${u.name}`, () =>
      (u.rule as VjpRule)(g, {
        name: u.name,
        inputs: u.inputs,
        outputs: u.outputs,
        grads: outGrads,
        attrs: u.attrs,
        needs,
        saved: u.saved,
      }),
    );
    u.inputs.forEach((v, k) => {
      if (!v || !needs[k]) return;
      const r = results[k];
      if (!r)
        throw gradError(
          `The rule of "${u.name}" gave no gradient for its input ${k} ("${v.name}").`,
        );
      accumulate(v, r, u.name);
    });
  }

  return wrt.map((w) => {
    const grad = grads.get(w.name);
    if (grad) return grad;
    if (options.unreachable === 'zeros') return zerosLike(g, w);
    throw gradError(
      `The loss "${loss.name}" does not depend on "${w.name}" through differentiable ops (pass unreachable: 'zeros' to get zeros).`,
      { value: w.name },
    );
  });
}

function seedOf(g: GraphBuilder, loss: Value, seed: Value | undefined): Value {
  if (seed) {
    checkGradShape(loss, seed, 'the seed');
    return seed;
  }
  if (loss.shape.some((d) => d !== 1)) {
    throw gradError(
      `The loss "${loss.name}" is [${loss.shape.join(', ')}], not one element: reduce it to a scalar or pass a seed.`,
    );
  }
  return g.constant([1], loss.dtype as 'f32' | 'f64', loss.shape as number[]);
}

/** Known sizes of a gradient must equal its value's. */
function checkGradShape(v: Value, grad: Value, from: string): void {
  const clash =
    grad.shape.length !== v.shape.length ||
    grad.shape.some(
      (d, i) => typeof d === 'number' && typeof v.shape[i] === 'number' && d !== v.shape[i],
    );
  if (clash || grad.dtype !== v.dtype) {
    throw gradError(
      `Gradient of "${v.name}" from ${from} is ${grad.dtype} [${grad.shape.join(', ')}], the value is ${v.dtype} [${v.shape.join(', ')}].`,
    );
  }
}

/**
 * The nodes in topological order, with each usable region replacing its nodes. A region is
 * usable when it is self-contained with respect to the differentiated values: its inner nodes
 * read no value that depends on them except through the region's inputs, and no inner value
 * other than the region's outputs is read outside it (or is the loss or a `wrt` value).
 */
function backwardUnits(
  g: GraphBuilder,
  loss: Value,
  wrt: readonly Value[],
  options: GradientOptions,
): Unit[] {
  const nodes = g.graphNodes;
  const overrides = options.overrides ?? {};
  const nodeUnit = (i: number): Unit => {
    const n = nodes[i];
    const def = OPS[n.op];
    const lookup = (name: string) => (name === '' ? undefined : g.valueOf(name));
    return {
      name: n.name,
      inputs: n.inputs.map(lookup),
      outputs: n.outputs.map((o) => lookup(o) as Value),
      attrs: n.attrs,
      saved: [],
      rule: def.nonDifferentiable ? undefined : (overrides[n.op] ?? def.vjp),
    };
  };
  if (options.regions === false || g.regions.length === 0) return nodes.map((_, i) => nodeUnit(i));

  // Dependence on wrt, node by node (ignoring regions), to judge each region.
  const active = new Set(wrt.map((w) => w.name));
  for (const n of nodes) {
    if (OPS[n.op].nonDifferentiable) continue;
    if (n.inputs.some((v) => active.has(v))) {
      for (const o of n.outputs) if (isFloat((g.valueOf(o) as Value).dtype)) active.add(o);
    }
  }
  const readers = new Map<string, number[]>();
  nodes.forEach((n, i) => {
    for (const v of n.inputs) {
      const list = readers.get(v);
      if (list) list.push(i);
      else readers.set(v, [i]);
    }
  });
  // wrt values and the loss must stay visible: a region hiding one as an inner value is not used.
  const endpoints = new Set([...wrt.map((w) => w.name), loss.name]);
  const usable = (r: (typeof g.regions)[number]): boolean => {
    const inside = (i: number) => i >= r.firstNode && i < r.endNode;
    const inputs = new Set(r.inputs.map((v) => v.name));
    const outputs = new Set(r.outputs.map((v) => v.name));
    const produced = new Set<string>();
    for (let i = r.firstNode; i < r.endNode; i++) {
      for (const v of nodes[i].inputs) {
        if (!produced.has(v) && active.has(v) && !inputs.has(v)) return false;
      }
      for (const o of nodes[i].outputs) {
        produced.add(o);
        if (outputs.has(o) || !active.has(o)) continue;
        if (endpoints.has(o) || (readers.get(o) ?? []).some((k) => !inside(k))) return false;
      }
    }
    return true;
  };

  const units: Unit[] = [];
  const regionAt = new Map<number, (typeof g.regions)[number]>();
  // Outer regions first: a region nested in a usable one is covered by it.
  const sorted = [...g.regions].sort((a, b) => a.firstNode - b.firstNode || b.endNode - a.endNode);
  let coveredUntil = 0;
  for (const r of sorted) {
    if (r.firstNode < coveredUntil || r.endNode === r.firstNode || !usable(r)) continue;
    regionAt.set(r.firstNode, r);
    coveredUntil = r.endNode;
  }
  for (let i = 0; i < nodes.length; i++) {
    const r = regionAt.get(i);
    if (!r) {
      units.push(nodeUnit(i));
      continue;
    }
    units.push({
      name: r.name,
      inputs: r.inputs,
      outputs: r.outputs,
      attrs: {},
      saved: r.saved,
      rule: r.vjp,
    });
    i = r.endNode - 1;
  }
  return units;
}
