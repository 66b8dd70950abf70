import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectClose } from '../../test-utils/parity.js';
import { folderWeights } from '../weights.js';
import { type LlamaModel, loadLlama, openLlamaFolder } from './model.js';
import { readLlamaWeightsF32 } from './prepare.js';
import { referenceForward } from './reference.js';

const FIXTURE = fileURLToPath(
  new URL('../../../../../../shared/fixtures/llama2c-stories260k', import.meta.url),
);
const present = existsSync(`${FIXTURE}/model.safetensors`);
if (!present) console.warn(`SKIPPED: real-model tests need the fixture at ${FIXTURE}`);

describe.skipIf(!present)(
  'real pretrained model: llama2c stories260K (GQA 8/4, head_dim 8, tied)',
  () => {
    let model: LlamaModel;
    beforeAll(async () => {
      model = await loadLlama(FIXTURE, { intraOpNumThreads: 1 });
    });
    afterAll(async () => {
      await model?.release();
    });

    it('reads the config as published', () => {
      expect(model.config).toMatchObject({
        numHeads: 8,
        numKvHeads: 4,
        headDim: 8,
        numLayers: 5,
        tieWordEmbeddings: true,
      });
    });

    it('session logits equal the float64 reference forward', async () => {
      const { config, source } = await openLlamaFolder(FIXTURE);
      const weights = await readLlamaWeightsF32(config, source);
      await source.close();
      // BOS then ids of a TinyStories-like prompt.
      const tokens = [1, 403, 407, 261, 378, 430, 292, 343, 287, 275, 405, 261];
      const want = referenceForward(config, weights, tokens);
      const { logits } = await model.forward({ inputIds: [tokens] });
      // Trained weights give logits of magnitude ~10; float32 accumulation stays within 1e-4 relative.
      expectClose(logits.data, want, { atol: 2e-4, rtol: 1e-4 }, 'stories260K logits');
    });

    it('opens as a weight source with all 47 tensors', async () => {
      const source = await folderWeights(FIXTURE);
      expect(source.names().length).toBe(47);
      await source.close();
    });
  },
);
