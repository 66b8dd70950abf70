import { describe, expect, it } from 'vitest';
import { pythonFullmatchRegExp, translatePythonRegex } from './python-regex.js';

describe('translatePythonRegex', () => {
  it('rewrites Python-only syntax', () => {
    expect(translatePythonRegex('(?P<a>x)(?P=a)', 't').source).toBe('(?<a>x)\\k<a>');
    expect(translatePythonRegex('\\Aa\\Z', 't').source).toBe('^a$');
    expect(translatePythonRegex('a{,3}', 't').source).toBe('a{0,3}');
    expect(translatePythonRegex('a(?#note)b', 't').source).toBe('ab');
    expect(translatePythonRegex('(?i)Q', 't')).toEqual({ source: 'Q', flags: 'i' });
  });

  it('keeps a leading ] in a class literal, as Python does', () => {
    const re = pythonFullmatchRegExp('[]a]+', 't');
    expect(re.test(']a]')).toBe(true);
    expect(pythonFullmatchRegExp('[^]]+', 't').test('abc')).toBe(true);
    expect(pythonFullmatchRegExp('[^]]+', 't').test('a]c')).toBe(false);
  });

  it('leaves escapes and classes alone', () => {
    expect(pythonFullmatchRegExp('layers\\.\\d+\\.q', 't').test('layers.12.q')).toBe(true);
    expect(pythonFullmatchRegExp('[\\.]', 't').test('.')).toBe(true);
  });

  it('refuses what it cannot translate, naming where the pattern came from', () => {
    expect(() => translatePythonRegex('(?>a)', 'exclude_modules')).toThrow(/exclude_modules/);
    expect(() => translatePythonRegex('(?(1)a|b)', 't')).toThrow(/REGEX|no JavaScript equivalent/);
    expect(() => translatePythonRegex('a*+', 't')).toThrow(/possessive/);
    expect(() => translatePythonRegex('[abc', 't')).toThrow(/unclosed character class/);
    expect(() => translatePythonRegex('a\\', 't')).toThrow(/trailing backslash/);
    expect(() => translatePythonRegex('(?x)a b', 't')).toThrow(/inline flag/);
  });
});

describe('nested repetition (exponential backtracking) is refused before matching', () => {
  it('refuses a repeated group that repeats, accepts the patterns PEFT configs use', () => {
    for (const p of ['(a+)+$', '(.*)*x', '(?:a|b*){2,}', '((a+))+', '(a{2,5})+'])
      expect(() => pythonFullmatchRegExp(p, 't'), p).toThrow(/repeats a group that itself repeats/);
    for (const p of [
      '.*\\.(q_proj|v_proj)',
      '^(?!.*vision).*\\.(q|k|v)_proj$',
      '(.*\\.)?(q_proj)',
      'model\\.layers\\.\\d+\\.self_attn\\.(q|v)_proj',
      '(a+){1}',
      '[(]a+[)]+',
      '\\(a+\\)+',
      '(ab)+c*',
    ])
      expect(() => pythonFullmatchRegExp(p, 't'), p).not.toThrow();
  });
});
