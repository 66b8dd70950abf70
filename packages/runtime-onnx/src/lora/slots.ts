import type { Adapter } from '@lora/adapters';
import { loraScaling, lowRankDelta, type Tensor, tensor } from '@lora/core';
import { RuntimeError } from '../errors.js';
import type { LoraGraphPlan } from './branches.js';

/** One adapter placed in a slot, with the user's scale on top of its own (alpha / r) scaling. */
export interface SlotAdapter {
  readonly adapter: Adapter;
  /** Multiplies the adapter's delta (PEFT's per-adapter weight). Default 1. */
  readonly scale?: number;
  /** For messages. */
  readonly name?: string;
}

/**
 * The run-time LoRA weights of a graph built with {@link createLoraHook}: one stacked A and B
 * tensor per input, a slot per adapter (or per combination of adapters), a scale per slot.
 *
 * Loading an adapter into a slot ({@link assign}) copies its factors once (memory-bound, in
 * proportion to the adapter's size). Choosing which slot each request uses is only the small
 * `lora.index` / `lora.scale` feeds ({@link feeds}): switching adapters between requests, or
 * mixing adapters in one batch, costs the same whatever the model size, and never rebuilds the
 * session.
 */
export class LoraSlots {
  readonly plan: LoraGraphPlan;
  /** Stacked inputs by graph input name: A [slots, in, m*R], B [slots, R, out]. */
  readonly #stacks = new Map<string, Tensor<'f32'>>();
  readonly #scales: Float32Array;
  readonly #labels: (string | undefined)[];

  constructor(plan: LoraGraphPlan) {
    if (plan.sites.size === 0) {
      throw new RuntimeError(
        'LORA_NO_SITES',
        'The graph has no LoRA branch: build the model with the LoRA hook first.',
      );
    }
    this.plan = plan;
    for (const site of plan.sites.values()) {
      if (site.layout === 'dense') {
        // A [in, (slots-1)*R], B [(slots-1)*R, out]: slot s owns columns / rows (s-1)*R ... s*R.
        this.#stacks.set(site.aInput, tensor('f32', [site.inFeatures, site.aWidth]));
        this.#stacks.set(site.bInput, tensor('f32', [site.aWidth, site.outFeatures]));
        continue;
      }
      if (!this.#stacks.has(site.aInput)) {
        this.#stacks.set(site.aInput, tensor('f32', [plan.slots, site.inFeatures, site.aWidth]));
      }
      this.#stacks.set(site.bInput, tensor('f32', [plan.slots, plan.rank, site.outFeatures]));
    }
    this.#scales = new Float32Array(plan.slots);
    this.#labels = new Array(plan.slots).fill(undefined);
  }

  /** Slots, slot 0 included. */
  get size(): number {
    return this.plan.slots;
  }

  /** What each slot holds (undefined = empty), for messages and registries. */
  labels(): readonly (string | undefined)[] {
    return [...this.#labels];
  }

  /**
   * Loads one adapter, or several whose deltas add (each with its scale), into `slot` (1..slots-1),
   * replacing what was there; the slot's scale becomes 1. Several adapters sit side by side
   * along the slot rank, so their ranks must sum to at most the slot rank. Every module of every
   * adapter must have a branch in the graph. Throws before changing anything.
   */
  assign(slot: number, adapters: readonly SlotAdapter[]): void {
    this.#checkSlot(slot, true);
    const { plan } = this;
    // Validate everything first: a failed assign leaves the slot as it was.
    const used = new Map<string, number>(); // module -> rank used so far
    for (const [k, { adapter, scale = 1, name }] of adapters.entries()) {
      const label = name ?? `adapter #${k}`;
      if (!Number.isFinite(scale)) {
        throw new RuntimeError(
          'LORA_SCALE',
          `${label}: scale must be a finite number, got ${scale}.`,
        );
      }
      for (const [module, m] of adapter.modules) {
        const site = plan.sites.get(module);
        if (!site) {
          throw new RuntimeError(
            'LORA_TARGET_NOT_IN_GRAPH',
            `${label} adapts ${module}, which has no LoRA branch in this graph. Build the graph with targets that include it (e.g. 'all-linear').`,
            { module, adapter: label },
          );
        }
        if (m.magnitude || m.bias || m.embedding) {
          throw new RuntimeError(
            'LORA_UNSUPPORTED',
            `${label}: ${module} uses ${m.magnitude ? 'DoRA' : m.bias ? 'a LoRA bias' : 'an embedding LoRA'}, which a LoRA branch does not compute. Use a merged model instead.`,
            { module, adapter: label },
          );
        }
        const [r, inF] = m.A.shape;
        const [outF, rB] = m.B.shape;
        if (inF !== site.inFeatures || outF !== site.outFeatures || r !== rB) {
          throw new RuntimeError(
            'LORA_SHAPE',
            `${label}: ${module} has A [${m.A.shape.join(', ')}] and B [${m.B.shape.join(', ')}]; the model's linear is ${site.inFeatures} -> ${site.outFeatures}.`,
            { module, adapter: label },
          );
        }
        const total = (used.get(module) ?? 0) + r;
        if (total > plan.rank) {
          throw new RuntimeError(
            'LORA_RANK_EXCEEDS_SLOT',
            `Slot ${slot}: ${module} needs rank ${total} (sum over the adapters in the slot), more than the slot rank ${plan.rank}. Build the graph with a larger rank.`,
            { module, slot, rank: total },
          );
        }
        used.set(module, total);
      }
    }
    this.#zero(slot);
    const offsets = new Map<string, number>();
    for (const { adapter, scale = 1 } of adapters) {
      for (const [module, m] of adapter.modules) {
        const site = plan.sites.get(module)!;
        // The slot holds core's ΔW factors (coef = s·B, basis = A): A^T [in, r] and (s·B)^T [r, out].
        const d = lowRankDelta(
          { A: m.A, B: m.B, scaling: loraScaling(adapter.config, module) * scale },
          module,
        );
        const off = offsets.get(module) ?? 0;
        const r = d.rank;
        const inF = d.cols;
        const outF = d.rows;
        // gather: A [slots, in, width], this module's columns start at aOffset + off in its slot;
        // dense: A [in, width], this slot's columns start at (slot-1)*R + off.
        const aStack = this.#stacks.get(site.aInput)!.data;
        const width = site.aWidth;
        const dense = site.layout === 'dense';
        const aBase = dense
          ? (slot - 1) * plan.rank + off
          : slot * inF * width + site.aOffset + off;
        for (let k = 0; k < r; k++) {
          const src = k * inF;
          for (let i = 0; i < inF; i++) aStack[aBase + i * width + k] = d.basis[src + i];
        }
        // B: [slots, R, out] (gather) or [(slots-1)*R, out] (dense); rows off..off+r of the slot hold (s·B)^T.
        const bStack = this.#stacks.get(site.bInput)!.data;
        const bBase = ((dense ? slot - 1 : slot) * plan.rank + off) * outF;
        for (let o = 0; o < outF; o++) {
          const src = o * r;
          for (let k = 0; k < r; k++) bStack[bBase + k * outF + o] = d.coef[src + k];
        }
        offsets.set(module, off + r);
      }
    }
    this.#scales[slot] = 1;
    this.#labels[slot] = adapters.map((x, k) => x.name ?? `adapter #${k}`).join('+');
  }

  /** Empties a slot (all zero, scale 0). */
  clear(slot: number): void {
    this.#checkSlot(slot, true);
    this.#zero(slot);
    this.#scales[slot] = 0;
    this.#labels[slot] = undefined;
  }

  /** Sets a slot's scale (applies to every row using the slot). */
  setScale(slot: number, scale: number): void {
    this.#checkSlot(slot, true);
    if (!Number.isFinite(scale))
      throw new RuntimeError('LORA_SCALE', `Slot scale must be finite, got ${scale}.`);
    this.#scales[slot] = scale;
  }

  /**
   * The feeds of one run: the stacks (shared, not copied) plus `lora.index` for the rows.
   * `rowSlots[b]` is the slot of batch row b (0 = no adapter).
   */
  feeds(rowSlots: readonly number[]): Record<string, Tensor> {
    const index = new BigInt64Array(rowSlots.length);
    for (let b = 0; b < rowSlots.length; b++) {
      this.#checkSlot(rowSlots[b], false);
      index[b] = BigInt(rowSlots[b]);
    }
    const out: Record<string, Tensor> = {
      [this.plan.indexInput]: tensor('i64', [rowSlots.length], index),
      [this.plan.scaleInput]: tensor('f32', [this.plan.slots], this.#scales.slice()),
    };
    for (const [name, t] of this.#stacks) out[name] = t;
    return out;
  }

  /** Bytes held by the stacks. */
  get bytes(): number {
    let n = 0;
    for (const t of this.#stacks.values()) n += t.data.byteLength;
    return n;
  }

  #zero(slot: number): void {
    const R = this.plan.rank;
    const done = new Set<string>();
    for (const site of this.plan.sites.values()) {
      for (const name of [site.aInput, site.bInput]) {
        if (done.has(name)) continue;
        done.add(name);
        const t = this.#stacks.get(name)!;
        if (site.layout === 'gather') {
          const per = t.data.length / this.plan.slots;
          t.data.fill(0, slot * per, (slot + 1) * per);
        } else if (name === site.aInput) {
          // A [in, width]: the slot's R columns of every row.
          const width = site.aWidth;
          for (let i = 0; i < site.inFeatures; i++) {
            t.data.fill(0, i * width + (slot - 1) * R, i * width + slot * R);
          }
        } else {
          // B [width, out]: the slot's R rows.
          t.data.fill(0, (slot - 1) * R * site.outFeatures, slot * R * site.outFeatures);
        }
      }
    }
  }

  #checkSlot(slot: number, writable: boolean): void {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.plan.slots) {
      throw new RuntimeError(
        'LORA_SLOT',
        `Slot ${slot} does not exist (slots 0..${this.plan.slots - 1}).`,
        { slot },
      );
    }
    if (writable && slot === 0) {
      throw new RuntimeError(
        'LORA_SLOT',
        'Slot 0 is reserved for "no adapter" and stays empty; use slots 1 and up.',
        {
          slot,
        },
      );
    }
  }
}
