import { createRng } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { type QLoraLinearInputs, qloraLinearBackward, qloraLinearForward } from './qlora.js';
import { dequantizeWeightF32, quantizeWeight } from './quantized-weight.js';

describe('QLoRA linear reference (float64)', () => {
  const M = 3;
  const K = 20;
  const N = 6;
  const r = 2;
  const rng = createRng(41);
  const weight = quantizeWeight(rng.normalArray(N * K, 0, 0.3, 'f32'), [N, K], {
    format: 'nf4',
    blockSize: 32,
    doubleQuant: true,
  });
  const base: QLoraLinearInputs = {
    x: rng.normalArray(M * K),
    M,
    weight,
    A: rng.normalArray(r * K, 0, 0.5),
    B: rng.normalArray(N * r, 0, 0.5),
    r,
    scale: 1.5,
    bias: rng.normalArray(N),
  };
  const dy = rng.normalArray(M * N);
  // loss = <dy, y>, so d loss / d p = the backward's gradient for p.
  const loss = (p: QLoraLinearInputs) =>
    qloraLinearForward(p).y.reduce((s, v, i) => s + v * dy[i], 0);

  it('forward equals x deq(W)^T + s (x A^T) B^T + bias computed directly', () => {
    const W = dequantizeWeightF32(weight);
    const { y } = qloraLinearForward(base);
    for (let m = 0; m < M; m++)
      for (let n = 0; n < N; n++) {
        let want = base.bias![n];
        for (let k = 0; k < K; k++) {
          let delta = 0;
          for (let j = 0; j < r; j++) delta += base.B[n * r + j] * base.A[j * K + k];
          want += base.x[m * K + k] * (W[n * K + k] + base.scale * delta);
        }
        expect(y[m * N + n]).toBeCloseTo(want, 12);
      }
  });

  it('dx, dA, dB equal central finite differences', () => {
    const grads = qloraLinearBackward(base, dy);
    const h = 1e-6;
    for (const key of ['x', 'A', 'B'] as const) {
      const g = key === 'x' ? grads.dx : key === 'A' ? grads.dA : grads.dB;
      const p = base[key];
      for (let i = 0; i < p.length; i++) {
        const plus = Float64Array.from(p);
        const minus = Float64Array.from(p);
        plus[i] += h;
        minus[i] -= h;
        const fd = (loss({ ...base, [key]: plus }) - loss({ ...base, [key]: minus })) / (2 * h);
        expect(Math.abs(fd - g[i])).toBeLessThan(1e-6 * Math.max(1, Math.abs(fd)));
      }
    }
  });
});
