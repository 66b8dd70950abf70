import { readFile, stat } from 'node:fs/promises';
import { dtypeFromOnnx } from '@lora/core';
import onnxProto, { type onnx as Onnx } from 'onnx-proto';
import { RuntimeError } from '../errors.js';

// onnx-proto is CommonJS: Node's ESM loader cannot see its named exports, so take the default.
const { onnx } = onnxProto;

/** A graph input or output as `lora inspect` shows it. */
export interface OnnxValueSummary {
  readonly name: string;
  /** This project's dtype name, or `onnx:<number>` for element types it does not use. */
  readonly dtype: string;
  /** Dimensions: numbers, or the symbolic names of dynamic ones. */
  readonly shape: readonly (number | string)[];
}

/** What an ONNX model file holds: opsets, inputs, outputs, ops, initializers. */
export interface OnnxModelSummary {
  readonly path: string;
  readonly fileBytes: number;
  readonly irVersion: number;
  readonly producer: string;
  readonly opsets: readonly { domain: string; version: number }[];
  readonly inputs: readonly OnnxValueSummary[];
  readonly outputs: readonly OnnxValueSummary[];
  readonly nodes: number;
  /** Node count per op type (`com.microsoft.MatMulNBits` for contrib ops). */
  readonly ops: Readonly<Record<string, number>>;
  readonly initializers: number;
  /** Elements over all initializers. */
  readonly initializerElements: number;
  /** Initializer bytes stored in the model file itself, and in external data files. */
  readonly initializerBytes: { readonly inline: number; readonly external: number };
}

function dtypeName(elemType: number | null | undefined): string {
  const d = elemType == null ? undefined : dtypeFromOnnx(elemType);
  return d ?? `onnx:${elemType}`;
}

function valueSummary(v: Onnx.IValueInfoProto): OnnxValueSummary {
  const t = v.type?.tensorType;
  const dims = t?.shape?.dim ?? [];
  return {
    name: v.name ?? '',
    dtype: dtypeName(t?.elemType),
    shape: dims.map((d) => (d.dimValue != null ? Number(d.dimValue) : (d.dimParam ?? '?'))),
  };
}

/**
 * Reads an `.onnx` file's protobuf (not its external data) and summarises it. The whole model
 * proto is decoded, so a model with gigabytes of inline weights takes that much memory; models
 * written with external data (as `lora export-onnx` does above 1.5 GB) stay small.
 */
export async function describeOnnxModel(path: string): Promise<OnnxModelSummary> {
  const bytes = await readFile(path).catch((e: NodeJS.ErrnoException) => {
    throw new RuntimeError('ONNX_UNREADABLE', `${path}: cannot read (${e.code ?? e.message}).`, {
      file: path,
    });
  });
  let model: Onnx.ModelProto;
  try {
    model = onnx.ModelProto.decode(bytes);
  } catch (e) {
    throw new RuntimeError(
      'ONNX_INVALID',
      `${path}: not an ONNX model (${(e as Error).message}).`,
      { file: path },
    );
  }
  const graph = model.graph;
  if (!graph)
    throw new RuntimeError('ONNX_INVALID', `${path}: the model has no graph.`, { file: path });
  const ops: Record<string, number> = {};
  for (const n of graph.node ?? []) {
    const op = n.domain ? `${n.domain}.${n.opType}` : (n.opType ?? '?');
    ops[op] = (ops[op] ?? 0) + 1;
  }
  let inline = 0;
  let external = 0;
  let elements = 0;
  for (const t of graph.initializer ?? []) {
    elements += (t.dims ?? []).reduce((a: number, d) => a * Number(d), 1);
    const length = (t.externalData ?? []).find((e) => e.key === 'length')?.value;
    if (t.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL) external += Number(length ?? 0);
    else inline += t.rawData?.length ?? 0;
  }
  const initializerNames = new Set((graph.initializer ?? []).map((t) => t.name));
  return {
    path,
    fileBytes: (await stat(path)).size,
    irVersion: Number(model.irVersion ?? 0),
    producer: [model.producerName, model.producerVersion].filter(Boolean).join(' '),
    opsets: (model.opsetImport ?? []).map((o) => ({
      domain: o.domain || 'ai.onnx',
      version: Number(o.version),
    })),
    // Older exporters list initializers among the inputs too: those are not inputs to feed.
    inputs: (graph.input ?? [])
      .filter((v) => !initializerNames.has(v.name ?? ''))
      .map(valueSummary),
    outputs: (graph.output ?? []).map(valueSummary),
    nodes: graph.node?.length ?? 0,
    ops,
    initializers: graph.initializer?.length ?? 0,
    initializerElements: elements,
    initializerBytes: { inline, external },
  };
}
