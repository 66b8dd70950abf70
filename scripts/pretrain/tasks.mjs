// The synthetic text tasks of the bundled tiny model. Every example is one line,
// `<task>: <input> = <output>\n`; the pretraining mixture uses the PRETRAIN_TASKS, and the
// HELD_OUT_TASKS never appear in pretraining: they are what LoRA fine-tuning teaches.
// Generators take core's seeded PCG32 (`createRng`), so a seed gives the same data anywhere.

const LETTERS = 'abcdefghijklmnopqrstuvwxyz';

function word(rng, minLen, maxLen) {
  const n = minLen + rng.integer(maxLen - minLen + 1);
  let s = '';
  for (let i = 0; i < n; i++) s += LETTERS[rng.integer(26)];
  return s;
}

const shiftLetter = (c) => LETTERS[(LETTERS.indexOf(c) + 1) % 26];

/** Tasks the base model is pretrained on: name -> (rng) => [input, output]. */
export const PRETRAIN_TASKS = {
  copy: (rng) => {
    const w = word(rng, 2, 8);
    return [w, w];
  },
  reverse: (rng) => {
    const w = word(rng, 2, 8);
    return [w, [...w].reverse().join('')];
  },
  sort: (rng) => {
    const w = word(rng, 2, 8);
    return [w, [...w].sort().join('')];
  },
  count: (rng) => {
    const w = word(rng, 1, 9);
    return [w, String(w.length)];
  },
  add: (rng) => {
    const a = rng.integer(100);
    const b = rng.integer(100);
    return [`${a}+${b}`, String(a + b)];
  },
  lookup: (rng) => {
    const keys = [...LETTERS];
    const n = 2 + rng.integer(3);
    const pairs = [];
    for (let i = 0; i < n; i++) {
      const k = keys.splice(rng.integer(keys.length), 1)[0];
      pairs.push([k, String(rng.integer(10))]);
    }
    const [key, value] = pairs[rng.integer(n)];
    return [`${pairs.map(([k, v]) => `${k}=${v}`).join(' ')} ? ${key}`, value];
  },
  last: (rng) => {
    const w = word(rng, 1, 8);
    return [w, w[w.length - 1]];
  },
};

/** Tasks held out of pretraining, each learnable from the pretraining skills. */
export const HELD_OUT_TASKS = {
  // every letter moved one step in the alphabet (z -> a): "copy" with a per-letter map
  shift: (rng) => {
    const w = word(rng, 2, 7);
    return [w, [...w].map(shiftLetter).join('')];
  },
  // every letter written twice: "copy" at half speed
  double: (rng) => {
    const w = word(rng, 2, 5);
    return [w, [...w].map((c) => c + c).join('')];
  },
};

/** One example as a prompt/completion pair: the prompt ends before the answer. */
export function example(name, generate, rng) {
  const [input, output] = generate(rng);
  return { prompt: `${name}: ${input} =`, completion: ` ${output}\n` };
}

/** `n` pretraining lines, tasks drawn uniformly. */
export function pretrainingText(rng, n) {
  const names = Object.keys(PRETRAIN_TASKS);
  const lines = [];
  for (let i = 0; i < n; i++) {
    const name = names[rng.integer(names.length)];
    const { prompt, completion } = example(name, PRETRAIN_TASKS[name], rng);
    lines.push(prompt + completion);
  }
  return lines;
}
