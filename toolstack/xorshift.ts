/**
 * xorshift32 (Marsaglia, 2003): a small deterministic stream of pseudo-random u32s,
 * for workloads that both sides of a benchmark must reproduce from one seed (offsets,
 * batch sizes, payloads) — not for anything that needs real randomness.
 */

/**
 * A stream of u32s (0 … 2^32 − 1) from `seed` (taken as a u32; 0, which would stay
 * 0 forever, is replaced by 0x9e3779b9).
 */
export function xorshift32(seed: number): () => number {
  let x = seed >>> 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x;
  };
}
