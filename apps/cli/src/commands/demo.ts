import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { bundledModelDir } from '../bundled-model.js';
import { UsageError } from '../errors.js';

/** The `lora` executable the demo runs (this package's bin), so every step is a real command. */
const LORA_BIN = fileURLToPath(new URL('../../bin/lora.js', import.meta.url));

interface DemoOptions {
  task: string;
  work: string;
  steps: number;
  qlora: boolean;
}

interface EvalReport {
  loss: number;
  exactMatch: { matches: number; rows: number; accuracy: number } | null;
}

interface TrainReport {
  peakRssBytes: number;
  steps: { loss: number; tokens_per_s?: number }[];
}

/** How many eval prompts are shown before and after training. */
const SHOWN = 5;

/**
 * `lora demo`: the main job on the bundled model. A held-out task the base cannot do, a LoRA
 * adapter trained on it, accuracy before and after, the adapter merged and checked to give the
 * same greedy answers; then the same with QLoRA (NF4 + double quantization). Every step is a
 * `lora` command run as a child process and printed first, so it can be copied and rerun.
 */
export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description(
      'The main job on the bundled model: fine-tune a LoRA and a QLoRA adapter for a task the base cannot do, show accuracy before and after, merge, check the merged answers.',
    )
    .option('--task <name>', 'held-out task of the bundled model (its tasks/ folder)', 'shift')
    .option('--work <dir>', 'folder for the demo outputs (replaced)', '.demo')
    .option('--steps <n>', 'optimizer steps of each fine-tuning run', (v) => Number(v), 150)
    .option('--no-qlora', 'skip the QLoRA half')
    .action(async (options: DemoOptions) => {
      if (!Number.isSafeInteger(options.steps) || options.steps < 1)
        throw new UsageError(`--steps must be a positive integer, got "${options.steps}".`);
      await runDemo(options);
    });
}

/** Paths as the user would type them: relative to the current folder when inside it. */
function shown(path: string): string {
  const rel = relative(process.cwd(), path);
  return rel && !rel.startsWith('..') ? rel : path;
}

function quote(arg: string): string {
  return /^[\w./:,=@+-]+$/.test(arg) ? arg : JSON.stringify(arg);
}

/** Runs `lora <args>`, printed first; the child's stderr (progress) goes to the terminal. */
function lora(args: string[], capture = false): string {
  process.stdout.write(`$ lora ${args.map(quote).join(' ')}\n`);
  const r = spawnSync(process.execPath, [LORA_BIN, ...args], {
    stdio: ['ignore', capture ? 'pipe' : 'inherit', 'inherit'],
    encoding: 'utf8',
    maxBuffer: 1 << 26,
  });
  if (r.status !== 0) {
    throw new Error(
      `the demo step "lora ${args[0]}" failed with exit code ${r.status ?? r.signal}.`,
    );
  }
  return capture ? r.stdout : '';
}

function heading(text: string): void {
  process.stdout.write(`\n== ${text}\n`);
}

function percent(e: EvalReport): string {
  return e.exactMatch ? `${(100 * e.exactMatch.accuracy).toFixed(1)}%` : '-';
}

interface Row {
  prompt: string;
  completion: string;
}

/** Greedy answers for the shown prompts, one batch with one adapter set for every row. */
function answers(
  model: string,
  rows: readonly Row[],
  batchFile: string,
  adapter?: string,
): string[] {
  writeFileSync(
    batchFile,
    rows.map((r) => `${JSON.stringify({ prompt: r.prompt, adapter: adapter ?? null })}\n`).join(''),
  );
  const out = lora(
    [
      'generate',
      '--model',
      shown(model),
      '--batch',
      shown(batchFile),
      '--max-tokens',
      '16',
      '--stop',
      '\n',
      '--temperature',
      '0',
      '--json',
    ],
    true,
  );
  const doc = JSON.parse(out) as { outputs?: { text: string }[]; rows?: { text: string }[] };
  const list = doc.rows ?? doc.outputs;
  if (!list) throw new Error('lora generate --json printed no rows.');
  return list.map((o) => o.text);
}

function printAnswers(rows: readonly Row[], columns: Record<string, string[]>): void {
  const names = Object.keys(columns);
  for (const [i, row] of rows.entries()) {
    const expected = row.completion.trim();
    const cells = names.map((n) => {
      const got = columns[n][i].trim();
      return `${n}: ${JSON.stringify(got)} ${got === expected ? '✓' : '✗'}`;
    });
    process.stdout.write(`  ${row.prompt.padEnd(18)} ${expected.padEnd(9)} ${cells.join('   ')}\n`);
  }
}

function evaluate(model: string, data: string, extra: string[] = []): EvalReport {
  return JSON.parse(
    lora(['eval', '--model', shown(model), '--data', shown(data), ...extra, '--json'], true),
  ) as EvalReport;
}

const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;

async function runDemo(options: DemoOptions): Promise<void> {
  const model = bundledModelDir();
  const taskDir = join(model, 'tasks', options.task);
  const train = join(taskDir, 'train.jsonl');
  const evalData = join(taskDir, 'eval.jsonl');
  let evalRows: Row[];
  try {
    evalRows = readFileSync(evalData, 'utf8')
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l) as Row);
  } catch {
    throw new UsageError(`The bundled model has no task "${options.task}" (${shown(taskDir)}).`);
  }
  const rows = evalRows.slice(0, SHOWN);
  const work = options.work;
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const batchFile = join(work, 'shown-prompts.jsonl');
  const started = Date.now();

  heading(`The bundled model (${shown(model)}) and a task it has never seen: "${options.task}"`);
  process.stdout.write(`${rows.map((r) => `  ${r.prompt}${r.completion.trimEnd()}`).join('\n')}\n`);
  const base = evaluate(model, evalData);
  const baseAnswers = answers(model, rows, batchFile);
  printAnswers(rows, { base: baseAnswers });
  process.stdout.write(`base model: exact match ${percent(base)} on ${shown(evalData)}\n`);

  const runs: { name: string; report: TrainReport; eval: EvalReport; seconds: number }[] = [];
  const common = [
    '--data',
    shown(train),
    '--rank',
    '8',
    '--alpha',
    '16',
    '--targets',
    'all-linear',
    '--dropout',
    '0',
    '--lr',
    '3e-3',
    '--batch-size',
    '16',
    '--steps',
    String(options.steps),
    '--schedule',
    'cosine',
    '--warmup-steps',
    '10',
    '--seed',
    '0',
  ];

  heading('Fine-tune a LoRA adapter (rank 8, all linear layers; the base stays frozen)');
  const loraDir = join(work, `${options.task}-lora`);
  let t0 = Date.now();
  const loraReportFile = join(work, `${options.task}-lora-training.json`);
  lora([
    'train',
    '--model',
    shown(model),
    ...common,
    '-o',
    shown(loraDir),
    '--report',
    shown(loraReportFile),
  ]);
  const loraSeconds = (Date.now() - t0) / 1000;
  const loraReport = readTrainReport(loraReportFile);
  const loraEval = evaluate(model, evalData, ['--adapter', shown(loraDir)]);
  const loraAnswers = answers(model, rows, batchFile, shown(loraDir));
  printAnswers(rows, { base: baseAnswers, lora: loraAnswers });
  process.stdout.write(
    `exact match: base ${percent(base)} -> with the adapter ${percent(loraEval)}\n`,
  );
  runs.push({ name: 'LoRA', report: loraReport, eval: loraEval, seconds: loraSeconds });

  heading('Merge the adapter into the weights (zero inference cost) and check the answers');
  const merged = join(work, `tiny-${options.task}-merged`);
  lora(['merge', '--base', shown(model), '--adapter', shown(loraDir), '-o', shown(merged)]);
  checkSame('merged model', answers(merged, rows, batchFile), 'adapter', loraAnswers);
  const mergedEval = evaluate(merged, evalData);
  checkSameAccuracy('merged model', mergedEval, loraEval);

  if (options.qlora) {
    heading('The same with QLoRA: the base held in 4 bits (NF4 + double quantization)');
    const nf4 = join(work, 'tiny-nf4');
    // the per-tensor error table is long: show its total and the size on disk
    const quantized = lora(
      ['quantize', shown(model), '-o', shown(nf4), '--format', 'nf4', '--double-quant'],
      true,
    );
    for (const line of quantized.split('\n')) {
      if (/^total|MiB ->/.test(line)) process.stdout.write(`${line}\n`);
    }
    const qloraDir = join(work, `${options.task}-qlora`);
    const qloraReportFile = join(work, `${options.task}-qlora-training.json`);
    t0 = Date.now();
    lora([
      'train',
      '--model',
      shown(model),
      '--method',
      'qlora',
      '--quant',
      'nf4',
      '--double-quant',
      ...common,
      '-o',
      shown(qloraDir),
      '--report',
      shown(qloraReportFile),
    ]);
    const qloraSeconds = (Date.now() - t0) / 1000;
    const qloraReport = readTrainReport(qloraReportFile);
    const qloraEval = evaluate(nf4, evalData, ['--adapter', shown(qloraDir)]);
    const qloraAnswers = answers(nf4, rows, batchFile, shown(qloraDir));
    printAnswers(rows, { base: baseAnswers, qlora: qloraAnswers });
    process.stdout.write(
      `exact match: base ${percent(base)} -> with the QLoRA adapter on the 4-bit base ${percent(qloraEval)}\n`,
    );
    runs.push({
      name: 'QLoRA nf4+DQ',
      report: qloraReport,
      eval: qloraEval,
      seconds: qloraSeconds,
    });
    const qMerged = join(work, `tiny-${options.task}-qlora-merged`);
    lora(['merge', '--base', shown(nf4), '--adapter', shown(qloraDir), '-o', shown(qMerged)]);
    checkSame('merged model', answers(qMerged, rows, batchFile), 'QLoRA adapter', qloraAnswers);
  }

  heading('Summary');
  process.stdout.write(`  base model: exact match ${percent(base)}\n`);
  for (const r of runs) {
    process.stdout.write(
      `  ${r.name.padEnd(13)} exact match ${percent(r.eval).padStart(6)}  training ${r.seconds.toFixed(0)} s, peak RSS ${mib(r.report.peakRssBytes)}\n`,
    );
  }
  process.stdout.write(
    `\nDone in ${((Date.now() - started) / 1000).toFixed(0)} s; outputs are in ${shown(work)}/.\n`,
  );
}

/** The document `lora train --report <file>` wrote (the same as its --json output). */
function readTrainReport(file: string): TrainReport {
  return JSON.parse(readFileSync(file, 'utf8')) as TrainReport;
}

function checkSame(what: string, got: readonly string[], other: string, want: readonly string[]) {
  const same = got.length === want.length && got.every((g, i) => g === want[i]);
  if (!same) throw new Error(`The ${what} answers differently from the ${other}.`);
  process.stdout.write(`the ${what} gives the same greedy answers as the ${other} ✓\n`);
}

function checkSameAccuracy(what: string, got: EvalReport, want: EvalReport) {
  if (got.exactMatch?.matches !== want.exactMatch?.matches) {
    throw new Error(
      `The ${what} scores ${percent(got)}, the adapter ${percent(want)}: they should agree.`,
    );
  }
  process.stdout.write(`the ${what} scores the same exact match (${percent(got)}) ✓\n`);
}
