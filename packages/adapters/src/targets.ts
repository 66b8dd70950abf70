import { matchTargets, type TargetMatchOptions } from '@lora/core';
import type { Adapter } from './adapter.js';

/** How an adapter's modules line up with a model's, under PEFT's target matching. */
export interface TargetCheck {
  /** Model modules the config targets (PEFT would put a LoRA branch on each). */
  readonly targeted: string[];
  /** Targeted modules with no weights in the adapter (PEFT: "missing adapter keys"). */
  readonly missingWeights: string[];
  /** Adapter modules the config does not target in this model (PEFT would ignore their weights). */
  readonly notTargeted: string[];
  /** Adapter modules with no module of that name in the model. */
  readonly notInModel: string[];
  /** True when every targeted module has weights and every weight has a targeted module. */
  readonly ok: boolean;
}

/**
 * Module names of a model from its tensor names: every `<module>.weight` (so linear, conv,
 * embedding and norm modules; pass `linearModules` in the options for `"all-linear"`).
 */
export function moduleNamesOf(tensorNames: Iterable<string>): string[] {
  const out: string[] = [];
  for (const n of tensorNames) if (n.endsWith('.weight')) out.push(n.slice(0, -'.weight'.length));
  return out;
}

/**
 * Checks an adapter against a model's module names with PEFT's matching rules (core's
 * `matchTargets`: target_modules list / regex / "all-linear", exclude_modules,
 * layers_to_transform, modules_to_save). Model names may lack the task model's first part
 * (`h.0.attn.c_attn` for the adapter's `transformer.h.0.attn.c_attn`): they are matched by
 * whole dotted suffix.
 */
export function checkAdapterTargets(
  adapter: Adapter,
  modelModules: readonly string[],
  options?: TargetMatchOptions,
): TargetCheck {
  const modelSet = new Set(modelModules);
  const toModel = (m: string): string | undefined => {
    if (modelSet.has(m)) return m;
    let rest = m;
    for (let i = 0; i < 2 && rest.includes('.'); i++) {
      rest = rest.slice(rest.indexOf('.') + 1);
      if (modelSet.has(rest)) return rest;
    }
    return undefined;
  };
  const adapterToModel = new Map<string, string | undefined>(
    [...adapter.modules.keys()].map((m) => [m, toModel(m)]),
  );
  // Match on the adapter's naming when the model's names are shorter (prefix added back).
  const prefixes = new Set<string>();
  for (const [a, m] of adapterToModel)
    if (m && m !== a) prefixes.add(a.slice(0, a.length - m.length));
  const prefix = prefixes.size === 1 ? [...prefixes][0] : '';
  const names = modelModules.map((n) => prefix + n);
  const targeted = matchTargets(adapter.config, names, options);
  const present = new Set(adapter.modules.keys());
  const targetedSet = new Set(targeted);
  const missingWeights = targeted.filter((t) => !present.has(t));
  const notInModel = [...adapterToModel].filter(([, m]) => m === undefined).map(([a]) => a);
  const notTargeted = [...present].filter(
    (p) => !targetedSet.has(p) && adapterToModel.get(p) !== undefined,
  );
  return {
    targeted,
    missingWeights,
    notTargeted,
    notInModel,
    ok: missingWeights.length === 0 && notTargeted.length === 0 && notInModel.length === 0,
  };
}
