import { CoreError } from '../errors.js';

/**
 * Translates a Python `re` pattern (as PEFT writes in `target_modules`, `exclude_modules`,
 * `layers_pattern`, `rank_pattern` keys) into JavaScript RegExp source with the same meaning on
 * module names.
 *
 * Handled differences:
 * - named groups `(?P<name>...)` -> `(?<name>...)`, back-references `(?P=name)` -> `\k<name>`;
 * - `\A` -> `^`, `\Z` -> `$` (module names hold no newlines, so Python's `$` = JS `$`);
 * - `{,n}` (Python: 0 to n) -> `{0,n}` (JS without the `u` flag reads it literally);
 * - a `]` first in a character class is literal in Python, an empty class in JS -> `\]`;
 * - comments `(?#...)` are dropped;
 * - global inline flags at the very start (`(?i)`, `(?s)`, `(?is)`) become JS flags.
 * Refused with a clear error: other inline flags, atomic groups `(?>...)`, possessive
 * quantifiers, conditionals `(?(1)...)`. Python `\d`/`\w` also match non-ASCII digits/letters;
 * module names are ASCII identifiers, so the ASCII JS classes give the same answers.
 */
export function translatePythonRegex(
  pattern: string,
  where: string,
): { source: string; flags: string } {
  let flags = '';
  let i = 0;
  const lead = /^\(\?([aiLmsux]+)\)/.exec(pattern);
  if (lead) {
    for (const f of lead[1]) {
      if (f === 'i' || f === 's' || f === 'm') flags += flags.includes(f) ? '' : f;
      else if (f !== 'u' && f !== 'a') throw unsupported(pattern, where, `inline flag (?${f})`);
    }
    i = lead[0].length;
  }
  let out = '';
  let inClass = false;
  while (i < pattern.length) {
    const c = pattern[i];
    if (c === '\\') {
      const next = pattern[i + 1];
      if (next === undefined) throw invalid(pattern, where, 'a trailing backslash');
      if (!inClass && next === 'A') out += '^';
      else if (!inClass && next === 'Z') out += '$';
      else out += c + next;
      i += 2;
      continue;
    }
    if (inClass) {
      if (c === ']') inClass = false;
      out += c;
      i++;
      continue;
    }
    if (c === '[') {
      inClass = true;
      out += c;
      i++;
      if (pattern[i] === '^') {
        out += '^';
        i++;
      }
      // Python: a `]` right after `[` or `[^` is a literal.
      if (pattern[i] === ']') {
        out += '\\]';
        i++;
      }
      continue;
    }
    if (c === '(' && pattern[i + 1] === '?') {
      const rest = pattern.slice(i + 2);
      if (rest.startsWith('P<')) {
        out += '(?<';
        i += 4;
      } else if (rest.startsWith('P=')) {
        const end = pattern.indexOf(')', i);
        if (end < 0) throw invalid(pattern, where, 'an unclosed (?P=name)');
        out += `\\k<${pattern.slice(i + 4, end)}>`;
        i = end + 1;
      } else if (rest.startsWith('#')) {
        const end = pattern.indexOf(')', i);
        if (end < 0) throw invalid(pattern, where, 'an unclosed (?#comment)');
        i = end + 1;
      } else if (/^(?::|=|!|<=|<!|<[A-Za-z_])/.test(rest)) {
        out += '(?';
        i += 2;
      } else {
        throw unsupported(pattern, where, `the group syntax "(?${rest.slice(0, 2)}"`);
      }
      continue;
    }
    if (c === '{' && pattern[i + 1] === ',') {
      const m = /^\{,(\d+)\}/.exec(pattern.slice(i));
      if (m) {
        out += `{0,${m[1]}}`;
        i += m[0].length;
        continue;
      }
    }
    if (
      (c === '+' || c === '*' || c === '?' || c === '}') &&
      pattern[i + 1] === '+' &&
      out.length > 0
    ) {
      throw unsupported(pattern, where, 'possessive quantifiers');
    }
    out += c;
    i++;
  }
  if (inClass) throw invalid(pattern, where, 'an unclosed character class');
  if (hasNestedRepeat(out)) {
    throw new CoreError(
      'REGEX_UNSAFE',
      `${where}: the regular expression "${pattern.slice(0, 200)}" repeats a group that itself repeats (like "(a+)+"), which can take exponential time to match (the limit: no nested repetition). List the module names, or rewrite it without a repeated group that contains * + or {n,m}.`,
      { pattern, where },
    );
  }
  try {
    new RegExp(out, flags);
  } catch (e) {
    throw invalid(pattern, where, (e as Error).message);
  }
  return { source: out, flags };
}

/**
 * Whether a JS regex source repeats (`*`, `+`, `{n,}`, `{n,m}` with m > 1) a group that contains a
 * repetition: the star height above 1 that makes backtracking engines exponential (`(a+)+$`,
 * `(.*)*x`). Checked before compiling, since JS RegExp has no match-time budget.
 */
function hasNestedRepeat(source: string): boolean {
  // one entry per open group: does it contain a repetition?
  const groups: boolean[] = [false];
  let closed = false; // the previous atom was a group holding a repetition
  for (let i = 0; i < source.length; i++) {
    const c = source[i];
    let repeat = c === '*' || c === '+';
    if (c === '{') {
      const m = /^\{(\d*)(,?)(\d*)\}/.exec(source.slice(i));
      if (m) {
        repeat = m[2] === ',' ? m[3] === '' || Number(m[3]) > 1 : Number(m[1]) > 1;
        i += m[0].length - 1;
      }
    }
    if (repeat) {
      if (closed) return true;
      groups[groups.length - 1] = true;
      closed = false;
      continue;
    }
    closed = false;
    if (c === '\\') i++;
    else if (c === '[') {
      for (i++; i < source.length && source[i] !== ']'; i++) if (source[i] === '\\') i++;
    } else if (c === '(') groups.push(false);
    else if (c === ')' && groups.length > 1) {
      const inner = groups.pop()!;
      if (inner) groups[groups.length - 1] = true;
      closed = inner;
    }
  }
  return false;
}

/** Python `re.fullmatch(pattern, text)` as a JS RegExp: `^(?:pattern)$`. */
export function pythonFullmatchRegExp(pattern: string, where: string): RegExp {
  const { source, flags } = translatePythonRegex(pattern, where);
  return new RegExp(`^(?:${source})$`, flags);
}

function invalid(pattern: string, where: string, why: string): CoreError {
  return new CoreError(
    'REGEX_INVALID',
    `${where}: the regular expression "${pattern}" is invalid (${why}). Fix the pattern.`,
    {
      pattern,
      where,
    },
  );
}

function unsupported(pattern: string, where: string, what: string): CoreError {
  return new CoreError(
    'REGEX_UNSUPPORTED',
    `${where}: the Python regular expression "${pattern}" uses ${what}, which has no JavaScript equivalent here. Rewrite it without that feature (or list the module names).`,
    { pattern, where },
  );
}
