/**
 * Xen's shared-ring protocol (`xen/include/public/io/ring.h`) over a frame extent.
 *
 * A split driver's request/response ring is one shared region: a 64-byte header
 * ({@link SRING_HEADER}, C `struct <name>_sring`) followed by `size` entries of
 * `entrySize` bytes (`ring[]`, the union of request and response). Each end keeps
 * private indices next to it. The frontend produces requests and consumes
 * responses ({@link FrontRing}); the backend consumes requests and produces
 * responses ({@link BackRing}). They are separate classes, so a backend operation
 * cannot be called on a frontend ring. Only the frontend initialises the shared
 * header ({@link FrontRing.init}); a backend only attaches ({@link BackRing.attach}).
 *
 * ```
 *   byte 0        4          8         12         16    20          64
 *   | req_prod | req_event | rsp_prod | rsp_event | pvt | __pad ... | ring[0] ring[1] ... ring[size-1]
 *     [front]    [back]      [back]     [front]
 * ```
 *
 * Indices are free-running u32 (`RING_IDX`): they wrap modulo 2^32, every
 * comparison is a u32 difference `(a - b) >>> 0`, and the slot of index `i` is
 * `i & (size - 1)` (size is a power of two, no slot is wasted).
 *
 * Two access paths, never mixed: the four header indices are read and written only
 * through `Atomics` on an Int32Array over the header (converted with `>>> 0`);
 * entry payloads only through the {@link FrontRing.view}/{@link BackRing.view}
 * DataView, little-endian, or copied out whole with `copyRequest`/`copyResponse`.
 *
 * Memory ordering. ring.h needs `xen_wmb` (slot writes before the producer index),
 * `xen_rmb` (the producer index before slot reads) and `xen_mb` (our index store
 * before the peer's event-index load, and our event store before the re-read of
 * the producer index). JavaScript `Atomics` operations are sequentially consistent:
 * an `Atomics.store` releases every earlier write of its thread, DataView writes
 * included; an `Atomics.load` that reads it acquires them; and SeqCst operations
 * are never reordered with one another, so a store followed by a load is a full
 * barrier. Because every index access here is an `Atomics` operation, those three
 * barriers are implied; each barrier point below carries a one-line comment saying
 * who must see what first.
 *
 * Shared memory is hostile input: a producer index that could not have been
 * written by an honest peer raises {@link ProtocolError} and nothing beyond the
 * last good index is consumed. Misuse by the caller (consuming what was never
 * seen, producing into a full ring) raises `InvariantError` (pvio's own bug).
 *
 * The hot methods (`produce*`, `consume*`, `push*`, `unconsumed*`, `finalCheck*`,
 * `copy*`) allocate nothing unless they throw.
 *
 * @see io/ring.h
 */
import { defineLayout, field } from './layout.ts';
import { invariant, InvariantError, ProtocolError } from './errors.ts';

/**
 * The shared ring header, C `struct <name>_sring` from `DEFINE_RING_TYPES`
 * (io/ring.h), 64 bytes; the entries (`ring[]`) start right after it.
 *
 * ```c
 * struct __name##_sring {
 *     RING_IDX req_prod, req_event;   // u32 @0 [front], u32 @4 [back]
 *     RING_IDX rsp_prod, rsp_event;   // u32 @8 [back],  u32 @12 [front]
 *     union { struct { uint8_t smartpoll_active; } netif;
 *             struct { uint8_t msg; } tapif_user;
 *             uint8_t pvt_pad[4]; } pvt;   // @16, zeroed at init
 *     uint8_t __pad[44];                   // @20, zeroed at init
 *     union __name##_sring_entry ring[1];  // @64, variable-length
 * };
 * ```
 * @see io/ring.h DEFINE_RING_TYPES
 */
export const SRING_HEADER = defineLayout('sring', 'io/ring.h', 64, {
  req_prod: field(0, 'u32', 'front'),
  req_event: field(4, 'u32', 'back'),
  rsp_prod: field(8, 'u32', 'back'),
  rsp_event: field(12, 'u32', 'front'),
  pvt: field(16, 'bytes', 'either', 4),
  __pad: field(20, 'bytes', 'front', 44),
});

/** Byte offset of `ring[0]` in the shared region (= sizeof the header, 64). @see io/ring.h `__RING_SIZE` */
export const SRING_RING_OFFSET = SRING_HEADER.size;

// Int32Array word indices of the header fields, from the layout table.
const REQ_PROD = wordIndex(SRING_HEADER.fields.req_prod.offset);
const REQ_EVENT = wordIndex(SRING_HEADER.fields.req_event.offset);
const RSP_PROD = wordIndex(SRING_HEADER.fields.rsp_prod.offset);
const RSP_EVENT = wordIndex(SRING_HEADER.fields.rsp_event.offset);
const PVT_OFFSET = SRING_HEADER.fields.pvt.offset;
const PAD_END = SRING_HEADER.fields.__pad.offset + SRING_HEADER.fields.__pad.size;
invariant(PAD_END === SRING_RING_OFFSET, 'sring: __pad must end where ring[] starts');
invariant(PVT_OFFSET + SRING_HEADER.fields.pvt.size === SRING_HEADER.fields.__pad.offset, 'sring: pvt must abut __pad');

function wordIndex(byteOffset: number): number {
  invariant(byteOffset % 4 === 0, 'sring: index field is not 4-byte aligned');
  return byteOffset >> 2;
}

/**
 * Number of entries a ring of `ringBytes` bytes holds: the entries that fit after
 * the 64-byte header, rounded down to a power of two. E.g. blkif (112-byte
 * entries): 4096 → 32, 8192 → 64, 16384 → 128, 32768 → 256, 65536 → 512.
 *
 * @param ringBytes size of the whole shared region in bytes (header included).
 * @param entrySize size of one entry in bytes: max(sizeof request, sizeof response).
 * @returns the entry count (a power of two), or 0 when not even one entry fits.
 * @throws InvariantError when an argument is not a non-negative integer.
 * @see io/ring.h `__RING_SIZE` / `__CONST_RING_SIZE`
 */
export function ringSize(ringBytes: number, entrySize: number): number {
  invariant(Number.isSafeInteger(ringBytes) && ringBytes >= 0, 'ringSize: ringBytes must be a byte count');
  invariant(Number.isSafeInteger(entrySize) && entrySize > 0, 'ringSize: entrySize must be a positive byte count');
  if (ringBytes <= SRING_RING_OFFSET) return 0;
  const n = Math.min(Math.floor((ringBytes - SRING_RING_OFFSET) / entrySize), 0x8000_0000);
  if (n === 0) return 0;
  return 2 ** (31 - Math.clz32(n)); // __RD32: round down to a power of two
}

/** The four shared indices, as u32 numbers (a snapshot; for tests and debugging). */
export interface SringIndices {
  reqProd: number;
  reqEvent: number;
  rspProd: number;
  rspEvent: number;
}

/**
 * Reads the shared header's four indices with `Atomics.load` (one snapshot, not
 * atomic as a whole). For tests, debugging and dumps; not for the data path.
 * @param mem view whose byte 0 is the ring header; byteOffset a multiple of 4.
 */
export function readSringIndices(mem: Uint8Array): SringIndices {
  const idx = headerWords(mem);
  return {
    reqProd: Atomics.load(idx, REQ_PROD) >>> 0,
    reqEvent: Atomics.load(idx, REQ_EVENT) >>> 0,
    rspProd: Atomics.load(idx, RSP_PROD) >>> 0,
    rspEvent: Atomics.load(idx, RSP_EVENT) >>> 0,
  };
}

/** Counters of a {@link FrontRing}; plain numbers a benchmark reads and may reset. */
export interface FrontRingCounters {
  /** Requests produced (each advance of `reqProdPvt`). */
  requestsProduced: number;
  /** Responses consumed (each advance of `rspCons`). */
  responsesConsumed: number;
  /** `pushRequestsAndCheckNotify` calls that published requests and asked for a notification. */
  notificationsSent: number;
  /** `pushRequestsAndCheckNotify` calls that published requests but needed no notification. */
  notificationsSuppressed: number;
  /** `finalCheckForResponses` calls. */
  finalChecks: number;
  /** `finalCheckForResponses` calls that found responses (before or after arming). */
  finalChecksWithWork: number;
  /** Impossible `rsp_prod` values seen (each one raised a ProtocolError). */
  protocolErrors: number;
}

/** Counters of a {@link BackRing}; plain numbers a benchmark reads and may reset. */
export interface BackRingCounters {
  /** Requests consumed (each advance of `reqCons`). */
  requestsConsumed: number;
  /**
   * Request slots copied out of shared memory by {@link BackRing.copyRequest}, the one
   * accessor that reads a request: equal to `requestsConsumed` when every request is
   * read exactly once (no double fetch).
   */
  requestCopies: number;
  /** Responses produced (each advance of `rspProdPvt`). */
  responsesProduced: number;
  /** `pushResponsesAndCheckNotify` calls that published responses and asked for a notification. */
  notificationsSent: number;
  /** `pushResponsesAndCheckNotify` calls that published responses but needed no notification. */
  notificationsSuppressed: number;
  /** `finalCheckForRequests` calls. */
  finalChecks: number;
  /** `finalCheckForRequests` calls that found requests (before or after arming). */
  finalChecksWithWork: number;
  /** Impossible `req_prod` values seen (each one raised a ProtocolError). */
  protocolErrors: number;
}

/** What both ends derive from the shared region: checked once at construction. */
interface Geometry {
  idx: Int32Array;
  view: DataView;
  size: number;
  slots: Uint8Array[];
}

function headerWords(mem: Uint8Array): Int32Array {
  invariant(mem instanceof Uint8Array, 'ring: mem must be a Uint8Array');
  invariant(mem.byteOffset % 4 === 0, 'ring: mem.byteOffset must be a multiple of 4 (Atomics on the indices)');
  invariant(mem.byteLength >= SRING_RING_OFFSET, 'ring: mem is smaller than the 64-byte ring header');
  return new Int32Array(mem.buffer, mem.byteOffset, SRING_RING_OFFSET >> 2);
}

function geometry(mem: Uint8Array, entrySize: number): Geometry {
  const idx = headerWords(mem);
  const size = ringSize(mem.byteLength, entrySize);
  invariant(size >= 1, 'ring: region too small for one entry');
  const slots: Uint8Array[] = new Array(size);
  for (let i = 0; i < size; i++) {
    const start = SRING_RING_OFFSET + i * entrySize;
    slots[i] = mem.subarray(start, start + entrySize);
  }
  return { idx, view: new DataView(mem.buffer, mem.byteOffset, mem.byteLength), size, slots };
}

function checkStartIdx(startIdx: number): number {
  invariant(Number.isInteger(startIdx) && startIdx >= 0 && startIdx <= 0xffff_ffff, 'ring: startIdx must be a u32');
  return startIdx >>> 0;
}

function checkBatch(batch: number, size: number): void {
  if (!(Number.isInteger(batch) && batch >= 1 && batch <= size)) {
    throw new InvariantError(`ring: final-check batch ${batch} is not in 1..${size}`);
  }
}

/**
 * `RING_PUSH_*_AND_CHECK_NOTIFY` for either direction: publishes `newProd` at
 * index slot `prodI` and says whether the peer must be notified — iff its event
 * index (slot `eventI`) lies in `(old, new]`, i.e. `(new - event) < (new - old)` as
 * u32. Counts the decision in `counters`.
 * @see io/ring.h `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`
 */
function pushAndCheckNotify(
  idx: Int32Array, prodI: number, eventI: number, newProd: number,
  counters: { notificationsSent: number; notificationsSuppressed: number },
): boolean {
  const oldProd = Atomics.load(idx, prodI) >>> 0;
  // xen_wmb: the peer must see the slots before it sees the producer index move.
  Atomics.store(idx, prodI, newProd | 0);
  // xen_mb: the peer must see the new producer index before we read its event index, or both ends sleep.
  const event = Atomics.load(idx, eventI) >>> 0;
  const notify = ((newProd - event) >>> 0) < ((newProd - oldProd) >>> 0);
  if (notify) counters.notificationsSent++;
  else if (newProd !== oldProd) counters.notificationsSuppressed++;
  return notify;
}

/**
 * The frontend's end of a ring: produces requests, consumes responses.
 *
 * Typical use (blkfront):
 * ```ts
 * const ring = FrontRing.init(mem, BLKIF_RING_ENTRY_SIZE);
 * const off = ring.produceRequest();            // slot at reqProdPvt, then reqProdPvt++
 * writeBlkifRequest(ring.view, off, req);
 * if (ring.pushRequestsAndCheckNotify()) evtchn.notify();
 * // on an event:
 * do {
 *   for (let n = ring.unconsumedResponses(); n > 0; n--) { ring.consumeResponse(buf); handle(buf); }
 * } while (ring.finalCheckForResponses());
 * ```
 * @see io/ring.h `struct __name##_front_ring`
 */
export class FrontRing {
  /** Number of entries (a power of two). @see io/ring.h `RING_SIZE` */
  readonly size: number;
  /** Bytes per entry (stride of `ring[]`). */
  readonly entrySize: number;
  /**
   * DataView over the whole shared region (byte 0 = the header). Request slots are
   * written through it at {@link requestOffset}; little-endian.
   */
  readonly view: DataView;
  /** Counters for benchmarks. */
  readonly counters: FrontRingCounters = {
    requestsProduced: 0, responsesConsumed: 0, notificationsSent: 0,
    notificationsSuppressed: 0, finalChecks: 0, finalChecksWithWork: 0, protocolErrors: 0,
  };

  readonly #idx: Int32Array;
  readonly #slots: Uint8Array[];
  readonly #mask: number;
  #reqProdPvt: number;
  #rspCons: number;
  /** Last `rsp_prod` that passed the overflow checks: the bound for `rspCons`. */
  #rspProdSeen: number;
  /** Per-slot views of the first {@link #headBytes} bytes, for partial response copies. */
  #head: Uint8Array[] = [];
  #headBytes = -1;

  private constructor(mem: Uint8Array, entrySize: number, startIdx: number) {
    const g = geometry(mem, entrySize);
    this.size = g.size;
    this.entrySize = entrySize;
    this.view = g.view;
    this.#idx = g.idx;
    this.#slots = g.slots;
    this.#mask = g.size - 1;
    this.#reqProdPvt = startIdx;
    this.#rspCons = startIdx;
    this.#rspProdSeen = startIdx;
  }

  /**
   * Initialises the shared header and returns the frontend's end of the ring:
   * `req_prod = rsp_prod = startIdx`, `req_event = rsp_event = startIdx + 1`,
   * `pvt` and `__pad` zeroed; private `reqProdPvt = rspCons = startIdx`. Entries are
   * not touched. Only the frontend initialises a ring, before advertising it.
   *
   * @param mem view over the shared ring extent (a SharedArrayBuffer of 1..16
   *   pages); byte 0 is the header; byteOffset a multiple of 4.
   * @param entrySize bytes per entry (max of request and response size).
   * @param startIdx u32 to start all indices at; Xen always uses 0 — other values
   *   exist so tests can start next to the 2^32 wrap.
   * @throws InvariantError when the region holds no entry or the arguments are bad.
   * @see io/ring.h `SHARED_RING_INIT`, `FRONT_RING_INIT`
   */
  static init(mem: Uint8Array, entrySize: number, startIdx = 0): FrontRing {
    const start = checkStartIdx(startIdx);
    const ring = new FrontRing(mem, entrySize, start);
    const idx = ring.#idx;
    for (let off = PVT_OFFSET; off < PAD_END; off++) ring.view.setUint8(off, 0);
    Atomics.store(idx, REQ_EVENT, (start + 1) | 0);
    Atomics.store(idx, RSP_EVENT, (start + 1) | 0);
    Atomics.store(idx, REQ_PROD, start | 0);
    Atomics.store(idx, RSP_PROD, start | 0);
    return ring;
  }

  /**
   * Attaches to an already-initialised shared ring without writing it; private
   * `reqProdPvt = rspCons = startIdx` (e.g. on reconnect).
   * @param mem, entrySize as for {@link FrontRing.init}.
   * @param startIdx u32 where the private indices start.
   * @see io/ring.h `FRONT_RING_ATTACH`
   */
  static attach(mem: Uint8Array, entrySize: number, startIdx: number): FrontRing {
    return new FrontRing(mem, entrySize, checkStartIdx(startIdx));
  }

  /**
   * Next request index to fill (private, u32). Assigning advances it (`ring.reqProdPvt++`
   * wraps correctly); it may only move forward, by at most {@link freeRequests}.
   * @throws InvariantError on a backward move or one past the free slots.
   * @see io/ring.h `req_prod_pvt`
   */
  get reqProdPvt(): number {
    return this.#reqProdPvt;
  }
  set reqProdPvt(value: number) {
    const v = value >>> 0;
    const d = (v - this.#reqProdPvt) >>> 0;
    if (d > this.freeRequests()) {
      throw new InvariantError(`FrontRing: reqProdPvt ${v} moves back or past the ${this.freeRequests()} free slots`);
    }
    this.counters.requestsProduced += d;
    this.#reqProdPvt = v;
  }

  /**
   * Next response index to consume (private, u32). Assigning advances it; it may
   * only move forward, up to the `rsp_prod` last read by {@link unconsumedResponses}.
   * @throws InvariantError on a backward move or one past the responses seen.
   * @see io/ring.h `rsp_cons`
   */
  get rspCons(): number {
    return this.#rspCons;
  }
  set rspCons(value: number) {
    const v = value >>> 0;
    const d = (v - this.#rspCons) >>> 0;
    if (d > ((this.#rspProdSeen - this.#rspCons) >>> 0)) {
      throw new InvariantError(`FrontRing: rspCons ${v} moves back or past rsp_prod ${this.#rspProdSeen} last read`);
    }
    this.counters.responsesConsumed += d;
    this.#rspCons = v;
  }

  /**
   * Request slots free to fill: `size - (reqProdPvt - rspCons)`, in entries.
   * @see io/ring.h `RING_FREE_REQUESTS`
   */
  freeRequests(): number {
    return this.size - ((this.#reqProdPvt - this.#rspCons) >>> 0);
  }

  /** True when no request slot is free. @see io/ring.h `RING_FULL` */
  isFull(): boolean {
    return this.freeRequests() === 0;
  }

  /**
   * Byte offset in {@link view} of the slot for request index `idx` (any u32;
   * reduced modulo size).
   * @see io/ring.h `RING_GET_REQUEST`
   */
  requestOffset(idx: number): number {
    return SRING_RING_OFFSET + (idx & this.#mask) * this.entrySize;
  }

  /**
   * Claims the slot at `reqProdPvt` and advances `reqProdPvt` by one; the caller
   * fills the returned slot before the next push.
   * @returns byte offset of the slot in {@link view}.
   * @throws InvariantError when the ring is full (check {@link isFull} first).
   * @see io/ring.h `RING_GET_REQUEST(r, r->req_prod_pvt++)`
   */
  produceRequest(): number {
    if (this.freeRequests() === 0) throw new InvariantError('FrontRing: produceRequest on a full ring');
    const off = this.requestOffset(this.#reqProdPvt);
    this.#reqProdPvt = (this.#reqProdPvt + 1) >>> 0;
    this.counters.requestsProduced++;
    return off;
  }

  /**
   * Claims the slot at `reqProdPvt` like {@link produceRequest} and copies `entry`
   * (a request built in private memory, at most {@link entrySize} bytes) into it
   * with one copy: the way to fill a slot cheaply (stores into shared memory cost
   * several times more than into a private buffer).
   * @throws InvariantError when the ring is full or `entry` is longer than a slot.
   * @see io/ring.h `*RING_GET_REQUEST(r, r->req_prod_pvt++) = req`
   */
  produceRequestFrom(entry: Uint8Array): void {
    if (entry.length > this.entrySize) throw new InvariantError('FrontRing: entry longer than a slot');
    const off = this.produceRequest();
    this.#slots[((off - SRING_RING_OFFSET) / this.entrySize) | 0].set(entry);
  }

  /**
   * Publishes every produced request: `req_prod = reqProdPvt`. No notification
   * decision; use {@link pushRequestsAndCheckNotify} unless the backend polls.
   * @see io/ring.h `RING_PUSH_REQUESTS`
   */
  pushRequests(): void {
    // xen_wmb: the backend must see the request slots before it sees req_prod move.
    Atomics.store(this.#idx, REQ_PROD, this.#reqProdPvt | 0);
  }

  /**
   * Publishes every produced request and says whether the backend must be
   * notified: with `old` the shared `req_prod` before the store and `new =
   * reqProdPvt`, notify iff `(new - req_event) < (new - old)` as u32, i.e. iff
   * the backend's `req_event` lies in `(old, new]`.
   * @returns true when the caller must send an event-channel notification.
   * @see io/ring.h `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`
   */
  pushRequestsAndCheckNotify(): boolean {
    return pushAndCheckNotify(this.#idx, REQ_PROD, REQ_EVENT, this.#reqProdPvt, this.counters);
  }

  /**
   * True when `prod` is more than `size` entries ahead of `rspCons`: an
   * ill-behaved backend. A pure predicate on the argument.
   * @see io/ring.h `RING_RESPONSE_PROD_OVERFLOW`
   */
  responseProdOverflow(prod: number): boolean {
    return ((prod - this.#rspCons) >>> 0) > this.size;
  }

  /**
   * Reads `rsp_prod` once and returns how many responses are ready (entries from
   * `rspCons`); afterwards `rspCons` may advance up to that `rsp_prod`.
   * @throws ProtocolError when `rsp_prod` is impossible: more than `size` ahead
   *   (`RING_RESPONSE_PROD_OVERFLOW`), ahead of the requests produced, or behind an
   *   `rsp_prod` already read. The bad value is never consumed; the caller
   *   disables the device.
   * @see io/ring.h `RING_HAS_UNCONSUMED_RESPONSES` / `XEN_RING_NR_UNCONSUMED_RESPONSES`
   */
  unconsumedResponses(): number {
    const prod = Atomics.load(this.#idx, RSP_PROD) >>> 0;
    // xen_rmb: we read rsp_prod before any response slot up to it (the load acquires the backend's slot writes).
    const cons = this.#rspCons;
    const ready = (prod - cons) >>> 0;
    if (ready > this.size
        || ready > ((this.#reqProdPvt - cons) >>> 0)
        || ready < ((this.#rspProdSeen - cons) >>> 0)) {
      this.counters.protocolErrors++;
      throw new ProtocolError(
        `FrontRing: impossible rsp_prod ${prod} (rsp_cons ${cons}, req_prod_pvt ${this.#reqProdPvt}, ` +
        `last rsp_prod ${this.#rspProdSeen}, size ${this.size}) [RING_RESPONSE_PROD_OVERFLOW]`);
    }
    this.#rspProdSeen = prod;
    return ready;
  }

  /**
   * Copies the response slot for index `idx` once, whole, into a private buffer;
   * decode and validate the copy, never the shared slot (XSA-155).
   * @param into at least `bytes` long; bytes `[0, bytes)` are written.
   * @param bytes how much of the slot to copy (default the whole entry; a consumer
   *   copies just the response struct, e.g. 16 of blkif's 112 bytes).
   * @throws InvariantError when `into` is too short or `bytes` exceeds an entry.
   * @see io/ring.h `RING_COPY_RESPONSE`
   */
  copyResponse(idx: number, into: Uint8Array, bytes: number = this.entrySize): void {
    if (bytes > this.entrySize || into.length < bytes) throw new InvariantError('FrontRing: copyResponse buffer shorter than the bytes asked');
    if (bytes === this.entrySize) {
      into.set(this.#slots[idx & this.#mask]);
      return;
    }
    if (bytes !== this.#headBytes) {
      // Views of the first `bytes` of every slot, made once per length (no allocation per copy).
      this.#head = this.#slots.map((sl) => sl.subarray(0, bytes));
      this.#headBytes = bytes;
    }
    into.set(this.#head[idx & this.#mask]);
  }

  /**
   * Copies the response at `rspCons` (its first `bytes`, default the whole entry)
   * into `into` and advances `rspCons` by one.
   * @throws InvariantError when no response is known to be ready (call
   *   {@link unconsumedResponses} first) or `into` is too short.
   * @see io/ring.h `RING_COPY_RESPONSE(r, r->rsp_cons++, &rsp)`
   */
  consumeResponse(into: Uint8Array, bytes: number = this.entrySize): void {
    const cons = this.#rspCons;
    if (cons === this.#rspProdSeen) throw new InvariantError('FrontRing: consumeResponse with no response seen');
    this.copyResponse(cons, into, bytes);
    this.#rspCons = (cons + 1) >>> 0;
    this.counters.responsesConsumed++;
  }

  /**
   * The check before sleeping. If responses are ready, returns true. Otherwise
   * arms `rsp_event = rspCons + batch` (ask to be notified when the backend
   * publishes the `batch`-th next response) and checks again, closing the race
   * with a backend that published in between.
   *
   * `batch > 1` is the custom batching of ring.h's comment: fewer notifications,
   * but the caller must have at least `batch` responses outstanding (or a timer),
   * or it sleeps with work pending.
   * @param batch entries, 1..size (default 1, exactly `RING_FINAL_CHECK_FOR_RESPONSES`).
   * @returns true when responses are ready (consume them, then check again).
   * @throws ProtocolError as {@link unconsumedResponses}; InvariantError for a bad batch.
   * @see io/ring.h `RING_FINAL_CHECK_FOR_RESPONSES`
   */
  finalCheckForResponses(batch = 1): boolean {
    if (batch !== 1) checkBatch(batch, this.size);
    this.counters.finalChecks++;
    if (this.unconsumedResponses() !== 0) {
      this.counters.finalChecksWithWork++;
      return true;
    }
    Atomics.store(this.#idx, RSP_EVENT, (this.#rspCons + batch) | 0);
    // xen_mb: the backend must see the new rsp_event before we re-read rsp_prod, or its push misses us.
    if (this.unconsumedResponses() !== 0) {
      this.counters.finalChecksWithWork++;
      return true;
    }
    return false;
  }
}

/**
 * The backend's end of a ring: consumes requests, produces responses. A backend
 * never initialises the shared header; it attaches after the frontend has.
 *
 * Typical use (blkback), bounded per pass:
 * ```ts
 * const ring = BackRing.attach(mem, BLKIF_RING_ENTRY_SIZE);
 * do {
 *   for (let n = ring.unconsumedRequests(); n > 0; n--) {
 *     ring.consumeRequest(buf);                  // copy once, then validate the copy
 *     const off = ring.produceResponse();
 *     writeBlkifResponse(ring.view, off, rsp);
 *   }
 *   if (ring.pushResponsesAndCheckNotify()) evtchn.notify();
 * } while (ring.finalCheckForRequests());
 * ```
 * @see io/ring.h `struct __name##_back_ring`
 */
export class BackRing {
  /** Number of entries (a power of two). @see io/ring.h `RING_SIZE` */
  readonly size: number;
  /** Bytes per entry (stride of `ring[]`). */
  readonly entrySize: number;
  /**
   * DataView over the whole shared region (byte 0 = the header). Response slots
   * are written through it at {@link responseOffset}; little-endian.
   */
  readonly view: DataView;
  /** Counters for benchmarks. */
  readonly counters: BackRingCounters = {
    requestsConsumed: 0, requestCopies: 0, responsesProduced: 0, notificationsSent: 0,
    notificationsSuppressed: 0, finalChecks: 0, finalChecksWithWork: 0, protocolErrors: 0,
  };

  readonly #idx: Int32Array;
  readonly #slots: Uint8Array[];
  readonly #mask: number;
  #reqCons: number;
  #rspProdPvt: number;
  /** Last `req_prod` that passed the overflow checks: the bound for `reqCons`. */
  #reqProdSeen: number;

  private constructor(mem: Uint8Array, entrySize: number, startIdx: number) {
    const g = geometry(mem, entrySize);
    this.size = g.size;
    this.entrySize = entrySize;
    this.view = g.view;
    this.#idx = g.idx;
    this.#slots = g.slots;
    this.#mask = g.size - 1;
    this.#reqCons = startIdx;
    this.#rspProdPvt = startIdx;
    this.#reqProdSeen = startIdx;
  }

  /**
   * Attaches to a shared ring the frontend initialised, without writing it;
   * private `reqCons = rspProdPvt = startIdx`.
   * @param mem view over the shared ring extent (a SharedArrayBuffer of 1..16
   *   pages, mapped from the frontend's grants); byteOffset a multiple of 4.
   * @param entrySize bytes per entry (max of request and response size).
   * @param startIdx u32 where the private indices start (0 for a fresh ring; the
   *   shared `rsp_prod` on reconnect, as Linux netback does).
   * @throws InvariantError when the region holds no entry or the arguments are bad.
   * @see io/ring.h `BACK_RING_ATTACH` (`BACK_RING_INIT` when startIdx is 0)
   */
  static attach(mem: Uint8Array, entrySize: number, startIdx = 0): BackRing {
    return new BackRing(mem, entrySize, checkStartIdx(startIdx));
  }

  /**
   * Next request index to consume (private, u32). Assigning advances it; it may
   * only move forward, up to the `req_prod` last read by {@link unconsumedRequests}.
   * Linux blkback advances it before building the response.
   * @throws InvariantError on a backward move or one past the requests seen.
   * @see io/ring.h `req_cons`
   */
  get reqCons(): number {
    return this.#reqCons;
  }
  set reqCons(value: number) {
    const v = value >>> 0;
    const d = (v - this.#reqCons) >>> 0;
    if (d > ((this.#reqProdSeen - this.#reqCons) >>> 0)) {
      throw new InvariantError(`BackRing: reqCons ${v} moves back or past req_prod ${this.#reqProdSeen} last read`);
    }
    this.counters.requestsConsumed += d;
    this.#reqCons = v;
  }

  /**
   * Next response index to fill (private, u32). Assigning advances it; it may
   * only move forward and never past `reqCons` (one response per consumed request).
   * @throws InvariantError on a backward move or a response with no request.
   * @see io/ring.h `rsp_prod_pvt`
   */
  get rspProdPvt(): number {
    return this.#rspProdPvt;
  }
  set rspProdPvt(value: number) {
    const v = value >>> 0;
    const d = (v - this.#rspProdPvt) >>> 0;
    if (d > ((this.#reqCons - this.#rspProdPvt) >>> 0)) {
      throw new InvariantError(`BackRing: rspProdPvt ${v} moves back or past req_cons ${this.#reqCons}`);
    }
    this.counters.responsesProduced += d;
    this.#rspProdPvt = v;
  }

  /**
   * True when consuming request index `cons` would leave no response slot for it:
   * `(cons - rspProdPvt) >= size`. The loop-termination test of a consumer.
   * @see io/ring.h `RING_REQUEST_CONS_OVERFLOW`
   */
  requestConsOverflow(cons: number): boolean {
    return ((cons - this.#rspProdPvt) >>> 0) >= this.size;
  }

  /**
   * True when `prod` claims more than `size` outstanding requests:
   * `(prod - rspProdPvt) > size`, an ill-behaved frontend. A pure predicate.
   * @see io/ring.h `RING_REQUEST_PROD_OVERFLOW`
   */
  requestProdOverflow(prod: number): boolean {
    return ((prod - this.#rspProdPvt) >>> 0) > this.size;
  }

  /**
   * Reads `req_prod` once and returns how many requests may be consumed now:
   * `min(req_prod - reqCons, size - (reqCons - rspProdPvt))`, in entries;
   * afterwards `reqCons` may advance by that much.
   * @throws ProtocolError when `req_prod` is impossible: more than `size` ahead of
   *   `rspProdPvt` (`RING_REQUEST_PROD_OVERFLOW`; Linux: "Frontend provided bogus
   *   ring requests") or behind a `req_prod` already read. Nothing past the last
   *   good value is consumed; the caller disables the device.
   * @see io/ring.h `RING_HAS_UNCONSUMED_REQUESTS` / `XEN_RING_NR_UNCONSUMED_REQUESTS`
   */
  unconsumedRequests(): number {
    const prod = Atomics.load(this.#idx, REQ_PROD) >>> 0;
    // xen_rmb: we read req_prod before any request slot up to it (the load acquires the frontend's slot writes).
    const base = this.#rspProdPvt;
    const window = (prod - base) >>> 0;
    if (window > this.size || window < ((this.#reqProdSeen - base) >>> 0)) {
      this.counters.protocolErrors++;
      throw new ProtocolError(
        `BackRing: impossible req_prod ${prod} (rsp_prod_pvt ${base}, req_cons ${this.#reqCons}, ` +
        `last req_prod ${this.#reqProdSeen}, size ${this.size}) [RING_REQUEST_PROD_OVERFLOW]`);
    }
    this.#reqProdSeen = prod;
    const avail = (prod - this.#reqCons) >>> 0;
    const room = this.size - ((this.#reqCons - base) >>> 0);
    return avail < room ? avail : room;
  }

  /**
   * Copies the request slot for index `idx` once, whole, into a private buffer;
   * decode and validate the copy, never the shared slot (XSA-155).
   * @param into at least {@link entrySize} bytes; bytes `[0, entrySize)` are written.
   * @throws InvariantError when `into` is too short.
   * @see io/ring.h `RING_COPY_REQUEST`
   */
  copyRequest(idx: number, into: Uint8Array): void {
    if (into.length < this.entrySize) throw new InvariantError('BackRing: copyRequest buffer shorter than an entry');
    into.set(this.#slots[idx & this.#mask]);
    this.counters.requestCopies++;
  }

  /**
   * Copies the request at `reqCons` into `into` and advances `reqCons` by one.
   * @throws InvariantError when no request is known to be available (call
   *   {@link unconsumedRequests} first) or `into` is too short.
   * @see io/ring.h `RING_COPY_REQUEST(r, r->req_cons++, &req)`
   */
  consumeRequest(into: Uint8Array): void {
    const cons = this.#reqCons;
    if (cons === this.#reqProdSeen) throw new InvariantError('BackRing: consumeRequest with no request seen');
    this.copyRequest(cons, into);
    this.#reqCons = (cons + 1) >>> 0;
    this.counters.requestsConsumed++;
  }

  /**
   * Byte offset in {@link view} of the slot for response index `idx` (any u32;
   * reduced modulo size).
   * @see io/ring.h `RING_GET_RESPONSE`
   */
  responseOffset(idx: number): number {
    return SRING_RING_OFFSET + (idx & this.#mask) * this.entrySize;
  }

  /**
   * Claims the slot at `rspProdPvt` and advances `rspProdPvt` by one; the caller
   * fills the returned slot (every byte, padding included) before the next push.
   * @returns byte offset of the slot in {@link view}.
   * @throws InvariantError when every consumed request already has a response.
   * @see io/ring.h `RING_GET_RESPONSE(r, r->rsp_prod_pvt++)`
   */
  produceResponse(): number {
    const pvt = this.#rspProdPvt;
    if (pvt === this.#reqCons) throw new InvariantError('BackRing: produceResponse with no consumed request');
    this.#rspProdPvt = (pvt + 1) >>> 0;
    this.counters.responsesProduced++;
    return this.responseOffset(pvt);
  }

  /**
   * Claims the slot at `rspProdPvt` like {@link produceResponse} and copies `entry`
   * (a response built whole in private memory, padding zeroed: XSA-216) into it
   * with one copy.
   * @throws InvariantError as {@link produceResponse}, or when `entry` is longer than a slot.
   * @see io/ring.h `*RING_GET_RESPONSE(r, r->rsp_prod_pvt++) = rsp`
   */
  produceResponseFrom(entry: Uint8Array): void {
    if (entry.length > this.entrySize) throw new InvariantError('BackRing: entry longer than a slot');
    const off = this.produceResponse();
    this.#slots[((off - SRING_RING_OFFSET) / this.entrySize) | 0].set(entry);
  }

  /**
   * Publishes every produced response: `rsp_prod = rspProdPvt`.
   * @see io/ring.h `RING_PUSH_RESPONSES`
   */
  pushResponses(): void {
    // xen_wmb: the frontend must see the response slots before it sees rsp_prod move.
    Atomics.store(this.#idx, RSP_PROD, this.#rspProdPvt | 0);
  }

  /**
   * Publishes every produced response and says whether the frontend must be
   * notified: notify iff the frontend's `rsp_event` lies in `(old, new]`, i.e.
   * `(new - rsp_event) < (new - old)` as u32, `old` being the shared `rsp_prod`
   * before the store.
   * @returns true when the caller must send an event-channel notification.
   * @see io/ring.h `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`
   */
  pushResponsesAndCheckNotify(): boolean {
    return pushAndCheckNotify(this.#idx, RSP_PROD, RSP_EVENT, this.#rspProdPvt, this.counters);
  }


  /**
   * The check before sleeping. If requests are available, returns true.
   * Otherwise arms `req_event = reqCons + batch` and checks again, closing the
   * race with a frontend that published in between.
   *
   * `batch > 1` asks to be woken only at the `batch`-th next request: fewer
   * notifications, at the cost of latency when fewer arrive (use a timer).
   * @param batch entries, 1..size (default 1, exactly `RING_FINAL_CHECK_FOR_REQUESTS`).
   * @returns true when requests are available (consume them, then check again).
   * @throws ProtocolError as {@link unconsumedRequests}; InvariantError for a bad batch.
   * @see io/ring.h `RING_FINAL_CHECK_FOR_REQUESTS`
   */
  finalCheckForRequests(batch = 1): boolean {
    if (batch !== 1) checkBatch(batch, this.size);
    this.counters.finalChecks++;
    if (this.unconsumedRequests() !== 0) {
      this.counters.finalChecksWithWork++;
      return true;
    }
    Atomics.store(this.#idx, REQ_EVENT, (this.#reqCons + batch) | 0);
    // xen_mb: the frontend must see the new req_event before we re-read req_prod, or its push misses us.
    if (this.unconsumedRequests() !== 0) {
      this.counters.finalChecksWithWork++;
      return true;
    }
    return false;
  }
}
