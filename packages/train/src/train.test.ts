import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadPeftAdapter } from '@lora/adapters';
import { loadTokenizer } from '@lora/runtime-onnx';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TrainOptions, train } from './train.js';

const data = new URL('./testdata/trajectory/', import.meta.url).pathname;
const stories = fileURLToPath(
  new URL('../../../../shared/fixtures/llama2c-stories260k/', import.meta.url),
);
const haveStories = existsSync(stories);
if (!haveStories)
  console.warn(`SKIPPED: ${stories} is absent; the text-row training test does not run.`);

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lora-train-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

let n = 0;
function run(extra: Partial<TrainOptions>) {
  return train({
    model: join(data, 'model'),
    data: join(data, 'train.jsonl'),
    output: join(dir, `out-${n++}`),
    steps: 3,
    batchSize: 4,
    lr: 1e-2,
    intraOpNumThreads: 1,
    ...extra,
  });
}

describe('train()', () => {
  it('LoRA dropout: masks drawn from the seed (same seed, same run; other seed, other losses)', async () => {
    const lora = { rank: 4, targets: 'all-linear', dropout: 0.3 };
    const a = await run({ lora, seed: 1 });
    const b = await run({ lora, seed: 1 });
    const c = await run({ lora, seed: 2, shuffle: false });
    const d = await run({ lora, seed: 1, shuffle: false });
    expect(b.steps.map((s) => s.loss)).toEqual(a.steps.map((s) => s.loss));
    // Same data order (no shuffle), different masks from step 2 on (step 1's B is zero: no effect).
    expect(c.steps[0].loss).toBe(d.steps[0].loss);
    expect(c.steps[2].loss).not.toBe(d.steps[2].loss);
  });

  it('QLoRA with int4 and fp4 bases trains close to, but not exactly as, the float base', async () => {
    const common = { initAdapter: join(data, 'init-adapter'), shuffle: false, steps: 2 };
    const f32 = await run({ ...common, method: 'lora' });
    for (const format of ['int4', 'fp4'] as const) {
      const q = await run({ ...common, method: 'qlora', quant: { format } });
      const rel = Math.abs(q.steps[0].loss - f32.steps[0].loss) / f32.steps[0].loss;
      expect(rel, format).toBeGreaterThan(1e-6);
      expect(rel, format).toBeLessThan(0.05);
    }
  });

  it('PiSSA with lr 0 saves an adapter whose delta on the original base is zero', async () => {
    const r = await run({
      lora: { rank: 2, targets: ['q_proj'], init: 'pissa', dropout: 0 },
      lr: 0,
    });
    const { adapter } = await loadPeftAdapter(r.output!);
    expect(adapter.config.r).toBe(4);
    for (const m of adapter.modules.values()) {
      const A = m.A.data as Float32Array;
      const B = m.B.data as Float32Array;
      const [r2, inF] = m.A.shape;
      for (let o = 0; o < m.B.shape[0]; o++) {
        for (let i = 0; i < inF; i++) {
          let delta = 0;
          let scale = 0;
          for (let k = 0; k < r2; k++) {
            delta += B[o * r2 + k] * A[k * inF + i];
            scale += Math.abs(B[o * r2 + k] * A[k * inF + i]);
          }
          expect(Math.abs(delta)).toBeLessThanOrEqual(1e-6 * scale + 1e-12);
        }
      }
    }
  });

  it('evaluates held-out data every N steps and at the end', async () => {
    const r = await run({
      steps: 4,
      evalData: join(data, 'eval.jsonl'),
      evalEvery: 3,
      lora: { targets: ['q_proj'] },
    });
    expect(r.evals.map((e) => e.step)).toEqual([3, 4]);
    expect(r.evals[0].tokens).toBe(12);
    expect(r.evals[1].perplexity).toBeCloseTo(Math.exp(r.evals[1].loss), 10);
  });

  it.skipIf(!haveStories)(
    'text and prompt/completion rows through the model tokenizer, packed',
    async () => {
      const file = join(dir, 'text.jsonl');
      await writeFile(
        file,
        [
          JSON.stringify({ text: 'Once upon a time there was a little dog.' }),
          JSON.stringify({ prompt: 'Lily saw a', completion: ' big red ball.' }),
          JSON.stringify({ text: 'The sun was warm and the sky was blue.' }),
        ].join('\n'),
      );
      const tok = await loadTokenizer(stories);
      const total =
        tok.encode('Once upon a time there was a little dog.').length +
        tok.encode('Lily saw a').length +
        tok.encode(' big red ball.', { addSpecialTokens: false }).length +
        tok.encode('The sun was warm and the sky was blue.').length;
      const r = await train({
        model: stories,
        data: file,
        output: join(dir, 'stories'),
        packing: true,
        seqLen: 16,
        steps: 2,
        batchSize: 2,
        intraOpNumThreads: 1,
      });
      expect(r.data.rows).toBe(3);
      expect(r.data.examples).toBe(Math.ceil(total / 16));
      expect(r.steps.every((s) => Number.isFinite(s.loss))).toBe(true);
    },
  );
});
