/**
 * A pvio ring pair between two real domains, for the ring benchmark and the stress
 * test: a frontend guest that initialises and grants a blkif ring of 2^order pages
 * and allocates the event channel, and a backend guest that maps it and binds the
 * channel (bench/guests/ring-guest.ts). A run starts the backend's serve loop and
 * the frontend's request loop together and returns both sides' reports.
 */
import { fileURLToPath } from 'node:url';
import type { Machine, GuestHandle } from '../toolstack/machine.ts';
import type { WaitMode } from '../event-channel/evtchn.ts';
import type { RingRunConfig, RingRunResult, RingServeResult } from './guests/ring-guest.ts';

const GUEST = fileURLToPath(new URL('./guests/ring-guest.ts', import.meta.url));

/** Both sides' reports of one run. */
export interface PairRunResult {
  readonly front: RingRunResult;
  readonly back: RingServeResult;
}

/** Two domains joined by one blkif ring and one event channel. */
export class PvioRingPair {
  private constructor(
    readonly front: GuestHandle,
    readonly back: GuestHandle,
    /** Entries in the ring. */
    readonly size: number,
    /** Ring pages. */
    readonly pages: number,
  ) {}

  /**
   * Creates the two guests and connects them over a ring of 2^order pages whose
   * indices start at `startIdx` (u32; near 2^32 to cross the wrap).
   */
  static async open(m: Machine, order: number, startIdx = 0, tag = ''): Promise<PvioRingPair> {
    // blkif entries start at byte 64 of page 0 and straddle pages: the ring is one extent.
    const [front, back] = await Promise.all([
      m.createGuest({ name: `ringfront${tag}`, memoryMiB: 8, vcpus: 1, kernel: GUEST }),
      m.createGuest({ name: `ringback${tag}`, memoryMiB: 8, vcpus: 1, kernel: GUEST }),
    ]);
    const f = (await front.call('setupFront', { order, backend: back.domid, startIdx })) as { refs: number[]; port: number; size: number };
    await back.call('setupBack', { front: front.domid, refs: f.refs, port: f.port, startIdx });
    return new PvioRingPair(front, back, f.size, 1 << order);
  }

  /**
   * One run: the backend serves until the frontend's stop sentinel.
   * @throws MachineError when either side reports a failure (a peer silent past its deadline).
   */
  async run(cfg: RingRunConfig, backMode: WaitMode = cfg.mode, timeoutMs = 120_000, backBatch?: number): Promise<PairRunResult> {
    const back = this.back.call('serve', { mode: backMode, batch: backBatch }, timeoutMs) as Promise<RingServeResult>;
    const front = this.front.call('run', { ...cfg, stop: true }, timeoutMs) as Promise<RingRunResult>;
    const [f, b] = await Promise.all([front, back]);
    return { front: f, back: b };
  }

  /**
   * The backend's notifications and wake-ups between two sequence numbers, from its
   * checkpoints (every CHECKPOINT_EVERY requests).
   */
  static backendWindow(b: RingServeResult, firstSeq: number, lastSeq: number): { notifications: number; wakeups: number } {
    const cp = b.checkpoints;
    let start: [number, number] | null = null;
    let end: [number, number] | null = null;
    for (let i = 0; i < cp.length; i += 3) {
      if (start === null && cp[i] >= firstSeq) start = [cp[i + 1], cp[i + 2]];
      if (cp[i] <= lastSeq) end = [cp[i + 1], cp[i + 2]];
    }
    if (!start || !end) return { notifications: 0, wakeups: 0 };
    return { notifications: Math.max(0, end[0] - start[0]), wakeups: Math.max(0, end[1] - start[1]) };
  }

  /** Both sides idle in adaptive mode for `ms`; @returns whether an event arrived, the sleeps taken and the wake-ups by notification. */
  async idle(ms: number): Promise<Array<{ gotEvent: boolean; sleeps: number; wakeups: number }>> {
    return (await Promise.all([this.front.call('idle', { ms }, ms + 10_000), this.back.call('idle', { ms }, ms + 10_000)])) as Array<{ gotEvent: boolean; sleeps: number; wakeups: number }>;
  }

  /** Ends both guests. */
  async close(): Promise<void> {
    await Promise.all([this.front.call('exit').catch(() => undefined), this.back.call('exit').catch(() => undefined)]);
    await Promise.all([this.front.exit, this.back.exit]);
  }
}
