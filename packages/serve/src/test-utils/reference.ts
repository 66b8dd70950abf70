import { loadPeftAdapter } from '@lora/adapters';
import {
  createLoraHook,
  generate,
  LoraSlots,
  loadLlama,
  loadTokenizer,
  modelEosIds,
} from '@lora/runtime-onnx';

/**
 * What `lora generate --json` reports for each prompt (run alone), through the same library
 * path (one adapter in slot 1 of a LoRA graph built for it alone, or the plain model):
 * the reference the server's answers must equal.
 */
export async function referenceGenerate(
  model: string,
  adapterDir: string | undefined,
  prompts: readonly string[],
  options: {
    maxTokens: number;
    temperature?: number;
    topP?: number;
    seed?: number;
    stop?: string[];
    addSpecialTokens?: boolean;
  },
): Promise<{ text: string; tokens: number[]; finishReason: string }[]> {
  const tokenizer = await loadTokenizer(model);
  const adapter = adapterDir ? (await loadPeftAdapter(adapterDir)).adapter : undefined;
  const lora = adapter
    ? createLoraHook({
        targets: (m) => adapter.modules.has(m),
        slots: 2,
        rank: Math.max(...[...adapter.modules.values()].map((m) => m.A.shape[0])),
      })
    : undefined;
  const llama = await loadLlama(model, { logits: 'last', linearHook: lora?.hook });
  try {
    let feeds: ReturnType<LoraSlots['feeds']> | undefined;
    if (lora && adapter) {
      const slots = new LoraSlots(lora.plan);
      slots.assign(1, [{ adapter }]);
      feeds = slots.feeds([1]);
    }
    const eosIds = await modelEosIds(model, llama.config, tokenizer);
    const out = [];
    // Each prompt alone (a batch of one), as `lora generate --prompt` runs it.
    for (const prompt of prompts) {
      const { outputs } = await generate(llama.stepper(feeds), tokenizer, {
        prompt,
        ...options,
        temperature: options.temperature ?? 0,
        eosIds,
        maxSequenceLength: llama.config.maxPositionEmbeddings,
      });
      out.push(outputs[0]);
    }
    return out;
  } finally {
    await llama.release();
  }
}
