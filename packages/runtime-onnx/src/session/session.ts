// Must stay the first import: it sets the environment onnxruntime-node reads when it loads.
import './ort-env.js';
import { writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { type DType, type Tensor, tensor } from '@lora/core';
import * as ort from 'onnxruntime-node';
import { RuntimeError } from '../errors.js';
import { ORT_TENSOR_TYPE } from '../graph/dtypes.js';
import { type SerializedModel, serializeGraphPlaced } from '../graph/serialize.js';
import type { Graph } from '../graph/types.js';
import { type Device, explainCudaFailure, providerPlan } from './device.js';

// The native logger writes colored lines straight to stderr (ignoring NO_COLOR and pipes), e.g.
// on a failed CUDA load; every failure reaches the caller as a RuntimeError or a warning instead.
ort.env.logLevel = 'fatal';
import { WeightFile } from './weight-file.js';

/** Initializers at least this large go to the weight file; smaller ones stay in the protobuf. */
const FILE_MIN_BYTES = 1024;

/** The boundary to onnxruntime-node, injectable so device selection can be tested without a GPU. */
export interface SessionFactory {
  listSupportedBackends(): readonly { name: string; bundled?: boolean }[];
  /** `model`: a path to an `.onnx` file (its external data beside it), or the model's bytes. */
  create(
    model: string | Uint8Array,
    options: ort.InferenceSession.SessionOptions,
  ): Promise<ort.InferenceSession>;
}

/** The real onnxruntime-node. */
export const ortSessionFactory: SessionFactory = {
  listSupportedBackends: () => ort.listSupportedBackends(),
  create: (model, options) =>
    typeof model === 'string'
      ? ort.InferenceSession.create(model, options)
      : ort.InferenceSession.create(model, options),
};

export interface SessionOptions {
  /** `cpu` (default), `cuda`, or `auto` (CUDA if it starts, else CPU with a warning). */
  readonly device?: Device;
  /** CUDA device index (default 0). */
  readonly deviceId?: number;
  /** Threads for one op; default: the machine's available parallelism. */
  readonly intraOpNumThreads?: number;
  /** Let idle onnxruntime threads spin (faster on an otherwise idle machine). Default false. */
  readonly allowSpinning?: boolean;
  /**
   * onnxruntime's graph optimizer: `level` (default `'all'`), optimizers turned off by name
   * (e.g. `['ConstantFolding']`, which training graphs need so 4-bit weights stay packed), and a
   * path where onnxruntime writes the optimized model (for inspection).
   */
  readonly optimization?: {
    readonly level?: 'disabled' | 'basic' | 'extended' | 'all';
    readonly disabledOptimizers?: readonly string[];
    readonly optimizedModelFilePath?: string;
  };
  /** Where `auto` says it fell back to CPU (default: `console.warn`). */
  readonly warn?: (message: string) => void;
  /**
   * Let onnxruntime pre-pack MatMul weights at session creation (its own blocked copy of each).
   * Default false: the weights then stay mapped from the weight file, the session starts in a
   * fraction of the time and holds the weights once; prefill is ~20 % slower, decode the same
   * (measured on onnxruntime-node 1.30, CPU).
   */
  readonly prepackWeights?: boolean;
  /**
   * onnxruntime's CPU memory arena (default true): intermediate tensors come from a pool that
   * grows and is kept for the session's life. Training graphs turn it off: their large transient
   * buffers of many sizes made the arena retain about twice a step's peak (measured on 1.30).
   */
  readonly memoryArena?: boolean;
  /** For tests: replaces onnxruntime-node at the session boundary. */
  readonly factory?: SessionFactory;
}

/** Options for {@link ModelSession.fromGraph}. */
export interface GraphSessionOptions extends SessionOptions {
  /**
   * The weight file the graph's stand-in tensors were spilled to (see {@link WeightFile.spill}).
   * The session takes it over: the remaining initializers are appended, and the folder is
   * removed once the session exists (or creation failed).
   */
  readonly weightFile?: WeightFile;
}

function toOrtTensor(t: Tensor): ort.Tensor {
  const type = ORT_TENSOR_TYPE[t.dtype];
  if (!type) {
    throw new RuntimeError(
      'TENSOR_DTYPE',
      `onnxruntime-node cannot take ${t.dtype} tensors; convert to f32 first.`,
      {
        dtype: t.dtype,
      },
    );
  }
  return new ort.Tensor(type as 'float32', t.data as Float32Array, [...t.shape]);
}

const DTYPE_OF_ORT: Readonly<Record<string, DType>> = Object.fromEntries(
  Object.entries(ORT_TENSOR_TYPE).map(([d, o]) => [o, d as DType]),
);

function fromOrtTensor(t: ort.Tensor): Tensor {
  const dtype = DTYPE_OF_ORT[t.type];
  if (!dtype)
    throw new RuntimeError('TENSOR_DTYPE', `onnxruntime returned an unsupported ${t.type} tensor.`);
  return tensor(dtype, t.dims as number[], t.data as Float32Array as never);
}

/**
 * An onnxruntime session over a graph, speaking `@lora/core` tensors. Holds native memory:
 * call {@link ModelSession.release} when done.
 */
export class ModelSession {
  private constructor(
    private readonly session: ort.InferenceSession,
    /** The provider that actually runs the model. */
    readonly device: 'cpu' | 'cuda',
    readonly inputNames: readonly string[],
    readonly outputNames: readonly string[],
  ) {}

  /**
   * Builds a session from a graph. Initializers of 1 KiB or more are written once to a temporary
   * weight file that onnxruntime maps (not copied through the protobuf or the JavaScript heap);
   * the file is deleted as soon as the session exists.
   */
  static async fromGraph(graph: Graph, options: GraphSessionOptions = {}): Promise<ModelSession> {
    let bytes = 0;
    for (const t of graph.initializers.values()) bytes += t.data.byteLength;
    const file = options.weightFile ?? (await WeightFile.create(undefined, bytes));
    try {
      for (const t of graph.initializers.values())
        if (t.data.byteLength >= FILE_MIN_BYTES) await file.add(t);
      await file.close();
      const modelPath = join(file.dir, 'model.onnx');
      await writeFile(
        modelPath,
        serializeGraphPlaced(graph, (_, t) => file.placement(t)),
      );
      return await ModelSession.open(modelPath, [], options);
    } finally {
      await file.remove();
    }
  }

  /** A session from a model serialized with its external data in memory. */
  static async fromSerialized(
    model: SerializedModel,
    options: SessionOptions = {},
  ): Promise<ModelSession> {
    return ModelSession.open(
      model.model,
      model.externalData.map((c) => ({ path: c.path, data: c.data })),
      options,
    );
  }

  private static async open(
    model: string | Uint8Array,
    externalData: ort.InferenceSession.SessionOptions['externalData'],
    options: SessionOptions,
  ): Promise<ModelSession> {
    const factory = options.factory ?? ortSessionFactory;
    const plan = providerPlan(options.device ?? 'cpu', factory.listSupportedBackends());
    const warn = options.warn ?? ((m: string) => console.warn(m));
    const base: ort.InferenceSession.SessionOptions = {
      graphOptimizationLevel: options.optimization?.level ?? 'all',
      ...(options.optimization?.optimizedModelFilePath
        ? { optimizedModelFilePath: options.optimization.optimizedModelFilePath }
        : {}),
      intraOpNumThreads: options.intraOpNumThreads ?? availableParallelism(),
      enableCpuMemArena: options.memoryArena ?? true,
      logSeverityLevel: 4,
      // Idle pool threads sleep instead of spinning: spinning wins on an idle machine, loses badly on a busy one.
      extra: {
        session: {
          intra_op: { allow_spinning: options.allowSpinning ? '1' : '0' },
          disable_prepacking: options.prepackWeights ? '0' : '1',
        },
        ...(options.optimization?.disabledOptimizers?.length
          ? {
              optimization: {
                disable_specified_optimizers: options.optimization.disabledOptimizers.join(','),
              },
            }
          : {}),
      },
      ...(externalData && externalData.length > 0 ? { externalData } : {}),
    };
    for (const provider of plan) {
      const executionProviders: ort.InferenceSession.ExecutionProviderConfig[] =
        provider === 'cuda' ? [{ name: 'cuda', deviceId: options.deviceId ?? 0 }] : ['cpu'];
      try {
        const s = await factory.create(model, { ...base, executionProviders });
        return new ModelSession(s, provider, s.inputNames, s.outputNames);
      } catch (error) {
        if (provider !== 'cuda') {
          throw new RuntimeError(
            'SESSION_FAILED',
            `onnxruntime could not create the session: ${String(error)}`,
            {},
            {
              cause: error,
            },
          );
        }
        const why = explainCudaFailure(error);
        if (plan.length === 1) {
          throw new RuntimeError(
            'DEVICE_UNAVAILABLE',
            `${why}, or use --device cpu.`,
            {},
            { cause: error },
          );
        }
        warn(`${why}. Falling back to CPU.`);
      }
    }
    throw new RuntimeError('SESSION_FAILED', 'No execution provider could run the model.');
  }

  /** Runs the model. Feeds and results are core tensors (int64 as BigInt64Array). */
  async run(
    feeds: Readonly<Record<string, Tensor>>,
    fetches?: readonly string[],
  ): Promise<Record<string, Tensor>> {
    const ortFeeds: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = toOrtTensor(t);
    const results = fetches
      ? await this.session.run(ortFeeds, [...fetches])
      : await this.session.run(ortFeeds);
    const out: Record<string, Tensor> = {};
    for (const [name, t] of Object.entries(results)) out[name] = fromOrtTensor(t);
    return out;
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
