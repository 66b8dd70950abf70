import { type DType, dtypeFromOnnx, dtypeToOnnx } from '@lora/core';
import { RuntimeError } from '../errors.js';

/** ONNX `TensorProto.DataType` number of a dtype (core's table; BFLOAT16 = 16 is newer than onnx-proto's enum). */
export function onnxElemType(dtype: DType): number {
  return dtypeToOnnx(dtype);
}

export function dtypeOfElemType(elemType: number): DType {
  const dtype = dtypeFromOnnx(elemType);
  if (dtype === undefined) {
    throw new RuntimeError(
      'GRAPH_DTYPE',
      `ONNX element type ${elemType} is not supported by the graph builder.`,
      { elemType },
    );
  }
  return dtype;
}

/** onnxruntime-node's name of each dtype it can exchange (bf16 cannot cross the JS boundary). */
export const ORT_TENSOR_TYPE: Readonly<Partial<Record<DType, string>>> = {
  f32: 'float32',
  f64: 'float64',
  f16: 'float16',
  i64: 'int64',
  i32: 'int32',
  i16: 'int16',
  i8: 'int8',
  u64: 'uint64',
  u32: 'uint32',
  u16: 'uint16',
  u8: 'uint8',
  bool: 'bool',
};

export function isFloat(dtype: DType): boolean {
  return dtype === 'f32' || dtype === 'f64' || dtype === 'f16' || dtype === 'bf16';
}
