import { existsSync } from 'node:fs';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRng, type Tensor, tensor, writeSafetensors } from '@lora/core';
import {
  ByteTokenizer,
  llamaWeightSpec,
  loadTokenizer,
  openLlamaFolder,
  parseLlamaConfig,
  readLlamaWeightsF32,
  referenceForward,
} from '@lora/runtime-onnx';
import { describe, expect, it } from 'vitest';
import { runCli } from '../test-utils/run-cli.js';

const stories = fileURLToPath(
  new URL('../../../../../shared/fixtures/llama2c-stories260k', import.meta.url),
);
const haveStories = existsSync(stories);
if (!haveStories)
  console.warn(`SKIPPED: ${stories} is absent; the real-model generate CLI tests do not run.`);

const PROMPT = 'Once upon a time';

/** The float64 reference's argmax after each prefix of prompt + generated (teacher forcing, one pass). */
async function referenceArgmaxes(generated: readonly number[]): Promise<number[]> {
  const { config, source } = await openLlamaFolder(stories);
  const weights = await readLlamaWeightsF32(config, source);
  await source.close();
  const prompt = (await loadTokenizer(stories)).encode(PROMPT);
  const seq = [...prompt, ...generated];
  const logits = referenceForward(config, weights, seq);
  const V = config.vocabSize;
  const out: number[] = [];
  for (let t = prompt.length - 1; t < seq.length - 1; t++) {
    let best = 0;
    for (let v = 1; v < V; v++) if (logits[t * V + v] > logits[t * V + best]) best = v;
    out.push(best);
  }
  return out;
}

describe.skipIf(!haveStories)('lora generate (stories260K)', () => {
  it('--json: 64 greedy tokens, equal to the float64 reference forward greedy choices, with timings', async () => {
    const r = await runCli([
      'generate',
      '--model',
      stories,
      '--prompt',
      PROMPT,
      '--max-tokens',
      '64',
      '--temperature',
      '0',
      '--json',
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc).toMatchObject({
      prompt: PROMPT,
      finishReason: 'length',
      device: 'cpu',
      quant: null,
    });
    expect(doc.tokens).toHaveLength(64);
    expect(doc.tokens).toEqual(await referenceArgmaxes(doc.tokens));
    expect(doc.promptTokens[0]).toBe(1); // BOS
    expect(doc.text.length).toBeGreaterThan(100);
    expect(Object.keys(doc.timings).sort()).toEqual([
      'decodeMs',
      'decodeTokens',
      'prefillMs',
      'tokensPerSecond',
    ]);
    expect(doc.timings.decodeTokens).toBe(63);

    // generation_config.json may name more EOS ids: make the 3rd greedy token one of them.
    const dir = await mkdtemp(join(tmpdir(), 'lora-generate-eos-'));
    try {
      for (const f of [
        'config.json',
        'model.safetensors',
        'tokenizer.json',
        'tokenizer_config.json',
      ]) {
        await symlink(join(stories, f), join(dir, f));
      }
      const eosIds = [2, doc.tokens[2]];
      await writeFile(
        join(dir, 'generation_config.json'),
        JSON.stringify({ eos_token_id: eosIds }),
      );
      const r2 = await runCli(['generate', '--model', dir, '--prompt', PROMPT, '--json']);
      const doc2 = JSON.parse(r2.stdout);
      const firstEos = doc.tokens.findIndex((t: number) => eosIds.includes(t));
      expect(doc2.finishReason).toBe('eos');
      expect(doc2.tokens).toEqual(doc.tokens.slice(0, firstEos));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('streams the prompt and the text to stdout, stats to stderr; --quant nf4 streams what --json reports', async () => {
    const args = [
      'generate',
      '--model',
      stories,
      '--prompt',
      PROMPT,
      '--max-tokens',
      '48',
      '--quant',
      'nf4',
    ];
    const human = await runCli(args);
    expect(human.code).toBe(0);
    const doc = JSON.parse((await runCli([...args, '--json'])).stdout);
    expect(doc.quant).toBe('nf4');
    expect(human.stdout).toBe(`${PROMPT}${doc.text}\n`);
    expect(human.stderr).toMatch(
      /48 tokens, finish: length; prompt 5 tokens in [\d.]+ ms, [\d.]+ tokens\/s on cpu, nf4/,
    );
    const noted = await runCli([...args, '--top-k', '5']);
    expect(noted.stderr).toMatch(
      /--temperature 0 is greedy decoding; --top-k, --top-p and --seed only matter/,
    );
    expect(noted.stdout).toBe(human.stdout);
    const quiet = await runCli([...args, '--quiet', '--no-echo']);
    expect(quiet.stdout).toBe(`${doc.text}\n`);
    expect(quiet.stderr).toBe('');
  });

  it('--stop ends the text before the stop string; sampling with --seed is reproducible', async () => {
    const stop = await runCli([
      'generate',
      '--model',
      stories,
      '--prompt',
      PROMPT,
      '--stop',
      '.',
      '--stop',
      'zzz',
      '--json',
    ]);
    const doc = JSON.parse(stop.stdout);
    expect(doc.finishReason).toBe('stop');
    expect(doc.text).not.toContain('.');
    const sample = [
      'generate',
      '--model',
      stories,
      '--prompt',
      PROMPT,
      '--temperature',
      '1',
      '--top-k',
      '40',
      '--top-p',
      '0.9',
      '--seed',
      '5',
      '--json',
    ];
    const a = JSON.parse((await runCli(sample)).stdout);
    const b = JSON.parse((await runCli(sample)).stdout);
    expect(a.tokens).toEqual(b.tokens);
    expect(a.sampling).toEqual({
      temperature: 1,
      topK: 40,
      topP: 0.9,
      repetitionPenalty: null,
      seed: 5,
    });
  });
});

describe('lora generate on a byte-level model (no tokenizer.json)', () => {
  it('uses the byte tokenizer with BOS/EOS from config.json and streams what --json reports', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lora-generate-bytes-'));
    try {
      const configJson = {
        model_type: 'llama',
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        vocab_size: 258,
        max_position_embeddings: 64,
        bos_token_id: 256,
        eos_token_id: 257,
        tie_word_embeddings: false,
      };
      const rng = createRng(3);
      const weights = new Map<string, Tensor>();
      for (const { name, shape } of llamaWeightSpec(parseLlamaConfig(configJson))) {
        const n = shape.reduce((a, b) => a * b, 1);
        weights.set(name, tensor('f32', shape, rng.uniformArray(n, -0.5, 0.5, 'f32')));
      }
      await writeFile(join(dir, 'config.json'), JSON.stringify(configJson));
      await writeSafetensors(join(dir, 'model.safetensors'), weights, {
        metadata: { format: 'pt' },
      });

      const args = [
        'generate',
        '--model',
        dir,
        '--prompt',
        'héllo',
        '--max-tokens',
        '20',
        '--temperature',
        '1',
        '--seed',
        '2',
      ];
      const doc = JSON.parse((await runCli([...args, '--json'])).stdout);
      expect(doc.promptTokens).toEqual([256, ...Buffer.from('héllo', 'utf8')]);
      expect(doc.tokens.every((t: number) => t >= 0 && t < 257)).toBe(true); // EOS (257) ends a row, it is not a token
      const bytes = new ByteTokenizer({ bosId: 256, eosId: 257 });
      const all = bytes.decode([...doc.promptTokens, ...doc.tokens]);
      expect(doc.text).toBe(all.slice('héllo'.length));
      const human = await runCli([...args, '--quiet']);
      expect(human.stdout).toBe(`héllo${doc.text}\n`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('lora generate: bad usage', () => {
  it('exits 2 with a message for missing or bad flags and a missing model', async () => {
    const cases: [string[], RegExp][] = [
      [['generate', '--model', '/nonexistent/model', '--prompt', 'x'], /nonexistent\/model/],
      [
        ['generate', '--model', stories],
        /--prompt <text>, --prompt-file <path> or --batch <file.jsonl> is required/,
      ],
      [
        ['generate', '--model', stories, '--prompt', 'x', '--quant', 'q8'],
        /--quant must be one of nf4, fp4, int4, uint4/,
      ],
      [
        ['generate', '--model', stories, '--prompt', 'x', '--max-tokens', '0'],
        /--max-tokens must be a positive integer/,
      ],
      [
        ['generate', '--model', stories, '--prompt', 'x', '--temperature', '-1'],
        /--temperature must be a number >= 0/,
      ],
      [
        ['generate', '--model', stories, '--prompt', 'x', '--device', 'tpu'],
        /Unknown device "tpu"/,
      ],
    ];
    for (const [args, message] of cases) {
      const r = await runCli(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(message);
    }
    const dir = await mkdtemp(join(tmpdir(), 'lora-generate-'));
    try {
      const r = await runCli(['generate', '--model', join(dir, 'nope'), '--prompt', 'x']);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/nope/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it.skipIf(!haveStories)(
    'exits 2 for sampling options the sampler refuses (--top-p 2)',
    async () => {
      const r = await runCli([
        'generate',
        '--model',
        stories,
        '--prompt',
        'x',
        '--temperature',
        '1',
        '--top-p',
        '2',
      ]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/--top-p must be in \(0, 1\]/);
    },
  );
});
