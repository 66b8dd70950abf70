import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeOnnxAdapter, encodeOnnxAdapter, readAdapterConfig } from '@lora/adapters';
import {
  createLoraConfig,
  LoraError,
  loraConfigToJson,
  loraScaling,
  matchTargets,
  parseModelConfig,
  type Tensor,
  tensor,
} from '@lora/core';
import {
  ByteTokenizer,
  describeOnnxModel,
  GraphBuilder,
  loadTokenizer,
  parseLlamaConfig,
  readConfigJson,
  serializeGraph,
} from '@lora/runtime-onnx';
import { loadDataset } from '@lora/train';
import { afterAll, describe, expect, it } from 'vitest';
import { readBatchRows } from '../../src/commands/generate-batch.js';
import { runCli } from '../../src/test-utils/run-cli.js';
import { fuzzRandom, mutateBytes, mutateJson } from './mutate.js';

/**
 * Every parser of user files, fed seeded mutations of a valid input: each case must read or raise
 * the package's typed error (a LoraError, or the CLI's UsageError for command-line inputs), never
 * another exception, within a time and memory bound. The outcome counts are printed as a table.
 */

const CASES = 250;
/** Per case: a parser that takes longer is treated as hanging. */
const MAX_CASE_MS = 2_000;
/** RSS growth over all the cases of one parser. */
const MAX_RSS_GROWTH = 512 * 2 ** 20;

const work = mkdtempSync(join(tmpdir(), 'lora-fuzz-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

interface Tally {
  ok: number;
  typed: Map<string, number>;
  untyped: string[];
  slowest: number;
}

const summary = new Map<string, Tally>();
afterAll(() => {
  const rows = [...summary].map(
    ([name, t]) =>
      `${name.padEnd(28)} ${String(t.ok).padStart(5)} read  ${String([...t.typed.values()].reduce((a, b) => a + b, 0)).padStart(5)} refused (${t.typed.size} codes)  ${t.untyped.length} untyped  slowest ${t.slowest.toFixed(0)} ms`,
  );
  process.stderr.write(
    `\nparser fuzz (seeded cases; ${CASES} per parser, fewer for CLI argv):\n${rows.join('\n')}\n`,
  );
});

function isTyped(e: unknown): string | undefined {
  if (e instanceof LoraError) return e.code;
  if (e instanceof Error && e.name === 'UsageError') return 'USAGE';
  return undefined;
}

async function fuzz(
  name: string,
  seed: number,
  makeCase: (rand: (n: number) => number, i: number) => () => unknown,
  cases = CASES,
) {
  const rand = fuzzRandom(seed);
  const tally: Tally = { ok: 0, typed: new Map(), untyped: [], slowest: 0 };
  summary.set(name, tally);
  const rss0 = process.memoryUsage().rss;
  for (let i = 0; i < cases; i++) {
    const run = makeCase(rand, i);
    const t0 = performance.now();
    try {
      await run();
      tally.ok++;
    } catch (e) {
      const code = isTyped(e);
      if (code) tally.typed.set(code, (tally.typed.get(code) ?? 0) + 1);
      else
        tally.untyped.push(
          `case ${i}: ${(e as Error)?.name}: ${String((e as Error)?.message).slice(0, 200)}`,
        );
    }
    tally.slowest = Math.max(tally.slowest, performance.now() - t0);
  }
  expect(tally.untyped, `${name}: exceptions that are not the package's typed error`).toEqual([]);
  expect(tally.slowest).toBeLessThan(MAX_CASE_MS);
  expect(process.memoryUsage().rss - rss0).toBeLessThan(MAX_RSS_GROWTH);
  // the mutations must exercise both outcomes, or the fuzzer tests nothing
  expect(tally.typed.size).toBeGreaterThan(0);
}

const VALID_LLAMA = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_size: 64,
  intermediate_size: 176,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 300,
  max_position_embeddings: 128,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  rope_scaling: {
    rope_type: 'llama3',
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 64,
  },
  tie_word_embeddings: false,
  bos_token_id: 1,
  eos_token_id: [2, 3],
};

/** Module names for the adapter_config case: real ones and adversarial ones for regexes. */
const FUZZ_MODULE_NAMES = [
  'model.layers.0.self_attn.q_proj',
  'model.layers.1.mlp.down_proj',
  `${'a'.repeat(80)}!`,
  `model.${'x'.repeat(80)}.q_proj`,
];

describe('parser fuzz', () => {
  it('adapter_config.json', async () => {
    const valid = loraConfigToJson(
      createLoraConfig({
        r: 8,
        lora_alpha: 16,
        // regexes, so that flipped characters fuzz the regex translation and matching as well
        target_modules: '.*\\.(q_proj|v_proj)',
        exclude_modules: '(?!model\\.).*',
        rank_pattern: { 'layers\\.0\\.(q|v)_proj': 4 },
      }),
    );
    const dir = join(work, 'adapter');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(dir, { recursive: true });
    await fuzz('adapter_config.json', 1, (rand) => {
      const text = mutateJson(valid, rand);
      return async () => {
        writeFileSync(join(dir, 'adapter_config.json'), text);
        const { config } = await readAdapterConfig(join(dir, 'adapter_config.json'));
        // Regexes a mutation put in the config are matched too (linear time, whatever the
        // pattern), also against names built to make backtracking engines explode.
        matchTargets(config, FUZZ_MODULE_NAMES, { modelType: 'llama' });
        for (const name of FUZZ_MODULE_NAMES) loraScaling(config, name);
      };
    });
  });

  it('model config.json (runtime and accounting)', async () => {
    const dir = join(work, 'model');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(dir, { recursive: true });
    await fuzz('config.json', 2, (rand) => {
      const text = mutateJson(VALID_LLAMA, rand);
      return async () => {
        writeFileSync(join(dir, 'config.json'), text);
        const { json, path } = await readConfigJson(dir);
        parseLlamaConfig(json, path);
        parseModelConfig(json, path);
      };
    });
  });

  it('tokenizer.json', async () => {
    const dir = join(work, 'tokenizer');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(dir, { recursive: true });
    const vocab: Record<string, number> = { '<s>': 0, '</s>': 1 };
    for (let i = 0; i < 40; i++)
      vocab[String.fromCharCode(97 + (i % 26)) + (i >= 26 ? 'x' : '')] = i + 2;
    const valid = {
      version: '1.0',
      added_tokens: [
        {
          id: 0,
          content: '<s>',
          special: true,
          single_word: false,
          lstrip: false,
          rstrip: false,
          normalized: false,
        },
      ],
      normalizer: null,
      pre_tokenizer: { type: 'Whitespace' },
      post_processor: null,
      decoder: null,
      model: {
        type: 'BPE',
        vocab,
        merges: ['a b'],
        unk_token: null,
        dropout: null,
        fuse_unk: false,
        byte_fallback: false,
      },
    };
    await fuzz('tokenizer.json', 3, (rand) => {
      const text = mutateJson(valid, rand);
      return async () => {
        writeFileSync(join(dir, 'tokenizer.json'), text);
        const t = await loadTokenizer(dir);
        t.decode(t.encode('abc abcx'));
      };
    });
  });

  it('tokenizer.json with a token id of 1e9 is refused before the library sizes tables by it', async () => {
    const dir = join(work, 'tokenizer-bomb');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(dir, { recursive: true });
    const model = { type: 'BPE', vocab: { a: 0, b: 1e9 }, merges: [], unk_token: null };
    writeFileSync(
      join(dir, 'tokenizer.json'),
      JSON.stringify({ version: '1.0', added_tokens: [], model }),
    );
    await expect(loadTokenizer(dir)).rejects.toMatchObject({
      code: 'TOKENIZER_INVALID',
      message: expect.stringContaining('16777216'),
    });
  });

  it('--batch JSONL rows', async () => {
    const file = join(work, 'batch.jsonl');
    const validRow = { prompt: 'Hello', adapter: ['a:0.5', 'b'] };
    await fuzz('--batch JSONL', 4, (rand) => {
      const lines = Array.from({ length: 1 + rand(4) }, () =>
        rand(2) ? JSON.stringify(validRow) : mutateJson(validRow, rand),
      );
      return async () => {
        writeFileSync(file, `${lines.join('\n')}\n`);
        for await (const _ of readBatchRows(file, [])) {
          // read every row: a bad one throws
        }
      };
    });
  });

  it('training JSONL rows', async () => {
    const file = join(work, 'train.jsonl');
    const rows = [
      { input_ids: [1, 5, 9, 2], labels: [-100, -100, 9, 2] },
      { text: 'Once upon a time' },
      { prompt: 'Q: hi', completion: ' A: hello' },
    ];
    const tokenizer = new ByteTokenizer();
    await fuzz('training JSONL', 6, (rand) => {
      const lines = Array.from({ length: 1 + rand(4) }, () => {
        const row = rows[rand(rows.length)];
        return rand(2) ? JSON.stringify(row) : mutateJson(row, rand);
      });
      return async () => {
        writeFileSync(file, `${lines.join('\n')}\n`);
        await loadDataset(file, { vocabSize: 512, tokenizer: async () => tokenizer, seqLen: 64 });
      };
    });
  });

  it('command-line arguments (random argv through runCli: exit 0, 1 or 2, never a crash)', async () => {
    const words = [
      'generate',
      'merge',
      'combine',
      'extract',
      'quantize',
      'dequantize',
      'inspect',
      'plan',
      'train',
      'export-onnx',
      'unmerge',
      '--model',
      '--adapter',
      '--prompt',
      '--max-tokens',
      '--top-p',
      '--rank',
      '--threads',
      '--params',
      '--force',
      '--json',
      '-o',
      '--help',
      '--version',
      '--method',
      '--density',
      '-1',
      '0',
      '1e308',
      'NaN',
      '',
      'x:abc',
      '../..',
      work,
      '--',
      '-',
      '\u0000',
      'a'.repeat(5000),
    ];
    const codes = new Map<number, number>();
    await fuzz(
      'CLI arguments',
      7,
      (rand) => {
        const argv = Array.from({ length: rand(6) }, () => words[rand(words.length)]);
        return async () => {
          // never a network or a long run: no hub names, tiny budgets
          if (argv.some((a) => /^[\w-]+\/[\w-]+$/.test(a))) return;
          const r = await runCli([
            ...argv.filter((a) => a !== 'train' && a !== 'generate'),
            '--quiet',
          ]);
          codes.set(r.code, (codes.get(r.code) ?? 0) + 1);
          if (![0, 1, 2].includes(r.code))
            throw new Error(
              `exit ${r.code} for ${JSON.stringify(argv)}: ${r.stderr.slice(0, 200)}`,
            );
          if (/\bat .*\.(ts|js):\d+/.test(r.stderr))
            throw new Error(`a stack trace for ${JSON.stringify(argv)}`);
          // a refusal is the CLI's typed outcome here
          if (r.code !== 0) throw Object.assign(new Error(r.stderr), { name: 'UsageError' });
        };
      },
      60,
    );
    expect([...codes.keys()].every((c) => c === 0 || c === 1 || c === 2)).toBe(true);
  });

  it('ONNX files given to lora inspect (describeOnnxModel)', async () => {
    const g = new GraphBuilder();
    const w = g.initializer('w', tensor('f32', [2, 4], new Float32Array(8).fill(0.5)));
    g.output(w, 'y');
    const valid = serializeGraph(g.build()).model;
    const file = join(work, 'fuzz.onnx');
    await fuzz('ONNX (inspect)', 8, (rand) => {
      const bytes = mutateBytes(valid, rand);
      return async () => {
        writeFileSync(file, bytes);
        await describeOnnxModel(file);
      };
    });
  });

  it('.onnx_adapter', async () => {
    const valid = encodeOnnxAdapter(
      new Map<string, Tensor>([
        [
          'model.layers.0.attn.q_proj.lora_A.weight',
          tensor('f32', [8, 2], new Float32Array(16).fill(0.5)),
        ],
        [
          'model.layers.0.attn.q_proj.lora_B.weight',
          tensor('f16', [2, 8], new Uint16Array(16).fill(0x3c00)),
        ],
      ]),
    );
    await fuzz('.onnx_adapter', 5, (rand) => {
      const bytes = mutateBytes(valid, rand);
      return () => decodeOnnxAdapter(bytes, 'fuzz.onnx_adapter');
    });
  });
});
