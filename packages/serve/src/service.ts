import { basename, resolve } from 'node:path';
import { type Adapter, AdapterRegistry } from '@lora/adapters';
import { isLoraError } from '@lora/core';
import {
  type BaseQuantOptions,
  createLoraHook,
  type Device,
  type FinishReason,
  GenerationRow,
  LLAMA_LINEARS,
  type LlamaModel,
  LoraSlotCache,
  LoraSlots,
  llamaModuleName,
  loadLlama,
  loadTokenizer,
  modelEosIds,
  parseLlamaConfig,
  readConfigJson,
  type NamedAdapter,
  type ResolvedRowSettings,
  type RowEvent,
  resolveRowSettings,
  type SlotLease,
  type Tokenizer,
} from '@lora/runtime-onnx';
import { AdapterFolder } from './adapter-folder.js';
import { ChatTemplate, type ChatMessage } from './chat-template.js';
import { BatchEngine } from './engine.js';
import { ServeError } from './errors.js';
import { ServeMetrics } from './metrics.js';

/** Limits on what one request may ask; each refusal names the limit. */
export interface ServeLimits {
  /** Largest request body, bytes. Default 1 MiB. */
  readonly bodyBytes: number;
  /** Most prompt tokens per prompt. Default: the model's context, else 4096. */
  readonly promptTokens: number;
  /** Largest `max_tokens`. Default 1024. */
  readonly maxTokens: number;
  /** Generation requests in progress at once (running, queued or loading adapters). Default 64. */
  readonly concurrentRequests: number;
  /** Rows waiting for a place in the batch or an adapter slot. Default 256. */
  readonly queueLength: number;
  /** Prompts in one request (array `prompt`). Default 16. */
  readonly promptsPerRequest: number;
  /** Adapters in one request (the `adapters` extension). Default 4. */
  readonly adaptersPerRequest: number;
  /** Longest wait for an adapter slot, ms. Default 60 000. */
  readonly queueTimeoutMs: number;
}

export const DEFAULT_LIMITS: Omit<ServeLimits, 'promptTokens'> = {
  bodyBytes: 1 << 20,
  maxTokens: 1024,
  concurrentRequests: 64,
  queueLength: 256,
  promptsPerRequest: 16,
  adaptersPerRequest: 4,
  queueTimeoutMs: 60_000,
};

/** Options of {@link CompletionService.open}. */
export interface CompletionServiceOptions {
  /** Model folder (HF layout: config.json, safetensors, tokenizer files). */
  readonly model: string;
  /** Folder of PEFT adapters, one subfolder each (named by the subfolder). */
  readonly adapters?: string;
  /** The base model's id in the API. Default: the model folder's name. */
  readonly servedModelName?: string;
  /** Adapters held at once: adapter slots of the graph and adapters kept in memory. Default 16. */
  readonly maxLoaded?: number;
  /** Memory budget of loaded adapters' weights, bytes (LRU eviction beyond it). Default: none. */
  readonly memoryBudgetBytes?: number;
  /** Adapters loaded at startup and never evicted. */
  readonly preload?: readonly string[];
  /** Most rows decoded together. Default 16. */
  readonly maxBatch?: number;
  /** Slot rank of the LoRA branches. Default: the largest rank among the folder's adapters. */
  readonly maxRank?: number;
  readonly device?: Device;
  /** Quantize the base weights to 4 bits at load (one of @lora/quant's `QUANT_FORMATS`). */
  readonly quant?: BaseQuantOptions['format'];
  readonly limits?: Partial<ServeLimits>;
  /** Warnings at startup (adapter folders that cannot be read). */
  readonly warn?: (message: string) => void;
}

/** The sampling fields of a request, already validated by the HTTP schema. */
export interface CompletionParams {
  readonly model: string;
  /** Prompts (one row each); or `messages` for chat. */
  readonly prompts?: readonly string[];
  readonly messages?: readonly ChatMessage[];
  readonly maxTokens?: number;
  readonly temperature?: number;
  readonly topP?: number;
  readonly seed?: number;
  readonly stop?: readonly string[];
  /** Extension: several adapters with scales (on top of `model` when it names an adapter). */
  readonly adapters?: readonly NamedAdapter[];
}

/** One generated choice. */
export interface CompletionChoice {
  readonly index: number;
  readonly text: string;
  readonly finishReason: 'stop' | 'length';
  readonly promptTokens: number;
  readonly completionTokens: number;
}

/** A model the API lists. */
export interface ServedModel {
  readonly id: string;
  readonly kind: 'base' | 'adapter';
  /** Adapters: loaded in memory now. */
  readonly loaded: boolean;
}

/**
 * Everything behind the HTTP API: the model (with LoRA branches), the adapters folder and
 * its registry (leases, budget, LRU), the adapter slots, the continuous-batching engine and
 * the metrics. `complete()` is one request, from its parameters to its choices.
 */
export class CompletionService {
  readonly modelId: string;
  readonly metrics: ServeMetrics;
  readonly limits: ServeLimits;
  readonly device: 'cpu' | 'cuda';
  draining = false;
  readonly #model: LlamaModel;
  readonly #tokenizer: Tokenizer;
  readonly #eosIds: number[];
  readonly #chat?: ChatTemplate;
  readonly #folder?: AdapterFolder;
  readonly #registry: AdapterRegistry<Adapter>;
  readonly #slotCache?: LoraSlotCache;
  readonly #engine: BatchEngine;
  readonly #maxLoaded: number;
  readonly #pinned: Set<string>;
  #inFlight = 0;
  #adapterLoads = 0;
  #waitingForSlot = 0;
  #evictions = 0;
  readonly #idleWaiters = new Set<() => void>();

  private constructor(fields: {
    modelId: string;
    model: LlamaModel;
    tokenizer: Tokenizer;
    eosIds: number[];
    chat?: ChatTemplate;
    folder?: AdapterFolder;
    registry: AdapterRegistry<Adapter>;
    slots?: LoraSlots;
    maxLoaded: number;
    maxBatch: number;
    limits: ServeLimits;
    pinned: Set<string>;
  }) {
    this.modelId = fields.modelId;
    this.#model = fields.model;
    this.device = fields.model.device;
    this.#tokenizer = fields.tokenizer;
    this.#eosIds = fields.eosIds;
    this.#chat = fields.chat;
    this.#folder = fields.folder;
    this.#registry = fields.registry;
    this.#maxLoaded = fields.maxLoaded;
    this.#pinned = fields.pinned;
    this.limits = fields.limits;
    this.metrics = new ServeMetrics(() => {
      const stats = this.#registry.stats();
      return {
        hits: this.#slotCache?.hits ?? 0,
        loads: stats.misses - stats.loadFailures,
        loadFailures: stats.loadFailures,
        evictions: stats.evictions + this.#evictions,
      };
    });
    if (fields.slots) this.#slotCache = new LoraSlotCache(fields.slots, this.#registry);
    this.#engine = new BatchEngine(this.#model, {
      maxBatch: fields.maxBatch,
      slots: fields.slots,
      onForward: (s) => this.metrics.recordForward(s),
    });
  }

  /** Opens the model and the adapters folder, builds the graph with LoRA branches, preloads. */
  static async open(options: CompletionServiceOptions): Promise<CompletionService> {
    const maxLoaded = options.maxLoaded ?? 16;
    const maxBatch = options.maxBatch ?? 16;
    for (const [name, v] of [
      ['maxLoaded', maxLoaded],
      ['maxBatch', maxBatch],
    ] as const) {
      if (!Number.isSafeInteger(v) || v < 1 || v > 4096) {
        throw new ServeError(
          400,
          'SERVE_OPTIONS',
          `${name} must be an integer in 1..4096, got ${v}.`,
        );
      }
    }
    const tokenizer = await loadTokenizer(options.model);
    const folder = options.adapters ? new AdapterFolder(options.adapters) : undefined;
    const { json, path } = await readConfigJson(options.model);
    const config = parseLlamaConfig(json, path);
    const moduleNames: string[] = [];
    for (let l = 0; l < config.numLayers; l++)
      for (const linear of LLAMA_LINEARS) moduleNames.push(llamaModuleName(l, linear));
    const survey = folder
      ? await folder.survey(moduleNames)
      : { targets: new Set<string>(), rank: 0, adapters: [], broken: [] };
    for (const b of survey.broken) options.warn?.(`adapter ${b.name} is skipped: ${b.reason}`);
    let slots: LoraSlots | undefined;
    let linearHook: ReturnType<typeof createLoraHook>['hook'] | undefined;
    let plan: ReturnType<typeof createLoraHook>['plan'] | undefined;
    if (folder) {
      // Branches on every linear some adapter of the folder targets (all of them when the
      // folder is still empty, so adapters added later can be served).
      const targets = survey.targets.size > 0 ? survey.targets : new Set(moduleNames);
      ({ hook: linearHook, plan } = createLoraHook({
        targets: (m) => targets.has(m),
        slots: maxLoaded + 1,
        rank: options.maxRank ?? Math.max(survey.rank, 1),
      }));
    }
    const model = await loadLlama(options.model, {
      logits: 'last',
      device: options.device ?? 'cpu',
      quant: options.quant,
      linearHook,
      warn: options.warn,
    });
    if (plan && plan.sites.size > 0) slots = new LoraSlots(plan);
    const eosIds = await modelEosIds(options.model, model.config, tokenizer);
    const registry = new AdapterRegistry<Adapter>({
      loader: async (name) => (folder ? folder.load(name) : undefined),
      memoryBudgetBytes: options.memoryBudgetBytes,
    });
    const context = model.config.maxPositionEmbeddings;
    const limits: ServeLimits = {
      ...DEFAULT_LIMITS,
      promptTokens: context ?? 4096,
      ...options.limits,
    };
    const service = new CompletionService({
      modelId: options.servedModelName ?? basename(resolve(options.model)),
      model,
      tokenizer,
      eosIds,
      chat: await ChatTemplate.fromFolder(options.model),
      folder,
      registry,
      slots,
      maxLoaded,
      maxBatch,
      limits,
      pinned: new Set(options.preload ?? []),
    });
    for (const name of options.preload ?? []) await service.loadAdapter(name, { pin: true });
    return service;
  }

  /** Adapter names found in the adapters folder. */
  adapterNames(): string[] {
    return this.#folder?.names() ?? [];
  }

  /** The base model and every adapter of the folder (loaded or not). */
  models(): ServedModel[] {
    const loaded = new Set(this.#registry.names());
    return [
      { id: this.modelId, kind: 'base', loaded: true },
      ...this.adapterNames().map((id) => ({
        id,
        kind: 'adapter' as const,
        loaded: loaded.has(id),
      })),
    ];
  }

  /** Whether the model folder has a chat template. */
  get hasChatTemplate(): boolean {
    return this.#chat !== undefined;
  }

  /** Generation requests in progress. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Adapter loads ({@link loadAdapter}, `POST /v1/adapters`) in progress. */
  get adapterLoadsInFlight(): number {
    return this.#adapterLoads;
  }

  /** Loads an adapter into memory (and checks it fits the graph); `pin` keeps it from eviction. */
  async loadAdapter(name: string, options: { pin?: boolean } = {}): Promise<void> {
    this.#adapterLoads++;
    try {
      await this.#loadAdapter(name, options);
    } finally {
      this.#adapterLoads--;
    }
  }

  async #loadAdapter(name: string, options: { pin?: boolean }): Promise<void> {
    this.#requireAdapters();
    this.#folder!.path(name);
    try {
      await this.#registry.load(name, options);
    } catch (e) {
      throw adapterError(name, e);
    }
    if (options.pin) this.#pinned.add(name);
    // Fill a slot now, so a broken adapter (wrong shapes, targets outside the graph) is reported here.
    const lease = await this.#acquireSlot([{ name }]);
    lease.release();
    this.#trimLoaded();
  }

  /** Forgets a loaded adapter (requests using it finish with their copy). */
  unloadAdapter(name: string): void {
    this.#requireAdapters();
    this.#folder!.path(name);
    if (!this.#registry.has(name)) {
      throw new ServeError(404, 'ADAPTER_NOT_LOADED', `Adapter "${name}" is not loaded.`, {
        adapter: name,
      });
    }
    this.#pinned.delete(name);
    this.#registry.unload(name);
    this.#slotCache?.forget(name);
  }

  /**
   * Runs one request: checks limits, finds the adapters a slot, adds one row per prompt to
   * the running batch and resolves with the choices. `onEvent(choice, event)` streams tokens.
   */
  async complete(
    params: CompletionParams,
    onEvent?: (index: number, event: RowEvent) => void,
    signal?: AbortSignal,
  ): Promise<CompletionChoice[]> {
    if (this.draining) {
      throw new ServeError(
        503,
        'SHUTTING_DOWN',
        'The server is shutting down; retry on another instance.',
      );
    }
    const { limits } = this;
    if (this.#inFlight >= limits.concurrentRequests) {
      throw new ServeError(
        429,
        'TOO_MANY_REQUESTS',
        `Too many concurrent requests: the limit is ${limits.concurrentRequests}. Retry later.`,
        { limit: limits.concurrentRequests },
      );
    }
    this.#inFlight++;
    const accepted = performance.now();
    try {
      return await this.#complete(params, accepted, onEvent, signal);
    } finally {
      this.#inFlight--;
      if (this.#inFlight === 0) for (const w of this.#idleWaiters) w();
    }
  }

  /** Resolves when no request is in progress, or after `timeoutMs`. Returns true when idle. */
  async whenIdle(timeoutMs: number): Promise<boolean> {
    if (this.#inFlight === 0) return true;
    return new Promise((resolvePromise) => {
      const done = (idle: boolean) => {
        clearTimeout(timer);
        this.#idleWaiters.delete(onIdle);
        resolvePromise(idle);
      };
      const onIdle = () => done(true);
      const timer = setTimeout(() => done(false), timeoutMs);
      this.#idleWaiters.add(onIdle);
    });
  }

  /** Frees the model. */
  async close(): Promise<void> {
    await this.#engine.idle();
    await this.#model.release();
  }

  async #complete(
    params: CompletionParams,
    accepted: number,
    onEvent: ((index: number, event: RowEvent) => void) | undefined,
    signal: AbortSignal | undefined,
  ): Promise<CompletionChoice[]> {
    const { limits } = this;
    const adapters = this.#adaptersOf(params);
    // OpenAI's defaults: 16 for completions, up to the limit for chat.
    const maxTokens =
      params.maxTokens ?? (params.messages ? limits.maxTokens : Math.min(16, limits.maxTokens));
    if (maxTokens > limits.maxTokens) {
      throw new ServeError(
        400,
        'LIMIT_MAX_TOKENS',
        `max_tokens ${maxTokens} is above this server's limit of ${limits.maxTokens}.`,
        { param: 'max_tokens', limit: limits.maxTokens },
      );
    }
    let prompts: string[];
    let addSpecialTokens = true;
    if (params.messages) {
      if (!this.#chat) {
        throw new ServeError(
          400,
          'NO_CHAT_TEMPLATE',
          `Model "${this.modelId}" has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja): use /v1/completions.`,
          { param: 'messages' },
        );
      }
      prompts = [this.#chat.render(params.messages)];
      addSpecialTokens = false; // the template writes BOS itself, as apply_chat_template
    } else {
      prompts = [...(params.prompts ?? [])];
    }
    if (prompts.length > limits.promptsPerRequest) {
      throw new ServeError(
        400,
        'LIMIT_PROMPTS',
        `${prompts.length} prompts in one request; the limit is ${limits.promptsPerRequest}.`,
        { param: 'prompt', limit: limits.promptsPerRequest },
      );
    }
    let settings: ResolvedRowSettings;
    let rows: GenerationRow[];
    try {
      settings = resolveRowSettings(this.#tokenizer, {
        maxTokens,
        temperature: params.temperature ?? 1,
        topP: params.topP,
        seed: params.seed,
        stop: params.stop,
        eosIds: this.#eosIds,
        maxSequenceLength: this.#model.config.maxPositionEmbeddings,
        addSpecialTokens,
      });
      rows = prompts.map((p, i) => {
        // A bound before tokenizing: a token is rarely longer than 64 characters.
        if (p.length > limits.promptTokens * 64) throw promptTooLong(i, undefined, limits);
        const row = new GenerationRow(this.#tokenizer, p, settings, i);
        if (row.output.promptTokens.length > limits.promptTokens) {
          throw promptTooLong(i, row.output.promptTokens.length, limits);
        }
        return row;
      });
    } catch (e) {
      if (e instanceof ServeError) throw e;
      if (isLoraError(e)) throw new ServeError(400, e.code, e.message, { ...e.details });
      throw e;
    }
    if (this.#engine.waiting + this.#waitingForSlot + rows.length > limits.queueLength) {
      throw new ServeError(
        503,
        'QUEUE_FULL',
        `The queue is full (limit ${limits.queueLength} waiting rows). Retry later.`,
        { limit: limits.queueLength },
      );
    }
    const lease = await this.#acquireSlot(adapters, signal);
    try {
      this.#trimLoaded();
      let first = true;
      let admitted = false;
      const sinceAccepted = () => (performance.now() - accepted) / 1000;
      const handles = rows.map((row, i) =>
        this.#engine.submit(
          row,
          lease.slot,
          (event) => {
            if (first) {
              first = false;
              this.metrics.firstTokenSeconds.observe(sinceAccepted());
            }
            onEvent?.(i, event);
          },
          () => {
            if (admitted) return;
            admitted = true;
            this.metrics.queueSeconds.observe(sinceAccepted());
          },
        ),
      );
      const cancel = () => {
        for (const h of handles) h.cancel();
      };
      signal?.addEventListener('abort', cancel, { once: true });
      try {
        await Promise.all(handles.map((h) => h.finished));
      } finally {
        signal?.removeEventListener('abort', cancel);
      }
    } finally {
      lease.release();
    }
    const choices = rows.map((row, index) => ({
      index,
      text: row.output.text,
      finishReason: openAiFinish(row.output.finishReason),
      promptTokens: row.output.promptTokens.length,
      completionTokens: row.output.tokens.length,
    }));
    for (const c of choices) {
      this.metrics.promptTokens.inc(c.promptTokens);
      this.metrics.generatedTokens.inc(c.completionTokens);
    }
    return choices;
  }

  /** The adapter set of a request: `model` (base or an adapter) plus the `adapters` extension. */
  #adaptersOf(params: CompletionParams): NamedAdapter[] {
    const set: NamedAdapter[] = [];
    if (params.model !== this.modelId) {
      if (!this.#folder || !this.adapterNames().includes(params.model)) {
        if (this.#folder) this.#folder.path(params.model); // 400 for unsafe names
        throw new ServeError(
          404,
          'MODEL_NOT_FOUND',
          `The model "${params.model}" does not exist: use "${this.modelId}" or an adapter name (GET /v1/models).`,
          { param: 'model' },
        );
      }
      set.push({ name: params.model, scale: 1 });
    }
    for (const a of params.adapters ?? []) {
      this.#requireAdapters();
      this.#folder!.path(a.name);
      set.push({ name: a.name, scale: a.scale ?? 1 });
    }
    if (set.length > this.limits.adaptersPerRequest) {
      throw new ServeError(
        400,
        'LIMIT_ADAPTERS',
        `${set.length} adapters on one request; the limit is ${this.limits.adaptersPerRequest}.`,
        { param: 'adapters', limit: this.limits.adaptersPerRequest },
      );
    }
    return set;
  }

  /** A slot for `adapters`, waiting (bounded) while every slot is in use by running requests. */
  async #acquireSlot(adapters: readonly NamedAdapter[], signal?: AbortSignal): Promise<SlotLease> {
    if (adapters.length === 0 || !this.#slotCache) {
      if (adapters.length > 0) this.#requireAdapters();
      return { slot: 0, release: () => {} };
    }
    const deadline = performance.now() + this.limits.queueTimeoutMs;
    this.#waitingForSlot++;
    try {
      for (;;) {
        try {
          return await this.#slotCache.acquire(adapters);
        } catch (e) {
          if (!(isLoraError(e) && e.code === 'LORA_SLOTS_BUSY')) throw adapterError(adapters, e);
        }
        const left = deadline - performance.now();
        if (left <= 0 || signal?.aborted) {
          throw new ServeError(
            503,
            'SLOTS_BUSY',
            `Every adapter slot (--max-loaded ${this.#maxLoaded}) stayed in use by running requests for ${this.limits.queueTimeoutMs} ms. Retry later.`,
            { limit: this.#maxLoaded },
          );
        }
        await new Promise<void>((resolvePromise) => {
          const timer = setTimeout(() => stop(), Math.min(left, 1000));
          const off = this.#engine.onRowsLeft(() => stop());
          const stop = () => {
            clearTimeout(timer);
            off();
            resolvePromise();
          };
        });
      }
    } finally {
      this.#waitingForSlot--;
    }
  }

  /** Keeps at most `maxLoaded` adapters in memory: unloads the least recently used unpinned ones. */
  #trimLoaded(): void {
    const names = this.#registry.names();
    let excess = names.length - this.#maxLoaded;
    for (const name of names) {
      if (excess <= 0) break;
      if (this.#pinned.has(name)) continue;
      // Safe while a request uses it: the registry frees its memory when the last lease ends,
      // and the adapter's slot keeps its copy of the factors.
      this.#registry.unload(name);
      this.#evictions++;
      excess--;
    }
  }

  #requireAdapters(): void {
    if (!this.#folder || !this.#slotCache) {
      throw new ServeError(
        400,
        'NO_ADAPTERS',
        'This server has no adapters folder (start it with --adapters <folder>).',
      );
    }
  }
}

function promptTooLong(index: number, tokens: number | undefined, limits: ServeLimits): ServeError {
  return new ServeError(
    400,
    'LIMIT_PROMPT_TOKENS',
    `prompt ${index} is ${tokens === undefined ? 'far' : `${tokens} tokens,`} over this server's limit of ${limits.promptTokens} prompt tokens.`,
    { param: 'prompt', limit: limits.promptTokens },
  );
}

function openAiFinish(reason: FinishReason): 'stop' | 'length' {
  return reason === 'length' ? 'length' : 'stop';
}

/** An adapter that cannot be used: a 4xx naming the adapter and the problem. */
function adapterError(adapters: string | readonly NamedAdapter[], e: unknown): Error {
  if (e instanceof ServeError) return e;
  const names = typeof adapters === 'string' ? adapters : adapters.map((a) => a.name).join(' + ');
  if (isLoraError(e)) {
    if (e.code === 'REGISTRY_UNKNOWN_ADAPTER') {
      return new ServeError(404, 'ADAPTER_NOT_FOUND', `Adapter "${names}" does not exist.`);
    }
    const cause = (e as Error & { cause?: unknown }).cause;
    const detail =
      cause instanceof Error && !e.message.includes(cause.message) ? ` (${cause.message})` : '';
    return new ServeError(
      400,
      'ADAPTER_UNUSABLE',
      `Adapter "${names}" cannot be used: ${e.message}${detail}`,
      { adapter: names, cause: e.code },
    );
  }
  return e as Error;
}
