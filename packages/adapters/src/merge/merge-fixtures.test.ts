import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensors, type Tensor, toFloat64Array, writeSafetensors } from '@lora/core';
import { afterAll, describe, expect, it } from 'vitest';
import type { Adapter, LoraModule } from '../adapter.js';
import { loadPeftAdapter } from '../peft/load.js';
import { FIXTURES, HAVE_PEFT_FIXTURES, PEFT_FIXTURES } from '../test-utils/fixtures.js';
import { randomTensor } from '../test-utils/synthetic.js';
import { mergeIntoModel } from './merge-model.js';

const tmpDirs: string[] = [];
afterAll(async () => {
  for (const d of tmpDirs) await rm(d, { recursive: true, force: true });
});

/** One float32 ulp at |x| (the spacing of float32 numbers there). */
function ulp32(x: number): number {
  const a = Math.abs(Math.fround(x));
  if (a < 2 ** -126) return 2 ** -149;
  return 2 ** (Math.floor(Math.log2(a)) - 23);
}

/**
 * Reference written for the test, independent of the package: W + s·B·A in float64 with a plain
 * triple loop, in the stored layout ([out, in], or [in, out] when fanInFanOut).
 */
function referenceMerge(W: Tensor, m: LoraModule, s: number, fanInFanOut: boolean): Float64Array {
  const w = Float64Array.from(toFloat64Array(W));
  const A = toFloat64Array(m.A);
  const B = toFloat64Array(m.B);
  const [r, inF] = m.A.shape;
  const outF = m.B.shape[0];
  for (let o = 0; o < outF; o++) {
    for (let i = 0; i < inF; i++) {
      let acc = 0;
      for (let k = 0; k < r; k++) acc += B[o * r + k] * A[k * inF + i];
      const idx = fanInFanOut ? i * outF + o : o * inF + i;
      w[idx] += s * acc;
    }
  }
  return w;
}

/** A few modules of each distinct shape (keeps the synthetic bases small). */
function pickModules(adapter: Adapter, max = 4): string[] {
  const seen = new Set<string>();
  const picked: string[] = [];
  for (const [name, m] of adapter.modules) {
    const key = `${m.A.shape}|${m.B.shape}`;
    if (seen.has(key) || picked.length >= max) continue;
    seen.add(key);
    picked.push(name);
  }
  return picked;
}

describe.skipIf(!HAVE_PEFT_FIXTURES)('merging real PEFT adapters into synthetic bases', () => {
  for (const fx of FIXTURES) {
    it(`${fx.name}: merged = W + s·B·A (float64 reference${fx.fanInFanOut ? ', fan_in_fan_out' : ''})`, async () => {
      const { adapter: full } = await loadPeftAdapter(join(PEFT_FIXTURES, fx.name));
      const names = pickModules(full);
      const adapter: Adapter = {
        ...full,
        modules: new Map(names.map((n) => [n, full.modules.get(n)!])),
      };
      // The base the adapter was made for, as far as its shapes tell: [out, in] or [in, out].
      const base = new Map<string, Tensor>();
      let seed = 7;
      for (const n of names) {
        const m = adapter.modules.get(n)!;
        const [, inF] = m.A.shape;
        const outF = m.B.shape[0];
        base.set(`${n}.weight`, randomTensor(seed++, fx.fanInFanOut ? [inF, outF] : [outF, inF]));
      }
      for (const [p, t] of adapter.modulesToSave) base.set(p, randomTensor(seed++, t.shape));
      base.set('untouched.weight', randomTensor(seed++, [3, 5]));

      const dir = await mkdtemp(join(tmpdir(), 'lora-merge-fx-'));
      tmpDirs.push(dir);
      await writeSafetensors(join(dir, 'base.safetensors'), base);
      const out = join(dir, 'merged.safetensors');
      const report = await mergeIntoModel(join(dir, 'base.safetensors'), [{ adapter }], out, {
        residual: false,
      });
      expect(report.merged.length).toBe(names.length);

      const { tensors } = await readSafetensors(out);
      const s = fx.alpha / fx.r; // from SOURCES.md, not from the package
      for (const n of names) {
        const merged = tensors.get(`${n}.weight`)!;
        expect(merged.dtype).toBe('f32');
        const ref = referenceMerge(
          base.get(`${n}.weight`)!,
          adapter.modules.get(n)!,
          s,
          fx.fanInFanOut,
        );
        const got = merged.data as Float32Array;
        let worst = 0;
        for (let i = 0; i < ref.length; i++) {
          const err = Math.abs(got[i] - ref[i]);
          if (err > 2 ** -24 * Math.abs(ref[i])) worst = Math.max(worst, err / ulp32(ref[i]));
        }
        expect(worst, n).toBeLessThanOrEqual(1); // within one float32 ulp of the float64 reference
        // and the adapter really changed the weight
        const before = base.get(`${n}.weight`)!.data as Float32Array;
        expect(got.some((v, i) => v !== before[i])).toBe(true);
      }
      for (const [p, t] of adapter.modulesToSave) {
        expect(
          Buffer.from((tensors.get(p)!.data as Float32Array).buffer).equals(
            Buffer.from(
              (t.data as Float32Array).buffer,
              (t.data as Float32Array).byteOffset,
              t.data.byteLength,
            ),
          ),
        ).toBe(true);
      }
      expect(tensors.get('untouched.weight')!.data).toEqual(base.get('untouched.weight')!.data);
    });
  }
});
