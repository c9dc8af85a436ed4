/**
 * netback's data path: one vif queue's tx and rx rings, as Linux's xen-netback
 * serves them (the XenBus side is netback/xenbus.ts, the switch netback/bridge.ts).
 *
 * TX (guest → bridge), per packet: the first slot (its `size` is the whole packet),
 * its extra-info slots (`NETTXF_extra_info`, chained by `XEN_NETIF_EXTRA_FLAG_MORE`;
 * GSO accepted, each answered `NETIF_RSP_NULL`), then the slots chained by
 * `NETTXF_more_data`. Every slot is copied out of the ring once and checked:
 * `offset + size ≤ 4096`, a first slot of at least 14 bytes, a packet of at most
 * 65535 bytes whose fragments add up. A packet over 18 follow-on slots is dropped
 * (each slot answered `NETIF_RSP_ERROR`); over 20, the frontend is deemed malicious
 * and the queue disabled, as Linux's `fatal_skb_slots`. The data is copied with
 * `GNTTABOP_copy` into dom0's bounce pages (copy mode, Linux's way), or — pvio's
 * `feature-persistent` — from the frontend's pages mapped once and kept. The
 * `rate` credit scheduler (bytes per window) holds packets back once the window's
 * credit is spent.
 *
 * RX (bridge → guest): frames wait in a bounded queue (drops counted) until the
 * frontend has posted enough buffers; each slot is answered in the slot of the
 * request that gave the buffer, `NETRXF_more_data` chaining a frame over several.
 *
 * A protocol error (an impossible producer index, more than 20 slots, a broken extra
 * chain, a packet published in part) disables the queue; the domain and the other vifs go on.
 *
 * Scheduling. {@link NetbackScheduler} serves every vif queue of dom0 in passes
 * ({@link NetbackQueue.serve}), round-robin, the event loop turning between rounds.
 * While every guest has the default scheduling weight a pass is at most
 * {@link TX_BATCH} packets from the guest, then every queued frame its rx buffers
 * take. Once a guest's weight is not the default, rounds are weighted between guests
 * (rings/weighted-scheduler.ts) and a pass is bounded by the share it is given: the
 * unit is a packet — a tx packet taken off the tx ring (however many slots; answered
 * OKAY or ERROR) or a queued frame written into the rx buffers — so a guest of weight
 * 512 sending flat out gets about twice the packets forwarded of one of weight 256.
 * Frames written into a guest's rx buffers as they arrive ({@link NetbackQueue.enqueueRx})
 * are the sending guest's pass's work, and are not counted for the receiver.
 *
 * @see xen/include/public/io/netif.h, Linux drivers/net/xen-netback/netback.c
 */
import { BackRing } from '../rings/ring.ts';
import { WeightedRingScheduler } from '../rings/weighted-scheduler.ts';
import { ProtocolError } from '../rings/errors.ts';
import {
  NETIF_EXTRA_INFO, NETIF_EXTRA_INFO_GSO, NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY,
  NETIF_RX_REQUEST, NETIF_RX_RESPONSE, NETIF_RX_RING_ENTRY_SIZE, NETIF_TX_REQUEST, NETIF_TX_RESPONSE,
  NETIF_TX_RING_ENTRY_SIZE, NETRXF_csum_blank, NETRXF_data_validated, NETRXF_more_data, NETTXF_csum_blank,
  NETTXF_extra_info, NETTXF_more_data, XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_GSO_TYPE_TCPV4,
  XEN_NETIF_EXTRA_TYPE_MAX, XEN_NETIF_GSO_TYPE_TCPV6, XEN_NETIF_MAX_TX_SIZE, XEN_NETIF_NR_SLOTS_MIN,
} from '../rings/netif.ts';
import { GNTST, PAGE_SHIFT, PAGE_SIZE, type EvtchnPort, type GrantHandle, type GrantRef } from '../hypervisor/abi.ts';
import type { EventChannels } from '../event-channel/evtchn.ts';
import type { CopyRequest, GrantTable } from '../grant-table/gnttab.ts';
import type { GuestExtent, GuestMemory } from '../hypervisor/guest-memory.ts';
import { FragAllocator, type FragChunk } from '../netfront/frag.ts';

const TX = NETIF_TX_REQUEST.fields;
const RXQ = NETIF_RX_REQUEST.fields;
const EXTRA = NETIF_EXTRA_INFO.fields;
const GSO = NETIF_EXTRA_INFO_GSO.fields;
const ETH_HLEN = 14;
/** More follow-on slots than this and the frontend is deemed malicious (Linux's `fatal_skb_slots` default). */
export const FATAL_SKB_SLOTS = 20;
/** Packets taken from the tx ring per pass (Linux's NAPI weight); the most a weighted serve takes. */
export const TX_BATCH = 64;
/**
 * The rx queue (frames waiting for rx buffers): a frame is dropped (counted) when
 * the queue already holds {@link RX_QUEUE_BYTES} bytes and at least
 * {@link RX_QUEUE_TXQUEUELEN} frames, or {@link RX_QUEUE_FRAMES} frames. Linux bounds
 * its guest rx queue by bytes (`XENVIF_RX_QUEUE_BYTES`, half an rx ring of pages:
 * 128 × 4096) and stops the vif, so frames then wait in the device's qdisc
 * (`txqueuelen` 1000 frames) before they are dropped; this is the two together.
 */
const RX_QUEUE_BYTES = 128 * PAGE_SIZE;
const RX_QUEUE_TXQUEUELEN = 1000;
const RX_QUEUE_FRAMES = 8192;

/**
 * How many `frameBytes`-byte frames a vif's rx queue holds before it drops (the
 * rule above): min(8192, max(1000, ⌊512 KiB / frameBytes⌋)). Rx ring slots come on top.
 */
export function rxQueueCapacity(frameBytes: number): number {
  return Math.min(RX_QUEUE_FRAMES, Math.max(RX_QUEUE_TXQUEUELEN, Math.floor(RX_QUEUE_BYTES / Math.max(1, frameBytes))));
}
/**
 * Bounce extent order (copy mode): 16 pages (the largest extent, and the largest
 * packet: 65535 bytes). A pass batches the grant copies of several packets into one
 * `GNTTABOP_copy` until the bounce is full (Linux batches its copy ops per pass too).
 */
const BOUNCE_ORDER = 4;
const BOUNCE_BYTES = PAGE_SIZE << BOUNCE_ORDER;

/** The credit scheduler's parameters (xl's `rate`): `bytesPerInterval` per `intervalUs`. */
export interface NetbackRate {
  readonly bytesPerInterval: number;
  readonly intervalUs: number;
}

/** What the handshake negotiated for one queue, and where its frames go. */
export interface NetbackQueueOptions {
  /** `vif<domid>.<devid>[-q<N>]`, for log lines. */
  readonly name: string;
  readonly frontDomid: number;
  /** The mapped tx and rx ring pages (initialised by the frontend; we only attach). */
  readonly txMem: Uint8Array;
  readonly rxMem: Uint8Array;
  readonly txPort: EvtchnPort;
  readonly rxPort: EvtchnPort;
  /** pvio's persistent buffer pool (both ends wrote `feature-persistent=1`). */
  readonly persistent: boolean;
  /** The frontend wrote `feature-sg=1`: frames over one page may go to it in several slots. */
  readonly sg: boolean;
  /** The frontend accepts partial checksums (it did not write `feature-no-csum-offload=1`). */
  readonly csumOffload: boolean;
  /** The credit scheduler, or null for no limit. */
  readonly rate: NetbackRate | null;
  /**
   * Hands a frame from the guest to the bridge; `csumBlank` when its L4 checksum is
   * partial. The frame is a view valid only during the call (of dom0's bounce, or in
   * persistent mode of the guest's own granted page, which that guest could rewrite
   * meanwhile: what the bridge forwards is then still only bytes it granted).
   */
  readonly deliver: (frame: Uint8Array, csumBlank: boolean) => void;
  /** Called once when the queue is disabled. */
  readonly onError: (e: Error) => void;
  /** Asks for another pass (rate window opened). */
  readonly kick: () => void;
}

/** Counters of one queue (bytes of frames, Ethernet header included). */
export interface NetbackCounters {
  /**
   * Packets served by passes — tx packets taken off the tx ring (good or answered
   * with an error) plus queued rx frames written into the guest's buffers: the unit
   * {@link NetbackScheduler} weighs guests by (frames written on arrival by
   * {@link NetbackQueue.enqueueRx} are not counted).
   */
  requests: number;
  txPackets: number;
  txBytes: number;
  txSlots: number;
  /** Tx ring slots copied out of the shared ring (each slot of a packet once; compare with the slots consumed). */
  slotCopies: number;
  /** Packets answered NETIF_RSP_ERROR (bad slots, failed copies). */
  txErrors: number;
  /** Passes that stopped because the rate's credit was spent. */
  txCreditStalls: number;
  rxPackets: number;
  rxBytes: number;
  rxSlots: number;
  /** Frames dropped: the queue full, a frame too large for the frontend, a failed copy. */
  rxDropped: number;
  grantCopies: number;
  copyHypercalls: number;
  grantMaps: number;
  persistentHits: number;
  notificationsTx: number;
  notificationsRx: number;
  passes: number;
}

/** One slot of a tx packet, copied out of the ring. */
interface TxSlot {
  gref: number;
  offset: number;
  flags: number;
  id: number;
  size: number;
}

/** A tx packet of the current pass, answered (and handed on) when the batch is flushed. */
interface TxPending {
  /** Request ids of its data slots, first slot first. */
  ids: number[];
  /** Extra-info slots after the first (answered NETIF_RSP_NULL). */
  extras: number;
  total: number;
  csumBlank: boolean;
  /** Copy mode: where in the bounce its bytes land, and how many copy ops it has. */
  at: number;
  copies: number;
  /** Persistent mode: the frame, already copied. */
  frame: Uint8Array | null;
  bad: boolean;
}

/** An rx frame of the current pass, answered when the batch is flushed. */
interface RxPending {
  /** Ids of the rx requests whose buffers it fills, and the bytes in each. */
  ids: number[];
  lens: number[];
  csumBlank: boolean;
  bad: boolean;
  /** Copy ops it queued (copy mode). */
  copies: number;
  bytes: number;
}

/** One netback queue. */
export class NetbackQueue {
  readonly counters: NetbackCounters = {
    requests: 0, txPackets: 0, txBytes: 0, txSlots: 0, slotCopies: 0, txErrors: 0, txCreditStalls: 0, rxPackets: 0, rxBytes: 0, rxSlots: 0,
    rxDropped: 0, grantCopies: 0, copyHypercalls: 0, grantMaps: 0, persistentHits: 0, notificationsTx: 0,
    notificationsRx: 0, passes: 0,
  };
  private readonly tx: BackRing;
  private readonly rx: BackRing;
  /** Private copies of one packet's slots (first, up to 4 extras, up to 20 follow-ons), each read once. */
  private readonly slotBuf = Array.from({ length: FATAL_SKB_SLOTS + XEN_NETIF_EXTRA_TYPE_MAX + 1 }, () => new Uint8Array(NETIF_TX_RING_ENTRY_SIZE));
  private readonly slotDv = this.slotBuf.map((b) => new DataView(b.buffer));
  private readonly rxReqBuf = new Uint8Array(NETIF_RX_RING_ENTRY_SIZE);
  private readonly rxReqDv = new DataView(this.rxReqBuf.buffer);
  private readonly slots: TxSlot[] = Array.from({ length: FATAL_SKB_SLOTS + 2 }, () => ({ gref: 0, offset: 0, flags: 0, id: 0, size: 0 }));
  private readonly rxQueue: Array<{ frame: Uint8Array; csumBlank: boolean; chunk: FragChunk }> = [];
  /** Persistent mode: where a packet of several slots is put together (valid until the next packet). */
  private txScratch: Uint8Array | null = null;
  /** Queued frames are copied into chunks (see netfront/frag.ts). */
  private readonly frags = new FragAllocator();
  /** Bytes of the frames in {@link rxQueue}. */
  private rxQueueBytes = 0;
  /** Rx responses were produced outside a pass (a frame written at once): the next pass pushes them. */
  private rxUnpushed = false;
  /** Persistent mode: the frontend's pages mapped once, by gref (tx read-only, rx writable). */
  private readonly mappedTx = new Map<number, { handle: GrantHandle; page: Uint8Array }>();
  private readonly mappedRx = new Map<number, { handle: GrantHandle; page: Uint8Array }>();
  private readonly txBounce: GuestExtent | null;
  private readonly rxBounce: GuestExtent | null;
  /** Copy mode: the pass's packets waiting for their batched grant copies, in ring order. */
  private readonly txPending: TxPending[] = [];
  private readonly txCopies: CopyRequest[] = [];
  /** Bytes of the tx bounce used by the batch. */
  private txAt = 0;
  private readonly rxPending: RxPending[] = [];
  private readonly rxCopies: CopyRequest[] = [];
  /** Bytes of the rx bounce used by the batch (small frames share a page; no part crosses one). */
  private rxAt = 0;
  private credit: number;
  private creditTimer: NodeJS.Timeout | null = null;
  private dead = false;
  /** Tx packets taken and rx frames written by the current pass (set by serveTx/serveRx). */
  private passTx = 0;
  private passRx = 0;

  constructor(
    private readonly o: NetbackQueueOptions,
    private readonly evtchn: EventChannels,
    private readonly gnttab: GrantTable,
    memory: GuestMemory,
  ) {
    this.tx = BackRing.attach(o.txMem, NETIF_TX_RING_ENTRY_SIZE);
    this.rx = BackRing.attach(o.rxMem, NETIF_RX_RING_ENTRY_SIZE);
    this.txBounce = o.persistent ? null : memory.allocExtent(BOUNCE_ORDER);
    this.rxBounce = o.persistent ? null : memory.allocExtent(BOUNCE_ORDER);
    this.credit = o.rate ? Math.max(o.rate.bytesPerInterval, 128 * 1024) : Infinity; // Linux: burst ≥ 128 KiB
  }

  /** The frontend's domain (whose scheduling weight the queue is served with). */
  get frontDomid(): number {
    return this.o.frontDomid;
  }

  /** Whether a protocol error disabled this queue. */
  get isDead(): boolean {
    return this.dead;
  }

  /** Frames waiting for rx buffers. */
  get rxBacklog(): number {
    return this.rxQueue.length;
  }

  /**
   * Takes a frame for the guest (from the bridge). The frame is only valid during
   * the call (it may be a view of another guest's page or of a bounce reused next
   * pass): when nothing is queued before it and the frontend has posted enough rx
   * buffers, it is copied into them at once (responses pushed by the next pass);
   * else a copy of it waits in the rx queue, which is bounded (drops counted).
   * @param csumBlank its L4 checksum is partial (only passed on to a frontend that accepts offload).
   */
  enqueueRx(frame: Uint8Array, csumBlank: boolean): void {
    if (this.dead) return;
    const queued = this.rxQueue.length;
    if ((this.rxQueueBytes + frame.length > RX_QUEUE_BYTES && queued >= RX_QUEUE_TXQUEUELEN) || queued >= RX_QUEUE_FRAMES || (!this.o.sg && frame.length > PAGE_SIZE)) {
      this.counters.rxDropped++;
      return;
    }
    if (queued === 0) {
      const need = frame.length <= PAGE_SIZE ? 1 : Math.ceil(frame.length / PAGE_SIZE);
      try {
        if (this.rx.unconsumedRequests() >= need) {
          if (!this.o.persistent && !this.rxFits(frame.length, need)) this.flushRx();
          this.rxFrame(frame, csumBlank && this.o.csumOffload, need);
          this.rxUnpushed = true;
          this.o.kick();
          return;
        }
      } catch (e) {
        // The frontend's rx ring is broken (an impossible req_prod): this queue only.
        this.disable(e instanceof Error ? e : new Error(String(e)));
        return;
      }
    }
    this.rxQueueBytes += frame.length;
    const copy = this.frags.copy(frame);
    this.rxQueue.push({ frame: copy, csumBlank, chunk: this.frags.lastChunk });
    this.o.kick();
  }

  /**
   * One pass. With no `budget` (Infinity: plain rounds), up to {@link TX_BATCH}
   * packets from the guest, then every queued frame to it that its posted rx buffers
   * take. With a finite `budget` (weighted rounds, see rings/weighted-scheduler.ts),
   * at most `max(1, ⌊budget⌋)` packets in all, counted in `counters.requests`: while
   * frames wait for the guest and it has rx buffers posted, up to half the budget is
   * kept for them; the packets from the guest take the rest (at most
   * {@link TX_BATCH}), then the frames to it what the tx side left.
   * @returns true when work is left (serve again).
   */
  serve(budget: number = Infinity): boolean {
    if (this.dead) return false;
    this.counters.passes++;
    try {
      let txMax = TX_BATCH;
      let max = Infinity;
      if (budget !== Infinity) {
        max = budget >= 1 ? Math.floor(budget) : 1;
        const keep = this.rxQueue.length > 0 && this.rx.unconsumedRequests() > 0 ? Math.min(this.rxQueue.length, max >> 1) : 0;
        txMax = Math.min(TX_BATCH, max - keep);
      }
      const moreTx = this.serveTx(txMax);
      const moreRx = this.serveRx(max - this.passTx);
      this.counters.requests += this.passTx + this.passRx;
      return moreTx || moreRx;
    } catch (e) {
      this.disable(e instanceof Error ? e : new Error(String(e)));
      return false;
    }
  }

  /** Disables the queue (it is never served again); reported once. */
  disable(e: Error): void {
    if (this.dead) return;
    this.dead = true;
    this.rxQueue.length = 0;
    this.rxQueueBytes = 0;
    if (this.creditTimer) clearTimeout(this.creditTimer);
    this.o.onError(e);
  }

  // ---- TX ----------------------------------------------------------------------

  /** Takes up to `max` (≤ {@link TX_BATCH}) packets from the tx ring. @returns true when more are waiting. */
  private serveTx(max: number): boolean {
    const ring = this.tx;
    let done = 0;
    let stalled = false;
    this.passTx = 0;
    try {
      let avail = ring.unconsumedRequests();
      while (done < max && avail > 0) {
        const n = this.gather(avail); // a packet published in part is a protocol error
        if (this.slotDv[0].getUint16(TX.size.offset, true) > this.credit) {
          this.stallOnCredit();
          stalled = true;
          break;
        }
        ring.reqCons = (ring.reqCons + n) >>> 0; // consumed: the slots were copied by gather()
        if (n === 1 && this.o.persistent) this.txSinglePersistent();
        else this.txPacket(n);
        done++;
        avail -= n;
        if (avail === 0) avail = ring.unconsumedRequests();
      }
      this.passTx = done;
    } finally {
      // The packets taken are answered and handed on even when a later one was fatal or
      // over the credit (Linux's xenvif_tx_action submits the packets built before it).
      this.flushTx();
      if (this.tx.pushResponsesAndCheckNotify()) {
        this.counters.notificationsTx++;
        this.evtchn.notify(this.o.txPort);
      }
    }
    if (stalled) return false;
    return done === max ? true : ring.finalCheckForRequests();
  }

  /**
   * Copies the slots of the packet at `reqCons` (first, extras, follow-ons) once each
   * into private buffers, following the flags of those copies.
   * @returns how many slots it spans.
   * @throws ProtocolError for more than {@link FATAL_SKB_SLOTS} follow-on slots, an
   *   extra-info chain longer than there are extra types, or a packet whose slots run
   *   past the published req_prod (a frontend publishes whole packets; Linux: "Asked
   *   for N slots but exceeds this limit", fatal too — waiting for the rest instead
   *   would re-serve and re-copy the queue every pass, spinning dom0).
   */
  private gather(avail: number): number {
    const ring = this.tx;
    const cons = ring.reqCons;
    ring.copyRequest(cons, this.slotBuf[0]);
    this.counters.slotCopies++;
    let flags = this.slotDv[0].getUint16(TX.flags.offset, true);
    let i = 1;
    if (flags & NETTXF_extra_info) {
      for (let extras = 1; ; extras++) {
        if (extras >= XEN_NETIF_EXTRA_TYPE_MAX) throw new ProtocolError(`${this.o.name}: an extra-info chain longer than the ${XEN_NETIF_EXTRA_TYPE_MAX - 1} extra types`);
        if (i >= avail) throw new ProtocolError(`${this.o.name}: a packet's extra-info slots run past req_prod (published in part)`);
        ring.copyRequest(cons + i, this.slotBuf[i]);
        this.counters.slotCopies++;
        i++;
        if (!(this.slotDv[i - 1].getUint8(EXTRA.flags.offset) & XEN_NETIF_EXTRA_FLAG_MORE)) break;
      }
    }
    let follow = 0;
    while (flags & NETTXF_more_data) {
      if (i >= avail) throw new ProtocolError(`${this.o.name}: a packet's slots run past req_prod (published in part)`);
      if (++follow > FATAL_SKB_SLOTS) throw new ProtocolError(`${this.o.name}: packet of more than ${FATAL_SKB_SLOTS + 1} slots`);
      ring.copyRequest(cons + i, this.slotBuf[i]);
      this.counters.slotCopies++;
      flags = this.slotDv[i].getUint16(TX.flags.offset, true);
      i++;
    }
    return i;
  }

  /** Decodes the `n` gathered slots of one packet, copies its data, answers each slot, hands it on. */
  private txPacket(n: number): void {
    const first = this.slots[0];
    this.readSlot(first, 0);
    let j = 1;
    let bad = false;
    if (first.flags & NETTXF_extra_info) {
      for (;;) {
        const d = this.slotDv[j++];
        const type = d.getUint8(EXTRA.type.offset);
        if (type === XEN_NETIF_EXTRA_TYPE_GSO) {
          const gsoType = d.getUint8(GSO.gso_type.offset);
          const mss = d.getUint16(GSO.gso_size.offset, true);
          if (mss === 0 || (gsoType !== XEN_NETIF_GSO_TYPE_TCPV4 && gsoType !== XEN_NETIF_GSO_TYPE_TCPV6)) bad = true;
        } else if (type === 0 || type >= XEN_NETIF_EXTRA_TYPE_MAX) {
          bad = true; // XEN_NETIF_EXTRA_TYPE_NONE or unknown
        }
        if (!(d.getUint8(EXTRA.flags.offset) & XEN_NETIF_EXTRA_FLAG_MORE)) break;
      }
    }
    const extras = j - 1;
    const follow = n - 1 - extras;
    let rest = 0;
    for (let i = 1; i <= follow; i++) {
      this.readSlot(this.slots[i], j++);
      rest += this.slots[i].size;
    }
    this.counters.txSlots += 1 + follow;
    const total = first.size;
    const firstLen = total - rest;
    if (follow > XEN_NETIF_NR_SLOTS_MIN || total < ETH_HLEN || total > XEN_NETIF_MAX_TX_SIZE || firstLen <= 0) bad = true;
    for (let i = 0; i <= follow && !bad; i++) {
      const s = this.slots[i];
      const len = i === 0 ? firstLen : s.size;
      if (s.offset + len > PAGE_SIZE) bad = true;
    }
    const ids = [first.id];
    for (let i = 1; i <= follow; i++) ids.push(this.slots[i].id);
    const p: TxPending = { ids, extras, total, csumBlank: (first.flags & NETTXF_csum_blank) !== 0, at: 0, copies: 0, frame: null, bad };
    if (!bad) {
      if (this.o.persistent) {
        p.frame = this.copyTxPersistent(follow, firstLen, total);
        p.bad = p.frame === null;
      } else {
        if (this.txAt + total > BOUNCE_BYTES) this.flushTx();
        this.queueTxCopies(p, follow, firstLen);
      }
    }
    // The credit is spent when the packet is taken (its copy may still be pending).
    if (this.credit !== Infinity) this.credit -= total;
    this.txPending.push(p);
    if (this.o.persistent) this.flushTx();
  }

  /**
   * The common case in persistent mode, a packet of one slot (no extras, no
   * follow-ons), without the batch bookkeeping: the same checks as {@link txPacket}
   * (at least 14 bytes, `offset + size ≤ 4096`, a grant that maps), answered at once
   * and handed to the bridge as a view of the kept mapping.
   */
  private txSinglePersistent(): void {
    const d = this.slotDv[0];
    const gref = d.getUint32(TX.gref.offset, true);
    const offset = d.getUint16(TX.offset.offset, true);
    const flags = d.getUint16(TX.flags.offset, true);
    const id = d.getUint16(TX.id.offset, true);
    const size = d.getUint16(TX.size.offset, true);
    const c = this.counters;
    c.txSlots++;
    if (this.credit !== Infinity) this.credit -= size;
    let frame: Uint8Array | null = null;
    if (size >= ETH_HLEN && offset + size <= PAGE_SIZE) {
      const page = this.persistentPage(this.mappedTx, gref, true);
      if (page) frame = page.subarray(offset, offset + size);
    }
    this.respondTx(id, frame ? NETIF_RSP_OKAY : NETIF_RSP_ERROR);
    if (!frame) {
      c.txErrors++;
      return;
    }
    c.txPackets++;
    c.txBytes += size;
    this.o.deliver(frame, (flags & NETTXF_csum_blank) !== 0);
  }

  /** Decodes the private copy `j` of a slot into `s`. */
  private readSlot(s: TxSlot, j: number): void {
    const d = this.slotDv[j];
    s.gref = d.getUint32(TX.gref.offset, true);
    s.offset = d.getUint16(TX.offset.offset, true);
    s.flags = d.getUint16(TX.flags.offset, true);
    s.id = d.getUint16(TX.id.offset, true);
    s.size = d.getUint16(TX.size.offset, true);
  }

  /** Adds the grant copies of a validated packet into the bounce at `txAt` to the batch. */
  private queueTxCopies(p: TxPending, follow: number, firstLen: number): void {
    const dom = this.o.frontDomid;
    const bounce = this.txBounce!;
    p.at = this.txAt;
    let at = this.txAt;
    const start = this.txCopies.length;
    for (let i = 0; i <= follow; i++) {
      const s = this.slots[i];
      let len = i === 0 ? firstLen : s.size;
      let src = s.offset;
      while (len > 0) {
        // A copy may not cross a page on either side: split at the bounce page's end.
        const n = Math.min(len, PAGE_SIZE - (at % PAGE_SIZE));
        this.txCopies.push({ source: { ref: s.gref as GrantRef, domid: dom, offset: src }, dest: { mfn: bounce.mfn + Math.floor(at / PAGE_SIZE), offset: at % PAGE_SIZE }, len: n });
        at += n;
        src += n;
        len -= n;
      }
    }
    p.copies = this.txCopies.length - start;
    this.txAt = at;
  }

  /**
   * Runs the batch's grant copies in one hypercall, then answers every pending
   * packet's slots in ring order (OKAY, NULL for extras, or ERROR) and hands the good
   * ones to the bridge.
   */
  private flushTx(): void {
    if (this.txPending.length === 0) return;
    let st: number[] = [];
    if (this.txCopies.length > 0) {
      st = this.gnttab.copy(this.txCopies);
      this.counters.copyHypercalls++;
      this.counters.grantCopies += this.txCopies.length;
    }
    let k = 0;
    const pending = this.txPending;
    // Answered (the responses are pushed at the end of the pass) and handed on in ring order.
    for (let x = 0; x < pending.length; x++) {
      const p = pending[x];
      if (!p.bad && !this.o.persistent) {
        for (let j = 0; j < p.copies; j++) if (st[k + j] !== GNTST.okay) p.bad = true;
        k += p.copies;
        if (!p.bad) p.frame = this.txBounce!.bytes.subarray(p.at, p.at + p.total); // valid until the next batch
      }
      const status = p.bad ? NETIF_RSP_ERROR : NETIF_RSP_OKAY;
      this.respondTx(p.ids[0], status);
      for (let e = 0; e < p.extras; e++) this.respondTx(0, NETIF_RSP_NULL);
      for (let i = 1; i < p.ids.length; i++) this.respondTx(p.ids[i], status);
      if (p.bad) {
        this.counters.txErrors++;
        continue;
      }
      this.counters.txPackets++;
      this.counters.txBytes += p.total;
      this.o.deliver(p.frame!, p.csumBlank);
    }
    pending.length = 0;
    this.txCopies.length = 0;
    this.txAt = 0;
  }

  /** Persistent mode: copies a validated packet's slots out of the kept mappings. @returns null when a grant does not map. */
  private copyTxPersistent(follow: number, firstLen: number, total: number): Uint8Array | null {
    if (follow === 0) {
      const s = this.slots[0];
      const page = this.persistentPage(this.mappedTx, s.gref, true);
      return page ? page.subarray(s.offset, s.offset + firstLen) : null; // the bridge copies what it keeps
    }
    // Handed on at once (persistent mode flushes each packet) and copied by whoever keeps it: one scratch frame.
    const frame = (this.txScratch ??= new Uint8Array(XEN_NETIF_MAX_TX_SIZE)).subarray(0, total);
    let at = 0;
    for (let i = 0; i <= follow; i++) {
      const s = this.slots[i];
      const len = i === 0 ? firstLen : s.size;
      const page = this.persistentPage(this.mappedTx, s.gref, true);
      if (!page) return null;
      frame.set(page.subarray(s.offset, s.offset + len), at);
      at += len;
    }
    return frame;
  }

  private respondTx(id: number, status: number): void {
    const off = this.tx.produceResponse();
    this.tx.view.setUint16(off + NETIF_TX_RESPONSE.fields.id.offset, id, true);
    this.tx.view.setInt16(off + NETIF_TX_RESPONSE.fields.status.offset, status, true);
  }

  /** Waits for the next rate window. */
  private stallOnCredit(): void {
    this.counters.txCreditStalls++;
    if (this.creditTimer || !this.o.rate) return;
    this.creditTimer = setTimeout(() => {
      this.creditTimer = null;
      this.credit = Math.max(this.o.rate!.bytesPerInterval, 128 * 1024);
      this.o.kick();
    }, Math.max(1, this.o.rate.intervalUs / 1000));
  }

  // ---- RX ----------------------------------------------------------------------

  /** Writes up to `max` queued frames into the posted rx buffers and pushes the responses. @returns true when more can go now. */
  private serveRx(max: number): boolean {
    const ring = this.rx;
    let sent = 0;
    while (this.rxQueue.length > 0 && sent < max) {
      const { frame, csumBlank, chunk } = this.rxQueue[0];
      const need = Math.max(1, Math.ceil(frame.length / PAGE_SIZE));
      if (ring.unconsumedRequests() < need) break; // wait for the frontend's buffers
      this.rxQueue.shift();
      this.rxQueueBytes -= frame.length;
      if (!this.o.persistent && !this.rxFits(frame.length, need)) this.flushRx();
      this.rxFrame(frame, csumBlank && this.o.csumOffload, need);
      this.frags.release(chunk); // written into the guest's buffers (or the bounce): its bytes may be reused
      sent++;
    }
    this.passRx = sent;
    this.flushRx();
    const push = sent > 0 || this.rxUnpushed;
    this.rxUnpushed = false;
    if (push && ring.pushResponsesAndCheckNotify()) {
      this.counters.notificationsRx++;
      this.evtchn.notify(this.o.rxPort);
    }
    // Frames still queued wait for the frontend's refill notification.
    if (this.rxQueue.length > 0) ring.finalCheckForRequests();
    return this.rxQueue.length > 0 && ring.unconsumedRequests() > 0;
  }

  /**
   * Takes the next `need` rx buffers for one frame: persistent mode copies into the
   * kept mappings at once; copy mode stages the frame in the bounce (small frames
   * packed several to a page, no part crossing one) and queues the grant copies for
   * {@link flushRx}.
   */
  private rxFrame(frame: Uint8Array, csumBlank: boolean, need: number): void {
    if (this.o.persistent) {
      this.rxFramePersistent(frame, csumBlank, need);
      return;
    }
    const p: RxPending = { ids: [], lens: [], csumBlank, bad: false, copies: 0, bytes: frame.length };
    const bounce = this.rxBounce;
    for (let i = 0; i < need; i++) {
      this.rx.consumeRequest(this.rxReqBuf);
      const gref = this.rxReqDv.getUint32(RXQ.gref.offset, true);
      const part = need === 1 ? frame : frame.subarray(i * PAGE_SIZE, Math.min(frame.length, (i + 1) * PAGE_SIZE));
      p.ids.push(this.rxReqDv.getUint16(RXQ.id.offset, true));
      p.lens.push(part.length);
      if (this.o.persistent) {
        const page = this.persistentPage(this.mappedRx, gref, false);
        if (page) page.set(part);
        else p.bad = true;
      } else {
        const at = this.rxPlace(part.length);
        bounce!.bytes.set(part, at);
        this.rxCopies.push({ source: { mfn: bounce!.mfn + (at >> PAGE_SHIFT), offset: at & (PAGE_SIZE - 1) }, dest: { ref: gref as GrantRef, domid: this.o.frontDomid, offset: 0 }, len: part.length });
        p.copies++;
      }
    }
    this.counters.rxSlots += need;
    this.rxPending.push(p);
  }

  /** Whether a frame of `len` bytes in `need` parts (of up to a page each) still fits in the rx bounce. */
  private rxFits(len: number, need: number): boolean {
    let at = this.rxAt;
    for (let i = 0; i < need; i++) {
      const n = Math.min(PAGE_SIZE, len - i * PAGE_SIZE);
      if ((at & (PAGE_SIZE - 1)) + n > PAGE_SIZE) at = (at + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
      at += n;
    }
    return at <= BOUNCE_BYTES;
  }

  /** Claims `len` bytes (≤ a page) of the rx bounce that do not cross a page (a grant copy may not). @returns their offset. */
  private rxPlace(len: number): number {
    let at = this.rxAt;
    if ((at & (PAGE_SIZE - 1)) + len > PAGE_SIZE) at = (at + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
    this.rxAt = (at + len + 7) & ~7;
    return at;
  }

  /**
   * Persistent mode: copies a frame into the next `need` posted buffers (mapped once
   * and kept) and answers each slot at once, in its own ring slot.
   */
  private rxFramePersistent(frame: Uint8Array, csumBlank: boolean, need: number): void {
    const ring = this.rx;
    const v = ring.view;
    const F = NETIF_RX_RESPONSE.fields;
    const len = frame.length;
    let bad = false;
    const start = ring.rspProdPvt;
    for (let i = 0; i < need; i++) {
      ring.consumeRequest(this.rxReqBuf);
      const gref = this.rxReqDv.getUint32(RXQ.gref.offset, true);
      const id = this.rxReqDv.getUint16(RXQ.id.offset, true);
      const n = Math.min(PAGE_SIZE, len - i * PAGE_SIZE);
      const page = this.persistentPage(this.mappedRx, gref, false);
      if (!page) bad = true;
      else if (!bad) page.set(need === 1 ? frame : frame.subarray(i * PAGE_SIZE, i * PAGE_SIZE + n));
      let flags = 0;
      if (i < need - 1) flags |= NETRXF_more_data;
      if (i === 0 && csumBlank) flags |= NETRXF_csum_blank | NETRXF_data_validated;
      const off = ring.produceResponse();
      v.setUint16(off + F.id.offset, id, true);
      v.setUint16(off + F.offset.offset, 0, true);
      v.setUint16(off + F.flags.offset, flags, true);
      v.setInt16(off + F.status.offset, n, true);
    }
    this.counters.rxSlots += need;
    if (bad) {
      // A buffer that does not map: every slot of the frame is answered with an error.
      for (let i = 0; i < need; i++) v.setInt16(ring.responseOffset(start + i) + F.status.offset, NETIF_RSP_ERROR, true);
      this.counters.rxDropped++;
      return;
    }
    this.counters.rxPackets++;
    this.counters.rxBytes += len;
  }

  /** Runs the batch's grant copies in one hypercall, then answers each slot in its own ring slot, in order. */
  private flushRx(): void {
    if (this.rxPending.length === 0) return;
    let st: number[] = [];
    if (this.rxCopies.length > 0) {
      st = this.gnttab.copy(this.rxCopies);
      this.counters.copyHypercalls++;
      this.counters.grantCopies += this.rxCopies.length;
    }
    let k = 0;
    const v = this.rx.view;
    const F = NETIF_RX_RESPONSE.fields;
    for (const p of this.rxPending) {
      for (let j = 0; j < p.copies; j++) if (st[k + j] !== GNTST.okay) p.bad = true;
      k += p.copies;
      for (let i = 0; i < p.ids.length; i++) {
        let flags = 0;
        if (i < p.ids.length - 1) flags |= NETRXF_more_data;
        if (i === 0 && p.csumBlank) flags |= NETRXF_csum_blank | NETRXF_data_validated;
        const off = this.rx.produceResponse();
        v.setUint16(off + F.id.offset, p.ids[i], true);
        v.setUint16(off + F.offset.offset, 0, true);
        v.setUint16(off + F.flags.offset, flags, true);
        v.setInt16(off + F.status.offset, p.bad ? NETIF_RSP_ERROR : p.lens[i], true);
      }
      if (p.bad) this.counters.rxDropped++;
      else {
        this.counters.rxPackets++;
        this.counters.rxBytes += p.bytes;
      }
    }
    this.rxPending.length = 0;
    this.rxCopies.length = 0;
    this.rxAt = 0;
  }

  /** A persistent mapping of the frontend's `gref` (made on first use, kept until close). */
  private persistentPage(cache: Map<number, { handle: GrantHandle; page: Uint8Array }>, gref: number, readonly: boolean): Uint8Array | null {
    const hit = cache.get(gref);
    if (hit) {
      this.counters.persistentHits++;
      return hit.page;
    }
    const [m] = this.gnttab.map([{ domid: this.o.frontDomid, ref: gref as GrantRef, readonly }]);
    this.counters.grantMaps++;
    if (m.status !== GNTST.okay || !m.page) return null;
    cache.set(gref, { handle: m.handle, page: m.page });
    return m.page;
  }

  /** Stops serving and unmaps every persistent mapping. */
  close(): void {
    this.dead = true;
    if (this.creditTimer) clearTimeout(this.creditTimer);
    this.rxQueue.length = 0;
    this.rxQueueBytes = 0;
    const handles = [...this.mappedTx.values(), ...this.mappedRx.values()].map((m) => m.handle);
    this.mappedTx.clear();
    this.mappedRx.clear();
    if (handles.length > 0) this.gnttab.unmap(handles);
  }
}

/**
 * Serves every netback queue of dom0: round-robin, a pass of at most
 * {@link TX_BATCH} packets from the guest (then its queued rx frames) per queue per
 * round while every guest has the default weight; weighted between guests by their
 * scheduling weights once one does not, a packet (tx or queued rx) being the unit
 * (see the module comment and {@link WeightedRingScheduler}). Set a guest's weight
 * with `setWeight(domid, weight)`, forget it with `forgetDomain(domid)`.
 */
export class NetbackScheduler extends WeightedRingScheduler<NetbackQueue> {
  constructor() {
    super({ maxBatch: TX_BATCH, plainBudget: Infinity });
  }
}
