import { RE2JS, RE2JSException } from 're2js';
import { CoreError } from '../errors.js';

/**
 * Python `re` patterns from adapter configs (`target_modules`, `exclude_modules`, `modules_to_save`,
 * `layers_pattern`, `rank_pattern` / `alpha_pattern` keys), matched in time linear in the name
 * by RE2 (the `re2js` port): a pattern from a stranger's config cannot hang a command, whatever
 * its shape (`(a+)+$`, `(a|a)*$` run in linear time like any other).
 *
 * Python syntax is translated to RE2's: `\Z` -> `\z`, `{,n}` -> `{0,n}`, a `]` first in a class and
 * a `[` inside one are literals, `(?#...)` comments dropped, escapes of literal characters and
 * `\xhh` / `\uhhhh` / `\Uhhhhhhhh` / octal written as code points, global flags `(?i)` `(?s)`
 * `(?m)` (`(?a)` / `(?u)` are no-ops here) only at the start, as Python requires. `(?P<name>...)`
 * is RE2 syntax already.
 *
 * Lookaheads at the very start of a pattern (`^(?!.*vision).*\.q_proj`, the usual way to leave a
 * vision tower out) are supported exactly: each is a separate linear-time prefix match at
 * position 0. Everything RE2 cannot run in linear time is refused with `REGEX_UNSUPPORTED`,
 * naming the construct: back-references, other lookarounds, atomic groups, possessive
 * quantifiers, conditionals, `\N{...}`, verbose mode `(?x)`, repeat counts above 1000. Patterns
 * Python itself rejects get `REGEX_INVALID`; patterns above {@link MAX_REGEX_SIZE} once their
 * counted repeats are written out get `REGEX_TOO_LARGE` (compiling is the one cost that grows
 * with the pattern).
 *
 * Differences that module names never reach: `\d`, `\w`, `\s`, `\b` are ASCII classes (Python's
 * also take non-ASCII digits, letters and spaces; `\s` here lacks `\v`), and `$` is the end of
 * the text (Python's also matches before a final newline).
 */

/**
 * How Python's `re` applies a pattern, and so how PEFT uses it: `re.fullmatch` (the whole name:
 * `target_modules`, `exclude_modules`), `re.match` (a prefix: `rank_pattern` keys,
 * `modules_to_save`, `layers_pattern` in PEFT's templates) or `re.search` (anywhere).
 */
export type PythonMatchMode = 'fullmatch' | 'match' | 'search';

/** Where a pattern comes from, for error messages: the config key and the value written there. */
export interface RegexOrigin {
  /** The config key, e.g. `target_modules` or `rank_pattern`. */
  key: string;
  /** The pattern as written in the config (before PEFT splices it into a template). */
  pattern: string;
}

/** A Python regular expression compiled for linear-time matching. */
export class PythonRegex {
  /** @internal */
  constructor(
    /** The expression as Python receives it (a config value, or PEFT's template around one). */
    readonly expression: string,
    readonly mode: PythonMatchMode,
    private readonly body: RE2JS,
    private readonly lookaheads: readonly { negative: boolean; re: RE2JS }[],
  ) {}

  /** True when Python's `re.<mode>(expression, text)` finds a match. */
  test(text: string): boolean {
    return this.lookaheadsHold(text) && this.body.test(text);
  }

  /**
   * The named groups of the match Python's `re.<mode>` would return (the same submatches: RE2
   * picks them with the same leftmost-first preferences as a backtracking engine), or undefined
   * when there is no match.
   */
  groups(text: string): Record<string, string | undefined> | undefined {
    if (!this.lookaheadsHold(text)) return undefined;
    const m = this.body.exec(text);
    if (m === null) return undefined;
    return { ...(m as unknown as { groups?: Record<string, string | undefined> }).groups };
  }

  private lookaheadsHold(text: string): boolean {
    for (const l of this.lookaheads) if (l.re.test(text) === l.negative) return false;
    return true;
  }
}

/**
 * Compiles `expression`, a Python regular expression, for `re.fullmatch` / `re.match` /
 * `re.search` semantics. `origin` names the config key and value for errors (PEFT often splices
 * a config value into a template, e.g. `(.*\.)?(KEY)$`; pass that template as `expression`).
 *
 * @throws CoreError `REGEX_INVALID` (Python would refuse it too) or `REGEX_UNSUPPORTED` (valid in
 *   Python, not runnable in linear time), with `details` { key, pattern, expression, construct };
 *   `REGEX_TOO_LARGE` above {@link MAX_REGEX_SIZE}.
 */
export function compilePythonRegex(
  expression: string,
  mode: PythonMatchMode,
  origin: RegexOrigin = { key: 'pattern', pattern: expression },
): PythonRegex {
  const where = { ...origin, expression };
  const t = translate(expression, where, true);
  if (t.lookaheads.length > 0 && t.topLevelAlternation) {
    throw unsupported(where, 'a lookahead before a top-level "|" (it applies to one branch only)');
  }
  if (t.lookaheads.length > 0 && mode === 'search') {
    // re.search tries the lookahead at every position, not at the start alone.
    throw unsupported(where, 'a lookahead in a pattern searched anywhere in the name (re.search)');
  }
  const size = [t.source, ...t.lookaheads.map((l) => l.source)].reduce(
    (n, source) => n + expandedSize(source),
    0,
  );
  if (size > MAX_REGEX_SIZE) {
    throw new CoreError(
      'REGEX_TOO_LARGE',
      `${describe(where)} expands to about ${size.toLocaleString('en-US')} steps once its counted repeats are written out (the limit: ${MAX_REGEX_SIZE.toLocaleString('en-US')}), too large to compile quickly. List the module names, or write a shorter pattern.`,
      { ...where, size, limit: MAX_REGEX_SIZE },
    );
  }
  const anchored =
    mode === 'search'
      ? t.source
      : mode === 'match'
        ? `\\A(?:${t.source})`
        : `\\A(?:${t.source})\\z`;
  const body = compileRe2(t.flags + anchored, where);
  const lookaheads = t.lookaheads.map((l) => ({
    negative: l.negative,
    re: compileRe2(`${t.flags}\\A(?:${l.source})`, where),
  }));
  return new PythonRegex(expression, mode, body, lookaheads);
}

/**
 * The largest config regex compiled: its size with counted repeats written out (`a{1000}` counts
 * 1000), about the number of instructions RE2 builds. Compiling takes time and memory in
 * proportion (~1 s and ~100 MiB for 100,000 on a loaded 2-core machine); an alternation of
 * 5,000 names like `model\.layers\.123\.q_proj` is ~110,000.
 */
export const MAX_REGEX_SIZE = 100_000;

/**
 * Escapes `text` so that a Python regex matches it literally (Python's `re.escape` for the
 * characters module names hold): for writing exact names as `rank_pattern` keys.
 */
export function escapePythonRegex(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

type Where = RegexOrigin & { expression: string };

interface Translated {
  /** RE2 global flags, e.g. `(?i)`, or ''. */
  flags: string;
  source: string;
  lookaheads: { negative: boolean; source: string }[];
  topLevelAlternation: boolean;
}

const RE2_FLAGS = new Set(['i', 'm', 's']);

/**
 * Python pattern -> RE2 source. `top`: the whole expression (global flags and leading
 * lookaheads allowed) rather than a lookahead's body.
 */
function translate(p: string, where: Where, top: boolean): Translated {
  let flags = '';
  let out = '';
  const lookaheads: Translated['lookaheads'] = [];
  let leading = true; // only zero-width items at position 0 so far
  let started = false; // anything but global flag groups seen (Python: flags must come first)
  let depth = 0;
  let topLevelAlternation = false;
  let afterRepeat: false | 'greedy' | 'lazy' = false;
  let i = 0;
  while (i < p.length) {
    const c = p[i];
    const wasRepeat: false | 'greedy' | 'lazy' = afterRepeat;
    afterRepeat = false;
    if (c === '\\') {
      const e = translateEscape(p, i, false, where);
      out += e.text;
      i = e.next;
      started = true;
      if (e.text !== '\\A') leading = false;
      continue;
    }
    if (c === '[') {
      const cls = translateClass(p, i, where);
      out += cls.text;
      i = cls.next;
      started = true;
      leading = false;
      continue;
    }
    if (c === '(' && p[i + 1] === '?') {
      const rest = p.slice(i + 2, i + 4);
      if (rest[0] === '#') {
        const end = p.indexOf(')', i);
        if (end < 0) throw invalid(where, 'a comment "(?#" is never closed');
        i = end + 1;
        continue;
      }
      if (rest[0] === '=' || rest[0] === '!') {
        const end = groupEnd(p, i, where);
        if (!top || !leading || depth > 0) {
          throw unsupported(
            where,
            `a lookahead "(?${rest[0]}...)" that is not at the start of the pattern`,
          );
        }
        if (end + 1 < p.length && '*+?{'.includes(p[end + 1]))
          throw unsupported(where, 'a repeated lookahead');
        const body = translate(p.slice(i + 3, end), where, false);
        lookaheads.push({ negative: rest[0] === '!', source: body.source });
        i = end + 1;
        started = true;
        continue;
      }
      if (rest === '<=' || rest === '<!') {
        throw unsupported(where, `a lookbehind "(?${rest}...)"`);
      }
      if (rest[0] === '>') throw unsupported(where, 'an atomic group "(?>...)"');
      if (rest[0] === '(') throw unsupported(where, 'a conditional group "(?(...)...)"');
      if (rest === 'P=') throw unsupported(where, 'a back-reference "(?P=name)"');
      if (rest === 'P<') {
        out += '(?P<';
        i += 4;
        depth++;
        started = true;
        leading = false;
        continue;
      }
      const f = /^\(\?([aiLmsux]*)(?:-([imsx]+))?([:)])/.exec(p.slice(i));
      if (!f || (f[1] === '' && f[2] === undefined && f[3] === ')')) {
        throw invalid(where, `unknown group syntax "${p.slice(i, i + 4)}"`);
      }
      const on = translateFlags(f[1], where);
      const off = translateFlags(f[2] ?? '', where);
      if (f[3] === ')') {
        if (f[2] !== undefined) throw invalid(where, 'flags can only be turned off in a group');
        if (!top || started) {
          throw invalid(where, `global flags "${f[0]}" not at the start of the expression`);
        }
        for (const x of on) if (!flags.includes(x)) flags += x;
      } else {
        out += on === '' && off === '' ? '(?:' : `(?${on}${off === '' ? '' : `-${off}`}:`;
        depth++;
        started = true;
        leading = false;
      }
      i += f[0].length;
      continue;
    }
    if (c === '{') {
      const r = /^\{(\d*)(?:(,)(\d*))?\}/.exec(p.slice(i));
      if (r && r[0] !== '{}') {
        const lo = r[1];
        const hi = r[2] === undefined ? lo : r[3];
        if (hi !== '' && Number(lo) > Number(hi)) {
          throw invalid(where, `the repeat "${r[0]}" has its minimum above its maximum`);
        }
        if (Number(lo) > 1000 || (hi !== '' && Number(hi) > 1000)) {
          throw unsupported(where, `the repeat count "${r[0]}" (RE2 allows at most 1000)`);
        }
        out += hi === '' ? `{${lo === '' ? '0' : lo},}` : `{${lo === '' ? '0' : lo},${hi}}`;
        i += r[0].length;
        afterRepeat = 'greedy';
      } else {
        out += '\\{';
        i++;
        leading = false;
      }
      started = true;
      continue;
    }
    if (c === '*' || c === '+' || c === '?') {
      if (c === '+' && wasRepeat === 'greedy') {
        throw unsupported(where, 'a possessive quantifier ("*+", "++", "?+", "{m,n}+")');
      }
      afterRepeat = c === '?' && wasRepeat === 'greedy' ? 'lazy' : 'greedy';
      out += c;
      i++;
      started = true;
      continue;
    }
    if (c === '(') depth++;
    else if (c === ')') depth--;
    else if (c === '|' && depth === 0) topLevelAlternation = true;
    if (c !== '^') leading = false;
    out += c;
    i++;
    started = true;
  }
  return { flags: flags === '' ? '' : `(?${flags})`, source: out, lookaheads, topLevelAlternation };
}

/** Python inline flag letters -> RE2's (`a`, `u` dropped: RE2's classes are ASCII already). */
function translateFlags(letters: string, where: Where): string {
  let out = '';
  for (const x of letters) {
    if (x === 'x') throw unsupported(where, 'verbose mode "(?x)"');
    if (x === 'L') throw invalid(where, 'the flag "L" cannot be used with a str pattern');
    if (RE2_FLAGS.has(x) && !out.includes(x)) out += x;
  }
  return out;
}

/** Index of the `)` closing the group opened at `open` (escapes and classes skipped). */
function groupEnd(p: string, open: number, where: Where): number {
  let depth = 0;
  for (let i = open; i < p.length; i++) {
    const c = p[i];
    if (c === '\\') i++;
    else if (c === '[') i = translateClass(p, i, where).next - 1;
    else if (c === '(') depth++;
    else if (c === ')' && --depth === 0) return i;
  }
  throw invalid(where, 'a group is never closed (missing ")")');
}

/** `[...]` at `start`: Python's literal leading `]`; `[` escaped so RE2 sees no `[:alpha:]`. */
function translateClass(p: string, start: number, where: Where): { text: string; next: number } {
  let text = '[';
  let i = start + 1;
  if (p[i] === '^') {
    text += '^';
    i++;
  }
  if (p[i] === ']') {
    text += '\\]';
    i++;
  }
  while (i < p.length) {
    const c = p[i];
    if (c === ']') return { text: `${text}]`, next: i + 1 };
    if (c === '\\') {
      const e = translateEscape(p, i, true, where);
      text += e.text;
      i = e.next;
    } else {
      text += c === '[' ? '\\[' : c;
      i++;
    }
  }
  throw invalid(where, 'a character set "[" is never closed');
}

const CONTROL_ESCAPES: Readonly<Record<string, number>> = {
  a: 7,
  f: 12,
  n: 10,
  r: 13,
  t: 9,
  v: 11,
};
const HEX_ESCAPES: Readonly<Record<string, number>> = { x: 2, u: 4, U: 8 };

/** One Python escape at `i` (the backslash) as RE2 source. */
function translateEscape(
  p: string,
  i: number,
  inClass: boolean,
  where: Where,
): { text: string; next: number } {
  const c = p[i + 1];
  if (c === undefined) throw invalid(where, 'a trailing backslash');
  if (!inClass && (c === 'A' || c === 'b' || c === 'B')) return { text: `\\${c}`, next: i + 2 };
  if (!inClass && c === 'Z') return { text: '\\z', next: i + 2 };
  if (inClass && c === 'b') return { text: codePoint(8), next: i + 2 };
  if ('dDsSwW'.includes(c)) return { text: `\\${c}`, next: i + 2 };
  if (c in CONTROL_ESCAPES) return { text: codePoint(CONTROL_ESCAPES[c]), next: i + 2 };
  if (c in HEX_ESCAPES) {
    const n = HEX_ESCAPES[c];
    const hex = p.slice(i + 2, i + 2 + n);
    if (hex.length !== n || !/^[0-9a-fA-F]+$/.test(hex)) {
      throw invalid(where, `the escape "\\${c}" needs ${n} hexadecimal digits`);
    }
    const value = Number.parseInt(hex, 16);
    if (value > 0x10ffff) throw invalid(where, `the escape "\\${c}${hex}" is beyond Unicode`);
    return { text: codePoint(value), next: i + 2 + n };
  }
  if (c === 'N') throw unsupported(where, 'a named character escape "\\N{...}"');
  if (c >= '0' && c <= '9') {
    const octal = /^[0-7]{1,3}/.exec(p.slice(i + 1))?.[0] ?? '';
    // Python: \0.. and (in a class) \1-\7.. are octal, as are three octal digits anywhere;
    // outside a class \1-\99 otherwise refers back to a group.
    if (c === '0' || (inClass && octal !== '') || octal.length === 3) {
      const value = Number.parseInt(octal, 8);
      if (value > 0o377) throw invalid(where, `the octal escape "\\${octal}" is above \\377`);
      return { text: codePoint(value), next: i + 1 + octal.length };
    }
    if (inClass) throw invalid(where, `bad escape "\\${c}" in a character set`);
    throw unsupported(where, `a back-reference "\\${/^\d{1,2}/.exec(p.slice(i + 1))?.[0]}"`);
  }
  if (/[A-Za-z]/.test(c)) throw invalid(where, `bad escape "\\${c}"`);
  const cp = p.codePointAt(i + 1) as number;
  return { text: codePoint(cp), next: i + 1 + (cp > 0xffff ? 2 : 1) };
}

function codePoint(value: number): string {
  return `\\x{${value.toString(16)}}`;
}

/** Roughly the instructions RE2 compiles `source` (RE2 syntax) to: atoms, counted repeats expanded. */
function expandedSize(source: string): number {
  const outer: { alts: number; sum: number }[] = [];
  let alts = 0; // completed branches of the current group
  let sum = 0; // the current branch so far
  let last = 0; // size of the last atom, which a counted repeat multiplies
  const skipEscape = (i: number) =>
    source[i + 1] === 'x' && source[i + 2] === '{' ? source.indexOf('}', i) : i + 1;
  for (let i = 0; i < source.length; i++) {
    const c = source[i];
    if (c === '(') {
      outer.push({ alts, sum });
      alts = 0;
      sum = 0;
      last = 0;
      if (source[i + 1] === '?') i = source.indexOf(source[i + 2] === 'P' ? '>' : ':', i);
      continue;
    }
    if (c === ')') {
      last = alts + sum + 1;
      const o = outer.pop() ?? { alts: 0, sum: 0 };
      alts = o.alts;
      sum = o.sum + last;
      continue;
    }
    if (c === '|') {
      alts += sum;
      sum = 0;
      last = 0;
      continue;
    }
    const counted = c === '{' ? /^\{(\d+),(\d*)\}/.exec(source.slice(i, i + 24)) : null;
    if (counted) {
      const times = counted[2] === '' ? Number(counted[1]) + 1 : Number(counted[2]);
      sum += last * (Math.max(times, 1) - 1);
      last = 0;
      i += counted[0].length - 1;
      continue;
    }
    if (c === '\\') i = skipEscape(i);
    else if (c === '[') {
      for (i++; i < source.length && source[i] !== ']'; i++) {
        if (source[i] === '\\') i = skipEscape(i);
      }
    }
    sum += 1;
    last = c === '*' || c === '+' || c === '?' ? 0 : 1;
  }
  return alts + sum;
}

function compileRe2(source: string, where: Where): RE2JS {
  try {
    return RE2JS.compile(source);
  } catch (e) {
    if (!(e instanceof RE2JSException)) throw e;
    // RE2 quotes the part it stopped at; drop it when that is the whole wrapped expression.
    const why = e.message
      .replace(/^error parsing regexp: /, '')
      .replace(/: `(?:\(\?[ims]+\))?\\A\(\?:[\s\S]*`$/, '');
    if (/too large|repeat count/.test(why)) {
      throw unsupported(where, `a repetition too large for the linear-time matcher (${why})`);
    }
    throw invalid(where, why);
  }
}

function describe(where: Where): string {
  const shown = (s: string) => `"${s.length > 200 ? `${s.slice(0, 200)}...` : s}"`;
  return where.expression === where.pattern
    ? `${where.key}: the regular expression ${shown(where.pattern)}`
    : `${where.key}: the regular expression ${shown(where.pattern)} (as PEFT matches it: ${shown(where.expression)})`;
}

function invalid(where: Where, why: string): CoreError {
  return new CoreError('REGEX_INVALID', `${describe(where)} is invalid: ${why}. Fix the pattern.`, {
    ...where,
    construct: why,
  });
}

function unsupported(where: Where, construct: string): CoreError {
  return new CoreError(
    'REGEX_UNSUPPORTED',
    `${describe(where)} uses ${construct}, which Python accepts but a linear-time matcher (RE2) cannot run; patterns from configs are matched in linear time so that none can hang. Rewrite the pattern without it, or list the module names instead.`,
    { ...where, construct },
  );
}
