// Seeded, platform-independent random numbers for synthetic weights.
// xoshiro128** (32-bit state words, so it runs on plain JS numbers with Math.imul, no BigInt) seeded through a
// splitmix32-style mixer. Normals by Marsaglia's polar method (Box-Muller without trigonometry). Every stream is keyed by (seed, name), so a tensor's values do not
// depend on which other tensors exist, their order, or how they are sharded.

/** A 32-bit avalanche mixer (the finaliser of splitmix32 / murmur3). */
export function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/** FNV-1a over the UTF-16 code units of `s`, then mixed. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return mix32(h >>> 0);
}

export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;
  private spare = 0;
  private hasSpare = false;

  /** `seed` is any non-negative safe integer; `stream` separates independent streams under one seed. */
  constructor(seed: number, stream: string) {
    if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`seed must be a non-negative safe integer, got ${seed}`);
    const lo = seed >>> 0;
    const hi = Math.floor(seed / 2 ** 32) >>> 0;
    let x = mix32(lo ^ mix32(hi ^ 0x9e3779b9) ^ hashString(stream));
    const next = () => { x = (x + 0x9e3779b9) >>> 0; return mix32(x); };
    this.s0 = next(); this.s1 = next(); this.s2 = next(); this.s3 = next();
    // xoshiro's only bad state is all zeros; the mixer makes that astronomically unlikely, but guard anyway.
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** Uniform 32-bit unsigned integer. */
  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Standard normal N(0, 1) (pairs; the second value is kept for the next call). */
  nextNormal(): number {
    if (this.hasSpare) { this.hasSpare = false; return this.spare; }
    const toUnit = 2 / 4294967296;
    let u: number, v: number, s: number;
    do {
      u = this.nextU32() * toUnit - 1;
      v = this.nextU32() * toUnit - 1;
      s = u * u + v * v;
    } while (s >= 1 || s === 0);
    const m = Math.sqrt((-2 * Math.log(s)) / s);
    this.spare = v * m;
    this.hasSpare = true;
    return u * m;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
