import { describe, expect, it } from 'vitest';
import { blockAbsmax, dequantizeBlockwise, quantizeBlockwise } from './blockwise.js';
import { dequantizeBnb4, quantizeBnb4 } from './bnb4-weight.js';
import { dequantizeAbsmax, doubleQuantize } from './double-quant.js';
import { dequantizeMatMulNBits, quantizeMatMulNBits } from './nbits.js';
import { quantizeWeight } from './quantized-weight.js';

// Raw f16 bits of [1, -2, 0.5, 3] (0x3c00, 0xc000, 0x3800, 0x4200): integers, not the numbers.
const f16Bits = Uint16Array.from([0x3c00, 0xc000, 0x3800, 0x4200]);

describe('typed arrays are checked against the declared element type', () => {
  it('quantize functions refuse raw f16 bits, float64 and plain arrays with a hint', () => {
    const bad = f16Bits as unknown as Float32Array;
    expect(() => quantizeBnb4(bad, [4], { format: 'nf4', blockSize: 64 })).toThrow(
      /quantizeBnb4: values must be a Float32Array, got Uint16Array \(raw f16\/bf16 bits\? convert them first/,
    );
    expect(() => quantizeBlockwise(bad, { format: 'fp4' })).toThrow(
      /quantizeBlockwise: values must be a Float32Array, got Uint16Array/,
    );
    expect(() => quantizeWeight(bad, [1, 4], { format: 'int4', blockSize: 16 })).toThrow(
      /quantizeMatMulNBits: weight must be a Float32Array, got Uint16Array/,
    );
    expect(() => blockAbsmax(new Float64Array(4) as unknown as Float32Array, 64)).toThrow(
      /got Float64Array \(copy it with Float32Array.from first\)/,
    );
    expect(() =>
      quantizeMatMulNBits([1, 2] as unknown as Float32Array, 1, 2, { format: 'uint4' }),
    ).toThrow(/got Array/);
    expect(() => quantizeBnb4(bad, [4], { format: 'nf4' })).toThrow(
      expect.objectContaining({ code: 'QUANT_INPUT_TYPE' }),
    );
  });

  it('dequantize functions refuse packed data and outputs of the wrong type', () => {
    const values = Float32Array.from([1, -2, 0.5, 3]);
    const w = quantizeBnb4(values, [4], { format: 'nf4', blockSize: 64 });
    expect(() =>
      dequantizeBlockwise({
        format: 'nf4',
        blockSize: 64,
        length: 4,
        packed: Array.from(w.packed) as unknown as Uint8Array,
        absmax: w.absmax as Float32Array,
      }),
    ).toThrow(/packed must be a Uint8Array, got Array/);
    expect(() => dequantizeBnb4(w, new Float64Array(4) as unknown as Float32Array)).toThrow(
      /out must be a Float32Array, got Float64Array/,
    );
    const n = quantizeMatMulNBits(Float32Array.from([1, 2, 3, 4]), 1, 4, {
      format: 'int4',
      blockSize: 16,
    });
    expect(() =>
      dequantizeMatMulNBits({
        ...n,
        scales: Float64Array.from(n.scales) as unknown as Float32Array,
      }),
    ).toThrow(/scales must be a Float32Array, got Float64Array/);
    expect(() => doubleQuantize(Float64Array.from([1, 2]) as unknown as Float32Array)).toThrow(
      /doubleQuantize: absmax must be a Float32Array, got Float64Array/,
    );
    const dq = doubleQuantize(Float32Array.from([1, 2, 3]));
    expect(() =>
      dequantizeAbsmax({ ...dq, codes: Array.from(dq.codes) as unknown as Uint8Array }),
    ).toThrow(/dequantizeAbsmax: codes must be a Uint8Array, got Array/);
    // The right types still work, and decode to the values.
    expect(Array.from(dequantizeBnb4(w))).toHaveLength(4);
  });
});
