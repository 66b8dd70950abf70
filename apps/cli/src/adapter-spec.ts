import { existsSync } from 'node:fs';
import { type AdapterSource, loadPeftAdapter } from '@lora/adapters';
import { UsageError } from './errors.js';

/** `--adapter <dir>[:weight]`: a folder and an optional weight after the last colon. */
export interface AdapterSpec {
  readonly dir: string;
  readonly weight?: number;
}

/** Parses `<dir>[:weight]`; a colon followed by something that is not a number belongs to the path. */
export function parseAdapterSpec(value: string): AdapterSpec {
  const m = /^(.*):([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)$/i.exec(value);
  if (m && m[1] !== '') return { dir: m[1], weight: Number(m[2]) };
  return { dir: value };
}

/**
 * The error for an `--adapter` value naming nothing on disk. When the part before the last colon
 * exists, the value was meant as `<dir>:<weight>` with a weight that is not a number: say so.
 */
export function adapterNotFound(value: string): UsageError {
  const colon = value.lastIndexOf(':');
  if (colon > 0 && existsSync(value.slice(0, colon))) {
    return new UsageError(
      `--adapter ${value}: "${value.slice(colon + 1)}" after the colon is not a number. Write <dir>:<weight> with a numeric weight, e.g. ${value.slice(0, colon)}:0.5.`,
    );
  }
  return new UsageError(`--adapter ${value} does not exist.`);
}

/** Commander collector for a repeatable `--adapter`. */
export function collectAdapter(value: string, previous: AdapterSpec[] = []): AdapterSpec[] {
  return [...previous, parseAdapterSpec(value)];
}

/** Loads every adapter folder; returns the sources and the loaders' warnings. */
export async function loadAdapters(
  specs: readonly AdapterSpec[] | undefined,
): Promise<{ sources: AdapterSource[]; warnings: string[] }> {
  if (!specs || specs.length === 0)
    throw new UsageError('give at least one --adapter <dir>[:weight].');
  const sources: AdapterSource[] = [];
  const warnings: string[] = [];
  for (const s of specs) {
    if (!existsSync(s.dir)) throw adapterNotFound(s.dir);
    const loaded = await loadPeftAdapter(s.dir);
    warnings.push(...loaded.warnings);
    sources.push({ adapter: loaded.adapter, weight: s.weight, label: s.dir });
  }
  return { sources, warnings };
}
