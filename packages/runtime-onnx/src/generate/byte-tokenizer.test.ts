import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRng } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { ByteTokenizer } from './byte-tokenizer.js';
import { IncrementalDetokenizer } from './detokenizer.js';
import { loadTokenizer } from './load-tokenizer.js';

describe('ByteTokenizer', () => {
  it('maps text to its UTF-8 bytes, with BOS first when a BOS id is set', () => {
    const tok = new ByteTokenizer({ bosId: 256, eosId: 257 });
    // 'h' = 0x68, 'é' = C3 A9, '!' = 0x21 (UTF-8 by hand).
    expect(tok.encode('hé!')).toEqual([256, 0x68, 0xc3, 0xa9, 0x21]);
    expect(tok.encode('hé!', { addSpecialTokens: false })).toEqual([0x68, 0xc3, 0xa9, 0x21]);
    expect(tok.vocabSize).toBe(258);
    expect(new ByteTokenizer().encode('A')).toEqual([65]);
    expect(new ByteTokenizer().vocabSize).toBe(256);
    expect(new ByteTokenizer({ eosId: 300, addEos: true }).encode('A')).toEqual([65, 300]);
  });

  it('round-trips any text and drops BOS/EOS when decoding', () => {
    const tok = new ByteTokenizer({ bosId: 256, eosId: 257 });
    for (const text of ['', 'plain ascii', 'naïve 世界 😀\n\t', '\u0000nul']) {
      expect(tok.decode(tok.encode(text))).toBe(text);
    }
    expect(tok.decode([256, 0x61, 257, 0x62])).toBe('ab');
    expect(tok.decode([256, 0x61, 257], { skipSpecialTokens: false })).toBe('<s>a</s>');
  });

  it('decodes an unfinished multi-byte sequence to U+FFFD and streams it only when complete', () => {
    const tok = new ByteTokenizer();
    const euro = [0xe2, 0x82, 0xac]; // '€'
    expect(tok.decode(euro.slice(0, 2))).toBe('\uFFFD');
    const detok = new IncrementalDetokenizer(tok, [0x61]);
    expect([0x62, ...euro, 0x63].map((id) => detok.push(id))).toEqual(['b', '', '', '€', 'c']);
    expect(detok.flush()).toBe('');
    const cut = new IncrementalDetokenizer(tok);
    expect(cut.push(0xe2)).toBe('');
    expect(cut.flush()).toBe('\uFFFD'); // at the end, what is held back comes out as it is
  });

  it('streams exactly the whole decode for 500 random byte sequences (valid and invalid UTF-8)', () => {
    const tok = new ByteTokenizer({ bosId: 256 });
    const rng = createRng(4);
    const sample = Buffer.from('aé€😀 z', 'utf8'); // 1-, 2-, 3- and 4-byte characters
    for (let trial = 0; trial < 500; trial++) {
      const ids = Array.from({ length: 16 }, () =>
        rng.uniform() < 0.7 ? sample[rng.integer(sample.length)] : rng.integer(256),
      );
      const detok = new IncrementalDetokenizer(tok, [256]);
      const streamed = ids.map((id) => detok.push(id)).join('') + detok.flush();
      expect(streamed, JSON.stringify(ids)).toBe(tok.decode(ids));
    }
  });

  it('refuses special ids among the bytes and ids it cannot decode', () => {
    expect(() => new ByteTokenizer({ bosId: 10 })).toThrow(
      /bosId must be an integer of at least 256/,
    );
    expect(() => new ByteTokenizer({ bosId: 256, eosId: 256 })).toThrow(/both 256/);
    expect(() => new ByteTokenizer({ addBos: true })).toThrow(/no bosId/);
    expect(() => new ByteTokenizer().decode([65, 999])).toThrow(
      expect.objectContaining({ code: 'TOKENIZER_INVALID_ID' }),
    );
  });
});

describe('loadTokenizer without tokenizer.json', () => {
  it('builds a byte tokenizer with BOS/EOS from config.json, and refuses a vocabulary under 256', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'lora-bytetok-'));
    try {
      await writeFile(
        join(dir, 'config.json'),
        JSON.stringify({ vocab_size: 258, bos_token_id: 256, eos_token_id: 257 }),
      );
      const tok = await loadTokenizer(dir);
      expect(tok.kind).toBe('byte');
      expect([tok.bosId, tok.eosId]).toEqual([256, 257]);
      expect(tok.encode('a')).toEqual([256, 97]);

      await writeFile(join(dir, 'config.json'), JSON.stringify({ vocab_size: 100 }));
      await expect(loadTokenizer(dir)).rejects.toMatchObject({
        code: 'TOKENIZER_NOT_FOUND',
        message: expect.stringContaining('vocab_size (100)'),
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
