import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRng } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { IncrementalDetokenizer } from './detokenizer.js';
import { HfTokenizer } from './hf-tokenizer.js';
import { loadTokenizer } from './load-tokenizer.js';

const FIXTURE = fileURLToPath(
  new URL('../../../../../shared/fixtures/llama2c-stories260k/', import.meta.url),
);
const present = existsSync(join(FIXTURE, 'tokenizer.json'));
if (!present)
  console.warn(
    `SKIPPED: HF tokenizer tests need ${FIXTURE} (the shared llama2c-stories260k fixture).`,
  );

/**
 * llama2.c run.c's `encode`, written from its description, over tok512.bin: an independent
 * reference for the ids (it knows nothing of tokenizer.json or @huggingface/tokenizers).
 * tok512.bin: uint32 max_token_length, then per id: float32 score, int32 length, bytes.
 */
function runCEncoder(tok512: Buffer) {
  const pieces: string[] = [];
  const scores: number[] = [];
  let offset = 4;
  for (let id = 0; id < 512; id++) {
    scores.push(tok512.readFloatLE(offset));
    const length = tok512.readInt32LE(offset + 4);
    pieces.push(tok512.subarray(offset + 8, offset + 8 + length).toString('latin1')); // bytes as chars
    offset += 8 + length;
  }
  const lookup = new Map<string, number>();
  pieces.forEach((p, id) => {
    if (!lookup.has(p)) lookup.set(p, id);
  });
  return (text: string): number[] => {
    const ids = [1]; // BOS
    if (text.length > 0) ids.push(lookup.get(' ')!); // run.c's dummy prefix space
    for (const ch of text) {
      const utf8 = Buffer.from(ch, 'utf8');
      const id = lookup.get(utf8.toString('latin1'));
      if (id !== undefined) ids.push(id);
      else for (const b of utf8) ids.push(b + 3); // byte fallback: <0x00> is id 3
    }
    // Merge the adjacent pair with the highest score until none merges.
    for (;;) {
      let best = -1e10;
      let at = -1;
      let merged = -1;
      for (let i = 1; i + 1 < ids.length; i++) {
        const id = lookup.get(pieces[ids[i]] + pieces[ids[i + 1]]);
        if (id !== undefined && scores[id] > best) {
          best = scores[id];
          at = i;
          merged = id;
        }
      }
      if (at < 0) return ids;
      ids.splice(at, 2, merged);
    }
  };
}

const TEXTS = [
  'Once upon a time',
  'Lily and Ben went to the park. They saw a big red ball!',
  'The cat said, "Hello, dog." Then it ran away.',
  'one\ntwo\n\nthree\tfour',
  '  two leading spaces and trailing  ',
  'Café naïve résumé',
  'Tom 😀 likes 🍎 and 世界 日本語',
  'x',
];

describe.skipIf(!present)('HfTokenizer on llama2c-stories260k', () => {
  const load = () => HfTokenizer.fromFolder(FIXTURE);
  const vocab = present
    ? (JSON.parse(readFileSync(join(FIXTURE, 'tokenizer.json'), 'utf8')).model.vocab as Record<
        string,
        number
      >)
    : {};

  it('reads BOS/EOS from tokenizer_config.json and adds BOS only', async () => {
    const tok = await load();
    expect(tok.kind).toBe('huggingface');
    expect(tok.bosId).toBe(1);
    expect(tok.eosId).toBe(2);
    expect(tok.vocabSize).toBe(512);
    expect(tok.encode('')).toEqual([1]);
    expect(tok.encode('x', { addSpecialTokens: false })[0]).not.toBe(1);
  });

  it('encodes whole-word pieces as the vocabulary spells them', async () => {
    const tok = await load();
    const expected = [1, vocab['▁Once'], vocab['▁upon'], vocab['▁a'], vocab['▁time']];
    expect(expected.every((id) => typeof id === 'number')).toBe(true);
    expect(tok.encode('Once upon a time')).toEqual(expected);
  });

  it('matches llama2.c run.c encode (from tok512.bin scores) on ordinary text, accents, CJK, emoji', async () => {
    const tok = await load();
    const reference = runCEncoder(readFileSync(join(FIXTURE, 'tok512.bin')));
    for (const text of TEXTS) expect(tok.encode(text), text).toEqual(reference(text));
  });

  it('falls back to UTF-8 bytes (<0xNN> = id NN + 3) for characters outside the vocabulary', async () => {
    const tok = await load();
    const ids = tok.encode('😀', { addSpecialTokens: false });
    const bytes = [...Buffer.from('😀', 'utf8')];
    expect(ids.slice(-4)).toEqual(bytes.map((b) => b + 3));
    expect(ids.slice(-4)).toEqual(
      bytes.map((b) => vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`]),
    );
  });

  it('round-trips text and leaves special tokens out of decoded text', async () => {
    const tok = await load();
    for (const text of TEXTS) expect(tok.decode(tok.encode(text))).toBe(text);
    expect(tok.decode([1, vocab['▁Once'], 2])).toBe('Once');
    expect(tok.decode([1, vocab['▁Once']], { skipSpecialTokens: false })).toBe('<s> Once');
  });

  it('streams multi-byte characters only once complete, with the spacing of the whole text', async () => {
    const tok = await load();
    const prompt = tok.encode('Tom said');
    const continuation = tok.encode('😀 and 世界 ok', { addSpecialTokens: false }); // normalizer prepends ▁;
    const detok = new IncrementalDetokenizer(tok, prompt);
    const pieces = continuation.map((id) => detok.push(id));
    pieces.push(detok.flush());
    for (const p of pieces) expect(p).not.toContain('\uFFFD');
    const whole = tok.decode([...prompt, ...continuation]);
    expect(pieces.join('')).toBe(whole.slice(tok.decode(prompt).length));
    expect(pieces.join('')).toBe(' 😀 and 世界 ok');
    // The emoji is 4 byte tokens: nothing is emitted until the 4th arrives.
    const firstByte = continuation.indexOf(Buffer.from('😀')[0] + 3);
    expect(pieces.slice(firstByte, firstByte + 3)).toEqual(['', '', '']);
    expect(pieces[firstByte + 3]).toBe('😀');
  });

  it('streams exactly the text of decoding the whole sequence, for 300 random id sequences', async () => {
    const tok = await load();
    const rng = createRng(21);
    const prompt = tok.encode('One day');
    for (let trial = 0; trial < 300; trial++) {
      // Half the ids are byte-fallback tokens (3..258), so split and invalid UTF-8 are common.
      const ids = Array.from({ length: 24 }, () =>
        rng.uniform() < 0.5 ? 3 + rng.integer(256) : 259 + rng.integer(253),
      );
      const detok = new IncrementalDetokenizer(tok, prompt);
      const streamed = ids.map((id) => detok.push(id)).join('') + detok.flush();
      const whole = tok.decode([...prompt, ...ids]);
      expect(streamed, JSON.stringify(ids)).toBe(whole.slice(tok.decode(prompt).length));
    }
  });

  it('picks tokenizer.json in loadTokenizer', async () => {
    const tok = await loadTokenizer(FIXTURE);
    expect(tok.kind).toBe('huggingface');
  });

  it('honours add_bos_token=false and add_eos_token=true from the config', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lora-tok-'));
    try {
      await writeFile(join(dir, 'tokenizer.json'), readFileSync(join(FIXTURE, 'tokenizer.json')));
      const config = JSON.parse(readFileSync(join(FIXTURE, 'tokenizer_config.json'), 'utf8'));
      await writeFile(
        join(dir, 'tokenizer_config.json'),
        JSON.stringify({ ...config, add_bos_token: false, add_eos_token: true }),
      );
      const tok = await loadTokenizer(dir);
      expect(tok.encode('Once')).toEqual([vocab['▁Once'], 2]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('HfTokenizer errors', () => {
  it('refuses JSON that is not a tokenizer, and a bos_token missing from the vocabulary', () => {
    expect(() => new HfTokenizer({ hello: 1 }, {}, 'x/tokenizer.json')).toThrow(
      /x\/tokenizer.json: not a Hugging Face tokenizer/,
    );
    const tiny = {
      model: { type: 'BPE', vocab: { a: 0, b: 1 }, merges: [] },
      added_tokens: [],
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
    };
    expect(() => new HfTokenizer(tiny, { bos_token: '<s>' })).toThrow(
      /bos_token "<s>" is not in the vocabulary/,
    );
  });

  it('reports unreadable and invalid files with their path', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lora-tok-'));
    try {
      await writeFile(join(dir, 'tokenizer.json'), '{ nope');
      await expect(loadTokenizer(dir)).rejects.toMatchObject({
        code: 'TOKENIZER_INVALID',
        message: expect.stringContaining('tokenizer.json: not valid JSON'),
      });
      await expect(loadTokenizer(join(dir, 'missing'))).rejects.toMatchObject({
        code: 'TOKENIZER_NOT_FOUND',
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
