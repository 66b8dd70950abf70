import { existsSync } from 'node:fs';
import {
  buildLlamaModelGraph,
  mergedWeights,
  openLlamaFolder,
  saveModel,
} from '@lora/runtime-onnx';
import type { QuantFormat } from '@lora/quant';
import { type Command, Option } from 'commander';
import { UsageError } from '../errors.js';
// --adapter / --merged (helper E): adapters baked into the exported weights.
import { loadAdapterSet } from './generate-adapters.js';
import {
  type CommonOptions,
  checkOutput,
  emit,
  formatBytes,
  log,
  parsePositiveInt,
} from '../output.js';

interface ExportOnnxOptions extends CommonOptions {
  model?: string;
  output: string;
  quant?: QuantFormat;
  blockSize?: number;
  logits: 'all' | 'last';
  externalData?: boolean;
  adapter?: string[];
  merged?: boolean;
}

export interface ExportOnnxReport {
  model: string;
  output: string;
  externalData?: string;
  quant: QuantFormat | null;
  bytes: number;
  nodes: number;
  ops: Record<string, number>;
  inputs: { name: string; dtype: string; shape: (number | string)[] }[];
  outputs: { name: string; dtype: string; shape: (number | string)[] }[];
}

export function registerExportOnnx(program: Command): void {
  program
    .command('export-onnx')
    .description(
      'Write a LLaMA-family model folder as an ONNX decoder with a KV cache (input_ids, attention_mask, position_ids, past_key_values.* in; logits, present.* out), optionally with a 4-bit base.',
    )
    .option(
      '--model <dir>',
      'model folder: config.json + model.safetensors (or shards), float or written by lora quantize',
    )
    .requiredOption(
      '-o, --output <file>',
      'the .onnx file to write (weights above 1.5 GB go to <file>.data beside it)',
    )
    .addOption(
      new Option(
        '--quant <format>',
        'quantize the decoder linears on export (nf4/fp4: MatMulBnb4, int4/uint4: MatMulNBits)',
      ).choices(['nf4', 'fp4', 'int4', 'uint4']),
    )
    .option(
      '--block-size <n>',
      'values per 4-bit block (default 64 for nf4/fp4, 32 for int4/uint4)',
      parsePositiveInt('block-size'),
    )
    .addOption(
      new Option(
        '--logits <which>',
        'logits for every position, or only the last one (smaller, for generation)',
      )
        .choices(['all', 'last'])
        .default('all'),
    )
    .option(
      '--external-data',
      'always write the weights to <file>.data (default: only above 1.5 GB)',
    )
    .option(
      '--adapter <dir[:scale]>',
      'LoRA adapter (PEFT folder or .onnx_adapter) to merge into the weights (with --merged); repeatable',
      (value: string, previous: string[] | undefined) => [...(previous ?? []), value],
    )
    .option(
      '--merged',
      'bake the --adapter set into the weights: W + scale * s * B A (zero run-time overhead)',
    )
    .option('--json', 'print one JSON document')
    .option('--quiet', 'no progress on stderr')
    .option('--force', 'overwrite the output')
    .action(async (options: ExportOnnxOptions) => {
      const report = await exportOnnx(options);
      emit(options, report, () => renderReport(report));
    });
}

async function exportOnnx(options: ExportOnnxOptions): Promise<ExportOnnxReport> {
  if (!options.model) {
    throw new UsageError(
      '--model <dir> is required: the model folder to export (config.json + safetensors).',
    );
  }
  if (!existsSync(options.model)) throw new UsageError(`--model ${options.model} does not exist.`);
  if (options.adapter?.length && !options.merged) {
    throw new UsageError(
      '--adapter needs --merged (the adapters are baked into the weights); LoRA-input export is not available yet.',
    );
  }
  if (options.merged && !options.adapter?.length)
    throw new UsageError('--merged needs at least one --adapter.');
  checkOutput(options.output, options);
  checkOutput(`${options.output}.data`, options);
  log(options, `reading ${options.model}`);
  const opened = await openLlamaFolder(options.model);
  const { config } = opened;
  const source = options.merged
    ? mergedWeights(opened.source, await loadAdapterSet(options.adapter ?? []))
    : opened.source;
  let graph: Awaited<ReturnType<typeof buildLlamaModelGraph>>;
  try {
    graph = await buildLlamaModelGraph(config, source, {
      quant: options.quant && { format: options.quant, blockSize: options.blockSize },
      logits: options.logits,
    });
  } finally {
    await source.close();
  }
  log(options, `writing ${options.output}`);
  const saved = await saveModel(graph, options.output, {
    externalData: options.externalData ? true : 'auto',
  });
  const ops: Record<string, number> = {};
  for (const n of graph.nodes) ops[n.op] = (ops[n.op] ?? 0) + 1;
  const io = (v: { name: string; dtype: string; shape: readonly (number | string)[] }) => ({
    name: v.name,
    dtype: v.dtype,
    shape: [...v.shape],
  });
  return {
    model: options.model,
    output: saved.modelPath,
    externalData: saved.dataPath,
    quant: options.quant ?? null,
    bytes: saved.bytes,
    nodes: graph.nodes.length,
    ops,
    inputs: graph.inputs.map(io),
    outputs: graph.outputs.map(io),
  };
}

function renderReport(r: ExportOnnxReport): string {
  const shape = (s: (number | string)[]) => `[${s.join(', ')}]`;
  const ioLine = (v: ExportOnnxReport['inputs'][number]) =>
    `  ${v.name} ${v.dtype} ${shape(v.shape)}`;
  const layerIo = (list: ExportOnnxReport['inputs']) => {
    // One line for the per-layer cache tensors instead of 2 x layers.
    const plain = list.filter((v) => !/^(past_key_values|present)\.\d+\./.test(v.name));
    const cache = list.filter((v) => /^(past_key_values|present)\.\d+\./.test(v.name));
    const lines = plain.map(ioLine);
    if (cache.length > 0) {
      const pattern = cache[0].name.replace(/\.\d+\.(key|value)$/, '.{layer}.{key,value}');
      lines.push(`  ${pattern} ${cache[0].dtype} ${shape(cache[0].shape)} (x${cache.length})`);
    }
    return lines;
  };
  const opSummary = Object.entries(r.ops)
    .sort((a, b) => b[1] - a[1])
    .map(([op, n]) => `${op} ${n}`)
    .join(', ');
  return [
    `wrote ${r.output}${r.externalData ? ` (+ ${r.externalData})` : ''}: ${formatBytes(r.bytes)}, ${r.nodes} nodes${r.quant ? `, ${r.quant} base` : ''}`,
    'inputs:',
    ...layerIo(r.inputs),
    'outputs:',
    ...layerIo(r.outputs),
    `ops: ${opSummary}`,
  ].join('\n');
}
