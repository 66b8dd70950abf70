import { copyFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  type DType,
  isLoraError,
  type LowRankDelta,
  parseJsonText,
  type Tensor,
  tensorBytes,
  type UnmergeResidual,
  unmergeLowRank,
  writeAll,
  writeFileAtomic,
  writeFolderAtomic,
} from '@lora/core';
import { findBnb4Weights, readBnb4Weight } from '@lora/quant';
import { AdapterError } from '../errors.js';
import { ModelFiles } from '../model/model-files.js';
import { deltaOfTerms } from './compute.js';
import { residualPathFor } from './merge-model.js';
import { type AdapterSource, planMerge, type TensorCatalog } from './plan.js';
import {
  adapterFingerprint,
  RESIDUAL_FILE,
  readResidualFile,
  type ResidualContents,
} from './residual-file.js';

export interface UnmergeModelOptions {
  /** The residual written by the merge. Default: beside the merged model. */
  residualPath?: string;
  /** Replace an existing output (atomically). */
  overwrite?: boolean;
}

export interface UnmergeModelReport {
  readonly merged: string;
  readonly output: string;
  readonly residual: string;
  /** Tensors computed back from the merged weights (the rest were copied or restored whole). */
  readonly unmerged: number;
  readonly restoredWhole: number;
  readonly copied: number;
}

interface HeaderEntry {
  name: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

/** The saved safetensors header of an original shard; `source` names it in errors. */
function parseOriginalHeader(header: Uint8Array, source: string): HeaderEntry[] {
  const json = parseJsonText(
    new TextDecoder().decode(header.subarray(8)).trimEnd(),
    source,
  ) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const entries: HeaderEntry[] = [];
  for (const [name, v] of Object.entries(json)) {
    if (name === '__metadata__') continue;
    entries.push({
      name,
      dtype: v.dtype,
      shape: v.shape,
      begin: v.data_offsets[0],
      end: v.data_offsets[1],
    });
  }
  return entries.sort((a, b) => a.begin - b.begin);
}

const FROM_SAFETENSORS: Record<string, DType> = {
  F64: 'f64',
  F32: 'f32',
  F16: 'f16',
  BF16: 'bf16',
};

function checkAdapters(
  residual: ResidualContents,
  sources: readonly AdapterSource[],
  path: string,
): AdapterSource[] {
  const recorded = residual.adapters;
  if (recorded.length !== sources.length) {
    throw new AdapterError(
      'UNMERGE_ADAPTER_MISMATCH',
      `${path}: the model was merged with ${recorded.length} adapter(s) (${recorded.map((a) => a.label).join(', ')}); ${sources.length} given. Pass the same adapters in the same order.`,
      { path },
    );
  }
  return sources.map((s, i) => {
    const rec = recorded[i];
    if (adapterFingerprint(s.adapter) !== rec.sha256) {
      throw new AdapterError(
        'UNMERGE_ADAPTER_MISMATCH',
        `${path}: adapter ${i + 1} (${s.label ?? 'given'}) is not the one merged there (${rec.label}); its tensors or config differ. Pass the same adapters in the same order.`,
        { path, index: i },
      );
    }
    if (s.weight !== undefined && s.weight !== rec.weight) {
      throw new AdapterError(
        'UNMERGE_ADAPTER_MISMATCH',
        `${path}: adapter ${i + 1} was merged with weight ${rec.weight}, not ${s.weight}.`,
        { path, index: i },
      );
    }
    return { ...s, weight: rec.weight };
  });
}

/**
 * Restores the base model from a merged model, the adapters that were merged and the residual
 * written by {@link mergeIntoModel}: every safetensors file comes back byte for byte (same
 * header, same tensor order, same bits), other files as they were. Merged weights are computed
 * back as `round(W' - ΔW)` and patched with the residual's recorded bits; tensors the merge could
 * not invert (replaced modules, DoRA, lora_bias, 4-bit weights) come from the residual whole.
 * A checksum per tensor catches a wrong adapter or a modified merged model; nothing is written then.
 */
export async function unmergeModel(
  merged: string,
  sources: readonly AdapterSource[],
  output: string,
  options: UnmergeModelOptions = {},
): Promise<UnmergeModelReport> {
  const model = await ModelFiles.open(merged);
  try {
    const residualPath = options.residualPath ?? residualPathFor(merged, model.isFolder);
    if (
      !(await stat(residualPath).then(
        () => true,
        () => false,
      ))
    ) {
      throw new AdapterError(
        'UNMERGE_RESIDUAL_MISSING',
        `${residualPath}: no unmerge residual. Exact unmerge needs the residual written by \`lora merge\` (it was not written with --no-residual).`,
        { path: residualPath },
      );
    }
    const residual = await readResidualFile(residualPath);
    const checked = checkAdapters(residual, sources, residualPath);

    const shapes = new Map<string, number[]>();
    for (const q of findBnb4Weights(model.names()))
      shapes.set(q, [...(await readBnb4Weight(model, q)).shape]);
    const catalog: TensorCatalog & { logicalShape(n: string): number[] | undefined } = {
      has: (n) => model.has(n),
      entry: (n) => model.entry(n),
      logicalShape: (n) => shapes.get(n),
    };
    const plan = planMerge(catalog, checked);
    let unmerged = 0;
    let restoredWhole = 0;
    let copied = 0;

    const bytesOf = async (e: HeaderEntry): Promise<Uint8Array> => {
      const original = residual.originals.get(e.name);
      if (original) {
        restoredWhole++;
        return tensorBytes(original);
      }
      const rec = residual.residuals.get(e.name);
      if (!model.has(e.name)) {
        throw new AdapterError(
          'UNMERGE_TENSOR_MISSING',
          `${merged}: tensor ${e.name} of the base is neither in the merged model nor in the residual.`,
          { tensor: e.name },
        );
      }
      if (rec) {
        const t = await model.read(e.name);
        const rows = t.shape.length === 1 ? 1 : t.shape[0];
        const cols = t.data.length / Math.max(rows, 1);
        const p = plan.tensors.get(e.name);
        const delta = deltaOfTerms(p?.kind === 'lora' ? p.terms : [], rows, cols);
        const flat = { dtype: t.dtype, shape: [rows, cols], data: t.data } as Tensor;
        const back = unmergeOne(flat, delta, rec, e.name);
        unmerged++;
        return tensorBytes(back);
      }
      const me = model.entry(e.name);
      if (FROM_SAFETENSORS[e.dtype] !== undefined && me.dtype !== FROM_SAFETENSORS[e.dtype]) {
        throw new AdapterError(
          'UNMERGE_TENSOR_MISMATCH',
          `${merged}: tensor ${e.name} is ${me.dtype} in the merged model but was ${e.dtype}, and the residual has no record of it.`,
          {
            tensor: e.name,
          },
        );
      }
      copied++;
      return model.shardOf(e.name).file.readBytes(e.name);
    };

    const writeShard = async (path: string, shard: { fileName: string; header: Uint8Array }) => {
      const entries = parseOriginalHeader(
        shard.header,
        `${residualPath} (saved header of ${shard.fileName})`,
      );
      await writeFileAtomic(path, async (h) => {
        await writeAll(h, shard.header);
        for (const e of entries) {
          const bytes = await bytesOf(e);
          if (bytes.length !== e.end - e.begin) {
            throw new AdapterError(
              'UNMERGE_TENSOR_MISMATCH',
              `${e.name}: restored ${bytes.length} bytes, the original had ${e.end - e.begin}.`,
              { tensor: e.name },
            );
          }
          await writeAll(h, bytes);
        }
      });
    };

    if (model.isFolder) {
      await writeFolderAtomic(
        output,
        async (tmp) => {
          for (const shard of residual.shards) await writeShard(join(tmp, shard.fileName), shard);
          for (const f of model.otherFiles) {
            if (f === RESIDUAL_FILE || residual.files.has(f)) continue;
            await copyFile(join(merged, f), join(tmp, f));
          }
          const { writeBytesAtomic } = await import('@lora/core');
          for (const [f, bytes] of residual.files) await writeBytesAtomic(join(tmp, f), bytes);
        },
        { overwrite: options.overwrite },
      );
    } else {
      if (
        !options.overwrite &&
        (await stat(output).then(
          () => true,
          () => false,
        ))
      ) {
        throw new AdapterError(
          'OUTPUT_EXISTS',
          `${output} already exists. Choose another output or allow overwriting (--force).`,
          { path: output },
        );
      }
      if (residual.shards.length !== 1)
        throw new AdapterError('UNMERGE_RESIDUAL_INVALID', `${residualPath}: expected one file.`, {
          path: residualPath,
        });
      await writeShard(output, residual.shards[0]);
    }
    return { merged, output, residual: residualPath, unmerged, restoredWhole, copied };
  } finally {
    await model.close();
  }
}

/** Core's exact unmerge, its mismatch reported in this package's terms. */
function unmergeOne(
  merged: Tensor,
  delta: LowRankDelta,
  residual: UnmergeResidual,
  name: string,
): Tensor {
  try {
    return unmergeLowRank(merged, delta, residual.dtype, residual, name);
  } catch (e) {
    if (isLoraError(e) && e.code === 'LORA_UNMERGE_MISMATCH')
      throw new AdapterError(
        'UNMERGE_MISMATCH',
        `${name}: after unmerge the weight does not match the original. The merged model or the adapter is not the one that was merged; use the same adapter folders, weights and order as for the merge. (${e.message})`,
        { tensor: name },
      );
    throw e;
  }
}
