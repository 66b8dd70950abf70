import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LoraServer, startServer } from './server.js';
import { type ServeFixture, writeServeFixture } from './test-utils/fixture.js';
import { referenceGenerate } from './test-utils/reference.js';

let fx: ServeFixture;
let server: LoraServer;
let client: OpenAI;

beforeAll(async () => {
  fx = await writeServeFixture(8);
  server = await startServer({ model: fx.model, adapters: fx.adapters, port: 0, maxBatch: 16 });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
});
afterAll(async () => {
  await server?.close();
  await fx?.remove();
});

const post = (path: string, body: unknown) =>
  fetch(`${server.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });

describe('completions equal lora generate (greedy)', () => {
  it('base and one adapter, with the official openai client', async () => {
    for (const model of ['tiny-model', 'a0', 'a1']) {
      const r = await client.completions.create({
        model,
        prompt: 'Once upon',
        max_tokens: 12,
        temperature: 0,
      });
      const ref = await referenceGenerate(
        fx.model,
        model === 'tiny-model' ? undefined : join(fx.adapters, model),
        'Once upon',
        { maxTokens: 12 },
      );
      expect(r.choices[0].text).toBe(ref.text);
      expect(r.usage?.completion_tokens).toBe(ref.tokens.length);
    }
  });
});
