// The text of one stream: UTF-8-safe incremental detokenization with stop strings.
//
// Invariants:
// - The concatenation of every chunk plus flush() equals the decode of all tokens (for prefix-stable decoders, as
//   byte-level BPE without clean_up_tokenization_spaces is).
// - A trailing U+FFFD run may still become a character when the next bytes arrive: it is held back, never emitted
//   half-way (flush() emits whatever is left, U+FFFD included, when the stream ends).
// - A suffix that could be the start of a stop string is held back too, so emitted text never contains any part of
//   a stop string; on a match the text up to the stop string is emitted and the stream is stopped.
// - Resume (CONTRACTS.md): the client of a migrated stream holds exactly the text the first worker had emitted after
//   pushing the resume tokens one by one (one token per message, each message's text final) — not the decode of
//   those tokens, which may go further (a held-back partial stop string or partial UTF-8 character). The resumed
//   stream replays the resume tokens through the same pushes, discarding their text, so its state (emitted text, held
//   tail, stop search) is the first worker's at the cut; what it emits afterwards is what the uninterrupted stream
//   would have, and first part + resumed part = the uninterrupted text, a stop string spanning the cut included.
//
// Cost per token is constant, not linear in the stream (as vLLM's prefix_offset/read_offset): the text of
// ids[0, readOffset) is final ("committed": its decode ended on a whole character, so later bytes cannot change it);
// a push decodes only ids[prefixOffset, ..), a few committed tokens of context (PREFIX_TOKENS) plus the new ones, and
// the new text is that decode minus the context's own decode. Only the last (longest stop − 1) committed characters
// are kept: stop strings are searched in the text not yet searched plus that many characters before it (a match
// lying wholly in already-searched text would have stopped the stream then), and the held-back tail never reaches
// further back. A decode that does not extend its context's (a decoder rewriting earlier text, e.g.
// clean_up_tokenization_spaces) switches the stream to decoding all ids on every push, as this class always did
// before, so such streams behave exactly as they did.
import type { Tokenizer } from './tokenizer.ts';

const REPLACEMENT = '\uFFFD';

/** committed tokens decoded again before the new ones, as context for decoders whose output depends on it */
const PREFIX_TOKENS = 4;

function trailingReplacements(s: string): number {
  let n = 0;
  while (n < s.length && s[s.length - 1 - n] === REPLACEMENT) n++;
  return n;
}

export class TextStream {
  private readonly tok: Tokenizer;
  private readonly stops: string[];
  private readonly maxStop: number;
  private readonly ids: number[] = [];
  /** all emitted text (the primed part's first); read only by `text` and by the full-decode mode */
  private emitted = '';
  private emittedLength = 0;
  private stoppedAt = -1;
  /** length of the text the client already had at the cut (the primed pushes' text) */
  private readonly primedLength: number;
  /** The prime itself ended in a stop string: the first worker's stream had stopped at the cut. */
  readonly stoppedInPrime: boolean;
  // --- incremental decode ---
  /** decode every id on each push (the decoder rewrote earlier text once) */
  private fullDecode = false;
  private prefixOffset = 0;
  private readOffset = 0;
  /** decode of ids[prefixOffset, readOffset) */
  private prefixText = '';
  /** length of the committed text, the decode of ids[0, readOffset) */
  private committedLength = 0;
  /** the committed text's last (maxStop − 1) characters */
  private recent = '';
  /** text of ids[readOffset, ..) as of the last push (its trailing U+FFFD run included) */
  private pending = '';
  /** the stable (U+FFFD-stripped) text length already searched for stop strings */
  private searched = 0;

  /**
   * prime: tokens the client already has (resume_token_ids), replayed as pushes whose text is discarded (the client
   * has it). A stream whose prime already matched a stop string is stopped from the start (stoppedInPrime).
   */
  constructor(tok: Tokenizer, stops: string[], prime: number[] = []) {
    this.tok = tok;
    this.stops = stops.filter((s) => s.length > 0);
    this.maxStop = Math.max(0, ...this.stops.map((s) => s.length));
    for (const id of prime) if (this.push(id).stopped) break;
    this.primedLength = this.emittedLength;
    this.stoppedInPrime = this.stopped;
  }

  get stopped(): boolean { return this.stoppedAt >= 0; }
  /** All text emitted so far (after the primed part's). */
  get text(): string { return this.emitted.slice(this.primedLength); }

  /** Adds one generated token; returns the text that became final and whether a stop string matched. */
  push(id: number): { text: string; stopped: boolean } {
    if (this.stopped) return { text: '', stopped: true };
    this.ids.push(id);
    if (this.fullDecode) return this.pushFull();
    const tail = this.decodeFrom(this.prefixOffset);
    const before = this.pending;
    const pending = tail.slice(this.prefixText.length);
    // the new decode must extend the context's and the previous pending text (less its uncertain U+FFFD tail)
    if (!tail.startsWith(this.prefixText) || !pending.startsWith(before.slice(0, before.length - trailingReplacements(before)))) {
      this.fullDecode = true;
      return this.pushFull();
    }
    this.pending = pending;
    const base = this.committedLength - this.recent.length;
    const r = this.advance(this.recent + pending, base);
    if (!this.stopped && pending.length > 0 && trailingReplacements(pending) === 0) {
      // the text ends on a whole character: ids so far are committed
      this.committedLength += pending.length;
      const keep = Math.max(0, this.maxStop - 1);
      this.recent = keep === 0 ? '' : (this.recent + pending).slice(-keep);
      this.pending = '';
      this.readOffset = this.ids.length;
      this.prefixOffset = Math.max(0, this.readOffset - PREFIX_TOKENS);
      this.prefixText = this.decodeFrom(this.prefixOffset);
    }
    return r;
  }

  /**
   * The step on the text: w is the whole text from absolute offset base on (base <= every offset needed: the
   * searched window's start and the emitted length).
   */
  private advance(w: string, base: number): { text: string; stopped: boolean } {
    const stableLength = base + w.length - trailingReplacements(w);
    let cut = -1;
    if (this.maxStop > 0) {
      const from = Math.max(0, this.searched - (this.maxStop - 1));
      const win = w.slice(from - base, stableLength - base);
      for (const s of this.stops) {
        const i = win.indexOf(s);
        if (i >= 0 && (cut < 0 || from + i < cut)) cut = from + i;
      }
    }
    this.searched = stableLength;
    if (cut >= 0) {
      const out = cut > this.emittedLength ? w.slice(this.emittedLength - base, cut - base) : '';
      this.emit(out);
      this.stoppedAt = cut;
      return { text: out, stopped: true };
    }
    let hold = 0;
    for (let k = Math.min(this.maxStop - 1, stableLength - this.emittedLength); k > 0; k--) {
      const tail = w.slice(stableLength - k - base, stableLength - base);
      if (this.stops.some((s) => s.startsWith(tail))) { hold = k; break; }
    }
    const out = w.slice(this.emittedLength - base, stableLength - hold - base);
    this.emit(out);
    return { text: out, stopped: false };
  }

  /** push() decoding every id (a decoder that rewrites earlier text). */
  private pushFull(): { text: string; stopped: boolean } {
    const full = this.decodeFrom(0);
    // A decoder that rewrites earlier text (e.g. clean_up_tokenization_spaces) cannot be streamed exactly: wait for
    // flush, which emits whatever extends what was sent.
    if (!full.startsWith(this.emitted)) return { text: '', stopped: false };
    this.searched = 0;  // the text may have changed anywhere: search all of it, as always in this mode
    return this.advance(full, 0);
  }

  /** The rest of the text at the end of the stream (nothing after a stop string). */
  flush(): string {
    if (this.stopped) return '';
    let out: string;
    if (this.fullDecode) {
      const full = this.decodeFrom(0);
      if (!full.startsWith(this.emitted)) return '';
      out = full.slice(this.emittedLength);
    } else {
      out = (this.recent + this.pending).slice(this.emittedLength - (this.committedLength - this.recent.length));
    }
    this.emit(out);
    return out;
  }

  private emit(out: string): void {
    this.emitted += out;
    this.emittedLength += out.length;
  }

  private decodeFrom(start: number): string {
    // without clean_up_tokenization_spaces (Tokenizer.decode): a stream's text must only ever grow
    return start >= this.ids.length ? '' : this.tok.decode(start === 0 ? this.ids : this.ids.slice(start), true, false);
  }
}
