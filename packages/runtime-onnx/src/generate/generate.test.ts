import { createRng } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { ByteTokenizer } from './byte-tokenizer.js';
import { generate, type TokenEvent } from './generate.js';
import { sampleToken } from './sampling.js';
import type { TokenStepper } from './stepper.js';

const BOS = 256;
const EOS = 257;
const tokenizer = new ByteTokenizer({ bosId: BOS, eosId: EOS });
const bytes = (s: string) => [...Buffer.from(s, 'utf8')];

/**
 * A scripted model for the loop logic only: row r's logits put all weight on plan[r][n], where
 * n counts the tokens fed back to it so far (or on `fill` once the plan runs out). It records
 * what the loop feeds it.
 */
class ScriptedStepper implements TokenStepper {
  readonly vocabSize = 258;
  started: number[][] = [];
  fed: number[][] = [];
  disposed = 0;
  private consumed: number[] = [];
  constructor(
    private readonly plans: number[][],
    private readonly fill = 'x'.charCodeAt(0),
    private readonly failAtStep = -1,
  ) {}
  async start(prompts: readonly (readonly number[])[]): Promise<Float32Array[]> {
    this.started = prompts.map((p) => [...p]);
    this.consumed = prompts.map(() => 0);
    return this.logits();
  }
  async step(tokens: readonly number[]): Promise<Float32Array[]> {
    if (this.fed.length === this.failAtStep) throw new Error('device lost');
    this.fed.push([...tokens]);
    this.consumed = this.consumed.map((c) => c + 1);
    return this.logits();
  }
  async dispose(): Promise<void> {
    this.disposed++;
  }
  private logits(): Float32Array[] {
    return this.plans.map((plan, r) => {
      const l = new Float32Array(this.vocabSize);
      l[plan[this.consumed[r]] ?? this.fill] = 10;
      return l;
    });
  }
}

describe('generate (loop logic, scripted model, greedy)', () => {
  it('feeds each sampled token back and stops at maxTokens', async () => {
    const stepper = new ScriptedStepper([bytes('Hello world')]);
    const { outputs, timings } = await generate(stepper, tokenizer, {
      prompt: 'Say:',
      maxTokens: 5,
    });
    expect(stepper.started).toEqual([[BOS, ...bytes('Say:')]]);
    expect(stepper.fed).toEqual(bytes('Hell').map((b) => [b])); // the 5th token needs no further step
    expect(outputs).toEqual([
      {
        prompt: 'Say:',
        promptTokens: [BOS, ...bytes('Say:')],
        text: 'Hello',
        tokens: bytes('Hello'),
        finishReason: 'length',
      },
    ]);
    expect(timings.decodeTokens).toBe(4);
    expect(stepper.disposed).toBe(1);
  });

  it("stops at the model's context length and refuses a prompt that fills it", async () => {
    const stepper = new ScriptedStepper([bytes('abcdef')]);
    const { outputs } = await generate(stepper, tokenizer, {
      prompt: 'xyz',
      maxTokens: 10,
      maxSequenceLength: 6,
    });
    // BOS + 3 prompt bytes leave room for 2 tokens
    expect(outputs[0]).toMatchObject({ text: 'ab', finishReason: 'length' });
    await expect(
      generate(stepper, tokenizer, { prompt: 'xyzuv', maxSequenceLength: 6 }),
    ).rejects.toThrow(/prompt 0 has 6 tokens; the model's context is 6/);
  });

  it('ends a row at EOS, which is neither in tokens nor in text', async () => {
    const events: TokenEvent[] = [];
    const stepper = new ScriptedStepper([[...bytes('Hi'), EOS]]);
    const { outputs } = await generate(stepper, tokenizer, {
      prompt: 'x',
      maxTokens: 10,
      onToken: (e) => events.push(e),
    });
    expect(outputs[0]).toMatchObject({ text: 'Hi', tokens: bytes('Hi'), finishReason: 'eos' });
    expect(events).toEqual([
      { row: 0, token: 72, text: 'H' },
      { row: 0, token: 105, text: 'i' },
      { row: 0, token: EOS, text: '', finishReason: 'eos' },
    ]);
  });

  it('cuts at a stop string spanning several tokens and never streams any of it', async () => {
    const streamed: string[] = [];
    const stepper = new ScriptedStepper([bytes('one two THE END three')]);
    const { outputs } = await generate(stepper, tokenizer, {
      prompt: 'x',
      maxTokens: 50,
      stop: ['THE END', 'never'],
      onToken: (e) => streamed.push(e.text),
    });
    expect(outputs[0]).toMatchObject({
      text: 'one two ',
      tokens: bytes('one two THE END'),
      finishReason: 'stop',
    });
    expect(streamed.join('')).toBe('one two ');
    expect(stepper.fed.length).toBe('one two THE END'.length - 1);
  });

  it('holds back a partial stop string and releases it when the match fails', async () => {
    const events: TokenEvent[] = [];
    const stepper = new ScriptedStepper([bytes('THE ENTIRE')]);
    const { outputs } = await generate(stepper, tokenizer, {
      prompt: 'x',
      maxTokens: 10,
      stop: ['THE END'],
      onToken: (e) => events.push(e),
    });
    expect(outputs[0]).toMatchObject({ text: 'THE ENTIRE', finishReason: 'length' });
    // 'T','H','E',' ','E','N' could all begin "THE END": nothing is shown until the 'T' of
    // ENTIRE breaks the match; that 'T' could itself begin "THE END", so it waits for the 'I'.
    expect(events.map((e) => e.text)).toEqual(['', '', '', '', '', '', 'THE EN', 'TI', 'R', 'E']);
  });

  it('stop strings: 300 random texts and stop sets agree with a brute-force cut, and the stream equals the text', async () => {
    const rng = createRng(17);
    const pick = (alphabet: string, n: number) =>
      Array.from({ length: n }, () => alphabet[rng.integer(alphabet.length)]).join('');
    for (let trial = 0; trial < 300; trial++) {
      const full = pick('ab c', 20);
      const stops = Array.from({ length: 1 + rng.integer(3) }, () =>
        pick('ab c', 1 + rng.integer(3)),
      );
      // Brute force: generation stops at the first token that completes any stop string; the
      // text is then cut at the earliest stop occurrence inside what was generated.
      let end = full.length;
      for (let e = 1; e <= full.length && end === full.length; e++) {
        if (stops.some((st) => full.slice(0, e).endsWith(st))) end = e;
      }
      const stopped = stops.some((st) => full.slice(0, end).includes(st));
      const cuts = stops.map((st) => full.slice(0, end).indexOf(st)).filter((i) => i >= 0);
      const expectedText = stopped ? full.slice(0, Math.min(...cuts)) : full;
      const streamed: string[] = [];
      const { outputs } = await generate(new ScriptedStepper([bytes(full)]), tokenizer, {
        prompt: 'x',
        maxTokens: full.length,
        stop: stops,
        onToken: (e) => streamed.push(e.text),
      });
      const label = JSON.stringify({ full, stops });
      expect(outputs[0].text, label).toBe(expectedText);
      expect(outputs[0].finishReason, label).toBe(stopped ? 'stop' : 'length');
      expect(outputs[0].tokens, label).toEqual(bytes(full.slice(0, end)));
      expect(streamed.join(''), label).toBe(expectedText);
    }
  });

  it('streams a multi-byte character only once its last byte arrives', async () => {
    const stepper = new ScriptedStepper([bytes('a€b')]);
    const events: TokenEvent[] = [];
    await generate(stepper, tokenizer, {
      prompt: 'x',
      maxTokens: 5,
      onToken: (e) => events.push(e),
    });
    expect(events.map((e) => e.text)).toEqual(['a', '', '', '€', 'b']);
  });

  it('finishes each row of a batch on its own; finished rows are fed their last token', async () => {
    const stepper = new ScriptedStepper([[...bytes('ab'), EOS], bytes('wxyz'), bytes('p.q')]);
    const { outputs } = await generate(stepper, tokenizer, {
      prompt: ['one', 'two', 'three'],
      maxTokens: 4,
      stop: ['.'],
    });
    expect(outputs.map((o) => [o.text, o.finishReason])).toEqual([
      ['ab', 'eos'],
      ['wxyz', 'length'],
      ['p', 'stop'],
    ]);
    expect(stepper.started.map((p) => p.length)).toEqual([4, 4, 6]);
    expect(stepper.fed).toEqual([
      [97, 119, 112],
      [98, 120, 46],
      [98, 121, 46], // rows 0 and 2 are done: their last token again
    ]);
    expect(stepper.disposed).toBe(1);
  });

  it('disposes the batch when the model fails', async () => {
    const stepper = new ScriptedStepper([bytes('abc')], 120, 1);
    await expect(generate(stepper, tokenizer, { prompt: 'x', maxTokens: 5 })).rejects.toThrow(
      'device lost',
    );
    expect(stepper.disposed).toBe(1);
  });

  it('refuses bad options before running the model', async () => {
    const stepper = new ScriptedStepper([bytes('abc')]);
    const run = (o: object) => generate(stepper, tokenizer, { prompt: 'x', ...o });
    await expect(run({ maxTokens: 0 })).rejects.toThrow(/maxTokens must be a positive integer/);
    await expect(run({ stop: [''] })).rejects.toThrow(/stop strings must be non-empty/);
    await expect(run({ temperature: -1 })).rejects.toThrow(/temperature/);
    await expect(run({ prompt: [] })).rejects.toThrow(/at least one prompt/);
    await expect(generate(stepper, new ByteTokenizer(), { prompt: '' })).rejects.toThrow(
      /prompt 0 is empty/,
    );
    expect(stepper.started).toEqual([]);
    expect(stepper.disposed).toBe(5); // the batch is released on every path
  });
});

describe('generate (sampling)', () => {
  /** Every step returns the same logits, so the draws alone decide the tokens. */
  const constant: TokenStepper = {
    vocabSize: 258,
    start: async (p) => p.map(() => flat()),
    step: async (t) => t.map(() => flat()),
    dispose: async () => {},
  };
  function flat(): Float32Array {
    const l = new Float32Array(258).fill(-Infinity);
    for (const [b, logit] of [
      [97, 0],
      [98, 1],
      [99, 2],
    ])
      l[b] = logit;
    return l;
  }

  it('row r draws from createRng(seed, r): deterministic, and independent of the other rows', async () => {
    const options = { prompt: ['p', 'q'], maxTokens: 30, temperature: 1, seed: 11 };
    const a = await generate(constant, tokenizer, options);
    const b = await generate(constant, tokenizer, options);
    expect(a.outputs.map((o) => o.tokens)).toEqual(b.outputs.map((o) => o.tokens));
    for (const r of [0, 1]) {
      const rng = createRng(11, r);
      const expected = Array.from({ length: 30 }, () =>
        sampleToken(flat(), { temperature: 1 }, () => rng.uniform()),
      );
      expect(a.outputs[r].tokens).toEqual(expected);
    }
    expect(a.outputs[0].tokens).not.toEqual(a.outputs[1].tokens);
    expect(new Set(a.outputs[0].tokens)).toEqual(new Set([97, 98, 99]));
    // A job split over calls: firstRow 1 puts 'q' on stream 1, as in the call with both rows.
    const split = await generate(constant, tokenizer, { ...options, prompt: ['q'], firstRow: 1 });
    expect(split.outputs[0].tokens).toEqual(a.outputs[1].tokens);
    await expect(generate(constant, tokenizer, { ...options, firstRow: -1 })).rejects.toMatchObject(
      { code: 'GENERATE_OPTIONS_INVALID' },
    );
  });
});
