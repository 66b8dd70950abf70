import type { Tokenizer } from '@lora/runtime-onnx';
import { TrainError } from '../errors.js';

/** Label value of a position that is not trained on (PyTorch's `ignore_index`). */
export const IGNORE_INDEX = -100;

/**
 * One training sequence: token ids and, per position, the label (the token itself, or
 * {@link IGNORE_INDEX}). As in transformers, the logits at position t are scored against
 * `labels[t + 1]`: the model shifts, the data does not.
 */
export interface Example {
  readonly inputIds: Int32Array;
  readonly labels: Int32Array;
}

/** Where a row came from, for error messages. */
export interface RowSource {
  readonly path: string;
  readonly line: number;
}

/** Supplies the tokenizer the first time a text row needs it (pre-tokenized data needs none). */
export type TokenizerProvider = () => Promise<Tokenizer>;

function rowError(where: RowSource, message: string): TrainError {
  return new TrainError('DATA_INVALID', `${where.path}:${where.line}: ${message}`, {
    path: where.path,
    line: where.line,
  });
}

function intArray(
  value: unknown,
  field: string,
  where: RowSource,
  allowIgnore: boolean,
  vocabSize: number,
): Int32Array {
  if (!Array.isArray(value)) throw rowError(where, `"${field}" must be an array of token ids.`);
  const out = new Int32Array(value.length);
  for (let i = 0; i < value.length; i++) {
    const v = value[i];
    const ok =
      Number.isInteger(v) && ((v >= 0 && v < vocabSize) || (allowIgnore && v === IGNORE_INDEX));
    if (!ok) {
      throw rowError(
        where,
        `"${field}"[${i}] is ${JSON.stringify(v)}; token ids are integers in 0..${vocabSize - 1}${allowIgnore ? ' (or -100 = ignored)' : ''}.`,
      );
    }
    out[i] = v;
  }
  return out;
}

/**
 * Splits `encode(text)` with special tokens into the specials the tokenizer put before and after
 * the plain tokens (its post-processor's BOS / EOS), so prompt and completion can be encoded
 * separately and still be framed the way the tokenizer frames one text.
 */
function framing(
  tokenizer: Tokenizer,
  text: string,
): { lead: number[]; plain: number[]; trail: number[] } {
  const plain = tokenizer.encode(text, { addSpecialTokens: false });
  const full = tokenizer.encode(text, { addSpecialTokens: true });
  for (let lead = 0; lead + plain.length <= full.length; lead++) {
    if (plain.every((id, i) => full[lead + i] === id)) {
      return { lead: full.slice(0, lead), plain, trail: full.slice(lead + plain.length) };
    }
  }
  return { lead: [], plain: full, trail: [] };
}

/**
 * Turns one JSONL row into an {@link Example}:
 * - `{"text"}`: `encode(text)` with the tokenizer's specials; loss on every token;
 * - `{"prompt", "completion"}`: the prompt and the completion are encoded separately (no token
 *   merges across the boundary) and framed as one text would be (BOS before, EOS after, as the
 *   tokenizer's post-processor says); loss on the completion tokens and the trailing specials only;
 * - `{"input_ids", "labels"?}`: used as given (no specials added); `labels` default to `input_ids`,
 *   -100 = ignored.
 */
export async function exampleFromRow(
  value: unknown,
  where: RowSource,
  tokenizer: TokenizerProvider,
  vocabSize: number,
): Promise<Example> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw rowError(
      where,
      'expected a JSON object ({"text"}, {"prompt","completion"} or {"input_ids"}).',
    );
  }
  const row = value as Record<string, unknown>;
  let inputIds: Int32Array;
  let labels: Int32Array;
  if ('input_ids' in row) {
    inputIds = intArray(row.input_ids, 'input_ids', where, false, vocabSize);
    labels =
      row.labels === undefined || row.labels === null
        ? inputIds.slice()
        : intArray(row.labels, 'labels', where, true, vocabSize);
    if (labels.length !== inputIds.length) {
      throw rowError(
        where,
        `"labels" has ${labels.length} entries and "input_ids" ${inputIds.length}; they must be the same length.`,
      );
    }
    const differs = labels.findIndex((l, i) => l !== IGNORE_INDEX && l !== inputIds[i]);
    if (differs >= 0) {
      throw rowError(
        where,
        `"labels"[${differs}] is ${labels[differs]} but "input_ids"[${differs}] is ${inputIds[differs]}; a label must be its token (causal LM) or -100.`,
      );
    }
  } else if ('prompt' in row || 'completion' in row) {
    if (typeof row.prompt !== 'string' || typeof row.completion !== 'string') {
      throw rowError(where, '"prompt" and "completion" must both be strings.');
    }
    const tok = await tokenizerFor(tokenizer, where);
    const { lead, plain } = framing(tok, row.prompt);
    const completion = tok.encode(row.completion, { addSpecialTokens: false });
    const { trail } = framing(tok, row.completion);
    const promptIds = [...lead, ...plain];
    const answerIds = [...completion, ...trail];
    inputIds = Int32Array.from([...promptIds, ...answerIds]);
    labels = Int32Array.from([...promptIds.map(() => IGNORE_INDEX), ...answerIds]);
  } else if ('text' in row) {
    if (typeof row.text !== 'string') throw rowError(where, '"text" must be a string.');
    const tok = await tokenizerFor(tokenizer, where);
    inputIds = Int32Array.from(tok.encode(row.text, { addSpecialTokens: true }));
    labels = inputIds.slice();
  } else {
    throw rowError(
      where,
      `no "text", "prompt"/"completion" or "input_ids" field (found ${
        Object.keys(row)
          .map((k) => `"${k}"`)
          .join(', ') || 'none'
      }).`,
    );
  }
  if (inputIds.length === 0) throw rowError(where, 'the row has no tokens.');
  for (const id of inputIds) {
    if (id >= vocabSize) {
      throw rowError(
        where,
        `the tokenizer produced id ${id}, outside the model's vocabulary (0..${vocabSize - 1}); the tokenizer does not belong to this model.`,
      );
    }
  }
  return { inputIds, labels };
}

async function tokenizerFor(provider: TokenizerProvider, where: RowSource): Promise<Tokenizer> {
  try {
    return await provider();
  } catch (e) {
    throw new TrainError(
      'TOKENIZER_MISSING',
      `${where.path}:${where.line}: text rows need the model's tokenizer, which could not be loaded (${(e as Error).message}). Add tokenizer.json to the model folder or use pre-tokenized {"input_ids"} rows.`,
      { path: where.path, line: where.line },
      { cause: e },
    );
  }
}
