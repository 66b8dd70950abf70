import { describe, expect, it } from 'vitest';
import { bitsPerParameter, planMemory, quantizedTensorBytes } from './memory.js';
import { KNOWN_SHAPES, type ModelShape } from './model-config.js';

describe('bytes per format', () => {
  it('bits per parameter: NF4 4.5, NF4+DQ about 4.127 (block 64), int8 8', () => {
    expect(bitsPerParameter({ format: 'nf4', blockSize: 64 })).toBe(4 + 32 / 64);
    // 4 bits + one 8-bit code per 64 + one f32 per 64 x 256
    expect(bitsPerParameter({ format: 'nf4', blockSize: 64, doubleQuant: true })).toBe(
      4 + 8 / 64 + 32 / (64 * 256),
    );
    expect(bitsPerParameter({ format: 'nf4', blockSize: 64, doubleQuant: true }).toFixed(3)).toBe(
      '4.127',
    );
    expect(bitsPerParameter({ format: 'int8' })).toBe(8);
    expect(bitsPerParameter({ format: 'bf16' })).toBe(16);
  });

  it('one tensor, including partial blocks', () => {
    const n = 4096 * 4096;
    expect(quantizedTensorBytes(n, 4096, { format: 'nf4', blockSize: 64 })).toEqual({
      data: n / 2,
      stats: 4 * (n / 64),
    });
    // 262,144 u8 codes + 1,024 nested f32 absmax + one f32 offset
    expect(
      quantizedTensorBytes(n, 4096, { format: 'nf4', blockSize: 64, doubleQuant: true }),
    ).toEqual({ data: n / 2, stats: 262_144 + 4 * 1024 + 4 });
    expect(quantizedTensorBytes(100, 10, { format: 'fp4', blockSize: 64 })).toEqual({
      data: 50,
      stats: 8,
    });
    expect(
      quantizedTensorBytes(101, 10, { format: 'nf4', blockSize: 64, doubleQuant: true }),
    ).toEqual({ data: 51, stats: 2 + 4 + 4 });
    expect(quantizedTensorBytes(4096 * 11008, 11008, { format: 'int8' })).toEqual({
      data: 4096 * 11008,
      stats: 4 * 11008,
    });
  });
});

describe("QLoRA's claim: a 65B model fine-tunes in 48 GB, 16-bit full fine-tuning needs more than 780 GB", () => {
  const shape = KNOWN_SHAPES['llama-65b'];
  const plan = planMemory({
    shape,
    lora: { r: 64, target_modules: 'all-linear' },
    quant: { format: 'nf4', blockSize: 64, doubleQuant: true },
    batchSize: 1,
    seqLen: 512,
    gradientCheckpointing: true,
  });
  const get = (name: string) => plan.scenarios.find((s) => s.name === name)!.memory;

  // Hand arithmetic for LLaMA-65B (hidden 8192, intermediate 22016, 80 layers, vocab 32000):
  const P = 2 * 32000 * 8192 + 80 * (4 * 8192 * 8192 + 3 * 8192 * 22016 + 2 * 8192) + 8192; // 65,285,660,672
  const quantized = 80 * (4 * 8192 * 8192 + 3 * 8192 * 22016); // decoder-layer linears
  const stats =
    80 *
    (4 * ((8192 * 8192) / 64 + 4 * Math.ceil((8192 * 8192) / 64 / 256) + 4) +
      3 * ((8192 * 22016) / 64 + 4 * Math.ceil((8192 * 22016) / 64 / 256) + 4));
  const trainable = 80 * (4 * 64 * (8192 + 8192) + 3 * 64 * (8192 + 22016)); // r 64, all 7 linears per layer
  const activations =
    80 * 512 * 8192 * 2 + // layer inputs kept (checkpointing)
    512 * (6 * 8192 + 2 * 8192 + 4 * 22016 + 7 * 64) * 2 + // one layer recomputed, LoRA A outputs included
    512 * 32000 * 8; // f32 logits and their gradient

  it('counts what it says', () => {
    expect(P).toBe(65_285_660_672);
    expect(plan.parameters.total).toBe(P);
    expect(plan.lora.trainable).toBe(trainable);
    expect(trainable).toBe(799_539_200);
    const q = get('qlora');
    expect(q.weights).toBe(quantized / 2 + (P - quantized) * 2);
    expect(q.quantStats).toBe(stats);
    expect(stats).toBe(1_027_688_640);
    expect(q.adapters).toBe(trainable * 2);
    expect(q.gradients).toBe(trainable * 2);
    expect(q.optimizer).toBe(trainable * 8);
    expect(q.activations).toBe(activations);
    expect(q.total).toBe(
      quantized / 2 + (P - quantized) * 2 + stats + trainable * 12 + activations,
    );
  });

  it('QLoRA fits in 48 GB (about 45.0 GB); full fine-tuning needs more than 780 GB', () => {
    expect(get('qlora').total).toBe(45_013_305_536);
    expect(get('qlora').total).toBeLessThan(48e9);
    const full = get('full');
    // bf16 weights 2 + bf16 gradients 2 + AdamW m, v 8 + f32 master 4 = 16 bytes per parameter
    expect(full.weights + full.gradients + full.optimizer).toBe(16 * P);
    expect(full.total).toBeGreaterThan(780e9);
    // Even without master weights (12 bytes per parameter) it is above 780 GB.
    const noMaster = planMemory({ shape, masterWeights: false }).scenarios.find(
      (s) => s.name === 'full',
    )!.memory;
    expect(noMaster.weights + noMaster.gradients + noMaster.optimizer).toBe(12 * P);
    expect(12 * P).toBeGreaterThan(780e9);
  });

  it('lists its assumptions', () => {
    const text = plan.assumptions.join('\n');
    expect(text).toMatch(/gradient checkpointing ON/);
    expect(text).toMatch(/batch 1 x sequence 512/);
    expect(text).toMatch(/4\.127 bits/);
    expect(plan.trainableLine).toBe(
      `trainable params: 799,539,200 || all params: ${(P + trainable).toLocaleString('en-US')} || trainable%: ${((100 * trainable) / (P + trainable)).toFixed(4)}`,
    );
  });
});

describe('activations and inference on a tiny shape, by hand', () => {
  const tiny: ModelShape = {
    model_type: 'llama',
    hidden_size: 64,
    intermediate_size: 172,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    head_dim: 8,
    num_hidden_layers: 5,
    vocab_size: 512,
    tie_word_embeddings: true,
    qkv_bias: false,
    o_bias: false,
    mlp_bias: false,
  };
  const plan = planMemory({
    shape: tiny,
    lora: { r: 2, target_modules: ['q_proj', 'v_proj'] },
    batchSize: 2,
    seqLen: 4,
    gradientCheckpointing: false,
    attention: 'eager',
    computeDtype: 'f32',
    adapterDtype: 'f32',
  });
  const get = (name: string) => plan.scenarios.find((s) => s.name === name)!.memory;
  // per token and layer: 4h + 2 qDim + 2 kvDim + 4 i + heads x seq = 256 + 128 + 64 + 688 + 32 = 1168
  const perToken = 1168;
  const tokens = 8;
  const logits = tokens * 512 * 8;

  it('no checkpointing, eager attention', () => {
    expect(get('lora').activations).toBe(5 * tokens * (perToken + 2 + 2) * 4 + logits);
    expect(get('full').activations).toBe(5 * tokens * perToken * 4 + logits);
  });

  it('f32 compute: no master copy; inference keeps a KV cache', () => {
    const P = 512 * 64 + 5 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 172 + 2 * 64) + 64; // tied head
    expect(plan.parameters.total).toBe(P);
    expect(get('full').optimizer).toBe(8 * P);
    expect(get('full').weights).toBe(4 * P);
    // K and V: 2 x 5 layers x 8 tokens x 32 x 4 bytes, plus 2 rows of f32 logits
    expect(get('inference').activations).toBe(2 * 5 * 8 * 32 * 4 + 2 * 512 * 4);
    expect(get('inference').adapters).toBe(5 * (2 * (64 + 64) + 2 * (64 + 32)) * 4); // q [64->64] and v [64->32], r 2, f32
  });

  it('rejects nonsense', () => {
    expect(() => planMemory({ shape: tiny, batchSize: 0 })).toThrow(/batchSize/);
    expect(() => planMemory({ shape: tiny, lora: { r: 0 } })).toThrow(/"r"/);
  });
});
