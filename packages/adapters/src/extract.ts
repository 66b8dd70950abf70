import { existsSync } from 'node:fs';
import { join } from 'node:path';
import {
  createLoraConfig,
  isFloatDType,
  randomizedSvd,
  readJsonFile,
  svd,
  type Tensor,
  tensor,
  toFloat32Array,
} from '@lora/core';
import type { Adapter, LoraModule } from './adapter.js';
import { AdapterError } from './errors.js';
import { ModelFiles } from './model/model-files.js';

export interface ExtractOptions {
  /** Rank r of every extracted module. */
  readonly rank: number;
  /** lora_alpha of the result (default r, so the scaling is 1). The factors absorb 1/scaling. */
  readonly alpha?: number;
  /** Weights stored [in, out] (GPT-2 Conv1D): default true when config.json says model_type "gpt2". */
  readonly fanInFanOut?: boolean;
  /** Use the exact (Jacobi) SVD when min(rows, cols) is at most this; randomized above. Default 256. */
  readonly exactUpTo?: number;
  /** Seed of the randomized SVD (default 0). */
  readonly seed?: number;
  /** Power iterations of the randomized SVD (default 2). */
  readonly powerIterations?: number;
  readonly onProgress?: (p: { module: string; done: number; total: number }) => void;
}

/** One extracted module. */
export interface ExtractedModule {
  readonly module: string;
  /** Shape of the stored weight. */
  readonly shape: readonly number[];
  /** Share of ||tuned - base||_F^2 captured by the rank-r approximation (0..1). */
  readonly energy: number;
  readonly method: 'exact' | 'randomized';
  readonly embedding: boolean;
}

export interface ExtractResult {
  readonly adapter: Adapter;
  readonly modules: readonly ExtractedModule[];
  /** Tensors that differ but are not 2-D (biases, norms): a LoRA cannot hold them. */
  readonly skipped: readonly { tensor: string; reason: string }[];
  /** Share of the total squared difference (over all extracted modules) captured. */
  readonly totalEnergy: number;
}

const EMBEDDING_NAME =
  /(^|\.)(embed_tokens|embed_in|wte|wpe|word_embeddings|position_embeddings|token_type_embeddings|shared|embeddings)(\.weight)?$/;

/** `model_type` of a model folder's config.json; undefined without one (a lone .safetensors file). */
async function modelType(path: string): Promise<string | undefined> {
  const config = join(path, 'config.json');
  if (!existsSync(config)) return undefined;
  const json = (await readJsonFile(config)) as { model_type?: unknown } | null;
  return typeof json?.model_type === 'string' ? json.model_type : undefined;
}

/**
 * Extracts a LoRA adapter of rank r approximating `tuned - base`: for every 2-D float weight
 * present in both with the same shape and different values, the difference D is factored by
 * truncated SVD (exact for small matrices, randomized for large ones), B = U_r sqrt(S_r) and
 * A = sqrt(S_r) V_r^T (in torch layout: transposed for fan_in_fan_out weights; embeddings become
 * embedding LoRA). Reports the captured energy sum(s_i^2, i <= r) / ||D||_F^2 per module.
 * Memory: one pair of tensors and their difference at a time.
 */
export async function extractAdapter(
  base: string,
  tuned: string,
  options: ExtractOptions,
): Promise<ExtractResult> {
  const { rank } = options;
  if (!Number.isInteger(rank) || rank < 1)
    throw new AdapterError('EXTRACT_RANK_INVALID', `rank must be a positive integer, got ${rank}.`);
  const alpha = options.alpha ?? rank;
  const scaling = alpha / rank;
  const baseModel = await ModelFiles.open(base);
  const tunedModel = await ModelFiles.open(tuned).catch(async (e) => {
    await baseModel.close();
    throw e;
  });
  try {
    const fanInFanOut =
      options.fanInFanOut ?? (baseModel.isFolder && (await modelType(base)) === 'gpt2');
    const candidates: string[] = [];
    const skipped: { tensor: string; reason: string }[] = [];
    for (const name of baseModel.names()) {
      if (!tunedModel.has(name)) continue;
      const a = baseModel.entry(name);
      const b = tunedModel.entry(name);
      if (!isFloatDType(a.dtype) || !isFloatDType(b.dtype)) continue;
      if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
        skipped.push({
          tensor: name,
          reason: `shapes differ: [${a.shape.join(', ')}] vs [${b.shape.join(', ')}]`,
        });
        continue;
      }
      candidates.push(name);
    }

    const modules = new Map<string, LoraModule>();
    const report: ExtractedModule[] = [];
    let totalNorm = 0;
    let totalCaptured = 0;
    let done = 0;
    for (const name of candidates) {
      const wb = toFloat32Array(await baseModel.read(name));
      const wt = toFloat32Array(await tunedModel.read(name));
      const shape = baseModel.entry(name).shape;
      const diff = new Float32Array(wb.length);
      let changed = false;
      for (let i = 0; i < diff.length; i++) {
        diff[i] = wt[i] - wb[i];
        if (diff[i] !== 0) changed = true;
        if (!Number.isFinite(diff[i])) {
          throw new AdapterError(
            'EXTRACT_NOT_FINITE',
            `${name}: tuned ${wt[i]} minus base ${wb[i]} at flat index ${i} is not a finite float32. Nothing was written; check both models for NaN/Inf weights.`,
            { tensor: name, index: i },
          );
        }
      }
      if (!changed) continue;
      if (shape.length !== 2) {
        skipped.push({
          tensor: name,
          reason: `changed but ${shape.length}-D; a LoRA holds only 2-D weights`,
        });
        continue;
      }
      const module = name.endsWith('.weight') ? name.slice(0, -'.weight'.length) : name;
      const embedding = EMBEDDING_NAME.test(name);
      const transposed = embedding || fanInFanOut; // stored layout is (B·A)^T
      const [rows, cols] = shape;
      if (rank > Math.min(rows, cols)) {
        // Rows of zeros beyond the layer's own rank would only inflate the adapter.
        throw new AdapterError(
          'EXTRACT_RANK_TOO_LARGE',
          `rank ${rank} is above the largest rank of ${name} ([${rows}, ${cols}]: at most ${Math.min(rows, cols)}). Choose --rank ${Math.min(rows, cols)} or less. Nothing was written.`,
          { tensor: name, rank, maxRank: Math.min(rows, cols) },
        );
      }
      const k = rank;
      const exact =
        Math.min(rows, cols) <= (options.exactUpTo ?? 256) || k === Math.min(rows, cols);
      const D = tensor('f32', [rows, cols], diff);
      let u: Float64Array;
      let s: Float64Array;
      let vt: Float64Array;
      let norm2 = 0;
      for (const v of diff) norm2 += v * v;
      if (exact) {
        const r = svd(D);
        u = r.u.data as Float64Array;
        s = r.s;
        vt = r.vt.data as Float64Array;
      } else {
        const r = randomizedSvd(D, {
          rank: k,
          seed: options.seed ?? 0,
          powerIterations: options.powerIterations ?? 2,
        });
        u = r.u.data as Float64Array;
        s = r.s;
        vt = r.vt.data as Float64Array;
      }
      const uCols = exact ? Math.min(rows, cols) : k; // columns of u / rows of vt
      let captured = 0;
      for (let i = 0; i < k; i++) captured += s[i] * s[i];
      totalNorm += norm2;
      totalCaptured += captured;

      // D [rows, cols] ~ U_k S_k V_k^T. Torch layout [out, in]: B·A = D / scaling (or D^T / scaling).
      const outF = transposed ? cols : rows;
      const inF = transposed ? rows : cols;
      const A = new Float32Array(rank * inF);
      const B = new Float32Array(outF * rank);
      for (let t = 0; t < k; t++) {
        const root = Math.sqrt(s[t] / scaling);
        if (!transposed) {
          for (let o = 0; o < rows; o++) B[o * rank + t] = u[o * uCols + t] * root;
          for (let i = 0; i < cols; i++) A[t * cols + i] = vt[t * cols + i] * root;
        } else {
          // D^T = V S U^T: B = V_k sqrt(S) [cols, k], A = sqrt(S) U_k^T [k, rows]
          for (let o = 0; o < cols; o++) B[o * rank + t] = vt[t * cols + o] * root;
          for (let i = 0; i < rows; i++) A[t * rows + i] = u[i * uCols + t] * root;
        }
      }
      if (!A.every(Number.isFinite) || !B.every(Number.isFinite)) {
        throw new AdapterError(
          'EXTRACT_NOT_FINITE',
          `${name}: the LoRA factors overflow float32 (the difference divided by the scaling alpha / r = ${scaling} is too large). Nothing was written; raise --alpha.`,
          { tensor: name },
        );
      }
      const mod: { -readonly [K in keyof LoraModule]: LoraModule[K] } = {
        A: tensor('f32', [rank, inF], A),
        B: tensor('f32', [outF, rank], B),
      };
      if (embedding) mod.embedding = true;
      modules.set(module, mod);
      report.push({
        module,
        shape: [...shape],
        energy: norm2 === 0 ? 1 : captured / norm2,
        method: exact ? 'exact' : 'randomized',
        embedding,
      });
      options.onProgress?.({ module, done: ++done, total: candidates.length });
    }
    const tunedCount = tunedModel.names().length;
    if (modules.size === 0 && candidates.length * 2 < tunedCount) {
      throw new AdapterError(
        'EXTRACT_UNRELATED',
        `${tuned} and ${base} share only ${candidates.length} of ${tunedCount} weights by name and shape${skipped.length > 0 ? ` (${skipped.length} same-named tensors have other shapes, e.g. ${skipped[0].tensor}: ${skipped[0].reason})` : ''}: they are not the same architecture, so no adapter can turn one into the other. Pass the base model the tuned model was trained from.`,
        { base, tuned },
      );
    }
    if (modules.size === 0) {
      throw new AdapterError(
        'EXTRACT_NOTHING',
        `${tuned} and ${base} have no 2-D weight that differs: nothing to extract.`,
        { base, tuned },
      );
    }
    const config = createLoraConfig({
      r: rank,
      lora_alpha: alpha,
      target_modules: [...modules.keys()],
      fan_in_fan_out: fanInFanOut,
      base_model_name_or_path: base,
      init_lora_weights: true,
    });
    return {
      adapter: { config, modules, modulesToSave: new Map<string, Tensor>() },
      modules: report,
      skipped,
      totalEnergy: totalNorm === 0 ? 1 : totalCaptured / totalNorm,
    };
  } finally {
    await baseModel.close();
    await tunedModel.close();
  }
}
