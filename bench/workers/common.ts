/**
 * What every bench worker shares: the request/reply loop with the main thread
 * ({@link serve}), the control block each case run gets (named Int32 slots, one
 * cache line each), spin-token acquisition with a deadline, and the measurement
 * window (warm-up, then a timed window, then stop).
 *
 * A bench worker is a `.ts` entry started through `hypervisor/worker-bootstrap.mjs`;
 * its `start(workerData)` calls {@link serve} with its handlers. `BenchWorker` in
 * `bench/harness.ts` is the main-thread side of the same protocol.
 */
import { parentPort } from 'node:worker_threads';
import { SpinTokens } from '../../hypervisor/spin.ts';

/** Words per control slot: 16 × 4 bytes = one 64-byte cache line, so slots never share a line. */
export const CTL_STRIDE = 16;

/**
 * Control-block slots (Int32Array index = slot × {@link CTL_STRIDE}). Who writes each:
 * [main] before the run, [front]/[back] the two ends of a ring (driver = front).
 */
export const CTL = Object.freeze({
  /** [front] 0 while running, {@link PHASE_STOP} when the driver is done. */
  PHASE: 0 * CTL_STRIDE,
  /** [front] event channel front → back: 1 = pending (set by a notify, cleared by the waiter). */
  EVT_TO_BACK: 1 * CTL_STRIDE,
  /** [back] event channel back → front. */
  EVT_TO_FRONT: 2 * CTL_STRIDE,
  /** [back] notifications the back end sent (Atomics.add). */
  BACK_NOTIFY: 3 * CTL_STRIDE,
  /** [back] wake-ups of the back end by a notification. */
  BACK_WAKE: 4 * CTL_STRIDE,
  /** [consumer] messages consumed so far (one-way baselines). */
  CONSUMED: 5 * CTL_STRIDE,
  /** [producer] consumed count at which the consumer must notify (one-way MessagePort). */
  WAKE_AT: 6 * CTL_STRIDE,
  /** [back] 1 once the back end is in its loop. */
  READY: 7 * CTL_STRIDE,
});

/** Bytes of a control block. */
export const CTL_BYTES = 8 * CTL_STRIDE * 4;
/** Value of the PHASE slot once the driver has finished. */
export const PHASE_STOP = 1;
/** Longest single `Atomics.wait`, ms: a sleeper re-checks the stop flag and its deadline this often. */
export const WAIT_SLICE_MS = 50;
/** Spin iterations between two clock or stop-flag checks in a polling loop. */
export const POLL_CHECK_MASK = 1023;

/** A new zeroed control block. */
export function createControlBlock(): SharedArrayBuffer {
  return new SharedArrayBuffer(CTL_BYTES);
}

/** Process-wide CPU time so far (user + system), µs. */
export function cpuUs(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

const sleepWord = new Int32Array(new SharedArrayBuffer(4));

/** Blocks the thread for `ms` (Atomics.wait on a private word; never spins). */
export function sleepMs(ms: number): void {
  Atomics.wait(sleepWord, 0, 0, ms);
}

/**
 * Takes a spin token, retrying every millisecond (sleeping, not spinning) until
 * `deadline` (a `performance.now()` value).
 * @throws Error when no token came free in time (another thread spins).
 */
export function acquireSpinToken(tokens: SpinTokens, deadline: number, who: string): void {
  while (!tokens.tryAcquire()) {
    if (performance.now() > deadline) throw new Error(`${who}: no spin token came free (at most 2 spinners)`);
    sleepMs(1);
  }
}

/**
 * The measured window of a driver: warm-up until `warmEnd`, then measuring until
 * `measureEnd`; `hardEnd` is the run's deadline. All times are `performance.now()` ms.
 */
export class RunWindow {
  readonly start = performance.now();
  readonly warmEnd: number;
  measureStart = 0;
  measureEnd = Infinity;
  readonly hardEnd: number;
  measuring = false;
  done = false;

  constructor(readonly warmupMs: number, readonly measureMs: number, timeoutMs: number) {
    this.warmEnd = this.start + warmupMs;
    this.hardEnd = this.start + Math.max(timeoutMs - 500, warmupMs + measureMs + 200);
  }

  /**
   * Advances the window at time `now`.
   * @returns 1 when measuring just began, 2 when the window just ended, 0 otherwise.
   */
  tick(now: number): 0 | 1 | 2 {
    if (!this.measuring) {
      if (now >= this.warmEnd) {
        this.measuring = true;
        this.measureStart = now;
        this.measureEnd = now + this.measureMs;
        return 1;
      }
      return 0;
    }
    if (now >= this.measureEnd) {
      this.measuring = false;
      this.done = true;
      return 2;
    }
    return 0;
  }

  /** The end of the current phase (for poll loops that check the clock now and then). */
  phaseEnd(): number {
    return this.measuring ? this.measureEnd : this.warmEnd;
  }
}

/** What a driver worker returns from a run (the harness's `Measurement`, with a plain array). */
export interface DriverResult {
  ops: number;
  elapsedNs: number;
  rttNs: Float64Array;
  notifications: number | null;
  wakeups: number | null;
  cpuUs: number | null;
}

/** A request from the main thread: `{ seq, op, ...args }`. */
export interface WorkerRequest {
  seq: number;
  op: string;
  [arg: string]: unknown;
}

/** A handler of one op; may be async (MessagePort cases run on the event loop). */
export type Handler = (req: WorkerRequest) => unknown;

/**
 * Answers requests from the main thread: each `{ seq, op }` runs `handlers[op]` and
 * is answered `{ kind: 'reply', seq, ok, value | error }`. Posts `{ kind: 'ready' }` first.
 */
export function serve(handlers: Record<string, Handler>): void {
  const port = parentPort;
  if (!port) throw new Error('bench worker started outside a worker thread');
  port.on('message', (req: WorkerRequest) => {
    const reply = (ok: boolean, value: unknown, error?: string) => {
      const transfer = value instanceof Object && 'rttNs' in value && (value as DriverResult).rttNs instanceof Float64Array
        ? [(value as DriverResult).rttNs.buffer as ArrayBuffer] : [];
      port.postMessage({ kind: 'reply', seq: req.seq, ok, value, error }, transfer);
    };
    const h = handlers[req.op];
    if (!h) return reply(false, undefined, `unknown op ${req.op}`);
    try {
      const v = h(req);
      if (v instanceof Promise) v.then((x) => reply(true, x), (e) => reply(false, undefined, String(e?.message ?? e)));
      else reply(true, v);
    } catch (e) {
      reply(false, undefined, String((e as Error)?.message ?? e));
    }
  });
  port.postMessage({ kind: 'ready' });
}

/** Copies the first `n` RTT samples out (a fresh buffer, transferable). */
export function takeSamples(samples: Float64Array, n: number): Float64Array {
  return samples.slice(0, n);
}
