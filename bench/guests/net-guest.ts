/**
 * The guest of `pvio bench net`: one end of a domU → bridge → domU pair, driven
 * through the toolstack control port (`GuestHandle.call(op, args)`, served with
 * `serveCalls`), so one pair of guests runs every window of the bench.
 *
 * Operations:
 * - `info` → {@link NetGuestInfo}: the NIC's MAC, MTU and what it negotiated;
 * - `hello` → sends one broadcast frame (ethertype {@link BENCH_ETHERTYPE}) so dom0's
 *   bridge learns this NIC's MAC; the sender's frames are unicast from then on;
 * - `rxStart` ({@link RxStartArgs}) → starts counting received frames of one run in
 *   the background (returns at once);
 * - `rxStop` ({@link RxStopArgs}) → waits until no frame of the run has come for
 *   `quietMs` (at most `maxMs`), stops counting, returns {@link RxResult};
 * - `tx` ({@link TxArgs}) → paces frames to `dst` and returns {@link TxResult};
 * - `exit` → the guest's main returns (the domain closes its NIC and powers off).
 *
 * Frames: the Ethernet header (dst, src, ethertype 0x88b5, IEEE "local experimental"),
 * then the run id (u32 LE, offset 14) and the frame's sequence number (u32 LE,
 * offset 18), then filler bytes up to the frame size. The receiver counts only frames
 * with the run's id, so a late frame of an earlier window is never counted.
 *
 * Pacing (the sender): frame n of a run is due at `t0 + n / rate`; the sender sends
 * every frame that is due, back to back (`nic.trySend()`, which copies the frame;
 * `await nic.send()` when the tx ring is full, which waits for room), then sleeps
 * with a timer until the next one is due (Node's timers: ~1 ms granularity, so
 * frames leave in bursts of about `rate / 1000`). `rate = 0` floods: frames back to
 * back for the whole window, held back only by the tx ring.
 */
import type { Kernel } from '../../hypervisor/kernel.ts';
import type { Netfront } from '../../netfront/xenbus.ts';
import type { NetfrontCounters, SendOptions } from '../../netfront/netfront.ts';
import { XEN_NETIF_GSO_TYPE_TCPV4 } from '../../rings/netif.ts';
import { serveCalls } from '../../toolstack/guest-calls.ts';

/** Ethertype of the bench's frames: 0x88b5, IEEE 802 local experimental. */
export const BENCH_ETHERTYPE = 0x88b5;
/** Offset of the run id (u32 LE) in a bench frame. */
export const FRAME_RUN_ID = 14;
/** Offset of the sequence number (u32 LE) in a bench frame. */
export const FRAME_SEQ = 18;
/** Smallest bench frame, bytes: header + run id + sequence number. */
export const MIN_BENCH_FRAME = 22;

/**
 * Frames a flooding sender sends between two looks at the clock: 64 frames of up to
 * a page, fewer of larger ones (4 of 64 KiB: a 256-slot tx ring holds 16), so a
 * flood stops within a few frames of the window's end.
 */
export function floodBatch(frameBytes: number): number {
  return Math.max(1, Math.floor((64 * 4096) / Math.max(4096, frameBytes)));
}

/** What `info` returns. */
export interface NetGuestInfo {
  readonly mac: string;
  /** Bytes (the largest IP packet; frames add the 14-byte Ethernet header). */
  readonly mtu: number;
  readonly features: Netfront['features'];
  readonly vcpus: number;
}

/** Arguments of `tx`. */
export interface TxArgs {
  /** Run id written into every frame. */
  readonly runId: number;
  /** Destination MAC, `xx:xx:xx:xx:xx:xx`. */
  readonly dst: string;
  /** Bytes per frame, Ethernet header included (22 … 65535). */
  readonly frameBytes: number;
  /** Offered rate, packets/s; 0 = flood (back to back, held back only by the tx ring). */
  readonly rate: number;
  /** Length of the window, ms: paced runs send `rate × ms / 1000` frames, a flood sends for `ms`. */
  readonly ms: number;
  /** Give up sending after this long, ms (a stuck ring must not hang the bench). */
  readonly deadlineMs: number;
}

/** What `tx` returns (counter deltas over the window). */
export interface TxResult {
  /** Frames handed to the NIC (all accepted: `send` waits while the ring is full). */
  sent: number;
  /** Frames the pacing asked for (paced runs; equal to `sent` for a flood). */
  scheduled: number;
  /** First send → last send returned, ms. */
  elapsedMs: number;
  /** netfront's counters over the window (tx and rx notifications, errors...). */
  counters: Partial<NetfrontCounters>;
  /** Hypercalls this vCPU made over the window, by name. */
  hypercalls: Record<string, number>;
}

/** Arguments of `rxStart`. */
export interface RxStartArgs {
  readonly runId: number;
}

/** Arguments of `rxStop`. */
export interface RxStopArgs {
  /** Stop once no frame of the run has come for this long, ms. */
  readonly quietMs: number;
  /** Stop after this long in any case, ms. */
  readonly maxMs: number;
}

/** What `rxStop` returns. */
export interface RxResult {
  /** Frames of the run received. */
  frames: number;
  /** Their bytes (Ethernet header included). */
  bytes: number;
  /** First → last frame of the run, ms (0 with fewer than two frames). */
  spanMs: number;
  /** Frames of other runs or other kinds (the peer's `hello`, late frames of an earlier window). */
  other: number;
  /** netfront's counters over the window (rx dropped, notifications...). */
  counters: Partial<NetfrontCounters>;
  hypercalls: Record<string, number>;
}

/** `a - b` per key, keeping the non-zero ones. */
function delta(after: Record<string, number>, before: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(after)) if (v - (before[k] ?? 0) !== 0) out[k] = v - (before[k] ?? 0);
  return out;
}

/** The 6 bytes of a MAC written `xx:xx:xx:xx:xx:xx`. */
export function macBytes(mac: string): number[] {
  const b = mac.split(':').map((x) => parseInt(x, 16));
  if (b.length !== 6 || b.some((x) => !(x >= 0 && x <= 255))) throw new Error(`bad MAC '${mac}'`);
  return b;
}

/**
 * A bench frame of `bytes` bytes (see the module comment); the run id and sequence
 * number are 0 until the sender writes them.
 */
export function benchFrame(dst: string, src: string, bytes: number): Uint8Array {
  if (!(bytes >= MIN_BENCH_FRAME && bytes <= 65535)) throw new RangeError(`frame of ${bytes} bytes: must be ${MIN_BENCH_FRAME} … 65535`);
  const f = new Uint8Array(bytes);
  f.set(macBytes(dst), 0);
  f.set(macBytes(src), 6);
  f[12] = BENCH_ETHERTYPE >> 8;
  f[13] = BENCH_ETHERTYPE & 0xff;
  for (let i = MIN_BENCH_FRAME; i < bytes; i++) f[i] = i & 0xff;
  return f;
}

/** Writes a u32 little-endian at `off` (bytes) of `b`. */
export function putU32(b: Uint8Array, off: number, v: number): void {
  b[off] = v & 0xff;
  b[off + 1] = (v >>> 8) & 0xff;
  b[off + 2] = (v >>> 16) & 0xff;
  b[off + 3] = (v >>> 24) & 0xff;
}

/** Reads a u32 little-endian at `off` (bytes) of `b`. */
export function getU32(b: Uint8Array, off: number): number {
  return (b[off] | (b[off + 1] << 8) | (b[off + 2] << 16) | (b[off + 3] << 24)) >>> 0;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Sends a paced (or flooding) run on `nic`; see {@link TxArgs} and the module comment.
 */
export async function runTx(k: Kernel, nic: Netfront, a: TxArgs): Promise<TxResult> {
  const frame = benchFrame(a.dst, nic.mac, a.frameBytes);
  putU32(frame, FRAME_RUN_ID, a.runId);
  // Frames over the MTU go as GSO frames when the backend offers it: an extra-info slot
  // (XEN_NETIF_GSO_TYPE_TCPV4, MSS = MTU − 40) after the first, as Linux sends a TSO skb.
  const opts: SendOptions | undefined = a.frameBytes > nic.mtu + 14 && nic.features.gso
    ? { gso: { size: nic.mtu - 40, type: XEN_NETIF_GSO_TYPE_TCPV4 } } : undefined;
  const c0 = { ...nic.counters } as unknown as Record<string, number>;
  const h0 = { ...k.hypercall.counters.calls };
  const flood = a.rate <= 0;
  const batch = floodBatch(a.frameBytes);
  const scheduled = flood ? Infinity : Math.max(1, Math.round((a.rate * a.ms) / 1000));
  const t0 = performance.now();
  const stopAt = t0 + a.ms;
  const giveUp = t0 + a.deadlineMs;
  let sent = 0;
  let last = t0;
  while (sent < scheduled) {
    const now = performance.now();
    if (now > giveUp || (flood && now >= stopAt)) break;
    // Frames due by now (flood: a batch, then look at the clock again).
    const due = flood ? sent + batch : Math.min(scheduled, Math.floor(((now - t0) * a.rate) / 1000) + 1);
    if (sent >= due) {
      // Nothing due: sleep until the next frame is (a timer: ~1 ms at least).
      await sleep(Math.max(0, t0 + ((sent * 1000) / a.rate) - now));
      continue;
    }
    while (sent < due) {
      putU32(frame, FRAME_SEQ, sent);
      // No promise per frame while the ring has room; wait for room when it has none.
      if (!nic.trySend(frame, opts)) await nic.send(frame, opts);
      sent++;
    }
    last = performance.now();
    // A flood yields to the event loop now and then (control messages, timers).
    if (flood && (sent & 4095) < batch) await new Promise((r) => setImmediate(r));
  }
  return {
    sent, scheduled: flood ? sent : scheduled, elapsedMs: last - t0,
    counters: delta(nic.counters as unknown as Record<string, number>, c0),
    hypercalls: delta(k.hypercall.counters.calls, h0),
  };
}

/** The receiving side: counts one run's frames in the background. */
class Receiver {
  private runId = -1;
  private frames = 0;
  private bytes = 0;
  private other = 0;
  private first = 0;
  private last = 0;
  private running: Promise<void> | null = null;
  private stopping = false;
  private c0: Record<string, number> = {};
  private h0: Record<string, number> = {};

  constructor(private readonly k: Kernel, private readonly nic: Netfront) {}

  start(runId: number): void {
    if (this.running) throw new Error('rxStart: already receiving');
    this.runId = runId >>> 0;
    this.frames = 0;
    this.bytes = 0;
    this.other = 0;
    this.first = 0;
    this.last = performance.now();
    this.stopping = false;
    this.c0 = { ...this.nic.counters } as unknown as Record<string, number>;
    this.h0 = { ...this.k.hypercall.counters.calls };
    this.running = this.loop();
  }

  private async loop(): Promise<void> {
    const nic = this.nic;
    while (!this.stopping) {
      // A batch per wake-up (what was received), one promise per batch; the frames are
      // lent (counted, then given back by the next call), so receiving allocates nothing.
      const batch = await nic.receiveBatch(1024, 5, { borrow: true });
      if (batch.length === 0) continue;
      const now = performance.now();
      for (const f of batch) {
        if (f.length >= MIN_BENCH_FRAME && f[12] === BENCH_ETHERTYPE >> 8 && f[13] === (BENCH_ETHERTYPE & 0xff) && getU32(f, FRAME_RUN_ID) === this.runId) {
          if (this.frames === 0) this.first = now;
          this.last = now;
          this.frames++;
          this.bytes += f.length;
        } else {
          this.other++;
        }
      }
    }
  }

  async stop(a: RxStopArgs): Promise<RxResult> {
    if (!this.running) throw new Error('rxStop: not receiving');
    const t = performance.now();
    for (;;) {
      const now = performance.now();
      if (now - this.last >= a.quietMs || now - t >= a.maxMs) break;
      await sleep(2);
    }
    this.stopping = true;
    await this.running;
    this.running = null;
    return {
      frames: this.frames, bytes: this.bytes, spanMs: this.frames > 1 ? this.last - this.first : 0, other: this.other,
      counters: delta(this.nic.counters as unknown as Record<string, number>, this.c0),
      hypercalls: delta(this.k.hypercall.counters.calls, this.h0),
    };
  }
}

/** The guest's main: serves the operations above until `exit`. */
export default function main(k: Kernel): Promise<unknown> {
  let finish!: (v: unknown) => void;
  const done = new Promise<unknown>((r) => (finish = r));
  const nic = (): Netfront => {
    const n = k.devices.get('eth0') as Netfront | undefined;
    if (!n) throw new Error('no eth0');
    return n;
  };
  let rx: Receiver | null = null;
  serveCalls(k.control!, {
    info: (): NetGuestInfo => {
      const n = nic();
      return { mac: n.mac, mtu: n.mtu, features: { ...n.features }, vcpus: k.nrVcpus };
    },
    hello: async () => {
      const n = nic();
      await n.send(benchFrame('ff:ff:ff:ff:ff:ff', n.mac, 64));
      return null;
    },
    rxStart: (a: RxStartArgs) => {
      rx ??= new Receiver(k, nic());
      rx.start(a.runId);
      return null;
    },
    rxStop: (a: RxStopArgs) => {
      if (!rx) throw new Error('rxStop: not receiving');
      return rx.stop(a);
    },
    tx: (a: TxArgs) => runTx(k, nic(), a),
    exit: () => void setImmediate(() => finish(null)),
  });
  return done;
}
