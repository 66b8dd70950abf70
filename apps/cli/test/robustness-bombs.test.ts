import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { runCli } from '../src/test-utils/run-cli.js';
import { writeSyntheticAdapter, writeSyntheticLlama } from '../src/test-utils/synthetic-model.js';

/**
 * Resource bombs: inputs that claim absurd sizes are refused with a message naming the limit,
 * before anything is sized by them (each case used to take tens of seconds and gigabytes).
 * The outcomes are printed as a table.
 */

const stories = fileURLToPath(
  new URL('../../../../shared/fixtures/llama2c-stories260k', import.meta.url),
);
const haveStories = existsSync(stories);
if (!haveStories)
  console.warn(`SKIPPED: ${stories} is absent; the long-prompt and max-tokens bombs do not run.`);

const work = mkdtempSync(join(tmpdir(), 'lora-bombs-'));
const outcomes: string[] = [];
afterAll(() => {
  rmSync(work, { recursive: true, force: true });
  process.stderr.write(`\nresource bombs:\n${outcomes.join('\n')}\n`);
});

async function refused(name: string, args: string[], limit: RegExp) {
  const rssBefore = process.memoryUsage().rss;
  const r = await runCli(args);
  const grew = (process.memoryUsage().rss - rssBefore) / 2 ** 20;
  const line = r.stderr.trim().split('\n')[0] ?? '';
  outcomes.push(
    `${name.padEnd(36)} exit ${r.code}  +${grew.toFixed(0)} MiB  ${line.slice(0, 110)}`,
  );
  expect(r.code, r.stderr).not.toBe(0);
  expect(r.stderr).toMatch(limit);
  // refused before allocation: far below what the claimed size would take
  expect(grew).toBeLessThan(256);
}

/** Bytes this process has read so far (Linux /proc/self/io `rchar`: every read call, cached or not). */
function bytesRead(): number {
  const m = /^rchar: (\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'));
  if (!m) throw new Error('/proc/self/io has no rchar line.');
  return Number(m[1]);
}

const LLAMA = {
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
};

function modelDir(name: string, patch: Record<string, unknown>): string {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...LLAMA, ...patch }));
  return dir;
}

describe('resource bombs', () => {
  it('plan --params 1e30 is refused naming the limit; 1e12 is planned', async () => {
    await refused('plan --params 1e30', ['plan', '--params', '1e30'], /limit of 1e\+13/);
    const r = await runCli(['plan', '--params', '1e12']);
    outcomes.push(`${'plan --params 1e12'.padEnd(36)} exit ${r.code}  (planned)`);
    expect(r.code, r.stderr).toBe(0);
  });

  const configs: [string, Record<string, unknown>, RegExp][] = [
    [
      'num_hidden_layers 1e6',
      { num_hidden_layers: 1e6 },
      /"num_hidden_layers" is 1000000, above the limit of 4096/,
    ],
    [
      'vocab_size 1e12',
      { vocab_size: 1e12 },
      /"vocab_size" is 1000000000000, above the limit of 16777216/,
    ],
    ['hidden_size 1e6', { hidden_size: 2 ** 20, num_attention_heads: 8192 }, /above the limit/],
    [
      'every field at its limit (2e15 params)',
      {
        hidden_size: 2 ** 17,
        intermediate_size: 2 ** 20,
        num_hidden_layers: 4096,
        num_attention_heads: 1024,
        num_key_value_heads: 1024,
      },
      /parameters, above the limit of 1e\+13/,
    ],
  ];
  for (const [name, patch, limit] of configs) {
    it(`config.json ${name}: plan and generate refuse it`, async () => {
      const dir = modelDir(name.replace(/\W+/g, '-'), patch);
      await refused(`plan: ${name}`, ['plan', dir], limit);
      await refused(`generate: ${name}`, ['generate', '--model', dir, '--prompt', 'hi'], limit);
    });
  }

  it('--threads 1000 is refused naming the CPU limit (quantize, train)', async () => {
    const cpus = availableParallelism();
    const limit = new RegExp(
      `--threads 1000 is above the ${cpus} CPUs of this machine \\(the limit\\)`,
    );
    await refused(
      'quantize --threads 1000',
      ['quantize', work, '-o', join(work, 'q'), '--threads', '1000'],
      limit,
    );
    await refused(
      'train --threads 1000',
      ['train', '--model', work, '--data', 'x.jsonl', '--threads', '1000', '-o', join(work, 't')],
      limit,
    );
  });

  it('catastrophic config regexes are matched in linear time (merge used to hang)', async () => {
    const model = join(work, 'regex-model');
    const adapter = join(work, 'regex-adapter');
    await writeSyntheticLlama(model);
    await writeSyntheticAdapter(adapter, 1);
    const configPath = join(adapter, 'adapter_config.json');
    const config = JSON.parse(readFileSync(configPath, 'utf8'));
    // Exponential for a backtracking engine on the base's module names; `(a|a)*` passed the old
    // nested-repetition check. Every module of the base is a name these patterns fail on.
    const bombs = {
      target_modules: '((a|a)*|(x+x+)+y|.*)*\\.(q_proj|v_proj)',
      exclude_modules: '(.*a)*\\.mlp\\..*',
      rank_pattern: { '(a|aa)*b': 4, '(a+)+$': 4 },
    };
    writeFileSync(configPath, JSON.stringify({ ...config, ...bombs }));
    const r = await runCli([
      'merge',
      '--base',
      model,
      '--adapter',
      adapter,
      '-o',
      join(work, 'regex-merged'),
    ]);
    const warning = r.stderr.split('\n').find((l) => /target|regular expression/.test(l)) ?? '';
    outcomes.push(
      `${'merge: (a|a)*, (a|aa)*b, (a+)+$ ...'.padEnd(36)} exit ${r.code}  ${warning.slice(0, 110)}`,
    );
    expect(r.code, r.stderr).toBe(0);
    // The patterns were matched, not refused, and gave the right answer: of the 14 modules with
    // weights (7 linears x 2 layers), all but the 4 q/v projections are reported as not targeted.
    expect(r.stderr).not.toMatch(/regular expression/);
    expect(warning).toMatch(/: 10 module\(s\) have weights the config does not target/);

    // A construct RE2 cannot run is refused by name instead (merge reports it and goes on).
    writeFileSync(configPath, JSON.stringify({ ...config, target_modules: '(q)\\1_proj' }));
    const refused = await runCli([
      'merge',
      '--base',
      model,
      '--adapter',
      adapter,
      '-o',
      join(work, 'regex-merged-2'),
    ]);
    const line = refused.stderr.split('\n').find((l) => l.includes('target_modules')) ?? '';
    outcomes.push(
      `${'merge: target_modules "(q)\\1_proj"'.padEnd(36)} exit ${refused.code}  ${line.slice(0, 110)}`,
    );
    expect(refused.code, refused.stderr).toBe(0);
    expect(line).toMatch(
      /target_modules: the regular expression "\(q\)\\1_proj" uses a back-reference/,
    );
  });

  it('--batch with 100,000 rows (100 MB) is streamed: a bad line early stops the run, the rest never read', async () => {
    const file = join(work, 'big.jsonl');
    // 100,000 rows of ~1 KB (a note beside the prompt, as real data files carry); line 40 is bad
    const row = (i: number) => `${JSON.stringify({ prompt: 'Once', note: `${i}`.padEnd(1000) })}\n`;
    const fd = openSync(file, 'w');
    try {
      for (let start = 0; start < 100_000; start += 1000) {
        let chunk = '';
        for (let i = start; i < start + 1000; i++) chunk += i === 39 ? '{"prompt": \n' : row(i);
        writeSync(fd, chunk);
      }
    } finally {
      closeSync(fd);
    }
    const fileBytes = statSync(file).size;
    // what a run reads besides its input (the model, tokenizer, ...): a one-row batch
    const small = join(work, 'one.jsonl');
    writeFileSync(small, row(0));
    const baseBefore = bytesRead();
    const one = await runCli(['generate', '--batch', small, '--max-tokens', '1', '--jsonl']);
    const baseRead = bytesRead() - baseBefore;
    expect(one.code, one.stderr).toBe(0);
    const readBefore = bytesRead();
    const rssBefore = process.memoryUsage().rss;
    // the bundled model (the default)
    const r = await runCli(['generate', '--batch', file, '--max-tokens', '1', '--jsonl']);
    const read = bytesRead() - readBefore - baseRead; // bytes of the input read
    const grew = (process.memoryUsage().rss - rssBefore) / 2 ** 20;
    const results = r.stdout.split('\n').filter((l) => l !== '').length;
    outcomes.push(
      `${'generate --batch (100,000 rows)'.padEnd(36)} exit ${r.code}  +${grew.toFixed(0)} MiB  ${results} results, read ${(read / 2 ** 20).toFixed(1)} of ${(fileBytes / 2 ** 20).toFixed(0)} MiB  ${r.stderr.trim().slice(0, 60)}`,
    );
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/big\.jsonl:40: not valid JSON/);
    // the 39 rows before the bad line were generated and written
    expect(results).toBe(39);
    // streamed: at most a few 64 KiB chunks of the 100 MB input were read
    expect(fileBytes).toBeGreaterThan(100e6);
    expect(read).toBeLessThan(2 ** 20);
    expect(grew).toBeLessThan(256);
  });

  it.skipIf(!haveStories)(
    'a 5 MB prompt is refused before tokenizing; --max-tokens 1e6 stops at the context',
    async () => {
      const file = join(work, 'prompt.txt');
      writeFileSync(file, 'Once upon a time. '.repeat(300_000));
      await refused(
        'generate --prompt-file (5 MB)',
        ['generate', '--model', stories, '--prompt-file', file, '--max-tokens', '1'],
        /cannot fit \(refused before tokenizing\)/,
      );
      const r = await runCli([
        'generate',
        '--model',
        stories,
        '--prompt',
        'Once',
        '--max-tokens',
        '1000000',
        '--json',
      ]);
      const out = JSON.parse(r.stdout || '{}');
      outcomes.push(
        `${'generate --max-tokens 1e6'.padEnd(36)} exit ${r.code}  ${out.promptTokens?.length} + ${out.tokens?.length} tokens, finish ${out.finishReason}`,
      );
      expect(r.code, r.stderr).toBe(0);
      // prompt + generated tokens stop at the model's context (512), not at a million
      expect(out.promptTokens.length + out.tokens.length).toBeLessThanOrEqual(512);
      expect(out.tokens.length).toBeGreaterThan(0);
    },
  );

  it('adapter_config.json r = 1e9 is refused naming the limit', async () => {
    const dir = join(work, 'adapter-r');
    mkdirSync(dir, { recursive: true });
    writeFileSync(
      join(dir, 'adapter_config.json'),
      JSON.stringify({ peft_type: 'LORA', r: 1e9, lora_alpha: 16, target_modules: ['q_proj'] }),
    );
    // an empty but valid safetensors file: 8-byte header length, then `{}` padded to 8 bytes
    const header = Buffer.from('{}      ');
    const lengthPrefix = Buffer.alloc(8);
    lengthPrefix.writeBigUInt64LE(BigInt(header.length));
    writeFileSync(join(dir, 'adapter_model.safetensors'), Buffer.concat([lengthPrefix, header]));
    await refused(
      'inspect: adapter r = 1e9',
      ['inspect', dir],
      /"?r"? must be a positive integer up to 65536/,
    );
  });
});
