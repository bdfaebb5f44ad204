// A byte-level BPE tokenizer in the Hugging Face `tokenizers` JSON format, sized to fill a given vocabulary.
// Ids: 0 = <s> (bos), 1 = </s> (eos), 2..257 = the 256 bytes in byte order (as GPT-2's byte-to-unicode
// characters), then one token per merge, in merge order. Invariant: every id < vocab_size is a token (the merges
// fill the vocabulary exactly), so any id the model can emit decodes.

export const BOS_TOKEN = '<s>';
export const EOS_TOKEN = '</s>';
export const BOS_ID = 0;
export const EOS_ID = 1;
const FIRST_BYTE_ID = 2;
const FIRST_MERGE_ID = FIRST_BYTE_ID + 256;
/** The smallest vocabulary this tokenizer can describe: 2 special tokens + 256 bytes. */
export const MIN_VOCAB = FIRST_MERGE_ID;

/**
 * GPT-2's reversible byte -> character map: printable Latin-1 bytes map to themselves, the other 68 bytes
 * (controls, space, DEL, NBSP, soft hyphen) map to U+0100.. in byte order, so every byte is a visible character.
 */
export function byteToUnicode(): string[] {
  const visible = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const out: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) out[b] = String.fromCharCode(visible(b) ? b : 256 + extra++);
  return out;
}

/**
 * Printable ASCII in a fixed order, roughly by English frequency so that the small vocabularies get useful pairs:
 * space, lower case, upper case, digits, then punctuation in byte order.
 */
function printableOrder(): number[] {
  const order: number[] = [0x20];
  for (const c of 'etaoinshrdlcumwfgypbvkjxqz') order.push(c.charCodeAt(0));
  for (const c of 'ETAOINSHRDLCUMWFGYPBVKJXQZ') order.push(c.charCodeAt(0));
  for (const c of '0123456789') order.push(c.charCodeAt(0));
  for (let b = 0x21; b <= 0x7e; b++) if (!order.includes(b)) order.push(b);
  if (order.length !== 95) throw new Error(`printable ASCII order has ${order.length} entries, expected 95 (a bug)`);
  return order;
}

/**
 * `count` merges in a fixed order. Level 1: pairs (a, b) of printable ASCII characters, skipping pairs that end
 * in a space after a non-space (the ByteLevel pre-tokenizer puts spaces at the start of a word, so those never
 * occur). Level 2: (pair, c) triples in the order of level 1, then c. Each merge creates a new, distinct string.
 */
export function buildMerges(count: number): Array<[string, string]> {
  const b2u = byteToUnicode();
  const chars = printableOrder().map((b) => b2u[b]);
  const space = b2u[0x20];
  const pairs: Array<[string, string]> = [];
  for (const a of chars) for (const b of chars) if (!(b === space && a !== space)) pairs.push([a, b]);
  const merges: Array<[string, string]> = [];
  for (const p of pairs) { if (merges.length >= count) return merges; merges.push(p); }
  for (const [a, b] of pairs) {
    for (const c of chars) {
      if (merges.length >= count) return merges;
      if (c === space) continue;
      merges.push([a + b, c]);
    }
  }
  if (merges.length < count) throw new Error(`vocab_size needs ${count} merges; this tokenizer builds at most ${merges.length}`);
  return merges;
}

export interface TokenizerFiles {
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
}

export function buildTokenizer(vocabSize: number, modelMaxLength: number): TokenizerFiles {
  if (!Number.isInteger(vocabSize) || vocabSize < MIN_VOCAB) {
    throw new Error(`vocab_size must be an integer >= ${MIN_VOCAB} (2 special tokens + 256 bytes), got ${vocabSize}`);
  }
  const vocab: Record<string, number> = { [BOS_TOKEN]: BOS_ID, [EOS_TOKEN]: EOS_ID };
  const b2u = byteToUnicode();
  for (let b = 0; b < 256; b++) vocab[b2u[b]] = FIRST_BYTE_ID + b;
  const merges = buildMerges(vocabSize - MIN_VOCAB);
  merges.forEach(([a, b], i) => {
    const tok = a + b;
    if (tok in vocab) throw new Error(`merge ${i} (${a} ${b}) repeats token '${tok}' (a bug in buildMerges)`);
    vocab[tok] = FIRST_MERGE_ID + i;
  });
  const special = (id: number, content: string) => ({
    id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
  });
  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(BOS_ID, BOS_TOKEN), special(EOS_ID, EOS_TOKEN)],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    // add_bos_token: "<s> $A" for one sequence, "<s> $A <s> $B" for pairs (as Llama's fast tokenizer does).
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: BOS_TOKEN, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: BOS_TOKEN, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: BOS_TOKEN, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { [BOS_TOKEN]: { id: BOS_TOKEN, ids: [BOS_ID], tokens: [BOS_TOKEN] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
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
      // "a b" strings: readable by every tokenizers version (byte-level symbols never contain a space).
      merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  };
  const added = (content: string) => ({
    content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true,
  });
  const tokenizerConfig = {
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: { [String(BOS_ID)]: added(BOS_TOKEN), [String(EOS_ID)]: added(EOS_TOKEN) },
    bos_token: BOS_TOKEN,
    eos_token: EOS_TOKEN,
    clean_up_tokenization_spaces: false,
    model_max_length: modelMaxLength,
    tokenizer_class: 'PreTrainedTokenizerFast',
  };
  return { tokenizerJson, tokenizerConfig };
}
