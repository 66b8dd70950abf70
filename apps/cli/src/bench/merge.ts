import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Adapter, type LoraModule, mergeIntoModel } from '@lora/adapters';
import {
  createLoraConfig,
  f32ToF16Array,
  SafetensorsFile,
  tensor,
  writeSafetensors,
} from '@lora/core';
import { xorshiftValues } from '../synthetic-values.js';
import { medianTimes } from './timing.js';
import type { BenchSection } from './types.js';

/** Values in [-scale, scale): fast, deterministic filler for a synthetic layer. */
function filler(n: number, seed: number, scale: number): Float32Array {
  return xorshiftValues(n, seed, 2 * scale);
}

/**
 * Merging rank 16 into the seven linear weights of one LLaMA-7B-shaped layer (hidden 4096,
 * intermediate 11008; f16 and f32 bases in a temporary file) against a plain read + write of the
 * same tensors in the same run. Goal: merge at most 4x the copy.
 */
export const mergeBench: BenchSection = {
  name: 'merge',
  title:
    'merge: rank-16 LoRA into a LLaMA-7B layer (q,k,v,o,gate,up,down; f16) vs read+write of the same tensors',
  async run(ctx) {
    const hidden = ctx.quick ? 1024 : 4096;
    const inter = ctx.quick ? 2752 : 11008;
    const r = 16;
    const shapes: Record<string, [number, number]> = {
      'model.layers.0.self_attn.q_proj': [hidden, hidden],
      'model.layers.0.self_attn.k_proj': [hidden, hidden],
      'model.layers.0.self_attn.v_proj': [hidden, hidden],
      'model.layers.0.self_attn.o_proj': [hidden, hidden],
      'model.layers.0.mlp.gate_proj': [inter, hidden],
      'model.layers.0.mlp.up_proj': [inter, hidden],
      'model.layers.0.mlp.down_proj': [hidden, inter],
    };
    const dir = await mkdtemp(join(tmpdir(), 'lora-bench-merge-'));
    try {
      const rows: (string | number)[][] = [];
      const notes: string[] = [];
      for (const dtype of ['f16', 'f32'] as const) {
        const basePath = join(dir, `base-${dtype}.safetensors`);
        ctx.log(`writing the ${dtype} base layer (hidden ${hidden}, intermediate ${inter})`);
        let seed = 1;
        await writeSafetensors(
          basePath,
          Object.entries(shapes).map(([name, shape]) => {
            const s = seed++;
            return {
              name: `${name}.weight`,
              dtype,
              shape,
              data: () => {
                const v = filler(shape[0] * shape[1], s, 0.05);
                return dtype === 'f16' ? f32ToF16Array(v) : v;
              },
            };
          }),
        );
        const bytes = (await stat(basePath)).size;
        const modules = new Map<string, LoraModule>();
        for (const [name, [out, inF]] of Object.entries(shapes)) {
          modules.set(name, {
            A: tensor('f32', [r, inF], filler(r * inF, seed++, 0.02)),
            B: tensor('f32', [out, r], filler(out * r, seed++, 0.02)),
          });
        }
        const adapter: Adapter = {
          config: createLoraConfig({
            r,
            lora_alpha: 32,
            target_modules: [
              'q_proj',
              'k_proj',
              'v_proj',
              'o_proj',
              'gate_proj',
              'up_proj',
              'down_proj',
            ],
          }),
          modules,
          modulesToSave: new Map(),
        };

        let n = 0;
        const copy = async () => {
          const f = await SafetensorsFile.open(basePath);
          try {
            const out = join(dir, `copy-${n++}.safetensors`);
            await writeSafetensors(
              out,
              f.names().map((name) => {
                const e = f.entry(name);
                return {
                  name,
                  dtype: e.dtype,
                  shape: e.shape,
                  data: async () => (await f.read(name)).data,
                };
              }),
            );
            await rm(out);
          } finally {
            await f.close();
          }
        };
        const merge = (residual: boolean) => async () => {
          const out = join(dir, `merged-${n++}.safetensors`);
          await mergeIntoModel(basePath, [{ adapter }], out, { residual });
          await rm(out);
          await rm(out.replace(/\.safetensors$/, '.unmerge-residual.safetensors'), { force: true });
        };
        const repeats = ctx.quick ? 1 : 3;
        ctx.log(`${dtype}: timing copy / merge / merge + residual`);
        const copy1 = await medianTimes(copy, repeats, 1);
        const plain = await medianTimes(merge(false), repeats, 1);
        const exact = await medianTimes(merge(true), repeats, 0);
        const copy2 = await medianTimes(copy, repeats, 0);
        const copyRef = {
          wallMs: Math.min(copy1.wallMs, copy2.wallMs),
          cpuMs: Math.min(copy1.cpuMs, copy2.cpuMs),
        };

        const sized = join(dir, `sized-${dtype}.safetensors`);
        const report = await mergeIntoModel(basePath, [{ adapter }], sized, { residual: true });
        await rm(sized);
        await rm(sized.replace(/\.safetensors$/, '.unmerge-residual.safetensors'));
        await rm(basePath);
        const ratio = plain.wallMs / copyRef.wallMs;
        const exactRatio = exact.wallMs / copyRef.wallMs;
        const params = Object.values(shapes).reduce((a, [o, i]) => a + o * i, 0);
        const gbs = (ms: number) => Number(((2 * bytes) / 1e6 / ms).toFixed(2));
        const row = (label: string, t: { wallMs: number; cpuMs: number }) => [
          `${dtype}: ${label}`,
          Math.round(t.wallMs),
          Number((t.wallMs / copyRef.wallMs).toFixed(2)),
          Math.round(t.cpuMs),
          Number((t.cpuMs / copyRef.cpuMs).toFixed(2)),
          gbs(t.wallMs),
        ];
        rows.push(
          row('read + write (copy)', copyRef),
          row('merge (no residual)', plain),
          row('merge + unmerge residual (default)', exact),
        );
        const met = (x: number) => (x <= 4 ? 'MET' : 'NOT MET');
        notes.push(
          `${dtype}: goal merge + residual <= 4x the copy: wall ${exactRatio.toFixed(2)}x (${met(exactRatio)}), CPU time ${(exact.cpuMs / copyRef.cpuMs).toFixed(2)}x; without residual wall ${ratio.toFixed(2)}x. Residual ${(report.residual!.bytes / 2 ** 20).toFixed(2)} MiB for a ${(bytes / 2 ** 20).toFixed(0)} MiB layer (${report.residual!.patchedElements} patched elements, ${((100 * report.residual!.patchedElements) / params).toFixed(3)} %).`,
        );
        if (dtype === 'f16') {
          notes.unshift(
            `${Object.keys(shapes).length} weights, ${(params / 1e6).toFixed(1)} M parameters; core's merge engine (WebAssembly SIMD where available): rank ${r} delta in 512-column tiles of each row, float64, added to the decoded base element and rounded once to the output dtype, never materialised; single thread. Copy = the faster of two read+write runs (before and after the merges), same file API. CPU time = user + system of the process (all threads), steadier than wall time on a shared machine.`,
          );
        }
      }
      return {
        columns: ['operation', 'wall ms', 'x copy', 'CPU ms', 'x copy (CPU)', 'GB/s (in+out)'],
        rows,
        notes,
      };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
};
