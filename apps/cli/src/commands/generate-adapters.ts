import { existsSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import type { Adapter } from '@lora/adapters';
import type { LlamaModel, LlamaModelOptions, SlotAdapter } from '@lora/runtime-onnx';
import type { Command } from 'commander';
import { adapterNotFound } from '../adapter-spec.js';
import { UsageError } from '../errors.js';

/**
 * LoRA adapters for `lora generate`: `--adapter <dir>[:scale]` (repeatable; all of them act on
 * every row, their deltas add) and `--batch <file.jsonl>` (one row per line,
 * `{"prompt": "...", "adapter": "<dir>[:scale]" | ["a", "b:0.5"] | null}`; a row without
 * `adapter` uses the --adapter set, `null` the base model). All rows run in ONE batch: each
 * distinct adapter set gets a slot of the LoRA graph, each row an index (see @lora/runtime-onnx
 * LoraSlots). `--merged` bakes the --adapter set into the weights instead (no branch, base speed).
 */
export interface AdapterOptions {
  adapter?: string[];
  batch?: string;
  merged?: boolean;
}

/** Adds the flags (called by `registerGenerate`). */
export function addAdapterOptions(command: Command): Command {
  return command
    .option(
      '--adapter <dir[:scale]>',
      'LoRA adapter (PEFT folder or .onnx_adapter file), optional scale; repeatable: deltas add',
      (value: string, previous: string[] | undefined) => [...(previous ?? []), value],
    )
    .option(
      '--batch <file.jsonl>',
      'generate for every row {"prompt", "adapter"} of a JSONL file, all in one batch (per-row adapters)',
    )
    .option('--merged', 'merge the --adapter set into the weights instead of LoRA branches');
}

/** One batch row: its prompt and the adapter set it uses ([] = base). */
export interface BatchRow {
  prompt: string;
  adapters: string[];
}

/** Reads a `--batch` file; rows without `adapter` use `defaults`. */
/**
 * Rows of one `--batch` file, all generated together in one batch (one KV cache each): more
 * would take gigabytes before the first token. Split larger files.
 */
export const MAX_BATCH_ROWS = 256;
/** Size of a `--batch` file read at once (checked before reading). */
export const MAX_BATCH_BYTES = 64 * 2 ** 20;

export async function readBatchFile(
  path: string,
  defaults: readonly string[],
): Promise<BatchRow[]> {
  if (!existsSync(path)) throw new UsageError(`--batch ${path} does not exist.`);
  const { size } = await stat(path);
  if (size > MAX_BATCH_BYTES) {
    throw new UsageError(
      `--batch ${path} is ${size} bytes, above the limit of ${MAX_BATCH_BYTES} (64 MiB) for one batch. Split it into files of at most ${MAX_BATCH_ROWS} rows.`,
    );
  }
  const rows: BatchRow[] = [];
  const lines = (await readFile(path, 'utf8')).split('\n');
  for (const [i, line] of lines.entries()) {
    if (line.trim() === '') continue;
    if (rows.length === MAX_BATCH_ROWS) {
      throw new UsageError(
        `--batch ${path} has more than ${MAX_BATCH_ROWS} rows (the limit: all rows are generated together, one KV cache each). Split it into files of at most ${MAX_BATCH_ROWS} rows.`,
      );
    }
    const where = `${path}:${i + 1}`;
    let row: { prompt?: unknown; adapter?: unknown };
    try {
      row = JSON.parse(line);
    } catch (e) {
      throw new UsageError(`${where}: not valid JSON (${(e as Error).message}).`);
    }
    if (typeof row !== 'object' || row === null || typeof row.prompt !== 'string') {
      throw new UsageError(
        `${where}: each line needs {"prompt": "<text>"} (and optionally "adapter").`,
      );
    }
    const a = row.adapter;
    let adapters: string[];
    if (a === undefined) adapters = [...defaults];
    else if (a === null) adapters = [];
    else if (typeof a === 'string') adapters = [a];
    else if (Array.isArray(a) && a.every((x) => typeof x === 'string')) adapters = a as string[];
    else
      throw new UsageError(`${where}: "adapter" must be "<dir>[:scale]", a list of them, or null.`);
    rows.push({ prompt: row.prompt, adapters });
  }
  if (rows.length === 0) throw new UsageError(`--batch ${path} has no rows.`);
  return rows;
}

/** `dir[:scale]` -> path and scale (a trailing `:<number>` is the scale). */
export function parseAdapterSpec(spec: string): { path: string; scale: number } {
  const m = /^(.*):([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)$/i.exec(spec);
  if (m && m[1] !== '') return { path: m[1], scale: Number(m[2]) };
  return { path: spec, scale: 1 };
}

async function loadAdapterFile(path: string): Promise<Adapter> {
  if (!existsSync(path)) throw adapterNotFound(path);
  const adapters = await import('@lora/adapters');
  if (path.endsWith('.onnx_adapter')) return adapters.loadOnnxAdapter(path);
  return (await adapters.loadPeftAdapter(path)).adapter;
}

/** Loads `dir[:scale]` specs (each file once) as slot adapters, e.g. for merging. */
export async function loadAdapterSet(specs: readonly string[]): Promise<SlotAdapter[]> {
  const out: SlotAdapter[] = [];
  for (const spec of specs) {
    const { path, scale } = parseAdapterSpec(spec);
    out.push({ adapter: await loadAdapterFile(path), scale, name: spec });
  }
  return out;
}

/** What `openModel` needs: how to create the model, and the feeds of a batch of rows. */
export interface PreparedAdapters {
  /** Opens the model with LoRA branches (or merged weights). */
  open(dir: string, options: LlamaModelOptions): Promise<LlamaModel>;
  /** Extra feeds for a batch of these rows (undefined when merged). */
  feeds?: Record<string, import('@lora/core').Tensor>;
  /** Short description per row for output, e.g. "a:1 + b:0.5" or "base". */
  rowLabels: string[];
}

/**
 * Loads every adapter named by the rows (each file once), assigns one slot per distinct adapter
 * set and returns the model opener and the batch feeds. `rows[i].adapters` lists specs.
 */
export async function prepareAdapters(
  rows: readonly BatchRow[],
  merged: boolean,
): Promise<PreparedAdapters> {
  const rt = await import('@lora/runtime-onnx');
  const loaded = new Map<string, Adapter>();
  for (const row of rows) {
    for (const spec of row.adapters) {
      const { path, scale } = parseAdapterSpec(spec);
      if (!Number.isFinite(scale))
        throw new UsageError(`--adapter ${spec}: the scale must be a number.`);
      if (!loaded.has(path)) loaded.set(path, await loadAdapterFile(path));
    }
  }
  // Saved full modules (modules_to_save) would be silently left out of both paths.
  for (const [path, adapter] of loaded) rt.refuseSavedModules(adapter, path);
  const setOf = (row: BatchRow): SlotAdapter[] =>
    row.adapters.map((spec) => {
      const { path, scale } = parseAdapterSpec(spec);
      return { adapter: loaded.get(path)!, scale, name: spec };
    });
  const rowLabels = rows.map((r) => (r.adapters.length === 0 ? 'base' : r.adapters.join(' + ')));

  if (merged) {
    const sets = new Set(rows.map((r) => r.adapters.join('\u0000')));
    if (sets.size > 1) {
      throw new UsageError(
        '--merged bakes ONE adapter set into the weights; rows of a --batch file with different adapters need LoRA branches (drop --merged).',
      );
    }
    const set = setOf(rows[0]);
    return {
      rowLabels,
      open: async (dir, options) => {
        const { config, source } = await rt.openLlamaFolder(dir);
        try {
          return await rt.LlamaModel.create(config, rt.mergedWeights(source, set), options);
        } finally {
          await source.close();
        }
      },
    };
  }

  // One slot per distinct adapter set; slot 0 stays the base model.
  const slotOfKey = new Map<string, number>();
  const slotSets: SlotAdapter[][] = [[]];
  const rowSlots = rows.map((row) => {
    if (row.adapters.length === 0) return 0;
    const key = row.adapters.join('\u0000');
    let slot = slotOfKey.get(key);
    if (slot === undefined) {
      slot = slotSets.length;
      slotOfKey.set(key, slot);
      slotSets.push(setOf(row));
    }
    return slot;
  });
  const targets = new Set<string>();
  let rank = 1;
  for (const set of slotSets) {
    const perModule = new Map<string, number>();
    for (const { adapter } of set) {
      for (const [module, m] of adapter.modules) {
        targets.add(module);
        perModule.set(module, (perModule.get(module) ?? 0) + m.A.shape[0]);
      }
    }
    for (const r of perModule.values()) rank = Math.max(rank, r);
  }
  const { hook, plan } = rt.createLoraHook({
    targets: (m) => targets.has(m),
    slots: Math.max(2, slotSets.length),
    rank,
  });
  let feeds: PreparedAdapters['feeds'];
  const prepared: PreparedAdapters = {
    rowLabels,
    open: async (dir, options) => {
      const model = await rt.loadLlama(dir, { ...options, linearHook: hook });
      // Module names the model does not have: the adapter was made for another model.
      const foreign = [...targets].filter((m) => !plan.sites.has(m));
      if (foreign.length > 0) {
        const owner = [...loaded].find(([, a]) => a.modules.has(foreign[0]))?.[0] ?? 'an adapter';
        await model.release();
        throw new UsageError(
          `--adapter ${owner} adapts ${foreign.length} module(s) that ${dir} does not have as linear layers (e.g. ${foreign[0]})${plan.sites.size === 0 ? ', and none that it has' : ''}: the adapter was made for another model or architecture. Use an adapter trained on this model.`,
        );
      }
      const slots = new rt.LoraSlots(plan);
      for (let s = 1; s < slotSets.length; s++) slots.assign(s, slotSets[s]);
      feeds = slots.feeds(rowSlots);
      prepared.feeds = feeds;
      return model;
    },
  };
  return prepared;
}
