import {
  ALL_LINEAR,
  createLoraConfig,
  createRng,
  initLoraWeights,
  type LoraConfig,
  type LoraInitMethod,
  loraRank,
  loraScaling,
  matchTargets,
  parseLoraInitMethod,
  type Seed64,
  type Tensor,
  toFloat32Array,
} from '@lora/core';
import { type Adapter, checkAdapterTargets } from '@lora/adapters';
import {
  LLAMA_LINEARS,
  type LlamaConfig,
  type LlamaLinear,
  llamaLinearShape,
  llamaModuleName,
} from '@lora/runtime-onnx';
import { TrainError } from '../errors.js';
import { decaysWeight, type Parameter } from '../optim/parameters.js';

/** The PCG32 stream LoRA init draws from (A of each module, then B, modules in model order). */
export const INIT_STREAM = 0x1a17n;

/** LoRA hyperparameters with PEFT's meanings (`LoraConfig` fields in parentheses). */
export interface LoraSettings {
  /** (r) default 8 */
  readonly rank?: number;
  /** (lora_alpha) default 16 */
  readonly alpha?: number;
  /**
   * (target_modules) a list of module-name suffixes, `"all-linear"`, or a Python regex matched
   * against the whole module name. Default `["q_proj", "v_proj"]`.
   */
  readonly targets?: readonly string[] | string;
  /** (lora_dropout) default 0.05 */
  readonly dropout?: number;
  /** (use_rslora) default false */
  readonly rslora?: boolean;
  /** (init_lora_weights) default `default` */
  readonly init?: LoraInitMethod;
}

/** One adapted linear and its trainable factors. */
export interface LoraModulePlan {
  /** e.g. `model.layers.0.self_attn.q_proj` */
  readonly module: string;
  readonly layer: number;
  readonly linear: LlamaLinear;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly rank: number;
  /** PEFT's scaling s (alpha / r, or alpha / sqrt(r) with rslora): y = W x + s B A x. */
  readonly scaling: number;
  /** lora_A.weight [r, in] */
  readonly A: Parameter;
  /** lora_B.weight [out, r] */
  readonly B: Parameter;
}

/** A LoRA run's adapter: its PEFT config, modules and the flat parameter list (A, B per module). */
export interface LoraSetup {
  readonly config: LoraConfig;
  readonly modules: readonly LoraModulePlan[];
  readonly parameters: readonly Parameter[];
  /**
   * PiSSA / OLoRA move the adapter's share out of the base: these are the new base weights (HF
   * tensor name -> float32 [out, in]) the model must train on.
   */
  readonly baseOverrides: ReadonlyMap<string, Tensor<'f32'>>;
}

/** Every linear module of the decoder, in model order. */
export function llamaLinearModules(
  config: LlamaConfig,
): { module: string; layer: number; linear: LlamaLinear }[] {
  const out: { module: string; layer: number; linear: LlamaLinear }[] = [];
  for (let layer = 0; layer < config.numLayers; layer++)
    for (const linear of LLAMA_LINEARS)
      out.push({ module: llamaModuleName(layer, linear), layer, linear });
  return out;
}

/**
 * The PEFT config of a new adapter from the settings. `all-linear` is stored expanded to the
 * linear names (as PEFT saves it); a value containing regex characters is a Python regex.
 */
export function loraConfigFromSettings(
  settings: LoraSettings,
  model: LlamaConfig,
  baseModelPath: string | null,
): LoraConfig {
  const rank = settings.rank ?? 8;
  const targets = settings.targets ?? ['q_proj', 'v_proj'];
  const dropout = settings.dropout ?? 0.05;
  if (!Number.isInteger(rank) || rank < 1)
    throw new TrainError('SETTINGS_INVALID', `--rank must be a positive integer, got ${rank}.`);
  if (!(dropout >= 0 && dropout < 1))
    throw new TrainError('SETTINGS_INVALID', `--dropout must be in [0, 1), got ${dropout}.`);
  const targetModules =
    targets === ALL_LINEAR
      ? [...new Set(llamaLinearModules(model).map((m) => m.linear))].sort()
      : typeof targets === 'string'
        ? targets
        : [...targets];
  return createLoraConfig({
    r: rank,
    lora_alpha: settings.alpha ?? 16,
    lora_dropout: dropout,
    target_modules: targetModules,
    use_rslora: settings.rslora ?? false,
    init_lora_weights: initConfigValue(settings.init ?? 'default'),
    base_model_name_or_path: baseModelPath,
    task_type: 'CAUSAL_LM',
  });
}

function initConfigValue(method: LoraInitMethod): boolean | string {
  return method === 'default' ? true : method === 'random' ? false : method;
}

/** Settings given explicitly that an `--init-adapter`'s config contradicts, as messages. */
export function contradictions(
  settings: LoraSettings,
  config: LoraConfig,
  model: LlamaConfig,
): string[] {
  const out: string[] = [];
  const differs = (flag: string, given: unknown, theirs: unknown) => {
    if (given !== undefined && JSON.stringify(given) !== JSON.stringify(theirs))
      out.push(`--${flag} ${JSON.stringify(given)} but the adapter has ${JSON.stringify(theirs)}`);
  };
  differs('rank', settings.rank, config.r);
  differs('alpha', settings.alpha, config.lora_alpha);
  differs('dropout', settings.dropout, config.lora_dropout);
  differs('rslora', settings.rslora, config.use_rslora);
  if (settings.targets !== undefined) {
    const mine = loraConfigFromSettings({ targets: settings.targets }, model, null).target_modules;
    const norm = (t: unknown) => (Array.isArray(t) ? [...t].sort() : t);
    if (JSON.stringify(norm(mine)) !== JSON.stringify(norm(config.target_modules)))
      out.push(
        `--targets ${JSON.stringify(settings.targets)} but the adapter targets ${JSON.stringify(config.target_modules)}`,
      );
  }
  if (settings.init !== undefined)
    out.push('--init (the adapter already holds the starting weights)');
  return out;
}

/** Reads a base linear weight [out, in] as float32 (PiSSA and OLoRA decompose it). */
export type BaseWeightReader = (tensorName: string) => Promise<Tensor>;

/**
 * Creates the adapter a LoRA run trains: targets matched with PEFT's rules (core's
 * `matchTargets`), ranks and scalings per module (rank_pattern / alpha_pattern honoured), and
 * the starting A and B:
 * - a new adapter: core's `initLoraWeights` per module in model order, all drawing from one PCG32
 *   generator `createRng(seed, INIT_STREAM)` (PEFT's formulas; the random numbers are not torch's,
 *   so a seeded run differs from PEFT's with the same seed; start from `initAdapter` to compare);
 * - `initAdapter`: its config and weights (converted to float32), checked against the model.
 */
export async function createLoraSetup(
  model: LlamaConfig,
  config: LoraConfig,
  options: { seed: Seed64; initAdapter?: Adapter; readBase?: BaseWeightReader },
): Promise<LoraSetup> {
  for (const [field, bad] of [
    ['use_dora', config.use_dora],
    ['lora_bias', config.lora_bias],
    ['fan_in_fan_out', config.fan_in_fan_out],
    ['modules_to_save', (config.modules_to_save ?? []).length > 0],
    ['bias', config.bias !== 'none'],
  ] as const) {
    if (bad)
      throw new TrainError(
        'SETTINGS_UNSUPPORTED',
        `LoRA config ${field} is set; training supports plain LoRA (A and B) only.`,
        { field },
      );
  }
  const linears = llamaLinearModules(model);
  const names = linears.map((m) => m.module);
  const targeted = new Set(
    matchTargets(config, names, { linearModules: names, modelType: model.modelType }),
  );
  if (targeted.size === 0) {
    throw new TrainError(
      'TARGETS_NO_MATCH',
      `target_modules ${JSON.stringify(config.target_modules)} matches no linear layer of the model (its linears are ${LLAMA_LINEARS.join(', ')} in each of ${model.numLayers} layers).`,
      { targets: config.target_modules },
    );
  }
  if (options.initAdapter) {
    const check = checkAdapterTargets(options.initAdapter, names, {
      linearModules: names,
      modelType: model.modelType,
    });
    if (!check.ok) {
      const what = [
        check.missingWeights.length &&
          `no weights for ${check.missingWeights.slice(0, 3).join(', ')}`,
        check.notInModel.length &&
          `modules not in the model: ${check.notInModel.slice(0, 3).join(', ')}`,
        check.notTargeted.length &&
          `weights for untargeted modules: ${check.notTargeted.slice(0, 3).join(', ')}`,
      ].filter(Boolean);
      throw new TrainError(
        'INIT_ADAPTER_MISMATCH',
        `--init-adapter does not fit this model: ${what.join('; ')}.`,
      );
    }
  }
  const method = parseLoraInitMethod(config.init_lora_weights);
  const rng = createRng(options.seed, INIT_STREAM);
  const modules: LoraModulePlan[] = [];
  const baseOverrides = new Map<string, Tensor<'f32'>>();
  for (const { module, layer, linear } of linears) {
    if (!targeted.has(module)) continue;
    const [outFeatures, inFeatures] = llamaLinearShape(model, linear);
    const rank = loraRank(config, module);
    const scaling = loraScaling(config, module);
    if (rank > Math.min(inFeatures, outFeatures)) {
      throw new TrainError(
        'RANK_TOO_LARGE',
        `rank ${rank} is larger than ${module} allows: it is [${outFeatures}, ${inFeatures}], so the rank can be at most ${Math.min(inFeatures, outFeatures)}.`,
        { module, rank },
      );
    }
    let a: Float32Array;
    let b: Float32Array;
    const loaded = options.initAdapter?.modules.get(module);
    if (loaded) {
      const ok = (t: Tensor, shape: number[]) =>
        t.shape.length === 2 && t.shape[0] === shape[0] && t.shape[1] === shape[1];
      if (!ok(loaded.A, [rank, inFeatures]) || !ok(loaded.B, [outFeatures, rank])) {
        throw new TrainError(
          'INIT_ADAPTER_MISMATCH',
          `--init-adapter: ${module} has A [${loaded.A.shape}] and B [${loaded.B.shape}]; this model needs [${rank}, ${inFeatures}] and [${outFeatures}, ${rank}].`,
          { module },
        );
      }
      a = Float32Array.from(toFloat32Array(loaded.A));
      b = Float32Array.from(toFloat32Array(loaded.B));
    } else {
      const decomposes =
        method === 'pissa' || method === 'olora' || method.startsWith('pissa_niter_');
      if (decomposes && !options.readBase) {
        throw new TrainError('SETTINGS_UNSUPPORTED', `--init ${method} needs the base weights.`);
      }
      const weight = decomposes
        ? await options.readBase!(`${module}.weight`)
        : { shape: [outFeatures, inFeatures] };
      const init = initLoraWeights(weight, { rank, scaling, method, rng, dtype: 'f32' });
      a = Float32Array.from(init.A.data as ArrayLike<number>);
      b = Float32Array.from(init.B.data as ArrayLike<number>);
      if (init.base)
        baseOverrides.set(`${module}.weight`, {
          dtype: 'f32',
          shape: init.base.shape,
          data: toFloat32Array(init.base),
        });
    }
    const param = (kind: 'A' | 'B', shape: number[], data: Float32Array): Parameter => {
      const name = `base_model.model.${module}.lora_${kind}.weight`;
      return { name, shape, data, decay: decaysWeight(name) };
    };
    modules.push({
      module,
      layer,
      linear,
      inFeatures,
      outFeatures,
      rank,
      scaling,
      A: param('A', [rank, inFeatures], a),
      B: param('B', [outFeatures, rank], b),
    });
  }
  return { config, modules, parameters: modules.flatMap((m) => [m.A, m.B]), baseOverrides };
}

/** The trained adapter as @lora/adapters data (float32 A and B, PEFT names), ready to save. */
export function loraSetupToAdapter(setup: LoraSetup): Adapter {
  const config: LoraConfig = { ...setup.config, inference_mode: true };
  return {
    config,
    modules: new Map(
      setup.modules.map((m) => [
        m.module,
        {
          A: { dtype: 'f32', shape: m.A.shape, data: m.A.data },
          B: { dtype: 'f32', shape: m.B.shape, data: m.B.data },
        },
      ]),
    ),
    modulesToSave: new Map(),
  };
}
