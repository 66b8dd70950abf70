import { cp, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LoraServer, startServer } from './server.js';
import { type ServeFixture, writeServeFixture } from './test-utils/fixture.js';
import { referenceGenerate } from './test-utils/reference.js';

/** A response's JSON body, loosely typed for assertions. */
// biome-ignore lint/suspicious/noExplicitAny: test assertions read arbitrary fields
const json = (r: Response): Promise<any> => r.json();

const PROMPTS = ['Once upon', 'The cat sat on'];
const MAX_TOKENS = 12;

let fx: ServeFixture;
let server: LoraServer;
let client: OpenAI;
/** references.get(model)[i]: `lora generate`'s answer for PROMPTS[i] ('tiny-model' = base). */
const references = new Map<string, { text: string; tokens: number[]; finishReason: string }[]>();

beforeAll(async () => {
  fx = await writeServeFixture(8);
  // A broken adapter folder and a symbolic link out of the adapters folder.
  await mkdir(join(fx.adapters, 'broken'));
  await writeFile(
    join(fx.adapters, 'broken', 'adapter_config.json'),
    '{"r": 4, "target_modules": ',
  );
  await mkdir(join(fx.root, 'outside'));
  await symlink(join(fx.root, 'outside'), join(fx.adapters, 'escape'));
  server = await startServer({ model: fx.model, adapters: fx.adapters, port: 0, maxBatch: 16 });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  for (const model of ['tiny-model', ...fx.names]) {
    const dir = model === 'tiny-model' ? undefined : join(fx.adapters, model);
    references.set(
      model,
      await referenceGenerate(fx.model, dir, PROMPTS, { maxTokens: MAX_TOKENS }),
    );
  }
});
afterAll(async () => {
  await server?.close();
  await fx?.remove();
});

const post = (base: string, path: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });

/** Value of a Prometheus sample, e.g. `lora_forward_passes_total{kind="decode"}` (0 if absent). */
async function metric(base: string, sample: string): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${sample} `));
  return line ? Number(line.split(' ').pop()) : 0;
}

describe('completions equal lora generate (greedy)', () => {
  it('base and adapters, with the official openai client; adapters change the answer', async () => {
    for (const model of ['tiny-model', 'a0', 'a1']) {
      const r = await client.completions.create({
        model,
        prompt: PROMPTS[0],
        max_tokens: MAX_TOKENS,
        temperature: 0,
      });
      const ref = references.get(model)![0];
      expect(r.choices[0].text).toBe(ref.text);
      expect(r.choices[0].finish_reason).toBe(ref.finishReason === 'length' ? 'length' : 'stop');
      expect(r.usage?.completion_tokens).toBe(ref.tokens.length);
      expect(r.usage?.prompt_tokens).toBe(1 + PROMPTS[0].length); // BOS + one byte per character
    }
    const texts = new Set(['tiny-model', ...fx.names].map((m) => references.get(m)![0].text));
    expect(texts.size).toBeGreaterThan(4);
  });

  it('16 concurrent requests over 8 adapters share forward passes and each equals its reference', async () => {
    const passes0 = await metric(server.url, 'lora_forward_passes_total{kind="decode"}');
    const rows0 = await metric(server.url, 'lora_forward_rows_total{kind="decode"}');
    const mixed0 = await metric(server.url, 'lora_batch_adapter_slots_count{kind="decode"}');
    const single0 = await metric(
      server.url,
      'lora_batch_adapter_slots_bucket{le="1",kind="decode"}',
    );
    const jobs = fx.names.flatMap((model) =>
      PROMPTS.map((prompt, i) => ({ model, prompt, ref: references.get(model)![i] })),
    );
    const answers = await Promise.all(
      jobs.map((j) =>
        client.completions.create({
          model: j.model,
          prompt: j.prompt,
          max_tokens: MAX_TOKENS,
          temperature: 0,
        }),
      ),
    );
    for (const [k, a] of answers.entries())
      expect(a.choices[0].text, jobs[k].model).toBe(jobs[k].ref.text);
    const passes = (await metric(server.url, 'lora_forward_passes_total{kind="decode"}')) - passes0;
    const rows = (await metric(server.url, 'lora_forward_rows_total{kind="decode"}')) - rows0;
    const mixed =
      (await metric(server.url, 'lora_batch_adapter_slots_count{kind="decode"}')) -
      mixed0 -
      ((await metric(server.url, 'lora_batch_adapter_slots_bucket{le="1",kind="decode"}')) -
        single0);
    // Each row samples its first token from its prefill, every other one (an EOS included)
    // from a decode pass; these passes are shared: far fewer than one per row-token.
    const sampled = jobs.reduce(
      (n, j) => n + j.ref.tokens.length + (j.ref.finishReason === 'eos' ? 1 : 0) - 1,
      0,
    );
    expect(rows).toBe(sampled);
    expect(passes).toBeLessThan(rows / 4);
    expect(mixed).toBeGreaterThan(0); // passes whose rows used two or more adapters
  });

  it('an array prompt gives one choice per prompt, each equal to its reference', async () => {
    const r = await post(server.url, '/v1/completions', {
      model: 'a2',
      prompt: PROMPTS,
      max_tokens: MAX_TOKENS,
      temperature: 0,
    });
    const body = await json(r);
    expect(r.status).toBe(200);
    expect(body.choices.map((c: { text: string }) => c.text)).toEqual(
      references.get('a2')!.map((x) => x.text),
    );
  });

  it('streaming yields the same text, ends with data: [DONE]', async () => {
    const stream = await client.completions.create({
      model: 'a3',
      prompt: PROMPTS[1],
      max_tokens: MAX_TOKENS,
      temperature: 0,
      stream: true,
    });
    let text = '';
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(text).toBe(references.get('a3')![1].text);
    expect(finish).toBe('length');
    const raw = await (
      await post(server.url, '/v1/completions', {
        model: 'a3',
        prompt: PROMPTS[1],
        max_tokens: 3,
        stream: true,
        temperature: 0,
      })
    ).text();
    expect(raw.startsWith('data: {')).toBe(true);
    expect(raw.endsWith('data: [DONE]\n\n')).toBe(true);
  });

  it('stop strings end the text before the stop string (finish_reason stop)', async () => {
    const ref = references.get('a4')![0].text;
    const stop = ref.slice(3, 5);
    const expected = ref.slice(0, ref.indexOf(stop));
    const r = await client.completions.create({
      model: 'a4',
      prompt: PROMPTS[0],
      max_tokens: MAX_TOKENS,
      temperature: 0,
      stop,
    });
    expect(r.choices[0].text).toBe(expected);
    expect(r.choices[0].finish_reason).toBe('stop');
  });

  it('seeded sampling equals lora generate with the same seed, temperature and top_p', async () => {
    const settings = { maxTokens: MAX_TOKENS, temperature: 0.9, topP: 0.95, seed: 7 };
    const [ref] = await referenceGenerate(
      fx.model,
      join(fx.adapters, 'a5'),
      [PROMPTS[0]],
      settings,
    );
    const r = await client.completions.create({
      model: 'a5',
      prompt: PROMPTS[0],
      max_tokens: MAX_TOKENS,
      temperature: 0.9,
      top_p: 0.95,
      seed: 7,
    });
    expect(r.choices[0].text).toBe(ref.text);
  });

  it('chat completions render the chat template (also streamed)', async () => {
    const messages = [{ role: 'user' as const, content: 'hi' }];
    // The template by hand: role tags, a newline per message, then the generation prompt.
    const [ref] = await referenceGenerate(
      fx.model,
      join(fx.adapters, 'a6'),
      ['<|user|>hi\n<|assistant|>'],
      {
        maxTokens: MAX_TOKENS,
        addSpecialTokens: false,
      },
    );
    const r = await client.chat.completions.create({
      model: 'a6',
      messages,
      max_tokens: MAX_TOKENS,
      temperature: 0,
    });
    expect(r.choices[0].message.content).toBe(ref.text);
    const stream = await client.chat.completions.create({
      model: 'a6',
      messages,
      max_tokens: MAX_TOKENS,
      temperature: 0,
      stream: true,
    });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
    expect(text).toBe(ref.text);
  });

  it('several adapters with scales on one request (the adapters extension)', async () => {
    // a0 at scale 0 plus nothing else is the base model exactly (a zero branch adds 0).
    const r = await post(server.url, '/v1/completions', {
      model: 'tiny-model',
      adapters: [{ name: 'a0', scale: 0 }],
      prompt: PROMPTS[0],
      max_tokens: MAX_TOKENS,
      temperature: 0,
    });
    expect((await json(r)).choices[0].text).toBe(references.get('tiny-model')![0].text);
    const both = await post(server.url, '/v1/completions', {
      model: 'a0',
      adapters: [{ name: 'a1', scale: 0 }],
      prompt: PROMPTS[0],
      max_tokens: MAX_TOKENS,
      temperature: 0,
    });
    expect((await json(both)).choices[0].text).toBe(references.get('a0')![0].text);
  });
});

describe('models and adapters', () => {
  it('GET /v1/models lists the base and every adapter folder, loaded or not', async () => {
    const body = await json(await fetch(`${server.url}/v1/models`));
    const ids = body.data.map((m: { id: string }) => m.id);
    expect(ids[0]).toBe('tiny-model');
    expect(ids).toEqual(expect.arrayContaining([...fx.names, 'broken']));
    expect(ids).not.toContain('escape');
  });

  it('a broken adapter answers 400 naming the problem, and harms no concurrent request', async () => {
    const [bad, good] = await Promise.all([
      post(server.url, '/v1/completions', { model: 'broken', prompt: 'x', max_tokens: 2 }),
      client.completions.create({
        model: 'a7',
        prompt: PROMPTS[0],
        max_tokens: MAX_TOKENS,
        temperature: 0,
      }),
    ]);
    expect(bad.status).toBe(400);
    const err = (await json(bad)).error;
    expect(err.message).toMatch(/broken/);
    expect(err.message).toMatch(/adapter_model\.safetensors/);
    expect(err.type).toBe('invalid_request_error');
    expect(good.choices[0].text).toBe(references.get('a7')![0].text);
  });

  it('adapterLoadsInFlight counts the loads in progress, until each succeeds or fails', async () => {
    const { service } = server;
    expect(service.adapterLoadsInFlight).toBe(0);
    const ok = service.loadAdapter('a3');
    const bad = service.loadAdapter('broken');
    expect(service.adapterLoadsInFlight).toBe(2);
    expect(service.inFlight).toBe(0); // loads are not completions
    const [loaded, failed] = await Promise.allSettled([ok, bad]);
    expect(loaded.status).toBe('fulfilled');
    expect(failed.status).toBe('rejected');
    expect(service.adapterLoadsInFlight).toBe(0);
  });

  it('adapter names cannot leave the folder', async () => {
    for (const model of ['../tiny-model', '/etc', 'escape', '..']) {
      const r = await post(server.url, '/v1/completions', { model, prompt: 'x', max_tokens: 2 });
      expect([400, 404], model).toContain(r.status);
      expect((await json(r)).error.message).toBeTruthy();
    }
    const viaLoad = await post(server.url, '/v1/adapters', { name: 'escape' });
    expect(viaLoad.status).toBe(400);
    expect((await json(viaLoad)).error.code).toBe('ADAPTER_NAME_INVALID');
    const del = await fetch(`${server.url}/v1/adapters/..%2F..`, { method: 'DELETE' });
    expect(del.status).toBe(400);
  });

  it('load, unload and eviction under concurrent traffic: no request fails', async () => {
    const small = await startServer({
      model: fx.model,
      adapters: fx.adapters,
      port: 0,
      maxLoaded: 2,
      maxBatch: 4,
    });
    try {
      const c = new OpenAI({ baseURL: `${small.url}/v1`, apiKey: 'unused', maxRetries: 0 });
      const jobs = [...fx.names, ...fx.names].map((model, k) => ({ model, i: k % 2 }));
      const admin = (async () => {
        for (const name of ['a0', 'a1', 'a2']) {
          const load = await post(small.url, '/v1/adapters', { name });
          expect(load.status).toBe(200);
          const del = await fetch(`${small.url}/v1/adapters/${name}`, { method: 'DELETE' });
          expect([200, 404]).toContain(del.status); // 404: already evicted by traffic
        }
      })();
      const answers = await Promise.all(
        jobs.map((j) =>
          c.completions.create({
            model: j.model,
            prompt: PROMPTS[j.i],
            max_tokens: MAX_TOKENS,
            temperature: 0,
          }),
        ),
      );
      await admin;
      for (const [k, a] of answers.entries()) {
        expect(a.choices[0].text).toBe(references.get(jobs[k].model)![jobs[k].i].text);
      }
      expect(await metric(small.url, 'lora_adapter_evictions_total')).toBeGreaterThan(0);
      const models = (await json(await fetch(`${small.url}/v1/models`))).data;
      expect(models.filter((m: { loaded: boolean }) => m.loaded).length).toBeLessThanOrEqual(3);
    } finally {
      await small.close();
    }
  });

  it('an adapter changed on disk is served fresh after DELETE /v1/adapters/{name}', async () => {
    const ask = async () =>
      (
        await client.completions.create({
          model: 'a7',
          prompt: PROMPTS[0],
          max_tokens: MAX_TOKENS,
          temperature: 0,
        })
      ).choices[0].text;
    expect(await ask()).toBe(references.get('a7')![0].text);
    await rm(join(fx.adapters, 'a7'), { recursive: true });
    await cp(join(fx.adapters, 'a6'), join(fx.adapters, 'a7'), { recursive: true });
    expect(await ask()).toBe(references.get('a7')![0].text); // still the loaded copy
    const del = await fetch(`${server.url}/v1/adapters/a7`, { method: 'DELETE' });
    expect(del.status).toBe(200);
    expect(await ask()).toBe(references.get('a6')![0].text);
    expect((await fetch(`${server.url}/v1/adapters/a7`, { method: 'DELETE' })).status).toBe(200);
    const again = await fetch(`${server.url}/v1/adapters/a7`, { method: 'DELETE' });
    expect(again.status).toBe(404);
  });
});
