import type { QuantFormat } from '@lora/quant';
import type { Device } from '@lora/runtime-onnx';
import type { Command } from 'commander';
import { UsageError } from '../errors.js';
import { resolveModelOrBundled } from '../model-source.js';
import { formatBytes, parsePositiveInt } from '../output.js';
import { parseQuantFlag, QUANT_FORMAT_LIST } from '../quant-formats.js';
import { parseSize } from './plan.js';

const DEVICES: readonly Device[] = ['cpu', 'cuda', 'auto'];

/** Parsed flags of `lora serve`. */
export interface ServeCommandOptions {
  model?: string;
  adapters?: string;
  servedModelName?: string;
  host: string;
  port: number;
  maxLoaded: number;
  memoryBudget?: number;
  preload?: string[];
  apiKey?: string;
  maxBatch: number;
  maxRank?: number;
  maxTokens?: number;
  maxPromptTokens?: number;
  maxConcurrent?: number;
  maxQueue?: number;
  device: Device;
  quant?: QuantFormat;
}

/** How long in-flight requests may run after SIGTERM / SIGINT before connections are closed. */
const GRACE_MS = 10_000;

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description(
      'OpenAI-compatible HTTP server: one base model, an adapter per request (batched together), adapters loaded and evicted at run time.',
    )
    .option('--model <dir>', 'model folder: config.json, model.safetensors, tokenizer files')
    .option(
      '--adapters <folder>',
      'folder of PEFT adapters, one subfolder each (its name is the model name)',
    )
    .option(
      '--served-model-name <name>',
      "the base model's id in the API (default: the folder's name)",
    )
    .option(
      '--host <host>',
      'address to listen on (loopback unless you say otherwise)',
      '127.0.0.1',
    )
    .option('--port <n>', 'port (0 picks a free one)', parsePort, 8080)
    .option(
      '--max-loaded <n>',
      'adapters held at once (graph slots and adapters in memory)',
      parsePositiveInt('max-loaded'),
      16,
    )
    .option(
      '--memory-budget <size>',
      "memory for loaded adapters' weights, e.g. 2GB (LRU eviction)",
      (v: string) => parseSize(v, 'memory-budget'),
    )
    .option('--preload <a,b>', 'adapters to load at startup and never evict', splitList)
    .option('--api-key <key>', 'require Authorization: Bearer <key> (all endpoints but /health)')
    .option('--max-batch <n>', 'most requests decoded together', parsePositiveInt('max-batch'), 16)
    .option(
      '--max-rank <r>',
      'LoRA slot rank (default: the largest rank in --adapters)',
      parsePositiveInt('max-rank'),
    )
    .option(
      '--max-tokens <n>',
      'largest max_tokens a request may ask (default 1024)',
      parsePositiveInt('max-tokens'),
    )
    .option(
      '--max-prompt-tokens <n>',
      "most prompt tokens (default: the model's context)",
      parsePositiveInt('max-prompt-tokens'),
    )
    .option(
      '--max-concurrent <n>',
      'generation requests in progress at once; more get 429 (default 64)',
      parsePositiveInt('max-concurrent'),
    )
    .option(
      '--max-queue <n>',
      'rows waiting for the batch; more get 503 (default 256)',
      parsePositiveInt('max-queue'),
    )
    .option('--device <device>', 'cpu, cuda or auto', parseDevice, 'cpu' as Device)
    .option(
      '--quant <format>',
      `quantize the base weights to 4 bits at load: ${QUANT_FORMAT_LIST}`,
      parseQuantFlag('quant'),
    )
    .action(async (options: ServeCommandOptions) => {
      options.model = await resolveModelOrBundled(options.model, {});
      await runServe(options);
    });
}

async function runServe(options: ServeCommandOptions): Promise<void> {
  const { startServer } = await import('@lora/serve');
  const say = (m: string) => process.stderr.write(`${m}\n`);
  const server = await startServer({
    model: options.model!,
    adapters: options.adapters,
    servedModelName: options.servedModelName,
    host: options.host,
    port: options.port,
    apiKey: options.apiKey,
    maxLoaded: options.maxLoaded,
    memoryBudgetBytes: options.memoryBudget,
    preload: options.preload,
    maxBatch: options.maxBatch,
    maxRank: options.maxRank,
    device: options.device,
    quant: options.quant,
    limits: {
      ...(options.maxTokens ? { maxTokens: options.maxTokens } : {}),
      ...(options.maxPromptTokens ? { promptTokens: options.maxPromptTokens } : {}),
      ...(options.maxConcurrent ? { concurrentRequests: options.maxConcurrent } : {}),
      ...(options.maxQueue ? { queueLength: options.maxQueue } : {}),
    },
    warn: (m) => say(`warning: ${m}`),
  });
  const { service } = server;
  const adapters = service.adapterNames();
  const l = service.limits;
  say(
    `model: ${service.modelId} (${options.model}) on ${service.device}${options.quant ? `, ${options.quant}` : ''}`,
  );
  say(
    `adapters: ${options.adapters ? `${adapters.length} in ${options.adapters}${adapters.length ? ` (${adapters.slice(0, 8).join(', ')}${adapters.length > 8 ? ', ...' : ''})` : ''}` : 'none (no --adapters)'}`,
  );
  say(
    `limits: batch ${options.maxBatch}, loaded adapters ${options.maxLoaded}${options.memoryBudget ? `, adapter memory ${formatBytes(options.memoryBudget)}` : ''}, body ${formatBytes(l.bodyBytes)}, prompt ${l.promptTokens} tokens, max_tokens ${l.maxTokens}, ${l.concurrentRequests} concurrent requests, queue ${l.queueLength}`,
  );
  say(`auth: ${options.apiKey ? 'API key required' : 'none'}`);
  say(`listening on ${server.url}`);

  // Serve until SIGTERM / SIGINT: stop accepting, let in-flight requests finish (bounded), exit 0.
  const signals = ['SIGTERM', 'SIGINT'] as const;
  const previous = signals.map((s) => [s, process.listeners(s)] as const);
  for (const s of signals) process.removeAllListeners(s);
  await new Promise<void>((resolve) => {
    for (const s of signals) {
      process.once(s, () => {
        // What the drain waits for: completions (bounded by the grace period) and adapter loads.
        const completions = count(service.inFlight, 'completion');
        const loads = count(service.adapterLoadsInFlight, 'adapter load');
        say(
          `${s}: no new requests; finishing ${completions} (at most ${GRACE_MS / 1000} s) and ${loads}`,
        );
        resolve();
      });
    }
  });
  await server.close(GRACE_MS);
  for (const [s, listeners] of previous) {
    process.removeAllListeners(s);
    for (const listener of listeners) process.on(s, listener as () => void);
  }
  say('stopped');
}

/** `1 completion`, `2 completions`. */
function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

function parsePort(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0 || n > 65535)
    throw new UsageError(`--port must be an integer in 0..65535, got "${value}".`);
  return n;
}

function splitList(value: string): string[] {
  return value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

function parseDevice(value: string): Device {
  if ((DEVICES as readonly string[]).includes(value)) return value as Device;
  throw new UsageError(`Unknown device "${value}": use cpu, cuda or auto.`);
}
