import { describe, expect, it } from 'vitest';
import {
  DTYPES,
  type DType,
  dtypeFromOnnx,
  dtypeFromSafetensors,
  dtypeToOnnx,
  parseDType,
} from './dtype.js';

describe('dtypes', () => {
  it('map to the ONNX TensorProto.DataType numbers of onnx.proto', () => {
    // Typed from onnx.proto's enum DataType: FLOAT = 1 ... BFLOAT16 = 16.
    const onnxProto: Record<DType, number> = {
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
    for (const [d, n] of Object.entries(onnxProto)) {
      expect(dtypeToOnnx(d as DType)).toBe(n);
      expect(dtypeFromOnnx(n)).toBe(d);
    }
    expect(dtypeFromOnnx(8)).toBeUndefined(); // STRING
  });

  it('know their safetensors names and item sizes', () => {
    expect(dtypeFromSafetensors('BF16')).toBe('bf16');
    expect(dtypeFromSafetensors('F8_E4M3')).toBeUndefined();
    expect(DTYPES.i64.itemSize).toBe(8);
    expect(DTYPES.bool.itemSize).toBe(1);
  });

  it('parse user spellings and refuse unknown ones with a typed error', () => {
    expect(parseDType('bfloat16')).toBe('bf16');
    expect(parseDType('FP16')).toBe('f16');
    expect(() => parseDType('float8')).toThrow(expect.objectContaining({ code: 'DTYPE_UNKNOWN' }));
  });
});
