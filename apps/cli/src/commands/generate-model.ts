import type { GenerateResult, TokenEvent, Tokenizer } from '@lora/runtime-onnx';
import { UsageError } from '../errors.js';
import { log } from '../output.js';
import { startProgress } from '../progress.js';
import type { GenerateCommandOptions } from './generate.js';
import { type AdapterSet, type LoadedAdapters, prepareAdapters } from './generate-adapters.js';

/**
 * The model and tokenizer of a `lora generate` run, opened for a list of adapter sets: the one
 * place where the model is opened and where prompts are generated.
 */
export interface OpenedModel {
  tokenizer: Tokenizer;
  device: 'cpu' | 'cuda';
  /**
   * Generates `prompts` as one batch (row i uses `sets[i]`); `firstRow` is the place of the first
   * prompt in the whole job (its sampler stream, see @lora/runtime-onnx `generate`). Option
   * errors of the library come back as usage errors naming the flags.
   */
  generate(
    prompts: readonly string[],
    sets: readonly AdapterSet[],
    firstRow: number,
    onToken?: (event: TokenEvent) => void,
  ): Promise<GenerateResult>;
  release(): Promise<void>;
}

/**
 * Opens the model of `options` for rows using any of `sets` (adapter files already loaded):
 * rows may only use those sets.
 */
export async function openModel(
  options: GenerateCommandOptions,
  sets: readonly AdapterSet[],
  loaded: LoadedAdapters,
): Promise<OpenedModel> {
  // Imported here so that other commands do not load onnxruntime at startup.
  const { generate, loadLlama, loadTokenizer, modelEosIds } = await import('@lora/runtime-onnx');
  const dir = options.model!;
  const tokenizer = await loadTokenizer(dir);
  const lora = sets.some((s) => s.length > 0)
    ? await prepareAdapters(sets, loaded, options.merged ?? false)
    : undefined;
  const loading = startProgress(options, 'loading');
  const modelOptions = {
    logits: 'last' as const,
    quant: options.quant,
    device: options.device,
    warn: (m: string) => log(options, m),
    onProgress: (done: number, total: number, name: string) => loading.update(done, total, name),
  };
  const model = await (lora ? lora.open(dir, modelOptions) : loadLlama(dir, modelOptions)).finally(
    () => loading.stop(),
  );
  const eosIds = await modelEosIds(dir, model.config, tokenizer);
  return {
    tokenizer,
    device: model.device,
    generate: (prompts, rowSets, firstRow, onToken) =>
      generate(model.stepper(lora?.feeds(rowSets)), tokenizer, {
        prompt: prompts.length === 1 ? prompts[0] : prompts,
        firstRow,
        maxTokens: options.maxTokens,
        temperature: options.temperature,
        topK: options.topK,
        topP: options.topP,
        repetitionPenalty: options.repetitionPenalty,
        seed: options.seed,
        stop: options.stop ?? [],
        eosIds,
        maxSequenceLength: model.config.maxPositionEmbeddings,
        onToken,
      }).catch((e) => {
        throw withFlagNames(e);
      }),
    release: () => model.release(),
  };
}

/** The library's option names, as the flags users typed. */
const FLAG_OF_OPTION: Record<string, string> = {
  maxTokens: '--max-tokens',
  topK: '--top-k',
  topP: '--top-p',
  repetitionPenalty: '--repetition-penalty',
  maxSequenceLength: "the model's context (max_position_embeddings)",
  temperature: '--temperature',
  seed: '--seed',
};

/** An options error of the library, reworded with flag names as a usage error. */
function withFlagNames(e: unknown): unknown {
  const code = (e as { code?: string })?.code;
  if (code !== 'SAMPLING_OPTIONS_INVALID' && code !== 'GENERATE_OPTIONS_INVALID') return e;
  const message = (e as Error).message.replace(
    /\b(maxTokens|topK|topP|repetitionPenalty|maxSequenceLength|temperature|seed)\b/g,
    (name) => FLAG_OF_OPTION[name],
  );
  const row = (e as { details?: { row?: unknown } }).details?.row;
  return typeof row === 'number' ? new PromptError(message, row) : new UsageError(message);
}

/** A usage error about one prompt of the job (a batch names its line with `row`). */
export class PromptError extends UsageError {
  /** The prompt's place in the job (0-based, as `firstRow` counts). */
  readonly row: number;
  constructor(message: string, row: number) {
    super(message);
    this.row = row;
  }
}
