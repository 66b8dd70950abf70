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
