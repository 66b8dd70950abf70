import { copyFile, readdir, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import {
  type DType,
  fromFloat32Array,
  outputMarker,
  parseJsonText,
  readJsonFile,
  SafetensorsFile,
  type TensorToWrite,
  toFloat32Array,
  writeBytesAtomic,
  writeFolderAtomic,
  writeSafetensors,
} from '@lora/core';
import {
  BNB4_QUANT_STATE_PREFIX,
  bnb4Keys,
  findBnb4Weights,
  readBnb4Weight,
} from './bnb4-state-dict.js';
import { combineErrors, type ErrorStats, measureError } from './error-report.js';
import { QuantError } from './errors.js';
import { findOrtWeights, ORT_QUANT_STATE_SUFFIX, readOrtWeight } from './ort-layout.js';
import { refuseExisting, type TensorReport } from './quantize-model.js';
import { dequantizeWeightF32, type QuantizedWeight, storedBits } from './quantized-weight.js';

export type DequantizeDType = 'f32' | 'f16' | 'bf16';

export interface DequantizeReport {
  readonly dtype: DequantizeDType;
  /**
   * Per weight: `stats` is the rounding error of the output dtype against the exact float32
   * dequantization (zero for f32), with the bits per parameter of the quantized input.
   */
  readonly tensors: TensorReport[];
  readonly kept: string[];
  readonly total: ErrorStats;
  readonly inputBytes: number;
  readonly outputBytes: number;
}

/** Dequantizes one safetensors file (bitsandbytes or onnxruntime layout) into plain tensors, streaming. */
export async function dequantizeSafetensors(
  inPath: string,
  outPath: string,
  dtype: DequantizeDType,
  writer?: string,
): Promise<DequantizeReport> {
  if (dtype !== 'f32' && dtype !== 'f16' && dtype !== 'bf16') {
    throw new QuantError('QUANT_DTYPE', `Dequantize to f32, f16 or bf16, not ${dtype}.`, { dtype });
  }
  const file = await SafetensorsFile.open(inPath);
  try {
    const names = file.names();
    const bnb = findBnb4Weights(names);
    const ort = findOrtWeights(names);
    const owned = new Set<string>();
    for (const w of bnb) {
      for (const k of bnb4Keys(w, 'nf4').concat(bnb4Keys(w, 'fp4'))) if (file.has(k)) owned.add(k);
    }
    for (const w of ort) {
      for (const k of [
        w,
        `${w}.scales`,
        `${w}.zero_points`,
        `${w}.absmax`,
        `${w}${ORT_QUANT_STATE_SUFFIX}`,
      ])
        if (file.has(k)) owned.add(k);
    }
    const weights = new Map<string, () => Promise<{ weight: QuantizedWeight; shape: number[] }>>();
    for (const w of bnb)
      weights.set(w, async () => {
        const weight = await readBnb4Weight(file, w);
        return { weight, shape: [...weight.shape] };
      });
    for (const w of ort)
      weights.set(w, async () => {
        const o = await readOrtWeight(file, w);
        return {
          weight:
            o.op === 'MatMulNBits' ? { ...o.weight, shape: o.shape, dtype: o.dtype } : o.weight,
          shape: o.shape,
        };
      });
    const entries: TensorToWrite[] = [];
    const reports: TensorReport[] = [];
    const kept: string[] = [];
    for (const name of names) {
      const load = weights.get(name);
      if (load) {
        // The shape is in the small JSON state: read only that to plan the header.
        const shape = await stateShape(file, name);
        entries.push({
          name,
          dtype: dtype as DType,
          shape,
          data: async () => {
            const { weight } = await load();
            const exact = dequantizeWeightF32(weight);
            const out = fromFloat32Array(exact, dtype);
            const back = dtype === 'f32' ? exact : toFloat32Array({ dtype, shape, data: out });
            reports.push({ name, shape, stats: measureError(exact, back, storedBits(weight)) });
            return out;
          },
        });
      } else if (!owned.has(name) && !name.includes(BNB4_QUANT_STATE_PREFIX)) {
        kept.push(name);
        const e = file.entry(name);
        entries.push({
          name,
          dtype: e.dtype,
          shape: e.shape,
          data: () => file.read(name).then((t) => t.data),
        });
      }
    }
    await writeSafetensors(outPath, entries, {
      metadata: { format: 'pt', ...outputMarker(writer) },
    });
    return {
      dtype,
      tensors: reports,
      kept,
      total: combineErrors(reports.map((r) => r.stats)),
      inputBytes: file.fileSize,
      outputBytes: (await stat(outPath)).size,
    };
  } finally {
    await file.close();
  }
}

/**
 * Dequantizes a quantized model folder (or a single file) into plain tensors: the folder keeps
 * its other files, and config.json loses `quantization_config`. Output appears atomically.
 */
export async function dequantizeModel(
  input: string,
  output: string,
  options: {
    dtype?: DequantizeDType;
    force?: boolean;
    /** The command writing the output, recorded in each file's metadata (`lora.writer`). */
    writer?: string;
  } = {},
): Promise<DequantizeReport> {
  const dtype = options.dtype ?? 'f32';
  const info = await stat(input).catch(() => {
    throw new QuantError('QUANT_INPUT', `${input}: no such file or folder.`, { file: input });
  });
  if (!info.isDirectory() && output.endsWith('.safetensors')) {
    await refuseExisting(output, options.force);
    await refuseNothingQuantized(input, [input]);
    return dequantizeSafetensors(input, output, dtype, options.writer); // writeSafetensors itself is atomic
  }
  const inputs = info.isDirectory()
    ? (await readdir(input)).filter((f) => f.endsWith('.safetensors')).map((f) => join(input, f))
    : [input];
  await refuseNothingQuantized(input, inputs);
  return writeFolderAtomic(
    output,
    async (tmp) => {
      const files = info.isDirectory() ? (await readdir(input)).sort() : [basename(input)];
      const dir = info.isDirectory() ? input : dirname(input);
      const shards = files.filter((f) => f.endsWith('.safetensors'));
      if (shards.length === 0)
        throw new QuantError('QUANT_INPUT', `${input}: no .safetensors file in this folder.`, {
          file: input,
        });
      const reports: DequantizeReport[] = [];
      for (const shard of shards) {
        reports.push(
          await dequantizeSafetensors(
            join(dir, shard),
            join(tmp, info.isDirectory() ? shard : 'model.safetensors'),
            dtype,
            options.writer,
          ),
        );
      }
      if (info.isDirectory()) {
        for (const f of files) {
          if (f.endsWith('.safetensors')) continue;
          const src = join(input, f);
          if (!(await stat(src)).isFile()) continue;
          if (f === 'config.json') {
            const config = (await readJsonFile(src)) as Record<string, unknown>;
            delete config.quantization_config;
            await writeBytesAtomic(join(tmp, f), `${JSON.stringify(config, null, 2)}\n`);
          } else if (f.endsWith('.safetensors.index.json')) {
            const index = (await readJsonFile(src)) as {
              weight_map?: Record<string, string>;
            };
            const map: Record<string, string> = {};
            for (let i = 0; i < shards.length; i++) {
              const out = await SafetensorsFile.open(join(tmp, shards[i]));
              for (const n of out.names()) map[n] = shards[i];
              await out.close();
            }
            index.weight_map = map;
            await writeBytesAtomic(join(tmp, f), `${JSON.stringify(index, null, 2)}\n`);
          } else {
            await copyFile(src, join(tmp, f));
          }
        }
      }
      const tensors = reports.flatMap((r) => r.tensors);
      return {
        dtype,
        tensors,
        kept: reports.flatMap((r) => r.kept),
        total: combineErrors(tensors.map((t) => t.stats)),
        inputBytes: reports.reduce((s, r) => s + r.inputBytes, 0),
        outputBytes: reports.reduce((s, r) => s + r.outputBytes, 0),
      };
    },
    { overwrite: options.force },
  );
}

/** The original shape recorded in a quantized weight's JSON state (bitsandbytes or onnxruntime layout). */
async function stateShape(file: SafetensorsFile, name: string): Promise<number[]> {
  const key = [
    `${name}${BNB4_QUANT_STATE_PREFIX}nf4`,
    `${name}${BNB4_QUANT_STATE_PREFIX}fp4`,
    `${name}${ORT_QUANT_STATE_SUFFIX}`,
  ].find((k) => file.has(k));
  const state = key
    ? ((parseJsonText(
        new TextDecoder().decode((await file.read(key)).data as Uint8Array),
        `${file.path} (${key})`,
      ) ?? {}) as { shape?: unknown })
    : {};
  if (!Array.isArray(state.shape) || !state.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new QuantError(
      'QUANT_STATE_INVALID',
      `${file.path}: "${name}" has no valid shape in its quantization state.`,
      { file: file.path, tensor: name },
    );
  }
  return state.shape as number[];
}

/** Refuses an input without any 4-bit weight: dequantizing it would only copy it. */
async function refuseNothingQuantized(input: string, files: readonly string[]): Promise<void> {
  for (const path of files) {
    const file = await SafetensorsFile.open(path);
    const names = file.names();
    await file.close();
    if (findBnb4Weights(names).length > 0 || findOrtWeights(names).length > 0) return;
  }
  if (files.length === 0) return; // reported with the missing-file error
  throw new QuantError(
    'QUANT_NOTHING',
    `${input} holds no 4-bit weights (bitsandbytes or onnxruntime layout); dequantizing it would only copy it. Nothing was written.`,
    { file: input },
  );
}
