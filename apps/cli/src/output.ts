import { availableParallelism } from 'node:os';
import { guardOutput } from '@lora/core';
import { UsageError } from './errors.js';
import { writeStdout } from './stdout.js';

/** Options every command accepts. */
export interface CommonOptions {
  json?: boolean;
  quiet?: boolean;
  verbose?: boolean;
  force?: boolean;
}

/** Prints either the human text or one JSON document on stdout. */
export function emit(options: CommonOptions, json: unknown, human: () => string): void {
  if (options.json) writeStdout(`${JSON.stringify(json, jsonReplacer, 2)}\n`);
  else writeStdout(`${human()}\n`);
}

function jsonReplacer(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? value.toString() : value;
}

/** Logs go to stderr, never in --json or --quiet mode. */
export function log(options: CommonOptions, message: string): void {
  if (!options.quiet && !options.json) process.stderr.write(`${message}\n`);
}

/** Whether progress bars may be drawn: stderr is a terminal and the user did not ask for quiet. */
export function progressEnabled(options: CommonOptions): boolean {
  return Boolean(process.stderr.isTTY) && !options.quiet && !options.json;
}

export function useColor(): boolean {
  return Boolean(process.stdout.isTTY) && !process.env.NO_COLOR;
}

const claimed: Array<() => void> = [];

/** The help of every writing command's --force ({@link checkOutput} enforces it). */
export const FORCE_HELP =
  'replace an existing output, but only one this command wrote (its lora.writer marker)';

/** What a command writes at an output path, for {@link checkOutput}. */
export interface OutputSpec {
  /** The command (e.g. `"quantize"`); it also records this name in the files it writes. */
  readonly writer: string;
  /** Every file or folder the command reads. */
  readonly inputs?: readonly string[];
  /** Files written beside the output as part of it (`model.onnx.data`, a merge residual). */
  readonly companions?: readonly string[];
}

/**
 * Checks an output before anything is read (core's `guardOutput`): it must not be, lie inside
 * or contain any input (nor the current folder); inputs must be regular files or folders; an
 * existing output needs --force, and is then replaced only if the same command wrote it (its
 * `lora.writer` marker) and, for a folder, it holds nothing but what the command writes; stale
 * temporaries of killed runs next to it are removed; and the output is claimed so that a
 * concurrent `lora` writing the same path fails at once. The claim ends with the command
 * ({@link releaseOutputs}).
 */
export function checkOutput(path: string, options: CommonOptions, spec: OutputSpec): void {
  claimed.push(
    guardOutput(path, {
      inputs: spec.inputs ?? [],
      force: options.force,
      writer: spec.writer,
      companions: spec.companions,
    }),
  );
}

/** Ends the claims {@link checkOutput} made (run when a command finishes, however it ends). */
export function releaseOutputs(): void {
  for (const release of claimed.splice(0)) release();
}

/** Formats a table of rows with aligned columns (numbers right-aligned). */
export function table(
  header: readonly string[],
  rows: readonly (readonly (string | number)[])[],
): string {
  const cells = [
    header,
    ...rows.map((r) => r.map((c) => (typeof c === 'number' ? formatNumber(c) : c))),
  ];
  const widths = header.map((_, i) =>
    cells.reduce((w, r) => Math.max(w, String(r[i] ?? '').length), 0),
  );
  const numeric = header.map(
    (_, i) => rows.length > 0 && rows.every((r) => typeof r[i] === 'number'),
  );
  return cells
    .map((r) =>
      r
        .map((c, i) => (numeric[i] ? String(c).padStart(widths[i]) : String(c).padEnd(widths[i])))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

export function formatNumber(n: number): string {
  if (Number.isInteger(n)) return n.toLocaleString('en-US');
  const abs = Math.abs(n);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return n.toExponential(3);
  return n.toPrecision(4);
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(2)} ${units[u]}`;
}

/** Parses a positive integer flag value. */
export function parsePositiveInt(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n <= 0)
      throw new UsageError(`--${name} must be a positive integer, got "${value}".`);
    return n;
  };
}

/**
 * Parses `--threads`: a positive integer up to the CPUs of this machine (`os.availableParallelism()`).
 * More threads than CPUs add memory (one worker or thread pool each) and no speed.
 */
export function parseThreads(value: string): number {
  const n = parsePositiveInt('threads')(value);
  const cpus = availableParallelism();
  if (n > cpus)
    throw new UsageError(
      `--threads ${n} is above the ${cpus} CPUs of this machine (the limit): more threads only add memory. Use --threads ${cpus} or fewer.`,
    );
  return n;
}

/** Parses a number flag value (accepts 65e9, 0.5, ...). */
export function parseNumber(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got "${value}".`);
    return n;
  };
}
