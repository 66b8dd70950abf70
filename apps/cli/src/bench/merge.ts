import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Adapter, type LoraModule, mergeIntoModel } from '@lora/adapters';
import {
  createLoraConfig,
  f32ToF16Array,
  type SafetensorsEntry,
  SafetensorsFile,
  type TensorToWrite,
  tensor,
  writeSafetensors,
} from '@lora/core';
import { xorshiftValues } from '../synthetic-values.js';
import { medianTimes } from './timing.js';
import type { BenchSection } from './types.js';

type Times = { wallMs: number; cpuMs: number };

/** Values in [-scale, scale): fast, deterministic filler for a synthetic layer. */
function filler(n: number, seed: number, scale: number): Float32Array {
  return xorshiftValues(n, seed, 2 * scale);
}

/**
 * Merging rank 16 into the seven linear weights of one LLaMA-7B-shaped layer (hidden 4096,
 * intermediate 11008; f16 and f32 bases in a temporary file) against a plain read + write of the
 * same tensors in the same run, and against a copy streamed through a reused buffer as the merge
 * is. Goal: merge at most 4x the plain copy.
 */
export const mergeBench: BenchSection = {
  name: 'merge',
  title:
    'merge: rank-16 LoRA into a LLaMA-7B layer (q,k,v,o,gate,up,down; f16 and f32) vs read+write of the same tensors',
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
        /** Copies the base file, each tensor's data given by `data` (read as the copy chooses). */
        const copyWith =
          (
            data: (
              f: SafetensorsFile,
              name: string,
              e: SafetensorsEntry,
            ) => Omit<TensorToWrite, 'name'>,
          ) =>
          async () => {
            const f = await SafetensorsFile.open(basePath);
            try {
              const out = join(dir, `copy-${n++}.safetensors`);
              await writeSafetensors(
                out,
                f.names().map((name) => ({ name, ...data(f, name, f.entry(name)) })),
              );
              await rm(out);
            } finally {
              await f.close();
            }
          };
        // Plain copy: each tensor read whole into a fresh buffer (SafetensorsFile.read), then
        // written (writeSafetensors).
        const copy = copyWith((f, name, e) => ({
          dtype: e.dtype,
          shape: e.shape,
          data: async () => (await f.read(name)).data,
        }));
        // Streamed copy: the merge's own I/O pattern, each tensor read in 4 MiB pieces into one
        // reused buffer (SafetensorsFile.readInto), each piece written before the next is read.
        const block = new Uint8Array(4 << 20);
        const streamedCopy = copyWith((f, name, e) => ({
          dtype: 'u8' as const,
          shape: [e.byteLength],
          data: async function* () {
            for (let at = 0; at < e.byteLength; at += block.length) {
              const piece = block.subarray(0, Math.min(block.length, e.byteLength - at));
              await f.readInto(name, at, piece);
              yield piece;
            }
          },
        }));
        const merge = (residual: boolean) => async () => {
          const out = join(dir, `merged-${n++}.safetensors`);
          await mergeIntoModel(basePath, [{ adapter }], out, { residual });
          await rm(out);
          await rm(out.replace(/\.safetensors$/, '.unmerge-residual.safetensors'), { force: true });
        };
        const repeats = ctx.quick ? 1 : 3;
        ctx.log(`${dtype}: timing copy / streamed copy / merge / merge + residual`);
        const copy1 = await medianTimes(copy, repeats, 1);
        const streamed1 = await medianTimes(streamedCopy, repeats, 1);
        const plain = await medianTimes(merge(false), repeats, 1);
        const exact = await medianTimes(merge(true), repeats, 0);
        const copy2 = await medianTimes(copy, repeats, 0);
        const streamed2 = await medianTimes(streamedCopy, repeats, 0);
        const faster = (a: Times, b: Times): Times => ({
          wallMs: Math.min(a.wallMs, b.wallMs),
          cpuMs: Math.min(a.cpuMs, b.cpuMs),
        });
        const copyRef = faster(copy1, copy2);
        const streamedRef = faster(streamed1, streamed2);

        const sized = join(dir, `sized-${dtype}.safetensors`);
        const report = await mergeIntoModel(basePath, [{ adapter }], sized, { residual: true });
        await rm(sized);
        await rm(sized.replace(/\.safetensors$/, '.unmerge-residual.safetensors'));
        await rm(basePath);
        const params = Object.values(shapes).reduce((a, [o, i]) => a + o * i, 0);
        const gbs = (ms: number) => Number(((2 * bytes) / 1e6 / ms).toFixed(2));
        const x = (t: number, ref: number) => Number((t / ref).toFixed(2));
        const row = (label: string, t: Times) => [
          `${dtype}: ${label}`,
          Math.round(t.wallMs),
          Math.round(t.cpuMs),
          x(t.wallMs, copyRef.wallMs),
          x(t.cpuMs, copyRef.cpuMs),
          x(t.wallMs, streamedRef.wallMs),
          x(t.cpuMs, streamedRef.cpuMs),
          gbs(t.wallMs),
        ];
        rows.push(
          row('copy (fresh buffer per tensor)', copyRef),
          row('copy (streamed, reused buffer)', streamedRef),
          row('merge (no residual)', plain),
          row('merge + unmerge residual (default)', exact),
        );
        const met = (r: number) => (r <= 4 ? 'MET' : 'NOT MET');
        const cpu = exact.cpuMs / copyRef.cpuMs;
        const wall = exact.wallMs / copyRef.wallMs;
        notes.push(
          `${dtype}: goal merge + residual <= 4x the plain copy: CPU time ${cpu.toFixed(2)}x (${met(cpu)}), wall ${wall.toFixed(2)}x (${met(wall)}); without residual CPU ${(plain.cpuMs / copyRef.cpuMs).toFixed(2)}x, wall ${(plain.wallMs / copyRef.wallMs).toFixed(2)}x. Against the streamed copy (same I/O as the merge, so the rest is the merge's arithmetic): CPU ${(exact.cpuMs / streamedRef.cpuMs).toFixed(1)}x with residual, ${(plain.cpuMs / streamedRef.cpuMs).toFixed(1)}x without. Residual ${(report.residual!.bytes / 2 ** 20).toFixed(2)} MiB for a ${(bytes / 2 ** 20).toFixed(0)} MiB layer (${report.residual!.patchedElements} patched elements, ${((100 * report.residual!.patchedElements) / params).toFixed(3)} %).`,
        );
        if (dtype === 'f16') {
          notes.unshift(
            `${Object.keys(shapes).length} weights, ${(params / 1e6).toFixed(1)} M parameters; core's merge engine (WebAssembly SIMD where available): rank ${r} delta in 512-column tiles of each row, float64, added to the decoded base element and rounded once to the output dtype, never materialised; single thread. The merge streams each tensor from the base file in 4 MiB blocks of rows through reused buffers and writes each merged block as it is done. Two copies, each the faster of two runs (before and after the merges), through the same file API and writer as the merge: the plain copy reads each tensor whole into a fresh buffer (SafetensorsFile.read) and writes it; the streamed copy reads 4 MiB pieces into one reused buffer (readInto) and writes each piece, as the merge does. All writes go to a temporary file that is fsynced and renamed. CPU time = user + system of the process (all threads), steadier than wall time; the machine is shared with other work, so wall times vary between runs. First touches of freshly allocated memory are slow on some machines (page faults); the plain copy pays them, the streamed copy and the merge do not.`,
          );
        }
      }
      return {
        columns: [
          'operation',
          'wall ms',
          'CPU ms',
          'x copy (wall)',
          'x copy (CPU)',
          'x streamed copy (wall)',
          'x streamed copy (CPU)',
          'GB/s (in+out, wall)',
        ],
        rows,
        notes,
      };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
};
