import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../test-utils/run-cli.js';

/**
 * `lora generate --batch` on the bundled model (the default model): rows are streamed in groups,
 * so any number of rows works, results come in input order and do not depend on the grouping,
 * and a bad line stops the run after the results of the lines before it.
 */

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lora-generate-batch-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Prompts of different lengths, so that rows of a group are padded differently. */
const promptOf = (i: number) => `${'Once upon a time '.repeat(1 + (i % 3))}row ${i}`;

async function batchFile(name: string, lines: readonly string[]): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, `${lines.join('\n')}\n`);
  return file;
}

const rowLine = (i: number) => JSON.stringify({ prompt: promptOf(i) });

function jsonl(stdout: string): Record<string, unknown>[] {
  return stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l));
}

describe('lora generate --batch (streamed)', () => {
  it('1,000 rows (above the old 256-row cap): one result per row in input order, each equal to its prompt run alone', async () => {
    const lines = Array.from({ length: 1000 }, (_, i) => rowLine(i));
    lines.splice(500, 0, ''); // a blank line is skipped; line numbers still count it
    const file = await batchFile('thousand.jsonl', lines);
    const r = await runCli(['generate', '--batch', file, '--max-tokens', '1', '--jsonl']);
    expect(r.code, r.stderr).toBe(0);
    const rows = jsonl(r.stdout);
    expect(rows).toHaveLength(1000);
    rows.forEach((row, i) => {
      expect(row.line).toBe(i < 500 ? i + 1 : i + 2);
      expect(row.prompt).toBe(promptOf(i));
      expect(row.tokens).toHaveLength(1);
      expect(row.adapters).toBe('base');
    });
    for (const i of [0, 1, 499, 500, 731, 999]) {
      const alone = await runCli([
        'generate',
        '--prompt',
        promptOf(i),
        '--max-tokens',
        '1',
        '--json',
      ]);
      const doc = JSON.parse(alone.stdout);
      expect(rows[i].tokens, `row ${i}`).toEqual(doc.tokens);
      expect(rows[i].text, `row ${i}`).toBe(doc.text);
      expect(rows[i].promptTokens, `row ${i}`).toEqual(doc.promptTokens);
    }
  }, 60_000);

  it('sampled text does not depend on the grouping (--max-batch 5 vs 24); row 0 equals its prompt alone', async () => {
    const file = await batchFile(
      'sampled.jsonl',
      Array.from({ length: 24 }, (_, i) => rowLine(i)),
    );
    const args = ['--max-tokens', '6', '--temperature', '1', '--seed', '7', '--jsonl'];
    const small = await runCli(['generate', '--batch', file, '--max-batch', '5', ...args]);
    const whole = await runCli(['generate', '--batch', file, '--max-batch', '24', ...args]);
    expect(small.code, small.stderr).toBe(0);
    expect(whole.code, whole.stderr).toBe(0);
    const a = jsonl(small.stdout);
    const b = jsonl(whole.stdout);
    expect(a).toHaveLength(24);
    expect(a.map((x) => x.tokens)).toEqual(b.map((x) => x.tokens));
    expect(a.map((x) => x.text)).toEqual(b.map((x) => x.text));
    // rows sample from their own streams: not all the same continuation
    expect(new Set(a.map((x) => JSON.stringify(x.tokens))).size).toBeGreaterThan(1);
    const alone = await runCli([
      'generate',
      '--prompt',
      promptOf(0),
      '--max-tokens',
      '6',
      '--temperature',
      '1',
      '--seed',
      '7',
      '--json',
    ]);
    expect(a[0].tokens).toEqual(JSON.parse(alone.stdout).tokens);
  }, 60_000);

  it('--json writes one document as if built whole (outputs over several groups, or one row in place); human output has a block per row', async () => {
    const file = await batchFile('three.jsonl', [rowLine(0), rowLine(1), rowLine(2)]);
    const base = ['generate', '--batch', file, '--max-tokens', '3', '--max-batch', '2'];
    const r = await runCli([...base, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const doc = JSON.parse(r.stdout);
    // the bytes of JSON.stringify(doc, null, 2): what `--json` printed when it built it whole
    expect(r.stdout).toBe(`${JSON.stringify(doc, null, 2)}\n`);
    expect(Object.keys(doc)).toEqual([
      'model',
      'device',
      'quant',
      'sampling',
      'outputs',
      'timings',
    ]);
    expect(doc.outputs.map((o: { prompt: string }) => o.prompt)).toEqual([0, 1, 2].map(promptOf));
    expect(doc.timings.decodeTokens).toBe(3 * 2); // 3 tokens per row, the first from the prefill

    const one = await runCli([
      'generate',
      '--batch',
      await batchFile('one.jsonl', [rowLine(1)]),
      '--max-tokens',
      '3',
      '--json',
    ]);
    expect(one.stdout).toBe(`${JSON.stringify(JSON.parse(one.stdout), null, 2)}\n`);
    const single = JSON.parse(one.stdout);
    expect(single.outputs).toBeUndefined();
    expect(single.tokens).toEqual(doc.outputs[1].tokens);
    expect(single.adapters).toBe('base');

    const human = await runCli(base);
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toBe(
      `${doc.outputs
        .map(
          (o: { prompt: string; text: string }, i: number) =>
            `## row ${i + 1} (base)\n${o.prompt}${o.text}`,
        )
        .join('\n\n')}\n`,
    );
  }, 60_000);

  it('a bad line stops the run with exit 2 naming it, after the results of every line before it', async () => {
    const rows = Array.from({ length: 40 }, (_, i) => rowLine(i));
    const cases: [string, string, number, RegExp][] = [
      ['not JSON', '{"prompt": "Once', 23, /:23: not valid JSON/],
      ['no prompt', '{"text": "Once"}', 9, /:9: each line needs \{"prompt": "<text>"\}/],
      [
        'deep JSON',
        `${'['.repeat(200)}${']'.repeat(200)}`,
        17,
        /:17: JSON nested more than 128 levels deep/,
      ],
      [
        // refused while reading it: the line is never held whole
        'line over 16 MiB',
        JSON.stringify({ prompt: 'x'.repeat(17 * 2 ** 20) }),
        5,
        /:5: line longer than 16777216 bytes \(the limit for one line\)/,
      ],
      [
        'missing adapter',
        JSON.stringify({ prompt: 'Once', adapter: join(dir, 'nope') }),
        3,
        /:3: --adapter .*nope does not exist/,
      ],
      [
        // refused by the model (the context), in the middle of a group: its first rows still run
        'prompt beyond the context',
        JSON.stringify({ prompt: 'Once upon a time '.repeat(200) }),
        11,
        /:11: the prompt has \d+ (characters|tokens); the model's context is 256/,
      ],
    ];
    for (const [name, bad, line, message] of cases) {
      const lines = [...rows];
      lines[line - 1] = bad;
      const file = await batchFile(`bad-${line}.jsonl`, lines);
      const r = await runCli([
        'generate',
        '--batch',
        file,
        '--max-tokens',
        '1',
        '--max-batch',
        '8',
        '--jsonl',
      ]);
      expect(r.code, name).toBe(2);
      expect(r.stderr, name).toMatch(message);
      expect(r.stderr.trim().split('\n'), name).toHaveLength(1);
      expect(r.stderr, name).toContain(file);
      const out = jsonl(r.stdout);
      expect(
        out.map((o) => o.line),
        name,
      ).toEqual(Array.from({ length: line - 1 }, (_, i) => i + 1));
    }
    // --json: the document of the rows before the bad line is still closed (valid JSON)
    const lines = [...rows];
    lines[4] = 'nope';
    const r = await runCli([
      'generate',
      '--batch',
      await batchFile('bad-json.jsonl', lines),
      '--max-tokens',
      '1',
      '--max-batch',
      '3',
      '--json',
    ]);
    expect(r.code).toBe(2);
    expect(JSON.parse(r.stdout).outputs).toHaveLength(4);
  }, 90_000);

  it('explains bad batch usage', async () => {
    const file = await batchFile('ok.jsonl', [rowLine(0)]);
    const empty = await batchFile('empty.jsonl', ['', '  ']);
    const cases: [string[], RegExp][] = [
      [['generate', '--prompt', 'x', '--jsonl'], /--jsonl .* needs --batch/],
      [
        ['generate', '--batch', file, '--prompt', 'x'],
        /--batch and --prompt\/--prompt-file exclude/,
      ],
      [
        ['generate', '--batch', file, '--max-batch', '1000'],
        /--max-batch 1000 is above the limit of 256/,
      ],
      [['generate', '--batch', file, '--json', '--jsonl'], /--json and --jsonl exclude/],
      [['generate', '--batch', join(dir, 'absent.jsonl')], /absent\.jsonl does not exist/],
      [['generate', '--batch', empty], /has no rows/],
      [['generate', '--batch', dir], /not a regular file|folder|directory/i],
    ];
    for (const [args, message] of cases) {
      const r = await runCli(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toMatch(message);
    }
  });
});
