import { type DType, isFloatDType, type Tensor } from '@lora/core';
import { type Adapter, type LoraModule, moduleScaling } from '../adapter.js';
import { AdapterError } from '../errors.js';

/** An adapter to merge, with its weight in the sum (default 1). */
export interface AdapterSource {
  readonly adapter: Adapter;
  /** Multiplies the adapter's delta (`weight · s · B·A`). Default 1. */
  readonly weight?: number;
  /** Shown in messages, e.g. the adapter's folder. */
  readonly label?: string;
}

/** What the planner needs to know about the base: names, dtypes and shapes (headers only). */
export interface TensorCatalog {
  has(name: string): boolean;
  entry(name: string): { readonly dtype: DType; readonly shape: readonly number[] };
}

/** One adapter's LoRA term on one base weight. */
export interface LoraTerm {
  readonly source: number;
  readonly module: string;
  readonly lora: LoraModule;
  /** weight · scaling. */
  readonly scale: number;
  /** The stored weight is `[in, out]` (fan_in_fan_out) or `[vocab, dim]` (embedding): delta is `(B·A)^T`. */
  readonly transpose: boolean;
}

export type TensorPlan =
  | {
      readonly kind: 'lora';
      readonly terms: readonly LoraTerm[];
      readonly dora: boolean;
      /**
       * The adapter's own copy of this base weight (PEFT `save_embedding_layers`: the key
       * `<module>.base_layer.weight`). PEFT loads it in place of the base's, then merges on top.
       */
      readonly newBase?: { readonly source: number; readonly tensor: Tensor };
    }
  | {
      readonly kind: 'bias';
      readonly terms: readonly { source: number; module: string; bias: Tensor; scale: number }[];
    }
  | { readonly kind: 'replace'; readonly source: number; readonly tensor: Tensor };

export interface MergePlan {
  /** Base tensor name -> what happens to it (absent: copied unchanged). */
  readonly tensors: ReadonlyMap<string, TensorPlan>;
  /** Module -> base weight name used, per source (for reports). */
  readonly resolved: readonly { source: number; module: string; tensor: string }[];
}

/**
 * The base tensor for an adapter module or saved parameter: `name` itself, or `name` with its
 * first dotted parts removed (PEFT names modules on the task model, e.g.
 * `transformer.h.0.attn.c_attn`, while a GPT-2 checkpoint stores `h.0.attn.c_attn.weight`).
 */
export function resolveTensorName(catalog: TensorCatalog, name: string): string | undefined {
  let candidate = name;
  for (let dropped = 0; dropped <= 2; dropped++) {
    if (catalog.has(candidate)) return candidate;
    const dot = candidate.indexOf('.');
    if (dot < 0) return undefined;
    candidate = candidate.slice(dot + 1);
  }
  return undefined;
}

function label(sources: readonly AdapterSource[], i: number): string {
  return sources[i].label ?? `adapter ${i + 1}`;
}

/**
 * Decides, from headers only, what merging `sources` into the base does to each tensor, and
 * checks everything that can be checked before a byte is written: every adapted module exists
 * as a 2-D float weight of the expected shape (`[out, in]`, or `[in, out]` with fan_in_fan_out,
 * `[vocab, dim]` for an embedding), lora_bias modules have a bias, saved modules exist with the
 * same shape, and no tensor is both replaced and merged. Errors name the adapter, the module,
 * and the expected and actual shapes.
 */
export function planMerge(catalog: TensorCatalog, sources: readonly AdapterSource[]): MergePlan {
  const tensors = new Map<string, TensorPlan>();
  const resolved: { source: number; module: string; tensor: string }[] = [];
  const missing: string[] = [];

  sources.forEach((src, s) => {
    const { adapter } = src;
    const weight = src.weight ?? 1;
    const saved = splitBaseLayer(adapter);
    for (const [module, lora] of adapter.modules) {
      const weightName = resolveTensorName(catalog, `${module}.weight`);
      if (!weightName) {
        missing.push(`${label(sources, s)}: module ${module} (no tensor ${module}.weight)`);
        continue;
      }
      resolved.push({ source: s, module, tensor: weightName });
      const e = catalog.entry(weightName);
      const r = lora.A.shape[0];
      const inF = lora.A.shape[1];
      const outF = lora.B.shape[0];
      const transpose = lora.embedding === true || adapter.config.fan_in_fan_out;
      const expected = transpose ? [inF, outF] : [outF, inF];
      if (!isFloatDType(e.dtype) && !(e.dtype === 'u8' && isQuantized(catalog, weightName))) {
        throw new AdapterError(
          'MERGE_DTYPE_UNSUPPORTED',
          `${label(sources, s)}: module ${module}: base weight ${weightName} is ${e.dtype}, not a float (or bitsandbytes 4-bit) weight.`,
          {
            module,
            tensor: weightName,
          },
        );
      }
      const actual = isQuantized(catalog, weightName)
        ? quantizedShape(catalog, weightName)
        : [...e.shape];
      if (actual.length !== 2 || actual[0] !== expected[0] || actual[1] !== expected[1]) {
        const hint =
          actual.length === 2 && actual[0] === expected[1] && actual[1] === expected[0]
            ? adapter.config.fan_in_fan_out
              ? ' The shapes are transposed: the adapter says fan_in_fan_out = true but this weight is stored [out, in].'
              : ' The shapes are transposed: this weight is stored [in, out] (GPT-2 Conv1D); the adapter needs fan_in_fan_out = true.'
            : ' The adapter was trained for a different model.';
        throw new AdapterError(
          'MERGE_SHAPE_MISMATCH',
          `${label(sources, s)}: module ${module}: base weight ${weightName} has shape [${actual.join(', ')}], the adapter (r = ${r}) needs [${expected.join(', ')}].${hint} Nothing was written.`,
          { module, tensor: weightName, expected, actual },
        );
      }
      const prev = tensors.get(weightName);
      if (prev && prev.kind !== 'lora') {
        throw new AdapterError(
          'MERGE_CONFLICT',
          `${weightName} is both replaced (modules_to_save) and LoRA-merged.`,
          { tensor: weightName },
        );
      }
      const term: LoraTerm = {
        source: s,
        module,
        lora,
        scale: weight * moduleScaling(adapter, module),
        transpose,
      };
      const terms = prev ? [...prev.terms, term] : [term];
      let newBase = prev?.newBase;
      const own = saved.newBases.get(module);
      if (own) {
        if (newBase || isQuantized(catalog, weightName) || !sameShape(own.shape, actual)) {
          throw new AdapterError(
            'MERGE_CONFLICT',
            `${label(sources, s)}: module ${module}: the adapter saves its own base weight (${module}.base_layer.weight, [${own.shape.join(', ')}]) but ${newBase ? 'another adapter also replaces it' : isQuantized(catalog, weightName) ? `${weightName} is 4-bit` : `${weightName} is [${actual.join(', ')}]`}. Merge a single such adapter into a full-precision base of the same shape. Nothing was written.`,
            { module, tensor: weightName },
          );
        }
        newBase = { source: s, tensor: own };
      }
      tensors.set(weightName, {
        kind: 'lora',
        terms,
        dora: (prev?.dora ?? false) || lora.magnitude !== undefined,
        ...(newBase ? { newBase } : {}),
      });
      if (lora.magnitude && lora.embedding) {
        throw new AdapterError(
          'MERGE_UNSUPPORTED',
          `${label(sources, s)}: module ${module}: DoRA on an embedding is not supported by merge.`,
          { module },
        );
      }

      if (lora.bias) {
        const biasName = resolveTensorName(catalog, `${module}.bias`);
        if (!biasName) {
          throw new AdapterError(
            'MERGE_MODULE_MISSING',
            `${label(sources, s)}: module ${module} has lora_B.bias (lora_bias) but the base layer has no bias (${module}.bias); PEFT cannot merge this either. Nothing was written.`,
            { module },
          );
        }
        const be = catalog.entry(biasName);
        if (be.shape.length !== 1 || be.shape[0] !== outF) {
          throw new AdapterError(
            'MERGE_SHAPE_MISMATCH',
            `${label(sources, s)}: module ${module}: base bias ${biasName} has shape [${be.shape.join(', ')}], expected [${outF}].`,
            {
              module,
              tensor: biasName,
              expected: [outF],
              actual: be.shape,
            },
          );
        }
        const prevBias = tensors.get(biasName);
        if (prevBias && prevBias.kind !== 'bias') {
          throw new AdapterError(
            'MERGE_CONFLICT',
            `${biasName} is both replaced (modules_to_save) and changed by lora_bias.`,
            { tensor: biasName },
          );
        }
        const bt = {
          source: s,
          module,
          bias: lora.bias,
          scale: weight * moduleScaling(adapter, module),
        };
        tensors.set(biasName, { kind: 'bias', terms: prevBias ? [...prevBias.terms, bt] : [bt] });
      }
    }

    for (const [param, t] of saved.replaced) {
      const name = resolveTensorName(catalog, param);
      if (!name) {
        missing.push(`${label(sources, s)}: saved module parameter ${param}`);
        continue;
      }
      const e = catalog.entry(name);
      if (e.shape.length !== t.shape.length || e.shape.some((d, i) => d !== t.shape[i])) {
        throw new AdapterError(
          'MERGE_SHAPE_MISMATCH',
          `${label(sources, s)}: saved module parameter ${param}: base tensor ${name} has shape [${e.shape.join(', ')}], the adapter's is [${t.shape.join(', ')}] (a head for a different number of labels?). Nothing was written.`,
          { tensor: name, expected: t.shape, actual: e.shape },
        );
      }
      if (tensors.has(name)) {
        throw new AdapterError(
          'MERGE_CONFLICT',
          `${name} is replaced by ${label(sources, s)} and also changed by another adapter; merge them separately.`,
          {
            tensor: name,
          },
        );
      }
      tensors.set(name, { kind: 'replace', source: s, tensor: t });
    }
  });

  if (missing.length > 0) {
    const shown = missing.slice(0, 5).join('; ');
    throw new AdapterError(
      'MERGE_MODULE_MISSING',
      `${missing.length} adapter module(s) have no weight in the base model: ${shown}${missing.length > 5 ? '; ...' : ''}. The adapter was trained for a different model (check base_model_name_or_path). Nothing was written.`,
      { missing },
    );
  }
  return { tensors, resolved };
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

const BASE_LAYER = /^(.+)\.base_layer\.([^.]+)$/;

/**
 * Splits an adapter's saved parameters. PEFT saves a LoRA-wrapped layer's own parameters as
 * `<module>.base_layer.<param>` (`save_embedding_layers`); they stand for the base's
 * `<module>.<param>`. The weight of a LoRA module becomes the new base its delta is added to;
 * everything else replaces the base tensor of the same name.
 */
function splitBaseLayer(adapter: Adapter): {
  newBases: Map<string, Tensor>;
  replaced: Map<string, Tensor>;
} {
  const newBases = new Map<string, Tensor>();
  const replaced = new Map<string, Tensor>();
  for (const [param, t] of adapter.modulesToSave) {
    const m = BASE_LAYER.exec(param);
    if (m && m[2] === 'weight' && adapter.modules.has(m[1])) newBases.set(m[1], t);
    else replaced.set(m ? `${m[1]}.${m[2]}` : param, t);
  }
  return { newBases, replaced };
}

const QUANT_STATE = '.quant_state.bitsandbytes__';

/** True for a bitsandbytes 4-bit weight (a packed u8 tensor with a quant_state sibling). */
export function isQuantized(catalog: TensorCatalog, name: string): boolean {
  return catalog.has(`${name}${QUANT_STATE}nf4`) || catalog.has(`${name}${QUANT_STATE}fp4`);
}

/** Logical shape of a 4-bit weight; filled in by the caller that reads the quant state. */
function quantizedShape(catalog: TensorCatalog, name: string): number[] {
  const withShape = catalog as TensorCatalog & {
    logicalShape?: (n: string) => number[] | undefined;
  };
  const shape = withShape.logicalShape?.(name);
  if (!shape) {
    throw new AdapterError(
      'MERGE_QUANT_STATE',
      `${name}: a 4-bit weight, but its quant state was not read.`,
      { tensor: name },
    );
  }
  return shape;
}
