import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CoreError } from '../errors.js';
import { MAX_JSON_DEPTH, parseJsonText, readJsonFile } from './json-file.js';

const dir = mkdtempSync(join(tmpdir(), 'lora-json-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const nested = (d: number) => `${'['.repeat(d)}1${']'.repeat(d)}`;

describe('parseJsonText', () => {
  it('parses what JSON.parse parses', () => {
    const text = '{"a": [1, {"b": "x]]\\"[["}], "c": null}';
    expect(parseJsonText(text, 't')).toEqual(JSON.parse(text));
  });

  it('accepts nesting up to the limit and refuses one level more, before parsing', () => {
    expect(parseJsonText(nested(MAX_JSON_DEPTH), 't')).toBeDefined();
    expect(() => parseJsonText(nested(MAX_JSON_DEPTH + 1), 'cfg.json')).toThrow(
      expect.objectContaining({ code: 'JSON_TOO_DEEP' }),
    );
    // far deeper than V8's recursion in JSON.stringify could handle: refused without a stack overflow
    expect(() => parseJsonText(`{"x": ${nested(200_000)}}`, 'cfg.json')).toThrow(CoreError);
  });

  it('does not count brackets inside strings (escaped quotes included)', () => {
    const text = `{"s": "${'['.repeat(1000)}\\"${'{'.repeat(1000)}"}`;
    expect((parseJsonText(text, 't') as { s: string }).s.length).toBe(2001);
  });

  it('names the source on bad syntax', () => {
    expect(() => parseJsonText('{"a": ', 'adapter_config.json')).toThrow(
      /adapter_config\.json: not valid JSON/,
    );
  });
});

describe('readJsonFile', () => {
  it('reads a file, refuses one above the size bound and a folder', async () => {
    const file = join(dir, 'a.json');
    writeFileSync(file, '{"k": [1, 2]}');
    expect(await readJsonFile(file)).toEqual({ k: [1, 2] });
    await expect(readJsonFile(file, 4)).rejects.toMatchObject({ code: 'JSON_TOO_LARGE' });
    await expect(readJsonFile(dir)).rejects.toMatchObject({ code: 'FILE_IS_FOLDER' });
  });
});
