import { type DType, type Tensor, tensor } from '@lora/core';
import { RuntimeError } from '../errors.js';
import { type InferInput, OPS, type VjpRule } from './opset.js';
import type { Attrs, Dim, Graph, GraphNode, RefTensor, Value } from './types.js';

/**
 * A stretch of nodes whose backward pass is ONE rule instead of one rule per node (a composite
 * such as RMSNorm or attention, see `composites/`). {@link gradients} treats it as a single node
 * with `inputs` and `outputs`, calling `vjp` with `saved` (forward values the rule reuses).
 */
export interface GradientRegion {
  readonly name: string;
  /** The region's differentiable inputs, in the order `vjp` returns their gradients. */
  readonly inputs: readonly Value[];
  readonly outputs: readonly Value[];
  readonly saved: readonly Value[];
  readonly vjp: VjpRule;
  /** Half-open range of node indices the region's forward nodes occupy. */
  readonly firstNode: number;
  readonly endNode: number;
}

/** Initializers up to this many elements are remembered as values, so shape inference can read them. */
const SMALL_CONSTANT = 64;

/**
 * Builds a graph one typed value at a time. Every node goes through {@link GraphBuilder.node},
 * which checks the op is in the op set and infers output dtypes and shapes, so mistakes surface
 * while building (with the node's name), not as an onnxruntime error at session creation.
 */
export class GraphBuilder {
  readonly name: string;
  private readonly inputs: Value[] = [];
  private readonly outputs: Value[] = [];
  private readonly initializers = new Map<string, Tensor>();
  private readonly smallConstants = new Map<string, RefTensor>();
  private readonly nodes: GraphNode[] = [];
  private readonly values = new Map<string, Value>();
  private readonly counters = new Map<string, number>();
  /** Outputs of `Shape` nodes: their values as known at build time (symbols included). */
  private readonly shapeValues = new Map<string, readonly Dim[]>();
  private readonly regionList: GradientRegion[] = [];
  /** Prefix of default node names inside {@link GraphBuilder.scope}. */
  private namePrefix = '';

  constructor(name = 'graph') {
    this.name = name;
  }

  /** A name not used yet, derived from `prefix` (`q_proj`, `q_proj_1`, ...). */
  uniqueName(prefix: string): string {
    if (!this.values.has(prefix) && !this.counters.has(prefix)) {
      this.counters.set(prefix, 0);
      return prefix;
    }
    let n = this.counters.get(prefix) ?? 0;
    let name: string;
    do {
      n += 1;
      name = `${prefix}_${n}`;
    } while (this.values.has(name));
    this.counters.set(prefix, n);
    return name;
  }

  private define(value: Value): Value {
    if (this.values.has(value.name)) {
      throw new RuntimeError(
        'GRAPH_INVALID',
        `Graph "${this.name}": the name "${value.name}" is defined twice.`,
        {
          name: value.name,
        },
      );
    }
    this.values.set(value.name, value);
    return value;
  }

  /** A graph input fed at run time. Symbolic dims (`'batch'`) mark sizes that vary per call. */
  input(name: string, dtype: DType, shape: readonly Dim[]): Value {
    const v = this.define({ name, dtype, shape: [...shape] });
    this.inputs.push(v);
    return v;
  }

  /** A constant tensor stored in the model (weights). The tensor is kept by reference, not copied. */
  initializer(name: string, t: Tensor): Value {
    const v = this.define({ name, dtype: t.dtype, shape: [...t.shape] });
    this.initializers.set(name, t);
    if (t.data.length <= SMALL_CONSTANT && t.dtype !== 'bf16' && t.dtype !== 'f16') {
      const data =
        t.data instanceof BigInt64Array || t.data instanceof BigUint64Array
          ? Float64Array.from(t.data, (x) => Number(x))
          : Float64Array.from(t.data as ArrayLike<number>);
      this.smallConstants.set(name, { dtype: t.dtype, shape: [...t.shape], data });
    }
    return v;
  }

  /** A small auto-named constant: int64 by default (shapes, axes, indices), or float32/float64. */
  constant(
    values: readonly number[],
    dtype: 'i64' | 'f32' | 'f64' = 'i64',
    shape: readonly number[] = [values.length],
  ): Value {
    const data =
      dtype === 'i64'
        ? BigInt64Array.from(values, (v) => BigInt(v))
        : dtype === 'f32'
          ? Float32Array.from(values)
          : Float64Array.from(values);
    return this.initializer(this.uniqueName(`const_${dtype}`), tensor(dtype, shape, data));
  }

  /** A scalar constant (shape `[]`, float32 by default), broadcastable against anything. */
  scalar(value: number, dtype: 'f32' | 'f64' | 'i64' = 'f32'): Value {
    return this.constant([value], dtype, []);
  }

  /**
   * Applies an operator. `inputs` may contain `undefined` for omitted optional inputs. Returns the
   * outputs with inferred dtype and shape.
   */
  node(
    op: string,
    inputs: readonly (Value | undefined)[],
    attrs: Attrs = {},
    name?: string,
  ): Value[] {
    const def = OPS[op];
    if (!def) {
      throw new RuntimeError('GRAPH_OP', `Operator "${op}" is not in the graph builder's op set.`, {
        op,
      });
    }
    const nodeName = this.uniqueNodeName(name ?? `${this.namePrefix}${op}`);
    const where = `${op} node "${nodeName}"`;
    const inferInputs: (InferInput | undefined)[] = inputs.map((v) => {
      if (!v) return undefined;
      const known = this.values.get(v.name);
      if (!known) {
        throw new RuntimeError(
          'GRAPH_INVALID',
          `${where}: input "${v.name}" is not defined in this graph.`,
          {
            value: v.name,
          },
        );
      }
      return {
        dtype: known.dtype,
        shape: known.shape,
        constant: this.smallConstants.get(v.name),
        shapeValue: this.shapeValues.get(v.name),
      };
    });
    const inferred = def.infer(inferInputs, attrs, where);
    const outputs = inferred.map((o, i) =>
      this.define({
        name: this.uniqueName(inferred.length === 1 ? nodeName : `${nodeName}_out${i}`),
        ...o,
      }),
    );
    if (op === 'Shape' && inferInputs[0] && attrs.start === undefined && attrs.end === undefined) {
      this.shapeValues.set(outputs[0].name, inferInputs[0].shape);
    }
    this.nodes.push({
      op,
      domain: def.domain,
      name: nodeName,
      inputs: inputs.map((v) => v?.name ?? ''),
      outputs: outputs.map((o) => o.name),
      attrs,
    });
    return outputs;
  }

  /**
   * Builds a region of nodes with one backward rule: runs `body` (which emits the forward nodes
   * through this builder) and records the nodes it added, with the `inputs` the rule
   * differentiates, the `outputs`, and the `saved` values the rule reuses. Without
   * {@link gradients} the region is just its nodes: forward graphs are unchanged.
   *
   * `gradients` falls back to the per-node rules when the region cannot be treated as one node
   * (an inner value that depends on the differentiated values is used outside the region, or an
   * inner node reads such a value that is not among `inputs`, or the loss or a `wrt` value is an
   * inner value): the rule is used only where it describes the whole region.
   */
  region(
    name: string,
    inputs: readonly Value[],
    body: () => { readonly outputs: readonly Value[]; readonly saved?: readonly Value[] },
    vjp: VjpRule,
  ): Value[] {
    const firstNode = this.nodes.length;
    const { outputs, saved = [] } = body();
    this.regionList.push({
      name,
      inputs: [...inputs],
      outputs: [...outputs],
      saved: [...saved],
      vjp,
      firstNode,
      endNode: this.nodes.length,
    });
    return [...outputs];
  }

  /**
   * Runs `body` with unnamed nodes named `<prefix>/<Op>` (e.g. `grad/q_proj/FusedMatMul`), so
   * generated subgraphs stay readable in profiles and error messages.
   */
  scope<T>(prefix: string, body: () => T): T {
    const outer = this.namePrefix;
    this.namePrefix = `${outer}${prefix}/`;
    try {
      return body();
    } finally {
      this.namePrefix = outer;
    }
  }

  /** The nodes emitted so far, in topological order (what {@link gradients} walks). */
  get graphNodes(): readonly GraphNode[] {
    return this.nodes;
  }

  /** The regions recorded so far (see {@link GraphBuilder.region}). */
  get regions(): readonly GradientRegion[] {
    return this.regionList;
  }

  /** The values of a small constant (initializers up to 64 elements), else undefined. */
  constantValue(value: Value): RefTensor | undefined {
    return this.smallConstants.get(value.name);
  }

  /** A value of this graph by name (inputs, initializers, node outputs). */
  valueOf(name: string): Value | undefined {
    return this.values.get(name);
  }

  private readonly nodeNames = new Set<string>();
  private uniqueNodeName(base: string): string {
    let name = base;
    for (let i = 1; this.nodeNames.has(name) || this.values.has(name); i++) name = `${base}_${i}`;
    this.nodeNames.add(name);
    return name;
  }

  /**
   * Marks a value as a graph output, under `name` (an Identity node renames it when needed).
   * `shape` declares the output's shape where inference could not name a dim (for example
   * `total_sequence` for a concatenation of past and new tokens); known sizes must agree.
   */
  output(value: Value, name?: string, shape?: readonly Dim[]): Value {
    let v = value;
    if (name !== undefined && name !== value.name) {
      if (this.values.has(name)) {
        throw new RuntimeError(
          'GRAPH_INVALID',
          `Graph "${this.name}": output name "${name}" is already used.`,
        );
      }
      [v] = this.node('Identity', [value], {}, name);
    }
    if (shape) {
      const clash =
        shape.length !== v.shape.length ||
        shape.some(
          (d, i) => typeof d === 'number' && typeof v.shape[i] === 'number' && d !== v.shape[i],
        );
      if (clash) {
        throw new RuntimeError(
          'GRAPH_SHAPE',
          `Graph "${this.name}": output "${v.name}" is [${v.shape.join(', ')}], declared [${shape.join(', ')}].`,
        );
      }
      v = { ...v, shape: [...shape] };
    }
    this.outputs.push(v);
    return v;
  }

  /** The finished graph as plain data. */
  build(): Graph {
    if (this.outputs.length === 0) {
      throw new RuntimeError('GRAPH_INVALID', `Graph "${this.name}" has no outputs.`);
    }
    return {
      name: this.name,
      inputs: [...this.inputs],
      outputs: [...this.outputs],
      initializers: new Map(this.initializers),
      nodes: [...this.nodes],
      values: new Map(this.values),
    };
  }
}
