/**
 * The floor baseline: a minimal hand-written Xen-style SharedArrayBuffer ring
 * (`bench/workers/minimal-ring-worker.ts`) between two workers, with the same
 * payloads (112-byte requests, 16-byte responses), the same event-index
 * notification rule and the same three wait modes as pvio's ring, and no pvio
 * framework code on the data path. pvio's ring is compared with it config by
 * config.
 *
 * One {@link MinimalRingSuite} owns one pair of workers for the whole bench (a
 * fresh ring buffer and control block per run); its cases share them.
 */
import {
  BenchWorker, MAX_RTT_SAMPLES, PAGE_BYTES, RTT_SAMPLE_EVERY, ringEntriesFor,
  type Case, type IdleCpuMeasurement, type IdleCpuOptions, type Measurement, type RunOptions, type WaitMode,
} from './harness.ts';
import { createControlBlock, type DriverResult } from './workers/common.ts';
import { initMinimalRing, type IdleReply, type MinimalRingArgs } from './workers/minimal-ring-worker.ts';

const ENTRY = new URL('./workers/minimal-ring-worker.ts', import.meta.url);

/** Configuration of one minimal-ring case. */
export interface MinimalRingConfig {
  /** Ring size in 4 KiB pages (1, 4, 16 → 32, 128, 512 entries). */
  readonly ringPages: number;
  readonly inFlight: number;
  readonly batch: number;
  readonly waitMode: WaitMode;
}

/** The two workers of the floor ring and the cases that run on them. */
export class MinimalRingSuite {
  #front: BenchWorker | null = null;
  #back: BenchWorker | null = null;
  #starting: Promise<void> | null = null;

  /** @param spinTokens the bench's process-wide spin-token buffer, handed to both workers. */
  constructor(private readonly spinTokens: SharedArrayBuffer) {}

  /** Starts the two workers (once; again after a failure). */
  start(): Promise<void> {
    if (this.#front && this.#back && !this.#front.dead && !this.#back.dead) return Promise.resolve();
    this.#starting ??= (async () => {
      await this.close();
      const [f, b] = await Promise.all([
        BenchWorker.spawn(ENTRY, 'minimal-ring/front', { spinTokens: this.spinTokens }),
        BenchWorker.spawn(ENTRY, 'minimal-ring/back', { spinTokens: this.spinTokens }),
      ]);
      this.#front = f;
      this.#back = b;
    })().finally(() => { this.#starting = null; });
    return this.#starting;
  }

  /** A round-trip case at `config` (the suite's workers; `close` is a no-op). */
  case(config: MinimalRingConfig): Case {
    const entries = ringEntriesFor(config.ringPages);
    return {
      impl: 'minimal-ring', pattern: 'round-trip', ringPages: config.ringPages, ringEntries: entries,
      inFlight: config.inFlight, batch: config.batch, waitMode: config.waitMode,
      run: (opts: RunOptions) => this.#run(config, opts),
    };
  }

  async #pair(config: MinimalRingConfig, opts: RunOptions, idleMs?: number): Promise<DriverResult | IdleReply> {
    await this.start();
    const ring = new SharedArrayBuffer(config.ringPages * PAGE_BYTES);
    initMinimalRing(ring);
    const args: MinimalRingArgs = {
      ring, ctl: createControlBlock(), entries: ringEntriesFor(config.ringPages), inFlight: config.inFlight,
      batch: config.batch, waitMode: config.waitMode, warmupMs: opts.warmupMs, measureMs: opts.measureMs,
      timeoutMs: opts.timeoutMs, rttSampleMask: RTT_SAMPLE_EVERY - 1, maxSamples: MAX_RTT_SAMPLES,
      ...(idleMs !== undefined ? { idleMs } : {}),
    };
    const back = this.#back!.call<{ requests: number }>('back', { args }, opts.timeoutMs);
    const front = this.#front!.call<DriverResult | IdleReply>('front', { args }, opts.timeoutMs);
    const [f, b] = await Promise.allSettled([front, back]);
    if (f.status === 'rejected' || b.status === 'rejected') {
      await this.close(); // a stuck worker may still spin: terminate both; the next run starts new ones
      const why = f.status === 'rejected' ? f.reason : (b as PromiseRejectedResult).reason;
      throw why instanceof Error ? why : new Error(String(why));
    }
    return f.value;
  }

  async #run(config: MinimalRingConfig, opts: RunOptions): Promise<Measurement> {
    return await this.#pair(config, opts) as DriverResult;
  }

  /**
   * Idle CPU of a connected floor ring pair in adaptive mode: a short burst of
   * traffic, then `idleMs` with none, timed by the front end (process-wide CPU).
   */
  async idleCpu(opts: IdleCpuOptions): Promise<IdleCpuMeasurement> {
    const r = await this.#pair({ ringPages: opts.ringPages, inFlight: 1, batch: 1, waitMode: 'adaptive' },
      { warmupMs: 50, measureMs: 0, timeoutMs: opts.timeoutMs }, opts.idleMs) as IdleReply;
    return { idleMs: r.idleMs, cpuUs: r.cpuUs, coreFraction: r.cpuUs / (r.idleMs * 1000), wakeups: r.wakeups };
  }

  /** Terminates both workers. Never throws. */
  async close(): Promise<void> {
    const ws = [this.#front, this.#back];
    this.#front = this.#back = null;
    await Promise.all(ws.map((w) => w?.terminate()));
  }
}
