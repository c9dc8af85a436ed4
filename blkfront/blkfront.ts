/**
 * blkfront's data path: the guest's virtual disk over one or more blkif rings.
 *
 * Read top to bottom as Linux's xen-blkfront.c: the negotiated features, grant
 * helpers (the persistent pool or fresh grants), request builders (direct,
 * indirect, discard, flush/barrier), completion. Every request in flight has a
 * private *shadow* (its id is the shadow's index): the operation, the pages granted
 * for it and the promise to settle. Every response is copied out of the ring once
 * and checked — id in range, in flight, operation matches (the inner operation for
 * an indirect request, as Linux checks) — and a violation (like an impossible
 * `rsp_prod`) disables the device: every pending and later I/O fails with the
 * ProtocolError.
 *
 * A large I/O is split into requests of up to {@link BlkfrontFeatures.maxSegments}
 * pages: 11 in a direct request, more (256 = 1 MiB by default) through indirect
 * pages of segment descriptors when the backend offers
 * `feature-max-indirect-segments`. Chunks go to the least busy queue; each queue
 * puts as many on its ring as it has slots, the rest wait and are pushed as
 * responses free slots.
 *
 * Data goes through bounce pages from the domain's memory:
 * - with `feature-persistent`, from a per-queue pool of pages granted once,
 *   writable, and reused last-in first-out (the backend keeps them mapped);
 * - without, granted fresh per request (read-only for WRITE, writable for READ) and
 *   ended after the response; a grant the backend still holds is put aside and
 *   retried (XSA-396), never reused.
 *
 * @see io/blkif.h, Linux drivers/block/xen-blkfront.c
 */
import { ProtocolError, PvioError, invariant } from '../rings/errors.ts';
import { FrontRing } from '../rings/ring.ts';
import {
  BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ,
  BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_OKAY, BLKIF_SEGS_PER_INDIRECT_FRAME,
  SECTOR_SIZE, writeBlkifSegment,
  type BlkifAbi, type BlkifDiscardRequest, type BlkifIndirectRequest, type BlkifRequest, type BlkifResponse, type BlkifSegment,
} from '../rings/blkif.ts';
import { PAGE_SIZE, type EvtchnPort, type GrantRef } from '../hypervisor/abi.ts';
import type { EventChannels } from '../event-channel/evtchn.ts';
import type { GrantTable } from '../grant-table/gnttab.ts';
import type { GuestMemory, GuestPage } from '../hypervisor/guest-memory.ts';

/** Sectors (512 B) per 4 KiB page. */
const SECTORS_PER_PAGE = PAGE_SIZE / SECTOR_SIZE;
/** The most segments blkfront puts in one indirect request (1 MiB), whatever the backend offers. */
export const BLKFRONT_MAX_INDIRECT_SEGMENTS = 256;

/** An I/O failed: the backend answered `status` (a `BLKIF_RSP_*`), or the device is gone. */
export class BlkError extends PvioError {
  constructor(readonly status: number, message: string) {
    super('PVIO_ERR_BLK', message);
  }
}

/**
 * What this disk negotiated with its backend (the backend's XenStore keys, limited
 * by blkfront's own maxima). `flush`, `barrier` and `discard` turn false when the
 * backend answers such a request `BLKIF_RSP_EOPNOTSUPP` (as Linux blkfront does).
 */
export interface BlkfrontFeatures {
  /** `feature-flush-cache`: flush() sends BLKIF_OP_FLUSH_DISKCACHE. */
  flush: boolean;
  /** `feature-barrier`: flush() sends a dataless BLKIF_OP_WRITE_BARRIER when there is no flush-cache. */
  barrier: boolean;
  /** `feature-discard`: discard() sends BLKIF_OP_DISCARD. */
  discard: boolean;
  /** `discard-zeroes` (pvio's key): a discarded range reads back as zeroes. */
  discardZeroes: boolean;
  /** `discard-granularity` in bytes (default the sector size). */
  discardGranularity: number;
  /** `discard-alignment` in bytes (default 0). */
  discardAlignment: number;
  /** `feature-persistent` on both ends. */
  persistent: boolean;
  /** Most 4 KiB segments per request: 11 (direct only) or the indirect maximum. */
  maxSegments: number;
  /** Pages of each ring (2^`ring-page-order`). */
  ringPages: number;
  /** Rings (`multi-queue-num-queues`, 1 when not negotiated). */
  queues: number;
}

/** What every queue of one disk shares. */
export interface BlkfrontDiskInfo {
  readonly backendDomid: number;
  /** The `handle` field of requests (the virtual-device number's low 16 bits). */
  readonly handle: number;
  readonly abi: BlkifAbi;
  /** Disk size in 512-byte sectors (from the backend's `sectors`; changes on resize). */
  sectors: number;
  /** Logical sector size in bytes (`sector-size`, 512 or 4096): I/O must align to it. */
  readonly sectorSize: number;
  readonly readOnly: boolean;
  readonly features: BlkfrontFeatures;
}

/** Counters of one blkfront ring. */
export interface BlkfrontCounters {
  requests: number;
  /** Requests sent as BLKIF_OP_INDIRECT. */
  indirectRequests: number;
  responses: number;
  /** Event-channel notifications sent to the backend. */
  notifications: number;
  /** Pushes that needed no notification (the backend was awake). */
  notificationsSuppressed: number;
  /** Responses seen per event (sum), for responses-per-interrupt. */
  events: number;
  bytesRead: number;
  bytesWritten: number;
  /** Bytes (512-byte multiples) discarded successfully. */
  bytesDiscarded: number;
  /** Most requests in flight at once. */
  maxInFlight: number;
  /** Grants issued: fresh per-request grants plus persistent pages added to the pool. */
  grantsIssued: number;
  /** Pages of the persistent pool (granted once, reused). */
  persistentPool: number;
  /** Grants the backend still held after the response (retried later). */
  deferredGrants: number;
}

/** A page granted to the backend. */
interface Granted {
  page: GuestPage;
  gref: GrantRef;
}

interface Shadow {
  /** The operation the response must carry (the inner one for an indirect request). */
  operation: number;
  pages: Granted[];
  /** Indirect pages of segment descriptors. */
  indirect: Granted[];
  sectors: number;
  /** Where the data goes (READ) or comes from (WRITE), and its offset. */
  buf: Uint8Array | null;
  bufOff: number;
  done: (status: number) => void;
}

/** One request waiting for a ring slot. `sector`/`sectors` in 512-byte units. */
interface Queued {
  operation: number;
  sector: number;
  sectors: number;
  buf: Uint8Array | null;
  bufOff: number;
  done: (status: number) => void;
}

/** What one queue's data path needs from the domain. */
export interface BlkfrontRingOptions {
  readonly info: BlkfrontDiskInfo;
  /** The ring extent, already initialised by {@link FrontRing.init} (frontend only). */
  readonly ring: FrontRing;
  readonly port: EvtchnPort;
}

/** The data path of one queue (one ring and event channel) of a virtual disk. */
export class BlkfrontRing {
  readonly counters: BlkfrontCounters = {
    requests: 0, indirectRequests: 0, responses: 0, notifications: 0, notificationsSuppressed: 0, events: 0,
    bytesRead: 0, bytesWritten: 0, bytesDiscarded: 0, maxInFlight: 0, grantsIssued: 0, persistentPool: 0, deferredGrants: 0,
  };
  private readonly info: BlkfrontDiskInfo;
  private readonly ring: FrontRing;
  private readonly shadow: Array<Shadow | null>;
  private readonly freeIds: number[] = [];
  private readonly queue: Queued[] = [];
  /** Persistent grants not in use, reused last-in first-out. */
  private readonly pool: Granted[] = [];
  private readonly deferred: Granted[] = [];
  private readonly rspBuf: Uint8Array;
  private readonly rspDv: DataView;
  private readonly rsp: BlkifResponse = { id: 0, operation: 0, status: 0 };
  private readonly req: BlkifRequest = { operation: 0, nrSegments: 0, handle: 0, id: 0, sectorNumber: 0, segments: [] };
  private readonly ind: BlkifIndirectRequest = {
    operation: BLKIF_OP_INDIRECT, indirectOp: 0, nrSegments: 0, handle: 0, id: 0, sectorNumber: 0, indirectGrefs: [],
  };
  private readonly disc: BlkifDiscardRequest = { operation: BLKIF_OP_DISCARD, flag: 0, handle: 0, id: 0, sectorNumber: 0, nrSectors: 0 };
  private readonly seg: BlkifSegment = { gref: 0, firstSect: 0, lastSect: 0 };
  private broken: Error | null = null;
  private inFlight = 0;
  /** Called once when this queue is disabled (BlkfrontIo disables the disk's other queues). */
  onDisable: ((e: Error) => void) | null = null;

  constructor(
    readonly opts: BlkfrontRingOptions,
    private readonly evtchn: EventChannels,
    private readonly gnttab: GrantTable,
    private readonly memory: GuestMemory,
  ) {
    this.info = opts.info;
    this.ring = opts.ring;
    const n = opts.ring.size;
    this.shadow = new Array(n).fill(null);
    for (let i = n - 1; i >= 0; i--) this.freeIds.push(i);
    this.rspBuf = new Uint8Array(opts.info.abi.entrySize);
    this.rspDv = new DataView(this.rspBuf.buffer);
    for (let i = 0; i < BLKIF_MAX_SEGMENTS_PER_REQUEST; i++) this.req.segments.push({ gref: 0, firstSect: 0, lastSect: 0 });
  }

  /** Requests on the ring now. */
  get requestsInFlight(): number {
    return this.inFlight;
  }

  /** Requests on the ring plus those waiting for a slot: how busy this queue is. */
  get load(): number {
    return this.inFlight + this.queue.length;
  }

  /** The error that disabled the device, if any. */
  get error(): Error | null {
    return this.broken;
  }

  /**
   * Queues one request: `sectors` 512-byte sectors at `sector` for READ/WRITE (at
   * most {@link BlkfrontFeatures.maxSegments} pages; `buf` from `bufOff`), the range
   * for DISCARD, none for FLUSH_DISKCACHE / WRITE_BARRIER. `done` gets the blkif
   * status (-1 when the device is or becomes disabled).
   */
  submit(operation: number, sector: number, sectors: number, buf: Uint8Array | null, bufOff: number, done: (status: number) => void): void {
    if (this.broken) {
      done(-1);
      return;
    }
    this.queue.push({ operation, sector, sectors, buf, bufOff, done });
    this.kick();
  }

  // ---- request builders --------------------------------------------------------

  /** Puts as many queued requests on the ring as it has room for, then pushes once. */
  private kick(): void {
    let produced = 0;
    while (this.queue.length > 0 && !this.ring.isFull() && this.freeIds.length > 0) {
      const q = this.queue.shift()!;
      try {
        this.produce(q);
        produced++;
      } catch (e) {
        q.done(-1);
        if (!(e instanceof PvioError)) throw e;
      }
    }
    if (produced > 0) {
      if (this.ring.pushRequestsAndCheckNotify()) {
        this.counters.notifications++;
        this.evtchn.notify(this.opts.port);
      } else {
        this.counters.notificationsSuppressed++;
      }
    }
  }

  /** A page for the backend: from the persistent pool, or freshly granted (`readonly` for its side). */
  private grantPage(readonly: boolean): Granted {
    if (this.info.features.persistent) {
      const g = this.pool.pop();
      if (g) return g;
      // Persistent grants are writable whatever the request: the backend maps them once.
      const [page] = this.memory.allocPages(1);
      this.counters.grantsIssued++;
      this.counters.persistentPool++;
      return { page, gref: this.gnttab.grantAccess(this.info.backendDomid, page.mfn, false) };
    }
    const [page] = this.memory.allocPages(1);
    this.counters.grantsIssued++;
    return { page, gref: this.gnttab.grantAccess(this.info.backendDomid, page.mfn, readonly) };
  }

  private produce(q: Queued): void {
    const info = this.info;
    const id = this.freeIds[this.freeIds.length - 1];
    const pages: Granted[] = [];
    const indirect: Granted[] = [];
    let operation = q.operation;
    try {
      if (q.operation === BLKIF_OP_READ || q.operation === BLKIF_OP_WRITE) {
        const writing = q.operation === BLKIF_OP_WRITE;
        const nseg = Math.ceil(q.sectors / SECTORS_PER_PAGE);
        invariant(nseg >= 1 && nseg <= info.features.maxSegments, 'blkfront: request larger than negotiated');
        for (let i = 0; i < nseg; i++) {
          const g = this.grantPage(writing);
          pages.push(g);
          if (writing) {
            const off = q.bufOff + i * PAGE_SIZE;
            const n = Math.min(SECTORS_PER_PAGE, q.sectors - i * SECTORS_PER_PAGE) * SECTOR_SIZE;
            g.page.bytes.set(q.buf!.subarray(off, off + n));
          }
        }
        if (nseg <= BLKIF_MAX_SEGMENTS_PER_REQUEST) this.writeDirect(q, id, pages);
        else this.writeIndirect(q, id, pages, indirect);
      } else if (q.operation === BLKIF_OP_DISCARD) {
        const d = this.disc;
        d.handle = info.handle;
        d.id = id;
        d.sectorNumber = q.sector;
        d.nrSectors = q.sectors;
        info.abi.writeDiscardRequest(this.ring.view, this.ring.produceRequest(), d);
      } else {
        // FLUSH_DISKCACHE or a dataless WRITE_BARRIER.
        this.writeDirect(q, id, pages);
      }
    } catch (e) {
      this.releasePages(pages);
      this.releasePages(indirect);
      throw e;
    }
    if (operation === BLKIF_OP_INDIRECT) operation = q.operation;
    this.freeIds.pop();
    this.shadow[id] = { operation, pages, indirect, sectors: q.sectors, buf: q.buf, bufOff: q.bufOff, done: q.done };
    this.counters.requests++;
    this.inFlight++;
    if (this.inFlight > this.counters.maxInFlight) this.counters.maxInFlight = this.inFlight;
  }

  /** A `blkif_request` with up to 11 segments, each a whole page from sector 0. */
  private writeDirect(q: Queued, id: number, pages: Granted[]): void {
    const r = this.req;
    r.operation = q.operation;
    r.nrSegments = pages.length;
    r.handle = this.info.handle;
    r.id = id;
    r.sectorNumber = q.sector;
    for (let i = 0; i < pages.length; i++) this.fillSegment(r.segments[i], pages[i], q.sectors - i * SECTORS_PER_PAGE);
    this.info.abi.writeRequest(this.ring.view, this.ring.produceRequest(), r); // writes the first nrSegments segments
  }

  /**
   * A `blkif_request_indirect`: the segment descriptors go into
   * ceil(nseg / 512) indirect pages, granted read-only (or from the persistent pool).
   */
  private writeIndirect(q: Queued, id: number, pages: Granted[], indirect: Granted[]): void {
    const nind = Math.ceil(pages.length / BLKIF_SEGS_PER_INDIRECT_FRAME);
    const ind = this.ind;
    ind.indirectGrefs.length = 0;
    for (let p = 0; p < nind; p++) {
      const g = this.grantPage(true);
      indirect.push(g);
      ind.indirectGrefs.push(g.gref);
      const last = Math.min(pages.length, (p + 1) * BLKIF_SEGS_PER_INDIRECT_FRAME);
      for (let i = p * BLKIF_SEGS_PER_INDIRECT_FRAME, off = 0; i < last; i++, off += 8) {
        writeBlkifSegment(g.page.view, off, this.fillSegment(this.seg, pages[i], q.sectors - i * SECTORS_PER_PAGE));
      }
    }
    ind.indirectOp = q.operation;
    ind.nrSegments = pages.length;
    ind.handle = this.info.handle;
    ind.id = id;
    ind.sectorNumber = q.sector;
    this.info.abi.writeIndirectRequest(this.ring.view, this.ring.produceRequest(), ind);
    this.counters.indirectRequests++;
  }

  /** Segment for page `g` carrying `left` (or 8, if more) sectors from sector 0 of the page. */
  private fillSegment(seg: BlkifSegment, g: Granted, left: number): BlkifSegment {
    seg.gref = g.gref;
    seg.firstSect = 0;
    seg.lastSect = Math.min(SECTORS_PER_PAGE, left) - 1;
    return seg;
  }

  // ---- completion ----------------------------------------------------------------

  /**
   * The event handler: consumes every response (checking each), completes its
   * request, re-arms `rsp_event` with the final check, then refills the ring.
   * A protocol violation disables the device instead of throwing.
   */
  onEvent(): void {
    if (this.broken) return;
    try {
      let n = 0;
      do {
        let ready = this.ring.unconsumedResponses();
        while (ready-- > 0) {
          this.ring.consumeResponse(this.rspBuf);
          this.complete(this.info.abi.readResponse(this.rspDv, 0, this.rsp));
          n++;
        }
      } while (this.ring.finalCheckForResponses());
      this.counters.events += n;
      this.retryDeferred();
    } catch (e) {
      if (e instanceof ProtocolError) return this.disable(e);
      throw e;
    }
    this.kick();
  }

  private complete(rsp: BlkifResponse): void {
    const id = rsp.id;
    if (!Number.isInteger(id) || id < 0 || id >= this.shadow.length) throw new ProtocolError(`response id ${id} out of range`);
    const s = this.shadow[id];
    if (!s) throw new ProtocolError(`response for id ${id}, which is not in flight`);
    if (rsp.operation !== s.operation) throw new ProtocolError(`response op ${rsp.operation} for a request of op ${s.operation}`);
    this.shadow[id] = null;
    this.freeIds.push(id);
    this.inFlight--;
    this.counters.responses++;
    const ok = rsp.status === BLKIF_RSP_OKAY;
    const bytes = s.sectors * SECTOR_SIZE;
    if (ok && s.operation === BLKIF_OP_READ) {
      for (let i = 0, off = s.bufOff; i < s.pages.length; i++, off += PAGE_SIZE) {
        const n = Math.min(PAGE_SIZE, bytes - i * PAGE_SIZE);
        s.buf!.set(n === PAGE_SIZE ? s.pages[i].page.bytes : s.pages[i].page.bytes.subarray(0, n), off);
      }
      this.counters.bytesRead += bytes;
    } else if (ok && s.operation === BLKIF_OP_WRITE) {
      this.counters.bytesWritten += bytes;
    } else if (ok && s.operation === BLKIF_OP_DISCARD) {
      this.counters.bytesDiscarded += bytes;
    } else if (rsp.status === BLKIF_RSP_EOPNOTSUPP) {
      // Linux blkfront: the backend does not do it after all; stop asking.
      const f = this.info.features;
      if (s.operation === BLKIF_OP_FLUSH_DISKCACHE) f.flush = false;
      else if (s.operation === BLKIF_OP_WRITE_BARRIER) f.barrier = false;
      else if (s.operation === BLKIF_OP_DISCARD) f.discard = false;
    }
    this.releasePages(s.pages);
    this.releasePages(s.indirect);
    s.done(rsp.status);
  }

  /** Returns pages to the persistent pool, or ends their grants (deferring those still mapped). */
  private releasePages(list: Granted[]): void {
    if (this.info.features.persistent) {
      for (const g of list) this.pool.push(g);
      return;
    }
    for (const g of list) {
      if (this.gnttab.endAccess(g.gref)) this.memory.freePage(g.page);
      else {
        this.counters.deferredGrants++;
        this.deferred.push(g);
      }
    }
  }

  private retryDeferred(): void {
    for (let i = this.deferred.length - 1; i >= 0; i--) {
      const d = this.deferred[i];
      if (this.gnttab.endAccess(d.gref)) {
        this.memory.freePage(d.page);
        this.deferred.splice(i, 1);
      }
    }
  }

  /**
   * Disables the device: fails every request in flight and queued with `e`.
   * Grants still held by the backend stay aside (never reused).
   */
  disable(e: Error): void {
    if (this.broken) return;
    this.broken = e;
    for (let id = 0; id < this.shadow.length; id++) {
      const s = this.shadow[id];
      if (!s) continue;
      this.shadow[id] = null;
      this.deferred.push(...s.pages, ...s.indirect);
      s.done(-1);
    }
    this.inFlight = 0;
    for (const q of this.queue.splice(0)) q.done(-1);
    this.onDisable?.(e);
  }

  /**
   * Ends what grants it can (after the backend unmapped), the persistent pool's
   * included. @returns grants still held.
   */
  releaseAll(): number {
    this.deferred.push(...this.pool.splice(0));
    this.retryDeferred();
    return this.deferred.length;
  }

  /** Whether any request is in flight or queued. */
  busy(): boolean {
    return this.inFlight > 0 || this.queue.length > 0;
  }
}

/**
 * The disk-level I/O of one virtual disk over its queues: checks a request against
 * the disk (range, alignment to `sector-size`, read-only), splits it into requests
 * of at most `maxSegments` pages, and gives each to the least busy queue.
 */
export class BlkfrontIo {
  private next = 0;
  constructor(readonly info: BlkfrontDiskInfo, readonly rings: readonly BlkfrontRing[]) {
    invariant(rings.length >= 1, 'blkfront: no queue');
    // A broken peer breaks the disk, not one queue (Linux marks the device BLKIF_STATE_ERROR):
    // I/O in flight on the other queues fails too instead of waiting on that backend.
    for (const r of rings) r.onDisable = (e) => this.disable(e);
  }

  /** The first error that disabled a queue (the device is then broken), if any. */
  get error(): Error | null {
    for (const r of this.rings) if (r.error) return r.error;
    return null;
  }

  /**
   * Reads `into.length / 512` sectors from `sector` into `into`.
   * @throws BlkError (out of range, misaligned for the sector size, backend error,
   *   device disabled); RangeError when `into.length` is not a multiple of 512.
   */
  readInto(sector: number, into: Uint8Array): Promise<void> {
    return this.rw(BLKIF_OP_READ, sector, into);
  }

  /**
   * Writes `data` (a multiple of 512 bytes) at `sector` (512-byte units).
   * @throws BlkError (read-only disk, out of range, misaligned, backend error, device disabled).
   */
  write(sector: number, data: Uint8Array): Promise<void> {
    if (this.info.readOnly) return Promise.reject(new BlkError(-1, 'disk is read-only'));
    return this.rw(BLKIF_OP_WRITE, sector, data);
  }

  /**
   * Makes completed writes durable: BLKIF_OP_FLUSH_DISKCACHE with `feature-flush-cache`,
   * else a dataless BLKIF_OP_WRITE_BARRIER with `feature-barrier`, else nothing (the
   * backend has no cache to flush). @throws BlkError on a backend error.
   */
  flush(): Promise<void> {
    const f = this.info.features;
    if (f.flush) return this.one(BLKIF_OP_FLUSH_DISKCACHE, 0, 0, 'flush');
    if (f.barrier) return this.one(BLKIF_OP_WRITE_BARRIER, 0, 0, 'barrier');
    return Promise.resolve();
  }

  /**
   * A dataless BLKIF_OP_WRITE_BARRIER: the backend finishes every earlier request and
   * flushes before answering. @throws BlkError(-2) without `feature-barrier`.
   */
  barrier(): Promise<void> {
    if (!this.info.features.barrier) return Promise.reject(new BlkError(BLKIF_RSP_EOPNOTSUPP, 'backend offers no feature-barrier'));
    return this.one(BLKIF_OP_WRITE_BARRIER, 0, 0, 'barrier');
  }

  /**
   * Discards `count` 512-byte sectors from `sector` (BLKIF_OP_DISCARD, one request).
   * @throws BlkError(-2) without `feature-discard`; BlkError for range, alignment,
   *   read-only or a backend error.
   */
  discard(sector: number, count: number): Promise<void> {
    if (!this.info.features.discard) return Promise.reject(new BlkError(BLKIF_RSP_EOPNOTSUPP, 'backend offers no feature-discard'));
    if (this.info.readOnly) return Promise.reject(new BlkError(-1, 'disk is read-only'));
    const bad = this.check(sector, count);
    if (bad) return Promise.reject(bad);
    if (count === 0) return Promise.resolve();
    return this.one(BLKIF_OP_DISCARD, sector, count, 'discard');
  }

  private check(sector: number, count: number): BlkError | null {
    if (!Number.isSafeInteger(sector) || sector < 0 || sector + count > this.info.sectors) {
      return new BlkError(-1, `sectors ${sector}+${count} beyond the disk (${this.info.sectors} sectors)`);
    }
    const align = this.info.sectorSize / SECTOR_SIZE;
    if (sector % align !== 0 || count % align !== 0) {
      return new BlkError(-1, `sectors ${sector}+${count} are not aligned to the ${this.info.sectorSize}-byte sector size`);
    }
    return null;
  }

  private pick(): BlkfrontRing {
    const rings = this.rings;
    if (rings.length === 1) return rings[0];
    let best = rings[this.next];
    for (let i = 1; i < rings.length; i++) {
      const r = rings[(this.next + i) % rings.length];
      if (r.load < best.load) best = r;
    }
    this.next = (this.next + 1) % rings.length;
    return best;
  }

  private one(op: number, sector: number, count: number, what: string): Promise<void> {
    return new Promise((resolve, reject) => this.pick().submit(op, sector, count, null, 0, this.settle(resolve, reject, what)));
  }

  private settle(resolve: () => void, reject: (e: Error) => void, what: string): (st: number) => void {
    return (st) => {
      if (st === BLKIF_RSP_OKAY) resolve();
      else reject(this.error ?? new BlkError(st, `${what} failed: status ${st}`));
    };
  }

  private rw(op: number, sector: number, buf: Uint8Array): Promise<void> {
    const broken = this.error;
    if (broken) return Promise.reject(broken);
    if (buf.length % SECTOR_SIZE !== 0) return Promise.reject(new RangeError('length is not a multiple of 512 bytes'));
    const total = buf.length / SECTOR_SIZE;
    const bad = this.check(sector, total);
    if (bad) return Promise.reject(bad);
    if (total === 0) return Promise.resolve();
    const what = op === BLKIF_OP_READ ? 'read' : 'write';
    const per = this.info.features.maxSegments * SECTORS_PER_PAGE;
    if (total <= per) return new Promise((resolve, reject) => this.pick().submit(op, sector, total, buf, 0, this.settle(resolve, reject, what)));
    const parts: Promise<void>[] = [];
    for (let s = 0; s < total; s += per) {
      const n = Math.min(per, total - s);
      parts.push(new Promise<void>((resolve, reject) => {
        this.pick().submit(op, sector + s, n, buf, s * SECTOR_SIZE, this.settle(resolve, reject, what));
      }));
    }
    return Promise.all(parts).then(() => undefined);
  }

  /** Disables every queue with `e` (pending and later I/O fail with it). */
  disable(e: Error): void {
    for (const r of this.rings) r.disable(e);
  }

  /** Whether any queue has I/O in flight or queued. */
  busy(): boolean {
    return this.rings.some((r) => r.busy());
  }

  /** Requests on the rings now, all queues. */
  get inFlight(): number {
    let n = 0;
    for (const r of this.rings) n += r.requestsInFlight;
    return n;
  }

  /** Counters summed over the queues (`maxInFlight` is the largest of any queue). */
  counters(): BlkfrontCounters {
    const sum = { ...this.rings[0].counters };
    for (let i = 1; i < this.rings.length; i++) {
      const c = this.rings[i].counters;
      for (const k of Object.keys(sum) as Array<keyof BlkfrontCounters>) {
        sum[k] = k === 'maxInFlight' ? Math.max(sum[k], c[k]) : sum[k] + c[k];
      }
    }
    return sum;
  }

  /** Takes a resize announced by the backend. */
  setSectors(n: number): void {
    invariant(Number.isSafeInteger(n) && n >= 0, 'bad sector count');
    this.info.sectors = n;
  }
}
