import { numel, parseJsonText, SafetensorsFile, type SafetensorsSummary } from '@lora/core';
import {
  BNB4_QUANT_STATE_PREFIX,
  bnb4Keys,
  type Bnb4Format,
  findBnb4Weights,
  findOrtWeights,
  ORT_QUANT_STATE_SUFFIX,
  type OrtQuantState,
} from '@lora/quant';

/** A 4-bit weight as `lora inspect` shows it: its logical shape, not its packed bytes. */
export interface QuantizedWeightSummary {
  readonly name: string;
  /** `bitsandbytes` state dict, or the onnxruntime layout (`MatMulNBits` / `MatMulBnb4`). */
  readonly layout: 'bitsandbytes' | 'MatMulNBits' | 'MatMulBnb4';
  readonly format: string;
  readonly blockSize: number;
  readonly doubleQuant: boolean;
  /** The original weight's shape and dtype, from its quant_state JSON. */
  readonly shape: readonly number[];
  readonly dtype: string;
  readonly params: number;
  /** Bytes of every tensor the weight occupies (packed data and statistics). */
  readonly storedBytes: number;
  readonly bitsPerParam: number;
}

export interface QuantizedFileSummary {
  readonly weights: QuantizedWeightSummary[];
  /** Parameters counted by logical shape: quantized weights plus every plain tensor. */
  readonly params: number;
}

/**
 * Finds the 4-bit weights of a safetensors file, bitsandbytes (a `weight` with a
 * `.quant_state.bitsandbytes__<format>` sibling) or onnxruntime layout (a
 * `.quant_state.lora_ort` sibling), and reads their small JSON states. Undefined when the file
 * holds none.
 */
export async function summarizeQuantizedWeights(
  file: SafetensorsSummary,
): Promise<QuantizedFileSummary | undefined> {
  const names = file.tensors.map((t) => t.name);
  const weights = findBnb4Weights(names);
  const ortWeights = findOrtWeights(names);
  if (weights.length === 0 && ortWeights.length === 0) return undefined;
  const byName = new Map(file.tensors.map((t) => [t.name, t]));
  const covered = new Set<string>();
  const out: QuantizedWeightSummary[] = [];
  const f = await SafetensorsFile.open(file.path);
  try {
    for (const name of weights) {
      const stateKey = names.find((n) => n.startsWith(`${name}${BNB4_QUANT_STATE_PREFIX}`))!;
      const format = stateKey.slice(`${name}${BNB4_QUANT_STATE_PREFIX}`.length);
      const state = parseJsonText(
        new TextDecoder().decode(await f.readBytes(stateKey)),
        `${file.path} (${stateKey})`,
      ) as {
        quant_type?: string;
        blocksize?: number;
        shape?: number[];
        dtype?: string;
        nested_blocksize?: number;
      };
      const keys = bnb4Keys(name, format as Bnb4Format).filter((k) => byName.has(k));
      for (const k of keys) covered.add(k);
      const shape = state.shape ?? [];
      const params = numel(shape);
      const storedBytes = keys.reduce((a, k) => a + byName.get(k)!.bytes, 0);
      out.push({
        name,
        layout: 'bitsandbytes',
        format: state.quant_type ?? format,
        blockSize: state.blocksize ?? 0,
        doubleQuant: state.nested_blocksize !== undefined,
        shape,
        dtype: state.dtype ?? 'unknown',
        params,
        storedBytes,
        bitsPerParam: params > 0 ? (storedBytes * 8) / params : 0,
      });
    }
    for (const name of ortWeights) {
      const stateKey = `${name}${ORT_QUANT_STATE_SUFFIX}`;
      const state = parseJsonText(
        new TextDecoder().decode(await f.readBytes(stateKey)),
        `${file.path} (${stateKey})`,
      ) as OrtQuantState;
      const keys = [name, `${name}.scales`, `${name}.zero_points`, `${name}.absmax`, stateKey];
      const present = keys.filter((k) => byName.has(k));
      for (const k of present) covered.add(k);
      const params = numel(state.shape);
      const storedBytes = present.reduce((a, k) => a + byName.get(k)!.bytes, 0);
      out.push({
        name,
        layout: state.op,
        format: state.format,
        blockSize: state.block_size,
        doubleQuant: false,
        shape: state.shape,
        dtype: state.dtype,
        params,
        storedBytes,
        bitsPerParam: params > 0 ? (storedBytes * 8) / params : 0,
      });
    }
  } finally {
    await f.close();
  }
  const plain = file.tensors.filter((t) => !covered.has(t.name)).reduce((a, t) => a + t.params, 0);
  return { weights: out, params: plain + out.reduce((a, w) => a + w.params, 0) };
}
