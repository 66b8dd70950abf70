import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../src/test-utils/run-cli.js';
import { cliBuilt, runCliChild } from './helpers/child-cli.js';
import { writeSyntheticAdapter, writeSyntheticLlama } from '../src/test-utils/synthetic-model.js';

/**
 * Mistakes in the user's input get a sentence about that input, not an internal message
 * ("The graph has no LoRA branch", "dir:abc does not exist").
 */

const fixtures = fileURLToPath(new URL('../../../../shared/fixtures/', import.meta.url));
const stories = join(fixtures, 'llama2c-stories260k');
const gpt2Adapter = join(fixtures, 'peft', 'gpt2-causal-cattn-cproj');
const haveFixtures = existsSync(stories) && existsSync(gpt2Adapter);
if (!haveFixtures)
  console.warn(
    `SKIPPED: ${stories} or ${gpt2Adapter} is absent; the wrong-architecture case does not run.`,
  );

let root: string;
let model: string;
let adapter: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'lora-messages-'));
  model = join(root, 'model');
  adapter = join(root, 'adapter');
  await writeSyntheticLlama(model);
  await writeSyntheticAdapter(adapter, 1);
});
afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

const outcomes: string[] = [];
afterAll(() =>
  process.stderr.write(`\nmessages about the user's input:\n${outcomes.join('\n')}\n`),
);

async function says(name: string, args: string[], message: RegExp, notMessage: RegExp) {
  const r = await runCli(args);
  outcomes.push(
    `${name.padEnd(34)} exit ${r.code}  ${r.stderr.trim().split('\n')[0]?.slice(0, 130)}`,
  );
  expect(r.code, r.stderr).not.toBe(0);
  expect(r.stderr).toMatch(message);
  expect(r.stderr).not.toMatch(notMessage);
}

describe('messages about the input', () => {
  it('--adapter dir:abc is bad <dir>:<weight> syntax (generate, merge, combine)', async () => {
    const syntax = /"abc" after the colon is not a number\. Write <dir>:<weight>/;
    await says(
      'generate --adapter dir:abc',
      ['generate', '--model', model, '--prompt', 'hi', '--adapter', `${adapter}:abc`],
      syntax,
      /does not exist/,
    );
    await says(
      'merge --adapter dir:abc',
      ['merge', '--base', model, '--adapter', `${adapter}:abc`, '-o', join(root, 'm')],
      syntax,
      /does not exist/,
    );
    await says(
      'combine --adapter dir:abc',
      ['combine', '--adapter', `${adapter}:abc`, '--adapter', adapter, '-o', join(root, 'c')],
      syntax,
      /does not exist/,
    );
  });

  it.skipIf(!haveFixtures)(
    'invalid sampling flags name the flag, and nothing is echoed before the error',
    async () => {
      for (const [flag, value, message] of [
        ['--top-p', '2', /--top-p must be in \(0, 1\]/],
        ['--repetition-penalty', '-1', /--repetition-penalty must be a finite number > 0/],
      ] as const) {
        const r = await runCli([
          'generate',
          '--model',
          stories,
          '--prompt',
          'Once upon',
          '--temperature',
          '0.8',
          flag,
          value,
        ]);
        outcomes.push(
          `${`generate ${flag} ${value}`.padEnd(34)} exit ${r.code}  ${r.stderr.trim().split('\n')[0]?.slice(0, 130)}`,
        );
        expect(r.code).not.toBe(0);
        expect(r.stderr).toMatch(message);
        expect(r.stderr).not.toMatch(/topP|repetitionPenalty/);
        expect(r.stdout, 'the prompt is not echoed before an error').toBe('');
      }
    },
  );

  it.skipIf(!haveFixtures || !cliBuilt)(
    '--device cuda: no native onnxruntime log line, only our message',
    async () => {
      // A child process: the native logger writes to the real stderr, which runCli cannot capture.
      const r = await runCliChild([
        'generate',
        '--model',
        stories,
        '--prompt',
        'Once',
        '--max-tokens',
        '2',
        '--device',
        'cuda',
      ]);
      const first = r.stderr.trim().split('\n')[0] ?? '';
      outcomes.push(
        `${'generate --device cuda (child)'.padEnd(34)} exit ${r.code}  ${first.slice(0, 130)}`,
      );
      expect(r.stderr.includes('\u001b['), 'no ANSI color codes').toBe(false);
      expect(r.stderr).not.toMatch(/\[[EW]:onnxruntime/);
      // without CUDA on this machine: our one-sentence error; with CUDA: the run succeeds
      if (r.code !== 0) expect(first).toMatch(/^lora: The CUDA execution provider did not start/);
    },
  );

  it.skipIf(!haveFixtures)(
    'generate with a GPT-2 adapter on a LLaMA model names the mismatch',
    async () => {
      await says(
        'generate: GPT-2 adapter on LLaMA',
        [
          'generate',
          '--model',
          stories,
          '--prompt',
          'Once',
          '--max-tokens',
          '2',
          '--adapter',
          gpt2Adapter,
        ],
        /adapts \d+ module\(s\) that .* does not have as linear layers .*made for another model or architecture/,
        /LoRA hook|LoRA branch/,
      );
    },
  );
});
