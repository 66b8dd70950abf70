import type { DType, Tensor } from '@lora/core';

/** A dimension: a size, or a symbol such as `'batch'` for sizes known only at run time. */
export type Dim = number | string;

/** A typed value of the graph: a graph input, an initializer, or a node's output. */
export interface Value {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly Dim[];
}

/** An attribute value; ONNX tells ints from floats, so each kind is spelled out. */
export type Attr =
  | { readonly int: number }
  | { readonly float: number }
  | { readonly ints: readonly number[] }
  | { readonly floats: readonly number[] }
  | { readonly string: string };

export type Attrs = Readonly<Record<string, Attr>>;

/** One operator application. Inputs and outputs are value names; `''` marks an omitted optional input. */
export interface GraphNode {
  readonly op: string;
  /** `''` for the standard ONNX domain, `'com.microsoft'` for onnxruntime contrib ops. */
  readonly domain: string;
  readonly name: string;
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
  readonly attrs: Attrs;
}

/**
 * A whole graph as plain data: what the builder produced, what the serializer writes, what the
 * reference interpreter (and later reverse mode) walks. Nodes are in topological order.
 */
export interface Graph {
  readonly name: string;
  readonly inputs: readonly Value[];
  readonly outputs: readonly Value[];
  readonly initializers: ReadonlyMap<string, Tensor>;
  readonly nodes: readonly GraphNode[];
  /** dtype and inferred shape of every value (inputs, initializers, node outputs). */
  readonly values: ReadonlyMap<string, Value>;
}

/**
 * A tensor as the float64 reference implementations see it: every element type's values held as
 * doubles (integers up to 2^53 are exact, bools are 0/1), `dtype` kept for casts and checks.
 */
export interface RefTensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly data: Float64Array;
}
