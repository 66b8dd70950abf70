import {
  createLoraConfig,
  createRng,
  type FloatDType,
  fromFloat32Array,
  type LoraConfig,
  type Tensor,
  tensor,
} from '@lora/core';
import type { Adapter, LoraModule } from '../adapter.js';

/**
 * A float tensor of `dtype` with values uniform in [-scale, scale) from a seeded xorshift32
 * (fast: test bases have millions of values; statistics do not matter here, determinism does).
 */
export function randomTensor(
  seed: number,
  shape: readonly number[],
  dtype: FloatDType = 'f32',
  scale = 0.05,
): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const values = new Float32Array(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    values[i] = (x / 2 ** 32 - 0.5) * 2 * scale;
  }
  if (dtype === 'f64') return tensor('f64', shape, Float64Array.from(values));
  return tensor(dtype, shape, fromFloat32Array(values, dtype) as never);
}

/** A LoRA adapter with random A and B (B non-zero, so the delta is not trivial). */
export function syntheticAdapter(
  modules: Record<
    string,
    { in: number; out: number; embedding?: boolean; bias?: boolean; dora?: boolean }
  >,
  config: Partial<Omit<LoraConfig, 'peft_type'>> & { r: number },
  seed = 1,
  dtype: FloatDType = 'f32',
): Adapter {
  const map = new Map<string, LoraModule>();
  let s = seed * 1000;
  for (const [name, m] of Object.entries(modules)) {
    const mod: { -readonly [K in keyof LoraModule]: LoraModule[K] } = {
      A: randomTensor(s++, [config.r, m.in], dtype, 0.1),
      B: randomTensor(s++, [m.out, config.r], dtype, 0.1),
    };
    if (m.embedding) mod.embedding = true;
    if (m.bias) mod.bias = randomTensor(s++, [m.out], dtype, 0.1);
    if (m.dora) {
      const mag = createRng(s++).uniformArray(m.out, 0.5, 1.5, 'f32');
      mod.magnitude = tensor(dtype, [m.out], fromFloat32Array(mag, dtype) as never);
    }
    map.set(name, mod);
  }
  return {
    config: createLoraConfig({
      target_modules: Object.keys(modules).map((n) => n.split('.').at(-1)!),
      ...config,
    }),
    modules: map,
    modulesToSave: new Map(),
  };
}
