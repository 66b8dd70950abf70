import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../test-utils/run-cli.js';

// The tiny LLaMA, data and init adapter of @lora/train's PyTorch trajectory test
// (scripts/reference/train-trajectory.py); expected.json holds PyTorch + PEFT's numbers.
const fixture = fileURLToPath(
  new URL('../../../../packages/train/src/testdata/trajectory/', import.meta.url),
);
const expected = JSON.parse(readFileSync(join(fixture, 'expected.json'), 'utf8'));
const model = join(fixture, 'model');
const data = join(fixture, 'train.jsonl');
const initAdapter = join(fixture, 'init-adapter');
const bin = fileURLToPath(new URL('../../bin/lora.js', import.meta.url));

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lora-cli-train-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The flags of the reference run (as in the PyTorch script). */
const referenceFlags = [
  '--model',
  model,
  '--data',
  data,
  '--init-adapter',
  initAdapter,
  '--steps',
  '10',
  '--batch-size',
  '2',
  '--grad-accum',
  '2',
  '--no-shuffle',
  '--lr',
  '5e-3',
  '--weight-decay',
  '0.01',
  '--schedule',
  'cosine',
  '--warmup-steps',
  '2',
  '--max-grad-norm',
  '1',
  '--threads',
  '1',
];

describe('lora train', () => {
  it("--json: one document with PyTorch's per-step losses, settings, eval, peak RSS and a PEFT adapter", async () => {
    const out = join(dir, 'adapter');
    const r = await runCli([
      'train',
      ...referenceFlags,
      '-o',
      out,
      '--eval-data',
      join(fixture, 'eval.jsonl'),
      '--json',
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    expect(doc.output).toBe(out);
    expect(doc.steps).toHaveLength(10);
    doc.steps.forEach(
      (
        s: { step: number; loss: number; lr: number; grad_norm: number; tokens_per_s: number },
        i: number,
      ) => {
        const e = expected.methods.lora[i];
        expect(s.step).toBe(i + 1);
        expect(Math.abs(s.loss - e.loss)).toBeLessThan(1e-4 * e.loss);
        expect(s.lr).toBeCloseTo(e.lr, 12);
        expect(s.grad_norm).toBeCloseTo(e.grad_norm, 3);
        expect(s.tokens_per_s).toBeGreaterThan(0);
      },
    );
    expect(doc.settings).toMatchObject({
      method: 'lora',
      batchSize: 2,
      gradAccum: 2,
      shuffle: false,
      schedule: 'cosine',
    });
    expect(doc.eval).toHaveLength(1);
    expect(doc.peakRssBytes).toBeGreaterThan(10_000_000);
    const config = JSON.parse(await readFile(join(out, 'adapter_config.json'), 'utf8'));
    expect(config).toMatchObject({
      peft_type: 'LORA',
      r: 4,
      lora_alpha: 8,
      base_model_name_or_path: model,
    });
    expect((await readdir(out)).sort()).toEqual([
      'adapter_config.json',
      'adapter_model.safetensors',
    ]);
    expect(existsSync(`${out}.checkpoint`)).toBe(false);
  });

  it('plain progress lines when stderr is not a terminal; none with --quiet', async () => {
    const r = await runCli(['train', ...referenceFlags, '--steps', '2', '-o', join(dir, 'lines')]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/^step 1\/2 {2}loss \d+\.\d{4} {2}lr 0\.00e\+0 {2}grad_norm \d/m);
    expect(r.stderr).toMatch(/^step 2\/2 /m);
    expect(r.stdout).toMatch(/2 steps, final loss \d+\.\d+; peak RSS \d+ MiB; adapter written to /);
    const q = await runCli([
      'train',
      ...referenceFlags,
      '--steps',
      '1',
      '-o',
      join(dir, 'quiet'),
      '--quiet',
    ]);
    expect(q.code).toBe(0);
    expect(q.stderr).toBe('');
  });

  it('bad input: a clear error, exit 2, nothing at the output path', async () => {
    const bad = join(dir, 'bad.jsonl');
    await writeFile(bad, '{"input_ids": [1, 2, 3]}\n{"input_ids": [1, "x"]}\n');
    const empty = join(dir, 'empty.jsonl');
    await writeFile(empty, '\n');
    const base = ['train', '--model', model, '--data', data, '--steps', '1', '--threads', '1'];
    const cases: [string[], RegExp][] = [
      [
        ['train', '--model', model, '--data', bad, '--steps', '1'],
        /bad\.jsonl:2: "input_ids"\[1\] is "x"/,
      ],
      [['train', '--model', model, '--data', empty, '--steps', '1'], /empty\.jsonl: no rows/],
      [[...base, '--targets', 'qkv_proj'], /matches no linear layer/],
      [
        [...base, '--rank', '40', '--targets', 'q_proj'],
        /rank 40 is larger than model\.layers\.0\.self_attn\.q_proj allows: it is \[32, 32\]/,
      ],
      [
        [...base, '--seq-len', '65'],
        /sequence length 65 is above the model's context \(max_position_embeddings = 64\)/,
      ],
      [[...base, '--init-adapter', initAdapter, '--rank', '8'], /--rank 8 but the adapter has 4/],
      [[...base, '--steps', '1', '--epochs', '2'], /--steps and --epochs contradict/],
      [
        [...base, '--quant', 'nf4'],
        /--quant, --double-quant and --block-size are for --method qlora/,
      ],
    ];
    for (const [args, message] of cases) {
      const out = join(dir, 'never');
      const r = await runCli([...args, '-o', out]);
      expect(r.stderr, args.join(' ')).toMatch(message);
      expect(r.code, args.join(' ')).toBe(2);
      expect(existsSync(out)).toBe(false);
      expect(existsSync(`${out}.checkpoint`)).toBe(false);
    }
    const text = join(dir, 'text.jsonl');
    await writeFile(text, '{"text": "hello"}\n');
    const noTokenizer = await runCli([
      'train',
      '--model',
      model,
      '--data',
      text,
      '--steps',
      '1',
      '-o',
      join(dir, 'never'),
    ]);
    expect(noTokenizer.code).toBe(2);
    expect(noTokenizer.stderr).toMatch(/text\.jsonl:1: text rows need the model's tokenizer/);

    // A diverging run: stops at the first non-finite loss, names the step, keeps the last good checkpoint.
    const nan = join(dir, 'nan');
    const diverged = await runCli([
      ...base,
      '--method',
      'full',
      '--lr',
      '1e38',
      '--steps',
      '4',
      '--checkpoint-every',
      '1',
      '-o',
      nan,
    ]);
    expect(diverged.code).toBe(2);
    expect(diverged.stderr).toMatch(
      /step 2: the loss is NaN; training stopped\. The last good checkpoint \(step 1\) is kept/,
    );
    expect(existsSync(nan)).toBe(false);
    expect(
      JSON.parse(await readFile(join(`${nan}.checkpoint`, 'trainer_state.json'), 'utf8')).step,
    ).toBe(1);

    const taken = join(dir, 'taken');
    await writeFile(taken, 'x');
    const r = await runCli([...base, '-o', taken]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/exists/);
  });
});

describe('lora train: checkpoints and exact resume', () => {
  it('after a real SIGKILL at a random moment, --resume ends byte-identical to an uninterrupted run', async () => {
    if (!existsSync(fileURLToPath(new URL('../../dist/main.js', import.meta.url)))) {
      throw new Error(
        'apps/cli/dist is missing: build first (pnpm build); this test runs the lora executable.',
      );
    }
    const flags = [...referenceFlags, '--steps', '12', '--checkpoint-every', '2', '--quiet'];
    const whole = join(dir, 'whole');
    expect((await runCli(['train', ...flags, '-o', whole])).code).toBe(0);

    const killed = join(dir, 'killed');
    const child: ChildProcess = spawn(
      process.execPath,
      [bin, 'train', ...flags.filter((f) => f !== '--quiet'), '-o', killed],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const exited = new Promise((resolve) => child.once('exit', resolve));
    // A random moment: a few milliseconds after a random step (3..9 of 12) was reported, so the
    // kill may land inside a step, inside a checkpoint write, or between them.
    const killAfter = 3 + Math.floor(Math.random() * 7);
    let stderr = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      if (new RegExp(`^step ${killAfter}/12`, 'm').test(stderr) && !child.killed) {
        setTimeout(() => child.kill('SIGKILL'), Math.random() * 4);
      }
    });
    await exited;
    expect(existsSync(killed)).toBe(false);
    expect(existsSync(`${killed}.checkpoint`)).toBe(true);

    const resumed = await runCli(['train', ...flags, '-o', killed, '--resume', '--json']);
    expect(resumed.code).toBe(0);
    const doc = JSON.parse(resumed.stdout);
    expect(doc.steps.map((s: { step: number }) => s.step)).toEqual(
      Array.from({ length: 12 }, (_, i) => i + 1),
    );
    for (const f of ['adapter_model.safetensors', 'adapter_config.json']) {
      expect((await readFile(join(killed, f))).equals(await readFile(join(whole, f))), f).toBe(
        true,
      );
    }
  });

  it('Ctrl-C writes a checkpoint and exits 130; --resume refuses other settings, then finishes identically', async () => {
    const flags = [...referenceFlags, '--steps', '12'];
    const whole = join(dir, 'whole');
    const out = join(dir, 'interrupted');
    const child = spawn(process.execPath, [bin, 'train', ...flags, '-o', out], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    let sent = false;
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      if (!sent && /^step 3\/12/m.test(stderr)) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    const code = await new Promise((resolve) => child.once('exit', (c) => resolve(c)));
    expect(stderr).toMatch(/stopping after this step and writing a checkpoint/);
    expect(code).toBe(130);
    expect(existsSync(out)).toBe(false);
    const state = JSON.parse(
      await readFile(join(`${out}.checkpoint`, 'trainer_state.json'), 'utf8'),
    );
    expect(state.step).toBeGreaterThanOrEqual(3);

    const other = await runCli([
      'train',
      ...flags,
      '--lr',
      '1e-3',
      '-o',
      out,
      '--resume',
      '--quiet',
    ]);
    expect(other.code).toBe(2);
    expect(other.stderr).toMatch(/the checkpoint was made with lr = 0\.005, this run has 0\.001/);
    const resumed = await runCli(['train', ...flags, '-o', out, '--resume', '--quiet']);
    expect(resumed.code).toBe(0);
    const f = 'adapter_model.safetensors';
    expect((await readFile(join(out, f))).equals(await readFile(join(whole, f)))).toBe(true);
  });
});

describe('lora eval', () => {
  it('loss, perplexity and greedy exact match equal PyTorch + PEFT', async () => {
    const r = await runCli([
      'eval',
      '--model',
      model,
      '--adapter',
      initAdapter,
      '--data',
      join(fixture, 'eval.jsonl'),
      '--json',
    ]);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.stdout);
    const e = expected.eval;
    expect(doc.tokens).toBe(e.tokens);
    expect(Math.abs(doc.loss - e.loss)).toBeLessThan(1e-4 * e.loss);
    expect(doc.perplexity).toBeCloseTo(Math.exp(e.loss), 3);
    expect(doc.exactMatch).toEqual({
      rows: e.rows,
      matches: e.exact_match,
      accuracy: e.exact_match / e.rows,
    });
    const human = await runCli([
      'eval',
      '--model',
      model,
      '--adapter',
      initAdapter,
      '--data',
      join(fixture, 'eval.jsonl'),
    ]);
    expect(human.stdout).toMatch(/exact match 2\/4 = 50\.0% \(greedy\)/);
  });
});

describe('lora train progress', () => {
  it('a bar with step, loss, tokens/s and ETA on a terminal; nothing with --quiet', async () => {
    const { trainProgress } = await import('./train.js');
    const chunks: string[] = [];
    const tty = { isTTY: true, write: (c: string) => chunks.push(c), columns: 120 } as never;
    const bar = trainProgress({}, tty);
    bar.start(10, 0);
    bar.step(
      { step: 3, epoch: 0, loss: 2.5, lr: 1e-4, grad_norm: 1, tokens: 10, tokens_per_s: 1234.4 },
      10,
    );
    bar.stop();
    const text = chunks.join('');
    expect(text).toMatch(/train \[.*\] 3\/10 \| loss 2\.5000 \| 1234 tok\/s \| ETA /);
    const silent: string[] = [];
    const quiet = trainProgress({ quiet: true }, {
      isTTY: true,
      write: (c: string) => silent.push(c),
    } as never);
    quiet.start(10, 0);
    quiet.step({ step: 1, epoch: 0, loss: 1, lr: 0, grad_norm: 0, tokens: 1, tokens_per_s: 1 }, 10);
    quiet.stop();
    expect(silent).toEqual([]);
  });
});
