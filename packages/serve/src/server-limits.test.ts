import { copyFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { createRng } from '@lora/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LoraServer, startServer } from './server.js';
import { type ServeFixture, writeServeFixture } from './test-utils/fixture.js';

/** A response's JSON body, loosely typed for assertions. */
// biome-ignore lint/suspicious/noExplicitAny: test assertions read arbitrary fields
const json = (r: Response): Promise<any> => r.json();

const KEY = 'test-key-123';
let fx: ServeFixture;
let server: LoraServer;
let plainModel: string;

beforeAll(async () => {
  fx = await writeServeFixture(2);
  // The same model without tokenizer_config.json: no chat template.
  plainModel = join(fx.root, 'plain-model');
  await mkdir(plainModel);
  for (const f of ['config.json', 'model.safetensors'])
    await copyFile(join(fx.model, f), join(plainModel, f));
  server = await startServer({
    model: plainModel,
    adapters: fx.adapters,
    servedModelName: 'base',
    port: 0,
    apiKey: KEY,
    maxBatch: 2,
    preload: ['a1'],
    memoryBudgetBytes: 1 << 20,
    limits: {
      bodyBytes: 4096,
      promptTokens: 32,
      maxTokens: 8,
      concurrentRequests: 3,
      queueLength: 2,
      promptsPerRequest: 2,
    },
  });
});
afterAll(async () => {
  await server?.close();
  await fx?.remove();
});

const auth = { authorization: `Bearer ${KEY}` };
const send = (path: string, body: string | unknown, headers: Record<string, string> = auth) =>
  fetch(`${server.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });

/** Status and OpenAI error body of a request. */
async function errorOf(
  r: Response,
): Promise<{ status: number; code: string; message: string; type: string }> {
  const body = await json(r);
  return { status: r.status, ...body.error };
}

describe('limits and bad input: each a 4xx naming the problem, in the OpenAI error shape', () => {
  it('API key: 401 without it or with a wrong one; /health needs none', async () => {
    expect((await send('/v1/completions', { model: 'base', prompt: 'x' }, {})).status).toBe(401);
    const wrong = await errorOf(
      await send(
        '/v1/completions',
        { model: 'base', prompt: 'x' },
        { authorization: 'Bearer nope' },
      ),
    );
    expect(wrong).toMatchObject({ status: 401, type: 'authentication_error' });
    expect((await fetch(`${server.url}/v1/models`)).status).toBe(401);
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
    const ok = await send('/v1/completions', { model: 'base', prompt: 'x', max_tokens: 2 });
    expect(ok.status).toBe(200);
  });

  it('--preload: the adapter is loaded at startup; /v1/models says which are loaded', async () => {
    const r = await fetch(`${server.url}/v1/models`, { headers: auth });
    const models = (await json(r)).data as { id: string; loaded: boolean }[];
    expect(models.map((m) => [m.id, m.loaded])).toEqual([
      ['base', true],
      ['a0', false],
      ['a1', true],
    ]);
  });

  it('malformed JSON, wrong types, n > 1, unknown model, missing fields', async () => {
    const cases: [string | unknown, number, RegExp][] = [
      ['{"model": "base", "prompt": ', 400, /JSON/i],
      [{ model: 'base', prompt: 5 }, 400, /prompt/],
      [{ model: 'base', prompt: 'x', max_tokens: '4' }, 400, /max_tokens/],
      [{ model: 'base', prompt: 'x', n: 2 }, 400, /n/],
      [{ model: 'base', prompt: 'x', temperature: -1 }, 400, /temperature/],
      [{ model: 'base' }, 400, /prompt/],
      [{ model: 'nope', prompt: 'x' }, 404, /nope/],
      [[1, 2], 400, /object/],
    ];
    for (const [body, status, message] of cases) {
      const e = await errorOf(await send('/v1/completions', body));
      expect(e.status, JSON.stringify(body)).toBe(status);
      expect(e.message).toMatch(message);
    }
  });

  it('body size, prompt tokens, max_tokens, prompts per request: each names its limit', async () => {
    const big = await errorOf(
      await send('/v1/completions', { model: 'base', prompt: 'x'.repeat(5000) }),
    );
    expect(big).toMatchObject({ status: 413, code: 'LIMIT_BODY_BYTES' });
    const long = await errorOf(
      await send('/v1/completions', { model: 'base', prompt: 'y'.repeat(40) }),
    );
    expect(long).toMatchObject({ status: 400, code: 'LIMIT_PROMPT_TOKENS' });
    expect(long.message).toMatch(/32 prompt tokens/);
    const many = await errorOf(
      await send('/v1/completions', { model: 'base', prompt: 'x', max_tokens: 9 }),
    );
    expect(many).toMatchObject({ status: 400, code: 'LIMIT_MAX_TOKENS' });
    expect(many.message).toMatch(/limit of 8/);
    const prompts = await errorOf(
      await send('/v1/completions', { model: 'base', prompt: ['a', 'b', 'c'] }),
    );
    expect(prompts).toMatchObject({ status: 400, code: 'LIMIT_PROMPTS' });
  });

  it('chat without a chat template: 400 saying so', async () => {
    const e = await errorOf(
      await send('/v1/chat/completions', {
        model: 'base',
        messages: [{ role: 'user', content: 'hi' }],
      }),
    );
    expect(e).toMatchObject({ status: 400, code: 'NO_CHAT_TEMPLATE' });
  });

  it('concurrent requests and queue length: 429 / 503 beyond the limits, the others answer 200', async () => {
    // 3 requests may be in flight; 2 rows run, so at most 2 more wait; a burst of 10 overflows.
    const burst = await Promise.all(
      Array.from({ length: 10 }, () =>
        send('/v1/completions', { model: 'base', prompt: ['ab', 'cd'], max_tokens: 8 }),
      ),
    );
    const statuses = burst.map((r) => r.status);
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThan(0);
    expect(statuses.every((s) => [200, 429, 503].includes(s))).toBe(true);
    const refused = await Promise.all(burst.filter((r) => r.status !== 200).map(errorOf));
    expect(refused.length).toBeGreaterThan(0);
    for (const e of refused) expect(e.message).toMatch(/limit/);
  });

  it('seeded fuzz of HTTP bodies: every case answers 2xx or 4xx, never a crash', async () => {
    const rng = createRng(2026);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rng.uniform() * xs.length)];
    const values: unknown[] = [
      null,
      true,
      0,
      -1,
      1.5,
      1e308,
      -1e308,
      2 ** 53,
      '',
      'x',
      'base',
      'a0',
      '../a0',
      '\u0000',
      [],
      ['x'],
      [1],
      {},
      { name: 'a0' },
      { name: '..' },
      'é'.repeat(50),
      [[[[[]]]]],
    ];
    const fields = [
      'model',
      'prompt',
      'max_tokens',
      'temperature',
      'top_p',
      'seed',
      'stop',
      'n',
      'stream',
      'adapters',
      'messages',
      'extra',
    ];
    const statuses = new Map<number, number>();
    for (let k = 0; k < 150; k++) {
      let body: string;
      const kind = rng.uniform();
      if (kind < 0.6) {
        const obj: Record<string, unknown> = { model: 'base', prompt: 'ab', max_tokens: 2 };
        for (let m = 0; m < 1 + Math.floor(rng.uniform() * 3); m++)
          obj[pick(fields)] = pick(values);
        body = JSON.stringify(obj);
      } else if (kind < 0.8) {
        const valid = JSON.stringify({ model: 'base', prompt: 'ab', max_tokens: 2, stop: ['q'] });
        body = valid.slice(0, Math.floor(rng.uniform() * valid.length)); // truncated JSON
      } else if (kind < 0.9) {
        const depth = 1 + Math.floor(rng.uniform() * 1500);
        body = `${'['.repeat(depth)}${']'.repeat(depth)}`; // deep nesting (within the body limit)
      } else {
        body = Array.from({ length: 1 + Math.floor(rng.uniform() * 64) }, () =>
          String.fromCharCode(Math.floor(rng.uniform() * 256)),
        ).join('');
      }
      const path = rng.uniform() < 0.8 ? '/v1/completions' : '/v1/chat/completions';
      const r = await send(path, body);
      const text = await r.text();
      expect(r.status < 500, `${path} ${body.slice(0, 200)} -> ${r.status} ${text}`).toBe(true);
      statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
    }
    expect(statuses.get(400)).toBeGreaterThan(0);
    expect((await fetch(`${server.url}/health`)).status).toBe(200);
  });
});

describe('shutdown', () => {
  it('close(): refuses new requests, finishes the one in flight', async () => {
    const other = await startServer({ model: fx.model, port: 0 });
    let settled = false;
    const inFlight = fetch(`${other.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tiny-model', prompt: 'ab', max_tokens: 200, temperature: 0 }),
    }).finally(() => {
      settled = true;
    });
    // Wait until the request is being generated, then close.
    while (!settled && other.service.inFlight === 0) await new Promise((r) => setTimeout(r, 2));
    expect(settled).toBe(false);
    const closing = other.close(10_000);
    const late = await fetch(`${other.url}/health`).then(
      (x) => x.status,
      () => 'refused',
    );
    expect([503, 'refused']).toContain(late);
    const r = await inFlight;
    expect(r.status).toBe(200);
    expect((await json(r)).choices[0].text.length).toBeGreaterThan(0);
    await closing;
    await expect(fetch(`${other.url}/health`)).rejects.toThrow();
  });
});
