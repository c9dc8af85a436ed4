/**
 * Process-wide spin tokens (DESIGN.md, decision 4).
 *
 * Why this exists: a cross-thread wake-up through `Atomics.wait`/`notify` costs tens
 * of microseconds on this kind of machine (about 37 µs when the vCPUs are idle), while
 * a polled cache line answers in 0.1–1 µs. So an endpoint that expects an answer soon
 * spins a little before it blocks. But a third spinner on two cores makes everything
 * about 15x slower, so a thread spins only while it holds one of N tokens (N = cores),
 * counted in one SharedArrayBuffer word that every worker of the process shares.
 * Without a token it blocks at once. Tokens do not span processes.
 */
import { invariant } from '../rings/errors.ts';

/** Slot of the available-token count in the token buffer. */
const TOKENS_AVAILABLE = 0;
/** Slot of the total-token count (for audits). */
const TOKENS_TOTAL = 1;

/** Spin iterations (one `Atomics.load` each, about 5.5 ns) before blocking: ~10 µs. */
export const DEFAULT_SPIN_ITERATIONS = 2000;

/** A handle on the process-wide spin tokens; one per thread, over a shared buffer. */
export class SpinTokens {
  private readonly words: Int32Array;
  /** Counters: tokens taken, tokens refused (blocked at once), spin loops that saw the change. */
  readonly counters = { acquired: 0, refused: 0, spinHits: 0, spinMisses: 0 };

  /**
   * Creates the shared token buffer holding `count` tokens (normally the number of cores).
   * @returns a SharedArrayBuffer to hand to every worker of the process.
   */
  static createBuffer(count: number): SharedArrayBuffer {
    invariant(Number.isInteger(count) && count >= 0, 'spin token count must be a non-negative integer');
    const sab = new SharedArrayBuffer(8);
    const w = new Int32Array(sab);
    w[TOKENS_AVAILABLE] = count;
    w[TOKENS_TOTAL] = count;
    return sab;
  }

  constructor(buffer: SharedArrayBuffer) {
    this.words = new Int32Array(buffer);
  }

  /** Takes a token if one is free. @returns true when the caller may spin. */
  tryAcquire(): boolean {
    for (;;) {
      const n = Atomics.load(this.words, TOKENS_AVAILABLE);
      if (n <= 0) {
        this.counters.refused++;
        return false;
      }
      if (Atomics.compareExchange(this.words, TOKENS_AVAILABLE, n, n - 1) === n) {
        this.counters.acquired++;
        return true;
      }
    }
  }

  /** Returns a token taken by {@link tryAcquire}. */
  release(): void {
    Atomics.add(this.words, TOKENS_AVAILABLE, 1);
  }

  /** Tokens free right now (for tests and audits). */
  available(): number {
    return Atomics.load(this.words, TOKENS_AVAILABLE);
  }

  /**
   * Spins until `arr[index] !== value`, for at most `iterations` loads, and only if a
   * token is free (it is held for the spin and released after).
   * @returns true when the value changed during the spin; false when no token was
   *   free or the spin ran out (the caller then blocks).
   */
  spinWhileEqual(arr: Int32Array, index: number, value: number, iterations = DEFAULT_SPIN_ITERATIONS): boolean {
    if (!this.tryAcquire()) return false;
    try {
      for (let i = 0; i < iterations; i++) {
        if (Atomics.load(arr, index) !== value) {
          this.counters.spinHits++;
          return true;
        }
      }
      this.counters.spinMisses++;
      return false;
    } finally {
      this.release();
    }
  }
}
