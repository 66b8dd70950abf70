import { loadPeftAdapter } from '@lora/adapters';
import type { QuantFormat } from '@lora/quant';
import { type Device, loadTokenizer, openLlamaFolder } from '@lora/runtime-onnx';
import { loadDataset } from '../data/dataset.js';
import { openEvalModel } from './eval-model.js';
import {
  completionCases,
  type ExactMatchReport,
  evaluateLoss,
  exactMatch,
  type LossReport,
} from './evaluate.js';

/** Options of {@link evaluateModel} (`lora eval`). */
export interface EvaluateOptions {
  readonly model: string;
  /** A PEFT adapter folder to evaluate with (LoRA branches over the base). */
  readonly adapter?: string;
  readonly data: string;
  /** Rows per forward pass (default 8). */
  readonly batchSize?: number;
  /** Keep the first `seqLen` tokens of each row. */
  readonly seqLen?: number;
  /** Quantize the base to 4 bits on load (as a QLoRA run trained it). */
  readonly quant?: QuantFormat;
  /** Greedy exact match on prompt/completion rows (default true). */
  readonly exactMatch?: boolean;
  readonly device?: Device;
  readonly warn?: (message: string) => void;
}

export interface EvaluateResult extends LossReport {
  readonly rows: number;
  /** Over the rows with a prompt (labels -100) and a completion; undefined when there are none. */
  readonly exactMatch?: ExactMatchReport;
}

/**
 * Mean loss (sum of token cross-entropies / label tokens, the training loss's rule), perplexity,
 * and exact match of greedy completions (every completion token reproduced by argmax decoding
 * through the runtime's stepper) of a model, optionally with an adapter, on a JSONL dataset.
 */
export async function evaluateModel(options: EvaluateOptions): Promise<EvaluateResult> {
  const { config, source } = await openLlamaFolder(options.model);
  try {
    const dataset = await loadDataset(options.data, {
      vocabSize: config.vocabSize,
      tokenizer: () => loadTokenizer(options.model),
      seqLen: options.seqLen,
    });
    const adapter = options.adapter ? (await loadPeftAdapter(options.adapter)).adapter : undefined;
    const model = await openEvalModel({
      config,
      source,
      adapter,
      quant: options.quant ? { format: options.quant } : undefined,
      device: options.device,
      warn: options.warn,
    });
    try {
      const batchSize = options.batchSize ?? 8;
      const loss = await evaluateLoss(model, dataset.examples, batchSize);
      const cases = options.exactMatch === false ? [] : completionCases(dataset.examples);
      const em = cases.length > 0 ? await exactMatch(model, cases, batchSize) : undefined;
      return { ...loss, rows: dataset.rows, exactMatch: em };
    } finally {
      await model.release();
    }
  } finally {
    await source.close();
  }
}
