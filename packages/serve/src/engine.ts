import type { Tensor } from '@lora/core';
import type {
  GenerationRow,
  LlamaForwardOutput,
  LlamaModel,
  LoraSlots,
  RowEvent,
} from '@lora/runtime-onnx';
import { BatchCache, type CacheRowSource } from './batch-cache.js';
import { ServeError } from './errors.js';

/** One forward pass of the engine, for metrics. */
export interface ForwardStats {
  /** `prefill`: rows joining the batch run their prompts; `decode`: one token for every running row. */
  readonly kind: 'prefill' | 'decode';
  readonly rows: number;
  /** Distinct adapter slots among the rows (slot 0, the base, counts as one). */
  readonly adapterSlots: number;
  readonly ms: number;
}

export interface BatchEngineOptions {
  /** Most rows decoded together. */
  readonly maxBatch: number;
  /** The LoRA weights of the model's graph, when it was built with the LoRA hook. */
  readonly slots?: LoraSlots;
  /** Called after every forward pass. */
  readonly onForward?: (stats: ForwardStats) => void;
}

/** A row handed to the engine; see {@link BatchEngine.submit}. */
export interface SequenceHandle {
  /** Resolves when the row is done (or cancelled); rejects when its forward pass failed. */
  readonly finished: Promise<void>;
  /** Ends the row early (a client went away); it leaves the batch before the next step. */
  cancel(): void;
}

interface Sequence {
  readonly row: GenerationRow;
  readonly slot: number;
  readonly onEvent: (event: RowEvent) => void;
  readonly onAdmit?: () => void;
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
  cancelled: boolean;
}

/**
 * Continuous batching over one {@link LlamaModel}: rows join the running batch between decode
 * steps and leave when done, whatever their adapters. Every decode step is ONE forward pass
 * for all running rows; each row picks its adapter slot through `lora.index`.
 *
 * A joining row is prefilled in its own pass (with the other rows joining at that moment),
 * then its KV cache is packed into the batch's ({@link BatchCache}). Rows are left-padded and
 * masked, with their own position ids, so a row's logits do not depend on which other rows
 * share the batch: greedy answers are those of `generate()` on the row alone.
 */
export class BatchEngine {
  readonly #model: LlamaModel;
  readonly #options: BatchEngineOptions;
  readonly #cache: BatchCache;
  #active: Sequence[] = [];
  #waiting: Sequence[] = [];
  #loop?: Promise<void>;
  /** Called when rows leave the batch (slots may be free again). */
  readonly #idleListeners = new Set<() => void>();

  constructor(model: LlamaModel, options: BatchEngineOptions) {
    if (!Number.isSafeInteger(options.maxBatch) || options.maxBatch < 1) {
      throw new ServeError(
        500,
        'ENGINE_OPTIONS',
        `maxBatch must be a positive integer, got ${options.maxBatch}.`,
      );
    }
    this.#model = model;
    this.#options = options;
    const { numLayers, numKvHeads, headDim } = model.config;
    this.#cache = new BatchCache(numLayers, numKvHeads, headDim);
  }

  /** Rows in the running batch. */
  get running(): number {
    return this.#active.length;
  }

  /** Rows waiting for a place in the batch. */
  get waiting(): number {
    return this.#waiting.length;
  }

  /**
   * Adds a row: it joins the batch at the next step boundary with room. `slot` is its LoRA
   * slot (0 = the base model). `onEvent` receives every sampled token's event, in order, as
   * it is produced; the last one has `finishReason`. `onAdmit` is called when the row's
   * prefill starts (it has left the queue).
   */
  submit(
    row: GenerationRow,
    slot: number,
    onEvent: (event: RowEvent) => void,
    onAdmit?: () => void,
  ): SequenceHandle {
    let seq!: Sequence;
    const finished = new Promise<void>((resolve, reject) => {
      seq = { row, slot, onEvent, onAdmit, resolve, reject, cancelled: false };
    });
    this.#waiting.push(seq);
    this.#kick();
    return {
      finished,
      cancel: () => {
        seq.cancelled = true;
      },
    };
  }

  /** Calls `listener` each time rows leave the batch; returns a function that removes it. */
  onRowsLeft(listener: () => void): () => void {
    this.#idleListeners.add(listener);
    return () => this.#idleListeners.delete(listener);
  }

  /** Resolves when no row is running or waiting. */
  async idle(): Promise<void> {
    while (this.#loop) await this.#loop;
  }

  #kick(): void {
    if (this.#loop) return;
    this.#loop = this.#run().finally(() => {
      this.#loop = undefined;
      if (this.#waiting.length > 0) this.#kick();
    });
  }

  async #run(): Promise<void> {
    while (this.#active.length > 0 || this.#waiting.length > 0) {
      await this.#admit();
      if (this.#active.length > 0) await this.#decode();
      // Let request handlers run (new rows, cancellations) between steps.
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  /** Prefills waiting rows (as many as fit) in one pass and packs them into the batch. */
  async #admit(): Promise<void> {
    const room = this.#options.maxBatch - this.#active.length;
    if (room <= 0 || this.#waiting.length === 0) return;
    const joining = this.#waiting.splice(0, room).filter((s) => {
      if (s.cancelled) s.resolve();
      return !s.cancelled;
    });
    if (joining.length === 0) return;
    for (const s of joining) s.onAdmit?.();
    const prompts = joining.map((s) => s.row.output.promptTokens);
    const L = prompts.reduce((m, p) => Math.max(m, p.length), 0);
    let out: LlamaForwardOutput;
    try {
      out = await this.#forward('prefill', joining, {
        inputIds: prompts.map((p) => [...new Array<number>(L - p.length).fill(0), ...p]),
        attentionMask: prompts.map((p) => [
          ...new Array<number>(L - p.length).fill(0),
          ...new Array<number>(p.length).fill(1),
        ]),
      });
    } catch (e) {
      for (const s of joining) s.reject(e);
      return;
    }
    const logits = rowLogits(out.logits);
    for (const [i, s] of joining.entries()) this.#deliver(s, logits[i]);
    const sources: CacheRowSource[] = [];
    const kept: Sequence[] = [];
    this.#active.forEach((s, i) => {
      sources.push({ cache: this.#cache.past, row: i, length: this.#cache.lengths[i] });
      kept.push(s);
    });
    joining.forEach((s, i) => {
      if (s.row.done || s.cancelled) return;
      sources.push({ cache: out.present, row: i, length: s.row.output.promptTokens.length });
      kept.push(s);
    });
    this.#cache.pack(sources);
    this.#active = kept;
    this.#finishDone(joining);
  }

  /** One token for every running row, in one pass; finished rows leave the batch. */
  async #decode(): Promise<void> {
    const rows = this.#active;
    let out: LlamaForwardOutput;
    try {
      out = await this.#forward('decode', rows, {
        inputIds: rows.map((s) => [s.row.lastToken]),
        attentionMask: this.#cache.mask(1),
        positionIds: this.#cache.lengths.map((n) => [n]),
        past: this.#cache.past,
      });
    } catch (e) {
      for (const s of rows) s.reject(e);
      this.#active = [];
      this.#cache.pack([]);
      this.#notifyLeft();
      return;
    }
    this.#cache.advance(out.present);
    const logits = rowLogits(out.logits);
    rows.forEach((s, i) => {
      if (!s.cancelled) this.#deliver(s, logits[i]);
    });
    if (rows.some((s) => s.row.done || s.cancelled)) {
      const sources: CacheRowSource[] = [];
      const kept: Sequence[] = [];
      rows.forEach((s, i) => {
        if (s.row.done || s.cancelled) return;
        sources.push({ cache: this.#cache.past, row: i, length: this.#cache.lengths[i] });
        kept.push(s);
      });
      this.#cache.pack(sources);
      this.#active = kept;
      this.#finishDone(rows);
    }
  }

  async #forward(
    kind: ForwardStats['kind'],
    rows: readonly Sequence[],
    input: Omit<Parameters<LlamaModel['forward']>[0], 'extraFeeds'>,
  ): Promise<LlamaForwardOutput> {
    const slots = rows.map((s) => s.slot);
    const extraFeeds: Record<string, Tensor> | undefined = this.#options.slots?.feeds(slots);
    const t0 = performance.now();
    const out = await this.#model.forward({ ...input, extraFeeds });
    this.#options.onForward?.({
      kind,
      rows: rows.length,
      adapterSlots: new Set(slots).size,
      ms: performance.now() - t0,
    });
    return out;
  }

  #deliver(s: Sequence, logits: Float32Array): void {
    try {
      s.onEvent(s.row.accept(logits));
    } catch (e) {
      // A listener that throws (a closed socket) ends its own row only.
      s.cancelled = true;
      s.reject(e);
    }
  }

  /** Resolves the rows of `rows` that are done or cancelled (they have left the batch). */
  #finishDone(rows: readonly Sequence[]): void {
    let left = false;
    for (const s of rows) {
      if (s.row.done || s.cancelled) {
        s.resolve();
        left = true;
      }
    }
    if (left) this.#notifyLeft();
  }

  #notifyLeft(): void {
    for (const listener of this.#idleListeners) listener();
  }
}

/** Each row's next-token logits. logits: [B, T, V] (T = 1 for a model built with `logits: 'last'`). */
function rowLogits(logits: Tensor<'f32'>): Float32Array[] {
  const [B, T, V] = logits.shape;
  const rows: Float32Array[] = [];
  for (let b = 0; b < B; b++) rows.push(logits.data.subarray((b * T + T - 1) * V, (b * T + T) * V));
  return rows;
}
