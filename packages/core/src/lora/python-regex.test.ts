import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { LoraError } from '../errors.js';
import {
  compilePythonRegex,
  escapePythonRegex,
  MAX_REGEX_SIZE,
  type PythonMatchMode,
} from './python-regex.js';

/** Python's own answers: scripts/reference/regex-targets.py (Python 3.11 `re`, PEFT 0.21). */
const reference = JSON.parse(
  readFileSync(new URL('./testdata/regex-targets.json', import.meta.url), 'utf8'),
) as {
  re: { pattern: string; mode: PythonMatchMode; text: string; matched?: boolean; error?: string }[];
  compiles: { pattern: string; python: boolean; error?: string }[];
};

function errorOf(f: () => unknown): LoraError {
  try {
    f();
  } catch (e) {
    if (e instanceof LoraError) return e;
    throw e;
  }
  throw new Error('expected a LoraError');
}

describe('Python re semantics (reference: Python 3.11 re)', () => {
  it(`agrees with re.fullmatch / re.match / re.search on ${reference.re.length} cases`, () => {
    const wrong: string[] = [];
    const refused = new Set<string>();
    for (const c of reference.re) {
      let got: boolean;
      try {
        got = compilePythonRegex(c.pattern, c.mode).test(c.text);
      } catch (e) {
        refused.add(`${(e as LoraError).code} ${c.mode} ${c.pattern}`);
        continue;
      }
      if (got !== c.matched) wrong.push(`${c.mode}(${c.pattern}, ${JSON.stringify(c.text)})`);
    }
    expect(wrong).toEqual([]);
    // Leading lookaheads are exact at position 0 (fullmatch, match); re.search would try them
    // at every position, which is refused rather than answered wrongly.
    expect([...refused].sort()).toEqual(
      reference.re
        .filter((c) => c.mode === 'search' && /^(\(\?i\)|\^|\\A)*\(\?[=!]/.test(c.pattern))
        .map((c) => `REGEX_UNSUPPORTED search ${c.pattern}`)
        .filter((x, i, all) => all.indexOf(x) === i)
        .sort(),
    );
    // the reference really distinguishes the modes
    const modes = new Set(
      reference.re.filter((c) => c.pattern === 'proj' && c.text === 'q_proj').map((c) => c.matched),
    );
    expect(modes).toEqual(new Set([true, false]));
  });

  it('returns the named groups Python would (lazy: the first layer number)', () => {
    const layer = compilePythonRegex('.*?\\.[^.]*\\.(?P<idx>\\d+)\\.', 'match');
    expect(layer.groups('model.layers.1.mlp.experts.0.w1')).toEqual({ idx: '1' });
    expect(layer.groups('layers.0.q_proj')).toBeUndefined();
    const full = compilePythonRegex('(?P<a>a)|(?P<ab>ab)', 'fullmatch');
    expect(full.groups('ab')).toEqual({ a: undefined, ab: 'ab' });
  });
});

describe('catastrophic patterns run in linear time', () => {
  // Each of these takes exponential time in a backtracking engine (Python's re, JS RegExp) on the
  // failing texts below; the expected answers follow from the patterns by hand.
  // [pattern, text, re.fullmatch, re.match, re.search]
  const n = 100;
  const a = 'a'.repeat(n);
  const cases: [string, string, boolean, boolean, boolean][] = [
    ['(a+)+$', a, true, true, true],
    ['(a+)+$', `${a}!`, false, false, false],
    ['(a|a)*$', a, true, true, true],
    ['(a|a)*$', `${a}!`, false, false, true], // search: the empty match at the end
    ['(a|aa)*b', `${a}b`, true, true, true],
    ['(a|aa)*b', a, false, false, false],
    ['(x+x+)+y', `${'x'.repeat(n - 1)}y`, true, true, true],
    ['(x+x+)+y', 'x'.repeat(n), false, false, false],
    ['(.*)*x', `model.${'a'.repeat(60)}.q_proj`, false, false, false],
    ['(\\w+\\.?)+\\.q_proj', `model.${'layers.'.repeat(12)}q_proj!`, false, true, true],
    ['(\\w+\\.?)+\\.q_proj', `model.${'layers.'.repeat(12)}q_proX`, false, false, false],
  ];
  const modes = ['fullmatch', 'match', 'search'] as const;
  modes.forEach((mode, m) => {
    it(`re.${mode}`, () => {
      for (const [pattern, text, ...expected] of cases) {
        const got = compilePythonRegex(pattern, mode).test(text);
        expect(got, `${mode}(${pattern}, ${text.length} chars)`).toBe(expected[m]);
      }
    });
  });
});

describe('refusals', () => {
  const unsupported: [string, RegExp][] = [
    ['(a)\\1', /back-reference "\\1"/],
    ['(?P<n>a)(?P=n)', /back-reference "\(\?P=name\)"/],
    ['a(?=b)', /lookahead "\(\?=\.\.\.\)" that is not at the start/],
    ['a(?!b)', /lookahead "\(\?!\.\.\.\)" that is not at the start/],
    ['(?<=a)b', /lookbehind "\(\?<=\.\.\.\)"/],
    ['(?<!a)b', /lookbehind "\(\?<!\.\.\.\)"/],
    ['(?>a+)b', /atomic group/],
    ['a*+', /possessive/],
    ['a++', /possessive/],
    ['a?+', /possessive/],
    ['a{2}+', /possessive/],
    ['(a)?(?(1)b|c)', /conditional/],
    ['\\N{LATIN SMALL LETTER A}', /named character/],
    ['(?x)a b', /verbose/],
    ['a{1001}', /repeat count.*1000/],
    ['(a{100}){100}', /repetition too large/],
    ['(?!a)b|c', /top-level "\|"/],
    ['(?!(?=a))a', /lookahead .* not at the start/],
    ['(?!a)*b', /repeated lookahead/],
  ];

  it('valid Python that RE2 cannot run: REGEX_UNSUPPORTED naming the construct, key and pattern', () => {
    const python = new Map(reference.compiles.map((c) => [c.pattern, c.python]));
    for (const [pattern, construct] of unsupported) {
      expect(python.get(pattern), `${pattern} is in the reference`).toBe(true);
      const e = errorOf(() =>
        compilePythonRegex(pattern, 'fullmatch', { key: 'target_modules', pattern }),
      );
      expect(e.code, pattern).toBe('REGEX_UNSUPPORTED');
      expect(e.message, pattern).toMatch(construct);
      expect(e.message).toContain(`target_modules: the regular expression "${pattern}"`);
      expect(e.details).toMatchObject({ key: 'target_modules', pattern });
      expect(typeof e.details.construct).toBe('string');
    }
  });

  it('what Python itself refuses: REGEX_INVALID; what it accepts compiles or is unsupported', () => {
    const listed = new Set(unsupported.map(([p]) => p));
    for (const c of reference.compiles) {
      let code: string | undefined;
      try {
        compilePythonRegex(c.pattern, 'match');
      } catch (e) {
        code = (e as LoraError).code;
      }
      if (!c.python) expect(code, `${c.pattern}: ${c.error}`).toBe('REGEX_INVALID');
      else expect(code, c.pattern).toBe(listed.has(c.pattern) ? 'REGEX_UNSUPPORTED' : undefined);
    }
  });

  it('a pattern too large to compile quickly: REGEX_TOO_LARGE naming the limit', () => {
    // 100 groups of 1000 repeats: short text, ~100,000 RE2 instructions written out
    const wide = '(\\w{1000})'.repeat(101);
    const e = errorOf(() =>
      compilePythonRegex(wide, 'fullmatch', { key: 'target_modules', pattern: wide }),
    );
    expect(e.code).toBe('REGEX_TOO_LARGE');
    expect(e.message).toMatch(
      /^target_modules: .*expands to about 101,\d{3} steps .*the limit: 100,000/,
    );
    expect(e.details.limit).toBe(MAX_REGEX_SIZE);
    // smaller ones compile and match
    const ok = compilePythonRegex('(\\w{1000})'.repeat(3), 'fullmatch');
    expect(ok.test('a'.repeat(3000))).toBe(true);
    expect(ok.test('a'.repeat(2999))).toBe(false);
    // a long alternation of names counts its atoms (~22 per name here): refused before compiling
    const names = Array.from({ length: 5000 }, (_, i) =>
      escapePythonRegex(`model.layers.${i}.q_proj`),
    ).join('|');
    expect(errorOf(() => compilePythonRegex(names, 'fullmatch')).details.size).toBeGreaterThan(
      MAX_REGEX_SIZE,
    );
  });

  it('names the template PEFT splices a key into', () => {
    const e = errorOf(() =>
      compilePythonRegex('(.*\\.)?((?i)q_proj)$', 'match', {
        key: 'rank_pattern',
        pattern: '(?i)q_proj',
      }),
    );
    expect(e.code).toBe('REGEX_INVALID');
    expect(e.message).toMatch(
      /^rank_pattern: the regular expression "\(\?i\)q_proj" \(as PEFT matches it: .*global flags/,
    );
  });
});

describe('escapePythonRegex', () => {
  it('makes a module name match only itself', () => {
    const name = 'model.layers.0.self_attn.q_proj';
    const re = compilePythonRegex(escapePythonRegex(name), 'fullmatch');
    expect(re.test(name)).toBe(true);
    expect(re.test('model.layers.0.self_attnxq_proj')).toBe(false);
    const odd = 'a+b(c)[d]{2}$^|?*\\';
    expect(compilePythonRegex(escapePythonRegex(odd), 'fullmatch').test(odd)).toBe(true);
  });
});
