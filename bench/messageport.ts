/**
 * MessagePort baseline (`bench/workers/messageport-worker.ts`): what a user would
 * use instead of a shared ring. One way (messages delivered per second, at most
 * `inFlight` undelivered) and round trip (`inFlight` requests outstanding), 112-byte
 * `Uint8Array` requests and 16-byte responses, between two workers over a
 * `MessageChannel` made per run. There is no ring, batch or wait mode: a receiver
 * sleeps in its event loop (libuv), the only way a port can wait.
 */
import { MessageChannel } from 'node:worker_threads';
import {
  BenchWorker, MAX_RTT_SAMPLES, RTT_SAMPLE_EVERY,
  type Case, type Measurement, type Pattern, type RunOptions,
} from './harness.ts';
import { createControlBlock, type DriverResult } from './workers/common.ts';
import type { MessagePortArgs } from './workers/messageport-worker.ts';

const ENTRY = new URL('./workers/messageport-worker.ts', import.meta.url);

/** The two MessagePort workers and the cases that run on them. */
export class MessagePortSuite {
  #a: BenchWorker | null = null;
  #b: BenchWorker | null = null;

  /** Starts the two workers if they are not running. */
  async start(): Promise<void> {
    if (this.#a && this.#b && !this.#a.dead && !this.#b.dead) return;
    await this.close();
    [this.#a, this.#b] = await Promise.all([
      BenchWorker.spawn(ENTRY, 'messageport/driver', {}),
      BenchWorker.spawn(ENTRY, 'messageport/peer', {}),
    ]);
  }

  /** A case: `one-way` or `round-trip` with `inFlight` outstanding. */
  case(pattern: Pattern, inFlight: number): Case {
    return {
      impl: 'messageport', pattern, ringPages: null, ringEntries: null, inFlight, batch: null, waitMode: null,
      run: (opts) => this.#run(pattern, inFlight, opts),
    };
  }

  async #run(pattern: Pattern, inFlight: number, opts: RunOptions): Promise<Measurement> {
    await this.start();
    const ch = new MessageChannel();
    const common = {
      ctl: createControlBlock(), inFlight, warmupMs: opts.warmupMs, measureMs: opts.measureMs, timeoutMs: opts.timeoutMs,
      rttSampleMask: RTT_SAMPLE_EVERY - 1, maxSamples: MAX_RTT_SAMPLES,
    };
    const peerArgs: MessagePortArgs = { ...common, port: ch.port2 };
    const driverArgs: MessagePortArgs = { ...common, port: ch.port1 };
    const [driverOp, peerOp] = pattern === 'one-way' ? ['sender', 'receiver'] : ['requester', 'responder'];
    try {
      await this.#b!.call(peerOp, { args: peerArgs }, opts.timeoutMs, [ch.port2]);
      return await this.#a!.call<DriverResult>(driverOp, { args: driverArgs }, opts.timeoutMs, [ch.port1]);
    } catch (e) {
      await this.close();
      throw e;
    }
  }

  /** Terminates both workers. Never throws. */
  async close(): Promise<void> {
    const ws = [this.#a, this.#b];
    this.#a = this.#b = null;
    await Promise.all(ws.map((w) => w?.terminate()));
  }
}
