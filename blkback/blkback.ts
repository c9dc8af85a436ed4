/**
 * blkback's data path: serve one blkif ring (one queue of a frontend's disk)
 * against a storage backend.
 *
 * A pass (Linux's `__do_block_io_op`): read `req_prod` once (an impossible value
 * disables the ring: `RING_REQUEST_PROD_OVERFLOW`), copy each request out of the
 * ring once and validate the copy (XSA-155), then for the whole batch:
 * 1. map the indirect pages of `BLKIF_OP_INDIRECT` requests and copy their segment
 *    descriptors out once into private memory (validated there, never re-read);
 * 2. validate every segment (`first_sect ≤ last_sect ≤ 7`), the range against the
 *    disk and its alignment to `sector-size`;
 * 3. find the segments' grants in the persistent cache or map them, all misses in
 *    one batched `GNTTABOP_map_grant_ref` (writable for READ and for persistent
 *    grants, read-only for WRITE);
 * 4. hand each request to the store as an I/O vector of views into the mapped
 *    pages; for what it answers synchronously, unmap (non-persistent grants) in one
 *    batched call, write the responses (whole 16-byte entries, no stale padding:
 *    XSA-216) and push them with one notification check. Asynchronous completions
 *    (a store may answer late and out of order, by id) respond one by one.
 *
 * Persistent grants (`feature-persistent` on both ends): mappings stay in a cache of
 * at most {@link PERSISTENT_GRANTS_MAX} per ring, least recently used evicted first
 * (Linux keeps 1056 per ring and purges LRU-style); a grant that is already in use by
 * a request in flight is refused (Linux logs "requesting a grant already in use" and
 * maps it once more for that request; pvio answers BLKIF_RSP_ERROR). `WRITE_BARRIER` waits until
 * every earlier request has completed, runs alone (write, then flush), and later
 * requests wait for it.
 *
 * {@link BlkbackScheduler} serves every ring of the domain round-robin, at most
 * {@link MAX_BATCH} requests per ring per pass, so one busy frontend cannot starve
 * the others; between passes the event loop turns. Once a guest's scheduling weight
 * is not the default, the round-robin is between guests and weighted
 * (rings/weighted-scheduler.ts).
 *
 * @see io/blkif.h, Linux drivers/block/xen-blkback/blkback.c
 */
import { WeightedRingScheduler } from '../rings/weighted-scheduler.ts';
import { InvariantError } from '../rings/errors.ts';
import { BackRing } from '../rings/ring.ts';
import {
  BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ,
  BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, BLKIF_LAST_SECT_MAX,
  BLKIF_SEGS_PER_INDIRECT_FRAME, SECTOR_SIZE, readBlkifSegment,
  type BlkifAbi, type BlkifDiscardRequest, type BlkifIndirectRequest, type BlkifRequest, type BlkifSegment,
} from '../rings/blkif.ts';
import { GNTST, type EvtchnPort, type GrantHandle, type GrantRef } from '../hypervisor/abi.ts';
import type { EventChannels } from '../event-channel/evtchn.ts';
import type { GrantTable, MapRequest } from '../grant-table/gnttab.ts';
import { STORAGE_PENDING, type StorageBackend, type StorageRequest, type StorageStatus, type StorageSubmitResult } from './storage.ts';
import type { BlkbackFeatures } from './features.ts';

/** Share of the persistent-grant limit evicted at once when the cache is full (Linux's LRU_PERCENT_CLEAN). */
const LRU_PERCENT_CLEAN = 5;
/** Most requests taken from one ring in one pass. */
export const MAX_BATCH = 32;
/**
 * A pass pushes the responses it has made once they have waited this long (ms), so
 * the frontend can complete and resubmit while the rest of the batch is served: at
 * 10 µs (every ~4 page-cache reads) 4 KiB random reads at 32 in flight ran ~2.5×
 * the IOPS of 50 µs, with ~7 responses per event (0 µs, Linux's push after every
 * response: the same IOPS at one notification per response).
 */
const PUSH_AFTER_MS = 0.01;
/** Most persistent grants one ring keeps mapped (Linux's `xen_blkif_max_pgrants` default). */
export const PERSISTENT_GRANTS_MAX = 1056;

/** Counters of one ring, as benchmarks and the toolstack report them. */
export interface BlkbackCounters {
  requests: number;
  reads: number;
  writes: number;
  flushes: number;
  barriers: number;
  discards: number;
  /** Requests that came as BLKIF_OP_INDIRECT. */
  indirect: number;
  errors: number;
  /** Bytes carried over the ring: read into and written from the frontend's pages. */
  bytesRead: number;
  bytesWritten: number;
  /** Bytes discarded (512-byte multiples). */
  bytesDiscarded: number;
  /** Grant maps done (entries of map hypercalls). */
  grantMaps: number;
  mapHypercalls: number;
  grantUnmaps: number;
  unmapHypercalls: number;
  /** Segments whose grant was found mapped in the persistent cache. */
  persistentHits: number;
  /** Persistent mappings unmapped to make room (least recently used first). */
  persistentEvictions: number;
  notifications: number;
  passes: number;
}

/** A fresh, all-zero {@link BlkbackCounters}. */
/**
 * Buckets of a request-latency histogram: bucket 0 counts requests answered in under
 * 2 µs, bucket i ≥ 1 those in [2^i, 2^(i+1)) µs, the last one everything slower
 * (from taking the request off the ring to writing its response).
 */
export const LATENCY_BUCKETS = 24;

/** The bucket of a latency of `us` microseconds. */
export function latencyBucket(us: number): number {
  if (!(us >= 2)) return 0;
  return Math.min(LATENCY_BUCKETS - 1, Math.floor(Math.log2(us)));
}

export function newBlkbackCounters(): BlkbackCounters {
  return {
    requests: 0, reads: 0, writes: 0, flushes: 0, barriers: 0, discards: 0, indirect: 0, errors: 0,
    bytesRead: 0, bytesWritten: 0, bytesDiscarded: 0, grantMaps: 0, mapHypercalls: 0, grantUnmaps: 0,
    unmapHypercalls: 0, persistentHits: 0, persistentEvictions: 0, notifications: 0, passes: 0,
  };
}

/** A persistent mapping of one of the frontend's grants. */
export interface PersistentGrant {
  ref: number;
  handle: GrantHandle;
  page: Uint8Array;
  /** Requests in flight using it (0 or 1: a second use while active is refused). */
  active: number;
  /** Use stamp: larger is more recent. */
  lastUse: number;
  /** The one {@link Mapping} handed to every request that uses it. */
  mapping: Mapping;
}

/**
 * The persistent grants of one ring: gref → mapping, with a use stamp for
 * least-recently-used eviction. A hit only bumps the stamp; when the cache is full, a
 * miss evicts the least recently used idle grants in one batch — 5% of the limit, as
 * Linux's `purge_persistent_gnt` (LRU_PERCENT_CLEAN) — so a scan is paid once per batch.
 */
export class PersistentGrantCache {
  readonly map = new Map<number, PersistentGrant>();
  private clock = 0;
  constructor(readonly limit: number) {}

  /** The mapping of `ref`, now the most recently used; undefined when not cached. */
  get(ref: number): PersistentGrant | undefined {
    const g = this.map.get(ref);
    if (g) g.lastUse = ++this.clock;
    return g;
  }

  /**
   * Adds a new mapping (as the most recently used), first evicting the least
   * recently used idle ones when full; their handles go to `evicted`.
   * @returns false when every cached grant is in use (the caller maps it for this
   *   request only).
   */
  add(g: PersistentGrant, evicted: GrantHandle[]): boolean {
    if (this.map.size >= this.limit) {
      const idle: PersistentGrant[] = [];
      for (const old of this.map.values()) if (old.active === 0) idle.push(old);
      if (idle.length === 0) return false;
      idle.sort((a, b) => a.lastUse - b.lastUse);
      const n = Math.min(idle.length, Math.max(1, Math.ceil(this.limit * LRU_PERCENT_CLEAN / 100)));
      for (let i = 0; i < n; i++) {
        this.map.delete(idle[i].ref);
        evicted.push(idle[i].handle);
      }
    }
    g.lastUse = ++this.clock;
    this.map.set(g.ref, g);
    return true;
  }
}

/** One page of a request: a view of the mapped page and how to let it go. */
export interface Mapping {
  page: Uint8Array;
  /** A per-request mapping to unmap after the request, or null for a persistent one. */
  handle: GrantHandle | null;
  persistent: PersistentGrant | null;
}

/** One request of a pass, decoded into private memory; reused pass after pass. */
interface Slot {
  /** BLKIF_OP_* as received (INDIRECT stays INDIRECT here). */
  op: number;
  /** The operation the response carries (the inner one for INDIRECT). */
  rspOp: number;
  id: number;
  status: number;
  /** When it was taken off the ring (performance.now(), ms). */
  t0: number;
  sector: number;
  nseg: number;
  req: BlkifRequest;
  ind: BlkifIndirectRequest;
  disc: BlkifDiscardRequest;
  /** The segment descriptors in use: `req.segments` (direct) or `indSegs`. */
  segs: BlkifSegment[];
  /** Private copies of an indirect request's descriptors, read once from its pages. */
  indSegs: BlkifSegment[];
  /** Mappings of the indirect pages (released after the descriptors are copied). */
  indMaps: Array<Mapping | null>;
  /** Mappings of the data pages, one per segment (null where the map failed). */
  maps: Array<Mapping | null>;
}

function newSlot(): Slot {
  return {
    op: 0, rspOp: 0, id: 0, status: 0, t0: 0, sector: 0, nseg: 0,
    req: { operation: 0, nrSegments: 0, handle: 0, id: 0, sectorNumber: 0, segments: [] },
    ind: { operation: 0, indirectOp: 0, nrSegments: 0, handle: 0, id: 0, sectorNumber: 0, indirectGrefs: [] },
    disc: { operation: 0, flag: 0, handle: 0, id: 0, sectorNumber: 0, nrSectors: 0 },
    segs: [], indSegs: [], indMaps: [], maps: [],
  };
}

/** Grants wanted by a pass: (slot, index in the slot, gref) triples in parallel arrays. */
class GrantList {
  n = 0;
  readonly slots: Slot[] = [];
  readonly idx: number[] = [];
  readonly refs: number[] = [];
  add(s: Slot, i: number, ref: number): void {
    this.slots[this.n] = s;
    this.idx[this.n] = i;
    this.refs[this.n] = ref;
    this.n++;
  }
  clear(): void {
    this.n = 0;
  }
}

/** A request in flight between the ring and the store. */
interface InFlight {
  /** blkback's id for the store (changes when a barrier moves on to its flush). */
  id: number;
  /** The frontend's request id, echoed in the response. */
  reqId: number;
  /** When the request was taken off the ring (performance.now(), ms). */
  t0: number;
  /** The operation the response carries. */
  rspOp: number;
  /** BLKIF_OP_* for accounting (READ, WRITE, FLUSH_DISKCACHE, WRITE_BARRIER, DISCARD). */
  op: number;
  maps: Mapping[];
  bytes: number;
  /** A barrier's write: flush once it completes. */
  thenFlush: boolean;
}

/**
 * One store shared by a disk's queues: blkback's request ids are unique across the
 * queues, and asynchronous completions go back to the queue that submitted.
 */
export class StoreMux {
  private next = 1;
  private readonly owner = new Map<number, BlkbackRing>();
  constructor(readonly store: StorageBackend) {
    store.setCompletionHandler((id, status) => {
      const ring = this.owner.get(id);
      if (!ring) throw new InvariantError(`store completed unknown request ${id}`);
      this.owner.delete(id);
      ring.completeAsync(id, status);
    });
  }

  /** A fresh request id. */
  nextId(): number {
    return this.next++;
  }

  /** Submits `req` for `ring`; a pending answer comes back through `ring.completeAsync`. */
  submit(ring: BlkbackRing, req: StorageRequest): StorageSubmitResult {
    const st = this.store.submit(req);
    // The store never completes from inside submit, so the owner can be noted after.
    if (st === STORAGE_PENDING) this.owner.set(req.id, ring);
    return st;
  }
}

/** The parameters of one connected ring. */
export interface BlkbackRingOptions {
  readonly frontDomid: number;
  /** The mapped shared ring, 2^order pages (the frontend initialised it; we only attach). */
  readonly ringMem: Uint8Array;
  readonly port: EvtchnPort;
  readonly abi: BlkifAbi;
  /** The disk's store, shared with its other queues. */
  readonly mux: StoreMux;
  /** Disk size in 512-byte sectors (see {@link BlkbackRing.setSectors}). */
  readonly sectors: number;
  readonly readOnly: boolean;
  /** What blkback advertised for this disk. */
  readonly features: BlkbackFeatures;
  /** Whether persistent grants were negotiated (both ends wrote `feature-persistent=1`). */
  readonly persistent: boolean;
  /** Most persistent grants kept mapped (default {@link PERSISTENT_GRANTS_MAX}). */
  readonly persistentMax?: number;
  /**
   * Called once when the ring is disabled: the frontend broke the protocol
   * (a ProtocolError), or serving it failed otherwise (a store or blkback fault).
   */
  readonly onRingError: (e: Error) => void;
  /** Asks for another pass (a parked barrier can go on). */
  readonly kick: () => void;
}

/** blkback's side of one blkif ring. */
export class BlkbackRing {
  readonly ring: BackRing;
  readonly counters: BlkbackCounters = newBlkbackCounters();
  /** Requests answered, by latency bucket ({@link LATENCY_BUCKETS}, {@link latencyBucket}). */
  readonly latencyUs: number[] = new Array<number>(LATENCY_BUCKETS).fill(0);
  private sectors: number;
  private readonly copyBuf: Uint8Array;
  private readonly copyDv: DataView;
  private readonly slots: Slot[] = Array.from({ length: MAX_BATCH }, newSlot);
  private readonly cache: PersistentGrantCache | null;
  private readonly inflight = new Map<number, InFlight>();
  /** Grants to resolve in one {@link mapInto}, reused pass after pass. */
  private readonly want = new GrantList();
  /** Handles to unmap at the end of the pass (or at once, from an async completion). */
  private readonly unmapLater: GrantHandle[] = [];
  /** A barrier copied off the ring while earlier requests were outstanding. */
  private parked: Slot | null = null;
  /** The slot that takes a parked barrier's place in {@link slots} (null while one is parked). */
  private spare: Slot | null = newSlot();
  private barrierInFlight = false;
  private dead = false;
  private closing = false;
  private drained: (() => void) | null = null;

  constructor(
    private readonly opts: BlkbackRingOptions,
    private readonly evtchn: EventChannels,
    private readonly gnttab: GrantTable,
  ) {
    this.ring = BackRing.attach(opts.ringMem, opts.abi.entrySize);
    this.sectors = opts.sectors;
    this.copyBuf = new Uint8Array(opts.abi.entrySize);
    this.copyDv = new DataView(this.copyBuf.buffer);
    this.cache = opts.persistent ? new PersistentGrantCache(opts.persistentMax ?? PERSISTENT_GRANTS_MAX) : null;
  }

  /** Requests handed to the store and not yet answered. */
  inFlight(): number {
    return this.inflight.size;
  }

  /** Persistent grants mapped now. */
  persistentGrants(): number {
    return this.cache?.map.size ?? 0;
  }

  /** The frontend's domain (whose scheduling weight the ring is served with). */
  get frontDomid(): number {
    return this.opts.frontDomid;
  }

  /** Whether the ring was disabled by a protocol error. */
  isDead(): boolean {
    return this.dead;
  }

  /** A resize: requests are checked against `n` 512-byte sectors from now on. */
  setSectors(n: number): void {
    this.sectors = n;
  }

  /**
   * Serves up to `budget` requests (1 to {@link MAX_BATCH}; the scheduler's share for
   * this pass, see rings/weighted-scheduler.ts).
   * @returns true when more requests are waiting (schedule another pass).
   */
  serve(budget: number = MAX_BATCH): boolean {
    if (this.dead || this.closing) return false;
    this.counters.passes++;
    try {
      return this.pass(budget < MAX_BATCH ? Math.max(1, budget) : MAX_BATCH);
    } catch (e) {
      // A protocol error costs the frontend its ring; so does a fault of the store or of
      // blkback itself, which must not take the domain (and every other disk) down.
      this.dead = true;
      this.opts.onRingError(e instanceof Error ? e : new Error(String(e)));
      return false;
    } finally {
      this.flushUnmaps();
    }
  }

  private pass(budget: number): boolean {
    if (this.barrierInFlight) return false; // later requests wait for the barrier
    const ring = this.ring;
    let n = 0;
    if (this.parked) {
      if (this.inflight.size > 0) return false; // the barrier waits for earlier requests
      this.spare = this.slots[0];
      this.slots[0] = this.parked;
      this.parked = null;
      n = 1;
    } else {
      let avail = ring.unconsumedRequests();
      while (avail > 0 && n < budget) {
        ring.consumeRequest(this.copyBuf);
        avail--;
        const s = this.slots[n];
        this.decode(s);
        if (s.op === BLKIF_OP_WRITE_BARRIER && s.status === BLKIF_RSP_OKAY) {
          // A barrier runs alone, after everything before it has completed.
          if (n > 0 || this.inflight.size > 0) {
            this.parked = s;
            this.slots[n] = this.spare!;
            this.spare = null;
            break;
          }
          n = 1;
          break;
        }
        n++;
      }
    }
    if (n === 0) return ring.finalCheckForRequests();
    this.mapIndirect(n);
    for (let i = 0; i < n; i++) this.validate(this.slots[i]);
    this.mapData(n);
    // Responses go out at the end of the pass, and every PUSH_AFTER_MS within it
    // (Linux pushes after every response).
    let pushed = performance.now();
    for (let i = 0; i < n; i++) {
      this.dispatch(this.slots[i]);
      const now = performance.now();
      if (now - pushed > PUSH_AFTER_MS && i < n - 1) {
        this.push();
        pushed = now;
      }
    }
    this.flushUnmaps();
    this.push();
    // A parked barrier goes on once nothing is in flight: at once when the store answered
    // the batch synchronously (another pass), else from the completion that empties the set.
    if (this.parked) return this.inflight.size === 0;
    return ring.finalCheckForRequests();
  }

  // ---- step 0: decode the private copy -------------------------------------------

  /** Decodes the copied entry into `s` and checks what the header alone decides. */
  private decode(s: Slot): void {
    const abi = this.opts.abi;
    const f = this.opts.features;
    const r = abi.readRequest(this.copyDv, 0, s.req); // id is at the same offset in every layout
    s.op = r.operation;
    s.rspOp = r.operation;
    s.id = r.id;
    s.sector = r.sectorNumber;
    s.status = BLKIF_RSP_OKAY;
    s.nseg = 0;
    s.indMaps.length = 0;
    s.maps.length = 0;
    s.t0 = performance.now();
    this.counters.requests++;
    switch (r.operation) {
      case BLKIF_OP_READ:
      case BLKIF_OP_WRITE:
        s.nseg = r.nrSegments;
        s.segs = r.segments;
        if (r.nrSegments < 1 || r.nrSegments > BLKIF_MAX_SEGMENTS_PER_REQUEST) s.status = BLKIF_RSP_ERROR;
        break;
      case BLKIF_OP_INDIRECT: {
        const ind = abi.readIndirectRequest(this.copyDv, 0, s.ind);
        s.rspOp = ind.indirectOp;
        s.sector = ind.sectorNumber;
        this.counters.indirect++;
        if (f.maxIndirectSegments === 0) s.status = BLKIF_RSP_EOPNOTSUPP;
        else if ((ind.indirectOp !== BLKIF_OP_READ && ind.indirectOp !== BLKIF_OP_WRITE)
          || ind.nrSegments < 1 || ind.nrSegments > f.maxIndirectSegments) s.status = BLKIF_RSP_ERROR;
        else s.nseg = ind.nrSegments;
        break;
      }
      case BLKIF_OP_WRITE_BARRIER:
        if (!f.barrier || !this.opts.mux.store.canFlush) s.status = BLKIF_RSP_EOPNOTSUPP;
        else if (r.nrSegments > BLKIF_MAX_SEGMENTS_PER_REQUEST) s.status = BLKIF_RSP_ERROR;
        else {
          s.nseg = r.nrSegments;
          s.segs = r.segments;
        }
        break;
      case BLKIF_OP_FLUSH_DISKCACHE:
        if (!f.flush || !this.opts.mux.store.canFlush) s.status = BLKIF_RSP_EOPNOTSUPP;
        else if (r.nrSegments !== 0) s.status = BLKIF_RSP_ERROR;
        break;
      case BLKIF_OP_DISCARD: {
        const d = abi.readDiscardRequest(this.copyDv, 0, s.disc);
        s.sector = d.sectorNumber;
        // A secure erase is not offered (no `discard-secure`): Linux answers EOPNOTSUPP.
        if (!f.discard || !this.opts.mux.store.canDiscard || (d.flag & 1) !== 0) s.status = BLKIF_RSP_EOPNOTSUPP;
        else if (this.opts.readOnly || !this.inRange(d.sectorNumber, d.nrSectors)) s.status = BLKIF_RSP_ERROR;
        break;
      }
      default:
        s.status = BLKIF_RSP_EOPNOTSUPP;
    }
  }

  /** `[sector, sector + count)` lies on the disk and is aligned to the logical sector size. */
  private inRange(sector: number, count: number): boolean {
    const align = this.opts.features.sectorSize / SECTOR_SIZE;
    return sector + count <= this.sectors && sector % align === 0 && count % align === 0;
  }

  // ---- step 1: indirect descriptors ----------------------------------------------

  /** Maps the batch's indirect pages, copies each descriptor out once, lets the pages go. */
  private mapIndirect(n: number): void {
    const w = this.want;
    for (let k = 0; k < n; k++) {
      const s = this.slots[k];
      if (s.op !== BLKIF_OP_INDIRECT || s.status !== BLKIF_RSP_OKAY) continue;
      const pages = Math.ceil(s.nseg / BLKIF_SEGS_PER_INDIRECT_FRAME);
      for (let i = 0; i < pages; i++) w.add(s, i, s.ind.indirectGrefs[i]);
    }
    if (w.n === 0) return;
    this.mapInto(true);
    for (let k = 0; k < n; k++) {
      const s = this.slots[k];
      if (s.op !== BLKIF_OP_INDIRECT || s.status !== BLKIF_RSP_OKAY) continue;
      const pages = Math.ceil(s.nseg / BLKIF_SEGS_PER_INDIRECT_FRAME);
      if (s.indMaps.length < pages || s.indMaps.some((m) => m === null)) s.status = BLKIF_RSP_ERROR;
      else {
        const segs = (s.segs = s.indSegs);
        for (let p = 0; p < pages; p++) {
          const page = s.indMaps[p]!.page;
          const dv = new DataView(page.buffer, page.byteOffset, page.byteLength);
          const last = Math.min(s.nseg, (p + 1) * BLKIF_SEGS_PER_INDIRECT_FRAME);
          for (let i = p * BLKIF_SEGS_PER_INDIRECT_FRAME, off = 0; i < last; i++, off += 8) {
            if (segs[i] === undefined) segs.push({ gref: 0, firstSect: 0, lastSect: 0 });
            readBlkifSegment(dv, off, segs[i]);
          }
        }
      }
      for (const m of s.indMaps) if (m) this.release(m);
      s.indMaps.length = 0;
    }
  }

  // ---- step 2: segment checks ----------------------------------------------------

  private validate(s: Slot): void {
    if (s.status !== BLKIF_RSP_OKAY || s.nseg === 0) return;
    const writing = s.rspOp !== BLKIF_OP_READ;
    if (writing && this.opts.readOnly) {
      s.status = BLKIF_RSP_ERROR;
      return;
    }
    let sectors = 0;
    for (let i = 0; i < s.nseg; i++) {
      const g = s.segs[i];
      if (g.firstSect > g.lastSect || g.lastSect > BLKIF_LAST_SECT_MAX) {
        s.status = BLKIF_RSP_ERROR;
        return;
      }
      sectors += g.lastSect - g.firstSect + 1;
    }
    if (!this.inRange(s.sector, sectors)) s.status = BLKIF_RSP_ERROR;
  }

  // ---- step 3: grants ------------------------------------------------------------

  private mapData(n: number): void {
    const w = this.want;
    for (let k = 0; k < n; k++) {
      const s = this.slots[k];
      if (s.status !== BLKIF_RSP_OKAY) continue;
      for (let i = 0; i < s.nseg; i++) w.add(s, i, s.segs[i].gref);
    }
    if (w.n === 0) return;
    this.mapInto(false);
    for (let k = 0; k < n; k++) {
      const s = this.slots[k];
      if (s.status !== BLKIF_RSP_OKAY) continue;
      for (let i = 0; i < s.nseg; i++) {
        if (!s.maps[i]) {
          s.status = BLKIF_RSP_ERROR;
          break;
        }
      }
    }
  }

  /**
   * Resolves the grants collected in {@link want} into the slots' `indMaps`
   * (`indirect`) or `maps`: persistent cache hits at once, misses (and every grant
   * without persistent grants) in one batched map. A grant already in use by a
   * request in flight, or twice in this batch, is refused when persistent (null).
   * Without persistent grants, indirect pages and WRITE data pages are mapped
   * read-only and READ data pages writable; persistent grants are mapped writable.
   */
  private mapInto(indirect: boolean): void {
    const cache = this.cache;
    const w = this.want;
    const maps: MapRequest[] = [];
    const missing: number[] = [];
    let pending: Set<number> | null = null;
    for (let j = 0; j < w.n; j++) {
      const ref = w.refs[j];
      const into = indirect ? w.slots[j].indMaps : w.slots[j].maps;
      if (cache) {
        const g = cache.get(ref);
        if (g) {
          if (g.active > 0) into[w.idx[j]] = null; // "requesting a grant already in use"
          else {
            g.active++;
            this.counters.persistentHits++;
            into[w.idx[j]] = g.mapping;
          }
          continue;
        }
        pending ??= new Set();
        if (pending.has(ref)) {
          into[w.idx[j]] = null; // twice in this batch
          continue;
        }
        pending.add(ref);
      }
      maps.push({ domid: this.opts.frontDomid, ref: ref as GrantRef, readonly: !cache && (indirect || w.slots[j].rspOp !== BLKIF_OP_READ) });
      missing.push(j);
    }
    if (maps.length > 0) {
      const res = this.gnttab.map(maps);
      this.counters.mapHypercalls++;
      this.counters.grantMaps += maps.length;
      for (let i = 0; i < res.length; i++) {
        const m = res[i];
        const j = missing[i];
        const into = indirect ? w.slots[j].indMaps : w.slots[j].maps;
        if (m.status !== GNTST.okay) {
          into[w.idx[j]] = null;
          continue;
        }
        const page = m.page!;
        if (cache) {
          const g: PersistentGrant = { ref: w.refs[j], handle: m.handle, page, active: 1, lastUse: 0, mapping: null! };
          g.mapping = { page, handle: null, persistent: g };
          const before = this.unmapLater.length;
          if (cache.add(g, this.unmapLater)) {
            this.counters.persistentEvictions += this.unmapLater.length - before;
            into[w.idx[j]] = g.mapping;
            continue;
          }
        }
        into[w.idx[j]] = { page, handle: m.handle, persistent: null };
      }
    }
    w.clear();
  }

  /** Lets a request's page go: idle again in the cache, or unmapped at the end of the pass. */
  private release(m: Mapping): void {
    if (m.persistent) m.persistent.active--;
    else this.unmapLater.push(m.handle!);
  }

  private flushUnmaps(): void {
    const h = this.unmapLater;
    if (h.length === 0) return;
    const st = this.gnttab.unmap(h);
    this.counters.unmapHypercalls++;
    this.counters.grantUnmaps += h.length;
    h.length = 0;
    for (const s of st) if (s !== GNTST.okay) throw new InvariantError(`unmap of our own handle failed: ${s}`);
  }

  // ---- step 4: the store ---------------------------------------------------------

  private dispatch(s: Slot): void {
    if (s.status !== BLKIF_RSP_OKAY) {
      for (const m of s.maps) if (m) this.release(m);
      this.respond(s.id, s.rspOp, s.status, s.t0);
      return;
    }
    const maps: Mapping[] = [];
    const iov: Uint8Array[] = [];
    let bytes = 0;
    for (let i = 0; i < s.nseg; i++) {
      const g = s.segs[i];
      const m = s.maps[i]!;
      maps.push(m);
      // A whole page (the common case) is the mapping's own view; only parts need a subarray.
      iov.push(g.firstSect === 0 && g.lastSect === BLKIF_LAST_SECT_MAX ? m.page : m.page.subarray(g.firstSect * SECTOR_SIZE, (g.lastSect + 1) * SECTOR_SIZE));
      bytes += (g.lastSect - g.firstSect + 1) * SECTOR_SIZE;
    }
    const op = s.op === BLKIF_OP_INDIRECT ? s.rspOp : s.op;
    const f: InFlight = { id: this.opts.mux.nextId(), reqId: s.id, t0: s.t0, rspOp: s.rspOp, op, maps, bytes, thenFlush: false };
    let req: StorageRequest;
    switch (op) {
      case BLKIF_OP_READ: req = { id: f.id, op: 'read', offset: s.sector * SECTOR_SIZE, iov }; break;
      case BLKIF_OP_WRITE: req = { id: f.id, op: 'write', offset: s.sector * SECTOR_SIZE, iov }; break;
      case BLKIF_OP_DISCARD:
        f.bytes = s.disc.nrSectors * SECTOR_SIZE;
        req = { id: f.id, op: 'discard', offset: s.sector * SECTOR_SIZE, length: f.bytes, iov: [] };
        break;
      case BLKIF_OP_WRITE_BARRIER:
        this.barrierInFlight = true;
        // With data: write, then flush (Linux: PREFLUSH after draining; the drain is done).
        f.thenFlush = s.nseg > 0;
        req = s.nseg > 0 ? { id: f.id, op: 'write', offset: s.sector * SECTOR_SIZE, iov } : { id: f.id, op: 'flush', offset: 0, iov: [] };
        break;
      default: req = { id: f.id, op: 'flush', offset: 0, iov: [] };
    }
    this.submit(f, req);
  }

  private submit(f: InFlight, req: StorageRequest): void {
    const st = this.opts.mux.submit(this, req);
    if (st === STORAGE_PENDING) this.inflight.set(f.id, f);
    else this.finish(f, st);
  }

  /** A store request of `f` completed with `st`: go on to a barrier's flush, or respond. */
  private finish(f: InFlight, st: StorageStatus): void {
    if (f.thenFlush && st === 0) {
      f.thenFlush = false;
      f.id = this.opts.mux.nextId();
      this.submit(f, { id: f.id, op: 'flush', offset: 0, iov: [] });
      return;
    }
    for (const m of f.maps) this.release(m);
    this.account(f, st);
    if (f.op === BLKIF_OP_WRITE_BARRIER) this.barrierInFlight = false;
    if (!this.dead && !this.closing) this.respond(f.reqId, f.rspOp, st, f.t0);
  }

  private account(f: InFlight, st: StorageStatus): void {
    if (st !== 0) return;
    const c = this.counters;
    switch (f.op) {
      case BLKIF_OP_READ: c.reads++; c.bytesRead += f.bytes; break;
      case BLKIF_OP_WRITE: c.writes++; c.bytesWritten += f.bytes; break;
      case BLKIF_OP_DISCARD: c.discards++; c.bytesDiscarded += f.bytes; break;
      case BLKIF_OP_WRITE_BARRIER: c.barriers++; c.bytesWritten += f.bytes; break;
      default: c.flushes++;
    }
  }

  /** A pending store request of this ring completed (called by its {@link StoreMux}). */
  completeAsync(id: number, status: StorageStatus): void {
    const f = this.inflight.get(id);
    if (!f) throw new InvariantError(`store completed unknown request ${id}`);
    this.inflight.delete(id);
    this.finish(f, status);
    // Completions that arrive in the same event-loop turn share one unmap and one push.
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushCompletions);
    }
    if (this.inflight.size === 0) {
      if (this.drained) this.drained();
      else if ((this.parked || f.op === BLKIF_OP_WRITE_BARRIER) && !this.dead && !this.closing) this.opts.kick();
    }
  }

  private flushScheduled = false;
  private readonly flushCompletions = (): void => {
    this.flushScheduled = false;
    this.flushUnmaps();
    if (!this.dead && !this.closing) this.push();
  };

  private respond(id: number, operation: number, status: number, t0: number): void {
    if (status !== BLKIF_RSP_OKAY) this.counters.errors++;
    this.latencyUs[latencyBucket((performance.now() - t0) * 1000)]++;
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
   * Stops serving, waits (up to `timeoutMs`) for requests the store still holds
   * (their grants are unmapped as they complete), then unmaps every persistent grant.
   */
  async close(timeoutMs = 10_000): Promise<void> {
    this.closing = true;
    if (this.inflight.size > 0) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, timeoutMs);
        this.drained = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    if (this.cache) {
      for (const g of this.cache.map.values()) this.unmapLater.push(g.handle);
      this.cache.map.clear();
    }
    this.flushUnmaps();
  }
}

/**
 * Serves every blkback ring of a domain (one per dom0 vCPU): round-robin, at most
 * {@link MAX_BATCH} requests per ring per pass, weighted between guests by their
 * scheduling weights once one is not the default (see {@link WeightedRingScheduler}).
 */
export class BlkbackScheduler extends WeightedRingScheduler<BlkbackRing> {
  constructor() {
    super({ maxBatch: MAX_BATCH });
  }
}
