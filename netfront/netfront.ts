/**
 * netfront's data path: one queue's tx and rx rings, as Linux's xen-netfront drives
 * them (the XenBus side is netfront/xenbus.ts).
 *
 * TX: a frame becomes one slot per 4096 bytes (more than one only with `feature-sg`):
 * the first slot's `size` is the whole frame, `NETTXF_more_data` chains the rest,
 * and a GSO frame carries an extra-info slot after the first (`NETTXF_extra_info`),
 * which the backend answers with `NETIF_RSP_NULL`. Each data slot's bytes sit in one
 * of our pages, granted read-only to the backend. Copy mode (Xen's rule): the page is
 * granted for this request and the grant ended after its response. Persistent mode
 * (pvio's `feature-persistent` extension, as Mirage does): a fixed pool of pages,
 * granted once, reused; the bytes are copied in.
 *
 * RX: the rx ring is kept full of granted, writable pages (`id` = the slot index).
 * The backend answers in the slot of the request that gave the buffer; a packet over
 * several slots chains them with `NETRXF_more_data`. Copy mode grants each buffer for
 * one response and ends the grant before reading it; persistent mode re-posts the
 * same granted pages.
 *
 * Every response is copied out of the ring once and checked: an unknown or repeated
 * tx id, a NULL tx status with no extra-info slot in flight, an rx size past its page,
 * or an impossible producer index breaks the vif
 * (pending sends reject with {@link NetfrontBrokenError}); it never hangs.
 *
 * @see xen/include/public/io/netif.h, Linux drivers/net/xen-netfront.c
 */
import { FrontRing } from '../rings/ring.ts';
import { PvioError, ProtocolError } from '../rings/errors.ts';
import {
  NETIF_EXTRA_INFO_GSO, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETIF_RX_REQUEST, NETIF_RX_RESPONSE, NETIF_TX_REQUEST,
  NETIF_TX_RESPONSE, NETRXF_csum_blank, NETRXF_extra_info, NETRXF_more_data, NETTXF_csum_blank,
  NETTXF_data_validated, NETTXF_extra_info, NETTXF_more_data, XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_MAX_TX_SIZE,
  XEN_NETIF_NR_SLOTS_MIN,
} from '../rings/netif.ts';
import { PAGE_SIZE, type EvtchnPort, type GrantRef } from '../hypervisor/abi.ts';
import type { EventChannels } from '../event-channel/evtchn.ts';
import type { GrantTable } from '../grant-table/gnttab.ts';
import type { GuestMemory, GuestPage } from '../hypervisor/guest-memory.ts';
import { completeChecksum } from './frame.ts';
import { FragAllocator, type FragChunk } from './frag.ts';

const TX = NETIF_TX_REQUEST.fields;
const TXR = NETIF_TX_RESPONSE.fields;
const RX = NETIF_RX_REQUEST.fields;
const RXR = NETIF_RX_RESPONSE.fields;
const GSO = NETIF_EXTRA_INFO_GSO.fields;
/** Ethernet header bytes: the smallest frame netback accepts. */
const ETH_HLEN = 14;
/** Most frames kept for the receiver before new ones are dropped (counted). */
const RX_QUEUE_MAX = 4096;
const NO_OPTS: SendOptions = Object.freeze({});
const EMPTY = new Uint8Array(0);

/** The vif is broken (a protocol error by the backend, or closed); pending sends reject with it. */
export class NetfrontBrokenError extends PvioError {
  constructor(message: string) {
    super('PVIO_ERR_NETFRONT', message);
  }
}

/** What the handshake negotiated for one queue. */
export interface NetfrontQueueOptions {
  readonly backendDomid: number;
  readonly txRing: FrontRing;
  readonly rxRing: FrontRing;
  /** Port tx notifications go out on (the one channel, or `event-channel-tx`). */
  readonly txPort: EvtchnPort;
  /** Port rx notifications go out on (equal to txPort without split channels). */
  readonly rxPort: EvtchnPort;
  /** pvio's persistent buffer pool (both ends wrote `feature-persistent=1`). */
  readonly persistent: boolean;
  /** `feature-sg` on both ends: frames over one page use several slots. */
  readonly sg: boolean;
  /** `feature-gso-tcpv4` on the backend: GSO frames may be sent. */
  readonly gso: boolean;
  /** Largest frame accepted by {@link NetfrontQueue.send}, in bytes (Ethernet header included). */
  readonly maxFrame: number;
}

/** How to send one frame. */
export interface SendOptions {
  /** The L4 checksum is partial (NETTXF_csum_blank): the receiver's side completes it. */
  readonly csumBlank?: boolean;
  /** GSO: `size` is the MSS in bytes, `type` a `XEN_NETIF_GSO_TYPE_*`. Needs `feature-gso-*`. */
  readonly gso?: { readonly size: number; readonly type: number };
}

/** Counters of one queue (packets and bytes are frames, Ethernet header included). */
export interface NetfrontCounters {
  txPackets: number;
  txBytes: number;
  txSlots: number;
  txErrors: number;
  rxPackets: number;
  rxBytes: number;
  rxSlots: number;
  rxErrors: number;
  /** Frames dropped because the receiver's queue was full. */
  rxDropped: number;
  /** Received partial checksums completed here before delivery. */
  rxCsumCompleted: number;
  notificationsTx: number;
  notificationsRx: number;
  events: number;
  /** Grants that could not be ended at once (the backend still held them): their pages are kept aside. */
  grantsDeferred: number;
}

/** A tx slot in flight: the page its bytes are in and its grant (copy mode: this request's). */
interface TxShadow {
  page: GuestPage;
  gref: GrantRef;
  /** Pages are returned to the pool; copy-mode grants ended. */
  persistent: boolean;
}

/** An rx buffer posted in a ring slot. */
interface RxBuffer {
  page: GuestPage;
  gref: GrantRef;
}

/** One netfront queue: its tx and rx rings and buffers. */
export class NetfrontQueue {
  readonly counters: NetfrontCounters = {
    txPackets: 0, txBytes: 0, txSlots: 0, txErrors: 0, rxPackets: 0, rxBytes: 0, rxSlots: 0, rxErrors: 0,
    rxDropped: 0, rxCsumCompleted: 0, notificationsTx: 0, notificationsRx: 0, events: 0, grantsDeferred: 0,
  };
  private readonly tx: FrontRing;
  private readonly rx: FrontRing;
  private readonly txShadow: Array<TxShadow | null>;
  private readonly txFreeIds: number[] = [];
  /** Idle tx pages (persistent mode: each with its grant). */
  /** Copy mode: idle tx pages, granted afresh for each request. */
  private readonly txPool: GuestPage[] = [];
  /** Persistent mode: the idle tx slots, each a page with its grant, reused as they are. */
  private readonly txPersistentPool: TxShadow[] = [];
  private readonly rxBufs: Array<RxBuffer | null>;
  /** Persistent mode: the rx pages and their grants, by slot. */
  private readonly rxPersistent: RxBuffer[] = [];
  private readonly txWaiters: Array<() => void> = [];
  /** Received frames not yet taken: `rxFrames[rxHead ..]` (compacted when the head passes half), and their chunks. */
  private rxFrames: Uint8Array[] = [];
  private rxChunks: FragChunk[] = [];
  private rxHead = 0;
  /** Chunks of the frames lent by the last borrowing take, given back at the next. */
  private readonly lent: FragChunk[] = [];
  private rxWaiter: (() => void) | null = null;
  /** Slots of the packet being received. */
  /** Data slots of the packet being received (its bytes are appended to {@link frags} as they come). */
  private rxSlotsSeen = 0;
  private rxCsumBlank = false;
  private rxBad = false;
  private rxExtraNext = false;
  /** The next rx data slot starts a packet. */
  private rxFirst = true;
  /** Received frames are copied out of their buffers into chunks (see netfront/frag.ts). */
  private readonly frags = new FragAllocator();
  private broken: Error | null = null;
  /** Extra-info slots sent and not yet answered (each gets one NETIF_RSP_NULL). */
  private txExtrasInFlight = 0;
  private readonly txBuf = new Uint8Array(NETIF_TX_REQUEST.size);
  private readonly txDv = new DataView(this.txBuf.buffer);
  private readonly rspBuf = new Uint8Array(NETIF_RX_RESPONSE.size);
  private readonly rspDv = new DataView(this.rspBuf.buffer);

  constructor(
    private readonly o: NetfrontQueueOptions,
    private readonly evtchn: EventChannels,
    private readonly gnttab: GrantTable,
    private readonly memory: GuestMemory,
  ) {
    this.tx = o.txRing;
    this.rx = o.rxRing;
    this.txShadow = new Array<TxShadow | null>(this.tx.size).fill(null);
    for (let id = this.tx.size - 1; id >= 0; id--) this.txFreeIds.push(id);
    this.rxBufs = new Array<RxBuffer | null>(this.rx.size).fill(null);
    if (o.persistent) {
      for (const page of memory.allocPages(this.tx.size)) this.txPersistentPool.push({ page, gref: gnttab.grantAccess(o.backendDomid, page.mfn, true), persistent: true });
      for (const page of memory.allocPages(this.rx.size)) this.rxPersistent.push({ page, gref: gnttab.grantAccess(o.backendDomid, page.mfn, false) });
    }
    this.refillRx();
  }

  /** Whether a protocol error or a close broke this queue. */
  get isBroken(): boolean {
    return this.broken !== null;
  }

  /** Slots a frame of `bytes` needs (data slots plus a GSO extra). */
  private slotsFor(bytes: number, gso: boolean): number {
    return Math.max(1, Math.ceil(bytes / PAGE_SIZE)) + (gso ? 1 : 0);
  }

  /**
   * Queues `frame` (an Ethernet frame, copied before this returns) on the tx ring
   * and notifies the backend if it asks to be. Waits while the ring is full.
   * @throws NetfrontBrokenError when the vif is broken; RangeError for a frame
   *   under 14 bytes, over {@link NetfrontQueueOptions.maxFrame} (or one page without
   *   `feature-sg`), or a GSO request the backend did not offer.
   */
  async send(frame: Uint8Array, opts: SendOptions = NO_OPTS): Promise<void> {
    const need = this.checkFrame(frame, opts);
    while (!this.broken && (this.tx.freeRequests() < need || this.txFreeIds.length < need)) {
      await new Promise<void>((r) => this.txWaiters.push(r));
    }
    if (this.broken) throw new NetfrontBrokenError(this.broken.message);
    this.commitTx(frame, opts);
  }

  /**
   * Like {@link send}, but never waits: queues `frame` (copied before this returns)
   * when the tx ring has room for it, else returns false and queues nothing (Linux's
   * `netif_stop_queue` point). A sender that loops on it sends a burst with no
   * promise per frame.
   * @returns true when the frame was queued.
   * @throws NetfrontBrokenError when the vif is broken; RangeError as {@link send}.
   */
  trySend(frame: Uint8Array, opts: SendOptions = NO_OPTS): boolean {
    const need = this.checkFrame(frame, opts);
    if (this.broken) throw new NetfrontBrokenError(this.broken.message);
    if (this.tx.freeRequests() < need || this.txFreeIds.length < need) return false;
    this.commitTx(frame, opts);
    return true;
  }

  /** Checks a frame against what was negotiated. @returns the slots it needs. @throws RangeError. */
  private checkFrame(frame: Uint8Array, opts: SendOptions): number {
    if (frame.length < ETH_HLEN) throw new RangeError(`frame of ${frame.length} bytes is shorter than an Ethernet header`);
    if (frame.length > this.o.maxFrame || frame.length > XEN_NETIF_MAX_TX_SIZE) throw new RangeError(`frame of ${frame.length} bytes is over the ${this.o.maxFrame}-byte limit`);
    if (!this.o.sg && frame.length > PAGE_SIZE) throw new RangeError(`frame of ${frame.length} bytes needs feature-sg`);
    if (opts.gso && !this.o.gso) throw new RangeError('the backend did not offer GSO');
    const need = this.slotsFor(frame.length, opts.gso !== undefined);
    if (need - 1 > XEN_NETIF_NR_SLOTS_MIN) throw new RangeError(`frame needs ${need} slots`);
    return need;
  }

  /** Writes the frame's slots, pushes them and notifies the backend if it asks to be. */
  private commitTx(frame: Uint8Array, opts: SendOptions): void {
    this.produceTx(frame, opts);
    this.counters.txPackets++;
    this.counters.txBytes += frame.length;
    if (this.tx.pushRequestsAndCheckNotify()) {
      this.counters.notificationsTx++;
      this.evtchn.notify(this.o.txPort);
    }
  }

  /** Writes the frame's slots (and a GSO extra) into the tx ring. */
  private produceTx(frame: Uint8Array, opts: SendOptions): void {
    let off = 0;
    let first = true;
    while (first || off < frame.length) {
      const n = Math.min(PAGE_SIZE, frame.length - off);
      const id = this.txFreeIds.pop()!;
      const slot = this.takeTxPage();
      slot.page.bytes.set(n === frame.length ? frame : frame.subarray(off, off + n));
      this.txShadow[id] = slot;
      let flags = 0;
      if (off + n < frame.length) flags |= NETTXF_more_data;
      if (first && opts.csumBlank) flags |= NETTXF_csum_blank | NETTXF_data_validated;
      if (first && opts.gso) flags |= NETTXF_extra_info;
      const d = this.txDv;
      d.setUint32(TX.gref.offset, slot.gref, true);
      d.setUint16(TX.offset.offset, 0, true);
      d.setUint16(TX.flags.offset, flags, true);
      d.setUint16(TX.id.offset, id, true);
      d.setUint16(TX.size.offset, first ? frame.length : n, true);
      this.tx.produceRequestFrom(this.txBuf);
      this.counters.txSlots++;
      if (first && opts.gso) this.produceGsoExtra(opts.gso);
      off += n;
      first = false;
    }
  }

  /** An extra-info slot carrying GSO; it uses a tx id too (its response is NETIF_RSP_NULL). */
  private produceGsoExtra(gso: { size: number; type: number }): void {
    const b = new Uint8Array(NETIF_TX_REQUEST.size);
    const d = new DataView(b.buffer);
    d.setUint8(GSO.type.offset, XEN_NETIF_EXTRA_TYPE_GSO);
    d.setUint8(GSO.flags.offset, 0);
    d.setUint16(GSO.gso_size.offset, gso.size, true);
    d.setUint8(GSO.gso_type.offset, gso.type);
    this.tx.produceRequestFrom(b);
    this.counters.txSlots++;
    this.txExtrasInFlight++;
  }

  /** A page for one tx slot: from the pool, granted for this request in copy mode. */
  private takeTxPage(): TxShadow {
    if (this.o.persistent) return this.txPersistentPool.pop()!;
    const page = this.txPool.pop() ?? this.memory.allocPage();
    return { page, gref: this.gnttab.grantAccess(this.o.backendDomid, page.mfn, true), persistent: false };
  }

  /** Posts an rx buffer in every free rx slot and notifies the backend if it asks. */
  private refillRx(): void {
    let posted = 0;
    while (this.rx.freeRequests() > 0) {
      const idx = this.rx.reqProdPvt;
      const slot = idx & (this.rx.size - 1);
      let buf: RxBuffer;
      if (this.o.persistent) buf = this.rxPersistent[slot];
      else {
        const page = this.memory.allocPage();
        buf = { page, gref: this.gnttab.grantAccess(this.o.backendDomid, page.mfn, false) };
      }
      this.rxBufs[slot] = buf;
      const off = this.rx.produceRequest();
      this.rx.view.setUint16(off + RX.id.offset, slot, true);
      this.rx.view.setUint32(off + RX.gref.offset, buf.gref, true);
      posted++;
    }
    if (posted > 0 && this.rx.pushRequestsAndCheckNotify()) {
      this.counters.notificationsRx++;
      this.evtchn.notify(this.o.rxPort);
    }
  }

  /**
   * The event handler (both ports): reaps tx responses, receives rx packets, refills
   * the rx ring. A protocol error breaks the queue (see the module comment).
   */
  onEvent(): void {
    if (this.broken) return;
    this.counters.events++;
    try {
      // Tx completions: ask to be notified only when half of what is in flight has been
      // answered (Linux netfront's tx rsp_event, "halfway"), so a busy sender is not
      // woken per packet; with nothing in flight, on the next response.
      do this.reapTx(); while (this.tx.finalCheckForResponses(((this.tx.reqProdPvt - this.tx.rspCons) >>> 1) + 1));
      do this.receiveRx(); while (this.rx.finalCheckForResponses());
      this.refillRx();
    } catch (e) {
      this.breakQueue(e instanceof Error ? e : new Error(String(e)));
    }
  }

  private reapTx(): void {
    for (let n = this.tx.unconsumedResponses(); n > 0; n--) {
      this.tx.consumeResponse(this.rspBuf, NETIF_TX_RESPONSE.size);
      const id = this.rspDv.getUint16(TXR.id.offset, true);
      const status = this.rspDv.getInt16(TXR.status.offset, true);
      if (status === NETIF_RSP_NULL) {
        // The answer to an extra-info slot. One for a data slot would leave that id in
        // flight for good (its ring slot is answered): after 256, every send would wait forever.
        if (this.txExtrasInFlight === 0) throw new ProtocolError('netfront: a NULL tx response with no extra-info slot in flight');
        this.txExtrasInFlight--;
        continue;
      }
      const s = id < this.txShadow.length ? this.txShadow[id] : null;
      if (!s) throw new ProtocolError(`netfront: tx response for id ${id}, not in flight`);
      this.txShadow[id] = null;
      this.txFreeIds.push(id);
      if (status !== NETIF_RSP_OKAY) this.counters.txErrors++;
      if (s.persistent) this.txPersistentPool.push(s);
      else if (this.gnttab.endAccess(s.gref)) this.txPool.push(s.page);
      else this.counters.grantsDeferred++; // still mapped by the backend: never reuse that page
    }
    const waiters = this.txWaiters.splice(0);
    for (const w of waiters) w();
  }

  private receiveRx(): void {
    const mask = this.rx.size - 1;
    for (let n = this.rx.unconsumedResponses(); n > 0; n--) {
      const slot = this.rx.rspCons & mask;
      this.rx.consumeResponse(this.rspBuf, NETIF_RX_RESPONSE.size);
      const buf = this.rxBufs[slot];
      this.rxBufs[slot] = null;
      if (!buf) throw new ProtocolError(`netfront: rx response in slot ${slot}, which holds no buffer`);
      if (this.rxExtraNext) {
        // An extra-info slot (GSO of the packet): nothing to read; its buffer is reused.
        this.rxExtraNext = (this.rspDv.getUint8(1) & 1) !== 0; // XEN_NETIF_EXTRA_FLAG_MORE
        this.releaseRx(buf);
        continue;
      }
      const offset = this.rspDv.getUint16(RXR.offset.offset, true);
      const flags = this.rspDv.getUint16(RXR.flags.offset, true);
      const status = this.rspDv.getInt16(RXR.status.offset, true);
      this.counters.rxSlots++;
      if (status >= 0 && offset + status > PAGE_SIZE) throw new ProtocolError(`netfront: rx response of ${status} bytes at offset ${offset} runs past its page`);
      // A packet's slots are copied one after the other into one frame (no concatenation after).
      if (this.rxFirst) this.frags.start((flags & NETRXF_more_data) !== 0 ? XEN_NETIF_MAX_TX_SIZE : Math.max(0, status));
      if (!this.releaseRx(buf)) {
        this.rxBad = true; // the buffer is still mapped by the backend: its bytes cannot be trusted
      } else if (status < 0) {
        this.rxBad = true;
      } else if (++this.rxSlotsSeen > XEN_NETIF_NR_SLOTS_MIN + 1) {
        this.rxBad = true; // more slots than any packet has: dropped, as Linux's "too many slots"
      } else if (!this.rxBad) {
        this.frags.append(buf.page.bytes, offset, status);
      }
      if (this.rxFirst) this.rxCsumBlank = (flags & NETRXF_csum_blank) !== 0;
      this.rxFirst = false;
      if (flags & NETRXF_extra_info) this.rxExtraNext = true;
      if (flags & NETRXF_more_data) continue;
      this.finishRxPacket();
    }
  }

  /** Ends a copy-mode buffer's grant (false when the backend still holds it); persistent buffers stay. */
  private releaseRx(buf: RxBuffer): boolean {
    if (this.o.persistent) return true;
    if (this.gnttab.endAccess(buf.gref)) {
      this.memory.freePage(buf.page);
      return true;
    }
    this.counters.grantsDeferred++;
    return false;
  }

  private finishRxPacket(): void {
    const len = this.frags.building;
    const bad = this.rxBad || len < ETH_HLEN;
    this.rxSlotsSeen = 0;
    this.rxBad = false;
    this.rxFirst = true;
    if (bad) {
      this.frags.abort();
      this.counters.rxErrors++;
      return;
    }
    const frame = this.frags.finish();
    if (this.rxCsumBlank && completeChecksum(frame)) this.counters.rxCsumCompleted++;
    this.counters.rxPackets++;
    this.counters.rxBytes += len;
    if (this.rxFrames.length - this.rxHead >= RX_QUEUE_MAX) {
      this.frags.release(this.frags.lastChunk);
      this.counters.rxDropped++;
      return;
    }
    this.rxFrames.push(frame);
    this.rxChunks.push(this.frags.lastChunk);
    const w = this.rxWaiter;
    this.rxWaiter = null;
    w?.();
  }

  /**
   * The next received frame, waiting up to `timeoutMs` (null when none came, or the
   * queue is broken and empty).
   */
  async receive(timeoutMs: number): Promise<Uint8Array | null> {
    await this.waitRx(timeoutMs);
    return this.tryReceive();
  }

  /** Waits up to `timeoutMs` until a frame is pending or the queue is broken (returns at once if so). */
  async waitRx(timeoutMs: number): Promise<void> {
    if (this.pendingRx === 0 && !this.broken) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          if (this.rxWaiter === done) this.rxWaiter = null;
          resolve();
        }, timeoutMs);
        const done = () => {
          clearTimeout(t);
          resolve();
        };
        this.rxWaiter = done;
      });
    }
  }

  /** The next received frame if there is one (the caller's to keep), else null; never waits. */
  tryReceive(): Uint8Array | null {
    return this.take(false);
  }

  /**
   * The next received frame if there is one, else null; never waits. The frame is
   * lent: its bytes stay valid until {@link releaseLent} (then they are reused for
   * later frames), so taking frames this way allocates nothing.
   */
  tryReceiveLent(): Uint8Array | null {
    return this.take(true);
  }

  /** Gives back every frame lent by {@link tryReceiveLent}. */
  releaseLent(): void {
    const l = this.lent;
    for (let i = 0; i < l.length; i++) this.frags.release(l[i]);
    l.length = 0;
  }

  private take(lend: boolean): Uint8Array | null {
    const q = this.rxFrames;
    const h = this.rxHead;
    if (h >= q.length) return null;
    const f = q[h];
    const c = this.rxChunks[h];
    if (lend) this.lent.push(c);
    else this.frags.pin(c);
    q[h] = EMPTY;
    this.rxHead = h + 1;
    if (this.rxHead === q.length) {
      q.length = 0;
      this.rxChunks.length = 0;
      this.rxHead = 0;
    } else if (this.rxHead >= 1024 && this.rxHead * 2 >= q.length) {
      this.rxFrames = q.slice(this.rxHead);
      this.rxChunks = this.rxChunks.slice(this.rxHead);
      this.rxHead = 0;
    }
    return f;
  }

  /** Frames received and not yet taken. */
  get pendingRx(): number {
    return this.rxFrames.length - this.rxHead;
  }

  /** Breaks the queue: senders and the receiver are released with the error. */
  breakQueue(e: Error): void {
    if (this.broken) return;
    this.broken = e;
    for (const w of this.txWaiters.splice(0)) w();
    const r = this.rxWaiter;
    this.rxWaiter = null;
    r?.();
  }

  /**
   * Ends every grant this queue made (after the backend has unmapped: the device is
   * closed). @returns how many grants could not be ended (still mapped).
   */
  endGrants(): number {
    let stuck = 0;
    const end = (g: GrantRef) => {
      if (!this.gnttab.endAccess(g)) stuck++;
    };
    for (const s of this.txShadow) if (s && !s.persistent) end(s.gref);
    for (const b of this.rxBufs) if (b && !this.o.persistent) end(b.gref);
    if (this.o.persistent) {
      for (const p of this.txPersistentPool) end(p.gref);
      for (const s of this.txShadow) if (s?.persistent) end(s.gref);
      for (const b of this.rxPersistent) end(b.gref);
    }
    return stuck;
  }
}
