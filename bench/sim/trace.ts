// The routing simulation's workload: a seeded random source and a long-tailed request trace (Poisson arrivals,
// lognormal prompt and output lengths, clipped). Same seed → the same trace, bit for bit.

/** A seeded uniform source in [0, 1) (mulberry32: 32-bit state, full period, fast; plenty for a simulation). */
export function seededRandom(seed: number): () => number {
  if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`seed must be a non-negative integer, got ${seed}`);
  let s = (seed ^ 0x6d2b79f5) >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A standard normal draw (Box–Muller; the uniform is kept away from 0 so the log is finite). */
export function normal(rand: () => number): number {
  const u = Math.max(rand(), 2 ** -53);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
}

export interface LengthDist {
  /** median of the lognormal before clipping */ median: number;
  /** sigma of the underlying normal */ sigma: number;
  min: number; max: number;
}

export interface TraceSpec {
  requests: number;
  /** mean arrivals per second (Poisson) */
  ratePerS: number;
  prompt: LengthDist;
  output: LengthDist;
  seed: number;
}

export interface TraceRequest {
  id: string;
  /** arrival at the router, ms from the start of the trace */
  arrivalMs: number;
  /** prompt tokens (n) */
  n: number;
  /** new tokens the request generates (m; ignore_eos, so exactly m) */
  m: number;
}

function drawLength(rand: () => number, d: LengthDist): number {
  const x = Math.round(d.median * Math.exp(d.sigma * normal(rand)));
  return Math.min(d.max, Math.max(d.min, x));
}

export function checkLengthDist(name: string, d: LengthDist): void {
  if (!(d.median > 0) || !(d.sigma >= 0) || !Number.isSafeInteger(d.min) || !Number.isSafeInteger(d.max) || d.min < 1 || d.max < d.min) {
    throw new RangeError(`trace ${name}: need median > 0, sigma >= 0 and integers 1 <= min <= max, got ${JSON.stringify(d)}`);
  }
}

/** The trace: arrival gaps, prompt and output lengths drawn from one seeded stream, in that order per request. */
export function makeTrace(spec: TraceSpec): TraceRequest[] {
  if (!Number.isSafeInteger(spec.requests) || spec.requests < 1) throw new RangeError(`trace requests must be a positive integer, got ${spec.requests}`);
  if (!(spec.ratePerS > 0)) throw new RangeError(`trace ratePerS must be > 0, got ${spec.ratePerS}`);
  checkLengthDist('prompt', spec.prompt);
  checkLengthDist('output', spec.output);
  const rand = seededRandom(spec.seed);
  const out: TraceRequest[] = [];
  let t = 0;
  for (let i = 0; i < spec.requests; i++) {
    t += (-Math.log(1 - rand()) / spec.ratePerS) * 1000;
    out.push({ id: `r${i}`, arrivalMs: t, n: drawLength(rand, spec.prompt), m: drawLength(rand, spec.output) });
  }
  return out;
}
