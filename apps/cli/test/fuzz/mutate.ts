/**
 * Seeded mutations for fuzzing the parsers of files users get from strangers (JSON configs,
 * tokenizers, JSONL rows, binary containers). Deterministic: a seed gives the same cases.
 */

/** A small linear congruential generator for the fuzzer itself (independent of the library's RNG). */
export function fuzzRandom(seed: number): (n: number) => number {
  let s = seed >>> 0;
  return (n: number) => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return Math.floor((s / 2 ** 32) * n);
  };
}

/** Stands for a value nested deeper than any config has; spliced in as text (see {@link withDeep}). */
const DEEP = '\u0000deep';
const DEPTH = 20_000;

/** JSON text with every {@link DEEP} marker replaced by 20,000 nested arrays. */
function withDeep(text: string): string {
  return text.replaceAll(JSON.stringify(DEEP), `${'['.repeat(DEPTH)}1${']'.repeat(DEPTH)}`);
}

/** Values that break parsers: wrong types, huge and negative numbers, deep nesting, long text. */
export function oddValue(rand: (n: number) => number): unknown {
  const choices: (() => unknown)[] = [
    () => null,
    () => true,
    () => -1,
    () => 0,
    () => 0.5,
    () => 1e308,
    () => -1e308,
    () => 1e12,
    () => 2 ** 53 + 2,
    () => 1e9,
    () => 'NaN',
    () => '',
    () => 'x'.repeat(1 << 16),
    () => [],
    () => DEEP,
    () => ({ a: { b: { c: [1, 'two', null] } } }),
    () => [1, 2, 3],
    () => '(a+)+$',
    () => '../../../../etc/passwd',
    () => String.fromCharCode(0xd800),
  ];
  return choices[rand(choices.length)]();
}

function pick<T>(xs: readonly T[], rand: (n: number) => number): T {
  return xs[rand(xs.length)];
}

/** Paths to every object key and array index inside a JSON value. */
function paths(v: unknown, prefix: (string | number)[] = [], out: (string | number)[][] = []) {
  if (out.length > 5000) return out;
  if (Array.isArray(v)) {
    v.slice(0, 50).forEach((x, i) => {
      out.push([...prefix, i]);
      paths(x, [...prefix, i], out);
    });
  } else if (v !== null && typeof v === 'object') {
    for (const [k, x] of Object.entries(v).slice(0, 200)) {
      out.push([...prefix, k]);
      paths(x, [...prefix, k], out);
    }
  }
  return out;
}

/** Mutates a JSON document: replace, delete or add values, or break the text itself. */
export function mutateJson(valid: unknown, rand: (n: number) => number): string {
  const doc = structuredClone(valid) as Record<string, unknown>;
  const all = paths(doc);
  const kind = rand(8);
  if (kind <= 3 && all.length > 0) {
    for (let k = 1 + rand(3); k > 0; k--) {
      const path = pick(all, rand);
      let parent: unknown = doc;
      for (const p of path.slice(0, -1)) parent = (parent as Record<string | number, unknown>)?.[p];
      if (parent === null || typeof parent !== 'object') continue;
      const last = path[path.length - 1];
      if (kind === 0) delete (parent as Record<string | number, unknown>)[last];
      else (parent as Record<string | number, unknown>)[last] = oddValue(rand);
    }
    return withDeep(JSON.stringify(doc));
  }
  const text = JSON.stringify(doc);
  switch (kind) {
    case 4: // an unknown key with an odd value
      return withDeep(JSON.stringify({ ...doc, [`extra_${rand(100)}`]: oddValue(rand) }));
    case 5: // truncated text
      return text.slice(0, rand(text.length));
    case 6: {
      // flipped characters
      const chars = [...text];
      for (let k = 1 + rand(4); k > 0; k--)
        chars[rand(chars.length)] = pick(['{', '"', ',', ']', '9', '\\', 'e'], rand);
      return chars.join('');
    }
    default:
      // not an object at all
      return withDeep(JSON.stringify(oddValue(rand)));
  }
}

/** Mutates bytes: truncation, flipped bits, overwritten runs, appended garbage. */
export function mutateBytes(valid: Uint8Array, rand: (n: number) => number): Uint8Array {
  switch (rand(4)) {
    case 0:
      return valid.slice(0, rand(valid.length));
    case 1: {
      const out = valid.slice();
      for (let k = 1 + rand(8); k > 0; k--) out[rand(out.length)] ^= 1 << rand(8);
      return out;
    }
    case 2: {
      const out = valid.slice();
      const at = rand(out.length);
      const value = pick([0x00, 0xff, 0x7f, 0x80], rand);
      out.fill(value, at, Math.min(out.length, at + 1 + rand(16)));
      return out;
    }
    default: {
      const out = new Uint8Array(valid.length + 1 + rand(64));
      out.set(valid);
      for (let i = valid.length; i < out.length; i++) out[i] = rand(256);
      return out;
    }
  }
}
