import { existsSync } from 'node:fs';
import { isLoraError, openRegularFile, parseJsonText } from '@lora/core';
import { readLines } from '@lora/core/internal';
import type { GenerationTimings } from '@lora/runtime-onnx';
import type { Command } from 'commander';
import { UsageError } from '../errors.js';
import { log, parsePositiveInt } from '../output.js';
import { stdoutClosed } from '../stdout.js';
import type { GenerateCommandOptions } from './generate.js';
import {
  type AdapterSet,
  adapterSetKey,
  adapterSetLabel,
  LoadedAdapters,
} from './generate-adapters.js';
import { createBatchWriter } from './generate-batch-output.js';
import { type OpenedModel, openModel, PromptError } from './generate-model.js';

/**
 * `lora generate --batch <file.jsonl | ->`: rows are read one line at a time, generated
 * `--max-batch` rows at a time (one batch of the model, one KV cache per row), and each group's
 * results are written as soon as it is done, so memory stays bounded for any number of rows and
 * results flow while the input is still being written.
 *
 * A bad line (not JSON, nested too deep, too long, not `{"prompt": ...}`, an adapter that cannot
 * be loaded, a prompt the model cannot take) cannot be refused up front when streaming: the rows
 * before it are generated and written, then the run stops with one message naming the line and
 * exit code 2; nothing after the line is read. Every written result is complete and final.
 */

/** Rows generated together by default: the batching gain is mostly there by 16 rows. */
export const DEFAULT_MAX_BATCH = 16;
/** Largest `--max-batch`: rows of a group each hold a KV cache of the whole context. */
export const MAX_BATCH_GROUP = 256;
/**
 * Adapter sets the model is opened for at most (one LoRA slot each); a group bringing more
 * reopens it with the group's sets only. Adapter files stay loaded once named.
 */
export const MAX_OPEN_SETS = 64;
/** Longest line of a `--batch` input (longer than any prompt a context can take). */
export const MAX_BATCH_LINE_BYTES = 16 * 2 ** 20;

/** Flags of the batch mode. */
export interface BatchOptions {
  batch?: string;
  maxBatch: number;
  jsonl?: boolean;
}

/** Adds the flags (called by `registerGenerate`). */
export function addBatchOptions(command: Command): Command {
  return command
    .option(
      '--batch <file.jsonl>',
      'generate for every line {"prompt", "adapter"} of a JSONL file ("-": standard input), streamed: --max-batch rows at a time, results written as each group is done; a bad line stops the run (exit 2) after the results of the lines before it',
    )
    .option(
      '--max-batch <n>',
      `with --batch: rows generated together (one KV cache each), at most ${MAX_BATCH_GROUP}`,
      parseMaxBatch,
      DEFAULT_MAX_BATCH,
    )
    .option(
      '--jsonl',
      'with --batch: one JSON object per row and line ({"line", "prompt", "text", ...}), written as its group is done',
    );
}

function parseMaxBatch(value: string): number {
  const n = parsePositiveInt('max-batch')(value);
  if (n > MAX_BATCH_GROUP) {
    throw new UsageError(
      `--max-batch ${n} is above the limit of ${MAX_BATCH_GROUP} rows (each row of a group holds a KV cache of the whole context).`,
    );
  }
  return n;
}

/** One row of a batch input. */
export interface BatchRow {
  /** `file:line` for messages. */
  where: string;
  /** 1-based line number in the input. */
  line: number;
  prompt: string;
  adapters: AdapterSet;
}

/**
 * The rows of a `--batch` input (`-` = standard input), parsed one line at a time as the
 * consumer asks for them; blank lines are skipped. Rows without `adapter` use `defaults`. A bad
 * line throws a usage error naming it (a line over {@link MAX_BATCH_LINE_BYTES}: core's
 * `LINE_TOO_LONG`), after the rows before it were yielded.
 */
export async function* readBatchRows(
  source: string,
  defaults: AdapterSet,
): AsyncGenerator<BatchRow> {
  const name = source === '-' ? 'stdin' : source;
  const input = source === '-' ? process.stdin : (await openBatchFile(source)).createReadStream();
  let rows = 0;
  for await (const { number, text } of readLines(input, name, MAX_BATCH_LINE_BYTES)) {
    if (text.trim() === '') continue;
    yield parseBatchRow(text, `${name}:${number}`, number, defaults);
    rows++;
  }
  if (rows === 0) throw new UsageError(`--batch ${source} has no rows.`);
}

async function openBatchFile(path: string) {
  if (!existsSync(path)) throw new UsageError(`--batch ${path} does not exist.`);
  // Regular files only: a FIFO or device is refused (pipe into `--batch -` instead).
  return openRegularFile(path);
}

function parseBatchRow(text: string, where: string, line: number, defaults: AdapterSet): BatchRow {
  let row: { prompt?: unknown; adapter?: unknown };
  try {
    // nesting depth bounded: a row nested 20,000 deep would overflow the stack later
    row = parseJsonText(text, where) as typeof row;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (typeof row !== 'object' || row === null || typeof row.prompt !== 'string') {
    throw new UsageError(
      `${where}: each line needs {"prompt": "<text>"} (and optionally "adapter").`,
    );
  }
  const a = row.adapter;
  let adapters: AdapterSet;
  if (a === undefined) adapters = defaults;
  else if (a === null) adapters = [];
  else if (typeof a === 'string') adapters = [a];
  else if (Array.isArray(a) && a.every((x) => typeof x === 'string')) adapters = a as string[];
  else
    throw new UsageError(`${where}: "adapter" must be "<dir>[:scale]", a list of them, or null.`);
  return { where, line, prompt: row.prompt, adapters };
}

/** Runs `lora generate --batch`: see the top of this file. */
export async function runBatch(options: GenerateCommandOptions): Promise<void> {
  if (options.json && options.jsonl)
    throw new UsageError('--json and --jsonl exclude each other: give one.');
  const defaults = options.adapter ?? [];
  const loaded = new LoadedAdapters();
  await loaded.add(defaults);
  const input = new GroupReader(readBatchRows(options.batch!, defaults), loaded, options);
  const writer = createBatchWriter(options);
  let sets: AdapterSet[] = [];
  const total: GenerationTimings = {
    prefillMs: 0,
    decodeMs: 0,
    decodeTokens: 0,
    tokensPerSecond: 0,
  };
  let opened: OpenedModel | undefined;
  let firstRow = 0;
  let stop: unknown;
  try {
    for (let group = await input.next(); group.length > 0; group = await input.next()) {
      const fresh = newSets(group, sets);
      if (!opened || fresh.length > 0) {
        // The sets seen so far stay in the graph (no reopen when they come back), up to a bound.
        sets =
          sets.length + fresh.length <= MAX_OPEN_SETS ? [...sets, ...fresh] : newSets(group, []);
        if (opened) {
          const first = group.find((r) => adapterSetKey(r.adapters) === adapterSetKey(fresh[0]))!;
          log(
            options,
            `${first.where}: adapter set ${adapterSetLabel(fresh[0])} is new: reopening the model with ${sets.length} adapter set(s).`,
          );
          await opened.release();
          opened = undefined;
        }
        opened = await openModel(options, sets, loaded);
        writer.begin(opened.device);
      }
      const done = await generateGroup(opened, group, firstRow);
      for (const [i, output] of done.outputs.entries()) writer.row(group[i], output);
      total.prefillMs += done.timings.prefillMs;
      total.decodeMs += done.timings.decodeMs;
      total.decodeTokens += done.timings.decodeTokens;
      firstRow += done.outputs.length;
      if (done.error) {
        stop = done.error;
        break;
      }
      // Nobody reads the results any more (`| head`): stop quietly.
      if (stdoutClosed()) break;
    }
  } catch (e) {
    stop = e;
  } finally {
    await opened?.release();
  }
  // Stdout closed: the run ends quietly, or with its write error (main.ts, stdout.ts).
  if (stdoutClosed()) return;
  stop ??= input.error;
  total.tokensPerSecond = total.decodeTokens > 0 ? total.decodeTokens / (total.decodeMs / 1000) : 0;
  // Results so far stay valid output (a closed JSON document) also when a line stopped the run.
  writer.end(total, stop === undefined);
  if (stop !== undefined) throw stop;
}

/** Adapter sets `group` uses that the model was not opened for, each once. */
function newSets(group: readonly BatchRow[], known: readonly AdapterSet[]): AdapterSet[] {
  const seen = new Set(known.map(adapterSetKey));
  const fresh: AdapterSet[] = [];
  for (const { adapters } of group) {
    const key = adapterSetKey(adapters);
    if (seen.has(key)) continue;
    seen.add(key);
    fresh.push(adapters);
  }
  return fresh;
}

/**
 * Generates one group. A prompt the model refuses (too long for the context, empty) ends the
 * run at its line: the rows before it in the group are generated, and the error names the line.
 */
async function generateGroup(opened: OpenedModel, group: readonly BatchRow[], firstRow: number) {
  const run = (rows: readonly BatchRow[]) =>
    opened.generate(
      rows.map((r) => r.prompt),
      rows.map((r) => r.adapters),
      firstRow,
    );
  try {
    return { ...(await run(group)), error: undefined };
  } catch (e) {
    if (!(e instanceof PromptError)) throw e;
    const bad = e.row - firstRow;
    const error = new UsageError(
      `${group[bad].where}: ${e.message.replace(/^prompt \d+ /, 'the prompt ')}`,
    );
    if (bad === 0) return { outputs: [], timings: ZERO_TIMINGS, error };
    return { ...(await run(group.slice(0, bad))), error };
  }
}

const ZERO_TIMINGS: GenerationTimings = {
  prefillMs: 0,
  decodeMs: 0,
  decodeTokens: 0,
  tokensPerSecond: 0,
};

/**
 * How long a started group waits for the next row of a stalled input before it runs: a producer
 * that writes one row and waits for its result must get it.
 */
const STALL_MS = 10;

/**
 * Reads the input in groups of up to `--max-batch` rows, loading each row's adapters as it
 * arrives (so a bad adapter names its line). A group runs when it is full, when the input ended,
 * or when the next row is not there within {@link STALL_MS}. The first bad line ends the input:
 * the group returned is the rows before it, and {@link error} holds its error.
 */
class GroupReader {
  error: unknown;
  #ended = false;
  /** A row asked for but not yet arrived when the last group ran. */
  #pending: Promise<IteratorResult<BatchRow>> | undefined;
  /** With --merged: the one adapter set of the run (the first row's). */
  #mergedSet: AdapterSet | undefined;
  readonly #rows: AsyncGenerator<BatchRow>;
  readonly #loaded: LoadedAdapters;
  readonly #options: GenerateCommandOptions;

  constructor(
    rows: AsyncGenerator<BatchRow>,
    loaded: LoadedAdapters,
    options: GenerateCommandOptions,
  ) {
    this.#rows = rows;
    this.#loaded = loaded;
    this.#options = options;
  }

  async next(): Promise<BatchRow[]> {
    const group: BatchRow[] = [];
    while (!this.#ended && group.length < this.#options.maxBatch) {
      const pending = this.#pending ?? this.#rows.next();
      this.#pending = pending;
      if (group.length > 0 && !(await arrivesWithin(pending, STALL_MS))) break;
      this.#pending = undefined;
      try {
        const next = await pending;
        if (next.done) {
          this.#ended = true;
          break;
        }
        await this.#check(next.value);
        group.push(next.value);
      } catch (e) {
        this.error = e;
        this.#ended = true;
        // Stop reading: nothing after the bad line is read.
        await this.#rows.return(undefined);
      }
    }
    return group;
  }

  async #check(row: BatchRow): Promise<void> {
    try {
      await this.#loaded.add(row.adapters);
    } catch (e) {
      if (e instanceof UsageError || isLoraError(e))
        throw new UsageError(`${row.where}: ${(e as Error).message}`);
      throw e;
    }
    if (!this.#options.merged) return;
    this.#mergedSet ??= row.adapters;
    if (adapterSetKey(row.adapters) !== adapterSetKey(this.#mergedSet)) {
      throw new UsageError(
        `${row.where}: --merged bakes ONE adapter set into the weights (${adapterSetLabel(this.#mergedSet)}, from the first row); this row uses ${adapterSetLabel(row.adapters)}. Rows with different adapters need LoRA branches (drop --merged).`,
      );
    }
  }
}

/** Whether `promise` settles within `ms` (it is left running either way). */
async function arrivesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const settled = promise.then(
    () => true,
    () => true,
  );
  const late = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([settled, late]);
  } finally {
    clearTimeout(timer);
  }
}
