import type { Adapter, AdapterLease, AdapterRegistry } from '@lora/adapters';
import { RuntimeError } from '../errors.js';
import type { LoraSlots } from './slots.js';

/** An adapter by registry name with its scale; several on one request add their deltas. */
export interface NamedAdapter {
  readonly name: string;
  readonly scale?: number;
}

/** A request's hold on a slot: feed `slot` as the row's index, then release once. */
export interface SlotLease {
  readonly slot: number;
  release(): void;
}

interface SlotState {
  key?: string;
  users: number;
  lastUsed: number;
}

/**
 * Maps adapter sets to the slots of a {@link LoraSlots}, loading adapters through an
 * {@link AdapterRegistry} (for a server: requests name adapters, the cache finds or fills a
 * slot). A set already in a slot is a hit (feeds only). Otherwise the least recently used slot
 * that no in-flight request uses is refilled; while a request holds a slot it is never
 * refilled. Slot 0 is "no adapter" (an empty set).
 */
export class LoraSlotCache {
  readonly #slots: LoraSlots;
  readonly #registry: AdapterRegistry<Adapter>;
  readonly #state: SlotState[];
  /** Sets being loaded into a slot right now, so concurrent requests share the work. */
  readonly #pending = new Map<string, Promise<number>>();
  #clock = 0;
  hits = 0;
  misses = 0;

  constructor(slots: LoraSlots, registry: AdapterRegistry<Adapter>) {
    this.#slots = slots;
    this.#registry = registry;
    this.#state = Array.from({ length: slots.size }, () => ({ users: 0, lastUsed: 0 }));
  }

  /**
   * A slot holding `adapters` (their deltas summed with their scales), for one request. Throws
   * `LORA_SLOTS_BUSY` when every slot is in use by other requests (retry after some finish),
   * and the registry's errors for unknown adapters.
   */
  async acquire(adapters: readonly NamedAdapter[]): Promise<SlotLease> {
    if (adapters.length === 0) return { slot: 0, release: () => {} };
    const key = adapters.map((a) => `${a.name}\u0000${a.scale ?? 1}`).join('\u0001');
    let slot = this.#state.findIndex((s, i) => i > 0 && s.key === key);
    if (slot > 0) {
      this.hits++;
    } else {
      let pending = this.#pending.get(key);
      if (!pending) {
        this.misses++;
        pending = this.#fill(key, adapters).finally(() => this.#pending.delete(key));
        this.#pending.set(key, pending);
      }
      slot = await pending;
    }
    const state = this.#state[slot];
    state.users++;
    state.lastUsed = ++this.#clock;
    let open = true;
    return {
      slot,
      release: () => {
        if (!open)
          throw new RuntimeError(
            'LORA_SLOT_RELEASED',
            `The lease on slot ${slot} was already released.`,
          );
        open = false;
        state.users--;
      },
    };
  }

  /**
   * Drops every slot holding adapter `name` that no request uses (after the adapter was
   * unloaded or changed on disk): the next request for it loads it afresh. Slots in use keep
   * their copy until their requests finish; they are not hits for new requests any more.
   */
  forget(name: string): void {
    for (let i = 1; i < this.#state.length; i++) {
      const s = this.#state[i];
      if (s.key?.split('\u0001').some((part) => part.split('\u0000')[0] === name))
        s.key = undefined;
    }
  }

  async #fill(key: string, adapters: readonly NamedAdapter[]): Promise<number> {
    // Choose and reserve the victim before any await, so concurrent fills pick different slots.
    let victim = -1;
    for (let i = 1; i < this.#state.length; i++) {
      const s = this.#state[i];
      if (s.users > 0) continue; // in use, or being filled (a fill holds a use)
      if (victim < 0 || s.lastUsed < this.#state[victim].lastUsed) victim = i;
    }
    if (victim < 0) {
      throw new RuntimeError(
        'LORA_SLOTS_BUSY',
        `All ${this.#state.length - 1} adapter slots are in use by running requests; retry when one finishes, or build the graph with more slots.`,
      );
    }
    const state = this.#state[victim];
    state.key = undefined; // its old set is gone from now on
    state.users++;
    const leases: AdapterLease<Adapter>[] = [];
    try {
      for (const a of adapters) leases.push(await this.#registry.acquire(a.name));
      this.#slots.assign(
        victim,
        adapters.map((a, i) => ({ adapter: leases[i].adapter, scale: a.scale ?? 1, name: a.name })),
      );
      state.key = key;
      return victim;
    } catch (e) {
      state.key = undefined;
      throw e;
    } finally {
      state.users--;
      for (const l of leases) l.release();
    }
  }
}
