/**
 * The public API of @lora/adapters: named exports only, so a change to it is a visible diff (the
 * packaging test snapshots these names). Building blocks the other @lora packages share but
 * users should not depend on are in '@lora/adapters/internal'.
 */
export { loraParameterCount, moduleRank, moduleScaling, savedParameterCount } from './adapter.js';
export type { Adapter, LoraModule } from './adapter.js';
export {
  COMBINATION_METHODS,
  combineAdapters,
  darePrune,
  magnitudePrune,
  quantile,
} from './combine.js';
export type {
  CombinationMethod,
  CombineOptions,
  CombineResult,
  WeightedAdapter,
} from './combine.js';
export { describeAdapter, peftParameterCounts } from './describe.js';
export type { AdapterDescription, AdapterTensorInfo } from './describe.js';
export { AdapterError } from './errors.js';
export { extractAdapter } from './extract.js';
export type { ExtractedModule, ExtractOptions, ExtractResult } from './extract.js';
export {
  genaiModuleName,
  loadOnnxAdapter,
  moduleFromGenaiName,
  saveOnnxAdapter,
} from './formats/onnx-adapter-peft.js';
export type {
  OnnxAdapterReadOptions,
  OnnxAdapterWriteOptions,
} from './formats/onnx-adapter-peft.js';
export {
  decodeOnnxAdapter,
  encodeOnnxAdapter,
  readOnnxAdapter,
  writeOnnxAdapter,
} from './formats/onnx-adapter.js';
export type { OnnxAdapterFile } from './formats/onnx-adapter.js';
export type { MergedTensor } from './merge/compute.js';
export { mergeIntoModel, residualPathFor } from './merge/merge-model.js';
export type { MergeModelOptions, MergeModelReport } from './merge/merge-model.js';
export { planMerge } from './merge/plan.js';
export type {
  AdapterSource,
  LoraTerm,
  MergePlan,
  TensorCatalog,
  TensorPlan,
} from './merge/plan.js';
export { RESIDUAL_FILE } from './merge/residual-file.js';
export type { MergedAdapterRecord, ResidualContents } from './merge/residual-file.js';
export { unmergeModel } from './merge/unmerge-model.js';
export type { UnmergeModelOptions, UnmergeModelReport } from './merge/unmerge-model.js';
export { ModelFiles } from './model/model-files.js';
export type { ModelShard } from './model/model-files.js';
export { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE } from './peft/files.js';
export type { AdapterKeyKind, ParsedAdapterKey } from './peft/keys.js';
export { loadPeftAdapter, readAdapterConfig } from './peft/load.js';
export type { LoadedAdapter } from './peft/load.js';
export { savePeftAdapter } from './peft/save.js';
export type { SavePeftOptions } from './peft/save.js';
export { AdapterRegistry } from './registry.js';
export type {
  ActiveAdapter,
  AdapterLease,
  AdapterLoader,
  AdapterRegistryOptions,
  AdapterRegistryStats,
  LoaderResult,
} from './registry.js';
export { checkAdapterTargets } from './targets.js';
export type { TargetCheck } from './targets.js';
