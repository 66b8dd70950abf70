import { copyFile, readdir, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import {
  type DType,
  isFloatDType,
  outputMarker,
  readJsonFile,
  SafetensorsFile,
  type Tensor,
  type TensorToWrite,
  toFloat32Array,
  writeBytesAtomic,
  writeFolderAtomic,
  writeSafetensors,
} from '@lora/core';
import { blockAbsmax } from './blockwise.js';
import {
  type Bnb4StateDescriptor,
  bnb4StateDictEntries,
  bnb4StateDictSpecs,
  findBnb4Weights,
} from './bnb4-state-dict.js';
import { type Bnb4Weight, fromBlockwise, type WeightDType } from './bnb4-weight.js';
import { absmaxMean, DOUBLE_QUANT_BLOCK_SIZE } from './double-quant.js';
import { combineErrors, type ErrorStats } from './error-report.js';
import { QuantError } from './errors.js';
import { assertBlockSize, defaultBlockSize, isBnb4Format, type QuantFormat } from './formats.js';
import { blocksPerRow } from './nbits.js';
import { findOrtWeights, matMulBnb4Entries, matMulNBitsEntries } from './ort-layout.js';
import type { QuantizeWorkerPool } from './parallel.js';
import { bnbQuantizationConfig, ortQuantizationConfig } from './quantization-config.js';
import {
  measureQuantizationError,
  type QuantizedWeight,
  quantizeWeight,
  rowsAndColumns,
} from './quantized-weight.js';

/** Where quantized weights go: bitsandbytes' state dict, or onnxruntime's op initializers. */
export type QuantLayout = 'bnb' | 'ort';

export interface QuantizeModelOptions {
  format: QuantFormat;
  /** Default 64 (nf4/fp4) or 32 (int4/uint4). */
  blockSize?: number;
  doubleQuant?: boolean;
  /** Default: bnb for nf4/fp4, ort for int4/uint4 (which have no bitsandbytes layout). */
  layout?: QuantLayout;
  /**
   * Also quantize tensors whose name matches (must be float): a RegExp, or anything with
   * `test(name)` such as core's linear-time `PythonRegex` (what the CLI's `--include` uses).
   */
  include?: { test(name: string): boolean };
  /** Never quantize tensors whose name matches (same kinds as `include`). */
  exclude?: { test(name: string): boolean };
  /** `bnb_4bit_compute_dtype` to record. Default f32. */
  computeDType?: WeightDType;
  /** Worker threads for large nf4/fp4 tensors. */
  pool?: QuantizeWorkerPool;
  /** Called after each quantized tensor (progress). */
  onTensor?: (row: TensorReport) => void;
  /**
   * The command writing the output, recorded in each file's metadata (`lora.writer`) so that a
   * later `--force` recognises it (core's `guardOutput`).
   */
  writer?: string;
}

export interface TensorReport {
  readonly name: string;
  readonly shape: readonly number[];
  readonly stats: ErrorStats;
}

export interface QuantizeReport {
  readonly format: QuantFormat;
  readonly layout: QuantLayout;
  readonly blockSize: number;
  readonly doubleQuant: boolean;
  readonly tensors: TensorReport[];
  /** Tensors copied unchanged. */
  readonly kept: string[];
  readonly total: ErrorStats;
  readonly inputBytes: number;
  readonly outputBytes: number;
  readonly outputFiles: string[];
}

/**
 * Which tensors are quantized by default: float, 2-D, named `*.weight`, and not an embedding, a
 * norm or the output head (`lm_head`, a top-level `output.weight`), which stay in full precision
 * as transformers does for bitsandbytes.
 */
export function isDefaultQuantTarget(
  name: string,
  dtype: DType,
  shape: readonly number[],
): boolean {
  if (!isFloatDType(dtype) || shape.length !== 2 || !name.endsWith('.weight')) return false;
  return !/embed|lm_head|norm|(^|\.)(wte|wpe|output|ln_[^.]*)\.weight$/i.test(name);
}

/** Resolves the defaults and refuses combinations that have no meaning. */
export function resolveQuantizeOptions(o: QuantizeModelOptions): {
  format: QuantFormat;
  blockSize: number;
  doubleQuant: boolean;
  layout: QuantLayout;
} {
  const format = o.format;
  const blockSize = o.blockSize ?? defaultBlockSize(format);
  assertBlockSize(format, blockSize);
  const layout = o.layout ?? (isBnb4Format(format) ? 'bnb' : 'ort');
  const doubleQuant = Boolean(o.doubleQuant);
  if (!isBnb4Format(format) && layout === 'bnb') {
    throw new QuantError(
      'QUANT_FORMAT',
      `${format} has no bitsandbytes layout; use --layout ort (onnxruntime MatMulNBits).`,
      { format },
    );
  }
  if (doubleQuant && !isBnb4Format(format)) {
    throw new QuantError(
      'QUANT_FORMAT',
      `--double-quant quantizes nf4/fp4 absmax; ${format} stores scales (drop --double-quant).`,
      { format },
    );
  }
  if (doubleQuant && layout === 'ort') {
    throw new QuantError(
      'QUANT_FORMAT',
      'MatMulBnb4 takes float32 absmax only: --double-quant needs --layout bnb.',
      { format },
    );
  }
  return { format, blockSize, doubleQuant, layout };
}

function weightDType(dtype: DType): WeightDType {
  return dtype === 'f16' || dtype === 'bf16' ? dtype : 'f32';
}

/**
 * Quantizes one safetensors file into another, tensor by tensor (only one tensor's data in memory
 * at a time), writing atomically. Selected tensors are replaced by their quantized layout; the
 * rest are copied unchanged. Nothing is written on failure.
 */
export async function quantizeSafetensors(
  inPath: string,
  outPath: string,
  options: QuantizeModelOptions,
): Promise<QuantizeReport> {
  const { format, blockSize, doubleQuant, layout } = resolveQuantizeOptions(options);
  const file = await SafetensorsFile.open(inPath);
  try {
    const selected = selectTensors(inPath, file, options);

    const readF32 = async (name: string): Promise<Float32Array> => {
      const t = await file.read(name);
      const v = toFloat32Array(t as Tensor);
      return v;
    };

    // Spec pass: the header needs every shape up front. The bitsandbytes JSON of a double-quantized
    // weight holds the absmax mean, so those tensors are read once here (absmax only) as well.
    const entries: TensorToWrite[] = [];
    const reports: TensorReport[] = [];
    let memo: { name: string; produced: TensorToWrite[] } | undefined;
    const produce = async (name: string): Promise<TensorToWrite[]> => {
      if (memo?.name === name) return memo.produced;
      const e = file.entry(name);
      const values = await readF32(name);
      const dtype = weightDType(e.dtype);
      let weight: QuantizedWeight;
      if (isBnb4Format(format) && options.pool) {
        const blocks = await options.pool.quantizeBlockwise(values, { format, blockSize, name });
        weight = fromBlockwise(blocks, e.shape, dtype, doubleQuant);
      } else {
        weight = quantizeWeight(values, e.shape, { format, blockSize, doubleQuant, dtype, name });
      }
      const stats = measureQuantizationError(values, weight);
      const row = { name, shape: [...e.shape], stats };
      reports.push(row);
      options.onTensor?.(row);
      const produced = isBnb4Format(format)
        ? layout === 'bnb'
          ? bnb4StateDictEntries(name, weight as Bnb4Weight)
          : matMulBnb4Entries(name, weight as Bnb4Weight)
        : matMulNBitsEntries(
            name,
            weight as Parameters<typeof matMulNBitsEntries>[1],
            e.shape,
            dtype,
          );
      memo = { name, produced };
      return produced;
    };

    const kept: string[] = [];
    for (const e of file.header.entries) {
      if (!selected.has(e.name)) {
        kept.push(e.name);
        entries.push({
          name: e.name,
          dtype: e.dtype,
          shape: e.shape,
          data: () => file.read(e.name).then((t) => t.data),
        });
        continue;
      }
      const dtype = weightDType(e.dtype);
      let specs: { name: string; dtype: DType; shape: readonly number[] }[];
      if (isBnb4Format(format) && layout === 'bnb') {
        const d: Bnb4StateDescriptor = { format, blockSize, dtype, shape: e.shape };
        if (doubleQuant)
          d.nested = {
            blockSize: DOUBLE_QUANT_BLOCK_SIZE,
            offset: absmaxMean(blockAbsmax(await readF32(e.name), blockSize, e.name)),
          };
        specs = bnb4StateDictSpecs(e.name, d);
      } else {
        specs = ortSpecs(e.name, format, blockSize, e.shape, dtype);
      }
      specs.forEach((s, i) => {
        entries.push({
          ...s,
          data: async () => {
            const produced = await produce(e.name);
            const p = produced[i];
            if (p.name !== s.name || p.dtype !== s.dtype || p.shape.join() !== s.shape.join()) {
              throw new QuantError(
                'QUANT_INTERNAL',
                `internal: ${s.name} planned as ${s.dtype} [${s.shape}] but produced ${p.name} ${p.dtype} [${p.shape}].`,
              );
            }
            return typeof p.data === 'function' ? p.data() : p.data;
          },
        });
      });
    }
    await writeSafetensors(outPath, entries, {
      metadata: { format: 'pt', ...outputMarker(options.writer) },
    });
    const outputBytes = (await stat(outPath)).size;
    return {
      format,
      layout,
      blockSize,
      doubleQuant,
      tensors: reports,
      kept,
      total: combineErrors(reports.map((r) => r.stats)),
      inputBytes: file.fileSize,
      outputBytes,
      outputFiles: [outPath],
    };
  } finally {
    await file.close();
  }
}

/** Names, dtypes and shapes of a weight in the onnxruntime layout (mirrors ort-layout.ts). */
function ortSpecs(
  name: string,
  format: QuantFormat,
  blockSize: number,
  shape: readonly number[],
  dtype: WeightDType,
) {
  // Build the entries from a zero-filled weight of the right sizes: tiny for the JSON, and the
  // arrays are dropped right away (only names, dtypes and shapes are kept).
  const [N, K] = rowsAndColumns(shape);
  if (isBnb4Format(format)) {
    const n = N * K;
    const w: Bnb4Weight = {
      format,
      shape,
      dtype,
      blockSize,
      packed: new Uint8Array(0),
      absmax: new Float32Array(0),
    };
    return matMulBnb4Entries(name, {
      ...w,
      packed: new Uint8Array(Math.ceil(n / 2)),
      absmax: new Float32Array(Math.ceil(n / blockSize)),
    }).map(({ name: nm, dtype: dt, shape: sh }) => ({ name: nm, dtype: dt, shape: sh }));
  }
  const nb = blocksPerRow(K, blockSize);
  return matMulNBitsEntries(
    name,
    {
      format: format as 'int4' | 'uint4',
      N,
      K,
      blockSize,
      B: new Uint8Array(N * nb * (blockSize / 2)),
      scales: new Float32Array(N * nb),
      ...(format === 'uint4' ? { zeroPoints: new Uint8Array(N * Math.ceil(nb / 2)) } : {}),
    },
    shape,
    dtype,
  ).map(({ name: nm, dtype: dt, shape: sh }) => ({ name: nm, dtype: dt, shape: sh }));
}

/** Module name of a weight (`a.b.q_proj.weight` -> `a.b.q_proj`). */
function moduleOf(name: string): string {
  return name.replace(/\.weight$/, '');
}

/**
 * Quantizes a model folder (HF layout: config.json, *.safetensors, tokenizer files) or a single
 * `.safetensors` file. A folder gives a folder: every safetensors file quantized (same names),
 * other files copied, config.json with `quantization_config`, a sharded index rewritten. A file
 * gives a file, or a folder holding `model.safetensors` when `output` does not end in
 * `.safetensors`. The output appears atomically (built in a temporary sibling, then renamed);
 * an existing output is replaced only with `force`.
 */
export async function quantizeModel(
  input: string,
  output: string,
  options: QuantizeModelOptions & { force?: boolean },
): Promise<QuantizeReport> {
  const resolved = resolveQuantizeOptions(options);
  const info = await stat(input).catch(() => {
    throw new QuantError('QUANT_INPUT', `${input}: no such file or folder.`, { file: input });
  });
  if (!info.isDirectory() && output.endsWith('.safetensors')) {
    await refuseExisting(output, options.force);
    const file = await SafetensorsFile.open(input);
    try {
      if (selectTensors(input, file, options).size === 0) throw nothingToQuantize(input);
    } finally {
      await file.close();
    }
    return quantizeSafetensors(input, output, options);
  }
  return writeFolderAtomic(
    output,
    async (tmp) => {
      const files = info.isDirectory() ? (await readdir(input)).sort() : [basename(input)];
      const dir = info.isDirectory() ? input : dirname(input);
      const shards = info.isDirectory()
        ? files.filter((f) => f.endsWith('.safetensors'))
        : [basename(input)];
      if (info.isDirectory()) await refuseNonModelFolder(input, files);
      if (shards.length === 0)
        throw new QuantError('QUANT_INPUT', `${input}: no .safetensors file in this folder.`, {
          file: input,
        });
      const reports: QuantizeReport[] = [];
      for (const shard of shards) {
        const outName = info.isDirectory() ? shard : 'model.safetensors';
        reports.push(await quantizeSafetensors(join(dir, shard), join(tmp, outName), options));
      }
      const tensors = reports.flatMap((r) => r.tensors);
      if (tensors.length === 0) throw nothingToQuantize(input);
      const kept = reports.flatMap((r) => r.kept);
      const skipModules = [...new Set(kept.filter((n) => n.endsWith('.weight')).map(moduleOf))];
      if (info.isDirectory()) {
        for (const f of files) {
          if (f.endsWith('.safetensors')) continue;
          const src = join(input, f);
          if (!(await stat(src)).isFile()) continue;
          if (f === 'config.json') {
            const config = (await readJsonFile(src)) as Record<string, unknown>;
            config.quantization_config =
              resolved.layout === 'bnb' && isBnb4Format(resolved.format)
                ? bnbQuantizationConfig({
                    format: resolved.format,
                    doubleQuant: resolved.doubleQuant,
                    computeDType: options.computeDType,
                    skipModules,
                  })
                : ortQuantizationConfig({
                    format: resolved.format,
                    blockSize: resolved.blockSize,
                    skipModules,
                  });
            await writeBytesAtomic(join(tmp, f), `${JSON.stringify(config, null, 2)}\n`);
          } else if (f.endsWith('.safetensors.index.json')) {
            await writeBytesAtomic(join(tmp, f), await rewriteIndex(src, reports, shards));
          } else {
            await copyFile(src, join(tmp, f));
          }
        }
      }
      return {
        ...resolved,
        tensors,
        kept,
        total: combineErrors(tensors.map((t) => t.stats)),
        inputBytes: reports.reduce((s, r) => s + r.inputBytes, 0),
        outputBytes: reports.reduce((s, r) => s + r.outputBytes, 0),
        outputFiles: reports.flatMap((r) => r.outputFiles.map((p) => join(output, basename(p)))),
      };
    },
    { overwrite: options.force },
  );
}

/**
 * The tensors of a file that quantization replaces (default targets plus --include, minus
 * --exclude), after refusing files that are already 4-bit or are LoRA adapters.
 */
function selectTensors(
  inPath: string,
  file: SafetensorsFile,
  options: Pick<QuantizeModelOptions, 'include' | 'exclude'>,
): Set<string> {
  refuseNonModel(inPath, file.names());
  const selected = new Set<string>();
  for (const e of file.header.entries) {
    const wanted =
      isDefaultQuantTarget(e.name, e.dtype, e.shape) || Boolean(options.include?.test(e.name));
    if (!wanted || options.exclude?.test(e.name)) continue;
    if (!isFloatDType(e.dtype)) {
      throw new QuantError(
        'QUANT_DTYPE',
        `${inPath}: tensor "${e.name}" is ${e.dtype}; only float tensors (f32, f16, bf16, f64) can be quantized. Narrow --include.`,
        {
          file: inPath,
          tensor: e.name,
          dtype: e.dtype,
        },
      );
    }
    if (e.shape.length === 0 || e.byteLength === 0) continue;
    selected.add(e.name);
  }
  return selected;
}

/**
 * Refuses inputs whose quantization would be useless: weights that are already 4-bit (they would
 * only be copied), and LoRA adapters (quantize the base model instead; QLoRA keeps the adapter in
 * full precision).
 */
function refuseNonModel(path: string, names: readonly string[]): void {
  const quantized = [...findBnb4Weights(names), ...findOrtWeights(names)];
  if (quantized.length > 0) {
    throw new QuantError(
      'QUANT_ALREADY_QUANTIZED',
      `${path} already holds 4-bit weights (e.g. "${quantized[0]}"); quantizing it again would only copy them. Quantize the original full-precision model, or run \`lora dequantize\` first to change the format.`,
      { file: path, tensor: quantized[0] },
    );
  }
  const lora = names.find((n) => /\.lora_(A|B|embedding_A|embedding_B)(\.|$)/.test(n));
  if (lora !== undefined) {
    throw new QuantError(
      'QUANT_ADAPTER_INPUT',
      `${path} is a LoRA adapter ("${lora}"), not a model. Quantize the base model and load the adapter on top of it (QLoRA keeps adapters in full precision), or merge the adapter first (\`lora merge\`).`,
      { file: path, tensor: lora },
    );
  }
}

function nothingToQuantize(input: string): QuantError {
  return new QuantError(
    'QUANT_NOTHING',
    `${input}: no tensor was selected for quantization (2-D float *.weight tensors other than embeddings, norms and the output head, adjusted by --include / --exclude). Nothing was written.`,
    { file: input },
  );
}

/** Folder-level refusals, before anything is written: adapter folders and quantized configs. */
async function refuseNonModelFolder(dir: string, files: readonly string[]): Promise<void> {
  if (files.includes('adapter_config.json')) {
    throw new QuantError(
      'QUANT_ADAPTER_INPUT',
      `${dir} is a LoRA adapter folder (adapter_config.json), not a model. Quantize the base model and load the adapter on top of it, or merge the adapter first (\`lora merge\`).`,
      { file: dir },
    );
  }
  if (files.includes('config.json')) {
    const config = (await readJsonFile(join(dir, 'config.json'))) as Record<string, unknown>;
    if (config.quantization_config !== undefined && config.quantization_config !== null) {
      throw new QuantError(
        'QUANT_ALREADY_QUANTIZED',
        `${dir}: config.json has a quantization_config; the model is already quantized. Quantize the original full-precision model, or run \`lora dequantize\` first.`,
        { file: dir },
      );
    }
  }
}

/** A sharded model's index: map every output key to the shard that holds it. */
async function rewriteIndex(
  indexPath: string,
  reports: QuantizeReport[],
  shards: string[],
): Promise<string> {
  const index = (await readJsonFile(indexPath)) as {
    metadata?: Record<string, unknown>;
    weight_map?: Record<string, string>;
  };
  const weightMap: Record<string, string> = {};
  for (let i = 0; i < reports.length; i++) {
    const f = await SafetensorsFile.open(reports[i].outputFiles[0]);
    for (const n of f.names()) weightMap[n] = shards[i];
    await f.close();
  }
  index.weight_map = weightMap;
  return `${JSON.stringify(index, null, 2)}\n`;
}

/** Refuses an existing single-file output unless `force` (folders go through writeFolderAtomic). */
export async function refuseExisting(path: string, force?: boolean): Promise<void> {
  const exists = await stat(path).then(
    () => true,
    () => false,
  );
  if (exists && !force) {
    throw new QuantError(
      'QUANT_OUTPUT_EXISTS',
      `${path} exists. Choose another output or pass --force to overwrite it.`,
      { file: path },
    );
  }
}
