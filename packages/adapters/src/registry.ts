import { AdapterError } from './errors.js';

/**
 * What a loader returns for one adapter: the loaded value (tensors, an ONNX feed set, anything)
 * and the bytes it keeps in memory, which is what the registry's budget counts.
 */
export interface LoaderResult<T> {
  readonly adapter: T;
  readonly bytes: number;
}

/**
 * Loads one adapter by name. Returns `undefined` when the name is unknown (the registry then
 * throws `REGISTRY_UNKNOWN_ADAPTER`); any thrown error is reported as `REGISTRY_LOAD_FAILED`.
 */
export type AdapterLoader<T> = (name: string) => Promise<LoaderResult<T> | undefined>;

export interface AdapterRegistryOptions<T> {
  /** How an adapter is loaded (for example D's PEFT loader wrapped to report its bytes). */
  readonly loader: AdapterLoader<T>;
  /**
   * Memory budget in bytes. Unleased, unpinned adapters are evicted least recently used first
   * to stay within it. Pinned and leased adapters are never evicted, so they alone may push the
   * total over the budget (see {@link AdapterRegistryStats.bytes}). Default: unlimited.
   */
  readonly memoryBudgetBytes?: number;
  /** Called once when an adapter's memory is given up (evicted, or unloaded and no longer leased). */
  readonly dispose?: (adapter: T, name: string) => void;
}

/** Counters since the registry was created, plus the current memory in use. */
export interface AdapterRegistryStats {
  /** `acquire` calls served by an adapter already loaded or loading. */
  readonly hits: number;
  /** `acquire`/`load` calls that started a load. */
  readonly misses: number;
  /** Adapters dropped to stay within the budget. */
  readonly evictions: number;
  /** Adapters freed by `unload` (immediately or when their last lease ended). */
  readonly unloads: number;
  /** Loads that failed (unknown name or loader error). */
  readonly loadFailures: number;
  /**
   * Bytes held now: every loaded adapter, including unloaded ones still leased. Exceeds the
   * budget only when pinned and leased adapters alone need more.
   */
  readonly bytes: number;
  /** Highest value `bytes` has had. */
  readonly peakBytes: number;
  /** Adapters resolvable by name now (loaded or loading). */
  readonly entries: number;
  /** Leases currently open. */
  readonly leases: number;
  readonly memoryBudgetBytes: number;
}

/**
 * A claim on a loaded adapter. The adapter is not freed while any lease on it is open; call
 * `release()` exactly once when the request that used it is done.
 */
export interface AdapterLease<T> {
  readonly name: string;
  readonly adapter: T;
  readonly bytes: number;
  release(): void;
}

/** One member of the active set: an adapter name with the scale its delta is multiplied by. */
export interface ActiveAdapter {
  readonly name: string;
  readonly scale: number;
}

interface Entry<T> {
  readonly name: string;
  state: 'loading' | 'ready';
  /** Settles when the load is done; rejects with the load error. */
  readonly ready: Promise<void>;
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
  adapter?: T;
  bytes: number;
  /** Open leases, counted from the moment `acquire` is called (also while loading). */
  leases: number;
  pinned: boolean;
  /** Unloaded by name while leased: freed when the last lease ends. */
  retired: boolean;
}

/**
 * An in-memory registry of adapters for a runtime or a server: loads adapters on demand
 * through a loader, hands out leases, keeps a memory budget with LRU eviction and pinning,
 * and tracks an active set with a scale per adapter.
 *
 * Safe under concurrent async use: concurrent `acquire`s of one name share one load; an adapter
 * is never freed while leased (eviction skips leased and pinned entries; `unload` of a leased
 * adapter removes the name at once, so later acquires load afresh, and frees the old copy when
 * its last lease is released).
 */
export class AdapterRegistry<T> {
  readonly #loader: AdapterLoader<T>;
  readonly #budget: number;
  readonly #dispose?: (adapter: T, name: string) => void;
  /** Name -> entry, in least-recently-used-first order (an access moves the entry to the end). */
  readonly #entries = new Map<string, Entry<T>>();
  /** Entries unloaded while leased, still holding memory. */
  readonly #retired = new Set<Entry<T>>();
  /** Active set: name -> scale, with the registry's own lease on each. */
  readonly #active = new Map<string, { scale: number; lease: AdapterLease<T> }>();
  #hits = 0;
  #misses = 0;
  #evictions = 0;
  #unloads = 0;
  #loadFailures = 0;
  #bytes = 0;
  #peakBytes = 0;
  #leases = 0;

  constructor(options: AdapterRegistryOptions<T>) {
    const budget = options.memoryBudgetBytes ?? Number.POSITIVE_INFINITY;
    if (!(budget > 0)) {
      throw new AdapterError(
        'REGISTRY_BAD_BUDGET',
        `memoryBudgetBytes must be a positive number of bytes, got ${budget}.`,
        { memoryBudgetBytes: budget },
      );
    }
    this.#loader = options.loader;
    this.#budget = budget;
    this.#dispose = options.dispose;
  }

  /**
   * Leases the adapter `name`, loading it first if needed. Throws `REGISTRY_UNKNOWN_ADAPTER`,
   * `REGISTRY_LOAD_FAILED` or `REGISTRY_ADAPTER_TOO_LARGE`; a failed load leaves nothing behind.
   */
  async acquire(name: string): Promise<AdapterLease<T>> {
    return this.#lease(await this.#acquireEntry(name));
  }

  /**
   * Loads `name` without leasing it (a warm-up). With `pin`, the adapter is never evicted until
   * {@link unpin}. Resolves once loaded.
   */
  async load(name: string, options: { pin?: boolean } = {}): Promise<void> {
    const entry = await this.#acquireEntry(name);
    if (options.pin) entry.pinned = true;
    this.#lease(entry).release();
  }

  /** Pins a loaded adapter so eviction skips it. Throws `REGISTRY_NOT_LOADED` for other names. */
  pin(name: string): void {
    this.#loaded(name, 'pin').pinned = true;
  }

  /** Makes a pinned adapter evictable again, evicting at once if the budget requires it. */
  unpin(name: string): void {
    this.#loaded(name, 'unpin').pinned = false;
    this.#evictToBudget();
  }

  /**
   * Forgets `name`. A leased adapter keeps its memory until its last lease is released (the
   * name is free at once: a later `acquire` loads a new copy). An active adapter leaves the
   * active set. Throws `REGISTRY_NOT_LOADED` when `name` is not loaded or loading.
   */
  unload(name: string): void {
    const entry = this.#entries.get(name);
    if (!entry) {
      throw new AdapterError(
        'REGISTRY_NOT_LOADED',
        `Cannot unload adapter "${name}": it is not loaded. Loaded: ${this.#list()}.`,
        { adapter: name },
      );
    }
    const active = this.#active.get(name);
    if (active) {
      this.#active.delete(name);
      active.lease.release();
    }
    this.#entries.delete(name);
    this.#unloads++;
    if (entry.leases > 0) {
      entry.retired = true;
      this.#retired.add(entry);
    } else {
      this.#free(entry);
    }
  }

  /** True when `name` is loaded or loading. */
  has(name: string): boolean {
    return this.#entries.has(name);
  }

  /** Names loaded or loading, least recently used first. */
  names(): string[] {
    return [...this.#entries.keys()];
  }

  /**
   * Replaces the active set: the adapters whose deltas a request without an explicit choice
   * uses, each with its scale (their contributions add, like PEFT's multi-adapter activation).
   * Active adapters are leased by the registry, so they are never evicted. On error the
   * previous active set is kept.
   */
  async setActive(adapters: readonly ActiveAdapter[]): Promise<void> {
    const seen = new Set<string>();
    for (const { name, scale } of adapters) {
      if (seen.has(name)) {
        throw new AdapterError(
          'REGISTRY_DUPLICATE_ACTIVE',
          `Adapter "${name}" appears twice in the active set.`,
          {
            adapter: name,
          },
        );
      }
      if (!Number.isFinite(scale)) {
        throw new AdapterError(
          'REGISTRY_BAD_SCALE',
          `Scale of adapter "${name}" must be a finite number, got ${scale}.`,
          {
            adapter: name,
            scale,
          },
        );
      }
      seen.add(name);
    }
    // Lease every new member first, so a failure changes nothing.
    const leases = new Map<string, AdapterLease<T>>();
    try {
      for (const { name } of adapters) {
        if (!this.#active.has(name)) leases.set(name, await this.acquire(name));
      }
    } catch (e) {
      for (const lease of leases.values()) lease.release();
      throw e;
    }
    const next = new Map<string, { scale: number; lease: AdapterLease<T> }>();
    for (const { name, scale } of adapters) {
      const lease = leases.get(name) ?? this.#active.get(name)!.lease;
      next.set(name, { scale, lease });
    }
    for (const [name, old] of this.#active) {
      if (next.get(name)?.lease !== old.lease) old.lease.release();
    }
    this.#active.clear();
    for (const [name, value] of next) this.#active.set(name, value);
    this.#evictToBudget();
  }

  /** The active set, in the order it was given. */
  getActive(): ActiveAdapter[] {
    return [...this.#active].map(([name, { scale }]) => ({ name, scale }));
  }

  /**
   * Leases every member of the active set for one request (a consistent snapshot even if the
   * active set changes while the request runs).
   */
  async acquireActive(): Promise<Array<AdapterLease<T> & { scale: number }>> {
    const snapshot = this.getActive();
    const leases: Array<AdapterLease<T> & { scale: number }> = [];
    try {
      for (const { name, scale } of snapshot) leases.push({ ...(await this.acquire(name)), scale });
    } catch (e) {
      for (const lease of leases) lease.release();
      throw e;
    }
    return leases;
  }

  stats(): AdapterRegistryStats {
    return {
      hits: this.#hits,
      misses: this.#misses,
      evictions: this.#evictions,
      unloads: this.#unloads,
      loadFailures: this.#loadFailures,
      bytes: this.#bytes,
      peakBytes: this.#peakBytes,
      entries: this.#entries.size,
      leases: this.#leases,
      memoryBudgetBytes: this.#budget,
    };
  }

  async #acquireEntry(name: string): Promise<Entry<T>> {
    let entry = this.#entries.get(name);
    if (entry) {
      this.#hits++;
      this.#touch(entry);
    } else {
      entry = this.#startLoad(name);
    }
    // Reserve before awaiting so that neither eviction nor unload can free it meanwhile.
    entry.leases++;
    this.#leases++;
    try {
      await entry.ready;
    } catch (e) {
      entry.leases--;
      this.#leases--;
      throw e;
    }
    return entry;
  }

  #startLoad(name: string): Entry<T> {
    this.#misses++;
    let resolve!: () => void;
    let reject!: (error: unknown) => void;
    const ready = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const entry: Entry<T> = {
      name,
      state: 'loading',
      ready,
      resolve,
      reject,
      bytes: 0,
      leases: 0,
      pinned: false,
      retired: false,
    };
    this.#entries.set(name, entry);
    this.#runLoader(name).then(
      (loaded) => this.#finishLoad(entry, loaded),
      (error) => this.#failLoad(entry, error),
    );
    return entry;
  }

  #finishLoad(entry: Entry<T>, loaded: LoaderResult<T>): void {
    if (loaded.bytes > this.#budget) {
      this.#failLoad(
        entry,
        new AdapterError(
          'REGISTRY_ADAPTER_TOO_LARGE',
          `Adapter "${entry.name}" needs ${loaded.bytes} bytes, more than the whole memory budget of ${this.#budget} bytes. Raise the budget.`,
          { adapter: entry.name, bytes: loaded.bytes, memoryBudgetBytes: this.#budget },
        ),
      );
      this.#dispose?.(loaded.adapter, entry.name);
      return;
    }
    entry.adapter = loaded.adapter;
    entry.bytes = loaded.bytes;
    entry.state = 'ready';
    this.#addBytes(loaded.bytes);
    entry.resolve();
    // Every loading entry is leased by the acquire that started it, so it is not evicted here.
    this.#evictToBudget();
  }

  async #runLoader(name: string): Promise<LoaderResult<T>> {
    let loaded: LoaderResult<T> | undefined;
    try {
      loaded = await this.#loader(name);
    } catch (e) {
      if (e instanceof AdapterError) throw e;
      throw new AdapterError(
        'REGISTRY_LOAD_FAILED',
        `Loading adapter "${name}" failed: ${(e as Error)?.message ?? String(e)}`,
        { adapter: name },
        { cause: e },
      );
    }
    if (loaded === undefined) {
      throw new AdapterError(
        'REGISTRY_UNKNOWN_ADAPTER',
        `Unknown adapter "${name}": the loader does not know this name.`,
        {
          adapter: name,
        },
      );
    }
    if (!Number.isSafeInteger(loaded.bytes) || loaded.bytes < 0) {
      throw new AdapterError(
        'REGISTRY_LOAD_FAILED',
        `The loader reported ${loaded.bytes} bytes for adapter "${name}"; it must report a non-negative integer.`,
        { adapter: name, bytes: loaded.bytes },
      );
    }
    return loaded;
  }

  #failLoad(entry: Entry<T>, error: unknown): void {
    this.#loadFailures++;
    if (this.#entries.get(entry.name) === entry) this.#entries.delete(entry.name);
    this.#retired.delete(entry);
    entry.reject(error);
  }

  #lease(entry: Entry<T>): AdapterLease<T> {
    let open = true;
    return {
      name: entry.name,
      adapter: entry.adapter as T,
      bytes: entry.bytes,
      release: () => {
        if (!open) {
          throw new AdapterError(
            'REGISTRY_LEASE_RELEASED',
            `The lease on adapter "${entry.name}" was already released.`,
            {
              adapter: entry.name,
            },
          );
        }
        open = false;
        entry.leases--;
        this.#leases--;
        if (entry.leases === 0) {
          if (entry.retired) this.#free(entry);
          else this.#evictToBudget();
        }
      },
    };
  }

  #loaded(name: string, what: string): Entry<T> {
    const entry = this.#entries.get(name);
    if (entry?.state !== 'ready') {
      throw new AdapterError(
        'REGISTRY_NOT_LOADED',
        `Cannot ${what} adapter "${name}": it is not loaded. Load it first (load(name)). Loaded: ${this.#list()}.`,
        { adapter: name },
      );
    }
    return entry;
  }

  #touch(entry: Entry<T>): void {
    this.#entries.delete(entry.name);
    this.#entries.set(entry.name, entry);
  }

  /** Evicts least recently used, unleased, unpinned, loaded adapters until within budget. */
  #evictToBudget(): void {
    if (this.#bytes <= this.#budget) return;
    for (const entry of [...this.#entries.values()]) {
      if (this.#bytes <= this.#budget) return;
      if (entry.state !== 'ready' || entry.leases > 0 || entry.pinned) continue;
      this.#entries.delete(entry.name);
      this.#evictions++;
      this.#free(entry);
    }
  }

  /** Gives up a loaded entry's memory; the entry is already out of the name table. */
  #free(entry: Entry<T>): void {
    this.#retired.delete(entry);
    this.#bytes -= entry.bytes;
    const adapter = entry.adapter as T;
    entry.adapter = undefined;
    this.#dispose?.(adapter, entry.name);
  }

  #addBytes(bytes: number): void {
    this.#bytes += bytes;
    if (this.#bytes > this.#peakBytes) this.#peakBytes = this.#bytes;
  }

  #list(): string {
    return this.#entries.size === 0 ? '(none)' : [...this.#entries.keys()].join(', ');
  }
}
