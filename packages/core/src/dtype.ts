import { CoreError } from './errors.js';

/** Element types a tensor can hold. `f16` and `bf16` are stored as their raw 16-bit patterns. */
export type DType =
  | 'f64'
  | 'f32'
  | 'f16'
  | 'bf16'
  | 'i64'
  | 'i32'
  | 'i16'
  | 'i8'
  | 'u64'
  | 'u32'
  | 'u16'
  | 'u8'
  | 'bool';

/** The typed array that stores each dtype. */
export interface TypedArrayOf {
  f64: Float64Array;
  f32: Float32Array;
  f16: Uint16Array;
  bf16: Uint16Array;
  i64: BigInt64Array;
  i32: Int32Array;
  i16: Int16Array;
  i8: Int8Array;
  u64: BigUint64Array;
  u32: Uint32Array;
  u16: Uint16Array;
  u8: Uint8Array;
  bool: Uint8Array;
}

export type AnyTypedArray = TypedArrayOf[DType];

interface DTypeInfo {
  /** Bytes per element. */
  readonly itemSize: number;
  /** The name safetensors uses in its header. */
  readonly safetensors: string;
  /** ONNX `TensorProto.DataType` number (also used by `.onnx_adapter` files). */
  readonly onnx: number;
  /** True for f64/f32/f16/bf16. */
  readonly isFloat: boolean;
  readonly create: (length: number) => AnyTypedArray;
  readonly view: (buffer: ArrayBufferLike, byteOffset: number, length: number) => AnyTypedArray;
}

function info<A extends AnyTypedArray>(
  itemSize: number,
  safetensors: string,
  onnx: number,
  isFloat: boolean,
  ctor: {
    new (length: number): A;
    new (buffer: ArrayBufferLike, byteOffset: number, length: number): A;
  },
): DTypeInfo {
  return {
    itemSize,
    safetensors,
    onnx,
    isFloat,
    create: (length) => new ctor(length),
    view: (buffer, byteOffset, length) => new ctor(buffer, byteOffset, length),
  };
}

export const DTYPES: Readonly<Record<DType, DTypeInfo>> = {
  f64: info(8, 'F64', 11, true, Float64Array),
  f32: info(4, 'F32', 1, true, Float32Array),
  f16: info(2, 'F16', 10, true, Uint16Array),
  bf16: info(2, 'BF16', 16, true, Uint16Array),
  i64: info(8, 'I64', 7, false, BigInt64Array),
  i32: info(4, 'I32', 6, false, Int32Array),
  i16: info(2, 'I16', 5, false, Int16Array),
  i8: info(1, 'I8', 3, false, Int8Array),
  u64: info(8, 'U64', 13, false, BigUint64Array),
  u32: info(4, 'U32', 12, false, Uint32Array),
  u16: info(2, 'U16', 4, false, Uint16Array),
  u8: info(1, 'U8', 2, false, Uint8Array),
  bool: info(1, 'BOOL', 9, false, Uint8Array),
};

const BY_SAFETENSORS_NAME: ReadonlyMap<string, DType> = new Map(
  (Object.keys(DTYPES) as DType[]).map((d) => [DTYPES[d].safetensors, d]),
);

export function isDType(value: unknown): value is DType {
  return typeof value === 'string' && Object.hasOwn(DTYPES, value);
}

export function itemSize(dtype: DType): number {
  return DTYPES[dtype].itemSize;
}

/** The dtype for a safetensors header name (`F32`, `BF16`, ...), or undefined when unsupported. */
export function dtypeFromSafetensors(name: string): DType | undefined {
  return BY_SAFETENSORS_NAME.get(name);
}

export function dtypeToSafetensors(dtype: DType): string {
  return DTYPES[dtype].safetensors;
}

const BY_ONNX_NUMBER: ReadonlyMap<number, DType> = new Map(
  (Object.keys(DTYPES) as DType[]).map((d) => [DTYPES[d].onnx, d]),
);

/** ONNX `TensorProto.DataType` number of a dtype (FLOAT = 1, FLOAT16 = 10, BFLOAT16 = 16, ...). */
export function dtypeToOnnx(dtype: DType): number {
  return DTYPES[dtype].onnx;
}

/** The dtype of an ONNX `TensorProto.DataType` number, or undefined when it has none here. */
export function dtypeFromOnnx(dataType: number): DType | undefined {
  return BY_ONNX_NUMBER.get(dataType);
}

/** Parses a user-facing dtype name; accepts `float32`, `fp16`, `bfloat16`, `F32`, ... */
export function parseDType(name: string): DType {
  const n = name.trim().toLowerCase();
  const aliases: Record<string, DType> = {
    float64: 'f64',
    double: 'f64',
    fp64: 'f64',
    float32: 'f32',
    float: 'f32',
    fp32: 'f32',
    float16: 'f16',
    half: 'f16',
    fp16: 'f16',
    bfloat16: 'bf16',
    int64: 'i64',
    int32: 'i32',
    int16: 'i16',
    int8: 'i8',
    uint64: 'u64',
    uint32: 'u32',
    uint16: 'u16',
    uint8: 'u8',
  };
  const d = aliases[n] ?? n;
  if (!isDType(d)) {
    throw new CoreError(
      'DTYPE_UNKNOWN',
      `Unknown dtype "${name}". Use one of: ${Object.keys(DTYPES).join(', ')}.`,
      {
        dtype: name,
      },
    );
  }
  return d;
}
