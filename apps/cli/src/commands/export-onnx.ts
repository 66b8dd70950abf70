import { existsSync } from 'node:fs';
import { outputMarker } from '@lora/core';
import {
  buildLlamaModelGraph,
  createLoraHook,
  type LoraTargets,
  mergedWeights,
  openLlamaFolder,
  saveModel,
  storedQuantization,
} from '@lora/runtime-onnx';
import { QUANT_FORMATS, type QuantFormat } from '@lora/quant';
import { type Command, Option } from 'commander';
import { UsageError } from '../errors.js';
// --adapter / --merged: adapters baked into the exported weights.
import { loadAdapterSet } from './generate-adapters.js';
import { parseAdapterSpec } from '../adapter-spec.js';
import {
  type CommonOptions,
  checkOutput,
  emit,
  formatBytes,
  log,
  parsePositiveInt,
  FORCE_HELP,
} from '../output.js';
import { resolveModelOrBundled } from '../model-source.js';
import { BNB4_FORMAT_LIST, NBITS_FORMAT_LIST } from '../quant-formats.js';

/**
 * The operators an export may use: `standard` (only the ONNX standard's default domain: runs on
 * any ONNX runtime) or `ort` (onnxruntime's com.microsoft contrib operators: FusedMatMul for float
 * linears, MatMulNBits / MatMulBnb4 for 4-bit ones).
 */
type OpsChoice = 'standard' | 'ort';

interface ExportOnnxOptions extends CommonOptions {
  model?: string;
  output: string;
  ops?: OpsChoice;
  quant?: QuantFormat;
  blockSize?: number;
  logits: 'all' | 'last';
  externalData?: boolean;
  adapter?: string[];
  merged?: boolean;
  loraInputs?: boolean;
  loraTargets: string;
  loraRank: number;
  loraSlots: number;
}

export interface ExportOnnxReport {
  model: string;
  output: string;
  externalData?: string;
  /** Which operator set the file uses (see `--ops`). */
  opSet: OpsChoice;
  quant: QuantFormat | null;
  bytes: number;
  nodes: number;
  /** Node count per op type; contrib ops carry their domain (`com.microsoft.FusedMatMul`). */
  ops: Record<string, number>;
  inputs: { name: string; dtype: string; shape: (number | string)[] }[];
  outputs: { name: string; dtype: string; shape: (number | string)[] }[];
}

export function registerExportOnnx(program: Command): void {
  program
    .command('export-onnx')
    .description(
      'Write a LLaMA-family model folder as an ONNX decoder with a KV cache (input_ids, attention_mask, position_ids, past_key_values.* in; logits, present.* out), optionally with a 4-bit base. Float exports use only standard ONNX operators by default, so they run on any ONNX runtime; 4-bit exports need onnxruntime (its com.microsoft MatMulNBits / MatMulBnb4: standard ONNX has no 4-bit matrix product).',
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
        '--ops <set>',
        'operators the file may use: standard (ONNX default domain only, linears as MatMul on [in, out] weights transposed at export: runs on any ONNX runtime) or ort (onnxruntime com.microsoft contrib ops: FusedMatMul on the checkpoint [out, in] weights, the graph lora generate runs; nothing transposed, so a slightly faster export; onnxruntime only). Default: standard for float exports (a file for other runtimes must run on them; onnxruntime runs both at the same speed), ort for 4-bit ones (standard ONNX has no 4-bit matrix product)',
      ).choices(['standard', 'ort']),
    )
    .addOption(
      new Option(
        '--quant <format>',
        `quantize the decoder linears on export (${BNB4_FORMAT_LIST}: MatMulBnb4, ${NBITS_FORMAT_LIST}: MatMulNBits; onnxruntime only)`,
      ).choices(QUANT_FORMATS),
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
    .option(
      '--lora-inputs',
      'add LoRA branches whose weights are graph inputs (lora.index, lora.scale, lora.*.A, lora.*.B): adapters are fed at run time',
    )
    .option(
      '--lora-targets <list>',
      'with --lora-inputs: comma-separated module names (suffix match) or all-linear',
      'q_proj,v_proj',
    )
    .option(
      '--lora-rank <r>',
      'with --lora-inputs: slot rank (lower ranks are zero-padded)',
      parsePositiveInt('lora-rank'),
      16,
    )
    .option(
      '--lora-slots <n>',
      'with --lora-inputs: adapter slots, slot 0 being "no adapter"',
      parsePositiveInt('lora-slots'),
      2,
    )
    .option('--json', 'print one JSON document')
    .option('--quiet', 'no progress on stderr')
    .option('--force', FORCE_HELP)
    .option('--revision <rev>', 'for a hub model name: branch, tag or commit (default main)')
    .action(async (options: ExportOnnxOptions) => {
      const report = await exportOnnx(options);
      emit(options, report, () => renderReport(report));
    });
}

async function exportOnnx(options: ExportOnnxOptions): Promise<ExportOnnxReport> {
  options.model = await resolveModelOrBundled(options.model, options);
  if (!existsSync(options.model)) throw new UsageError(`--model ${options.model} does not exist.`);
  if (options.adapter?.length && !options.merged) {
    throw new UsageError(
      '--adapter needs --merged (the adapters are baked into the weights); for adapters fed at run time use --lora-inputs.',
    );
  }
  if (options.loraInputs && options.merged) {
    throw new UsageError('--merged and --lora-inputs exclude each other: choose one.');
  }
  if (options.loraInputs && options.loraSlots < 2) {
    throw new UsageError('--lora-slots must be at least 2 (slot 0 is "no adapter").');
  }
  if (options.merged && !options.adapter?.length)
    throw new UsageError('--merged needs at least one --adapter.');
  if (options.ops === 'standard' && options.quant) {
    throw new UsageError(
      `--ops standard and --quant ${options.quant} exclude each other: 4-bit linears exist only as onnxruntime's com.microsoft MatMulNBits / MatMulBnb4 (standard ONNX has no 4-bit matrix product). Use --ops ort (or leave --ops out) for a 4-bit export, or drop --quant for a float export that any ONNX runtime runs.`,
    );
  }
  const inputs = [options.model, ...(options.adapter ?? []).map((a) => parseAdapterSpec(a).dir)];
  // The model and its external data are one output.
  checkOutput(options.output, options, {
    writer: 'export-onnx',
    inputs,
    companions: [`${options.output}.data`],
  });
  log(options, `reading ${options.model}`);
  const opened = await openLlamaFolder(options.model);
  const { config } = opened;
  // A 4-bit model (quantized now, or a folder written by lora quantize) needs onnxruntime's
  // operators; a float model gets the standard ones unless --ops says otherwise.
  const stored4bit = opened.source
    .names()
    .find((n) => storedQuantization(opened.source, n) !== undefined);
  if (options.ops === 'standard' && stored4bit && !options.merged) {
    await opened.source.close();
    throw new UsageError(
      `--ops standard: ${options.model} holds 4-bit linears (${stored4bit}, as lora quantize writes them), which only onnxruntime's com.microsoft MatMulNBits / MatMulBnb4 run (standard ONNX has no 4-bit matrix product). Use --ops ort (or leave --ops out), or export the float model (lora dequantize it first).`,
    );
  }
  const fourBit = options.quant !== undefined || stored4bit !== undefined;
  const opSet: OpsChoice = options.ops ?? (fourBit ? 'ort' : 'standard');
  const source = options.merged
    ? mergedWeights(opened.source, await loadAdapterSet(options.adapter ?? []))
    : opened.source;
  let graph: Awaited<ReturnType<typeof buildLlamaModelGraph>>;
  try {
    graph = await buildLlamaModelGraph(config, source, {
      quant: options.quant && { format: options.quant, blockSize: options.blockSize },
      ops: opSet,
      logits: options.logits,
      linearHook: options.loraInputs
        ? createLoraHook({
            targets: parseLoraTargets(options.loraTargets),
            slots: options.loraSlots,
            rank: options.loraRank,
          }).hook
        : undefined,
    });
  } finally {
    await source.close();
  }
  log(options, `writing ${options.output}`);
  const saved = await saveModel(graph, options.output, {
    externalData: options.externalData ? true : 'auto',
    metadata: outputMarker('export-onnx'),
  });
  const ops: Record<string, number> = {};
  for (const n of graph.nodes) {
    const op = n.domain ? `${n.domain}.${n.op}` : n.op;
    ops[op] = (ops[op] ?? 0) + 1;
  }
  const io = (v: { name: string; dtype: string; shape: readonly (number | string)[] }) => ({
    name: v.name,
    dtype: v.dtype,
    shape: [...v.shape],
  });
  return {
    model: options.model,
    output: saved.modelPath,
    externalData: saved.dataPath,
    opSet,
    quant: options.quant ?? null,
    bytes: saved.bytes,
    nodes: graph.nodes.length,
    ops,
    inputs: graph.inputs.map(io),
    outputs: graph.outputs.map(io),
  };
}

function parseLoraTargets(list: string): LoraTargets {
  const names = list
    .split(',')
    .map((t) => t.trim())
    .filter(Boolean);
  if (names.length === 0) throw new UsageError('--lora-targets is empty.');
  return names.length === 1 && names[0] === 'all-linear' ? 'all-linear' : names;
}

function renderReport(r: ExportOnnxReport): string {
  const shape = (s: (number | string)[]) => `[${s.join(', ')}]`;
  const ioLine = (v: ExportOnnxReport['inputs'][number]) =>
    `  ${v.name} ${v.dtype} ${shape(v.shape)}`;
  const layerIo = (list: ExportOnnxReport['inputs']) => {
    // One line for the per-layer cache tensors instead of 2 x layers.
    const plain = list.filter(
      (v) => !/^(past_key_values|present)\.\d+\./.test(v.name) && !/^lora\..*\.[AB]$/.test(v.name),
    );
    const loraWeights = list.filter((v) => /^lora\..*\.[AB]$/.test(v.name));
    const cache = list.filter((v) => /^(past_key_values|present)\.\d+\./.test(v.name));
    const lines = plain.map(ioLine);
    if (cache.length > 0) {
      const pattern = cache[0].name.replace(/\.\d+\.(key|value)$/, '.{layer}.{key,value}');
      lines.push(`  ${pattern} ${cache[0].dtype} ${shape(cache[0].shape)} (x${cache.length})`);
    }
    if (loraWeights.length > 0) {
      lines.push(
        `  lora.{module}.{A,B} ${loraWeights[0].dtype} (x${loraWeights.length}; --json lists them)`,
      );
    }
    return lines;
  };
  const opSummary = Object.entries(r.ops)
    .sort((a, b) => b[1] - a[1])
    .map(([op, n]) => `${op} ${n}`)
    .join(', ');
  return [
    `wrote ${r.output}${r.externalData ? ` (+ ${r.externalData})` : ''}: ${formatBytes(r.bytes)}, ${r.nodes} nodes${r.quant ? `, ${r.quant} base` : ''}, ${r.opSet === 'standard' ? 'standard ONNX operators only (any ONNX runtime)' : 'onnxruntime operators (com.microsoft: needs onnxruntime)'}`,
    'inputs:',
    ...layerIo(r.inputs),
    'outputs:',
    ...layerIo(r.outputs),
    `ops: ${opSummary}`,
  ].join('\n');
}
