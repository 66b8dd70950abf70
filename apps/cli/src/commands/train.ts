import type { QuantFormat } from '@lora/quant';
import type { StepReport, TrainOptions, TrainResult } from '@lora/train';
import cliProgress from 'cli-progress';
import { outputMarker, writeBytesAtomic } from '@lora/core';
import type { Command } from 'commander';
import { UsageError } from '../errors.js';
import { resolveModelOrBundled } from '../model-source.js';
import type { ProgressStream } from '../progress.js';
import { parseQuantFlag, QUANT_FORMAT_LIST } from '../quant-formats.js';
import {
  type CommonOptions,
  checkOutput,
  emit,
  log,
  parseNumber,
  parsePositiveInt,
  parseThreads,
  FORCE_HELP,
} from '../output.js';

const METHODS = ['lora', 'qlora', 'full'] as const;
const SCHEDULES = ['constant', 'linear', 'cosine'] as const;
const INITS = ['default', 'gaussian', 'pissa', 'olora'] as const;

/** Parsed flags of `lora train`. LoRA flags stay undefined unless given (an --init-adapter's config fills them). */
export interface TrainCommandOptions extends CommonOptions {
  model?: string;
  data?: string;
  output?: string;
  method: (typeof METHODS)[number];
  quant?: QuantFormat;
  doubleQuant?: boolean;
  blockSize?: number;
  rank?: number;
  alpha?: number;
  targets?: string;
  dropout?: number;
  rslora?: boolean;
  init?: (typeof INITS)[number];
  initAdapter?: string;
  steps?: number;
  epochs?: number;
  batchSize: number;
  gradAccum: number;
  seqLen?: number;
  packing?: boolean;
  shuffle: boolean;
  seed: number;
  lr: number;
  weightDecay: number;
  adamBetas: [number, number];
  adamEps: number;
  maxGradNorm: number;
  schedule: (typeof SCHEDULES)[number];
  warmupSteps: number;
  checkpointEvery: number;
  resume?: boolean;
  evalData?: string;
  evalEvery?: number;
  device: 'cpu' | 'cuda' | 'auto';
  threads?: number;
  report?: string;
}

function oneOf<T extends string>(name: string, values: readonly T[]) {
  return (v: string): T => {
    if ((values as readonly string[]).includes(v)) return v as T;
    throw new UsageError(`--${name} must be one of ${values.join(', ')}, got "${v}".`);
  };
}

function nonNegativeInt(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < 0)
      throw new UsageError(`--${name} must be an integer >= 0, got "${v}".`);
    return n;
  };
}

function parseBetas(v: string): [number, number] {
  const parts = v.split(',').map(Number);
  if (parts.length !== 2 || parts.some((b) => !(b >= 0 && b < 1)))
    throw new UsageError(`--adam-betas must be two numbers in [0, 1) like 0.9,0.999, got "${v}".`);
  return [parts[0], parts[1]];
}

/** `--targets`: "all-linear", a comma list of module names, or (with regex characters) a Python regex. */
export function parseTargets(v: string): string | string[] {
  if (v === 'all-linear' || /[\\^$*+?()[\]{}|]/.test(v)) return v;
  const list = v
    .split(',')
    .map((t) => t.trim())
    .filter(Boolean);
  if (list.length === 0)
    throw new UsageError('--targets needs module names (q_proj,v_proj), all-linear or a regex.');
  return list;
}

export function registerTrain(program: Command): void {
  program
    .command('train')
    .description(
      'Fine-tune a LLaMA-family model folder on JSONL data: LoRA or QLoRA (PEFT adapter out) or full (model folder out).',
    )
    .option('--model <dir>', 'model folder (config.json, safetensors, tokenizer.json)')
    .option(
      '--data <file>',
      'training data, JSONL: {"text"}, {"prompt","completion"} or {"input_ids","labels"} per line (at most 16 MiB a line)',
    )
    .option('-o, --output <dir>', 'output folder: the PEFT adapter, or the model for --method full')
    .option('--method <m>', 'lora, qlora (4-bit base) or full', oneOf('method', METHODS), 'lora')
    .option(
      '--quant <format>',
      `qlora base format: ${QUANT_FORMAT_LIST} (default nf4)`,
      parseQuantFlag('quant'),
    )
    .option(
      '--double-quant',
      'qlora: quantize the nf4/fp4 absmax statistics again (QLoRA double quantization)',
    )
    .option(
      '--block-size <n>',
      'qlora: values per quantization block (default 64 nf4/fp4, 32 int4/uint4)',
      parsePositiveInt('block-size'),
    )
    .option('--rank <r>', 'LoRA rank (default 8)', parsePositiveInt('rank'))
    .option('--alpha <a>', 'LoRA alpha: scaling alpha/r (default 16)', parseNumber('alpha'))
    .option(
      '--targets <t>',
      'modules: q_proj,v_proj (default), all-linear, or a Python regex',
      parseTargets,
    )
    .option(
      '--dropout <p>',
      'LoRA dropout on the branch input (default 0.05)',
      parseNumber('dropout'),
    )
    .option('--rslora', 'rank-stabilised scaling alpha/sqrt(r)')
    .option('--init <method>', 'LoRA init: default, gaussian, pissa, olora', oneOf('init', INITS))
    .option('--init-adapter <dir>', 'start from this PEFT adapter (its config and weights)')
    .option(
      '--steps <n>',
      'optimizer steps (may run past the end of the data)',
      parsePositiveInt('steps'),
    )
    .option(
      '--epochs <n>',
      'passes over the data (default 1; not with --steps)',
      parsePositiveInt('epochs'),
    )
    .option('--batch-size <n>', 'rows per micro-batch', parsePositiveInt('batch-size'), 4)
    .option(
      '--grad-accum <k>',
      'micro-batches per optimizer step',
      parsePositiveInt('grad-accum'),
      1,
    )
    .option(
      '--seq-len <t>',
      'tokens per row: longer rows keep their first T tokens (default: the longest row)',
      parsePositiveInt('seq-len'),
    )
    .option(
      '--packing',
      'concatenate rows and cut into --seq-len sequences (attention crosses row boundaries)',
    )
    .option(
      '--no-shuffle',
      'rows in file order every epoch (default: a seeded permutation per epoch)',
    )
    .option('--seed <n>', 'seed of data order, LoRA init and dropout', nonNegativeInt('seed'), 42)
    .option('--lr <x>', 'peak learning rate', parseNumber('lr'), 2e-4)
    .option(
      '--weight-decay <x>',
      'AdamW weight decay (not on biases and norms)',
      parseNumber('weight-decay'),
      0,
    )
    .option('--adam-betas <b1,b2>', 'AdamW betas', parseBetas, [0.9, 0.999] as [number, number])
    .option('--adam-eps <x>', 'AdamW epsilon', parseNumber('adam-eps'), 1e-8)
    .option(
      '--max-grad-norm <x>',
      'clip the total gradient norm (0 = off)',
      parseNumber('max-grad-norm'),
      1,
    )
    .option(
      '--schedule <s>',
      'learning-rate schedule: constant, linear, cosine',
      oneOf('schedule', SCHEDULES),
      'linear',
    )
    .option('--warmup-steps <n>', 'linear warmup from 0', nonNegativeInt('warmup-steps'), 0)
    .option(
      '--checkpoint-every <n>',
      'write a checkpoint (<output>.checkpoint) every N steps',
      nonNegativeInt('checkpoint-every'),
      0,
    )
    .option('--resume', 'continue from <output>.checkpoint (same flags as the interrupted run)')
    .option(
      '--eval-data <file>',
      'held-out JSONL (rows as --data): loss and perplexity at --eval-every and at the end',
    )
    .option('--eval-every <n>', 'evaluate every N steps', parsePositiveInt('eval-every'))
    .option(
      '--device <d>',
      'cpu, cuda or auto',
      oneOf('device', ['cpu', 'cuda', 'auto'] as const),
      'cpu',
    )
    .option('--threads <n>', 'onnxruntime threads per op (default: all cores)', parseThreads)
    .option('--force', FORCE_HELP)
    .option(
      '--json',
      'print one JSON document (steps, settings, eval, peak RSS, output) instead of progress',
    )
    .option(
      '--report <file>',
      'also write the --json document to this file (the progress stays on the terminal), with "lora.writer": "train" so that --force may replace it',
    )
    .option('--quiet', 'no progress or log lines')
    .action(async (options: TrainCommandOptions) => {
      options.model = await resolveModelOrBundled(options.model, options);
      if (!options.data) throw new UsageError('--data <file.jsonl> is required.');
      if (!options.output) throw new UsageError('-o, --output <dir> is required.');
      if (options.steps !== undefined && options.epochs !== undefined)
        throw new UsageError('--steps and --epochs contradict each other; give one.');
      if (options.method !== 'qlora' && (options.quant || options.doubleQuant || options.blockSize))
        throw new UsageError('--quant, --double-quant and --block-size are for --method qlora.');
      if (options.evalEvery && !options.evalData)
        throw new UsageError('--eval-every needs --eval-data.');
      const inputs = [
        options.model,
        options.data,
        ...(options.evalData ? [options.evalData] : []),
        ...(options.initAdapter ? [options.initAdapter] : []),
      ];
      checkOutput(options.output, options, { writer: 'train', inputs });
      if (options.report) checkOutput(options.report, options, { writer: 'train', inputs });
      await runTrain(options);
    });
}

/** Ctrl-C: the first stops after the current step and writes a checkpoint; a second one exits at once. */
function interruptible(options: CommonOptions): {
  signal: AbortSignal;
  restore(): void;
  exitAsInterrupted(): void;
} {
  const controller = new AbortController();
  const previous = process.listeners('SIGINT');
  process.removeAllListeners('SIGINT');
  const onSigint = () => {
    if (controller.signal.aborted) {
      for (const l of previous) (l as (s: string) => void)('SIGINT');
      process.exit(130);
    }
    log(
      options,
      '\nlora train: stopping after this step and writing a checkpoint (Ctrl-C again to quit at once)',
    );
    controller.abort();
  };
  process.on('SIGINT', onSigint);
  const restore = () => {
    process.removeListener('SIGINT', onSigint);
    for (const l of previous) process.on('SIGINT', l as () => void);
  };
  return {
    signal: controller.signal,
    restore,
    // The executable's own handler removes temporaries and exits 130, as for any interrupted command.
    exitAsInterrupted: () => {
      for (const l of previous) (l as (s: string) => void)('SIGINT');
    },
  };
}

/** Progress: a bar on a terminal, one plain line per step otherwise, nothing with --quiet / --json. */
export function trainProgress(
  options: CommonOptions,
  stream: ProgressStream = process.stderr,
): {
  start(total: number, at: number): void;
  step(r: StepReport, total: number): void;
  stop(): void;
} {
  if (options.quiet || options.json) return { start() {}, step() {}, stop() {} };
  if (!stream.isTTY) {
    return {
      start() {},
      step(r, total) {
        stream.write(
          `step ${r.step}/${total}  loss ${r.loss.toFixed(4)}  lr ${r.lr.toExponential(2)}  grad_norm ${r.grad_norm.toFixed(3)}  ${Math.round(r.tokens_per_s)} tok/s\n`,
        );
      },
      stop() {},
    };
  }
  const bar = new cliProgress.SingleBar(
    {
      stream: stream as NodeJS.WritableStream,
      noTTYOutput: true,
      format: 'train [{bar}] {value}/{total} | loss {loss} | {tps} tok/s | ETA {eta_formatted}',
      hideCursor: true,
      barsize: 24,
      etaBuffer: 20,
    },
    cliProgress.Presets.shades_classic,
  );
  return {
    start(total, at) {
      bar.start(total, at, { loss: '-', tps: '-' });
    },
    step(r) {
      bar.update(r.step, { loss: r.loss.toFixed(4), tps: Math.round(r.tokens_per_s) });
    },
    stop() {
      bar.stop();
    },
  };
}

async function runTrain(options: TrainCommandOptions): Promise<void> {
  const { train } = await import('@lora/train');
  const progress = trainProgress(options);
  const interrupt = interruptible(options);
  const lora =
    options.method === 'full'
      ? undefined
      : {
          rank: options.rank,
          alpha: options.alpha,
          targets: options.targets,
          dropout: options.dropout,
          rslora: options.rslora,
          init: options.init,
        };
  const trainOptions: TrainOptions = {
    model: options.model!,
    data: options.data!,
    output: options.output!,
    method: options.method,
    quant:
      options.method === 'qlora'
        ? {
            format: options.quant ?? 'nf4',
            blockSize: options.blockSize,
            doubleQuant: options.doubleQuant ?? false,
          }
        : undefined,
    lora: lora && Object.values(lora).some((v) => v !== undefined) ? lora : undefined,
    initAdapter: options.initAdapter,
    steps: options.steps,
    epochs: options.epochs,
    batchSize: options.batchSize,
    gradAccum: options.gradAccum,
    seqLen: options.seqLen,
    packing: options.packing,
    shuffle: options.shuffle,
    seed: options.seed,
    lr: options.lr,
    weightDecay: options.weightDecay,
    betas: options.adamBetas,
    eps: options.adamEps,
    maxGradNorm: options.maxGradNorm,
    schedule: options.schedule,
    warmupSteps: options.warmupSteps,
    checkpointEvery: options.checkpointEvery,
    resume: options.resume,
    evalData: options.evalData,
    evalEvery: options.evalEvery,
    overwrite: options.force,
    writer: 'train',
    device: options.device,
    intraOpNumThreads: options.threads,
    warn: (m) => log(options, m),
    onStart: ({ totalSteps, startStep, examples, seqLen }) => {
      log(
        options,
        `training ${options.method} on ${examples} examples of up to ${seqLen} tokens: ${totalSteps} steps${startStep ? `, resuming after step ${startStep}` : ''}`,
      );
      progress.start(totalSteps, startStep);
    },
    onStep: (r, total) => progress.step(r, total),
    onEval: (e) =>
      log(
        options,
        `eval at step ${e.step}: loss ${e.loss.toFixed(4)}, perplexity ${e.perplexity.toFixed(3)}`,
      ),
    signal: interrupt.signal,
  };
  let result: TrainResult;
  try {
    result = await train(trainOptions);
  } finally {
    progress.stop();
    interrupt.restore();
  }
  const last = result.steps.at(-1);
  const doc = {
    output: result.output ?? null,
    interrupted: result.interrupted,
    checkpoint: result.checkpoint ?? null,
    settings: result.settings,
    data: result.data,
    trainableParameters: result.trainableParameters,
    steps: result.steps.map(({ step, epoch, loss, lr, grad_norm, tokens, tokens_per_s }) => ({
      step,
      epoch,
      loss,
      lr,
      grad_norm,
      tokens,
      tokens_per_s: Math.round(tokens_per_s * 10) / 10,
    })),
    eval: result.evals,
    peakRssBytes: result.peakRssBytes,
  };
  if (options.report) {
    const report = { ...outputMarker('train'), ...doc }; // recognised by a later --force
    await writeBytesAtomic(options.report, `${JSON.stringify(report, null, 2)}\n`);
  }
  emit(options, doc, () =>
    result.interrupted
      ? `interrupted after step ${result.checkpoint?.step ?? 0}; checkpoint in ${result.checkpoint?.dir}. Run the same command with --resume to continue.`
      : `${result.steps.length} steps, final loss ${last?.loss.toFixed(4) ?? '-'}${result.evals.length ? `, eval loss ${result.evals.at(-1)!.loss.toFixed(4)}` : ''}; peak RSS ${(result.peakRssBytes / 2 ** 20).toFixed(0)} MiB; ${options.method === 'full' ? 'model' : 'adapter'} written to ${result.output}`,
  );
  if (result.interrupted) interrupt.exitAsInterrupted();
}
