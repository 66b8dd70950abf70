import { type Tensor, tensor } from '@lora/core';
import type { KvCache } from '@lora/runtime-onnx';

/** Where one row of a packed batch comes from: row `row` of `cache`, whose real length is `length`. */
export interface CacheRowSource {
  readonly cache: KvCache;
  readonly row: number;
  /** Real (unmasked) tokens of the row: the last `length` positions of the source's sequence axis. */
  readonly length: number;
}

/**
 * The KV cache of a running batch whose rows come and go between decode steps.
 *
 * Every row is left-padded: its `length` real tokens sit at the end of the sequence axis and
 * the padding before them is masked out. So a row's attention mask, position ids and cache
 * content depend only on the row itself, never on its neighbours: a row that joins (prefilled
 * in its own run) or a row that leaves changes no other row's inputs, only the amount of padding.
 * Packing copies the real part of each row (contiguous runs of `length * headDim` floats per
 * head) into new tensors as long as the longest row; it runs when rows join or leave, not per step.
 */
export class BatchCache {
  /** Per layer, [batch, kvHeads, sequence, headDim]. */
  keys: Tensor<'f32'>[] = [];
  values: Tensor<'f32'>[] = [];
  /** Real tokens per row (= the position id of the row's next token). */
  lengths: number[] = [];

  constructor(
    private readonly numLayers: number,
    private readonly numKvHeads: number,
    private readonly headDim: number,
  ) {}

  get size(): number {
    return this.lengths.length;
  }

  /** Length of the sequence axis (the longest row). */
  get sequence(): number {
    return this.keys[0]?.shape[2] ?? 0;
  }

  /** The cache as the model's `past` input. */
  get past(): KvCache {
    return { keys: this.keys, values: this.values };
  }

  /** Attention mask rows over past + `extra` new tokens: padding 0, real tokens 1. */
  mask(extra: number): number[][] {
    const S = this.sequence;
    return this.lengths.map((n) => {
      const row = new Array<number>(S + extra).fill(1);
      row.fill(0, 0, S - n);
      return row;
    });
  }

  /** After a decode step: `present` holds one more real token per row. */
  advance(present: KvCache): void {
    this.keys = [...present.keys];
    this.values = [...present.values];
    this.lengths = this.lengths.map((n) => n + 1);
  }

  /** Replaces the batch by `rows` (in that order), each packed right-aligned, padding trimmed. */
  pack(rows: readonly CacheRowSource[]): void {
    const { numKvHeads: H, headDim: D } = this;
    const B = rows.length;
    const S = rows.reduce((m, r) => Math.max(m, r.length), 0);
    const keys: Tensor<'f32'>[] = [];
    const values: Tensor<'f32'>[] = [];
    for (let l = 0; l < this.numLayers; l++) {
      const k = new Float32Array(B * H * S * D);
      const v = new Float32Array(B * H * S * D);
      for (let b = 0; b < B; b++) {
        const { cache, row, length } = rows[b];
        const srcK = cache.keys[l];
        const srcS = srcK.shape[2];
        for (let h = 0; h < H; h++) {
          // [B, H, S, D]: the last `length` positions of (row, h), contiguous.
          const from = ((row * H + h) * srcS + (srcS - length)) * D;
          const to = ((b * H + h) * S + (S - length)) * D;
          k.set(srcK.data.subarray(from, from + length * D), to);
          v.set(cache.values[l].data.subarray(from, from + length * D), to);
        }
      }
      keys.push(tensor('f32', [B, H, S, D], k));
      values.push(tensor('f32', [B, H, S, D], v));
    }
    this.keys = keys;
    this.values = values;
    this.lengths = rows.map((r) => r.length);
  }
}
