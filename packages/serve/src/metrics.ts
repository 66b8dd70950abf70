import { Counter, Histogram, Registry } from 'prom-client';
import type { ForwardStats } from './engine.js';

/** Counters that live elsewhere (adapter registry, slot cache), read at scrape time. */
export interface AdapterCacheCounters {
  hits: number;
  loads: number;
  loadFailures: number;
  evictions: number;
}

const LATENCY_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/**
 * The server's Prometheus metrics (prom-client, one registry per server so that several
 * servers in one process do not mix): requests, tokens, batch sizes, queue time, adapter
 * cache hits / loads / evictions, latency histograms.
 */
export class ServeMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<'endpoint' | 'status'>;
  readonly promptTokens: Counter;
  readonly generatedTokens: Counter;
  readonly forwardPasses: Counter<'kind'>;
  readonly forwardRows: Counter<'kind'>;
  readonly batchRows: Histogram<'kind'>;
  readonly batchAdapters: Histogram<'kind'>;
  readonly forwardSeconds: Histogram<'kind'>;
  readonly queueSeconds: Histogram;
  readonly requestSeconds: Histogram<'endpoint'>;
  readonly firstTokenSeconds: Histogram;

  constructor(adapterCache: () => AdapterCacheCounters) {
    const registers = [this.registry];
    this.requests = new Counter({
      name: 'lora_requests_total',
      help: 'HTTP requests answered, by endpoint and status code',
      labelNames: ['endpoint', 'status'],
      registers,
    });
    this.promptTokens = new Counter({
      name: 'lora_prompt_tokens_total',
      help: 'Prompt tokens of completed requests',
      registers,
    });
    this.generatedTokens = new Counter({
      name: 'lora_generated_tokens_total',
      help: 'Tokens generated (EOS not counted)',
      registers,
    });
    this.forwardPasses = new Counter({
      name: 'lora_forward_passes_total',
      help: 'Forward passes of the model: prefill (rows joining) and decode (one token for every running row)',
      labelNames: ['kind'],
      registers,
    });
    this.forwardRows = new Counter({
      name: 'lora_forward_rows_total',
      help: 'Rows over all forward passes (rows / passes = mean batch size)',
      labelNames: ['kind'],
      registers,
    });
    const sizeBuckets = [1, 2, 4, 8, 16, 32, 64];
    this.batchRows = new Histogram({
      name: 'lora_batch_rows',
      help: 'Rows per forward pass',
      labelNames: ['kind'],
      buckets: sizeBuckets,
      registers,
    });
    this.batchAdapters = new Histogram({
      name: 'lora_batch_adapter_slots',
      help: 'Distinct adapter slots (the base counts as one) per forward pass',
      labelNames: ['kind'],
      buckets: sizeBuckets,
      registers,
    });
    this.forwardSeconds = new Histogram({
      name: 'lora_forward_seconds',
      help: 'Duration of one forward pass',
      labelNames: ['kind'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    this.queueSeconds = new Histogram({
      name: 'lora_queue_seconds',
      help: 'Time from a request being accepted (limits checked) to its prefill: adapter slot wait plus batch queue',
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.requestSeconds = new Histogram({
      name: 'lora_request_seconds',
      help: 'Latency of generation requests, to the last token',
      labelNames: ['endpoint'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.firstTokenSeconds = new Histogram({
      name: 'lora_time_to_first_token_seconds',
      help: 'Time from a request being accepted to its first token',
      buckets: LATENCY_BUCKETS,
      registers,
    });
    const fromCache = (name: string, help: string, pick: (c: AdapterCacheCounters) => number) =>
      new Counter({
        name,
        help,
        registers,
        collect() {
          this.reset();
          this.inc(pick(adapterCache()));
        },
      });
    fromCache(
      'lora_adapter_cache_hits_total',
      'Requests whose adapter set was already in a slot',
      (c) => c.hits,
    );
    fromCache(
      'lora_adapter_loads_total',
      'Adapters loaded from the adapters folder',
      (c) => c.loads,
    );
    fromCache(
      'lora_adapter_load_failures_total',
      'Adapter loads that failed',
      (c) => c.loadFailures,
    );
    fromCache(
      'lora_adapter_evictions_total',
      'Adapters evicted from memory (LRU, not in use)',
      (c) => c.evictions,
    );
  }

  /** Records one forward pass of the engine. */
  recordForward(stats: ForwardStats): void {
    const labels = { kind: stats.kind };
    this.forwardPasses.inc(labels);
    this.forwardRows.inc(labels, stats.rows);
    this.batchRows.observe(labels, stats.rows);
    this.batchAdapters.observe(labels, stats.adapterSlots);
    this.forwardSeconds.observe(labels, stats.ms / 1000);
  }

  /** The Prometheus text exposition. */
  async text(): Promise<string> {
    return this.registry.metrics();
  }
}
