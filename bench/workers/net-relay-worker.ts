/**
 * The baselines of `pvio bench net`: the same topology as pvio's (sender → switch →
 * receiver, three threads), without pvio. A worker takes one role — `sender`,
 * `middle` (the switch) or `receiver` — of one of two implementations:
 *
 * **messageport-relay.** Frames travel by `postMessage` on two `MessageChannel`s
 * (sender → middle, middle → receiver), either **copied** (a `Uint8Array`, cloned at
 * every hop) or **transferred** (a fresh `ArrayBuffer` per frame, moved at every
 * hop). A port queue is unbounded, so the relay bounds it the way a NIC's rings do:
 * - ingress (sender → middle), like a netif tx ring of 256 slots of 4 KiB: the
 *   sender keeps at most `ingressFrames` frames not yet taken by the middle (the
 *   middle publishes its count in the control block's TAKEN word; a blocked sender
 *   arms WAKE_AT and sleeps in `Atomics.wait` on TAKEN, which the middle notifies);
 * - egress (middle → receiver), like netback's rx queue plus a 256-slot rx ring
 *   ({@link egressFrames}): the middle drops a frame (counted) when `egressFrames` frames it forwarded
 *   are not yet consumed (the receiver publishes its count in RX_COUNT).
 * The sender ends a run with an end marker (`{ end: true }`) after its last frame; the
 * middle passes it on after the frames it forwarded, so when the receiver sees it,
 * every frame of the run has arrived or was dropped.
 *
 * **minimal-ring-relay.** Two hand-written single-producer single-consumer byte
 * rings in SharedArrayBuffers (sender → middle, middle → receiver): the sender's
 * holds 1 MiB (the 256 pages of 4 KiB a full netif tx ring refers to), the
 * receiver's room for as many frames as netback buffers for a guest (its rx queue
 * plus a 256-slot rx ring), at least 1 MiB (see {@link egressRingBytes}). A record is a u32
 * length and the frame, 8-byte aligned; a record that does not fit before the end
 * leaves a wrap marker. Producer and consumer indices are free-running u32 byte
 * counts. A consumer with nothing to read sets its WAITING flag, re-checks the head,
 * and sleeps in `Atomics.wait` on it; a producer that published checks the flag and,
 * when set, clears it and notifies — the same rule the other way for a producer
 * waiting for space (the sender). No spinning. The sender blocks while its ring is
 * full (backpressure, as netfront on a full tx ring); the middle drops a frame when
 * the receiver's ring has no room (as a switch port's queue). The sender sets DONE
 * after its last frame; the middle sets the receiver ring's DONE once it has drained
 * its input after that.
 *
 * Every role does real work per frame: the sender writes the frame's sequence number
 * and hands the whole frame over (a copy into the ring, a clone, or a fresh buffer
 * it transfers); the middle is a learning switch (source MAC learnt, destination MAC
 * looked up); the receiver takes the frame (MessagePort: the clone or the transferred
 * buffer it was given; ring: copied out of the ring into memory it reuses for the next
 * frame, as pvio's receiver takes frames netfront lends) and checks the run id.
 *
 * Pacing is the same as pvio's sender (bench/guests/net-guest.ts): frame n is due at
 * `t0 + n / rate`; the sender sends what is due back to back, then sleeps at least
 * 1 ms (pvio's guest sleeps on a Node timer, ~1 ms), so frames leave in bursts of
 * about `rate / 1000`. Rate 0 floods.
 */
import type { MessagePort } from 'node:worker_threads';
import { serve, WAIT_SLICE_MS, type WorkerRequest } from './common.ts';
import { rxQueueCapacity } from '../../netback/netback.ts';
import { macKey } from '../../netback/bridge.ts';
import { BENCH_ETHERTYPE, FRAME_RUN_ID, FRAME_SEQ, MIN_BENCH_FRAME, benchFrame, floodBatch, getU32, putU32 } from '../guests/net-guest.ts';

/** Words per control slot: 16 × 4 bytes, one cache line each. */
const STRIDE = 16;

/**
 * Control block of a messageport relay (Int32Array indices). Who writes:
 * [mid] the middle, [rx] the receiver, [tx] the sender, [main] before a run.
 */
export const RELAY_CTL = Object.freeze({
  /** [mid] frames of the run the middle took off its ingress port. */
  TAKEN: 0 * STRIDE,
  /** [tx] TAKEN value at which the middle must notify the (blocked) sender; 0 = not armed. */
  WAKE_AT: 1 * STRIDE,
  /** [rx] frames of the run the receiver consumed. */
  RX_COUNT: 2 * STRIDE,
});
/** Bytes of a relay control block. */
export const RELAY_CTL_BYTES = 3 * STRIDE * 4;

/**
 * Header of a minimal ring (Int32Array indices, a cache line each). Who writes:
 * [P] the producer, [C] the consumer.
 */
export const RING = Object.freeze({
  /** [P] bytes produced, free-running u32. */
  HEAD: 0 * STRIDE,
  /** [C] bytes consumed, free-running u32. */
  TAIL: 1 * STRIDE,
  /** [C] 1 while the consumer sleeps (or is about to) waiting for HEAD to move. */
  CONS_WAITING: 2 * STRIDE,
  /** [P] 1 while the producer sleeps waiting for TAIL to move (ring full). */
  PROD_WAITING: 3 * STRIDE,
  /** [P] 1 once the producer has published its last record of the run ([main] resets it). */
  DONE: 4 * STRIDE,
});
/** Bytes before the data area of a ring (the header, rounded up). */
export const RING_HEADER_BYTES = 512;
/** Data bytes of the sender's ring: 1 MiB, the 256 pages of 4 KiB a full netif tx ring refers to. */
export const RING_DATA_BYTES = 1 << 20;
/**
 * Frames of `frameBytes` bytes the egress (middle → receiver) holds: what pvio's
 * netback buffers for a guest — its rx queue ({@link rxQueueCapacity}) plus a
 * 256-slot rx ring — so a baseline drops exactly when pvio would.
 */
export function egressFrames(frameBytes: number): number {
  return rxQueueCapacity(frameBytes) + 256;
}
/** Length word of a wrap marker: the rest of the data area up to its end is unused. */
const WRAP = 0xffffffff;
/** Bytes of a record's length word. */
const REC_HDR = 4;

/**
 * A new, empty minimal ring of `dataBytes` data bytes (a power of two).
 * @throws RangeError for a size that is not a power of two of at least 64 KiB.
 */
export function createRing(dataBytes = RING_DATA_BYTES): SharedArrayBuffer {
  if (!(dataBytes >= 1 << 16 && (dataBytes & (dataBytes - 1)) === 0)) throw new RangeError(`ring of ${dataBytes} bytes: not a power of two ≥ 64 KiB`);
  return new SharedArrayBuffer(RING_HEADER_BYTES + dataBytes);
}

/**
 * Data bytes of the receiver's ring for `frameBytes`-byte frames: room for
 * {@link egressFrames} records (as many frames as netback buffers for a guest),
 * rounded up to a power of two, at least {@link RING_DATA_BYTES}.
 */
export function egressRingBytes(frameBytes: number): number {
  let n = RING_DATA_BYTES;
  while (n < egressFrames(frameBytes) * recordBytes(frameBytes)) n *= 2;
  return n;
}

/** Bytes a record of a `len`-byte frame takes in a ring (length word + frame, 8-byte aligned). */
export function recordBytes(len: number): number {
  return (REC_HDR + len + 7) & ~7;
}

/** Slots a frame of `bytes` takes in a netif ring: one per 4 KiB page. */
export function netifSlots(bytes: number): number {
  return Math.max(1, Math.ceil(bytes / 4096));
}

/** Which baseline and how frames are handed over. */
export type RelayImpl = 'messageport-relay' | 'minimal-ring-relay';
/** `copy`: cloned/copied at each hop; `transfer`: a fresh ArrayBuffer moved at each hop (messageport only). */
export type RelayMode = 'copy' | 'transfer';
/** The three threads of a relay. */
export type RelayRole = 'sender' | 'middle' | 'receiver';

/** Arguments of `setup`: the role's ends (ports transferred with the call, or ring buffers). */
export interface RelaySetup {
  readonly impl: RelayImpl;
  readonly mode: RelayMode;
  readonly role: RelayRole;
  /** messageport: the port frames come in by (middle, receiver). */
  readonly inPort?: MessagePort;
  /** messageport: the port frames go out by (sender, middle). */
  readonly outPort?: MessagePort;
  /** messageport: the control block ({@link RELAY_CTL}). */
  readonly ctl?: SharedArrayBuffer;
  /** ring: the ring frames come in by (middle, receiver). */
  readonly inRing?: SharedArrayBuffer;
  /** ring: the ring frames go out by (sender, middle). */
  readonly outRing?: SharedArrayBuffer;
  /** messageport: most frames the sender keeps untaken by the middle. */
  readonly ingressFrames?: number;
  /** messageport: most frames forwarded and not yet consumed before the middle drops. */
  readonly egressFrames?: number;
}

/** Arguments of `tx` (the sender). */
export interface RelayTxArgs {
  readonly runId: number;
  readonly dst: string;
  readonly src: string;
  /** Bytes per frame, Ethernet header included. */
  readonly frameBytes: number;
  /** Offered rate, packets/s; 0 = flood. */
  readonly rate: number;
  /** Window, ms. */
  readonly ms: number;
  /** Give up after this long, ms. */
  readonly deadlineMs: number;
}

/** What the sender reports. */
export interface RelayTxResult {
  sent: number;
  scheduled: number;
  /** First send → last send, ms. */
  elapsedMs: number;
  /** Wake-ups this thread sent its peer (ring: `Atomics.notify` of a sleeping consumer). */
  notifications: number;
  /** Times it slept because the ingress was full. */
  blocked: number;
}

/** What the middle reports. */
export interface RelayMidResult {
  taken: number;
  forwarded: number;
  /** Frames dropped because the egress was full. */
  drops: number;
  /** Frames to a destination learnt on the ingress port (filtered, as a switch does). */
  filtered: number;
  notifications: number;
  wakeups: number;
}

/** What the receiver reports. */
export interface RelayRxResult {
  frames: number;
  bytes: number;
  /** First → last frame, ms. */
  spanMs: number;
  /** Frames without the run's id. */
  other: number;
  notifications: number;
  wakeups: number;
}

// ---------------------------------------------------------------------------
// Shared helpers

const sleepWord = new Int32Array(new SharedArrayBuffer(4));
/** Blocks the thread for `ms` (never spins). */
function sleepMs(ms: number): void {
  Atomics.wait(sleepWord, 0, 0, ms);
}

/** Least sleep between two bursts of a paced sender, ms (pvio's guest sleeps on a Node timer). */
const PACING_QUANTUM_MS = 1;

/**
 * The two-port learning switch of the middle: learns each frame's source on the
 * ingress, looks its destination up. @returns false when the frame must not leave
 * by the egress (its destination was learnt on the ingress: filtered).
 */
class TinySwitch {
  private readonly fdb = new Map<number, 'in' | 'out'>();
  filtered = 0;

  /** Teaches the switch that `mac` is behind the egress (the receiver's `hello`). */
  learnEgress(mac: number): void {
    this.fdb.set(mac, 'out');
  }

  forward(f: Uint8Array, at: number): boolean {
    if ((f[at + 6] & 1) === 0) this.fdb.set(macKey(f, at + 6), 'in');
    if ((f[at] & 1) !== 0) return true; // group address: flood (the only other port)
    const to = this.fdb.get(macKey(f, at));
    if (to === 'in') {
      this.filtered++;
      return false;
    }
    return true; // the egress, learnt or unknown (flooded to the only other port)
  }
}

/** Pacing state of a sender: which frames are due. */
class Pacer {
  readonly t0 = performance.now();
  readonly scheduled: number;
  readonly flood: boolean;
  readonly stopAt: number;
  readonly giveUp: number;
  private readonly batch: number;

  constructor(private readonly rate: number, ms: number, deadlineMs: number, frameBytes: number) {
    this.flood = rate <= 0;
    this.batch = floodBatch(frameBytes);
    this.scheduled = this.flood ? Infinity : Math.max(1, Math.round((rate * ms) / 1000));
    this.stopAt = this.t0 + ms;
    this.giveUp = this.t0 + deadlineMs;
  }

  /** Frames due by `now` (flood: `sent` + {@link floodBatch}); -1 when the run is over. */
  due(sent: number, now: number): number {
    if (sent >= this.scheduled || now > this.giveUp || (this.flood && now >= this.stopAt)) return -1;
    return this.flood ? sent + this.batch : Math.min(this.scheduled, Math.floor(((now - this.t0) * this.rate) / 1000) + 1);
  }

  /** Sleeps until frame `sent` is due, at least {@link PACING_QUANTUM_MS}. */
  sleepUntil(sent: number, now: number): void {
    sleepMs(Math.max(PACING_QUANTUM_MS, this.t0 + (sent * 1000) / this.rate - now));
  }
}

// ---------------------------------------------------------------------------
// messageport-relay

interface MpState {
  setup: RelaySetup;
  ctl: Int32Array;
  sw: TinySwitch;
  /** The run being collected (middle, receiver): resolved by the end marker. */
  pending: { resolve: (v: unknown) => void; result: RelayMidResult | RelayRxResult; runId: number; first: number; last: number } | null;
}

/** The end-of-run marker that follows a run's frames on the ports. */
interface EndMarker {
  readonly end: true;
}

/**
 * The pacing loop both senders share: frame n (its sequence number written) is handed
 * to `put` when due (see {@link Pacer}); `put` sends it, blocking while there is no
 * room, and returns how many times it blocked.
 */
function paceFrames(a: RelayTxArgs, put: (frame: Uint8Array, p: Pacer) => number):
  { sent: number; scheduled: number; elapsedMs: number; blocked: number } {
  const frame = benchFrame(a.dst, a.src, a.frameBytes);
  putU32(frame, FRAME_RUN_ID, a.runId);
  const p = new Pacer(a.rate, a.ms, a.deadlineMs, a.frameBytes);
  let sent = 0;
  let last = p.t0;
  let blocked = 0;
  for (;;) {
    const now = performance.now();
    const due = p.due(sent, now);
    if (due < 0) break;
    if (sent >= due) {
      p.sleepUntil(sent, now);
      continue;
    }
    while (sent < due) {
      putU32(frame, FRAME_SEQ, sent);
      blocked += put(frame, p);
      sent++;
    }
    last = performance.now();
  }
  return { sent, scheduled: p.flood ? sent : p.scheduled, elapsedMs: last - p.t0, blocked };
}

function mpSender(s: MpState, a: RelayTxArgs): RelayTxResult {
  const port = s.setup.outPort!;
  const ctl = s.ctl;
  const transfer = s.setup.mode === 'transfer';
  const maxOut = s.setup.ingressFrames!;
  let sent = 0;
  const r = paceFrames(a, (frame, p) => {
    let blocked = 0;
    // Ingress full: ask to be woken when a quarter of it is free, re-check, sleep.
    let taken = Atomics.load(ctl, RELAY_CTL.TAKEN);
    while (sent - taken >= maxOut) {
      const target = sent - maxOut + Math.max(1, maxOut >> 2);
      Atomics.store(ctl, RELAY_CTL.WAKE_AT, target);
      taken = Atomics.load(ctl, RELAY_CTL.TAKEN);
      if (taken < target) {
        blocked++;
        Atomics.wait(ctl, RELAY_CTL.TAKEN, taken, WAIT_SLICE_MS);
      }
      taken = Atomics.load(ctl, RELAY_CTL.TAKEN);
      if (performance.now() > p.giveUp) throw new Error('messageport sender: the middle took nothing before the deadline');
    }
    if (transfer) {
      const buf = new ArrayBuffer(frame.length);
      new Uint8Array(buf).set(frame);
      port.postMessage(buf, [buf]);
    } else {
      port.postMessage(frame);
    }
    sent++;
    return blocked;
  });
  Atomics.store(ctl, RELAY_CTL.WAKE_AT, 0);
  port.postMessage({ end: true } satisfies EndMarker);
  return { ...r, notifications: 0 };
}

/** Installs the middle's message handler (once); runs are collected with `arm`/`collect`. */
function mpMiddleInstall(s: MpState): void {
  const inPort = s.setup.inPort!;
  const outPort = s.setup.outPort!;
  const ctl = s.ctl;
  const transfer = s.setup.mode === 'transfer';
  const egressMax = s.setup.egressFrames!;
  inPort.on('message', (m: Uint8Array | ArrayBuffer | EndMarker) => {
    const run = s.pending;
    if (!run) return; // not armed: a frame outside any run (cannot happen: runs are armed first)
    const r = run.result as RelayMidResult;
    if ((m as EndMarker).end === true) {
      outPort.postMessage(m);
      s.pending = null;
      r.filtered = s.sw.filtered;
      run.resolve(r);
      return;
    }
    const taken = ++r.taken;
    Atomics.store(ctl, RELAY_CTL.TAKEN, taken);
    const wake = Atomics.load(ctl, RELAY_CTL.WAKE_AT);
    if (wake !== 0 && taken >= wake) {
      Atomics.store(ctl, RELAY_CTL.WAKE_AT, 0);
      Atomics.notify(ctl, RELAY_CTL.TAKEN, 1);
      r.notifications++;
    }
    const u8 = transfer ? new Uint8Array(m as ArrayBuffer) : (m as Uint8Array);
    if (!s.sw.forward(u8, 0)) return;
    if (r.forwarded - Atomics.load(ctl, RELAY_CTL.RX_COUNT) >= egressMax) {
      r.drops++;
      return;
    }
    if (transfer) outPort.postMessage(m, [m as ArrayBuffer]);
    else outPort.postMessage(u8);
    r.forwarded++;
  });
}

/** Installs the receiver's message handler (once). */
function mpReceiverInstall(s: MpState): void {
  const inPort = s.setup.inPort!;
  const ctl = s.ctl;
  const transfer = s.setup.mode === 'transfer';
  inPort.on('message', (m: Uint8Array | ArrayBuffer | EndMarker) => {
    const run = s.pending;
    if (!run) return;
    const r = run.result as RelayRxResult;
    if ((m as EndMarker).end === true) {
      s.pending = null;
      r.spanMs = r.frames > 1 ? run.last - run.first : 0;
      run.resolve(r);
      return;
    }
    const u8 = transfer ? new Uint8Array(m as ArrayBuffer) : (m as Uint8Array);
    if (u8.length >= MIN_BENCH_FRAME && getU32(u8, FRAME_RUN_ID) === run.runId && u8[12] === BENCH_ETHERTYPE >> 8) {
      const now = performance.now();
      if (r.frames === 0) run.first = now;
      run.last = now;
      r.frames++;
      r.bytes += u8.length;
      Atomics.store(ctl, RELAY_CTL.RX_COUNT, r.frames);
    } else {
      r.other++;
    }
  });
}

// ---------------------------------------------------------------------------
// minimal-ring-relay

/** One end of a minimal ring, with private copies of the indices it owns. */
class RingEnd {
  readonly w: Int32Array;
  readonly u8: Uint8Array;
  readonly u32: Uint32Array;
  /** Data bytes (a power of two). */
  readonly size: number;
  notifications = 0;
  wakeups = 0;

  constructor(sab: SharedArrayBuffer) {
    this.size = sab.byteLength - RING_HEADER_BYTES;
    this.w = new Int32Array(sab, 0, RING_HEADER_BYTES >> 2);
    this.u8 = new Uint8Array(sab, RING_HEADER_BYTES, this.size);
    this.u32 = new Uint32Array(sab, RING_HEADER_BYTES, this.size >> 2);
  }
}

/** The producing end. */
class RingProducer extends RingEnd {
  private head: number;
  constructor(sab: SharedArrayBuffer) {
    super(sab);
    this.head = Atomics.load(this.w, RING.HEAD) >>> 0;
  }

  /**
   * Writes `len` bytes of `src` from `at` as one record, unpublished (see {@link publish}).
   * @returns false when the ring has no room for it.
   */
  write(src: Uint8Array, at: number, len: number): boolean {
    const size = recordBytes(len);
    const pos = this.head & (this.size - 1);
    const toEnd = this.size - pos;
    const need = size <= toEnd ? size : toEnd + size;
    const used = (this.head - (Atomics.load(this.w, RING.TAIL) >>> 0)) >>> 0;
    if (this.size - used < need) return false;
    let p = pos;
    if (size > toEnd) {
      this.u32[p >> 2] = WRAP;
      this.head = (this.head + toEnd) >>> 0;
      p = 0;
    }
    this.u32[p >> 2] = len;
    this.u8.set(at === 0 && len === src.length ? src : src.subarray(at, at + len), p + REC_HDR);
    this.head = (this.head + size) >>> 0;
    return true;
  }

  /** Publishes the records written (the data before the index) and wakes a sleeping consumer. */
  publish(): void {
    Atomics.store(this.w, RING.HEAD, this.head | 0);
    // The head store above is seen before the flag load below (seq-cst): a consumer
    // that set CONS_WAITING after our store re-checks the head and sees our records.
    if (Atomics.load(this.w, RING.CONS_WAITING) !== 0) {
      Atomics.store(this.w, RING.CONS_WAITING, 0);
      Atomics.notify(this.w, RING.HEAD, 1);
      this.notifications++;
    }
  }

  /** Sleeps until the consumer frees space (or `sliceMs`). */
  waitForSpace(sliceMs: number): void {
    const tail = Atomics.load(this.w, RING.TAIL);
    Atomics.store(this.w, RING.PROD_WAITING, 1);
    // Re-check after raising the flag: the consumer may have moved the tail meanwhile.
    if (Atomics.load(this.w, RING.TAIL) !== tail) {
      Atomics.store(this.w, RING.PROD_WAITING, 0);
      return;
    }
    if (Atomics.wait(this.w, RING.TAIL, tail, sliceMs) === 'ok') this.wakeups++;
    Atomics.store(this.w, RING.PROD_WAITING, 0);
  }

  /** Marks the run's last record published, and wakes the consumer. */
  finish(): void {
    this.publish();
    Atomics.store(this.w, RING.DONE, 1);
    Atomics.notify(this.w, RING.HEAD, 1);
    this.notifications++;
  }
}

/** The consuming end. */
class RingConsumer extends RingEnd {
  private tail: number;
  constructor(sab: SharedArrayBuffer) {
    super(sab);
    this.tail = Atomics.load(this.w, RING.TAIL) >>> 0;
  }

  /**
   * Calls `take(offset, len)` for each published record (offset into {@link u8}),
   * at most `max`, then publishes the new tail and wakes a producer waiting for space.
   * @returns how many records were taken.
   */
  drain(max: number, take: (off: number, len: number) => void): number {
    const head = Atomics.load(this.w, RING.HEAD) >>> 0;
    let n = 0;
    while (this.tail !== head && n < max) {
      const pos = this.tail & (this.size - 1);
      const len = this.u32[pos >> 2];
      if (len === WRAP) {
        this.tail = (this.tail + (this.size - pos)) >>> 0;
        continue;
      }
      if (len > this.size - pos - REC_HDR) throw new Error(`minimal ring: record of ${len} bytes at ${pos} runs past the end`);
      take(pos + REC_HDR, len);
      this.tail = (this.tail + recordBytes(len)) >>> 0;
      n++;
    }
    if (n > 0 || this.tail === head) {
      Atomics.store(this.w, RING.TAIL, this.tail | 0);
      if (Atomics.load(this.w, RING.PROD_WAITING) !== 0) {
        Atomics.store(this.w, RING.PROD_WAITING, 0);
        Atomics.notify(this.w, RING.TAIL, 1);
        this.notifications++;
      }
    }
    return n;
  }

  /** Whether the producer finished and everything it published was taken. */
  finished(): boolean {
    return Atomics.load(this.w, RING.DONE) !== 0 && (Atomics.load(this.w, RING.HEAD) >>> 0) === this.tail;
  }

  /** Sleeps until the producer publishes (or `sliceMs`): flag, re-check, wait. */
  waitForData(sliceMs: number): void {
    Atomics.store(this.w, RING.CONS_WAITING, 1);
    const head = Atomics.load(this.w, RING.HEAD);
    if ((head >>> 0) !== this.tail || Atomics.load(this.w, RING.DONE) !== 0) {
      Atomics.store(this.w, RING.CONS_WAITING, 0);
      return;
    }
    if (Atomics.wait(this.w, RING.HEAD, head, sliceMs) === 'ok') this.wakeups++;
    Atomics.store(this.w, RING.CONS_WAITING, 0);
  }
}

function ringSender(s: RelaySetup, a: RelayTxArgs): RelayTxResult {
  const out = new RingProducer(s.outRing!);
  const r = paceFrames(a, (frame, p) => {
    let blocked = 0;
    while (!out.write(frame, 0, frame.length)) {
      out.publish();
      blocked++;
      out.waitForSpace(WAIT_SLICE_MS);
      if (performance.now() > p.giveUp) throw new Error('minimal ring sender: no room before the deadline');
    }
    out.publish();
    return blocked;
  });
  out.finish();
  return { ...r, notifications: out.notifications };
}

/** Records the middle takes per pass before it publishes to the receiver. */
const MIDDLE_BATCH = 64;

function ringMiddle(s: RelaySetup, sw: TinySwitch, deadlineMs: number): RelayMidResult {
  const inp = new RingConsumer(s.inRing!);
  const out = new RingProducer(s.outRing!);
  const giveUp = performance.now() + deadlineMs;
  const f0 = sw.filtered;
  const r: RelayMidResult = { taken: 0, forwarded: 0, drops: 0, filtered: 0, notifications: 0, wakeups: 0 };
  const take = (off: number, len: number) => {
    r.taken++;
    if (!sw.forward(inp.u8, off)) return;
    if (out.write(inp.u8, off, len)) r.forwarded++;
    else r.drops++;
  };
  for (;;) {
    const n = inp.drain(MIDDLE_BATCH, take);
    if (n > 0) {
      out.publish();
      continue;
    }
    if (inp.finished()) break;
    if (performance.now() > giveUp) throw new Error('minimal ring middle: the sender did not finish before the deadline');
    inp.waitForData(WAIT_SLICE_MS);
  }
  out.finish();
  r.filtered = sw.filtered - f0;
  r.notifications = inp.notifications + out.notifications;
  r.wakeups = inp.wakeups + out.wakeups;
  return r;
}

function ringReceiver(s: RelaySetup, runId: number, deadlineMs: number): RelayRxResult {
  const inp = new RingConsumer(s.inRing!);
  const giveUp = performance.now() + deadlineMs;
  const r: RelayRxResult = { frames: 0, bytes: 0, spanMs: 0, other: 0, notifications: 0, wakeups: 0 };
  let first = 0;
  let last = 0;
  const u8 = inp.u8;
  // Each frame is copied out of the ring into the receiver's memory, which is reused
  // for the next frame — as pvio's bench receiver takes lent frames (receiveBatch with
  // borrow) whose memory netfront reuses: a copy per frame, no allocation per frame.
  const mine = new Uint8Array(65536);
  const take = (off: number, len: number) => {
    const f = mine.subarray(0, len);
    f.set(u8.subarray(off, off + len));
    if (f.length >= MIN_BENCH_FRAME && getU32(f, FRAME_RUN_ID) === runId && f[12] === BENCH_ETHERTYPE >> 8) {
      const now = performance.now();
      if (r.frames === 0) first = now;
      last = now;
      r.frames++;
      r.bytes += f.length;
    } else {
      r.other++;
    }
  };
  for (;;) {
    if (inp.drain(MIDDLE_BATCH, take) > 0) continue;
    if (inp.finished()) break;
    if (performance.now() > giveUp) throw new Error('minimal ring receiver: the middle did not finish before the deadline');
    inp.waitForData(WAIT_SLICE_MS);
  }
  r.spanMs = r.frames > 1 ? last - first : 0;
  r.notifications = inp.notifications;
  r.wakeups = inp.wakeups;
  return r;
}

// ---------------------------------------------------------------------------
// Entry

/** Worker entry: `setup` once, then per run `arm` (messageport middle/receiver), `tx`, `relay`/`collect`. */
export function start(): void {
  let setup: RelaySetup | null = null;
  let mp: MpState | null = null;
  const sw = new TinySwitch();
  const need = (): RelaySetup => {
    if (!setup) throw new Error('not set up');
    return setup;
  };
  serve({
    setup: (r: WorkerRequest) => {
      setup = r.setup as RelaySetup;
      if (setup.impl === 'messageport-relay') {
        mp = { setup, ctl: new Int32Array(setup.ctl!), sw, pending: null };
        if (setup.role === 'middle') mpMiddleInstall(mp);
        if (setup.role === 'receiver') mpReceiverInstall(mp);
      }
      return null;
    },
    /** The middle learns that `mac` (a number, see macKey) is behind its egress. */
    learn: (r: WorkerRequest) => {
      sw.learnEgress(r.mac as number);
      return null;
    },
    /** messageport middle/receiver: start collecting a run (answers at once). */
    arm: (r: WorkerRequest) => {
      if (!mp) throw new Error('arm: not a messageport relay');
      if (mp.pending) throw new Error('arm: a run is being collected');
      const result = mp.setup.role === 'middle'
        ? { taken: 0, forwarded: 0, drops: 0, filtered: 0, notifications: 0, wakeups: 0 } satisfies RelayMidResult
        : { frames: 0, bytes: 0, spanMs: 0, other: 0, notifications: 0, wakeups: 0 } satisfies RelayRxResult;
      let resolve!: (v: unknown) => void;
      const done = new Promise((res) => (resolve = res));
      sw.filtered = 0;
      mp.pending = { resolve, result, runId: (r.runId as number) >>> 0, first: 0, last: 0 };
      (mp as MpState & { done?: Promise<unknown> }).done = done;
      return null;
    },
    /** messageport middle/receiver: resolves with the armed run's result once its end marker came. */
    collect: (r: WorkerRequest) => {
      const m = mp as (MpState & { done?: Promise<unknown> }) | null;
      if (!m?.done) throw new Error('collect: nothing armed');
      const done = m.done;
      m.done = undefined;
      let timer: NodeJS.Timeout | undefined;
      return Promise.race([done, new Promise((_, rej) => {
        timer = setTimeout(() => rej(new Error('messageport relay: no end marker before the deadline')), r.deadlineMs as number);
      })]).finally(() => clearTimeout(timer));
    },
    tx: (r: WorkerRequest) => {
      const s = need();
      const a = r.args as RelayTxArgs;
      return s.impl === 'messageport-relay' ? mpSender(mp!, a) : ringSender(s, a);
    },
    /** minimal ring middle: relays one run (synchronously) until the sender is done and drained. */
    relay: (r: WorkerRequest) => ringMiddle(need(), sw, r.deadlineMs as number),
    /** minimal ring receiver: receives one run until the middle is done and drained. */
    rx: (r: WorkerRequest) => ringReceiver(need(), (r.runId as number) >>> 0, r.deadlineMs as number),
  });
}
