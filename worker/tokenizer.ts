// The model's tokenizer: tokenizer.json + tokenizer_config.json (Hugging Face formats) through
// @huggingface/tokenizers. One loader for every part that tokenizes (worker, router, `kvfleet generate`).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';

export class TokenizerError extends Error {
  constructor(message: string) { super(message); this.name = 'TokenizerError'; }
}

interface HfEncoding { ids: number[] }
interface HfTokenizerApi {
  encode(text: string, opts?: { add_special_tokens?: boolean }): HfEncoding;
  decode(ids: number[], opts?: { skip_special_tokens?: boolean; clean_up_tokenization_spaces?: boolean }): string;
  get_vocab(withAdded?: boolean): Map<string, number>;
}

export class Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  private readonly tok: HfTokenizerApi;

  private constructor(tok: HfTokenizerApi, cfg: Record<string, unknown>) {
    this.tok = tok;
    const vocab = tok.get_vocab(true);
    this.vocabSize = vocab.size;
    const name = (v: unknown) => (typeof v === 'string' ? v : (v as { content?: string } | null)?.content);
    const bos = name(cfg.bos_token), eos = name(cfg.eos_token);
    this.bosId = bos !== undefined ? vocab.get(bos) : undefined;
    this.eosId = eos !== undefined ? vocab.get(eos) : undefined;
  }

  /** Loads DIR/tokenizer.json and DIR/tokenizer_config.json; every problem names the file. */
  static load(dir: string): Tokenizer {
    const read = (file: string, required: boolean): Record<string, unknown> | undefined => {
      const p = path.join(dir, file);
      let text: string;
      try { text = readFileSync(p, 'utf8'); } catch (err) {
        if (!required && (err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
        throw new TokenizerError(`${p}: cannot read the tokenizer file (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
      }
      try {
        const v = JSON.parse(text) as unknown;
        if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
        return v as Record<string, unknown>;
      } catch (err) {
        throw new TokenizerError(`${p}: invalid JSON (${(err as Error).message})`);
      }
    };
    const json = read('tokenizer.json', true)!;
    const cfg = read('tokenizer_config.json', false) ?? {};
    let tok: HfTokenizerApi;
    try {
      tok = new HfTokenizer(json, cfg) as unknown as HfTokenizerApi;
      tok.encode('kvfleet');
    } catch (err) {
      throw new TokenizerError(`${path.join(dir, 'tokenizer.json')}: not a usable tokenizer (${(err as Error).message})`);
    }
    return new Tokenizer(tok, cfg);
  }

  /** Token ids of text, with the special tokens tokenizer_config.json asks for (e.g. a leading BOS). */
  encode(text: string): number[] { return Array.from(this.tok.encode(text).ids); }

  /**
   * Text of ids. `cleanup` overrides tokenizer_config.json's clean_up_tokenization_spaces (on when the key is
   * missing, as in the Python library), which rewrites text already produced (" ." -> ".") and so cannot be
   * streamed: streams decode with cleanup off, as vLLM's incremental detokenizer does, and so does every text a
   * client gets, so the streamed text and a whole decode agree.
   */
  decode(ids: number[], skipSpecial = true, cleanup?: boolean): string {
    return this.tok.decode(ids, { skip_special_tokens: skipSpecial, ...(cleanup !== undefined ? { clean_up_tokenization_spaces: cleanup } : {}) });
  }
}
