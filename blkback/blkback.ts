/**
 * blkback's data path: serve one frontend's blkif ring against a storage backend.
 *
 * A pass (Linux's `__do_block_io_op`): read `req_prod` once (an impossible value
 * disables the ring: `RING_REQUEST_PROD_OVERFLOW`), copy each request out of the
 * ring once and validate the copy (XSA-155), map the segments' grants of the whole
 * batch in one batched `GNTTABOP_map_grant_ref` (writable for READ, read-only for
 * WRITE), hand each request to the store as an I/O vector of views into the mapped
 * pages, and — for what the store answers synchronously — unmap in one batched call,
 * write the responses (whole 16-byte entries, no stale padding: XSA-216) and push
 * them with one notification check. Asynchronous completions (a store may answer
 * late and out of order, by id) unmap and respond one by one.
 *
 * {@link BlkbackScheduler} serves every ring of the domain round-robin, at most
 * {@link MAX_BATCH} requests per ring per pass, so one busy frontend cannot starve
 * the others; between passes the event loop turns.
 *
 * @see io/blkif.h, Linux drivers/block/xen-blkback/blkback.c
 */
import { ProtocolError, InvariantError } from '../rings/errors.ts';
import { BackRing } from '../rings/ring.ts';
import {
  BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
  BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, BLKIF_LAST_SECT_MAX, SECTOR_SIZE,
  type BlkifAbi, type BlkifRequest,
} from '../rings/blkif.ts';
import { GNTST, type EvtchnPort, type GrantHandle, type GrantRef } from '../hypervisor/abi.ts';
import type { EventChannels } from '../event-channel/evtchn.ts';
import type { GrantTable, MapRequest } from '../grant-table/gnttab.ts';
import { STORAGE_PENDING, type StorageBackend, type StorageStatus } from './storage.ts';

/** Most requests taken from one ring in one pass. */
export const MAX_BATCH = 32;

/** Counters of one ring, as benchmarks and the toolstack report them. */
export interface BlkbackCounters {
  requests: number;
  reads: number;
  writes: number;
  flushes: number;
  errors: number;
  /** Bytes carried over the ring: read into and written from the frontend's pages. */
  bytesRead: number;
  bytesWritten: number;
  grantMaps: number;
  mapHypercalls: number;
  notifications: number;
  passes: number;
}

/** A request in flight between the ring and the store. */
interface InFlight {
  /** blkback's id for the store. */
  id: number;
  /** The frontend's request id, echoed in the response. */
  reqId: number;
  operation: number;
  handles: GrantHandle[];
  bytes: number;
}

/** The parameters of one connected ring. */
export interface BlkbackRingOptions {
  readonly frontDomid: number;
  /** The mapped shared ring (the frontend initialised it; we only attach). */
  readonly ringMem: Uint8Array;
  readonly port: EvtchnPort;
  readonly abi: BlkifAbi;
  readonly store: StorageBackend;
  /** Disk size in 512-byte sectors. */
  readonly sectors: number;
  readonly readOnly: boolean;
  /** Called once when the frontend broke the protocol (the ring is then dead). */
  readonly onProtocolError: (e: ProtocolError) => void;
}

/** blkback's side of one blkif ring. */
export class BlkbackRing {
  readonly ring: BackRing;
  readonly counters: BlkbackCounters = {
    requests: 0, reads: 0, writes: 0, flushes: 0, errors: 0, bytesRead: 0, bytesWritten: 0,
    grantMaps: 0, mapHypercalls: 0, notifications: 0, passes: 0,
  };
  private readonly copyBuf: Uint8Array;
  private readonly copyDv: DataView;
  /** One decoded copy per request of a pass, reused pass after pass (no allocation per request). */
  private readonly reqs: BlkifRequest[] = Array.from({ length: MAX_BATCH }, () => ({
    operation: 0, nrSegments: 0, handle: 0, id: 0, sectorNumber: 0, segments: [],
  }));
  private readonly inflight = new Map<number, InFlight>();
  private nextId = 1;
  private dead = false;
  private closing = false;
  private drained: (() => void) | null = null;

  constructor(
    private readonly opts: BlkbackRingOptions,
    private readonly evtchn: EventChannels,
    private readonly gnttab: GrantTable,
  ) {
    this.ring = BackRing.attach(opts.ringMem, opts.abi.entrySize);
    this.copyBuf = new Uint8Array(opts.abi.entrySize);
    this.copyDv = new DataView(this.copyBuf.buffer);
    opts.store.setCompletionHandler((id, status) => this.completeAsync(id, status));
  }

  /** Requests handed to the store and not yet answered. */
  inFlight(): number {
    return this.inflight.size;
  }

  /** Whether the ring was disabled by a protocol error. */
  isDead(): boolean {
    return this.dead;
  }

  /**
   * Serves up to {@link MAX_BATCH} requests.
   * @returns true when more requests are waiting (schedule another pass).
   */
  serve(): boolean {
    if (this.dead || this.closing) return false;
    this.counters.passes++;
    try {
      return this.pass();
    } catch (e) {
      if (e instanceof ProtocolError) {
        this.dead = true;
        this.opts.onProtocolError(e);
        return false;
      }
      throw e;
    }
  }

  private pass(): boolean {
    const ring = this.ring;
    const batch: Array<{ req: BlkifRequest; first: number; nseg: number; status: number }> = [];
    const maps: MapRequest[] = [];
    let avail = ring.unconsumedRequests();
    while (avail > 0 && batch.length < MAX_BATCH) {
      ring.consumeRequest(this.copyBuf);
      avail--;
      const copy = this.opts.abi.readRequest(this.copyDv, 0, this.reqs[batch.length]);
      const status = this.validate(copy);
      const nseg = status === BLKIF_RSP_OKAY && (copy.operation === BLKIF_OP_READ || copy.operation === BLKIF_OP_WRITE) ? copy.nrSegments : 0;
      const first = maps.length;
      for (let i = 0; i < nseg; i++) {
        maps.push({ domid: this.opts.frontDomid, ref: copy.segments[i].gref as GrantRef, readonly: copy.operation === BLKIF_OP_WRITE });
      }
      batch.push({ req: copy, first, nseg, status });
    }
    if (batch.length === 0) return ring.finalCheckForRequests();
    const mapped = maps.length > 0 ? this.gnttab.map(maps) : [];
    if (maps.length > 0) {
      this.counters.mapHypercalls++;
      this.counters.grantMaps += maps.length;
    }
    const unmapNow: GrantHandle[] = [];
    for (const b of batch) {
      this.counters.requests++;
      const handles: GrantHandle[] = [];
      let mapFailed = false;
      for (let i = 0; i < b.nseg; i++) {
        const m = mapped[b.first + i];
        if (m.status === GNTST.okay) handles.push(m.handle);
        else mapFailed = true;
      }
      if (b.status !== BLKIF_RSP_OKAY || mapFailed) {
        unmapNow.push(...handles);
        this.respond(b.req.id, b.req.operation, mapFailed ? BLKIF_RSP_ERROR : b.status);
        continue;
      }
      const op = b.req.operation;
      const iov: Uint8Array[] = [];
      let bytes = 0;
      for (let i = 0; i < b.nseg; i++) {
        const s = b.req.segments[i];
        const page = mapped[b.first + i].page!;
        iov.push(page.subarray(s.firstSect * SECTOR_SIZE, (s.lastSect + 1) * SECTOR_SIZE));
        bytes += (s.lastSect - s.firstSect + 1) * SECTOR_SIZE;
      }
      const id = this.nextId++;
      const f: InFlight = { id, reqId: b.req.id, operation: op, handles, bytes };
      const storeOp = op === BLKIF_OP_READ ? 'read' : op === BLKIF_OP_WRITE ? 'write' : 'flush';
      this.inflight.set(id, f);
      const st = this.opts.store.submit({ id, op: storeOp, offset: storeOp === 'flush' ? 0 : b.req.sectorNumber * SECTOR_SIZE, iov: storeOp === 'flush' ? [] : iov });
      if (st === STORAGE_PENDING) continue;
      this.inflight.delete(id);
      unmapNow.push(...handles);
      this.account(f, st);
      this.respond(b.req.id, op, st);
    }
    if (unmapNow.length > 0) this.unmap(unmapNow);
    this.push();
    return ring.finalCheckForRequests();
  }

  /** Checks a copied request; BLKIF_RSP_OKAY or the status to answer with. */
  private validate(r: BlkifRequest): number {
    switch (r.operation) {
      case BLKIF_OP_READ:
      case BLKIF_OP_WRITE: {
        if (r.nrSegments < 1 || r.nrSegments > BLKIF_MAX_SEGMENTS_PER_REQUEST) return BLKIF_RSP_ERROR;
        if (r.operation === BLKIF_OP_WRITE && this.opts.readOnly) return BLKIF_RSP_ERROR;
        let sectors = 0;
        for (let i = 0; i < r.nrSegments; i++) {
          const s = r.segments[i];
          if (s.firstSect > s.lastSect || s.lastSect > BLKIF_LAST_SECT_MAX) return BLKIF_RSP_ERROR;
          sectors += s.lastSect - s.firstSect + 1;
        }
        if (r.sectorNumber + sectors > this.opts.sectors) return BLKIF_RSP_ERROR;
        return BLKIF_RSP_OKAY;
      }
      case BLKIF_OP_FLUSH_DISKCACHE:
        if (!this.opts.store.canFlush) return BLKIF_RSP_EOPNOTSUPP;
        return r.nrSegments === 0 ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
      case BLKIF_OP_WRITE_BARRIER:
      default:
        return BLKIF_RSP_EOPNOTSUPP;
    }
  }

  private account(f: InFlight, st: StorageStatus): void {
    if (st !== 0) {
      this.counters.errors++;
      return;
    }
    if (f.operation === BLKIF_OP_READ) {
      this.counters.reads++;
      this.counters.bytesRead += f.bytes;
    } else if (f.operation === BLKIF_OP_WRITE) {
      this.counters.writes++;
      this.counters.bytesWritten += f.bytes;
    } else {
      this.counters.flushes++;
    }
  }

  private completeAsync(id: number, status: StorageStatus): void {
    const f = this.inflight.get(id);
    if (!f) throw new InvariantError(`store completed unknown request ${id}`);
    this.inflight.delete(id);
    if (f.handles.length > 0) this.unmap(f.handles);
    this.account(f, status);
    if (!this.dead && !this.closing) {
      this.respond(f.reqId, f.operation, status);
      this.push();
    }
    if (this.inflight.size === 0 && this.drained) this.drained();
  }

  private unmap(handles: GrantHandle[]): void {
    const st = this.gnttab.unmap(handles);
    for (const s of st) if (s !== GNTST.okay) throw new InvariantError(`unmap of our own handle failed: ${s}`);
  }

  private respond(id: number, operation: number, status: number): void {
    if (status !== BLKIF_RSP_OKAY) this.counters.errors++;
    const off = this.ring.produceResponse();
    this.opts.abi.writeResponse(this.ring.view, off, { id, operation, status });
  }

  private push(): void {
    if (this.ring.pushResponsesAndCheckNotify()) {
      this.counters.notifications++;
      this.evtchn.notify(this.opts.port);
    }
  }

  /**
   * Stops serving and waits (up to `timeoutMs`) for requests the store still holds;
   * their grants are unmapped as they complete.
   */
  async close(timeoutMs = 10_000): Promise<void> {
    this.closing = true;
    if (this.inflight.size === 0) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, timeoutMs);
      this.drained = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }
}

/**
 * Serves every blkback ring of a domain round-robin with a bounded batch per ring
 * per pass; a ring with work left goes to the back of the queue.
 */
export class BlkbackScheduler {
  private readonly queue: BlkbackRing[] = [];
  private readonly queued = new Set<BlkbackRing>();
  private scheduled = false;

  /** Marks `ring` as having work (called from its event handler). */
  kick(ring: BlkbackRing): void {
    if (!this.queued.has(ring)) {
      this.queued.add(ring);
      this.queue.push(ring);
    }
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(() => this.run());
    }
  }

  private run(): void {
    this.scheduled = false;
    const n = this.queue.length;
    for (let i = 0; i < n; i++) {
      const r = this.queue.shift()!;
      this.queued.delete(r);
      if (r.serve()) {
        this.queued.add(r);
        this.queue.push(r);
      }
    }
    if (this.queue.length > 0 && !this.scheduled) {
      // More work: continue after the event loop had a turn (timers, other events).
      this.scheduled = true;
      setImmediate(() => this.run());
    }
  }
}
