import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { expectClose } from '../../test-utils/parity.js';
import { folderWeights } from '../weights.js';
import { parseLlamaConfig, ropeInverseFrequencies } from './config.js';
import { LlamaModel } from './model.js';
import { readLlamaWeightsF32 } from './prepare.js';
import { referenceForward } from './reference.js';

// Logits of transformers 5 LlamaForCausalLM for one tiny random model under each rope type, in
// both config spellings (scripts/reference/fidelity.py writes them; no Python needed here).
const DIR = fileURLToPath(new URL('./testdata/rope/', import.meta.url));

interface Reference {
  sequences: Record<string, number[]>;
  vocab: number;
  logits: Record<string, Record<string, number[]>>;
}
const reference = JSON.parse(await readFile(join(DIR, 'logits.json'), 'utf8')) as Reference;
const configOf = async (file: string) =>
  parseLlamaConfig(JSON.parse(await readFile(join(DIR, file), 'utf8')), file);

const cases = Object.keys(reference.logits).flatMap((type) =>
  ['legacy', 'v5'].map((spelling) => ({ type, spelling })),
);

describe('rope types and config spellings give transformers logits', () => {
  it.each(cases)('$type ($spelling spelling)', async ({ type, spelling }) => {
    const config = await configOf(`${type}-${spelling}.json`);
    const source = await folderWeights(DIR);
    const weights = await readLlamaWeightsF32(config, source);
    const model = await LlamaModel.create(config, source, { intraOpNumThreads: 1 }).finally(() =>
      source.close(),
    );
    try {
      for (const [name, ids] of Object.entries(reference.sequences)) {
        const { logits } = await model.forward({ inputIds: [ids] });
        expectClose(
          logits.data as Float32Array,
          reference.logits[type][name],
          { atol: 2e-4, rtol: 1e-4 },
          `${type} ${spelling} ${name}`,
        );
        // The float64 reference forward follows the same rope.
        expectClose(
          referenceForward(config, weights, ids),
          reference.logits[type][name],
          { atol: 2e-4, rtol: 1e-4 },
          `reference forward ${type} ${spelling} ${name}`,
        );
      }
    } finally {
      await model.release();
    }
  });

  it('the rope type changes the logits (the comparison is not blind to rope)', () => {
    const a = reference.logits.default.long;
    for (const type of Object.keys(reference.logits).filter((t) => t !== 'default')) {
      let d = 0;
      for (let i = 0; i < a.length; i++)
        d = Math.max(d, Math.abs(a[i] - reference.logits[type].long[i]));
      expect(d, type).toBeGreaterThan(1e-2);
    }
  });

  it('longrope uses its short factors up to the original context and its long ones beyond', async () => {
    const c = await configOf('longrope-v5.json');
    expect(c.rope.scaling?.type).toBe('longrope');
    // transformers' default attention factor: sqrt(1 + ln(64 / 8) / ln(8)) = sqrt(2).
    expect(c.rope.attentionScaling).toBeCloseTo(Math.SQRT2, 12);
  });

  it('dynamic NTK keeps theta within max_position_embeddings and grows it beyond, per call', async () => {
    const c = await configOf('dynamic-v5.json');
    expect(c.rope.scaling).toEqual({ type: 'dynamic', factor: 2, maxPositionEmbeddings: 8 });
    // head_dim 16: base 500 · (2 · 14 / 8 - 1)^(16 / 14) for a 14-token call.
    const inv = ropeInverseFrequencies(c, 14);
    const base = 500 * 2.5 ** (16 / 14);
    expect(inv[1]).toBeCloseTo(1 / base ** (2 / 16), 14);
    expect(ropeInverseFrequencies(c, 8)[1]).toBeCloseTo(1 / 500 ** (2 / 16), 14);
  });
});
