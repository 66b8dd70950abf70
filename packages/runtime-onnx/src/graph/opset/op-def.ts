import type { DType } from '@lora/core';
import { RuntimeError } from '../../errors.js';
import type { GraphBuilder } from '../builder.js';
import type { Attr, Attrs, Dim, RefTensor, Value } from '../types.js';

/** The ONNX opset version of the default domain the builder emits (ReduceMean keeps its `axes` attribute). */
export const OPSET_VERSION = 17;
export const MS_DOMAIN = 'com.microsoft';

/** What shape inference sees of an input: dtype, shape, and the values when it is a small constant. */
export interface InferInput {
  readonly dtype: DType;
  readonly shape: readonly Dim[];
  readonly constant?: RefTensor;
  /** For the output of a `Shape` node: the shape it holds, symbols included. */
  readonly shapeValue?: readonly Dim[];
}

export interface InferOutput {
  readonly dtype: DType;
  readonly shape: readonly Dim[];
}

/** What a backward rule sees of one node (or of one region, see `GraphBuilder.region`). */
export interface VjpContext {
  /** The node's (or region's) name, for error messages and per-node dispatch in overrides. */
  readonly name: string;
  /** The forward inputs (`undefined` for omitted optional inputs). */
  readonly inputs: readonly (Value | undefined)[];
  readonly outputs: readonly Value[];
  /** d(loss)/d(output) per output; `undefined` for outputs the loss does not depend on. */
  readonly grads: readonly (Value | undefined)[];
  readonly attrs: Attrs;
  /**
   * Which inputs need a gradient (float inputs that depend on the differentiated values). A rule
   * should build nothing for the others: every node of a session's graph runs.
   */
  readonly needs: readonly boolean[];
  /** Forward values a region recorded for its rule (empty for single nodes). */
  readonly saved: readonly Value[];
}

/**
 * A vector-Jacobian product as builder code: given d(loss)/d(outputs), emit nodes computing
 * d(loss)/d(inputs) and return one value per input (`undefined` where `needs` is false). Each
 * returned gradient must have its input's shape (rules undo broadcasting with `sumToShape`).
 */
export type VjpRule = (g: GraphBuilder, ctx: VjpContext) => readonly (Value | undefined)[];

/**
 * One operator: its domain, its shape/dtype inference, a float64 reference implementation, and
 * its backward rule: `vjp`, or `nonDifferentiable: true` for ops whose outputs carry no gradient
 * (Shape, Range, comparisons). A test fails when an entry has neither.
 */
export interface OpDef {
  readonly domain: string;
  infer(inputs: readonly (InferInput | undefined)[], attrs: Attrs, where: string): InferOutput[];
  reference(inputs: readonly (RefTensor | undefined)[], attrs: Attrs): RefTensor[];
  readonly vjp?: VjpRule;
  readonly nonDifferentiable?: true;
}

/** Adds a backward rule (or the non-differentiable mark) to an op definition. */
export function withVjp(def: OpDef, vjp: VjpRule): OpDef {
  return { ...def, vjp };
}
export function nonDiff(def: OpDef): OpDef {
  return { ...def, nonDifferentiable: true };
}

export function attrInt(attrs: Attrs, name: string, fallback?: number): number {
  const a = attrs[name] as Attr | undefined;
  if (a && 'int' in a) return a.int;
  if (fallback !== undefined) return fallback;
  throw new RuntimeError('GRAPH_ATTR', `Missing integer attribute "${name}".`, { name });
}

export function attrInts(attrs: Attrs, name: string): readonly number[] | undefined {
  const a = attrs[name] as Attr | undefined;
  return a && 'ints' in a ? a.ints : undefined;
}

export function need<T>(x: T | undefined, what: string): T {
  if (x === undefined) throw new RuntimeError('GRAPH_INVALID', `${what} is required.`);
  return x;
}

/** The integer values of a constant input (Reshape's shape, Slice's starts, Unsqueeze's axes). */
export function constInts(input: InferInput | RefTensor | undefined, what: string): number[] {
  const c = input && 'data' in input ? input : input?.constant;
  if (!c) {
    throw new RuntimeError(
      'GRAPH_INVALID',
      `${what} must be a constant (an initializer) for the builder.`,
      { what },
    );
  }
  return Array.from(c.data);
}

/** A shape given as an input (Reshape, Expand): a constant's values, or what a `Shape` node holds. */
export function shapeDims(input: InferInput | undefined, what: string): Dim[] {
  if (input?.shapeValue) return [...input.shapeValue];
  return constInts(input, what);
}

export function attrFloat(attrs: Attrs, name: string, fallback: number): number {
  const a = attrs[name] as Attr | undefined;
  return a && 'float' in a ? a.float : fallback;
}
