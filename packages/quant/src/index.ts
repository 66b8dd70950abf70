/**
 * The public API of @lora/quant: named exports only, so a change to it is a visible diff (the
 * packaging test snapshots these names). Building blocks the other @lora packages share but
 * users should not depend on are in '@lora/quant/internal'.
 */
export type { BucketTables } from './blockwise-kernel.js';
export {
  blockCount,
  codeTable,
  dequantizeBlockwise,
  quantizeBlockwise,
  quantizeBlockwiseRef,
} from './blockwise.js';
export type { Blockwise4Bit, BlockwiseOptions } from './blockwise.js';
export {
  BNB4_QUANT_STATE_PREFIX,
  bnb4Keys,
  bnb4StateDictEntries,
  describeBnb4,
  findBnb4Weights,
  readBnb4StateDict,
  readBnb4Weight,
  writeBnb4StateDict,
} from './bnb4-state-dict.js';
export type { Bnb4StateDescriptor, TensorSource } from './bnb4-state-dict.js';
export { dequantizeBnb4, isDoubleQuantized, quantizeBnb4 } from './bnb4-weight.js';
export type { Bnb4Options, Bnb4Weight, WeightDType } from './bnb4-weight.js';
export {
  createDynamicMap,
  DYNAMIC_MAP,
  FP4_CODE,
  FP4_THRESHOLDS,
  NF4_CODE,
  NF4_THRESHOLDS,
} from './codebooks.js';
export { dequantizeModel, dequantizeSafetensors } from './dequantize-model.js';
export type { DequantizeDType, DequantizeReport } from './dequantize-model.js';
export {
  dequantizeAbsmax,
  DOUBLE_QUANT_BLOCK_SIZE,
  doubleQuantize,
  statisticsBitsPerParameter,
} from './double-quant.js';
export type { DoubleQuantizedAbsmax } from './double-quant.js';
export { combineErrors, errorRow, measureError } from './error-report.js';
export type { ErrorStats } from './error-report.js';
export { QuantError } from './errors.js';
export {
  BNB4_BLOCK_SIZES,
  BNB4_DEFAULT_BLOCK_SIZE,
  defaultBlockSize,
  isBnb4Format,
  isNBitsFormat,
  NBITS_BLOCK_SIZES,
  NBITS_DEFAULT_BLOCK_SIZE,
  parseQuantFormat,
  QUANT_FORMATS,
} from './formats.js';
export type { Bnb4Format, NBitsFormat, QuantFormat } from './formats.js';
export { dequantizeMatMulNBits, quantizeMatMulNBits } from './nbits.js';
export type { MatMulNBitsWeight, NBitsOptions } from './nbits.js';
export {
  findOrtWeights,
  matMulBnb4Entries,
  matMulNBitsAttributes,
  matMulNBitsEntries,
  ORT_QUANT_STATE_SUFFIX,
  readOrtWeight,
  toMatMulBnb4,
} from './ort-layout.js';
export type { MatMulBnb4Initializers, OrtQuantState, OrtWeight } from './ort-layout.js';
export { PARALLEL_MIN_VALUES, QuantizeWorkerPool } from './parallel.js';
export { qloraLinearBackward, qloraLinearForward } from './qlora.js';
export type { QLoraLinearInputs } from './qlora.js';
export { bnbQuantizationConfig, ortQuantizationConfig } from './quantization-config.js';
export { quantizeModel, quantizeSafetensors } from './quantize-model.js';
export type {
  QuantizeModelOptions,
  QuantizeReport,
  QuantLayout,
  TensorReport,
} from './quantize-model.js';
export {
  dequantizeWeight,
  measureQuantizationError,
  quantizeWeight,
  storedBits,
} from './quantized-weight.js';
export type { QuantizedWeight, QuantizeWeightOptions } from './quantized-weight.js';
