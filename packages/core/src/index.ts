/**
 * The public API of @lora/core: named exports only, so a change to it is a visible diff (the
 * packaging test snapshots these names). Building blocks the other @lora packages share but
 * users should not depend on are in '@lora/core/internal'.
 */
export { bitsPerParameter, planMemory, quantizedTensorBytes } from './accounting/memory.js';
export type {
  MemoryBreakdown,
  MemoryPlan,
  MemoryPlanOptions,
  MemoryScenario,
  QuantSpec,
  WeightFormat,
} from './accounting/memory.js';
export {
  countModelParameters,
  linearModules,
  modelParametersExceeded,
  modelShapeLimitExceeded,
  parseModelConfig,
  shapeForParameterCount,
} from './accounting/model-config.js';
export type { LinearModule, ModelParameterCount, ModelShape } from './accounting/model-config.js';
export {
  countLoraParameters,
  loraParameterCount,
  trainableParametersLine,
} from './accounting/params.js';
export type { LoraParameterReport } from './accounting/params.js';
export {
  castFloat,
  fromFloat32Array,
  isFloatDType,
  toFloat32Array,
  toFloat64Array,
} from './convert.js';
export type { FloatDType } from './convert.js';
export {
  dtypeFromOnnx,
  dtypeFromSafetensors,
  DTYPES,
  dtypeToOnnx,
  dtypeToSafetensors,
  isDType,
  itemSize,
  parseDType,
} from './dtype.js';
export type { AnyTypedArray, DType, TypedArrayOf } from './dtype.js';
export { CoreError, isLoraError, LoraError } from './errors.js';
export {
  bf16ToF32Array,
  f16BitsToF32Bits,
  f16ToF32Array,
  f32BitsToBf16Bits,
  f32BitsToF16Bits,
  f32ToBf16Array,
  f32ToF16Array,
  fromBf16Bits,
  fromF16Bits,
  toBf16Bits,
  toF16Bits,
} from './float16.js';
export {
  calculateGain,
  computeFans,
  initKaimingNormal,
  initKaimingUniform,
  initNormal,
  initOrthogonal,
  initUniform,
  initXavierNormal,
  initXavierUniform,
  initZeros,
} from './init.js';
export type { FanMode, InitOptions, KaimingOptions, Nonlinearity, XavierOptions } from './init.js';
export { writeFolderAtomic } from './io/atomic-folder.js';
export type { WriteFolderAtomicOptions } from './io/atomic-folder.js';
export { writeAll, writeBytesAtomic, writeFileAtomic } from './io/atomic-write.js';
export type { WriteFileAtomicOptions } from './io/atomic-write.js';
export { assertRegularInputs, openRegularFile, resolveInsideFolder } from './io/file-kind.js';
export type { FileKind } from './io/file-kind.js';
export { describeFsError, isFsError, writeFailed } from './io/fs-errors.js';
export { parseJsonText, readJsonFile } from './io/json-file.js';
export { guardOutput } from './io/output-guard.js';
export { OUTPUT_WRITER_KEY, outputMarker, readOutputWriter } from './io/output-marker.js';
export type { GuardOutputOptions } from './io/output-guard.js';
export {
  removeStaleTemporaries,
  removeTemporariesSync,
  temporaryPath,
  trackTemporary,
  untrackTemporary,
} from './io/temporaries.js';
export type { TemporaryKind } from './io/temporaries.js';
export { lowRankProductSvd } from './linalg/low-rank-svd.js';
export { matmul, matmulReference, matmulTransposeB } from './linalg/matmul.js';
export type { MatmulOptions } from './linalg/matmul.js';
export { toMatrix } from './linalg/matrix.js';
export type { FloatValues, Matrix, MatrixDType } from './linalg/matrix.js';
export { qr } from './linalg/qr.js';
export type { QrOptions, QrResult } from './linalg/qr.js';
export { lowRankResidual, randomizedSvd, spectralResidual } from './linalg/randomized-svd.js';
export type {
  RandomizedSvdOptions,
  RandomizedSvdResult,
  SpectralResidualOptions,
} from './linalg/randomized-svd.js';
export { singularValues, svd } from './linalg/svd.js';
export type { SvdOptions, SvdResult } from './linalg/svd.js';
export { transpose } from './linalg/transpose.js';
export {
  createLoraConfig,
  LORA_CONFIG_DEFAULTS,
  loraConfigToJson,
  parseLoraConfig,
} from './lora/config.js';
export type { LoraBiasMode, LoraConfig, ParsedLoraConfig } from './lora/config.js';
export {
  concatLowRank,
  deltaRow,
  deltaWeight,
  lowRankDelta,
  packLowRank,
  zeroLowRankDelta,
} from './lora/delta.js';
export type { DeltaWeightOptions, LoraFactors, LowRankDelta, PackedLowRank } from './lora/delta.js';
export { initLoraWeights, parseLoraInitMethod } from './lora/init.js';
export type { LoraInitMethod, LoraInitOptions, LoraInitResult } from './lora/init.js';
export { loraLinearBackward, loraLinearForward } from './lora/linear.js';
export type { LoraLinearForward, LoraLinearGradients, LoraLinearInputs } from './lora/linear.js';
export {
  applyResidual,
  LowRankMerger,
  mergeLowRank,
  mergeWeight,
  mergeWeightExact,
  RESIDUAL_SUFFIXES,
  residualByteSize,
  residualChecksum,
  residualFromTensors,
  residualToTensors,
  unmergeLowRank,
  unmergeWeight,
} from './lora/merge.js';
export type { LowRankMergeResult, MergeOptions, UnmergeResidual } from './lora/merge.js';
export { f64ToBf16Bits, f64ToF16Bits, roundF64Array, roundF64Into } from './lora/round-once.js';
export { loraAlpha, loraRank, loraScaling } from './lora/scaling.js';
export {
  ALL_LINEAR,
  DEFAULT_TARGET_MODULES,
  expandAllLinear,
  isTargetModule,
  matchTargets,
} from './lora/target-modules.js';
export type { TargetConfig, TargetDecision, TargetMatchOptions } from './lora/target-modules.js';
export { createRng, restoreRng } from './random.js';
export type { Rng, RngState, Seed64 } from './random.js';
export { MAX_HEADER_BYTES } from './safetensors/header.js';
export type { SafetensorsEntry, SafetensorsHeader } from './safetensors/header.js';
export {
  parseSafetensorsBuffer,
  readSafetensors,
  readSafetensorsHeader,
  SafetensorsFile,
} from './safetensors/reader.js';
export { summarizeSafetensors } from './safetensors/summary.js';
export type { SafetensorsSummary, TensorSummary } from './safetensors/summary.js';
export { writeSafetensors } from './safetensors/writer.js';
export type {
  TensorData,
  TensorToWrite,
  WriteSafetensorsOptions,
} from './safetensors/writer.js';
export {
  assertShape,
  f32,
  f64,
  numel,
  reshape,
  sameShape,
  strides,
  tensor,
  tensorBytes,
} from './tensor.js';
export type { Tensor } from './tensor.js';
