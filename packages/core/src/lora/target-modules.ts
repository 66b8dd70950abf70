import { CoreError } from '../errors.js';
import type { LoraConfig } from './config.js';
import { compilePythonRegex, type PythonRegex } from './python-regex.js';

/** The config fields that decide which modules get a LoRA branch. */
export type TargetConfig = Pick<
  LoraConfig,
  | 'target_modules'
  | 'exclude_modules'
  | 'modules_to_save'
  | 'layers_to_transform'
  | 'layers_pattern'
>;

/** PEFT's shorthand for "every linear layer except the output head". */
export const ALL_LINEAR = 'all-linear';

/**
 * PEFT's default `target_modules` per `model_type` (config.json), used when the config says
 * `null`. A subset of PEFT's table: the families this project meets.
 */
export const DEFAULT_TARGET_MODULES: Readonly<Record<string, readonly string[]>> = Object.freeze({
  llama: ['q_proj', 'v_proj'],
  mistral: ['q_proj', 'v_proj'],
  mixtral: ['q_proj', 'v_proj'],
  qwen2: ['q_proj', 'v_proj'],
  gemma: ['q_proj', 'v_proj'],
  phi: ['q_proj', 'v_proj'],
  opt: ['q_proj', 'v_proj'],
  gpt2: ['c_attn'],
  gpt_neox: ['query_key_value'],
  falcon: ['query_key_value'],
  bloom: ['query_key_value'],
  t5: ['q', 'v'],
  bert: ['query', 'value'],
  roberta: ['query', 'value'],
  distilbert: ['q_lin', 'v_lin'],
});

/** What to know about the model beyond module names. */
export interface TargetMatchOptions {
  /**
   * Full names of the model's linear (and Conv1D) modules. Needed to expand `"all-linear"`;
   * without it every name asked about is assumed to be a linear layer.
   */
  linearModules?: readonly string[];
  /**
   * Name(s) of the output head excluded by `"all-linear"` (PEFT asks the model for its output
   * embeddings). Default: a module named `lm_head` (exactly, or as the last dotted part).
   */
  outputHead?: string | readonly string[];
  /** `model_type` from config.json: picks {@link DEFAULT_TARGET_MODULES} when target_modules is null. */
  modelType?: string;
}

/** Why a module is, or is not, targeted. */
export type TargetDecision =
  | 'targeted'
  | 'excluded'
  | 'modules-to-save'
  | 'not-matched'
  | 'layer-not-selected'
  | 'output-head'
  | 'not-linear';

/**
 * Builds the PEFT matching rule of a config once (regexes compiled), returning a function from
 * a module name (e.g. `model.layers.0.self_attn.q_proj`, without `base_model.model.`) to a
 * decision. Order of the rules is PEFT's `check_target_module_exists`:
 * 1. `exclude_modules`: regex fullmatch (string) or exact / `.name` suffix (list);
 * 2. `modules_to_save`: never targeted (the module or anything below it);
 * 3. regex string: fullmatch, nothing else; list: an exact name is targeted at once, a `.t`
 *    suffix match then passes the `layers_to_transform` filter.
 * Layer index (PEFT's regex with a lazy `.*?`, so the FIRST number, not an expert index later in
 * the name): `(?:^|.*?\.)<pattern>\.(\d+)\.` for each `layers_pattern` in turn, or
 * `.*?\.[^.]*\.(\d+)\.` without one. No index found = not targeted.
 * Every regex is Python's, matched in linear time ({@link compilePythonRegex}).
 */
export function compileTargetMatcher(
  config: TargetConfig,
  options: TargetMatchOptions = {},
): (moduleName: string) => TargetDecision {
  const excluded = compileExclude(config.exclude_modules);
  // PEFT splices each entry into its own template: re.match(rf"(^|.*\.){m}($|\..*)", key).
  const toSave = (config.modules_to_save ?? []).map((m) =>
    compilePythonRegex(`(^|.*\\.)${m}($|\\..*)`, 'match', { key: 'modules_to_save', pattern: m }),
  );
  let targets = config.target_modules;
  if (targets === null) {
    const defaults =
      options.modelType === undefined ? undefined : DEFAULT_TARGET_MODULES[options.modelType];
    if (!defaults) {
      throw new CoreError(
        'LORA_TARGETS_MISSING',
        `target_modules is null and ${options.modelType === undefined ? 'no model type was given' : `model type "${options.modelType}" has no default`}. Set target_modules (e.g. ["q_proj", "v_proj"] or "all-linear").`,
        { modelType: options.modelType },
      );
    }
    targets = [...defaults];
  }
  const isHead = headPredicate(options.outputHead);
  const linear = options.linearModules ? new Set(options.linearModules) : undefined;

  if (typeof targets === 'string' && targets.toLowerCase() === ALL_LINEAR) {
    // PEFT replaces the shorthand by the FULL names of the linear modules (minus the head) and
    // matches that list; a full name hits PEFT's exact-name branch, which skips the
    // layers_to_transform filter, so that filter has no effect with "all-linear" (as in PEFT).
    // Without a module list every asked name stands for a linear layer.
    return (name) => {
      if (excluded(name)) return 'excluded';
      if (toSave.some((re) => re.test(name))) return 'modules-to-save';
      if (isHead(name)) return 'output-head';
      if (linear && !linear.has(name)) return 'not-linear';
      return 'targeted';
    };
  }
  if (typeof targets === 'string') {
    const re = compilePythonRegex(targets, 'fullmatch', {
      key: 'target_modules',
      pattern: targets,
    });
    return (name) => {
      if (excluded(name)) return 'excluded';
      if (toSave.some((r) => r.test(name))) return 'modules-to-save';
      return re.test(name) ? 'targeted' : 'not-matched';
    };
  }
  const listRule = compileList(config, targets);
  return (name) => {
    if (excluded(name)) return 'excluded';
    if (toSave.some((re) => re.test(name))) return 'modules-to-save';
    return listRule(name);
  };
}

/** True when PEFT would put a LoRA branch on `moduleName` under this config. */
export function isTargetModule(
  config: TargetConfig,
  moduleName: string,
  options?: TargetMatchOptions,
): boolean {
  return compileTargetMatcher(config, options)(moduleName) === 'targeted';
}

/** The targeted names among `moduleNames`, in their order. */
export function matchTargets(
  config: TargetConfig,
  moduleNames: readonly string[],
  options?: TargetMatchOptions,
): string[] {
  const decide = compileTargetMatcher(config, options);
  return moduleNames.filter((n) => decide(n) === 'targeted');
}

/**
 * What `"all-linear"` expands to (PEFT saves this list, not the string): the linear modules
 * minus the output head, sorted.
 */
export function expandAllLinear(
  linearModules: readonly string[],
  outputHead?: string | readonly string[],
): string[] {
  const isHead = headPredicate(outputHead);
  return linearModules.filter((n) => !isHead(n)).sort();
}

function compileList(
  config: TargetConfig,
  targets: readonly string[],
): (name: string) => TargetDecision {
  const exact = new Set(targets);
  const layers = config.layers_to_transform;
  const usesLayers = layers !== null && !(Array.isArray(layers) && layers.length === 0);
  const lp = config.layers_pattern;
  // PEFT: None, "" or [] means "any second-level name".
  const patterns = lp === null || lp.length === 0 ? [] : typeof lp === 'string' ? [lp] : lp;
  // PEFT's templates (re.match); the lazy `.*?` takes the FIRST number, not an expert index.
  const layerRegexes: PythonRegex[] =
    patterns.length === 0
      ? [compilePythonRegex('.*?\\.[^.]*\\.(?P<idx>\\d+)\\.', 'match')]
      : patterns.map((p) =>
          compilePythonRegex(`(?:^|.*?\\.)${p}\\.(?P<idx>\\d+)\\.`, 'match', {
            key: 'layers_pattern',
            pattern: p,
          }),
        );
  const wanted = new Set(typeof layers === 'number' ? [layers] : (layers ?? []));

  return (name) => {
    // An exact full name in the list is targeted without the layer filter (PEFT's early branch).
    if (exact.has(name)) return 'targeted';
    if (!targets.some((t) => name.endsWith(`.${t}`))) return 'not-matched';
    if (!usesLayers) return 'targeted';
    for (const re of layerRegexes) {
      const idx = re.groups(name)?.idx;
      if (idx !== undefined) {
        return wanted.has(Number.parseInt(idx, 10)) ? 'targeted' : 'layer-not-selected';
      }
    }
    return 'layer-not-selected';
  };
}

function compileExclude(exclude: string[] | string | null): (name: string) => boolean {
  if (exclude === null || exclude.length === 0) return () => false;
  if (typeof exclude === 'string') {
    const re = compilePythonRegex(exclude, 'fullmatch', {
      key: 'exclude_modules',
      pattern: exclude,
    });
    return (name) => re.test(name);
  }
  const set = new Set(exclude);
  return (name) => set.has(name) || exclude.some((e) => name.endsWith(`.${e}`));
}

function headPredicate(
  outputHead: string | readonly string[] | undefined,
): (name: string) => boolean {
  if (outputHead === undefined) return (name) => name === 'lm_head' || name.endsWith('.lm_head');
  const heads = new Set(typeof outputHead === 'string' ? [outputHead] : outputHead);
  return (name) => heads.has(name);
}
