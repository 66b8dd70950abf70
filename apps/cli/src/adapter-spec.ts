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
    if (!existsSync(s.dir)) throw new UsageError(`adapter folder ${s.dir} does not exist.`);
    const loaded = await loadPeftAdapter(s.dir);
    warnings.push(...loaded.warnings);
    sources.push({ adapter: loaded.adapter, weight: s.weight, label: s.dir });
  }
  return { sources, warnings };
}
