import { loraScaling } from '@lora/core';
import { RuntimeError } from '../errors.js';
import * as op from '../graph/ops.js';
import type { Value } from '../graph/types.js';
import { isLoraTarget, type LoraTargets } from '../lora/branches.js';
import type { LinearHook } from '../models/linear.js';

/** LoRA hyper-parameters of a training graph (PEFT's `LoraConfig` fields of the same meaning). */
export interface TrainableLoraOptions {
  /** `r`: rank of every branch. */
  readonly rank: number;
  /** `lora_alpha`; the branch output is scaled by alpha / rank (alpha / sqrt(rank) with `rslora`). */
  readonly alpha: number;
  /** Linears that get a branch: module-name suffixes (`['q_proj', 'v_proj']`), `'all-linear'`, or a predicate. */
  readonly targets: LoraTargets;
  /** `use_rslora`. Default false. */
  readonly rslora?: boolean;
  /**
   * `lora_dropout` probability p in [0, 1). With p > 0 every branch reads `x * keep / (1 - p)`,
   * `keep` a 0/1 mask the caller draws per step and feeds (seeded in TypeScript).
   */
  readonly dropout?: number;
}

/** One trainable LoRA branch of the graph: PEFT's tensor layout and the graph input names. */
export interface TrainableLoraSite {
  /** HF module name, e.g. `model.layers.0.self_attn.q_proj`. */
  readonly module: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
  /** Input `<module>.lora_A.weight`, f32 [rank, in] (PEFT's `lora_A.weight`). */
  readonly aInput: string;
  /** Input `<module>.lora_B.weight`, f32 [out, rank] (PEFT's `lora_B.weight`). */
  readonly bInput: string;
  /** Input `<module>.lora_dropout.keep`, u8 [batch, sequence, in] (1 keep, 0 drop); only with dropout. */
  readonly dropoutInput?: string;
  /** The factor s of `y + s * B A x`. */
  readonly scale: number;
}

/** Checks LoRA options and returns the scale of every branch (alpha / r, or alpha / sqrt(r)). */
export function trainableLoraScale(options: TrainableLoraOptions): number {
  const { rank, alpha, dropout = 0 } = options;
  if (!Number.isSafeInteger(rank) || rank < 1) {
    throw new RuntimeError('LORA_OPTIONS', `lora.rank must be a positive integer, got ${rank}.`);
  }
  if (!Number.isFinite(alpha)) {
    throw new RuntimeError('LORA_OPTIONS', `lora.alpha must be a finite number, got ${alpha}.`);
  }
  if (!(dropout >= 0 && dropout < 1)) {
    throw new RuntimeError('LORA_OPTIONS', `lora.dropout must be in [0, 1), got ${dropout}.`);
  }
  return loraScaling({
    r: rank,
    lora_alpha: alpha,
    use_rslora: options.rslora === true,
    rank_pattern: {},
    alpha_pattern: {},
  });
}

/**
 * A {@link LinearHook} that adds a TRAINABLE LoRA branch beside every targeted linear, PEFT's
 * forward exactly: `y + s * ((dropout(x) A^T) B^T)` with A [r, in] and B [out, r] as graph inputs
 * in PEFT's layout, so their gradients come out in PEFT's layout too. The scale s is a separate
 * constant (the `alpha` of the A-projection's `FusedMatMul`), never folded into B: the gradient of
 * B, and any weight decay applied to it, are PEFT's. `sites` is filled while the graph is built.
 */
export function trainableLoraHook(
  options: TrainableLoraOptions,
  batch: number,
  sequence: number,
): { hook: LinearHook; sites: TrainableLoraSite[] } {
  const scale = trainableLoraScale(options);
  const dropout = options.dropout ?? 0;
  const sites: TrainableLoraSite[] = [];
  const hook: LinearHook = (g, site) => {
    if (!isLoraTarget(options.targets, site.module)) return undefined;
    const { module, inFeatures, outFeatures } = site;
    const aInput = `${module}.lora_A.weight`;
    const bInput = `${module}.lora_B.weight`;
    const A = g.input(aInput, 'f32', [options.rank, inFeatures]);
    const B = g.input(bInput, 'f32', [outFeatures, options.rank]);
    let x: Value = site.x;
    let dropoutInput: string | undefined;
    if (dropout > 0) {
      dropoutInput = `${module}.lora_dropout.keep`;
      const keep = g.input(dropoutInput, 'u8', [batch, sequence, inFeatures]);
      x = op.mul(g, x, op.cast(g, keep, 'f32'), `${module}/lora_dropout`);
    }
    // s / (1 - p) in one factor on the rank-r product: the cheapest place, same math as PEFT.
    const h = op.fusedMatMul(
      g,
      x,
      A,
      { transB: true, alpha: scale / (1 - dropout) },
      `${module}/lora_A`,
    ); // [B, T, r]
    const delta = op.fusedMatMul(g, h, B, { transB: true }, `${module}/lora_B`); // [B, T, out]
    sites.push({ module, inFeatures, outFeatures, aInput, bInput, dropoutInput, scale });
    return op.add(g, site.y, delta, `${module}/lora_add`);
  };
  return { hook, sites };
}
