/**
 * The public API of @lora/runtime-onnx: named exports only, so a change to it is a visible diff (the
 * packaging test snapshots these names). Building blocks the other @lora packages share but
 * users should not depend on are in '@lora/runtime-onnx/internal'.
 */
export { RuntimeError } from './errors.js';
export { ByteTokenizer } from './generate/byte-tokenizer.js';
export type { ByteTokenizerOptions } from './generate/byte-tokenizer.js';
export { IncrementalDetokenizer } from './generate/detokenizer.js';
export { modelEosIds } from './generate/eos.js';
export { generate } from './generate/generate.js';
export type {
  GenerateOptions,
  GenerateResult,
  GenerationTimings,
  TokenEvent,
} from './generate/generate.js';
export { HfTokenizer } from './generate/hf-tokenizer.js';
export type { HfTokenizerConfig } from './generate/hf-tokenizer.js';
export { loadTokenizer } from './generate/load-tokenizer.js';
export { GenerationRow, resolveRowSettings } from './generate/row.js';
export type {
  FinishReason,
  GenerationOutput,
  ResolvedRowSettings,
  RowEvent,
  RowSettings,
} from './generate/row.js';
export {
  applyRepetitionPenalty,
  argmax,
  sampleToken,
  samplingDistribution,
} from './generate/sampling.js';
export type { SamplingOptions, TokenDistribution } from './generate/sampling.js';
export type { TokenStepper } from './generate/stepper.js';
export type { DecodeOptions, EncodeOptions, Tokenizer } from './generate/tokenizer.js';
export { GraphBuilder } from './graph/builder.js';
export type { GradientRegion } from './graph/builder.js';
export { causalAttention } from './graph/composites/attention.js';
export type { AttentionHeads } from './graph/composites/attention.js';
export { crossEntropyLoss } from './graph/composites/cross-entropy.js';
export type { CrossEntropy } from './graph/composites/cross-entropy.js';
export { rmsNorm } from './graph/composites/rms-norm.js';
export { rope } from './graph/composites/rope.js';
export { swiglu } from './graph/composites/swiglu.js';
export { describeOnnxModel } from './graph/describe.js';
export type { OnnxModelSummary, OnnxValueSummary } from './graph/describe.js';
export { gradients } from './graph/gradients.js';
export type { GradientOptions } from './graph/gradients.js';
export { OPS } from './graph/opset.js';
export { MS_DOMAIN, OPSET_VERSION } from './graph/opset/op-def.js';
export type { InferInput, InferOutput, OpDef, VjpContext, VjpRule } from './graph/opset/op-def.js';
export { evaluateReference } from './graph/reference.js';
export { saveModel, serializeGraph } from './graph/serialize.js';
export type {
  ExternalChunk,
  ExternalPlacement,
  SavedModel,
  SaveModelOptions,
  SerializedModel,
} from './graph/serialize.js';
export type { Attr, Attrs, Dim, Graph, GraphNode, RefTensor, Value } from './graph/types.js';
export { createLoraHook, LORA_INDEX_INPUT, LORA_SCALE_INPUT } from './lora/branches.js';
export type { LoraBranchOptions, LoraGraphPlan, LoraSite, LoraTargets } from './lora/branches.js';
export {
  buildLinearStackGraph,
  linearStackModules,
  randomLinearStackWeights,
} from './lora/linear-stack.js';
export type { LinearStackShape } from './lora/linear-stack.js';
export { mergedWeights, refuseSavedModules } from './lora/merged.js';
export { LoraSlotCache } from './lora/slot-cache.js';
export type { NamedAdapter, SlotLease } from './lora/slot-cache.js';
export { LoraSlots } from './lora/slots.js';
export type { SlotAdapter } from './lora/slots.js';
export { emitDequantizedWeight } from './models/dequantize-graph.js';
export type { Bnb4DequantizeAttrs, NBitsDequantizeAttrs } from './models/dequantize-graph.js';
export { denseLinear, emitLinear } from './models/linear.js';
export type {
  LinearHook,
  LinearSite,
  LinearValues,
  LinearWeight,
  ValueLinear,
} from './models/linear.js';
export {
  LLAMA_LINEARS,
  llamaLinearShape,
  llamaModuleName,
  llamaWeightSpec,
  parseLlamaConfig,
} from './models/llama/config.js';
export type { LlamaConfig, LlamaLinear } from './models/llama/config.js';
export { buildLlamaGraph } from './models/llama/graph.js';
export type { LlamaGraphOptions, LlamaGraphWeights } from './models/llama/graph.js';
export {
  buildLlamaModelGraph,
  LlamaModel,
  LlamaStepper,
  loadLlama,
  openLlamaFolder,
} from './models/llama/model.js';
export type {
  KvCache,
  LlamaForwardInput,
  LlamaForwardOutput,
  LlamaModelOptions,
} from './models/llama/model.js';
export { readLlamaWeightsF32 } from './models/llama/prepare.js';
export type { PrepareOptions } from './models/llama/prepare.js';
export { referenceForward } from './models/llama/reference.js';
export type { ReferenceForwardOptions } from './models/llama/reference.js';
export type { Rope, RopeScaling } from './models/llama/rope.js';
export {
  buildLlamaFullTrainingGraph,
  buildLlamaLoraTrainingGraph,
  TRAINING_IO,
} from './models/llama/training-graph.js';
export type {
  LlamaTrainingGraph,
  TrainingForward,
  TrainingParameter,
  TrainingShape,
} from './models/llama/training-graph.js';
export { storedQuantization } from './models/quantize-linear.js';
export type { BaseQuantOptions } from './models/quantize-linear.js';
export { folderWeights, memoryWeights, readConfigJson } from './models/weights.js';
export type { WeightSource } from './models/weights.js';
export { CUDA_INSTALL_HINT, DEVICES, parseDevice } from './session/device.js';
export type { Device } from './session/device.js';
export { ModelSession } from './session/session.js';
export type { GraphSessionOptions, SessionFactory, SessionOptions } from './session/session.js';
export { WeightFile } from './session/weight-file.js';
export type { TrainableLoraOptions, TrainableLoraSite } from './training/lora-branch.js';
export { QUANTIZED_BACKWARD } from './training/quantized-backward.js';
export { createTrainingSession } from './training/training-session.js';
export type {
  BatchRows,
  TrainingMode,
  TrainingSession,
  TrainingSessionOptions,
  TrainingStepFeeds,
  TrainingStepResult,
} from './training/training-session.js';
export * as ops from './graph/ops.js';
