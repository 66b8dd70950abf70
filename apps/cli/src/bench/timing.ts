/**
 * Median wall time of `fn` in milliseconds over `repeats` runs after `warmup` runs. Benchmarks
 * report ratios of medians measured in the same process, since absolute times drift on a
 * shared machine.
 */
export async function medianMs(fn: () => unknown, repeats = 5, warmup = 1): Promise<number> {
  for (let i = 0; i < warmup; i++) await fn();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

/** GB/s for `bytes` processed in `ms` milliseconds. */
export function gbPerSecond(bytes: number, ms: number): number {
  return bytes / 1e9 / (ms / 1e3);
}
