/**
 * ringbuf.js baseline (`bench/workers/ringbufjs-worker.ts`): the peer SAB ring
 * from npm (ringbuf.js 0.4.0, a byte SPSC queue), busy-polled on both ends with a
 * spin token each. One way: one ring of `inFlight` × 112 bytes. Round trip: two
 * rings (requests `inFlight` × 112 bytes, responses `inFlight` × 16 bytes). One
 * message per `push` (batch 1); no wait modes (ringbuf.js cannot block).
 */
import {
  BenchWorker, MAX_RTT_SAMPLES, REQUEST_BYTES, RESPONSE_BYTES, RTT_SAMPLE_EVERY,
  type Case, type Measurement, type Pattern, type RunOptions,
} from './harness.ts';
import { createControlBlock, type DriverResult } from './workers/common.ts';
import { ringStorage, type RingbufArgs } from './workers/ringbufjs-worker.ts';

const ENTRY = new URL('./workers/ringbufjs-worker.ts', import.meta.url);

/** The two ringbuf.js workers and the cases that run on them. */
export class RingbufSuite {
  #a: BenchWorker | null = null;
  #b: BenchWorker | null = null;

  /** @param spinTokens the bench's spin-token buffer (both ends spin for the whole run). */
  constructor(private readonly spinTokens: SharedArrayBuffer) {}

  /** Starts the two workers if they are not running. */
  async start(): Promise<void> {
    if (this.#a && this.#b && !this.#a.dead && !this.#b.dead) return;
    await this.close();
    [this.#a, this.#b] = await Promise.all([
      BenchWorker.spawn(ENTRY, 'ringbuf.js/driver', { spinTokens: this.spinTokens }),
      BenchWorker.spawn(ENTRY, 'ringbuf.js/peer', { spinTokens: this.spinTokens }),
    ]);
  }

  /** A case: `one-way` or `round-trip` (two rings) with `inFlight` outstanding; batch 1. */
  case(pattern: Pattern, inFlight: number): Case {
    return {
      impl: 'ringbuf.js', pattern, ringPages: null, ringEntries: null, inFlight, batch: 1, waitMode: null,
      run: (opts) => this.#run(pattern, inFlight, opts),
    };
  }

  async #run(pattern: Pattern, inFlight: number, opts: RunOptions): Promise<Measurement> {
    await this.start();
    const args: RingbufArgs = {
      reqRing: ringStorage(inFlight * REQUEST_BYTES),
      rspRing: pattern === 'round-trip' ? ringStorage(inFlight * RESPONSE_BYTES) : null,
      ctl: createControlBlock(), inFlight, warmupMs: opts.warmupMs, measureMs: opts.measureMs,
      timeoutMs: opts.timeoutMs, rttSampleMask: RTT_SAMPLE_EVERY - 1, maxSamples: MAX_RTT_SAMPLES,
    };
    const [driverOp, peerOp] = pattern === 'one-way' ? ['producer', 'consumer'] : ['requester', 'responder'];
    const peer = this.#b!.call<null>(peerOp, { args }, opts.timeoutMs);
    const driver = this.#a!.call<DriverResult>(driverOp, { args }, opts.timeoutMs);
    const [d, p] = await Promise.allSettled([driver, peer]);
    if (d.status === 'rejected' || p.status === 'rejected') {
      await this.close();
      const why = d.status === 'rejected' ? d.reason : (p as PromiseRejectedResult).reason;
      throw why instanceof Error ? why : new Error(String(why));
    }
    return d.value;
  }

  /** Terminates both workers. Never throws. */
  async close(): Promise<void> {
    const ws = [this.#a, this.#b];
    this.#a = this.#b = null;
    await Promise.all(ws.map((w) => w?.terminate()));
  }
}
