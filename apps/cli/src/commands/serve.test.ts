import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../test-utils/run-cli.js';

const bin = fileURLToPath(new URL('../../bin/lora.js', import.meta.url));

/** The serve package's test model and adapters (loaded by URL: it lives outside this package). */
interface ServeFixture {
  root: string;
  model: string;
  adapters: string;
  names: string[];
  remove(): Promise<void>;
}
const fixtureModule = new URL(
  '../../../../packages/serve/src/test-utils/fixture.ts',
  import.meta.url,
).href;
async function writeServeFixture(count: number): Promise<ServeFixture> {
  const m = (await import(/* @vite-ignore */ fixtureModule)) as {
    writeServeFixture(count: number): Promise<ServeFixture>;
  };
  return m.writeServeFixture(count);
}
const PROMPTS = ['Once upon', 'The cat sat on'];
const MAX_TOKENS = 10;

let fx: ServeFixture;
let child: ChildProcess | undefined;
let url: string;
let stderr = '';
let exited: Promise<number | null>;

beforeAll(async () => {
  for (const built of ['../../dist/main.js', '../../../../packages/serve/dist/index.js']) {
    if (!existsSync(fileURLToPath(new URL(built, import.meta.url)))) {
      throw new Error(
        `${built} is missing: build first (pnpm build); this test runs the lora executable.`,
      );
    }
  }
  fx = await writeServeFixture(8);
  child = spawn(
    process.execPath,
    [
      bin,
      'serve',
      '--model',
      fx.model,
      '--adapters',
      fx.adapters,
      '--port',
      '0',
      '--max-batch',
      '16',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  exited = new Promise((resolve) => child!.on('exit', (code) => resolve(code)));
  url = await new Promise<string>((resolve, reject) => {
    child!.stderr!.setEncoding('utf8');
    child!.stderr!.on('data', (chunk: string) => {
      stderr += chunk;
      const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(stderr);
      if (m) resolve(m[1]);
    });
    child!.on('exit', (code) => reject(new Error(`lora serve exited ${code}: ${stderr}`)));
  });
});
afterAll(async () => {
  if (child && child.exitCode === null) child.kill('SIGKILL');
  await fx?.remove();
});

async function complete(model: string, prompt: string, maxTokens = MAX_TOKENS) {
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt, max_tokens: maxTokens, temperature: 0 }),
  });
  expect(r.status).toBe(200);
  const body = (await r.json()) as { choices: { text: string }[] };
  return body.choices[0].text;
}

describe('lora serve (the executable)', () => {
  it('prints a startup summary with the model, adapters, limits and the address', () => {
    expect(stderr).toMatch(/model: tiny-model/);
    expect(stderr).toMatch(/adapters: 8 in /);
    expect(stderr).toMatch(/limits: batch 16/);
  });

  it('16 concurrent requests over 8 adapters each equal `lora generate --json`', async () => {
    const jobs = fx.names.flatMap((name) => PROMPTS.map((prompt) => ({ name, prompt })));
    const answers = await Promise.all(jobs.map((j) => complete(j.name, j.prompt)));
    for (const [k, j] of jobs.entries()) {
      const r = await runCli([
        'generate',
        '--model',
        fx.model,
        '--adapter',
        join(fx.adapters, j.name),
        '--prompt',
        j.prompt,
        '--max-tokens',
        String(MAX_TOKENS),
        '--json',
      ]);
      expect(r.code).toBe(0);
      expect(answers[k], `${j.name}: ${j.prompt}`).toBe(JSON.parse(r.stdout).text);
    }
    const metrics = await (await fetch(`${url}/metrics`)).text();
    const passes = Number(/^lora_forward_passes_total\{kind="decode"\} (\d+)/m.exec(metrics)![1]);
    expect(passes).toBeLessThan(16 * (MAX_TOKENS - 1)); // rows shared decode passes
  });

  it('SIGTERM: the request in flight finishes, then the process exits 0', async () => {
    const inFlight = complete('a1', PROMPTS[0], 200);
    await new Promise((r) => setTimeout(r, 100));
    child!.kill('SIGTERM');
    expect((await inFlight).length).toBeGreaterThan(0);
    expect(await exited).toBe(0);
    expect(stderr).toMatch(/SIGTERM: no new requests/);
  });
});
