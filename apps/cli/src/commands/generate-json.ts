import type { GenerationOutput, GenerationTimings } from '@lora/runtime-onnx';
import type { GenerateCommandOptions } from './generate.js';
import { type AdapterSet, adapterSetLabel } from './generate-adapters.js';

// The pieces of `lora generate --json` (and `--jsonl`) output, shared by one prompt and batches.

/** The first fields of the --json document: what ran and how it sampled. */
export function generationHeader(options: GenerateCommandOptions, device: string) {
  return {
    model: options.model,
    device,
    quant: options.quant ?? null,
    sampling: {
      temperature: options.temperature,
      topK: options.topK ?? null,
      topP: options.topP ?? null,
      repetitionPenalty: options.repetitionPenalty ?? null,
      seed: options.seed,
    },
  };
}

/** The --json timings, rounded to microseconds. */
export function jsonTimings(timings: GenerationTimings) {
  return {
    prefillMs: round(timings.prefillMs),
    decodeMs: round(timings.decodeMs),
    decodeTokens: timings.decodeTokens,
    tokensPerSecond: round(timings.tokensPerSecond),
  };
}

/** One generated row as --json reports it. */
export function jsonRow(o: GenerationOutput, set: AdapterSet) {
  return {
    prompt: o.prompt,
    text: o.text,
    tokens: o.tokens,
    promptTokens: o.promptTokens,
    finishReason: o.finishReason,
    adapters: adapterSetLabel(set),
  };
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}
