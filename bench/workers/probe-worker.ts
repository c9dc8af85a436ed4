/**
 * Cross-core latency probe: two threads ping-pong one Int32 with spins. Role
 * `ping` stores `2r + 1` and spins until it reads `2r + 2`; role `pong` spins until
 * it reads `2r + 1` and stores `2r + 2`. Each thread holds a spin token for the
 * probe (the bench's cases are idle meanwhile), and every spin has a deadline.
 *
 * `ping` times blocks of {@link PROBE_BLOCK} round trips (one `performance.now()`
 * pair per block, so the ~53 ns clock read does not swamp a ~110 ns round trip)
 * and returns the per-round-trip time of each block, ns.
 */
import { SpinTokens } from '../../hypervisor/spin.ts';
import { CTL, POLL_CHECK_MASK, acquireSpinToken, serve, type WorkerRequest } from './common.ts';

/** Round trips timed together. */
export const PROBE_BLOCK = 8;

/** Arguments of a probe. */
export interface ProbeArgs {
  ctl: SharedArrayBuffer;
  /** Round trips in total (a multiple of {@link PROBE_BLOCK}). */
  rounds: number;
  timeoutMs: number;
}

/** The word the two threads ping-pong (its own cache line). */
const WORD = CTL.EVT_TO_BACK;

function spinUntil(w: Int32Array, index: number, value: number, deadline: number): void {
  let n = 0;
  while (Atomics.load(w, index) !== value) {
    if ((++n & POLL_CHECK_MASK) === 0 && performance.now() > deadline) throw new Error('probe: peer did not answer in time');
  }
}

function ping(a: ProbeArgs, tokens: SpinTokens): number[] {
  const w = new Int32Array(a.ctl);
  const deadline = performance.now() + a.timeoutMs;
  acquireSpinToken(tokens, deadline, 'probe ping');
  try {
    spinUntil(w, CTL.READY, 1, deadline);
    const out: number[] = [];
    for (let r = 0; r < a.rounds;) {
      const t0 = performance.now();
      for (let k = 0; k < PROBE_BLOCK; k++, r++) {
        Atomics.store(w, WORD, 2 * r + 1);
        spinUntil(w, WORD, 2 * r + 2, deadline);
      }
      out.push(((performance.now() - t0) * 1e6) / PROBE_BLOCK);
    }
    return out;
  } finally {
    tokens.release();
  }
}

function pong(a: ProbeArgs, tokens: SpinTokens): null {
  const w = new Int32Array(a.ctl);
  const deadline = performance.now() + a.timeoutMs;
  acquireSpinToken(tokens, deadline, 'probe pong');
  try {
    Atomics.store(w, CTL.READY, 1);
    for (let r = 0; r < a.rounds; r++) {
      spinUntil(w, WORD, 2 * r + 1, deadline);
      Atomics.store(w, WORD, 2 * r + 2);
    }
    return null;
  } finally {
    tokens.release();
  }
}

/** Worker entry: serves `ping` and `pong`. */
export function start(workerData: { spinTokens: SharedArrayBuffer }): void {
  const tokens = new SpinTokens(workerData.spinTokens);
  serve({
    ping: (r: WorkerRequest) => ping(r.args as ProbeArgs, tokens),
    pong: (r: WorkerRequest) => pong(r.args as ProbeArgs, tokens),
  });
}
