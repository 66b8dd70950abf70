// A byte-level Hugging Face tokenizer.json: ids 0..255 are the bytes, then <s>, </s>, <pad>.
// BPE with no merges over GPT-2's byte-to-unicode alphabet, so every string round-trips exactly
// and both transformers and @huggingface/tokenizers read it like any other tokenizer.json.

/** GPT-2's reversible map from bytes to printable unicode characters. */
export function bytesToUnicode() {
  const printable = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const chars = new Map();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    if (printable.includes(b)) chars.set(b, String.fromCodePoint(b));
    else chars.set(b, String.fromCodePoint(256 + extra++));
  }
  return chars;
}

export const SPECIAL = { bos: '<s>', eos: '</s>', pad: '<pad>' };
export const BOS_ID = 256;
export const EOS_ID = 257;
export const PAD_ID = 258;
export const VOCAB_SIZE = 259;

export function byteTokenizerJson() {
  const vocab = {};
  for (const [b, ch] of bytesToUnicode()) vocab[ch] = b;
  const special = [
    [SPECIAL.bos, BOS_ID],
    [SPECIAL.eos, EOS_ID],
    [SPECIAL.pad, PAD_ID],
  ];
  for (const [content, id] of special) vocab[content] = id;
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: special.map(([content, id]) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: {
      type: 'ByteLevel',
      add_prefix_space: false,
      trim_offsets: false,
      use_regex: false,
    },
    post_processor: {
      type: 'TemplateProcessing',
      single: [
        { SpecialToken: { id: SPECIAL.bos, type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
      ],
      pair: [
        { SpecialToken: { id: SPECIAL.bos, type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { [SPECIAL.bos]: { id: SPECIAL.bos, ids: [BOS_ID], tokens: [SPECIAL.bos] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: [],
    },
  };
}

export function tokenizerConfigJson() {
  return {
    bos_token: SPECIAL.bos,
    eos_token: SPECIAL.eos,
    pad_token: SPECIAL.pad,
    add_bos_token: true,
    add_eos_token: false,
    clean_up_tokenization_spaces: false,
    model_max_length: 256,
    tokenizer_class: 'PreTrainedTokenizerFast',
  };
}
