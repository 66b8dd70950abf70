import { RuntimeError } from '../../errors.js';
import { GraphBuilder } from '../../graph/builder.js';
import { crossEntropyLoss } from '../../graph/composites/index.js';
import { gradients } from '../../graph/gradients.js';
import * as op from '../../graph/ops.js';
import type { Graph, Value } from '../../graph/types.js';
import {
  type TrainableLoraOptions,
  type TrainableLoraSite,
  trainableLoraHook,
} from '../../training/lora-branch.js';
import { QUANTIZED_BACKWARD } from '../../training/quantized-backward.js';
import type { LlamaConfig } from './config.js';
import { attentionBias, emitDecoderStack, type LlamaModelValues, ropeTables } from './decoder.js';
import type { LlamaGraphWeights } from './graph.js';
import { frozenLlamaValues, trainableLlamaValues } from './model-values.js';

/** Input and output names of the training graphs. */
export const TRAINING_IO = {
  /** i64 [batch, sequence] */
  inputIds: 'input_ids',
  /** i64 [batch, sequence]: 1 real token, 0 padding. */
  attentionMask: 'attention_mask',
  /** i64 [batch, sequence]: rotary positions. */
  positionIds: 'position_ids',
  /** f32 [batch, sequence]: weight of predicting token t (from position t - 1); column 0 is unused. */
  lossWeights: 'loss_weights',
  /** f32 []: sum over tokens of weight * cross-entropy. */
  lossSum: 'loss_sum',
  /** f32 []: sum of the weights that entered the loss (the label-token count for 0/1 weights). */
  tokenCount: 'token_count',
  /** f32, the parameter's shape: d(loss_sum)/d(parameter). */
  grad: (parameter: string) => `grad.${parameter}`,
} as const;

/** Static sizes of a training graph: fixed per session. */
export interface TrainingShape {
  /** Rows per step (micro-batch). */
  readonly batch: number;
  /** Tokens per row (at least 2: the first token is only ever an input). */
  readonly sequence: number;
}

/** A trainable tensor of a training graph: a graph input whose gradient is an output. */
export interface TrainingParameter {
  /** Input name (PEFT names for LoRA, `<module>.lora_A.weight`; HF names for full fine-tuning). */
  readonly name: string;
  readonly shape: readonly number[];
}

/** A training graph and what its caller needs to feed it. */
export interface LlamaTrainingGraph {
  readonly graph: Graph;
  readonly shape: TrainingShape;
  /** In input order; gradient outputs are `TRAINING_IO.grad(name)`. */
  readonly parameters: readonly TrainingParameter[];
  /** LoRA branches (LoRA / QLoRA graphs), with their dropout-mask inputs. */
  readonly loraSites: readonly TrainableLoraSite[];
}

/**
 * Sum of weighted next-token cross-entropies: logits [B, T-1, V] against targets = input ids
 * shifted by one, weights likewise. Returns [] scalars (loss sum, weight sum).
 */
function weightedNextTokenLoss(
  g: GraphBuilder,
  logits: Value,
  inputIds: Value,
  lossWeights: Value,
  sequence: number,
): { lossSum: Value; tokenCount: Value } {
  const targets = op.slice(g, inputIds, 1, 1, sequence); // [B, T-1]
  const weights = op.slice(g, lossWeights, 1, 1, sequence); // [B, T-1]
  const { loss, count } = crossEntropyLoss(g, logits, targets, weights);
  return { lossSum: loss, tokenCount: count };
}

/**
 * The shared body: inputs, the decoder from {@link emitDecoderStack} (the code the inference
 * graph runs), the loss on positions 0..T-2, the loss outputs.
 */
function emitTrainingForward(
  g: GraphBuilder,
  config: LlamaConfig,
  { batch, sequence }: TrainingShape,
  model: (g: GraphBuilder) => LlamaModelValues,
): Value {
  const inputIds = g.input(TRAINING_IO.inputIds, 'i64', [batch, sequence]);
  const attentionMask = g.input(TRAINING_IO.attentionMask, 'i64', [batch, sequence]);
  const positionIds = g.input(TRAINING_IO.positionIds, 'i64', [batch, sequence]);
  const lossWeights = g.input(TRAINING_IO.lossWeights, 'f32', [batch, sequence]);
  const values = model(g);
  const { cos, sin } = ropeTables(g, config, positionIds);
  const attnBias = attentionBias(g, attentionMask, inputIds);
  const hidden = emitDecoderStack(g, config, values, inputIds, { cos, sin, attnBias });
  // The last position predicts nothing inside this batch: no logits for it.
  const logits = values.lmHead(op.slice(g, hidden, 1, 0, sequence - 1)); // [B, T-1, V]
  const { lossSum, tokenCount } = weightedNextTokenLoss(g, logits, inputIds, lossWeights, sequence);
  g.output(tokenCount, TRAINING_IO.tokenCount);
  return g.output(lossSum, TRAINING_IO.lossSum);
}

function checkShape(shape: TrainingShape): void {
  for (const [what, v, min] of [
    ['batch', shape.batch, 1],
    ['sequence', shape.sequence, 2],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < min) {
      throw new RuntimeError(
        'TRAINING_OPTIONS',
        `The training ${what} must be an integer >= ${min}, got ${v}.`,
        { [what]: v },
      );
    }
  }
}

/** The forward part of a training graph: the loss output and the trainable inputs. */
export interface TrainingForward {
  /** The `loss_sum` output, f32 []. */
  readonly loss: Value;
  /** The trainable inputs, in graph order. */
  readonly parameters: readonly Value[];
  readonly loraSites: readonly TrainableLoraSite[];
}

/**
 * Emits the LoRA / QLoRA training forward into `g`: the base frozen as initializers, a
 * trainable branch on every targeted linear. {@link buildLlamaLoraTrainingGraph} adds the
 * gradients; gradient checks call this directly.
 */
export function emitLlamaLoraTrainingForward(
  g: GraphBuilder,
  config: LlamaConfig,
  weights: LlamaGraphWeights,
  shape: TrainingShape,
  lora: TrainableLoraOptions,
): TrainingForward {
  checkShape(shape);
  const { hook, sites } = trainableLoraHook(lora, shape.batch, shape.sequence);
  const loss = emitTrainingForward(g, config, shape, (b) => frozenLlamaValues(b, weights, hook));
  if (sites.length === 0) {
    throw new RuntimeError(
      'LORA_OPTIONS',
      `No linear matches the LoRA targets ${JSON.stringify(lora.targets)}; use module names such as q_proj or 'all-linear'.`,
    );
  }
  const parameters: Value[] = [];
  for (const s of sites) {
    parameters.push(g.valueOf(s.aInput) as Value, g.valueOf(s.bInput) as Value);
  }
  return { loss, parameters, loraSites: sites };
}

/** Emits the full fine-tuning forward into `g`: every weight an input (see {@link trainableLlamaValues}). */
export function emitLlamaFullTrainingForward(
  g: GraphBuilder,
  config: LlamaConfig,
  shape: TrainingShape,
): TrainingForward {
  checkShape(shape);
  let parameters: Value[] = [];
  const loss = emitTrainingForward(g, config, shape, (b) => {
    const made = trainableLlamaValues(b, config);
    parameters = made.inputs;
    return made.values;
  });
  return { loss, parameters, loraSites: [] };
}

/** Adds the gradients of a training forward as outputs and finishes the graph. */
function finishTrainingGraph(
  g: GraphBuilder,
  shape: TrainingShape,
  forward: TrainingForward,
): LlamaTrainingGraph {
  const grads = gradients(g, forward.loss, forward.parameters, { overrides: QUANTIZED_BACKWARD });
  forward.parameters.forEach((p, i) => {
    g.output(grads[i], TRAINING_IO.grad(p.name));
  });
  return {
    graph: g.build(),
    shape,
    parameters: forward.parameters.map((p) => ({ name: p.name, shape: p.shape as number[] })),
    loraSites: forward.loraSites,
  };
}

/**
 * LoRA / QLoRA training graph: the base (dense or 4-bit) frozen as initializers, a trainable LoRA
 * branch on every targeted linear with A and B as inputs, outputs loss, token count, dA, dB.
 * A 4-bit base keeps its `MatMulBnb4` / `MatMulNBits` forward; its backward dequantizes each
 * weight in the graph, one linear at a time (see `training/quantized-backward.ts`).
 */
export function buildLlamaLoraTrainingGraph(
  config: LlamaConfig,
  weights: LlamaGraphWeights,
  shape: TrainingShape,
  lora: TrainableLoraOptions,
): LlamaTrainingGraph {
  const g = new GraphBuilder('llama_lora_training');
  return finishTrainingGraph(
    g,
    shape,
    emitLlamaLoraTrainingForward(g, config, weights, shape, lora),
  );
}

/**
 * Full fine-tuning graph: every weight a float32 input in HF names and layouts, with its gradient
 * as an output (embeddings through the Gather backward's scatter-add; tied embeddings sum both
 * uses). For full fine-tuning and pretraining of small models.
 */
export function buildLlamaFullTrainingGraph(
  config: LlamaConfig,
  shape: TrainingShape,
): LlamaTrainingGraph {
  const g = new GraphBuilder('llama_full_training');
  return finishTrainingGraph(g, shape, emitLlamaFullTrainingForward(g, config, shape));
}
