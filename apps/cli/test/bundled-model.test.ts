import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { evaluateModel } from '@lora/train';
import { describe, expect, it } from 'vitest';
import { runCli } from '../src/test-utils/run-cli.js';

/**
 * The bundled model (models/tiny) is the one the pretraining script made: its evaluation now
 * reproduces the figures the script recorded in models/tiny/pretraining.json, and commands use it
 * when no model is given.
 */
const root = fileURLToPath(new URL('../../../', import.meta.url));
const model = `${root}models/tiny`;

interface Recorded {
  data: string;
  loss: number;
  tokens: number;
  exactMatch: { matches: number; rows: number };
}
const record = JSON.parse(readFileSync(`${model}/pretraining.json`, 'utf8')) as {
  params: number;
  pretrained: Recorded;
  heldOut: Record<string, Recorded>;
};

describe('the bundled model', () => {
  const sets: [string, Recorded][] = [
    ['pretraining tasks', record.pretrained],
    ...Object.entries(record.heldOut).map(([k, v]): [string, Recorded] => [`held-out ${k}`, v]),
  ];
  it.each(sets)('reproduces the recorded evaluation on the %s', async (_name, recorded) => {
    const r = await evaluateModel({ model, data: `${root}${recorded.data}`, batchSize: 32 });
    expect(r.tokens).toBe(recorded.tokens);
    expect(Math.abs(r.loss - recorded.loss)).toBeLessThan(1e-4 * recorded.loss);
    expect(r.exactMatch?.matches).toBe(recorded.exactMatch.matches);
  });

  it('learned its pretraining tasks and cannot do the held-out ones', () => {
    expect(
      record.pretrained.exactMatch.matches / record.pretrained.exactMatch.rows,
    ).toBeGreaterThan(0.5);
    for (const r of Object.values(record.heldOut))
      expect(r.exactMatch.matches).toBeLessThanOrEqual(5);
  });

  it('is what commands use without a model argument', async () => {
    const gen = await runCli([
      'generate',
      '--prompt',
      'reverse: abcd =',
      '--max-tokens',
      '8',
      '--stop',
      '\n',
      '--json',
    ]);
    expect(gen.code, gen.stderr).toBe(0);
    expect((JSON.parse(gen.stdout) as { text: string }).text).toBe(' dcba');
    const inspect = await runCli(['inspect', '--json']);
    expect(inspect.code, inspect.stderr).toBe(0);
    expect(JSON.stringify(JSON.parse(inspect.stdout))).toContain(String(record.params));
  });
});
