import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import {
  countModelParameters,
  type MemoryPlan,
  type ModelShape,
  parseModelConfig,
  planMemory,
  readJsonFile,
  shapeForParameterCount,
  type WeightFormat,
} from '@lora/core';
import { type Command, Option } from 'commander';
import { UsageError } from '../errors.js';
import {
  type CommonOptions,
  emit,
  formatBytes,
  parseNumber,
  parsePositiveInt,
  table,
} from '../output.js';
import { resolveModelPath } from '../model-source.js';

interface PlanOptions extends CommonOptions {
  params?: number;
  hidden?: number;
  intermediate?: number;
  layers?: number;
  heads?: number;
  kvHeads?: number;
  headDim?: number;
  vocab?: number;
  tieEmbeddings?: boolean;
  quant: WeightFormat;
  doubleQuant?: boolean;
  blockSize: number;
  rank: number;
  targets: string;
  batchSize: number;
  seqLen: number;
  gradientCheckpointing: boolean;
  attention: 'sdpa' | 'eager';
  computeDtype: 'bf16' | 'f16' | 'f32';
  adapterDtype: 'bf16' | 'f16' | 'f32';
  masterWeights: boolean;
  budget?: number;
}

export function registerPlan(program: Command): void {
  program
    .command('plan')
    .argument('[model]', 'a model folder (or its config.json) with a LLaMA-style config')
    .description(
      'Estimate memory for inference and for LoRA, QLoRA and full fine-tuning: weights, quantization statistics, adapters, gradients, optimizer states, activations.',
    )
    .option(
      '--params <count>',
      'model size instead of a folder, e.g. 65e9 (a LLaMA-like shape is assumed; see --hidden ...)',
      parseNumber('params'),
    )
    .option('--hidden <n>', 'hidden size (overrides the assumed shape)', parsePositiveInt('hidden'))
    .option(
      '--intermediate <n>',
      'MLP intermediate size (default 8/3 x hidden, rounded up to 256)',
      parsePositiveInt('intermediate'),
    )
    .option('--layers <n>', 'number of decoder layers', parsePositiveInt('layers'))
    .option('--heads <n>', 'attention heads (default hidden / 128)', parsePositiveInt('heads'))
    .option('--kv-heads <n>', 'key/value heads (default = heads)', parsePositiveInt('kv-heads'))
    .option(
      '--head-dim <n>',
      'size per head (default hidden / heads)',
      parsePositiveInt('head-dim'),
    )
    .option('--vocab <n>', 'vocabulary size (default 32000)', parsePositiveInt('vocab'))
    .option('--tie-embeddings', 'lm_head shares the embedding matrix')
    .addOption(
      new Option('--quant <format>', 'base-weight format for QLoRA and quantized inference')
        .choices(['nf4', 'fp4', 'int8'])
        .default('nf4'),
    )
    .option('--double-quant', 'QLoRA double quantization of the absmax statistics')
    .option(
      '--block-size <n>',
      'elements per absmax block (nf4/fp4)',
      parsePositiveInt('block-size'),
      64,
    )
    .option('--rank <r>', 'LoRA rank', parsePositiveInt('rank'), 8)
    .option('--targets <list>', 'comma-separated module names, or all-linear', 'q_proj,v_proj')
    .option('--batch-size <n>', 'sequences per step', parsePositiveInt('batch-size'), 1)
    .option('--seq-len <n>', 'tokens per sequence', parsePositiveInt('seq-len'), 512)
    .option('--no-gradient-checkpointing', 'keep every layer activation instead of recomputing')
    .addOption(
      new Option('--attention <kind>', 'sdpa (memory-efficient) or eager (keeps seq x seq scores)')
        .choices(['sdpa', 'eager'])
        .default('sdpa'),
    )
    .addOption(
      new Option('--compute-dtype <dtype>', 'dtype of unquantized weights and activations')
        .choices(['bf16', 'f16', 'f32'])
        .default('bf16'),
    )
    .addOption(
      new Option('--adapter-dtype <dtype>', 'dtype of LoRA A/B and their gradients')
        .choices(['bf16', 'f16', 'f32'])
        .default('bf16'),
    )
    .option('--no-master-weights', 'full fine-tuning without f32 master weights')
    .option(
      '--budget <size>',
      'memory available, e.g. 48GB, 24GiB (a bare number means GB): adds a "fits" column',
      (v: string) => parseSize(v),
    )
    .option('--json', 'print one JSON document')
    .option('--revision <rev>', 'for a hub model name: branch, tag or commit (default main)')
    .action(async (arg: string | undefined, options: PlanOptions) => {
      const model = arg === undefined ? undefined : await resolveModelPath(arg, options);
      const { shape, source } = await resolveShape(model, options);
      const targets =
        options.targets.trim() === 'all-linear' ? 'all-linear' : splitTargets(options.targets);
      const plan = planMemory({
        shape,
        lora: { r: options.rank, lora_alpha: options.rank, target_modules: targets },
        quant: {
          format: options.quant,
          blockSize: options.blockSize,
          doubleQuant: Boolean(options.doubleQuant),
        },
        batchSize: options.batchSize,
        seqLen: options.seqLen,
        gradientCheckpointing: options.gradientCheckpointing,
        attention: options.attention,
        computeDtype: options.computeDtype,
        adapterDtype: options.adapterDtype,
        masterWeights: options.masterWeights,
      });
      if (plan.lora.modules === 0) {
        throw new UsageError(
          `--targets ${options.targets} matches no linear layer of this model (LLaMA names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, or all-linear).`,
        );
      }
      const fits =
        options.budget === undefined
          ? undefined
          : plan.scenarios.map((sc) => ({
              name: sc.name,
              fits: sc.memory.total <= options.budget!,
            }));
      emit(options, { source, ...plan, budget: options.budget, fits }, () =>
        render(plan, source, options.budget),
      );
    });
}

const SIZE_UNITS: Readonly<Record<string, number>> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};

/** "48GB" -> 48e9 bytes, "24GiB" -> 24 x 2^30; a bare number is GB. `flag` names it in errors. */
export function parseSize(value: string, flag = 'budget'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  const unit = m ? (m[2] === '' ? 1e9 : SIZE_UNITS[m[2].toLowerCase()]) : undefined;
  if (!m || unit === undefined || !(Number(m[1]) > 0)) {
    throw new UsageError(`--${flag} must be a size such as 48GB, 24GiB or 512MB, got "${value}".`);
  }
  return Number(m[1]) * unit;
}

function splitTargets(list: string): string[] {
  const names = list
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  if (names.length === 0)
    throw new UsageError(
      '--targets needs at least one module name (e.g. q_proj,v_proj) or all-linear.',
    );
  return names;
}

/** The model shape from a folder, from --params, or from explicit --hidden/--layers flags. */
async function resolveShape(
  model: string | undefined,
  o: PlanOptions,
): Promise<{ shape: ModelShape; source: string }> {
  let shape: ModelShape;
  let source: string;
  if (model !== undefined) {
    if (o.params !== undefined)
      throw new UsageError('give either a model folder or --params, not both.');
    const file =
      existsSync(model) && statSync(model).isDirectory() ? join(model, 'config.json') : model;
    if (!existsSync(file))
      throw new UsageError(
        `${file} does not exist. Pass a model folder holding config.json, or use --params.`,
      );
    shape = parseModelConfig(await readJsonFile(file), file);
    source = file;
  } else if (o.params !== undefined) {
    if (!(o.params >= 1e6))
      throw new UsageError(`--params must be a parameter count of at least 1e6, got ${o.params}.`);
    const guess = shapeForParameterCount(o.params);
    shape = guess.shape;
    source =
      guess.name === 'derived'
        ? `--params ${o.params.toLocaleString('en-US')}: derived LLaMA-like shape (head size 128, SwiGLU 8/3, vocabulary 32000)`
        : `--params ${o.params.toLocaleString('en-US')}: published ${guess.name} shape`;
  } else if (o.hidden !== undefined && o.layers !== undefined) {
    shape = {
      model_type: 'llama',
      hidden_size: o.hidden,
      intermediate_size: Math.ceil((8 * o.hidden) / 3 / 256) * 256,
      num_attention_heads: Math.max(1, Math.round(o.hidden / 128)),
      num_key_value_heads: Math.max(1, Math.round(o.hidden / 128)),
      head_dim: o.hidden / Math.max(1, Math.round(o.hidden / 128)),
      num_hidden_layers: o.layers,
      vocab_size: 32000,
      tie_word_embeddings: false,
      qkv_bias: false,
      o_bias: false,
      mlp_bias: false,
    };
    source = 'shape flags';
  } else {
    throw new UsageError(
      'say which model: a model folder (lora plan ./my-model), --params 7e9, or --hidden and --layers.',
    );
  }
  // Explicit flags override whatever was read or assumed.
  const heads = o.heads ?? shape.num_attention_heads;
  const hidden = o.hidden ?? shape.hidden_size;
  shape = {
    ...shape,
    hidden_size: hidden,
    intermediate_size: o.intermediate ?? shape.intermediate_size,
    num_hidden_layers: o.layers ?? shape.num_hidden_layers,
    num_attention_heads: heads,
    num_key_value_heads: o.kvHeads ?? (o.heads !== undefined ? heads : shape.num_key_value_heads),
    head_dim:
      o.headDim ??
      (o.heads !== undefined || o.hidden !== undefined ? hidden / heads : shape.head_dim),
    vocab_size: o.vocab ?? shape.vocab_size,
    tie_word_embeddings: o.tieEmbeddings ?? shape.tie_word_embeddings,
  };
  if (!Number.isInteger(shape.head_dim)) {
    throw new UsageError(
      `hidden ${shape.hidden_size} is not divisible by ${shape.num_attention_heads} heads; pass --heads or --head-dim.`,
    );
  }
  if (shape.num_attention_heads % shape.num_key_value_heads !== 0) {
    throw new UsageError(
      `${shape.num_attention_heads} heads cannot be grouped over ${shape.num_key_value_heads} KV heads; pass a divisor with --kv-heads.`,
    );
  }
  return { shape, source };
}

function render(plan: MemoryPlan, source: string, budget?: number): string {
  const s = plan.shape;
  const fmt = (n: number) => (n === 0 ? '-' : formatBytes(n));
  const lines = [
    `Model: ${source}`,
    `  hidden ${s.hidden_size}, intermediate ${s.intermediate_size}, ${s.num_hidden_layers} layers, ${s.num_attention_heads} heads (${s.num_key_value_heads} KV, head dim ${s.head_dim}), vocabulary ${s.vocab_size}: ${countModelParameters(s).total.toLocaleString('en-US')} parameters`,
    `LoRA r = ${plan.lora.rank} on ${plan.lora.modules} modules: ${plan.trainableLine}`,
    `Quantized base: ${plan.quant.format}${plan.quant.doubleQuant ? ' + double quant' : ''}, ${plan.quant.bitsPerParameter.toFixed(3)} bits per weight (block ${plan.quant.blockSize})`,
    '',
    table(
      [
        'scenario',
        'weights',
        'quant stats',
        'adapters',
        'gradients',
        'optimizer',
        'activations',
        'runtime',
        'total',
        ...(budget === undefined ? [] : [`fits ${formatBytes(budget)}`]),
      ],
      plan.scenarios.map(({ title, memory: m }) => [
        title,
        fmt(m.weights),
        fmt(m.quantStats),
        fmt(m.adapters),
        fmt(m.gradients),
        fmt(m.optimizer),
        fmt(m.activations),
        fmt(m.runtime),
        `${formatBytes(m.total)} (${(m.total / 1e9).toFixed(1)} GB)`,
        ...(budget === undefined ? [] : [m.total <= budget ? 'yes' : 'no']),
      ]),
    ),
    '',
    'Assumptions:',
    ...plan.assumptions.map((a) => `- ${a}`),
  ];
  return lines.join('\n');
}
