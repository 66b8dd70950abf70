import { existsSync, statSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import {
  type AdapterDescription,
  describeAdapter,
  peftParameterCounts,
  RESIDUAL_FILE,
} from '@lora/adapters';
import {
  assertRegularInputs,
  readJsonFile,
  type SafetensorsSummary,
  summarizeSafetensors,
} from '@lora/core';
import type { OnnxModelSummary } from '@lora/runtime-onnx';
import type { Command } from 'commander';
import { UsageError } from '../errors.js';
import {
  type QuantizedFileSummary,
  summarizeQuantizedWeights,
} from '../inspect/quantized-weights.js';
import { type CommonOptions, emit, formatBytes, table } from '../output.js';
import { resolveModelOrBundled } from '../model-source.js';

interface InspectOptions extends CommonOptions {
  tensors?: boolean;
  base?: string;
}

export function registerInspect(program: Command): void {
  program
    .command('inspect')
    .argument(
      '[path]',
      'default: the bundled model; a .safetensors or .onnx file, a model folder (config.json) or a PEFT adapter folder (adapter_config.json)',
    )
    .description(
      'Show tensors, dtypes, shapes, parameter counts, LoRA config and bytes on disk and in memory.',
    )
    .option('--tensors', 'list every tensor (the default for single files and adapters)')
    .option(
      '--base <model>',
      'for an adapter: the base model folder, to show the trainable share as PEFT prints it',
    )
    .option('--json', 'print one JSON document')
    .option('--revision <rev>', 'for a hub model name: branch, tag or commit (default main)')
    .action(async (path: string | undefined, options: InspectOptions) => {
      const report = await inspectPath(await resolveModelOrBundled(path, options), options.base);
      emit(options, report, () => renderReport(report, options));
    });
}

export type InspectReport =
  | { kind: 'safetensors'; file: SafetensorsSummary; quantized?: QuantizedFileSummary }
  | {
      kind: 'model';
      path: string;
      config: ModelConfigSummary;
      files: SafetensorsSummary[];
      /** Per file, when it holds bitsandbytes 4-bit weights. */
      quantized: (QuantizedFileSummary | null)[];
      /** Parameters by logical shape (4-bit weights counted as the weights they stand for). */
      params: number;
      bytes: number;
      /** Bytes of a merge's unmerge residual in the folder (not model weights). */
      residualBytes?: number;
    }
  | { kind: 'adapter'; adapter: AdapterDescription; trainable?: TrainableShare }
  | { kind: 'onnx'; model: OnnxModelSummary };

/** PEFT's print_trainable_parameters figures for an adapter on a given base. */
interface TrainableShare {
  trainableParams: number;
  allParams: number;
  trainablePercent: number;
  summary: string;
}

interface ModelConfigSummary {
  modelType?: string;
  architectures?: string[];
  hiddenSize?: number;
  intermediateSize?: number;
  numLayers?: number;
  numHeads?: number;
  numKvHeads?: number;
  headDim?: number;
  vocabSize?: number;
  tieWordEmbeddings?: boolean;
  torchDtype?: string;
  quantizationConfig?: unknown;
}

/** Works out what `path` is and summarises it. */
export async function inspectPath(path: string, base?: string): Promise<InspectReport> {
  if (!existsSync(path)) throw new UsageError(`${path} does not exist.`);
  assertRegularInputs([path, ...(base ? [base] : [])]);
  if (statSync(path).isFile()) {
    if (path.endsWith('.safetensors')) {
      const file = await summarizeSafetensors(path);
      return { kind: 'safetensors', file, quantized: await summarizeQuantizedWeights(file) };
    }
    if (path.endsWith('.onnx')) {
      // Loaded on demand: the runtime package brings onnxruntime, which other inspections do not need.
      const { describeOnnxModel } = await import('@lora/runtime-onnx');
      return { kind: 'onnx', model: await describeOnnxModel(path) };
    }
    throw new UsageError(
      `${path}: cannot inspect this kind of file (expected .safetensors, .onnx, or a folder).`,
    );
  }
  if (existsSync(join(path, 'adapter_config.json'))) {
    const adapter = await describeAdapter(path);
    if (!base) return { kind: 'adapter', adapter };
    const model = await inspectModel(base);
    if (model.kind !== 'model') throw new UsageError(`--base ${base} is not a model folder.`);
    const { trainableParams, allParams } = peftParameterCounts(adapter, model.params);
    const trainablePercent = (100 * trainableParams) / allParams;
    const fmt = (n: number) => n.toLocaleString('en-US');
    return {
      kind: 'adapter',
      adapter,
      trainable: {
        trainableParams,
        allParams,
        trainablePercent,
        summary: `trainable params: ${fmt(trainableParams)} || all params: ${fmt(allParams)} || trainable%: ${trainablePercent.toFixed(4)}`,
      },
    };
  }
  if (existsSync(join(path, 'config.json'))) return inspectModel(path);
  throw new UsageError(
    `${path}: no config.json or adapter_config.json in this folder; nothing to inspect.`,
  );
}

async function inspectModel(dir: string): Promise<Extract<InspectReport, { kind: 'model' }>> {
  const raw = (await readJsonFile(join(dir, 'config.json'))) as Record<string, unknown>;
  const num = (k: string) => (typeof raw[k] === 'number' ? (raw[k] as number) : undefined);
  const heads = num('num_attention_heads');
  const hidden = num('hidden_size');
  const config: ModelConfigSummary = {
    modelType: raw.model_type as string | undefined,
    architectures: raw.architectures as string[] | undefined,
    hiddenSize: hidden,
    intermediateSize: num('intermediate_size'),
    numLayers: num('num_hidden_layers'),
    numHeads: heads,
    numKvHeads: num('num_key_value_heads') ?? heads,
    headDim: num('head_dim') ?? (hidden && heads ? hidden / heads : undefined),
    vocabSize: num('vocab_size'),
    tieWordEmbeddings: raw.tie_word_embeddings as boolean | undefined,
    torchDtype: (raw.torch_dtype ?? raw.dtype) as string | undefined,
    quantizationConfig: raw.quantization_config,
  };
  const weightFiles = await modelWeightFiles(dir);
  const files = await Promise.all(weightFiles.map((n) => summarizeSafetensors(join(dir, n))));
  const residualPath = join(dir, RESIDUAL_FILE);
  const residual = existsSync(residualPath) ? statSync(residualPath).size : undefined;
  const quantized = await Promise.all(
    files.map(async (f) => (await summarizeQuantizedWeights(f)) ?? null),
  );
  return {
    kind: 'model',
    path: dir,
    config,
    files,
    quantized,
    params: files.reduce((a, f, i) => a + (quantized[i]?.params ?? f.params), 0),
    bytes: files.reduce((a, f) => a + f.fileBytes, 0),
    ...(residual !== undefined ? { residualBytes: residual } : {}),
  };
}

/**
 * The safetensors files that hold the model's weights: the shards its index lists (every one
 * must exist), or else every `.safetensors` file except a merge's unmerge residual.
 */
async function modelWeightFiles(dir: string): Promise<string[]> {
  const names = await readdir(dir);
  const index = names.find((n) => n.endsWith('.safetensors.index.json'));
  if (!index) return names.filter((n) => n.endsWith('.safetensors') && n !== RESIDUAL_FILE).sort();
  const weightMap = ((await readJsonFile(join(dir, index))) as { weight_map?: unknown } | null)
    ?.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap))
    throw new UsageError(`${join(dir, index)}: no "weight_map" object; the index is not usable.`);
  const shards = [
    ...new Set(Object.values(weightMap as Record<string, unknown>).map(String)),
  ].sort();
  const missing = shards.filter((f) => !names.includes(f));
  if (missing.length > 0) {
    throw new UsageError(
      `${join(dir, index)} lists shard(s) that are not in the folder: ${missing.join(', ')}. The download is incomplete.`,
    );
  }
  return shards;
}

function renderTensors(f: SafetensorsSummary): string {
  return table(
    ['tensor', 'dtype', 'shape', 'params', 'bytes'],
    f.tensors.map((t) => [t.name, t.dtype, `[${t.shape.join(', ')}]`, t.params, t.bytes]),
  );
}

function renderQuantized(q: QuantizedFileSummary): string {
  const w = q.weights;
  const formats = [
    ...new Set(
      w.map((x) => `${x.format}${x.doubleQuant ? ' + double quant' : ''}, block ${x.blockSize}`),
    ),
  ];
  const layouts = [...new Set(w.map((x) => x.layout))];
  const params = w.reduce((a, x) => a + x.params, 0);
  const bytes = w.reduce((a, x) => a + x.storedBytes, 0);
  return [
    `4-bit weights (${layouts.join(', ')} layout): ${w.length}, ${formats.join('; ')}; ${params.toLocaleString('en-US')} parameters in ${formatBytes(bytes)} (${((bytes * 8) / params).toFixed(3)} bits per parameter)`,
    table(
      ['weight', 'layout', 'format', 'shape', 'params', 'stored bytes', 'bits/param'],
      w.map((x) => [
        x.name,
        x.layout,
        x.format,
        `[${x.shape.join(', ')}]`,
        x.params,
        x.storedBytes,
        x.bitsPerParam,
      ]),
    ),
  ].join('\n');
}

function renderFile(f: SafetensorsSummary, withTensors: boolean): string {
  const dtypes = Object.entries(f.bytesByDType)
    .map(([d, b]) => `${d} ${formatBytes(b ?? 0)}`)
    .join(', ');
  const meta = Object.entries(f.metadata)
    .map(([k, v]) => `${k}=${v}`)
    .join(', ');
  const lines = [
    `${f.path}: ${f.tensors.length} tensors, ${f.params.toLocaleString('en-US')} parameters, ${formatBytes(f.fileBytes)} on disk (${dtypes || 'no data'})`,
  ];
  if (meta) lines.push(`metadata: ${meta}`);
  if (withTensors) lines.push('', renderTensors(f));
  return lines.join('\n');
}

function renderAdapter(a: AdapterDescription, trainable?: TrainableShare): string {
  const targets = Array.isArray(a.targets) ? a.targets.join(', ') : String(a.targets);
  const flags = [
    a.useRslora && 'rsLoRA',
    a.useDora && 'DoRA',
    a.fanInFanOut && 'fan_in_fan_out',
  ].filter(Boolean);
  const ranks = Object.keys(a.ranks).length > 1 ? ` (ranks: ${JSON.stringify(a.ranks)})` : '';
  const lines = [
    `${a.path}: LoRA adapter, r ${a.r}, alpha ${a.alpha}, scaling ${a.scaling}${flags.length ? `, ${flags.join(', ')}` : ''}${ranks}`,
    `targets: ${targets} -> ${a.modules.length} modules`,
    `LoRA parameters: ${a.loraParameterCount.toLocaleString('en-US')}${a.savedParameterCount ? ` (+${a.savedParameterCount.toLocaleString('en-US')} in saved modules: ${(a.modulesToSave ?? []).join(', ') || 'undeclared'})` : ''}`,
    `dtypes: ${a.dtypes.join(', ')}; ${formatBytes(a.bytesOnDisk.total)} on disk`,
  ];
  if (trainable) lines.push(trainable.summary);
  for (const w of a.warnings) lines.push(`warning: ${w}`);
  lines.push(
    '',
    table(
      ['tensor', 'dtype', 'shape', 'role'],
      a.tensors.map((t) => [t.name, t.dtype, `[${t.shape.join(', ')}]`, t.role]),
    ),
  );
  return lines.join('\n');
}

function renderOnnx(m: OnnxModelSummary): string {
  const io = (v: OnnxModelSummary['inputs'][number]) =>
    `  ${v.name} ${v.dtype} [${v.shape.join(', ')}]`;
  const ops = Object.entries(m.ops)
    .sort((a, b) => b[1] - a[1])
    .map(([op, n]) => `${op} ${n}`)
    .join(', ');
  return [
    `${m.path}: ONNX IR ${m.irVersion}${m.producer ? ` from ${m.producer}` : ''}, opsets ${m.opsets.map((o) => `${o.domain} ${o.version}`).join(', ')}; ${formatBytes(m.fileBytes)} on disk`,
    `${m.initializers} initializers, ${m.initializerElements.toLocaleString('en-US')} elements (${formatBytes(m.initializerBytes.inline)} inline, ${formatBytes(m.initializerBytes.external)} external)`,
    `inputs (${m.inputs.length}):`,
    ...m.inputs.map(io),
    `outputs (${m.outputs.length}):`,
    ...m.outputs.map(io),
    `${m.nodes} nodes: ${ops}`,
  ].join('\n');
}

function renderReport(r: InspectReport, options: InspectOptions): string {
  if (r.kind === 'onnx') return renderOnnx(r.model);
  if (r.kind === 'safetensors') {
    const text = renderFile(r.file, true);
    return r.quantized ? `${text}\n\n${renderQuantized(r.quantized)}` : text;
  }
  if (r.kind === 'adapter') return renderAdapter(r.adapter, r.trainable);
  const c = r.config;
  const shape = [
    c.hiddenSize !== undefined && `hidden ${c.hiddenSize}`,
    c.intermediateSize !== undefined && `intermediate ${c.intermediateSize}`,
    c.numLayers !== undefined && `${c.numLayers} layers`,
    c.numHeads !== undefined && `${c.numHeads} heads (${c.numKvHeads} key/value)`,
    c.headDim !== undefined && `head_dim ${c.headDim}`,
    c.vocabSize !== undefined && `vocab ${c.vocabSize}`,
    c.tieWordEmbeddings && 'tied embeddings',
  ].filter(Boolean);
  const lines = [
    `${r.path}: ${c.modelType ?? 'unknown'} model${c.architectures ? ` (${c.architectures.join(', ')})` : ''}`,
    shape.join(', '),
    `${r.params.toLocaleString('en-US')} parameters in ${r.files.length} file(s), ${formatBytes(r.bytes)} on disk; in memory: f32 ${formatBytes(r.params * 4)}, f16/bf16 ${formatBytes(r.params * 2)}`,
  ];
  if (c.quantizationConfig)
    lines.push(`quantization_config: ${JSON.stringify(c.quantizationConfig)}`);
  if (r.residualBytes !== undefined)
    lines.push(
      `${RESIDUAL_FILE}: ${formatBytes(r.residualBytes)} (what \`lora unmerge\` needs; not counted as weights)`,
    );
  r.files.forEach((f, i) => {
    lines.push('', renderFile(f, Boolean(options.tensors)));
    const q = r.quantized[i];
    if (q) lines.push(renderQuantized(q));
  });
  return lines.join('\n');
}
