import { existsSync } from 'node:fs';
import type { Adapter } from '@lora/adapters';
import type { LlamaModel, LlamaModelOptions, SlotAdapter } from '@lora/runtime-onnx';
import type { Command } from 'commander';
import { adapterNotFound } from '../adapter-spec.js';
import { UsageError } from '../errors.js';

/**
 * LoRA adapters for `lora generate`: `--adapter <dir>[:scale]` (repeatable; all of them act on
 * every row, their deltas add) and `--batch <file.jsonl>` (one row per line,
 * `{"prompt": "...", "adapter": "<dir>[:scale]" | ["a", "b:0.5"] | null}`; a row without
 * `adapter` uses the --adapter set, `null` the base model; rows are read and generated in
 * groups, see generate-batch.ts). Rows of one group run in ONE batch: each distinct adapter set
 * gets a slot of the LoRA graph, each row an index (see @lora/runtime-onnx LoraSlots). `--merged`
 * bakes one adapter set into the weights instead (no branch, base speed).
 */
export interface AdapterOptions {
  adapter?: string[];
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
    .option('--merged', 'merge the --adapter set into the weights instead of LoRA branches');
}

/** The adapter set of a row: `dir[:scale]` specs whose deltas add ([] = the base model). */
export type AdapterSet = readonly string[];

/** How a row's adapter set is shown in output: "a:1 + b:0.5", or "base". */
export function adapterSetLabel(set: AdapterSet): string {
  return set.length === 0 ? 'base' : set.join(' + ');
}

/** A key equal for equal sets (same specs, same order). */
export function adapterSetKey(set: AdapterSet): string {
  return set.join('\u0000');
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

/**
 * The adapter files of a run, each loaded once (memory grows with the distinct adapters named,
 * not with the rows). {@link add} checks a set before any row uses it.
 */
export class LoadedAdapters {
  readonly #byPath = new Map<string, Adapter>();

  /** Loads the files of `set` not loaded yet; throws a usage error for a bad spec or file. */
  async add(set: AdapterSet): Promise<void> {
    const rt = await import('@lora/runtime-onnx');
    for (const spec of set) {
      const { path, scale } = parseAdapterSpec(spec);
      if (!Number.isFinite(scale))
        throw new UsageError(`--adapter ${spec}: the scale must be a number.`);
      if (this.#byPath.has(path)) continue;
      const adapter = await loadAdapterFile(path);
      // Saved full modules (modules_to_save) would be silently left out of both paths.
      rt.refuseSavedModules(adapter, path);
      this.#byPath.set(path, adapter);
    }
  }

  /** The slot adapters of a set whose files were {@link add}ed. */
  slotAdapters(set: AdapterSet): SlotAdapter[] {
    return set.map((spec) => {
      const { path, scale } = parseAdapterSpec(spec);
      return { adapter: this.#byPath.get(path)!, scale, name: spec };
    });
  }

  /** The file (as named) holding `module`, for messages. */
  ownerOf(module: string): string | undefined {
    return [...this.#byPath].find(([, a]) => a.modules.has(module))?.[0];
  }
}

/** What `openModel` needs: how to create the model, and the feeds of a batch of rows. */
export interface PreparedAdapters {
  /** Opens the model with LoRA branches (or merged weights). */
  open(dir: string, options: LlamaModelOptions): Promise<LlamaModel>;
  /** Extra feeds for a batch whose rows use these sets (undefined when merged); after `open`. */
  feeds(rowSets: readonly AdapterSet[]): Record<string, import('@lora/core').Tensor> | undefined;
}

/**
 * Builds the model opener for the distinct adapter `sets` (their files already in `loaded`):
 * with `merged`, the one set baked into the weights; otherwise one slot of the LoRA graph per
 * set (slot 0 is the base model), targets and rank covering all of them.
 */
export async function prepareAdapters(
  sets: readonly AdapterSet[],
  loaded: LoadedAdapters,
  merged: boolean,
): Promise<PreparedAdapters> {
  const rt = await import('@lora/runtime-onnx');
  if (merged) {
    const keys = new Set(sets.map(adapterSetKey));
    if (keys.size > 1) {
      throw new UsageError(
        '--merged bakes ONE adapter set into the weights; rows of a --batch file with different adapters need LoRA branches (drop --merged).',
      );
    }
    const set = loaded.slotAdapters(sets[0]);
    return {
      feeds: () => undefined,
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

  // One slot per distinct non-empty set; slot 0 stays the base model.
  const slotOfKey = new Map<string, number>([[adapterSetKey([]), 0]]);
  const slotSets: SlotAdapter[][] = [[]];
  for (const set of sets) {
    const key = adapterSetKey(set);
    if (slotOfKey.has(key)) continue;
    slotOfKey.set(key, slotSets.length);
    slotSets.push(loaded.slotAdapters(set));
  }
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
  let slots: InstanceType<typeof rt.LoraSlots> | undefined;
  return {
    feeds: (rowSets) => slots!.feeds(rowSets.map((s) => slotOfKey.get(adapterSetKey(s))!)),
    open: async (dir, options) => {
      const model = await rt.loadLlama(dir, { ...options, linearHook: hook });
      // Module names the model does not have: the adapter was made for another model.
      const foreign = [...targets].filter((m) => !plan.sites.has(m));
      if (foreign.length > 0) {
        const owner = loaded.ownerOf(foreign[0]) ?? 'an adapter';
        await model.release();
        throw new UsageError(
          `--adapter ${owner} adapts ${foreign.length} module(s) that ${dir} does not have as linear layers (e.g. ${foreign[0]})${plan.sites.size === 0 ? ', and none that it has' : ''}: the adapter was made for another model or architecture. Use an adapter trained on this model.`,
        );
      }
      slots = new rt.LoraSlots(plan);
      for (let s = 1; s < slotSets.length; s++) slots.assign(s, slotSets[s]);
      return model;
    },
  };
}
