import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import type { Tensor } from '@lora/core';
import * as ort from 'onnxruntime-node';

/** The shape facts of a LLaMA config that the exported decoder's inputs need. */
interface CacheShape {
  readonly numLayers: number;
  readonly numKvHeads: number;
  readonly headDim: number;
}

/**
 * Runs an exported decoder (`lora export-onnx`) from disk on one prompt with an empty KV cache,
 * plus any extra feeds (LoRA inputs, as @lora/core tensors), and returns its logits.
 */
export async function runExportedDecoder(
  session: ort.InferenceSession,
  config: CacheShape,
  tokens: readonly number[],
  extraFeeds: Record<string, Tensor> = {},
): Promise<Float32Array> {
  const T = tokens.length;
  const feeds: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor('int64', BigInt64Array.from(tokens, BigInt), [1, T]),
    attention_mask: new ort.Tensor('int64', new BigInt64Array(T).fill(1n), [1, T]),
    position_ids: new ort.Tensor('int64', BigInt64Array.from(tokens.map((_, i) => BigInt(i))), [
      1,
      T,
    ]),
  };
  for (const [name, t] of Object.entries(extraFeeds)) {
    feeds[name] = new ort.Tensor(t.dtype === 'i64' ? 'int64' : 'float32', t.data as Float32Array, [
      ...t.shape,
    ]);
  }
  for (let l = 0; l < config.numLayers; l++) {
    for (const kind of ['key', 'value']) {
      feeds[`past_key_values.${l}.${kind}`] = new ort.Tensor('float32', new Float32Array(0), [
        1,
        config.numKvHeads,
        0,
        config.headDim,
      ]);
    }
  }
  return (await session.run(feeds)).logits.data as Float32Array;
}

/** One initializer of an .onnx file: its dims and raw bytes (little-endian, as stored). */
export interface OnnxInitializer {
  readonly dims: readonly number[];
  readonly bytes: Buffer;
}

/**
 * Name -> dims and raw bytes of every initializer of an .onnx file whose weights are inline
 * (read with onnx-proto, runtime-onnx's dependency). Typed fields other than raw_data are
 * rendered as JSON so that two files can still be compared.
 */
export async function readOnnxInitializers(path: string): Promise<Map<string, OnnxInitializer>> {
  const require = createRequire(import.meta.resolve('@lora/runtime-onnx'));
  // onnx-proto is not a dependency of the CLI: typed here by the little this reads.
  type Initializer = {
    name?: string | null;
    dims?: (number | { toNumber(): number })[] | null;
    rawData?: Uint8Array | null;
  } & Record<string, unknown>;
  const { onnx } = require('onnx-proto') as {
    onnx: {
      ModelProto: { decode(b: Uint8Array): { graph?: { initializer?: Initializer[] } | null } };
    };
  };
  const model = onnx.ModelProto.decode(await readFile(path));
  const out = new Map<string, OnnxInitializer>();
  for (const t of model.graph?.initializer ?? []) {
    const dims = (t.dims ?? []).map((d) => Number(d));
    const raw = t.rawData && t.rawData.length > 0 ? Buffer.from(t.rawData) : undefined;
    const bytes = raw ?? Buffer.from(JSON.stringify([t.floatData, t.int64Data, t.int32Data]));
    out.set(t.name ?? '', { dims, bytes });
  }
  return out;
}
