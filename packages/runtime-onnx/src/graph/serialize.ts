import { rm } from 'node:fs/promises';
import { basename } from 'node:path';
import { type Tensor, tensorBytes, writeAll, writeFileAtomic } from '@lora/core';
import onnxProto, { type onnx as Onnx } from 'onnx-proto';
import { isUnknown } from './shape.js';
import { onnxElemType } from './dtypes.js';
import { MS_DOMAIN, OPSET_VERSION } from './opset.js';
import type { Attr, Graph, Value } from './types.js';

// onnx-proto is CommonJS: Node's ESM loader cannot see its named exports, so take the default.
const { onnx } = onnxProto;

/** IR version 8 carries opset 17 and is read by every onnxruntime since 1.11. */
const IR_VERSION = 8;
/** Initializers at least this large go to external data (small ones stay inline). */
const EXTERNAL_MIN_BYTES = 1024;
/** Offsets in a saved external data file are aligned like this (lets onnxruntime map the file). */
const EXTERNAL_ALIGN = 4096;

/** One chunk of external initializer bytes, in onnxruntime-node's `externalData` format. */
export interface ExternalChunk {
  readonly path: string;
  readonly data: Uint8Array;
}

/** A serialized model: the ModelProto bytes and, when initializers are external, their bytes. */
export interface SerializedModel {
  readonly model: Uint8Array;
  /** Pass as `externalData` at session creation. Views on the graph's tensors: no copies. */
  readonly externalData: readonly ExternalChunk[];
}

function valueInfo(v: Value): Onnx.IValueInfoProto {
  return {
    name: v.name,
    type: {
      tensorType: {
        elemType: onnxElemType(v.dtype),
        shape: {
          dim: v.shape.map((d) =>
            typeof d === 'number' ? { dimValue: d } : isUnknown(d) ? {} : { dimParam: d },
          ),
        },
      },
    },
  };
}

function attribute(name: string, a: Attr): Onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if ('int' in a) return { name, type: T.INT, i: a.int };
  if ('float' in a) return { name, type: T.FLOAT, f: a.float };
  if ('ints' in a) return { name, type: T.INTS, ints: [...a.ints] };
  if ('floats' in a) return { name, type: T.FLOATS, floats: [...a.floats] };
  return { name, type: T.STRING, s: new TextEncoder().encode(a.string) };
}

function tensorProto(
  name: string,
  t: Tensor,
  external?: { location: string; offset: number },
): Onnx.ITensorProto {
  const base: Onnx.ITensorProto = { name, dims: [...t.shape], dataType: onnxElemType(t.dtype) };
  if (!external) return { ...base, rawData: tensorBytes(t) };
  return {
    ...base,
    dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
    externalData: [
      { key: 'location', value: external.location },
      { key: 'offset', value: String(external.offset) },
      { key: 'length', value: String(t.data.byteLength) },
    ],
  };
}

function modelProto(
  graph: Graph,
  initializers: Onnx.ITensorProto[],
  metadata: Readonly<Record<string, string>> = {},
): Uint8Array {
  const model: Onnx.IModelProto = {
    irVersion: IR_VERSION,
    producerName: '@lora/runtime-onnx',
    metadataProps: Object.entries(metadata).map(([key, value]) => ({ key, value })),
    // onnxruntime's contrib domain is declared only when a node uses it: a graph of standard
    // operators then names no domain another ONNX runtime would have to know.
    opsetImport: [
      { domain: '', version: OPSET_VERSION },
      ...(graph.nodes.some((n) => n.domain === MS_DOMAIN)
        ? [{ domain: MS_DOMAIN, version: 1 }]
        : []),
    ],
    graph: {
      name: graph.name,
      input: graph.inputs.map(valueInfo),
      output: graph.outputs.map(valueInfo),
      initializer: initializers,
      node: graph.nodes.map((n) => ({
        name: n.name,
        opType: n.op,
        domain: n.domain,
        input: [...n.inputs],
        output: [...n.outputs],
        attribute: Object.entries(n.attrs).map(([k, a]) => attribute(k, a)),
      })),
    },
  };
  return onnx.ModelProto.encode(model).finish();
}

/**
 * Serializes a graph for an in-memory session. Initializers of 1 KiB or more become external
 * data, one chunk each, so no weight is copied into the protobuf and the 2 GB protobuf limit
 * never applies.
 */
export function serializeGraph(graph: Graph): SerializedModel {
  const chunks: ExternalChunk[] = [];
  const inits: Onnx.ITensorProto[] = [];
  for (const [name, t] of graph.initializers) {
    if (t.data.byteLength >= EXTERNAL_MIN_BYTES) {
      const location = `weights/${chunks.length}.bin`;
      chunks.push({ path: location, data: tensorBytes(t) });
      inits.push(tensorProto(name, t, { location, offset: 0 }));
    } else inits.push(tensorProto(name, t));
  }
  return { model: modelProto(graph, inits), externalData: chunks };
}

/** Where an initializer's bytes already are: a file beside the model, at a byte offset. */
export interface ExternalPlacement {
  readonly location: string;
  readonly offset: number;
}

/**
 * The ModelProto bytes of a graph whose large initializers were already written to a file
 * beside the model: `place` gives each one's location and offset (undefined keeps it inline).
 * No weight bytes pass through the protobuf.
 */
export function serializeGraphPlaced(
  graph: Graph,
  place: (name: string, t: Tensor) => ExternalPlacement | undefined,
): Uint8Array {
  return modelProto(
    graph,
    [...graph.initializers].map(([name, t]) => tensorProto(name, t, place(name, t))),
  );
}

/**
 * Serializes a graph with every initializer inline (fine below 2 GB; simplest to hand around);
 * `metadata` becomes the model's `metadata_props`.
 */
export function serializeGraphInline(
  graph: Graph,
  metadata?: Readonly<Record<string, string>>,
): Uint8Array {
  return modelProto(
    graph,
    [...graph.initializers].map(([name, t]) => tensorProto(name, t)),
    metadata,
  );
}

export interface SaveModelOptions {
  /**
   * Where large initializers go: `'auto'` (default) keeps everything inline below 1.5 GB and writes
   * `<file>.data` beside the model above it; `true` always writes the side file; `false` never.
   */
  readonly externalData?: boolean | 'auto';
  /**
   * String entries for the model's `metadata_props`, e.g. core's `outputMarker("export-onnx")`
   * so that a later `--force` recognises the file.
   */
  readonly metadata?: Readonly<Record<string, string>>;
}

/** What {@link saveModel} wrote. */
export interface SavedModel {
  readonly modelPath: string;
  readonly dataPath?: string;
  readonly bytes: number;
}

/**
 * Writes a graph as an `.onnx` file (atomically), with large initializers in a side file
 * `<name>.data` next to it when asked or when the model would pass protobuf's 2 GB limit. The
 * side file is written first and an existing model file is removed just before the new side file
 * takes its place, so a model file never points at missing or foreign data.
 */
export async function saveModel(
  graph: Graph,
  path: string,
  options: SaveModelOptions = {},
): Promise<SavedModel> {
  const totalBytes = [...graph.initializers.values()].reduce((s, t) => s + t.data.byteLength, 0);
  const mode = options.externalData ?? 'auto';
  const external = mode === true || (mode === 'auto' && totalBytes > 1.5e9);
  if (!external) {
    const bytes = serializeGraphInline(graph, options.metadata);
    await writeFileAtomic(path, async (fh) => writeAll(fh, bytes));
    return { modelPath: path, bytes: bytes.length };
  }
  const dataPath = `${path}.data`;
  const location = basename(dataPath);
  const inits: Onnx.ITensorProto[] = [];
  const placed: { t: Tensor; offset: number }[] = [];
  let offset = 0;
  for (const [name, t] of graph.initializers) {
    if (t.data.byteLength < EXTERNAL_MIN_BYTES) {
      inits.push(tensorProto(name, t));
      continue;
    }
    offset = Math.ceil(offset / EXTERNAL_ALIGN) * EXTERNAL_ALIGN;
    inits.push(tensorProto(name, t, { location, offset }));
    placed.push({ t, offset });
    offset += t.data.byteLength;
  }
  // An existing model file is removed just before the new data replaces its data: a crash at
  // any moment leaves the old pair, no model, or the new pair, never a model with foreign data.
  const removeOldModel = () => rm(path, { force: true });
  await writeFileAtomic(
    dataPath,
    async (fh) => {
      let at = 0;
      for (const p of placed) {
        if (p.offset > at) await writeAll(fh, new Uint8Array(p.offset - at));
        await writeAll(fh, tensorBytes(p.t));
        at = p.offset + p.t.data.byteLength;
      }
    },
    { beforeRename: removeOldModel },
  );
  const bytes = modelProto(graph, inits, options.metadata);
  try {
    await writeFileAtomic(path, async (fh) => writeAll(fh, bytes));
  } catch (e) {
    await rm(dataPath, { force: true }); // no model refers to it any more
    throw e;
  }
  return { modelPath: path, dataPath, bytes: bytes.length + offset };
}
