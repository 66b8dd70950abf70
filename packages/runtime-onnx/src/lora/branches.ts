import { RuntimeError } from '../errors.js';
import type { GraphBuilder } from '../graph/builder.js';
import * as op from '../graph/ops.js';
import type { Value } from '../graph/types.js';
import type { LinearHook, LinearSite } from '../models/linear.js';

/**
 * LoRA branches as graph inputs, beside any linear, for several adapters at once.
 *
 * Every targeted linear y = x W^T gets `y + s[row] * (x A[row]) B[row]`, where A and B are fed
 * at run time as stacks over adapter SLOTS and each batch row picks its slot by index (Gather,
 * the semantics of Punica's BGMV with standard ops):
 *
 *   inputs   lora.index            [batch] int64      slot of each row (0 = no adapter)
 *            lora.scale            [slots] f32        scale of each slot
 *            lora.<group>.A        [slots, in, m*R]   A^T of the m linears sharing this input, side by side
 *            lora.<module>.B       [slots, R, out]    B^T (the adapter's own scaling already applied)
 *   per group    Ag = Gather(A, index)              [batch, in, m*R]
 *                h  = MatMul(x, Ag) * scale[index]  [batch, seq, m*R]   (one pass over x for q,k,v)
 *   per linear   hj = Slice(h, j*R, (j+1)*R)        [batch, seq, R]     (only when m > 1)
 *                y' = y + MatMul(hj, Gather(B, index))                  [batch, seq, out]
 *
 * Linears that read the same activation (LLaMA's q/k/v, gate/up) share one A-projection: their
 * A's are concatenated along the rank, so x is read once instead of m times. R is the slot rank:
 * lower-rank adapters are zero-padded (zero columns of A^T, zero rows of B^T add exactly 0).
 * A row whose slot is all zero, or whose slot scale is 0, gets exactly y (y + 0 = y).
 * Several adapters on one row are packed into one slot side by side along the rank (see
 * `LoraSlots.assign`): B_cat A_cat = sum_i s_i B_i A_i exactly.
 */

/** Which linears get a branch: module-name suffixes (PEFT list semantics), `all-linear`, or a predicate. */
export type LoraTargets = readonly string[] | 'all-linear' | ((module: string) => boolean);

export interface LoraBranchOptions {
  readonly targets: LoraTargets;
  /** Number of adapter slots, slot 0 included (it stays all-zero: "no adapter"). At least 2. */
  readonly slots: number;
  /** Slot rank R: the largest total rank one slot can hold. */
  readonly rank: number;
  /** Share one A-projection between linears reading the same input (q/k/v, gate/up). Default true ('gather' only). */
  readonly fuseSharedInputs?: boolean;
  /**
   * How rows reach their slot. `'gather'` (default): each row gathers its slot's A and B, so the
   * work is that of one rank-R adapter whatever the number of slots; the gathered copies cost
   * memory traffic per row, which dominates decode steps. `'dense'`: every linear computes all
   * slots at once (A of all slots side by side, rank (slots-1)*R) and a per-row weight selects
   * and scales them: no Gather, 4 nodes per linear, work grows with the number of slots. Better
   * for decoding with a few adapters loaded; `'gather'` for many adapters or long prompts.
   */
  readonly mixing?: 'gather' | 'dense';
}

/** One linear with a branch, as recorded while the graph was built. */
export interface LoraSite {
  /** `'gather'`: A [slots, in, width], B [slots, R, out]. `'dense'`: A [in, (slots-1)*R], B [(slots-1)*R, out]. */
  readonly layout: 'gather' | 'dense';
  readonly module: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
  /** Graph input holding this linear's A^T (shared with its group). */
  readonly aInput: string;
  /** Column offset of this linear's R columns inside the group's A (j * R). */
  readonly aOffset: number;
  /** Columns of the group's A (m * R). */
  readonly aWidth: number;
  /** Graph input holding this linear's B^T stack. */
  readonly bInput: string;
}

/**
 * What the hook added to the graph: the branch sites and the input names. Filled while the
 * graph is built; {@link LoraSlots} reads it to lay out the feeds.
 */
export interface LoraGraphPlan {
  readonly slots: number;
  readonly rank: number;
  readonly indexInput: string;
  readonly scaleInput: string;
  /** By module name, in graph order. */
  readonly sites: ReadonlyMap<string, LoraSite>;
}

export const LORA_INDEX_INPUT = 'lora.index';
export const LORA_SCALE_INPUT = 'lora.scale';

/** True when `module` is targeted (list: equal, or ends with "." + entry). */
export function isLoraTarget(targets: LoraTargets, module: string): boolean {
  if (targets === 'all-linear') return true;
  if (typeof targets === 'function') return targets(module);
  return targets.some((t) => module === t || module.endsWith(`.${t}`));
}

/** Linears that read the same activation in LLaMA-family blocks. */
const SHARED_INPUT = /^(.*\.)(self_attn\.(?:q|k|v)_proj|mlp\.(?:gate|up)_proj)$/;
const SIBLINGS: Record<string, readonly string[]> = {
  self_attn: ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'],
  mlp: ['mlp.gate_proj', 'mlp.up_proj'],
};

/** The targeted linears that share `module`'s input (itself included), in graph order. */
function groupOf(options: LoraBranchOptions, module: string): string[] {
  const m = SHARED_INPUT.exec(module);
  if (!m || options.fuseSharedInputs === false) return [module];
  const [, prefix, local] = m;
  return SIBLINGS[local.split('.')[0]]
    .map((s) => prefix + s)
    .filter((n) => isLoraTarget(options.targets, n));
}

/**
 * A {@link LinearHook} that adds LoRA branches, and the plan it fills. Pass `hook` as the model's
 * `linearHook`; after the graph is built, `plan` lists the sites and input names.
 */
export function createLoraHook(options: LoraBranchOptions): {
  hook: LinearHook;
  plan: LoraGraphPlan;
} {
  const { slots, rank } = options;
  if (!Number.isSafeInteger(slots) || slots < 2) {
    throw new RuntimeError(
      'LORA_OPTIONS',
      `slots must be an integer >= 2 (slot 0 is "no adapter"), got ${slots}.`,
    );
  }
  if (!Number.isSafeInteger(rank) || rank < 1) {
    throw new RuntimeError('LORA_OPTIONS', `rank must be a positive integer, got ${rank}.`);
  }
  const sites = new Map<string, LoraSite>();
  const plan: LoraGraphPlan = {
    slots,
    rank,
    indexInput: LORA_INDEX_INPUT,
    scaleInput: LORA_SCALE_INPUT,
    sites,
  };
  // Per graph: the index input and the per-row scale are made once, at the first branch.
  let shared:
    | { g: GraphBuilder; index: Value; scale: Value; rowScale?: Value; rowWeights?: Value }
    | undefined;
  const groups = new Map<string, { x: Value; h: Value; members: string[] }>();

  const hook: LinearHook = (g: GraphBuilder, site: LinearSite) => {
    if (!isLoraTarget(options.targets, site.module)) return undefined;
    if (!shared || shared.g !== g) {
      const index = g.input(LORA_INDEX_INPUT, 'i64', ['batch']);
      const scale = g.input(LORA_SCALE_INPUT, 'f32', [slots]);
      shared = { g, index, scale };
      groups.clear();
      sites.clear();
    }
    if (options.mixing === 'dense') return denseBranch(g, site);
    const { index } = shared;
    // rowScale: [batch, 1, 1], broadcast over [batch, seq, m*R]
    shared.rowScale ??= op.reshape(
      g,
      op.gather(g, shared.scale, index, 0, 'lora/scale_of_row'),
      [-1, 1, 1],
    );
    const { rowScale } = shared;
    const members = groupOf(options, site.module);
    const groupName =
      members.length === 1
        ? site.module
        : `${commonPrefix(members)}${members.map(localName).join('+')}`;
    let group = groups.get(groupName);
    if (!group) {
      // x: [batch, seq, in]; A: [slots, in, m*R] -> Ag: [batch, in, m*R]; h: [batch, seq, m*R]
      const a = g.input(`lora.${groupName}.A`, 'f32', [
        slots,
        site.inFeatures,
        members.length * rank,
      ]);
      const ag = op.gather(g, a, index, 0, `lora/${groupName}/gather_A`);
      const h = op.mul(
        g,
        op.matmul(g, site.x, ag, `lora/${groupName}/xA`),
        rowScale,
        `lora/${groupName}/scale`,
      );
      group = { x: site.x, h, members };
      groups.set(groupName, group);
    } else if (group.x.name !== site.x.name) {
      throw new RuntimeError(
        'LORA_GROUP_INPUT',
        `LoRA: ${site.module} was expected to read the same input as ${group.members[0]} (fused A-projection), but it does not. Build with fuseSharedInputs: false for this model.`,
        { module: site.module },
      );
    }
    const j = members.indexOf(site.module);
    const hj = members.length === 1 ? group.h : op.slice(g, group.h, -1, j * rank, (j + 1) * rank);
    const bName = `lora.${site.module}.B`;
    const b = g.input(bName, 'f32', [slots, rank, site.outFeatures]);
    // Bg: [batch, R, out]; delta: [batch, seq, out]
    const delta = op.matmul(
      g,
      hj,
      op.gather(g, b, index, 0, `lora/${site.module}/gather_B`),
      `lora/${site.module}/hB`,
    );
    sites.set(site.module, {
      layout: 'gather',
      module: site.module,
      inFeatures: site.inFeatures,
      outFeatures: site.outFeatures,
      aInput: `lora.${groupName}.A`,
      aOffset: j * rank,
      aWidth: members.length * rank,
      bInput: bName,
    });
    return op.add(g, site.y, delta, `lora/${site.module}/add`);
  };
  /**
   * rowWeights: [batch, 1, (slots-1)*R], the scale of the row's slot on that slot's R columns and
   * 0 elsewhere (slot 0 has no columns). Built once per graph from index and scale:
   * onehot = Gather(E, index) with E [slots, (slots-1)*R] constant 0/1; scaleCols = scale E.
   */
  const rowWeightsOf = (g: GraphBuilder): Value => {
    const state = shared!;
    if (state.rowWeights) return state.rowWeights;
    const width = (slots - 1) * rank;
    const expand = new Float32Array(slots * width);
    for (let s = 1; s < slots; s++)
      expand.fill(1, s * width + (s - 1) * rank, s * width + s * rank);
    const E = g.initializer('lora/slot_columns', {
      dtype: 'f32',
      shape: [slots, width],
      data: expand,
    });
    const { scale } = state;
    const onehot = op.gather(g, E, state.index, 0, 'lora/row_columns'); // [batch, width]
    const scaleCols = op.matmul(g, op.reshape(g, scale, [1, slots]), E, 'lora/scale_columns'); // [1, width]
    state.rowWeights = op.reshape(g, op.mul(g, onehot, scaleCols, 'lora/row_weights'), [
      -1,
      1,
      width,
    ]);
    return state.rowWeights;
  };

  const denseBranch = (g: GraphBuilder, site: LinearSite): Value => {
    const width = (slots - 1) * rank;
    const aName = `lora.${site.module}.A`;
    const bName = `lora.${site.module}.B`;
    const a = g.input(aName, 'f32', [site.inFeatures, width]);
    const b = g.input(bName, 'f32', [width, site.outFeatures]);
    // h: [batch, seq, width], weighted per row; delta: [batch, seq, out]
    const h = op.mul(
      g,
      op.matmul(g, site.x, a, `lora/${site.module}/xA`),
      rowWeightsOf(g),
      `lora/${site.module}/weights`,
    );
    const delta = op.matmul(g, h, b, `lora/${site.module}/hB`);
    sites.set(site.module, {
      layout: 'dense',
      module: site.module,
      inFeatures: site.inFeatures,
      outFeatures: site.outFeatures,
      aInput: aName,
      aOffset: 0,
      aWidth: width,
      bInput: bName,
    });
    return op.add(g, site.y, delta, `lora/${site.module}/add`);
  };
  return { hook, plan };
}

function localName(module: string): string {
  return module.slice(module.lastIndexOf('.') + 1);
}

function commonPrefix(modules: readonly string[]): string {
  const first = modules[0];
  return first.slice(0, first.lastIndexOf('.') + 1);
}
