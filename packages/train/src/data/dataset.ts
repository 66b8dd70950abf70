import { TrainError } from '../errors.js';
import { type Example, exampleFromRow, type TokenizerProvider } from './example.js';
import { readJsonl } from './jsonl.js';
import { packExamples } from './packing.js';

/** Options of {@link loadDataset}. */
export interface LoadDatasetOptions {
  /** The model's vocabulary size: token ids must be below it. */
  readonly vocabSize: number;
  /** Supplies the tokenizer for text rows (called at most once, only if a text row appears). */
  readonly tokenizer: TokenizerProvider;
  /** Keep the first `seqLen` tokens of each row (with `packing`: the length of every sequence). */
  readonly seqLen?: number;
  /** Concatenate all rows (in file order) and cut the stream into sequences of `seqLen` tokens. */
  readonly packing?: boolean;
}

/** A tokenized dataset, fully validated, ready to batch. */
export interface Dataset {
  readonly path: string;
  readonly examples: readonly Example[];
  /** JSONL rows read (blank lines not counted). */
  readonly rows: number;
  /** Rows cut by `seqLen` (without packing). */
  readonly truncatedRows: number;
  /** Longest example, in tokens. */
  readonly maxLength: number;
  /** Positions whose next-token label is trained on, over the whole dataset. */
  readonly labelTokens: number;
}

/** Positions t < n - 1 whose label[t + 1] is not ignored: what the loss of an example counts. */
export function predictedTokenCount(example: Example): number {
  let n = 0;
  const { labels } = example;
  for (let t = 1; t < labels.length; t++) if (labels[t] !== -100) n++;
  return n;
}

/**
 * Reads and tokenizes a whole JSONL dataset (streamed line by line) and checks every row before
 * anything trains: a bad row throws `DATA_INVALID` naming the file and the line; a file with no
 * trainable token throws `DATA_EMPTY`.
 */
export async function loadDataset(path: string, options: LoadDatasetOptions): Promise<Dataset> {
  const { seqLen, packing = false } = options;
  if (packing && seqLen === undefined) {
    throw new TrainError('SETTINGS_INVALID', 'packing needs a sequence length (--seq-len).');
  }
  let tokenizer: ReturnType<TokenizerProvider> | undefined;
  const provider: TokenizerProvider = () => {
    tokenizer ??= options.tokenizer();
    return tokenizer;
  };
  let rows = 0;
  let truncatedRows = 0;
  let examples: Example[] = [];
  for await (const { line, value } of readJsonl(path)) {
    rows++;
    const example = await exampleFromRow(value, { path, line }, provider, options.vocabSize);
    if (!packing && seqLen !== undefined && example.inputIds.length > seqLen) {
      truncatedRows++;
      examples.push({
        inputIds: example.inputIds.slice(0, seqLen),
        labels: example.labels.slice(0, seqLen),
      });
    } else {
      examples.push(example);
    }
  }
  if (packing) examples = packExamples(examples, seqLen!);
  let labelTokens = 0;
  let maxLength = 0;
  for (const e of examples) {
    labelTokens += predictedTokenCount(e);
    maxLength = Math.max(maxLength, e.inputIds.length);
  }
  if (rows === 0) {
    throw new TrainError(
      'DATA_EMPTY',
      `${path}: no rows. Add JSONL rows ({"text": ...} per line).`,
      {
        path,
      },
    );
  }
  if (labelTokens === 0) {
    throw new TrainError(
      'DATA_EMPTY',
      `${path}: ${rows} rows but no token to learn (every row is shorter than 2 tokens or all its labels are -100).`,
      { path },
    );
  }
  return { path, examples, rows, truncatedRows, maxLength, labelTokens };
}
