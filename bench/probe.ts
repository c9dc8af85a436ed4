/**
 * The cross-core latency probe run before each pair of cases: two worker threads
 * ping-pong one Int32 with spins (~200 round trips) and the median round trip is
 * recorded. On this kind of VM it reads either ~0.1–0.2 µs or ~1 µs, and the
 * machine flips between the two every few minutes (machine-baselines.md, "Two
 * cross-core regimes"), so every result row says which regime it ran in.
 */
import { BenchWorker, median } from './harness.ts';
import { createControlBlock } from './workers/common.ts';
import { PROBE_BLOCK, type ProbeArgs } from './workers/probe-worker.ts';

const ENTRY = new URL('./workers/probe-worker.ts', import.meta.url);

/** Round trips per probe (25 blocks of 8). */
export const PROBE_ROUNDS = 25 * PROBE_BLOCK;

/** Two probe workers, started once and reused for every probe. */
export class CrossCoreProbe {
  #ping: BenchWorker | null = null;
  #pong: BenchWorker | null = null;

  /** @param spinTokens the bench's spin-token buffer: each probe thread holds a token while it spins. */
  constructor(private readonly spinTokens: SharedArrayBuffer) {}

  /** Starts the two workers if they are not running. */
  async start(): Promise<void> {
    if (this.#ping && this.#pong && !this.#ping.dead && !this.#pong.dead) return;
    await this.close();
    [this.#ping, this.#pong] = await Promise.all([
      BenchWorker.spawn(ENTRY, 'probe/ping', { spinTokens: this.spinTokens }),
      BenchWorker.spawn(ENTRY, 'probe/pong', { spinTokens: this.spinTokens }),
    ]);
  }

  /**
   * Runs one probe.
   * @returns the median cross-core round trip, ns; null when the probe failed
   *   (e.g. no spin token was free).
   */
  async measure(timeoutMs = 2000): Promise<number | null> {
    try {
      await this.start();
      const args: ProbeArgs = { ctl: createControlBlock(), rounds: PROBE_ROUNDS, timeoutMs: timeoutMs - 200 };
      const [blocks] = await Promise.all([
        this.#ping!.call<number[]>('ping', { args }, timeoutMs),
        this.#pong!.call<null>('pong', { args }, timeoutMs),
      ]);
      return median(blocks);
    } catch {
      await this.close();
      return null;
    }
  }

  /** Terminates both workers. Never throws. */
  async close(): Promise<void> {
    const ws = [this.#ping, this.#pong];
    this.#ping = this.#pong = null;
    await Promise.all(ws.map((w) => w?.terminate()));
  }
}
