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

/**
 * Median wall time and median CPU time (user + system, all threads of the process: the file
 * system's thread pool included) of `fn`, in milliseconds. On a machine shared with other work
 * the CPU time is the steadier measure of a CPU- or memory-bound step.
 */
export async function medianTimes(
  fn: () => unknown,
  repeats = 5,
  warmup = 1,
): Promise<{ wallMs: number; cpuMs: number }> {
  for (let i = 0; i < warmup; i++) await fn();
  const wall: number[] = [];
  const cpu: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const c0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    await fn();
    wall.push(Number(process.hrtime.bigint() - t0) / 1e6);
    const c = process.cpuUsage(c0);
    cpu.push((c.user + c.system) / 1e3);
  }
  const median = (a: number[]) => a.sort((x, y) => x - y)[Math.floor(a.length / 2)];
  return { wallMs: median(wall), cpuMs: median(cpu) };
}

/** GB/s for `bytes` processed in `ms` milliseconds. */
export function gbPerSecond(bytes: number, ms: number): number {
  return bytes / 1e9 / (ms / 1e3);
}
