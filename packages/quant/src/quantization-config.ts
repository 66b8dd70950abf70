import type { WeightDType } from './bnb4-weight.js';
import type { QuantFormat } from './formats.js';

const TORCH: Record<WeightDType, string> = { f32: 'float32', f16: 'float16', bf16: 'bfloat16' };

/**
 * The `quantization_config` transformers writes into `config.json` for a bitsandbytes 4-bit
 * model (`BitsAndBytesConfig.to_dict()`), keys in its order. `skipModules` lists modules left in
 * full precision (transformers' `llm_int8_skip_modules`).
 */
export function bnbQuantizationConfig(options: {
  format: 'nf4' | 'fp4';
  doubleQuant: boolean;
  computeDType?: WeightDType;
  skipModules?: string[] | null;
}): Record<string, unknown> {
  return {
    _load_in_4bit: true,
    _load_in_8bit: false,
    bnb_4bit_compute_dtype: TORCH[options.computeDType ?? 'f32'],
    bnb_4bit_quant_storage: 'uint8',
    bnb_4bit_quant_type: options.format,
    bnb_4bit_use_double_quant: options.doubleQuant,
    llm_int8_enable_fp32_cpu_offload: false,
    llm_int8_has_fp16_weight: false,
    llm_int8_skip_modules: options.skipModules ?? null,
    llm_int8_threshold: 6.0,
    load_in_4bit: true,
    load_in_8bit: false,
    quant_method: 'bitsandbytes',
  };
}

/**
 * The `quantization_config` written for the onnxruntime layout (not a transformers format; read by
 * this project): `quant_method: "lora-ort"`, the op each weight feeds, format, bits, block size,
 * whether zero points are stored, and the modules left in full precision.
 */
export function ortQuantizationConfig(options: {
  format: QuantFormat;
  blockSize: number;
  skipModules?: string[] | null;
}): Record<string, unknown> {
  const nbits = options.format === 'int4' || options.format === 'uint4';
  return {
    quant_method: 'lora-ort',
    op: nbits ? 'MatMulNBits' : 'MatMulBnb4',
    format: options.format,
    bits: 4,
    block_size: options.blockSize,
    symmetric: options.format !== 'uint4',
    has_zero_points: options.format === 'uint4',
    modules_not_converted: options.skipModules ?? null,
  };
}
