import { QUANT_FORMATS } from '@lora/quant';
import { Command, type Option } from 'commander';
import { describe, expect, it } from 'vitest';
import { commands } from './commands/index.js';
import { runCli } from './test-utils/run-cli.js';

/**
 * Every flag that names a 4-bit format accepts exactly @lora/quant's QUANT_FORMATS: found by
 * asking every option of every command (not by a list kept here), so a command that grows its own
 * list, or a format added to @lora/quant but not to a command, fails this test.
 */

const program = new Command('lora');
for (const register of commands) register(program);

/** What the option's argument parser does with `value`: its result, or the error it throws. */
function parse(option: Option, value: string): { value?: unknown; error?: string } {
  const parser = (option as Option & { parseArg?: (v: string, prev: unknown) => unknown }).parseArg;
  if (!parser) return { value };
  try {
    return { value: parser.call(option, value, undefined) };
  } catch (e) {
    return { error: (e as Error).message };
  }
}

/** The formats an error message lists ("one of a, b, got" or commander's "Allowed choices are a, b."). */
function listed(message: string): string[] | undefined {
  const m = /one of (.+?), got/.exec(message) ?? /Allowed choices are (.+?)\.?$/m.exec(message);
  return m?.[1].split(', ');
}

/**
 * [command, option] of every option that checks its value against a closed set (it refuses
 * "q8") and accepts at least one 4-bit format name.
 */
const formatOptions = program.commands.flatMap((command) =>
  command.options
    .filter(
      (o) =>
        parse(o, 'q8').error !== undefined &&
        QUANT_FORMATS.some((f) => parse(o, f).error === undefined),
    )
    .map((o) => [command, o] as const),
);

/**
 * `lora plan --quant` is a memory-accounting format (core's WEIGHT_FORMATS: nf4, fp4 and int8),
 * not a quantizer: it estimates int8 and has no int4/uint4 accounting.
 */
const ACCOUNTING_ONLY = new Set(['plan --quant']);

describe('4-bit format flags derive from @lora/quant', () => {
  it('finds the commands that take a 4-bit format', () => {
    const found = formatOptions.map(([c, o]) => `${c.name()} ${o.long}`).sort();
    expect(found).toEqual(
      [
        'eval --quant',
        'export-onnx --quant',
        'generate --quant',
        'plan --quant',
        'quantize --format',
        'serve --quant',
        'train --quant',
      ].sort(),
    );
  });

  for (const [command, option] of formatOptions) {
    const label = `${command.name()} ${option.long}`;
    if (ACCOUNTING_ONLY.has(label)) continue;
    it(`${label} accepts exactly QUANT_FORMATS, lists them in help and in its error`, () => {
      for (const format of QUANT_FORMATS) expect(parse(option, format)).toEqual({ value: format });
      for (const unknown of ['q8', 'int8', 'NF4', 'nf4 ', '']) {
        const { error } = parse(option, unknown);
        expect(error, unknown).toBeDefined();
        expect(listed(error ?? ''), error).toEqual([...QUANT_FORMATS]);
      }
      const help = `${option.description} ${option.argChoices?.join(', ') ?? ''}`;
      expect(help).toContain(QUANT_FORMATS.join(', '));
    });
  }

  it('each command refuses an unknown format with exit 2, naming exactly QUANT_FORMATS', async () => {
    for (const [command, option] of formatOptions) {
      if (ACCOUNTING_ONLY.has(`${command.name()} ${option.long}`)) continue;
      // Required flags get a value, so the refusal can only come from the format.
      const required = command.options
        .filter((o) => o.mandatory)
        .flatMap((o) => [o.long ?? '', 'out-never-written']);
      const r = await runCli([command.name(), option.long ?? '', 'q8', ...required]);
      expect(r.code, `${command.name()}: ${r.stderr}`).toBe(2);
      expect(listed(r.stderr), r.stderr).toEqual([...QUANT_FORMATS]);
    }
  });
});
