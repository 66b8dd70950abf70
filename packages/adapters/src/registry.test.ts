import { describe, expect, it } from 'vitest';
import { AdapterError } from './errors.js';
import { AdapterRegistry, type LoaderResult } from './registry.js';

/** A yield to the event loop, so that other async tasks interleave with the current one. */
const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

interface Fake {
  readonly name: string;
  /** Set when the registry disposes it; a leased adapter must never be disposed. */
  disposed: boolean;
}

/**
 * A loader over a fixed catalogue of sizes, with an await inside (as a file read would have),
 * which records every load and every dispose.
 */
function fakeWorld(sizes: Record<string, number>, options: { delayTicks?: number } = {}) {
  const loads: string[] = [];
  const disposed: string[] = [];
  const loader = async (name: string): Promise<LoaderResult<Fake> | undefined> => {
    for (let i = 0; i < (options.delayTicks ?? 1); i++) await tick();
    if (!(name in sizes)) return undefined;
    loads.push(name);
    return { adapter: { name, disposed: false }, bytes: sizes[name] };
  };
  const dispose = (adapter: Fake, name: string) => {
    expect(adapter.disposed).toBe(false); // never twice
    adapter.disposed = true;
    disposed.push(name);
  };
  return { loads, disposed, loader, dispose };
}

describe('AdapterRegistry', () => {
  it('loads on first acquire (miss), serves later acquires from memory (hit)', async () => {
    const w = fakeWorld({ a: 100 });
    const reg = new AdapterRegistry({ loader: w.loader, dispose: w.dispose });
    const l1 = await reg.acquire('a');
    const l2 = await reg.acquire('a');
    expect(l1.adapter).toBe(l2.adapter);
    expect(l1.adapter.name).toBe('a');
    expect(w.loads).toEqual(['a']);
    expect(reg.stats()).toMatchObject({ hits: 1, misses: 1, bytes: 100, leases: 2, entries: 1 });
    l1.release();
    l2.release();
    expect(reg.stats().leases).toBe(0);
  });

  it('shares one load between concurrent acquires of the same name', async () => {
    const w = fakeWorld({ a: 10 }, { delayTicks: 5 });
    const reg = new AdapterRegistry({ loader: w.loader });
    const leases = await Promise.all(Array.from({ length: 20 }, () => reg.acquire('a')));
    expect(w.loads).toEqual(['a']);
    expect(new Set(leases.map((l) => l.adapter)).size).toBe(1);
    expect(reg.stats()).toMatchObject({ misses: 1, hits: 19, leases: 20 });
    for (const l of leases) l.release();
  });

  it('evicts least recently used first, and only down to the budget', async () => {
    const w = fakeWorld({ a: 40, b: 40, c: 40, d: 40 });
    const reg = new AdapterRegistry({
      loader: w.loader,
      dispose: w.dispose,
      memoryBudgetBytes: 100,
    });
    for (const name of ['a', 'b']) (await reg.acquire(name)).release();
    // Touch a: now b is the least recently used.
    (await reg.acquire('a')).release();
    (await reg.acquire('c')).release(); // 120 > 100: b goes
    expect(w.disposed).toEqual(['b']);
    expect(reg.names()).toEqual(['a', 'c']);
    (await reg.acquire('d')).release(); // a is now the oldest
    expect(w.disposed).toEqual(['b', 'a']);
    expect(reg.names()).toEqual(['c', 'd']);
    expect(reg.stats()).toMatchObject({ evictions: 2, bytes: 80, misses: 4, hits: 1 });
    // An evicted adapter loads again on demand (a miss).
    (await reg.acquire('b')).release();
    expect(w.loads).toEqual(['a', 'b', 'c', 'd', 'b']);
  });

  it('never evicts pinned or leased adapters; only they may exceed the budget', async () => {
    const w = fakeWorld({ a: 60, b: 60, c: 60 });
    const reg = new AdapterRegistry({
      loader: w.loader,
      dispose: w.dispose,
      memoryBudgetBytes: 100,
    });
    await reg.load('a', { pin: true });
    const leaseB = await reg.acquire('b');
    // 120 bytes > 100, but a is pinned and b is leased: nothing can go.
    expect(reg.stats().bytes).toBe(120);
    expect(w.disposed).toEqual([]);
    const leaseC = await reg.acquire('c');
    expect(reg.stats().bytes).toBe(180);
    expect(leaseB.adapter.disposed).toBe(false);
    // Releasing c makes it the only candidate: it goes at once (c is unleased and unpinned).
    leaseC.release();
    expect(w.disposed).toEqual(['c']);
    // Releasing b: a is still pinned, b alone fits with a? 120 > 100, so b goes.
    leaseB.release();
    expect(w.disposed).toEqual(['c', 'b']);
    expect(reg.stats().bytes).toBe(60);
    // Unpinning leaves a within budget: it stays.
    reg.unpin('a');
    expect(reg.names()).toEqual(['a']);
  });

  it('defers unload of a leased adapter until its last release; the name loads afresh meanwhile', async () => {
    const w = fakeWorld({ a: 10 });
    const reg = new AdapterRegistry({ loader: w.loader, dispose: w.dispose });
    const old = await reg.acquire('a');
    reg.unload('a');
    expect(reg.has('a')).toBe(false);
    expect(old.adapter.disposed).toBe(false); // still leased: still alive
    expect(reg.stats().bytes).toBe(10);
    const fresh = await reg.acquire('a');
    expect(fresh.adapter).not.toBe(old.adapter);
    expect(reg.stats().bytes).toBe(20); // both copies are in memory
    old.release();
    expect(old.adapter.disposed).toBe(true);
    expect(fresh.adapter.disposed).toBe(false);
    expect(reg.stats()).toMatchObject({ bytes: 10, unloads: 1 });
    fresh.release();
  });

  it('unload while the adapter is still loading frees it when the waiting leases end', async () => {
    const w = fakeWorld({ a: 10 }, { delayTicks: 3 });
    const reg = new AdapterRegistry({ loader: w.loader, dispose: w.dispose });
    const pending = reg.acquire('a');
    reg.unload('a');
    const lease = await pending;
    expect(lease.adapter.disposed).toBe(false);
    lease.release();
    expect(w.disposed).toEqual(['a']);
    expect(reg.stats().bytes).toBe(0);
  });

  it('reports unknown names, loader failures and misuse with clear errors and keeps nothing', async () => {
    const reg = new AdapterRegistry<Fake>({
      loader: async (name) => {
        await tick();
        if (name === 'broken') throw new Error('disk on fire');
        if (name === 'huge') return { adapter: { name, disposed: false }, bytes: 1000 };
        return undefined;
      },
      memoryBudgetBytes: 100,
    });
    await expect(reg.acquire('nope')).rejects.toMatchObject({ code: 'REGISTRY_UNKNOWN_ADAPTER' });
    const failed = await reg.acquire('broken').catch((e) => e);
    expect(failed).toBeInstanceOf(AdapterError);
    expect(failed.code).toBe('REGISTRY_LOAD_FAILED');
    expect(failed.message).toContain('disk on fire');
    await expect(reg.acquire('huge')).rejects.toMatchObject({ code: 'REGISTRY_ADAPTER_TOO_LARGE' });
    expect(() => reg.unload('nope')).toThrow(
      expect.objectContaining({ code: 'REGISTRY_NOT_LOADED' }),
    );
    expect(() => reg.pin('nope')).toThrow(expect.objectContaining({ code: 'REGISTRY_NOT_LOADED' }));
    expect(reg.stats()).toMatchObject({ entries: 0, bytes: 0, leases: 0, loadFailures: 3 });
    expect(
      () => new AdapterRegistry({ loader: async () => undefined, memoryBudgetBytes: 0 }),
    ).toThrow(expect.objectContaining({ code: 'REGISTRY_BAD_BUDGET' }));
  });

  it('refuses a second release of the same lease', async () => {
    const reg = new AdapterRegistry(fakeWorld({ a: 1 }));
    const lease = await reg.acquire('a');
    lease.release();
    expect(() => lease.release()).toThrow(
      expect.objectContaining({ code: 'REGISTRY_LEASE_RELEASED' }),
    );
    expect(reg.stats().leases).toBe(0);
  });

  it('stays consistent under many concurrent requests with awaits in between', async () => {
    const sizes: Record<string, number> = {};
    for (let i = 0; i < 12; i++) sizes[`ad${i}`] = 10 + i;
    const w = fakeWorld(sizes, { delayTicks: 2 });
    const budget = 60;
    const reg = new AdapterRegistry({
      loader: w.loader,
      dispose: w.dispose,
      memoryBudgetBytes: budget,
    });
    // Deterministic pseudo-random schedule (LCG), so a failure is reproducible.
    let seed = 12345;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const held = new Set<{ adapter: Fake; bytes: number }>();
    let overBudgetWithoutCause = 0;
    const request = async (k: number) => {
      // Staggered starts: a few requests overlap at any time, so eviction has work to do.
      for (let t = 0; t < k / 2; t++) await tick();
      const names = [`ad${rand(12)}`, `ad${rand(12)}`];
      const leases = [];
      for (const name of names) {
        const lease = await reg.acquire(name);
        leases.push(lease);
        held.add(lease);
        for (let t = 0; t < rand(8); t++) await tick();
      }
      for (const lease of leases) {
        // The invariant under test: a leased adapter is alive whatever happened meanwhile.
        expect(lease.adapter.disposed).toBe(false);
        expect(lease.adapter.name).toBe(lease.name);
      }
      // Over budget is allowed only by what is leased right now.
      const leasedBytes = [...held].reduce((s, l) => s + l.bytes, 0);
      if (reg.stats().bytes > budget + leasedBytes) overBudgetWithoutCause++;
      if (k % 7 === 0 && reg.has(names[0])) reg.unload(names[0]);
      for (const lease of leases) {
        await tick();
        held.delete(lease);
        lease.release();
      }
    };
    await Promise.all(Array.from({ length: 200 }, (_, k) => request(k)));
    const stats = reg.stats();
    expect(overBudgetWithoutCause).toBe(0);
    expect(stats.leases).toBe(0);
    expect(stats.bytes).toBeLessThanOrEqual(budget);
    // Bytes in memory equal the sizes of what is still loaded, and every other load was disposed.
    expect(stats.bytes).toBe(reg.names().reduce((s, n) => s + sizes[n], 0));
    expect(w.loads.length - w.disposed.length).toBe(reg.names().length);
    expect(stats.hits + stats.misses).toBe(400);
    expect(stats.evictions).toBeGreaterThan(0);
  });

  it('keeps an active set with scales, leased so it is never evicted', async () => {
    const w = fakeWorld({ a: 50, b: 50, c: 50 });
    const reg = new AdapterRegistry({
      loader: w.loader,
      dispose: w.dispose,
      memoryBudgetBytes: 100,
    });
    await reg.setActive([
      { name: 'a', scale: 1 },
      { name: 'b', scale: 0.5 },
    ]);
    expect(reg.getActive()).toEqual([
      { name: 'a', scale: 1 },
      { name: 'b', scale: 0.5 },
    ]);
    (await reg.acquire('c')).release(); // a and b are active: c itself is evicted
    expect(w.disposed).toEqual(['c']);
    const snapshot = await reg.acquireActive();
    expect(snapshot.map((l) => [l.name, l.scale])).toEqual([
      ['a', 1],
      ['b', 0.5],
    ]);
    // Changing the active set while a request holds its snapshot keeps the snapshot alive.
    await reg.setActive([{ name: 'c', scale: 2 }]);
    expect(snapshot.every((l) => !l.adapter.disposed)).toBe(true);
    for (const l of snapshot) l.release();
    expect(reg.getActive()).toEqual([{ name: 'c', scale: 2 }]);
    expect(reg.stats().bytes).toBeLessThanOrEqual(100);
    await expect(reg.setActive([{ name: 'zzz', scale: 1 }])).rejects.toMatchObject({
      code: 'REGISTRY_UNKNOWN_ADAPTER',
    });
    expect(reg.getActive()).toEqual([{ name: 'c', scale: 2 }]); // unchanged by the failure
    await expect(reg.setActive([{ name: 'c', scale: Number.NaN }])).rejects.toMatchObject({
      code: 'REGISTRY_BAD_SCALE',
    });
  });
});
