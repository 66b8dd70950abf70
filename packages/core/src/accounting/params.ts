import type { LoraConfig } from '../lora/config.js';
import { loraRank } from '../lora/scaling.js';
import { compileTargetMatcher, type TargetMatchOptions } from '../lora/target-modules.js';
import type { LinearModule } from './model-config.js';

/**
 * Trainable parameters LoRA adds to one linear [out, in]: A [r, in] + B [out, r] = r (in + out),
 * plus the DoRA magnitude vector [out] and the lora_B bias [out] when enabled.
 */
export function loraParameterCount(
  inFeatures: number,
  outFeatures: number,
  r: number,
  extras: { dora?: boolean; loraBias?: boolean } = {},
): number {
  return (
    r * (inFeatures + outFeatures) +
    (extras.dora ? outFeatures : 0) +
    (extras.loraBias ? outFeatures : 0)
  );
}

/** The adapted modules of a model and what each costs. */
export interface LoraParameterReport {
  modules: {
    name: string;
    inFeatures: number;
    outFeatures: number;
    rank: number;
    params: number;
  }[];
  /** Sum over modules. */
  trainable: number;
}

/**
 * Which of `modules` a LoRA config adapts (PEFT target matching) and the parameters it adds,
 * honouring `rank_pattern`, `use_dora` and `lora_bias`. `modules_to_save` parameters are not
 * included (they are whole modules, not LoRA): add them if you train them.
 */
export function countLoraParameters(
  config: Pick<
    LoraConfig,
    | 'r'
    | 'rank_pattern'
    | 'use_dora'
    | 'lora_bias'
    | 'target_modules'
    | 'exclude_modules'
    | 'modules_to_save'
    | 'layers_to_transform'
    | 'layers_pattern'
  >,
  modules: readonly LinearModule[],
  options: TargetMatchOptions = {},
): LoraParameterReport {
  const decide = compileTargetMatcher(config, {
    linearModules: modules.map((m) => m.name),
    ...options,
  });
  const out: LoraParameterReport['modules'] = [];
  let trainable = 0;
  for (const m of modules) {
    if (decide(m.name) !== 'targeted') continue;
    const rank = loraRank(config, m.name);
    const params = loraParameterCount(m.inFeatures, m.outFeatures, rank, {
      dora: config.use_dora,
      loraBias: config.lora_bias,
    });
    out.push({ name: m.name, inFeatures: m.inFeatures, outFeatures: m.outFeatures, rank, params });
    trainable += params;
  }
  return { modules: out, trainable };
}

/** 1234567 -> "1,234,567" (no locale dependence). */
export function formatThousands(n: number): string {
  const s = Math.trunc(Math.abs(n)).toString();
  return (n < 0 ? '-' : '') + s.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/**
 * PEFT's `print_trainable_parameters` line. `allParams` counts the base model AND the adapter
 * (PEFT counts the model with LoRA layers inserted):
 * `trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622`.
 */
export function trainableParametersLine(trainable: number, allParams: number): string {
  const pct = allParams === 0 ? 0 : (100 * trainable) / allParams;
  return `trainable params: ${formatThousands(trainable)} || all params: ${formatThousands(allParams)} || trainable%: ${pct.toFixed(4)}`;
}
