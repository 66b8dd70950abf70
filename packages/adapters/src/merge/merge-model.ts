import { copyFile, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  type FloatDType,
  isFloatDType,
  LoraError,
  OUTPUT_WRITER_KEY,
  outputMarker,
  parseJsonText,
  type Tensor,
  type TensorToWrite,
  temporaryPath,
  trackTemporary,
  type UnmergeResidual,
  untrackTemporary,
  writeFolderAtomic,
  writeSafetensors,
} from '@lora/core';
import {
  bnb4Keys,
  bnb4StateDictEntries,
  combineErrors,
  dequantizeBnb4,
  type ErrorStats,
  findBnb4Weights,
  measureError,
  quantizeBnb4,
  readBnb4Weight,
  type Bnb4Weight,
} from '@lora/quant';
import { AdapterError } from '../errors.js';
import { checkAdapterTargets, moduleNamesOf } from '../targets.js';
import { ModelFiles } from '../model/model-files.js';
import { mergeTensor } from './compute.js';
import { type AdapterSource, planMerge, type TensorCatalog, type TensorPlan } from './plan.js';
import { BlockBuffers, streamedTensor } from './streamed.js';
import {
  adapterFingerprint,
  RESIDUAL_FILE,
  type ResidualContents,
  residualDataBytes,
  writeResidualFile,
} from './residual-file.js';

export interface MergeModelOptions {
  /** dtype of every float tensor written. Default: each tensor keeps its dtype (a 4-bit weight: its original dtype). */
  dtype?: FloatDType;
  /**
   * Write the exact-unmerge residual beside the output. Default: true, unless `dtype` narrows a
   * float tensor (f32 -> f16/bf16, f16 <-> bf16): then nearly every element of it would need an
   * entry, a residual about as large as the model, so none is written (see
   * {@link MergeModelReport.residualSkipped}); pass true to write it anyway. Widening casts
   * (f16/bf16 -> f32) keep an exact unmerge with a near-empty residual.
   */
  residual?: boolean;
  /** Replace an existing output (atomically). Default false: refuse. */
  overwrite?: boolean;
  /**
   * The command writing the output, recorded in each written file's metadata (`lora.writer`,
   * replacing the base's) so that a later `--force` recognises it.
   */
  writer?: string;
  /** 4-bit base: quantize the merged weights again (same format, block size, double quant). Default false: write full precision. */
  requantize?: boolean;
  /** Called after each tensor is written. */
  onProgress?: (p: { tensor: string; done: number; total: number }) => void;
}

export interface MergeModelReport {
  readonly base: string;
  readonly output: string;
  /** Base weights that received LoRA deltas, with the modules merged into each. */
  readonly merged: readonly { tensor: string; modules: string[]; dora: boolean }[];
  /** Tensors replaced by saved modules (modules_to_save). */
  readonly replaced: readonly string[];
  /** Biases changed by lora_bias. */
  readonly biases: readonly string[];
  readonly tensorsWritten: number;
  /** 4-bit weights dequantized (or, with requantize, merged and quantized again). */
  readonly quantized: readonly string[];
  /** Re-quantization error per re-quantized weight and in total (requantize only). */
  readonly requantizationError?: {
    readonly perTensor: readonly { tensor: string; stats: ErrorStats }[];
    readonly total: ErrorStats;
  };
  readonly residual?: {
    readonly path: string;
    readonly bytes: number;
    readonly patchedElements: number;
  };
  /** Why no residual was written by default (the output dtype narrows the base's). */
  readonly residualSkipped?: string;
  /**
   * Findings of PEFT's target matching against the base's module names: modules the config
   * targets that have no weights in the adapter (PEFT's "missing adapter keys"), or weights the
   * config would not put on a module. The merge itself applies exactly the weights present.
   */
  readonly warnings: string[];
}

/** Output paths: a folder for a folder base; `<out>.safetensors` (+ residual beside it) for a file base. */
export function residualPathFor(output: string, outputIsFolder: boolean): string {
  return outputIsFolder
    ? join(output, RESIDUAL_FILE)
    : `${output.replace(/\.safetensors$/, '')}.unmerge-residual.safetensors`;
}

/** Reads a safetensors file's raw header (8-byte length prefix + JSON), kept for the exact unmerge. */
async function readHeaderBytes(path: string, headerByteLength: number): Promise<Uint8Array> {
  const h = await open(path, 'r');
  try {
    const bytes = new Uint8Array(8 + headerByteLength);
    let done = 0;
    while (done < bytes.length) {
      const { bytesRead } = await h.read(bytes, done, bytes.length - done, done);
      if (bytesRead === 0)
        throw new AdapterError('MODEL_READ_FAILED', `${path}: file ended inside the header.`, {
          path,
        });
      done += bytesRead;
    }
    return bytes;
  } finally {
    await h.close();
  }
}

/** The base's catalog, with the logical shape of 4-bit weights read from their quant state. */
async function catalogOf(
  model: ModelFiles,
): Promise<{ catalog: TensorCatalog; quantized: Map<string, Bnb4Weight | undefined> }> {
  const quantized = new Map<string, Bnb4Weight | undefined>();
  const shapes = new Map<string, number[]>();
  for (const name of findBnb4Weights(model.names())) {
    const w = await readBnb4Weight(model, name);
    shapes.set(name, [...w.shape]);
    quantized.set(name, undefined); // read again when written, to keep memory bounded
  }
  const catalog: TensorCatalog & { logicalShape(n: string): number[] | undefined } = {
    has: (n) => model.has(n),
    entry: (n) => model.entry(n),
    logicalShape: (n) => shapes.get(n),
  };
  return { catalog, quantized };
}

/**
 * Merges one or several weighted adapters into a base model and writes a new model:
 * `W' = W + Σ weight_i · s_i · B_i·A_i` (transposed for fan_in_fan_out and embeddings; DoRA
 * rescaled per output row; lora_bias added to the bias; saved modules replace the base's).
 *
 * Safe: names and shapes of every target are checked from the headers BEFORE anything is
 * written; tensors are then streamed one at a time, plain LoRA targets, casts and untouched tensors
 * in 4 MiB blocks of rows through reused buffers (DoRA, replaced and 4-bit tensors whole); a
 * NaN/Inf result aborts and leaves no output at all (the output is built in a temporary sibling
 * and renamed at the end). The base is only read.
 *
 * `base` is a model folder (Hugging Face layout, shards kept as they are, other files copied)
 * or a `.safetensors` file; `output` is then a folder or a file. A 4-bit bitsandbytes base is
 * dequantized and written in full precision unless `requantize`. With `residual` (default), a
 * small `unmerge-residual.safetensors` lets {@link unmergeModel} restore the base bit for bit.
 */
export async function mergeIntoModel(
  base: string,
  sources: readonly AdapterSource[],
  output: string,
  options: MergeModelOptions = {},
): Promise<MergeModelReport> {
  if (sources.length === 0)
    throw new AdapterError('MERGE_NO_ADAPTER', 'Nothing to merge: give at least one adapter.');
  const model = await ModelFiles.open(base);
  try {
    const { catalog, quantized } = await catalogOf(model);
    const plan = planMerge(catalog, sources);
    const warnings = targetWarnings(sources, model.names());
    const casts = castDtypes(model, quantized, options.dtype);
    const capture = options.residual ?? casts.length === 0;
    const residualSkipped =
      options.residual === undefined && !capture
        ? `no unmerge residual written: the output dtype ${options.dtype} is narrower than the base's ${casts.join('/')}, so nearly every element of those tensors would need an entry (a residual about as large as the model). Merge without narrowing the dtype to keep an exact unmerge, or ask for the residual explicitly.`
        : undefined;
    const outIsFolder = model.isFolder;
    if (!outIsFolder && !options.overwrite && (await exists(output))) {
      throw new AdapterError(
        'OUTPUT_EXISTS',
        `${output} already exists. Choose another output or allow overwriting (--force).`,
        { path: output },
      );
    }
    if (!outIsFolder && !output.endsWith('.safetensors')) {
      throw new AdapterError(
        'OUTPUT_INVALID',
        `${output}: the base is a single .safetensors file, so the output must be a path ending in .safetensors.`,
        { path: output },
      );
    }

    const residuals = new Map<string, UnmergeResidual>();
    const originals = new Map<string, Tensor>();
    const files = new Map<string, Uint8Array>();
    const requantStats: { tensor: string; stats: ErrorStats }[] = [];
    const auxKeys = new Set<string>();
    for (const q of quantized.keys())
      for (const k of bnb4Keys(q, 'nf4').concat(bnb4Keys(q, 'fp4'))) if (k !== q) auxKeys.add(k);

    // Tensors read from the base go through these, block by block (see streamedTensor).
    const blocks = new BlockBuffers();
    const total = model.names().length;
    let done = 0;
    let written = 0;
    const progress = (tensor: string) => options.onProgress?.({ tensor, done: ++done, total });

    const writeShards = async (fileFor: (fileName: string) => string) => {
      for (const shard of model.shards) {
        const entries: TensorToWrite[] = [];
        for (const name of shard.file.names()) {
          if (auxKeys.has(name)) {
            const changed = !options.requantize || plan.tensors.has(baseOfAux(name, quantized));
            if (changed) {
              // Dequantized, or re-quantized after the merge: written by the weight's own entries.
              if (capture) originals.set(name, await model.read(name));
              progress(name);
              continue;
            }
            // re-quantize mode: 4-bit weights no adapter touches keep their tensors as they are
            const e = model.entry(name);
            entries.push({
              name,
              dtype: e.dtype,
              shape: e.shape,
              data: async () => (await model.read(name)).data,
            });
            continue;
          }
          if (quantized.has(name)) {
            entries.push(...(await quantizedEntries(name)));
            continue;
          }
          const e = model.entry(name);
          const tplan = plan.tensors.get(name);
          const outDtype = isFloatDType(e.dtype) ? (options.dtype ?? e.dtype) : undefined;
          const streamed = streamedTensor(
            model,
            name,
            tplan,
            outDtype ?? e.dtype,
            capture,
            blocks,
            (residual) => {
              if (residual) residuals.set(name, residual);
              progress(name);
              written++;
            },
          );
          entries.push({
            name,
            dtype: outDtype ?? e.dtype,
            shape: e.shape,
            data:
              streamed ??
              (async () => {
                const t = await model.read(name);
                // An adapter's own base weight (PEFT base_layer.weight): merged onto it; the
                // original is kept whole for the exact unmerge.
                const newBase = tplan?.kind === 'lora' ? tplan.newBase?.tensor : undefined;
                const r = !outDtype
                  ? { tensor: t }
                  : newBase
                    ? {
                        ...mergeTensor(name, newBase, tplan, outDtype, false),
                        original: capture ? t : undefined,
                      }
                    : mergeTensor(name, t, tplan, outDtype, capture);
                if ('residual' in r && r.residual) residuals.set(name, r.residual);
                if ('original' in r && r.original) originals.set(name, r.original);
                progress(name);
                written++;
                return r.tensor.data;
              }),
          });
        }
        // The base's own writer marker (if any) does not describe this output.
        const { [OUTPUT_WRITER_KEY]: _baseWriter, ...metadata } = shard.file.metadata;
        await writeSafetensors(fileFor(shard.fileName), entries, {
          metadata: { ...metadata, ...outputMarker(options.writer) },
        });
      }
    };

    // A 4-bit weight: dequantize, merge, then write it in full precision or quantize it again.
    const quantizedEntries = async (name: string): Promise<TensorToWrite[]> => {
      const w = await readBnb4Weight(model, name);
      const tplan = plan.tensors.get(name);
      const outDtype = options.dtype ?? w.dtype;
      if (capture && (tplan || !options.requantize)) originals.set(name, await model.read(name));
      const mergedOf = async (): Promise<Tensor> => {
        const values = dequantizeBnb4(w);
        const asTensor = { dtype: 'f32', shape: [...w.shape], data: values } as Tensor;
        return mergeTensor(name, asTensor, tplan, options.requantize ? 'f32' : outDtype, false)
          .tensor;
      };
      if (!options.requantize) {
        return [
          {
            name,
            dtype: outDtype,
            shape: [...w.shape],
            data: async () => {
              const t = await mergedOf();
              progress(name);
              written++;
              return t.data;
            },
          },
        ];
      }
      if (!tplan) {
        const e = model.entry(name);
        return [
          { name, dtype: e.dtype, shape: e.shape, data: async () => (await model.read(name)).data },
        ];
      }
      const merged = await mergedOf();
      const again = quantizeBnb4(merged.data as Float32Array, w.shape, {
        format: w.format,
        blockSize: w.blockSize,
        doubleQuant: !(w.absmax instanceof Float32Array),
        dtype: w.dtype,
        name,
      });
      requantStats.push({
        tensor: name,
        stats: measureError(merged.data as Float32Array, dequantizeBnb4(again)),
      });
      written++;
      progress(name);
      return bnb4StateDictEntries(name, again);
    };

    const adapters = sources.map((s, i) => ({
      label: s.label ?? `adapter ${i + 1}`,
      weight: s.weight ?? 1,
      sha256: adapterFingerprint(s.adapter),
    }));
    const shardHeaders = async () =>
      Promise.all(
        model.shards.map(async (s) => ({
          fileName: s.fileName,
          header: await readHeaderBytes(s.file.path, s.file.header.headerByteLength),
        })),
      );

    let residualInfo: MergeModelReport['residual'];
    const finishResidual = async (path: string) => {
      if (!capture) return;
      const contents: ResidualContents = {
        adapters,
        shards: await shardHeaders(),
        residuals,
        originals,
        files,
      };
      await writeResidualFile(path, contents, options.writer);
      let patched = 0;
      for (const r of residuals.values()) patched += r.indices.length;
      residualInfo = {
        path: residualPathFor(output, outIsFolder),
        bytes: residualDataBytes(contents),
        patchedElements: patched,
      };
    };

    if (outIsFolder) {
      await writeFolderAtomic(
        output,
        async (tmp) => {
          await writeShards((f) => join(tmp, f));
          for (const f of model.otherFiles) {
            if (f === 'config.json' && quantized.size > 0 && !options.requantize) {
              const original = await readFile(join(base, f));
              files.set(f, new Uint8Array(original));
              await writeFileWithoutQuantConfig(join(tmp, f), original);
            } else {
              await copyFile(join(base, f), join(tmp, f));
            }
          }
          await finishResidual(join(tmp, RESIDUAL_FILE));
        },
        { overwrite: options.overwrite },
      );
    } else {
      // Single file: build both files in a temporary folder, then move them into place.
      // (a temporary name of core's, so a kill leaves nothing the next run does not remove)
      const stage = temporaryPath(output);
      trackTemporary(stage);
      try {
        await writeFolderAtomic(stage, async (tmp) => {
          await writeShards(() => join(tmp, 'model.safetensors'));
          await finishResidual(join(tmp, RESIDUAL_FILE));
        });
        if (capture) await rename(join(stage, RESIDUAL_FILE), residualPathFor(output, false));
        await rename(join(stage, 'model.safetensors'), output);
      } finally {
        await rm(stage, { recursive: true, force: true });
        untrackTemporary(stage);
      }
    }

    const merged: { tensor: string; modules: string[]; dora: boolean }[] = [];
    const replaced: string[] = [];
    const biases: string[] = [];
    for (const [tensor, p] of plan.tensors as Map<string, TensorPlan>) {
      if (p.kind === 'lora') {
        merged.push({ tensor, modules: p.terms.map((t) => t.module), dora: p.dora });
        if (p.newBase) replaced.push(tensor);
      } else if (p.kind === 'replace') replaced.push(tensor);
      else biases.push(tensor);
    }
    return {
      base,
      output,
      merged,
      replaced,
      biases,
      tensorsWritten: written,
      quantized: [...quantized.keys()],
      requantizationError:
        options.requantize && requantStats.length > 0
          ? { perTensor: requantStats, total: combineErrors(requantStats.map((s) => s.stats)) }
          : undefined,
      residual: residualInfo,
      residualSkipped,
      warnings,
    };
  } finally {
    await model.close();
  }
}

/**
 * The float dtypes of the base that `dtype` cannot hold exactly (a narrowing cast). 4-bit weights
 * and their statistics do not count: their residual is the stored 4-bit tensors themselves.
 */
function castDtypes(
  model: ModelFiles,
  quantized: ReadonlyMap<string, unknown>,
  dtype: FloatDType | undefined,
): FloatDType[] {
  if (!dtype) return [];
  const found = new Set<FloatDType>();
  for (const name of model.names()) {
    if (quantized.has(name) || quantized.has(baseOfAux(name, quantized))) continue;
    const e = model.entry(name);
    if (isFloatDType(e.dtype) && !holdsExactly(dtype, e.dtype)) found.add(e.dtype);
  }
  return [...found];
}

/** Every value of `from` is a value of `to`. */
function holdsExactly(to: FloatDType, from: FloatDType): boolean {
  return to === from || to === 'f64' || (to === 'f32' && (from === 'f16' || from === 'bf16'));
}

function targetWarnings(sources: readonly AdapterSource[], names: readonly string[]): string[] {
  const modules = moduleNamesOf(names);
  const out: string[] = [];
  sources.forEach((s, i) => {
    const label = s.label ?? `adapter ${i + 1}`;
    let check: ReturnType<typeof checkAdapterTargets>;
    try {
      check = checkAdapterTargets(s.adapter, modules);
    } catch (e) {
      // e.g. target_modules null with no model type: nothing to compare against. A regex that is
      // invalid or that RE2 cannot run is reported; the weights present are merged all the same.
      if (e instanceof LoraError && e.code.startsWith('REGEX_')) out.push(`${label}: ${e.message}`);
      return;
    }
    if (check.missingWeights.length > 0) {
      out.push(
        `${label}: its config targets ${check.missingWeights.length} module(s) of the base that have no LoRA weights (e.g. ${check.missingWeights.slice(0, 3).join(', ')}); PEFT would report them as missing adapter keys. Only the weights present were merged.`,
      );
    }
    if (check.notTargeted.length > 0) {
      out.push(
        `${label}: ${check.notTargeted.length} module(s) have weights the config does not target (e.g. ${check.notTargeted.slice(0, 3).join(', ')}); PEFT would ignore them, this merge applies them.`,
      );
    }
  });
  return out;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

function baseOfAux(aux: string, quantized: ReadonlyMap<string, unknown>): string {
  for (const q of quantized.keys()) if (aux.startsWith(`${q}.`)) return q;
  return aux;
}

/** config.json of a dequantized model: the same JSON without `quantization_config`. */
async function writeFileWithoutQuantConfig(path: string, original: Buffer): Promise<void> {
  const { writeBytesAtomic } = await import('@lora/core');
  let json: Record<string, unknown>;
  try {
    json = parseJsonText(original.toString('utf8'), path) as Record<string, unknown>;
  } catch {
    await writeBytesAtomic(path, new Uint8Array(original));
    return;
  }
  delete json.quantization_config;
  await writeBytesAtomic(path, `${JSON.stringify(json, null, 2)}\n`);
}
