/**
 * blkfront's data path: the guest's virtual disk over one blkif ring.
 *
 * Read top to bottom as Linux's xen-blkfront.c: state, grant helpers, request
 * builders, completion. Every request in flight has a private *shadow* (its id is
 * the shadow's index): the operation, the pages granted for it and the promise to
 * settle. Every response is copied out of the ring once and checked — id in range,
 * in flight, operation matches — and a violation (like an impossible `rsp_prod`)
 * disables the device: every pending and later I/O fails with the ProtocolError.
 *
 * A large I/O is split into requests of up to 11 segments (44 KiB); as many as the
 * ring has slots go out at once, the rest wait in a queue and are pushed as
 * responses free slots. Data goes through bounce pages from the domain's memory,
 * granted fresh per request (read-only for WRITE, writable for READ) and ended
 * after the response; a grant the backend still holds is put aside and retried
 * (XSA-396), never reused.
 *
 * @see io/blkif.h, Linux drivers/block/xen-blkfront.c
 */
import { ProtocolError, PvioError, invariant } from '../rings/errors.ts';
import { FrontRing } from '../rings/ring.ts';
import {
  BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_OKAY,
  SECTOR_SIZE, type BlkifAbi, type BlkifRequest, type BlkifResponse,
} from '../rings/blkif.ts';
import { PAGE_SIZE, type EvtchnPort, type GrantRef } from '../hypervisor/abi.ts';
import type { EventChannels } from '../event-channel/evtchn.ts';
import type { GrantTable } from '../grant-table/gnttab.ts';
import type { GuestMemory, GuestPage } from '../hypervisor/guest-memory.ts';

/** Sectors (512 B) per 4 KiB page. */
const SECTORS_PER_PAGE = PAGE_SIZE / SECTOR_SIZE;
/** Sectors one direct request carries at most (11 pages). */
export const MAX_SECTORS_PER_REQUEST = BLKIF_MAX_SEGMENTS_PER_REQUEST * SECTORS_PER_PAGE;

/** An I/O failed: the backend answered `status` (a `BLKIF_RSP_*`), or the device is gone. */
export class BlkError extends PvioError {
  constructor(readonly status: number, message: string) {
    super('PVIO_ERR_BLK', message);
  }
}

/** Counters of one blkfront ring. */
export interface BlkfrontCounters {
  requests: number;
  responses: number;
  /** Event-channel notifications sent to the backend. */
  notifications: number;
  /** Pushes that needed no notification (the backend was awake). */
  notificationsSuppressed: number;
  /** Responses seen per event (sum), for responses-per-interrupt. */
  events: number;
  bytesRead: number;
  bytesWritten: number;
  /** Most requests in flight at once. */
  maxInFlight: number;
  /** Grants the backend still held after the response (retried later). */
  deferredGrants: number;
}

interface Shadow {
  operation: number;
  pages: GuestPage[];
  grefs: GrantRef[];
  sectors: number;
  /** Where the data goes (READ) or comes from (WRITE), and its offset. */
  buf: Uint8Array | null;
  bufOff: number;
  done: (status: number) => void;
}

interface Queued {
  operation: number;
  sector: number;
  sectors: number;
  buf: Uint8Array | null;
  bufOff: number;
  done: (status: number) => void;
}

/** What the data path needs from the domain. */
export interface BlkfrontRingOptions {
  readonly backendDomid: number;
  readonly handle: number;
  /** The ring extent, already initialised by {@link FrontRing.init} (frontend only). */
  readonly ring: FrontRing;
  readonly port: EvtchnPort;
  readonly abi: BlkifAbi;
  /** Disk size in 512-byte sectors (from the backend's `sectors`). */
  sectors: number;
  readonly readOnly: boolean;
  readonly flush: boolean;
}

/** The data path of one virtual disk. */
export class BlkfrontRing {
  readonly counters: BlkfrontCounters = {
    requests: 0, responses: 0, notifications: 0, notificationsSuppressed: 0, events: 0,
    bytesRead: 0, bytesWritten: 0, maxInFlight: 0, deferredGrants: 0,
  };
  private readonly shadow: Array<Shadow | null>;
  private readonly freeIds: number[] = [];
  private readonly queue: Queued[] = [];
  private readonly deferred: Array<{ gref: GrantRef; page: GuestPage }> = [];
  private readonly rspBuf: Uint8Array;
  private readonly rspDv: DataView;
  private readonly rsp: BlkifResponse = { id: 0, operation: 0, status: 0 };
  private readonly req: BlkifRequest = { operation: 0, nrSegments: 0, handle: 0, id: 0, sectorNumber: 0, segments: [] };
  private broken: Error | null = null;
  private inFlight = 0;

  constructor(
    readonly opts: BlkfrontRingOptions,
    private readonly evtchn: EventChannels,
    private readonly gnttab: GrantTable,
    private readonly memory: GuestMemory,
  ) {
    const n = opts.ring.size;
    this.shadow = new Array(n).fill(null);
    for (let i = n - 1; i >= 0; i--) this.freeIds.push(i);
    this.rspBuf = new Uint8Array(opts.abi.entrySize);
    this.rspDv = new DataView(this.rspBuf.buffer);
    for (let i = 0; i < BLKIF_MAX_SEGMENTS_PER_REQUEST; i++) this.req.segments.push({ gref: 0, firstSect: 0, lastSect: 0 });
  }

  /** Requests on the ring now. */
  get requestsInFlight(): number {
    return this.inFlight;
  }

  /** The error that disabled the device, if any. */
  get error(): Error | null {
    return this.broken;
  }

  // ---- guest API -------------------------------------------------------------

  /**
   * Reads `count` sectors (512 B) from `sector`.
   * @returns the bytes (count × 512).
   * @throws BlkError (out of range, backend error, device disabled).
   */
  async read(sector: number, count: number): Promise<Uint8Array> {
    const out = new Uint8Array(count * SECTOR_SIZE);
    await this.readInto(sector, out);
    return out;
  }

  /**
   * Reads `into.length / 512` sectors from `sector` into `into`.
   * @throws BlkError as {@link read}; RangeError when `into.length` is not a multiple of 512.
   */
  readInto(sector: number, into: Uint8Array): Promise<void> {
    return this.submitSplit(BLKIF_OP_READ, sector, into);
  }

  /**
   * Writes `data` (a multiple of 512 bytes) at `sector`.
   * @throws BlkError (read-only disk, out of range, backend error, device disabled).
   */
  write(sector: number, data: Uint8Array): Promise<void> {
    if (this.opts.readOnly) return Promise.reject(new BlkError(-1, 'disk is read-only'));
    return this.submitSplit(BLKIF_OP_WRITE, sector, data);
  }

  /**
   * Flushes the backend's write cache (BLKIF_OP_FLUSH_DISKCACHE, no segments).
   * Resolves at once when the backend does not offer `feature-flush-cache`.
   * @throws BlkError on a backend error.
   */
  flush(): Promise<void> {
    if (!this.opts.flush) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.enqueue({ operation: BLKIF_OP_FLUSH_DISKCACHE, sector: 0, sectors: 0, buf: null, bufOff: 0, done: this.settle(resolve, reject, 'flush') });
    });
  }

  private settle(resolve: () => void, reject: (e: Error) => void, what: string): (st: number) => void {
    return (st) => {
      if (st === BLKIF_RSP_OKAY) resolve();
      else reject(this.broken ?? new BlkError(st, `${what} failed: status ${st}`));
    };
  }

  private submitSplit(op: number, sector: number, buf: Uint8Array): Promise<void> {
    if (this.broken) return Promise.reject(this.broken);
    if (buf.length % SECTOR_SIZE !== 0) return Promise.reject(new RangeError('length is not a multiple of 512 bytes'));
    const total = buf.length / SECTOR_SIZE;
    if (!Number.isSafeInteger(sector) || sector < 0 || sector + total > this.opts.sectors) {
      return Promise.reject(new BlkError(-1, `sectors ${sector}+${total} beyond the disk (${this.opts.sectors} sectors)`));
    }
    if (total === 0) return Promise.resolve();
    const parts: Promise<void>[] = [];
    for (let s = 0; s < total; s += MAX_SECTORS_PER_REQUEST) {
      const n = Math.min(MAX_SECTORS_PER_REQUEST, total - s);
      parts.push(new Promise<void>((resolve, reject) => {
        this.enqueue({ operation: op, sector: sector + s, sectors: n, buf, bufOff: s * SECTOR_SIZE, done: this.settle(resolve, reject, op === BLKIF_OP_READ ? 'read' : 'write') });
      }));
    }
    return Promise.all(parts).then(() => undefined);
  }

  private enqueue(q: Queued): void {
    if (this.broken) {
      q.done(-1);
      return;
    }
    this.queue.push(q);
    this.kick();
  }

  // ---- request builders --------------------------------------------------------

  /** Puts as many queued requests on the ring as it has room for, then pushes once. */
  private kick(): void {
    let produced = 0;
    while (this.queue.length > 0 && !this.opts.ring.isFull() && this.freeIds.length > 0) {
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
      if (this.opts.ring.pushRequestsAndCheckNotify()) {
        this.counters.notifications++;
        this.evtchn.notify(this.opts.port);
      } else {
        this.counters.notificationsSuppressed++;
      }
    }
  }

  private produce(q: Queued): void {
    const nseg = Math.ceil(q.sectors / SECTORS_PER_PAGE);
    const pages = nseg > 0 ? this.memory.allocPages(nseg) : [];
    const grefs: GrantRef[] = [];
    const writing = q.operation === BLKIF_OP_WRITE;
    const r = this.req;
    const id = this.freeIds.pop()!;
    r.operation = q.operation;
    r.nrSegments = nseg;
    r.handle = this.opts.handle;
    r.id = id;
    r.sectorNumber = q.sector;
    let left = q.sectors;
    for (let i = 0; i < nseg; i++) {
      const n = Math.min(SECTORS_PER_PAGE, left);
      left -= n;
      if (writing) {
        const off = q.bufOff + i * PAGE_SIZE;
        pages[i].bytes.set(q.buf!.subarray(off, off + n * SECTOR_SIZE));
      }
      // The backend reads from the page on WRITE and writes into it on READ.
      const gref = this.gnttab.grantAccess(this.opts.backendDomid, pages[i].mfn, writing);
      grefs.push(gref);
      const seg = r.segments[i];
      seg.gref = gref;
      seg.firstSect = 0;
      seg.lastSect = n - 1;
    }
    const off = this.opts.ring.produceRequest();
    this.opts.abi.writeRequest(this.opts.ring.view, off, r); // writes the first nrSegments segments
    this.shadow[id] = { operation: q.operation, pages, grefs, sectors: q.sectors, buf: q.buf, bufOff: q.bufOff, done: q.done };
    this.counters.requests++;
    this.inFlight++;
    if (this.inFlight > this.counters.maxInFlight) this.counters.maxInFlight = this.inFlight;
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
        let ready = this.opts.ring.unconsumedResponses();
        while (ready-- > 0) {
          this.opts.ring.consumeResponse(this.rspBuf);
          this.complete(this.opts.abi.readResponse(this.rspDv, 0, this.rsp));
          n++;
        }
      } while (this.opts.ring.finalCheckForResponses());
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
    if (ok && s.operation === BLKIF_OP_READ) {
      let left = s.sectors;
      for (let i = 0; i < s.pages.length; i++) {
        const n = Math.min(SECTORS_PER_PAGE, left) * SECTOR_SIZE;
        left -= n / SECTOR_SIZE;
        const off = s.bufOff + i * PAGE_SIZE;
        s.buf!.set(s.pages[i].bytes.subarray(0, n), off);
      }
      this.counters.bytesRead += s.sectors * SECTOR_SIZE;
    } else if (ok && s.operation === BLKIF_OP_WRITE) {
      this.counters.bytesWritten += s.sectors * SECTOR_SIZE;
    }
    this.releasePages(s);
    s.done(rsp.status);
  }

  private releasePages(s: Shadow): void {
    for (let i = 0; i < s.pages.length; i++) {
      if (this.gnttab.endAccess(s.grefs[i])) this.memory.freePage(s.pages[i]);
      else {
        this.counters.deferredGrants++;
        this.deferred.push({ gref: s.grefs[i], page: s.pages[i] });
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
      for (let i = 0; i < s.pages.length; i++) this.deferred.push({ gref: s.grefs[i], page: s.pages[i] });
      s.done(-1);
    }
    this.inFlight = 0;
    for (const q of this.queue.splice(0)) q.done(-1);
  }

  /**
   * Ends what grants it can (after the backend unmapped). @returns grants still held.
   */
  releaseAll(): number {
    this.retryDeferred();
    return this.deferred.length;
  }

  /** Whether any request is in flight or queued. */
  busy(): boolean {
    return this.inFlight > 0 || this.queue.length > 0;
  }

  /** Grows the disk (a resize announced by the backend). */
  setSectors(n: number): void {
    invariant(Number.isSafeInteger(n) && n >= 0, 'bad sector count');
    this.opts.sectors = n;
  }
}
