import {
  castFloat,
  createLoraConfig,
  isFloatDType,
  isLoraError,
  type LoraConfig,
  loraConfigToJson,
  loraScaling,
  parseJsonText,
  parseLoraConfig,
  type Tensor,
  tensor,
  toFloat64Array,
} from '@lora/core';
import { escapePythonRegex } from '@lora/core/internal';
import type { Adapter, LoraModule } from '../adapter.js';
import { AdapterError } from '../errors.js';
import { type OnnxAdapterFile, readOnnxAdapter, writeOnnxAdapter } from './onnx-adapter.js';

/**
 * LoRA adapters as `.onnx_adapter` files, the way onnxruntime-genai's model builder lays them out:
 *
 * - one pair of parameters per adapted linear, named after the graph inputs of the genai model:
 *   `<module>.lora_A.MatMul.weight` and `<module>.lora_B.MatMul.weight`, where `<module>` is the
 *   Hugging Face module name with LLaMA's `self_attn` spelled `attn` (genai's naming, e.g.
 *   `model.layers.0.attn.q_proj`); other names are kept as they are;
 * - A is stored as A^T, `[in, r]`, and B as (s·B)^T, `[r, out]`: genai computes `x @ A @ B` and has
 *   no scale input, so the PEFT scaling s (alpha / r, rslora, rank/alpha patterns) is baked into B,
 *   computed in float64 and rounded once to the file's dtype.
 *
 * The container has no place for rank or alpha. The rank is the inner dimension of each pair. The
 * alpha is gone once s is baked in: a file without our metadata reads back as alpha = r (s = 1)
 * with the scaled B, which is the same delta. With `metadata: true` the writer adds one more
 * parameter, {@link ONNX_ADAPTER_METADATA}, a UTF-8 JSON byte tensor (`UINT8 [n]`) holding the
 * PEFT config and the per-module scalings, and the reader then restores the original config and
 * divides B by s again. onnxruntime feeds every parameter of an adapter as a graph input by
 * name, so genai would reject that extra name as an unknown input: leave metadata off (the
 * default) for files meant for onnxruntime-genai.
 */

/** Name of the optional parameter carrying this project's metadata (config and scalings). */
export const ONNX_ADAPTER_METADATA = '__lora_adapter_metadata__';

export interface OnnxAdapterWriteOptions {
  /** Element type of A and B in the file: `f32` (default) or `f16` (genai's fp16 models). */
  readonly dtype?: 'f32' | 'f16';
  /** Add the metadata parameter (see the module comment; not for genai). Default false. */
  readonly metadata?: boolean;
  /** Maps a module name to the parameter prefix. Default: {@link genaiModuleName}. */
  readonly moduleToParameter?: (module: string) => string;
  readonly adapterVersion?: number;
  /** The `model_version` of the ONNX model the adapter is for (genai checks nothing; default 0). */
  readonly modelVersion?: number;
}

export interface OnnxAdapterReadOptions {
  /** Maps a parameter prefix back to the module name. Default: {@link moduleFromGenaiName}. */
  readonly parameterToModule?: (prefix: string) => string;
}

interface Metadata {
  format: 'lora-onnx-adapter';
  version: 1;
  config: Record<string, unknown>;
  /** Scaling baked into each module's B. */
  scalings: Record<string, number>;
}

const A_SUFFIX = '.lora_A.MatMul.weight';
const B_SUFFIX = '.lora_B.MatMul.weight';

/** Hugging Face module name -> genai parameter prefix (`model.layers.3.self_attn.q_proj` -> `model.layers.3.attn.q_proj`). */
export function genaiModuleName(module: string): string {
  return module.replace(/^model\.layers\.(\d+)\.self_attn\./, 'model.layers.$1.attn.');
}

/** The inverse of {@link genaiModuleName}. */
export function moduleFromGenaiName(prefix: string): string {
  return prefix.replace(/^model\.layers\.(\d+)\.attn\./, 'model.layers.$1.self_attn.');
}

/**
 * The `.onnx_adapter` parameters of an adapter (see the module comment for the layout). Refuses
 * what genai's plain `x @ A @ B` cannot express: DoRA, lora_bias, embedding LoRA, modules_to_save.
 */
export function adapterToOnnxParameters(
  adapter: Adapter,
  options: OnnxAdapterWriteOptions = {},
): Map<string, Tensor> {
  const dtype = options.dtype ?? 'f32';
  const toParameter = options.moduleToParameter ?? genaiModuleName;
  refuseUnsupported(adapter);
  const out = new Map<string, Tensor>();
  const scalings: Record<string, number> = {};
  for (const [module, m] of adapter.modules) {
    const [r, inFeatures] = m.A.shape;
    const [outFeatures, rB] = m.B.shape;
    if (m.A.shape.length !== 2 || m.B.shape.length !== 2 || r !== rB) {
      throw new AdapterError(
        'ONNX_ADAPTER_SHAPE',
        `Module ${module}: lora_A [${m.A.shape.join(', ')}] and lora_B [${m.B.shape.join(', ')}] are not [r, in] and [out, r].`,
        { module },
      );
    }
    const s = loraScaling(adapter.config, module);
    scalings[module] = s;
    const prefix = toParameter(module);
    // A^T: [in, r]; (s B)^T: [r, out]; both rounded once from float64.
    const a = toFloat64Array(m.A);
    const b = toFloat64Array(m.B);
    const at = new Float64Array(inFeatures * r);
    for (let i = 0; i < r; i++)
      for (let j = 0; j < inFeatures; j++) at[j * r + i] = a[i * inFeatures + j];
    const bt = new Float64Array(r * outFeatures);
    for (let o = 0; o < outFeatures; o++)
      for (let i = 0; i < r; i++) bt[i * outFeatures + o] = s * b[o * r + i];
    for (const [name, data, shape] of [
      [prefix + A_SUFFIX, at, [inFeatures, r]],
      [prefix + B_SUFFIX, bt, [r, outFeatures]],
    ] as const) {
      if (out.has(name)) {
        throw new AdapterError(
          'ONNX_ADAPTER_NAME_CLASH',
          `Two modules map to the parameter name ${name}.`,
          { module },
        );
      }
      out.set(name, castFloat(tensor('f64', shape, data), dtype));
    }
  }
  if (options.metadata) {
    const meta: Metadata = {
      format: 'lora-onnx-adapter',
      version: 1,
      config: loraConfigToJson(adapter.config),
      scalings,
    };
    const bytes = new TextEncoder().encode(JSON.stringify(meta));
    out.set(ONNX_ADAPTER_METADATA, tensor('u8', [bytes.length], bytes));
  }
  return out;
}

/**
 * An adapter from `.onnx_adapter` parameters. Every `<prefix>.lora_A.MatMul.weight` needs its
 * `.lora_B.` partner; other parameters (except our metadata) are an error, since they are not
 * LoRA factors. Without metadata the config is alpha = r per module (scale 1, B as stored);
 * with it, the original config and B = stored / s.
 */
export function adapterFromOnnxParameters(
  file: Pick<OnnxAdapterFile, 'parameters'>,
  options: OnnxAdapterReadOptions & { source?: string } = {},
): Adapter {
  const source = options.source ?? '.onnx_adapter';
  const toModule = options.parameterToModule ?? moduleFromGenaiName;
  let meta: Metadata | undefined;
  const pairs = new Map<string, { A?: Tensor; B?: Tensor }>();
  for (const [name, t] of file.parameters) {
    if (name === ONNX_ADAPTER_METADATA) {
      meta = parseMetadata(t, source);
      continue;
    }
    const kind = name.endsWith(A_SUFFIX) ? 'A' : name.endsWith(B_SUFFIX) ? 'B' : undefined;
    if (!kind) {
      throw new AdapterError(
        'ONNX_ADAPTER_NOT_LORA',
        `${source}: parameter "${name}" is not a LoRA factor (expected names ending in ${A_SUFFIX} or ${B_SUFFIX}).`,
        { file: source, parameter: name },
      );
    }
    if (!isFloatDType(t.dtype) || t.shape.length !== 2) {
      throw new AdapterError(
        'ONNX_ADAPTER_SHAPE',
        `${source}: parameter "${name}" must be a 2-D float tensor, got ${t.dtype} [${t.shape.join(', ')}].`,
        { file: source, parameter: name },
      );
    }
    const module = toModule(name.slice(0, -(kind === 'A' ? A_SUFFIX : B_SUFFIX).length));
    const pair = pairs.get(module) ?? {};
    pair[kind] = t;
    pairs.set(module, pair);
  }

  const modules = new Map<string, LoraModule>();
  const ranks = new Map<string, number>();
  for (const [module, { A, B }] of pairs) {
    if (!A || !B) {
      throw new AdapterError(
        'ONNX_ADAPTER_UNPAIRED',
        `${source}: module ${module} has lora_${A ? 'A' : 'B'} but no lora_${A ? 'B' : 'A'}.`,
        { file: source, module },
      );
    }
    const [inFeatures, r] = A.shape;
    const [rB, outFeatures] = B.shape;
    if (r !== rB) {
      throw new AdapterError(
        'ONNX_ADAPTER_SHAPE',
        `${source}: module ${module}: A is [${A.shape.join(', ')}] and B is [${B.shape.join(', ')}]; expected [in, r] and [r, out].`,
        { file: source, module },
      );
    }
    const s = meta ? meta.scalings[module] : 1;
    if (meta && !(typeof s === 'number' && Number.isFinite(s) && s !== 0)) {
      throw new AdapterError(
        'ONNX_ADAPTER_METADATA',
        `${source}: the metadata has no usable scaling for module ${module}.`,
        {
          file: source,
          module,
        },
      );
    }
    const at = toFloat64Array(A);
    const bt = toFloat64Array(B);
    const a = new Float32Array(r * inFeatures);
    for (let j = 0; j < inFeatures; j++)
      for (let i = 0; i < r; i++) a[i * inFeatures + j] = at[j * r + i];
    const b = new Float32Array(outFeatures * r);
    for (let i = 0; i < r; i++)
      for (let o = 0; o < outFeatures; o++) b[o * r + i] = bt[i * outFeatures + o] / s;
    modules.set(module, {
      A: tensor('f32', [r, inFeatures], a),
      B: tensor('f32', [outFeatures, r], b),
    });
    ranks.set(module, r);
  }
  const config = meta
    ? parseLoraConfig(meta.config, `${source} metadata`).config
    : scaleOneConfig(ranks);
  return { config, modules, modulesToSave: new Map() };
}

/** Writes an adapter as an `.onnx_adapter` file (atomically). */
export async function saveOnnxAdapter(
  path: string,
  adapter: Adapter,
  options: OnnxAdapterWriteOptions = {},
): Promise<void> {
  await writeOnnxAdapter(path, adapterToOnnxParameters(adapter, options), {
    adapterVersion: options.adapterVersion,
    modelVersion: options.modelVersion,
  });
}

/** Reads an `.onnx_adapter` file into an adapter (see {@link adapterFromOnnxParameters}). */
export async function loadOnnxAdapter(
  path: string,
  options: OnnxAdapterReadOptions = {},
): Promise<Adapter> {
  return adapterFromOnnxParameters(await readOnnxAdapter(path), { ...options, source: path });
}

/**
 * A config whose scaling is 1 for every module: r is the most common rank, alpha = r, and
 * modules of another rank get rank_pattern and alpha_pattern entries (full module names).
 */
function scaleOneConfig(ranks: ReadonlyMap<string, number>): LoraConfig {
  const counts = new Map<number, number>();
  for (const r of ranks.values()) counts.set(r, (counts.get(r) ?? 0) + 1);
  const r = [...counts].sort((x, y) => y[1] - x[1] || x[0] - y[0])[0]?.[0] ?? 8;
  const pattern: Record<string, number> = {};
  for (const [module, rank] of ranks) if (rank !== r) pattern[escapePythonRegex(module)] = rank;
  const suffixes = [
    ...new Set([...ranks.keys()].map((m) => m.slice(m.lastIndexOf('.') + 1))),
  ].sort();
  return createLoraConfig({
    r,
    lora_alpha: r,
    rank_pattern: pattern,
    alpha_pattern: { ...pattern },
    target_modules: suffixes,
  });
}

function parseMetadata(t: Tensor, source: string): Metadata {
  let meta: Metadata;
  try {
    if (t.dtype !== 'u8') throw new Error(`dtype ${t.dtype}`);
    meta = parseJsonText(
      new TextDecoder().decode(t.data as Uint8Array),
      `the ${ONNX_ADAPTER_METADATA} parameter`,
    ) as Metadata;
  } catch (e) {
    // parseJsonText's message says why (bad syntax, nesting too deep).
    const why = isLoraError(e)
      ? e.message
      : `the ${ONNX_ADAPTER_METADATA} parameter is not UTF-8 JSON bytes.`;
    throw new AdapterError(
      'ONNX_ADAPTER_METADATA',
      `${source}: ${why}`,
      {
        file: source,
      },
      { cause: e },
    );
  }
  if (
    meta?.format !== 'lora-onnx-adapter' ||
    meta.version !== 1 ||
    typeof meta.scalings !== 'object'
  ) {
    throw new AdapterError(
      'ONNX_ADAPTER_METADATA',
      `${source}: unknown metadata format in ${ONNX_ADAPTER_METADATA}.`,
      {
        file: source,
      },
    );
  }
  return meta;
}

function refuseUnsupported(adapter: Adapter): void {
  const why = (module: string, what: string) =>
    new AdapterError(
      'ONNX_ADAPTER_UNSUPPORTED',
      `Module ${module} uses ${what}, which an .onnx_adapter (x @ A @ B beside the base linear) cannot express. Merge the adapter into the base instead (lora merge).`,
      { module },
    );
  for (const [module, m] of adapter.modules) {
    if (m.magnitude) throw why(module, 'DoRA (lora_magnitude_vector)');
    if (m.bias) throw why(module, 'a LoRA bias (lora_B.bias)');
    if (m.embedding) throw why(module, 'an embedding LoRA');
  }
  if (adapter.modulesToSave.size > 0) {
    const names = [...adapter.modulesToSave.keys()].slice(0, 3).join(', ');
    throw new AdapterError(
      'ONNX_ADAPTER_UNSUPPORTED',
      `The adapter saves full parameters (modules_to_save: ${names}...), which an .onnx_adapter cannot hold.`,
      { parameters: [...adapter.modulesToSave.keys()] },
    );
  }
}
