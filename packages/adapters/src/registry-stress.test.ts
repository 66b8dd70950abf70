import { describe, expect, it } from 'vitest';
import { AdapterRegistry, type LoaderResult } from './registry.js';

/** A yield to the event loop, so that other async tasks interleave with the current one. */
const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

interface Fake {
  readonly name: string;
  readonly bytes: number;
  /** Leases the test holds on this very object. */
  leased: number;
  disposed: boolean;
}

/**
 * Thousands of concurrent load / acquire-use-release / unload / pin / active-set operations,
 * with slow and failing loads, on a registry with a small budget. Checked throughout: a leased
 * adapter is never disposed, no adapter is disposed twice, memory above the budget is only ever
 * what leases and pins hold; and at the end every load was disposed exactly once.
 */
describe('AdapterRegistry under thousands of concurrent operations', () => {
  it('never frees an adapter in use and never exceeds its budget without a lease or pin', async () => {
    const NAMES = 16;
    const OPERATIONS = 4000;
    const sizes = Array.from({ length: NAMES }, (_, i) => 20 + ((i * 37) % 60));
    const budget = 200;
    let seed = 2024;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const loaded: Fake[] = [];
    const violations: string[] = [];
    const loader = async (name: string): Promise<LoaderResult<Fake> | undefined> => {
      for (let t = rand(4); t > 0; t--) await tick();
      const i = Number(name.slice(2));
      if (!(i >= 0 && i < NAMES)) return undefined; // unknown name
      if (rand(25) === 0) throw new Error('disk hiccup'); // a failing load
      const a: Fake = { name, bytes: sizes[i], leased: 0, disposed: false };
      loaded.push(a);
      return { adapter: a, bytes: a.bytes };
    };
    const reg = new AdapterRegistry<Fake>({
      loader,
      memoryBudgetBytes: budget,
      dispose: (a) => {
        if (a.disposed) violations.push(`${a.name} disposed twice`);
        if (a.leased > 0) violations.push(`${a.name} disposed while leased ${a.leased} time(s)`);
        a.disposed = true;
      },
    });
    const pinned = new Set<string>();
    const check = () => {
      // Above the budget only by what is held: leased objects (by the test or the active set) and pins.
      const held = new Set<Fake>(loaded.filter((a) => !a.disposed && a.leased > 0));
      let heldBytes = 0;
      for (const a of held) heldBytes += a.bytes;
      for (const n of pinned) heldBytes += sizes[Number(n.slice(2))];
      for (const { name } of reg.getActive()) heldBytes += sizes[Number(name.slice(2))];
      const inFlight = reg.stats().leases; // leases taken by acquires still waiting for a load
      const bound = budget + heldBytes + inFlight * Math.max(...sizes);
      if (reg.stats().bytes > bound) violations.push(`bytes ${reg.stats().bytes} > ${bound}`);
    };
    let failures = 0;
    const operation = async (k: number) => {
      for (let t = rand(k % 50); t > 0; t--) await tick();
      const name = `ad${rand(NAMES + 1)}`; // one name in 17 is unknown
      const kind = rand(100);
      try {
        if (kind < 60) {
          const lease = await reg.acquire(name);
          lease.adapter.leased++;
          for (let t = rand(6); t > 0; t--) {
            await tick();
            if (lease.adapter.disposed) violations.push(`${name} used after dispose`);
          }
          lease.adapter.leased--;
          lease.release();
        } else if (kind < 72) {
          const pin = rand(4) === 0 && !pinned.has(name);
          await reg.load(name, { pin });
          if (pin) {
            pinned.add(name);
            for (let t = rand(6); t > 0; t--) await tick();
            if (reg.has(name)) reg.unpin(name);
            pinned.delete(name);
          }
        } else if (kind < 90) {
          if (reg.has(name) && !pinned.has(name)) reg.unload(name);
        } else if (kind < 95) {
          await reg.setActive(rand(2) ? [{ name, scale: 0.5 }] : []);
        } else {
          const leases = await reg.acquireActive();
          for (const l of leases)
            if (l.adapter.disposed) violations.push('active adapter disposed');
          for (const l of leases) l.release();
        }
      } catch (e) {
        failures++;
        const code = (e as { code?: string }).code;
        if (
          !['REGISTRY_UNKNOWN_ADAPTER', 'REGISTRY_LOAD_FAILED', 'REGISTRY_NOT_LOADED'].includes(
            code!,
          )
        )
          violations.push(`unexpected error ${code}: ${(e as Error).message}`);
      }
      check();
    };
    await Promise.all(Array.from({ length: OPERATIONS }, (_, k) => operation(k)));
    await reg.setActive([]);
    expect(violations).toEqual([]);
    expect(reg.stats().leases).toBe(0);
    expect(reg.stats().bytes).toBeLessThanOrEqual(budget);
    for (const n of reg.names()) reg.unload(n);
    expect(reg.stats().bytes).toBe(0);
    expect(loaded.every((a) => a.disposed)).toBe(true); // each load freed exactly once
    expect(failures).toBeGreaterThan(0); // failing and unknown loads were exercised
    expect(reg.stats().evictions).toBeGreaterThan(0);
  });
});
