import { open, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SafetensorsFile, writeSafetensors } from '@lora/core';
import { gbPerSecond, medianMs } from './timing.js';
import type { BenchSection } from './types.js';

/** safetensors tensor reads against a raw `fs` read of the same bytes, same run. */
export const safetensorsBench: BenchSection = {
  name: 'safetensors',
  title: 'safetensors: lazy tensor read vs raw fs read of the same bytes',
  async run(ctx) {
    const dir = await mkdtemp(join(tmpdir(), 'lora-bench-st-'));
    try {
      const count = ctx.quick ? 4 : 8;
      const elems = (ctx.quick ? 4 : 32) * 1024 * 1024; // 16 or 128 MiB per tensor
      const path = join(dir, 'bench.safetensors');
      ctx.log(`writing ${count} tensors of ${(elems * 4) / 2 ** 20} MiB`);
      await writeSafetensors(
        path,
        Array.from({ length: count }, (_, i) => ({
          name: `t${i}`,
          dtype: 'f32' as const,
          shape: [elems],
          data: () => new Float32Array(elems).fill(i),
        })),
      );
      const totalBytes = count * elems * 4;
      const f = await SafetensorsFile.open(path);
      const entries = f.names().map((n) => f.entry(n));
      const dataStart = f.header.dataStart;
      const rawRead = async () => {
        const h = await open(path, 'r');
        try {
          for (const e of entries) {
            const buf = new Uint8Array(e.byteLength);
            let done = 0;
            while (done < e.byteLength) {
              const { bytesRead } = await h.read(
                buf,
                done,
                e.byteLength - done,
                dataStart + e.dataOffsets[0] + done,
              );
              done += bytesRead;
            }
          }
        } finally {
          await h.close();
        }
      };
      const libRead = async () => {
        for (const e of entries) await f.read(e.name);
      };
      const openMs = await medianMs(async () => (await SafetensorsFile.open(path)).close(), 9);
      // Interleave to share the same cache and machine conditions.
      const rawMs = await medianMs(rawRead, ctx.quick ? 3 : 5);
      const libMs = await medianMs(libRead, ctx.quick ? 3 : 5);
      await f.close();
      const ratio = rawMs / libMs;
      return {
        columns: ['operation', 'bytes', 'median ms', 'GB/s'],
        rows: [
          ['raw fs read (page cache)', totalBytes, rawMs, gbPerSecond(totalBytes, rawMs)],
          ['SafetensorsFile.read', totalBytes, libMs, gbPerSecond(totalBytes, libMs)],
          ['open + validate header', 0, openMs, '-'],
        ],
        notes: [
          `read throughput = ${ratio.toFixed(2)} of the raw fs read (goal: >= 0.8): ${ratio >= 0.8 ? 'met' : 'NOT met'}`,
          'both read the same file from the page cache after a warm-up run; medians of repeated runs',
        ],
      };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
};
