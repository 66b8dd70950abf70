import type { DType } from '@lora/core';
import { RuntimeError } from '../errors.js';

/** ONNX `TensorProto.DataType` numbers of the dtypes the graph uses (BFLOAT16 = 16 is newer than onnx-proto's enum). */
const ONNX_ELEM_TYPE: Readonly<Record<DType, number>> = {
  f32: 1,
  u8: 2,
  i8: 3,
  u16: 4,
  i16: 5,
  i32: 6,
  i64: 7,
  bool: 9,
  f16: 10,
  f64: 11,
  u32: 12,
  u64: 13,
  bf16: 16,
};

export function onnxElemType(dtype: DType): number {
  return ONNX_ELEM_TYPE[dtype];
}

export function dtypeOfElemType(elemType: number): DType {
  for (const [dtype, n] of Object.entries(ONNX_ELEM_TYPE))
    if (n === elemType) return dtype as DType;
  throw new RuntimeError(
    'GRAPH_DTYPE',
    `ONNX element type ${elemType} is not supported by the graph builder.`,
    {
      elemType,
    },
  );
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
