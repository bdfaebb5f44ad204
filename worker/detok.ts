// The text of one stream: UTF-8-safe incremental detokenization with stop strings.
//
// Invariants:
// - Each push decodes the whole generated id list and emits only the new stable suffix, so the concatenation of
//   every chunk plus flush() equals the decode of all tokens (for prefix-stable decoders, as byte-level BPE is).
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
import type { Tokenizer } from './tokenizer.ts';

const REPLACEMENT = '\uFFFD';

function stripTrailingReplacement(s: string): string {
  let end = s.length;
  while (end > 0 && s[end - 1] === REPLACEMENT) end--;
  return s.slice(0, end);
}

export class TextStream {
  private readonly tok: Tokenizer;
  private readonly stops: string[];
  private readonly maxStop: number;
  private readonly ids: number[] = [];
  private emitted = '';
  private stoppedAt = -1;
  /** length of the text the client already had at the cut (the primed pushes' text) */
  private readonly primedLength: number;
  /** The prime itself ended in a stop string: the first worker's stream had stopped at the cut. */
  readonly stoppedInPrime: boolean;

  /**
   * prime: tokens the client already has (resume_token_ids), replayed as pushes whose text is discarded (the client
   * has it). A stream whose prime already matched a stop string is stopped from the start (stoppedInPrime).
   */
  constructor(tok: Tokenizer, stops: string[], prime: number[] = []) {
    this.tok = tok;
    this.stops = stops.filter((s) => s.length > 0);
    this.maxStop = Math.max(0, ...this.stops.map((s) => s.length));
    for (const id of prime) if (this.push(id).stopped) break;
    this.primedLength = this.emitted.length;
    this.stoppedInPrime = this.stopped;
  }

  get stopped(): boolean { return this.stoppedAt >= 0; }
  /** All text emitted so far (after the primed part's). */
  get text(): string { return this.emitted.slice(this.primedLength); }

  /** Adds one generated token; returns the text that became final and whether a stop string matched. */
  push(id: number): { text: string; stopped: boolean } {
    if (this.stopped) return { text: '', stopped: true };
    this.ids.push(id);
    const full = this.decode();
    // A decoder that rewrites earlier text (e.g. clean_up_tokenization_spaces) cannot be streamed exactly: wait for
    // flush, which emits whatever extends what was sent.
    if (!full.startsWith(this.emitted)) return { text: '', stopped: false };
    const stable = stripTrailingReplacement(full);
    let cut = -1;
    for (const s of this.stops) {
      const i = stable.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      const out = cut > this.emitted.length ? stable.slice(this.emitted.length, cut) : '';
      this.emitted += out;
      this.stoppedAt = cut;
      return { text: out, stopped: true };
    }
    let hold = 0;
    for (let k = Math.min(this.maxStop - 1, stable.length - this.emitted.length); k > 0; k--) {
      const tail = stable.slice(stable.length - k);
      if (this.stops.some((s) => s.startsWith(tail))) { hold = k; break; }
    }
    const out = stable.slice(this.emitted.length, stable.length - hold);
    this.emitted += out;
    return { text: out, stopped: false };
  }

  /** The rest of the text at the end of the stream (nothing after a stop string). */
  flush(): string {
    if (this.stopped) return '';
    const full = this.decode();
    if (!full.startsWith(this.emitted)) return '';
    const out = full.slice(this.emitted.length);
    this.emitted = full;
    return out;
  }

  private decode(): string { return this.ids.length === 0 ? '' : this.tok.decode(this.ids); }
}
