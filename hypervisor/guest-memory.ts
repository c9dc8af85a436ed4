/**
 * A domain's page allocator, guest side. Pages come from the hypervisor through
 * `XENMEM_increase_reservation` (counted against the domain's memory quota), a batch
 * at a time, and are kept on a free list for reuse inside the domain; an extent
 * (2^order pages in one buffer, for multi-page rings) is allocated whole.
 * {@link GuestMemory.release} returns pages to the hypervisor
 * (`XENMEM_decrease_reservation`).
 *
 * Every RAM page also has a pseudo-physical frame number (pfn), which the hypervisor
 * keeps (the P2M, and the machine-wide M2P): {@link GuestMemory.pfnToMfn} and
 * {@link GuestMemory.mfnToPfn} read them, {@link GuestMemory.populatePhysmap} asks
 * for frames at chosen pfns. The balloon driver (xenstore/balloon.ts) moves the
 * reservation with {@link GuestMemory.takeFreePages}, {@link GuestMemory.releasePages},
 * {@link GuestMemory.populatePages} and {@link GuestMemory.obtainPages}. Frame numbers
 * here are numbers of 4 KiB frames, never byte addresses.
 *
 * A page that was granted must have had its grant ended successfully before it is
 * freed or reused (XSA-396); that is the caller's duty, checked by the grant table.
 *
 * @see xen/include/public/memory.h
 */
import { PvioError } from '../rings/errors.ts';
import { readU64, writeU64 } from '../rings/layout.ts';
import {
  DOMID_SELF, HC_ARGS_BYTES, HYPERVISOR, INVALID_FRAME_U32, PAGE_SIZE, XENMEM, XEN_MEMORY_DOMAIN, XEN_MEMORY_RESERVATION,
  XEN_TRANSLATE_GPFN_LIST,
} from './abi.ts';
import { HypercallPort } from './hypercall.ts';

const R = XEN_MEMORY_RESERVATION.fields;
const T = XEN_TRANSLATE_GPFN_LIST.fields;
/** Pages fetched per increase_reservation when the free list is empty. */
const REFILL_BATCH = 32;
/**
 * Extents per reservation call: the hypervisor serves at most this many
 * (`MAX_OPS_PER_SLICE`) and answers a short count past it, which would read as failure.
 */
export const MEMOP_BATCH = 64;
/** Frame numbers per translate call: as many u64 as fit after the struct in the page (500). */
export const TRANSLATE_BATCH = Math.floor((HC_ARGS_BYTES - XEN_TRANSLATE_GPFN_LIST.size) / 8);

/** A page of this domain: its MFN and views of its 4096 bytes. */
export interface GuestPage {
  readonly mfn: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;
}

/** An extent of 2^order pages in one buffer (a multi-page ring). */
export interface GuestExtent {
  readonly mfn: number;
  readonly order: number;
  readonly bytes: Uint8Array;
}

/** The domain ran out of its memory quota. */
export class OutOfMemoryError extends PvioError {
  constructor(message: string) {
    super('PVIO_ERR_NOMEM', message);
  }
}

/** The hypervisor refused a memory_op outright (`errno`: Xen's, positive). Code `PVIO_ERR_MEMOP`. */
export class MemoryOpError extends PvioError {
  constructor(readonly errno: number, message: string) {
    super('PVIO_ERR_MEMOP', message);
  }
}

/** Page allocator over the hypervisor's memory_op. */
export class GuestMemory {
  private readonly freePages: GuestPage[] = [];
  /** Counters: pages obtained from the hypervisor, returned, allocated from the free list. */
  readonly counters = { obtained: 0, returned: 0, allocs: 0 };
  /** Soft cap on the domain's reservation (pages) for refills; null: only the quota. */
  private limit: number | null = null;

  constructor(private readonly hc: HypercallPort) {}

  /**
   * Obtains `nr` extents of 2^order pages from the hypervisor, keeping the domain's
   * reservation within {@link setReservationLimit}'s limit when one is set.
   * @returns their base MFNs (fewer than `nr` when the quota or the limit runs out).
   */
  private increase(nr: number, order: number): number[] {
    const p = this.hc.page;
    if (this.limit !== null) nr = Math.min(nr, Math.max(0, Math.floor((this.limit - this.currentReservation()) / (1 << order))));
    const out: number[] = [];
    while (out.length < nr) {
      const n = Math.min(MEMOP_BATCH, nr - out.length);
      const o = HypercallPort.argOffset(0, 1);
      this.writeReservation(n, order);
      const { result } = this.hc.call(HYPERVISOR.memory_op, XENMEM.increase_reservation, 1);
      for (let i = 0; i < Math.max(0, result); i++) out.push(readU64(p, o + XEN_MEMORY_RESERVATION.size + i * 8));
      if (result < n) break;
    }
    this.counters.obtained += out.length << order;
    return out;
  }

  /**
   * Allocates one zeroed page.
   * @throws OutOfMemoryError when the quota is exhausted.
   */
  allocPage(): GuestPage {
    let pg = this.freePages.pop();
    if (!pg) {
      for (const mfn of this.increase(REFILL_BATCH, 0)) this.freePages.push(this.wrap(mfn));
      pg = this.freePages.pop();
      if (!pg) throw new OutOfMemoryError('domain memory quota exhausted');
    } else {
      pg.bytes.fill(0);
    }
    this.counters.allocs++;
    return pg;
  }

  /**
   * Allocates `n` zeroed pages.
   * @throws OutOfMemoryError when the quota is exhausted (none are kept).
   */
  allocPages(n: number): GuestPage[] {
    const out: GuestPage[] = [];
    try {
      for (let i = 0; i < n; i++) out.push(this.allocPage());
    } catch (e) {
      for (const p of out) this.freePage(p);
      throw e;
    }
    return out;
  }

  /** Returns a page to the domain's free list (its grants must have been ended). */
  freePage(pg: GuestPage): void {
    this.freePages.push(pg);
  }

  /**
   * Allocates an extent of 2^order pages in one buffer, zeroed.
   * @throws OutOfMemoryError when the quota is exhausted.
   */
  allocExtent(order: number): GuestExtent {
    const [mfn] = this.increase(1, order);
    if (mfn === undefined) throw new OutOfMemoryError(`no extent of order ${order} within the quota`);
    const h = this.hc.frames.extent(mfn);
    return { mfn, order, bytes: new Uint8Array(h.buffer, 0, PAGE_SIZE << order) };
  }

  /**
   * Gives an extent (or a single page with order 0) back to the hypervisor.
   * @returns true when the hypervisor freed it (false if a peer still maps it).
   */
  release(mfn: number, order: number): boolean {
    const p = this.hc.page;
    const o = HypercallPort.argOffset(0, 1);
    writeU64(p, o + R.extent_start.offset, 0);
    writeU64(p, o + R.nr_extents.offset, 1);
    p.setUint32(o + R.extent_order.offset, order, true);
    p.setUint32(o + R.mem_flags.offset, 0, true);
    p.setUint16(o + R.domid.offset, DOMID_SELF, true);
    writeU64(p, o + XEN_MEMORY_RESERVATION.size, mfn);
    const { result } = this.hc.call(HYPERVISOR.memory_op, XENMEM.decrease_reservation, 1);
    if (result === 1) {
      this.hc.frames.drop(mfn);
      this.counters.returned += 1 << order;
      return true;
    }
    return false;
  }

  // ---------------------------------------------------------------------------
  // Reservation and P2M/M2P (the balloon driver's tools)

  /**
   * `XENMEM_current_reservation`: the pages this domain holds now — the hypervisor's
   * `ramPages`: the boot pages, every vCPU's pages and extents, free or in use.
   * @throws MemoryOpError if the hypervisor refuses (it does not for DOMID_SELF).
   */
  currentReservation(): number {
    return this.reservationQuery(XENMEM.current_reservation);
  }

  /** `XENMEM_maximum_reservation`: this domain's quota in pages (`maxPages`). @throws MemoryOpError as {@link currentReservation}. */
  maximumReservation(): number {
    return this.reservationQuery(XENMEM.maximum_reservation);
  }

  private reservationQuery(cmd: number): number {
    const o = HypercallPort.argOffset(0, 1);
    this.hc.page.setUint16(o + XEN_MEMORY_DOMAIN.fields.domid.offset, DOMID_SELF, true);
    const { result } = this.hc.call(HYPERVISOR.memory_op, cmd, 1);
    if (result < 0) throw new MemoryOpError(-result, `memory_op ${cmd} failed with errno ${-result}`);
    return result;
  }

  /**
   * P2M: the MFN of this domain's pseudo-physical frame `pfn` (frame numbers, not
   * bytes), or null for a hole (`XENMEM_translate_gpfn_list`).
   * @throws RangeError for a pfn that is not an integer in 0 … 2^53 − 1.
   */
  pfnToMfn(pfn: number): number | null {
    return this.translate(XENMEM.translate_gpfn_list, [pfn])[0];
  }

  /** {@link pfnToMfn} for many pfns, {@link TRANSLATE_BATCH} per hypercall. */
  pfnsToMfns(pfns: readonly number[]): Array<number | null> {
    return this.translate(XENMEM.translate_gpfn_list, pfns);
  }

  /**
   * M2P: the pseudo-physical frame number of machine frame `mfn`, or null when it is
   * not a RAM frame of this domain (`XENMEM_pvio_machphys_lookup`).
   * @throws RangeError for an MFN that is not an integer in 0 … 2^53 − 1.
   */
  mfnToPfn(mfn: number): number | null {
    return this.translate(XENMEM.pvio_machphys_lookup, [mfn])[0];
  }

  /** {@link mfnToPfn} for many MFNs, {@link TRANSLATE_BATCH} per hypercall. */
  mfnsToPfns(mfns: readonly number[]): Array<number | null> {
    return this.translate(XENMEM.pvio_machphys_lookup, mfns);
  }

  private translate(cmd: number, xs: readonly number[]): Array<number | null> {
    checkFrameNumbers(xs);
    const p = this.hc.page;
    const o = HypercallPort.argOffset(0, 1);
    const list = o + XEN_TRANSLATE_GPFN_LIST.size;
    const out: Array<number | null> = [];
    for (let i = 0; i < xs.length; i += TRANSLATE_BATCH) {
      const n = Math.min(TRANSLATE_BATCH, xs.length - i);
      p.setUint16(o + T.domid.offset, DOMID_SELF, true);
      writeU64(p, o + T.nr_gpfns.offset, n);
      writeU64(p, o + T.gpfn_list.offset, 0);
      writeU64(p, o + T.mfn_list.offset, 0);
      for (let j = 0; j < n; j++) writeU64(p, list + j * 8, xs[i + j]);
      const { result } = this.hc.call(HYPERVISOR.memory_op, cmd, 1);
      if (result < 0) throw new MemoryOpError(-result, `memory_op ${cmd} failed with errno ${-result}`);
      for (let j = 0; j < n; j++) {
        const at = list + j * 8;
        const invalid = p.getUint32(at, true) === INVALID_FRAME_U32 && p.getUint32(at + 4, true) === INVALID_FRAME_U32;
        out.push(invalid ? null : readU64(p, at));
      }
    }
    return out;
  }

  /**
   * `XENMEM_populate_physmap`: asks for extents of 2^order pages at the pseudo-physical
   * frames `pfns` (one base per extent), {@link MEMOP_BATCH} per hypercall, stopping at
   * the first that fails (a pfn already populated, the quota reached). The frames come
   * from the hypervisor, zeroed; their handles are cached here.
   * @returns the MFN bases of the extents populated, in order: one per leading `pfns` entry done.
   * @throws RangeError for a pfn that is not an integer in 0 … 2^53 − 1;
   *   MemoryOpError when the hypervisor refuses the call (e.g. EINVAL for an order above 4).
   */
  populatePhysmap(pfns: readonly number[], order = 0): number[] {
    checkFrameNumbers(pfns);
    const p = this.hc.page;
    const o = HypercallPort.argOffset(0, 1);
    const out: number[] = [];
    for (let i = 0; i < pfns.length; i += MEMOP_BATCH) {
      const n = Math.min(MEMOP_BATCH, pfns.length - i);
      this.writeReservation(n, order);
      for (let j = 0; j < n; j++) writeU64(p, o + XEN_MEMORY_RESERVATION.size + j * 8, pfns[i + j]);
      const { result } = this.hc.call(HYPERVISOR.memory_op, XENMEM.populate_physmap, 1);
      if (result < 0) throw new MemoryOpError(-result, `populate_physmap failed with errno ${-result}`);
      for (let j = 0; j < result; j++) out.push(readU64(p, o + XEN_MEMORY_RESERVATION.size + j * 8));
      this.counters.obtained += result << order;
      if (result < n) break;
    }
    return out;
  }

  /**
   * Populates single pages at `pfns` ({@link populatePhysmap}, order 0).
   * @returns the pages (for the caller, not put on the free list), one per leading pfn done.
   */
  populatePages(pfns: readonly number[]): GuestPage[] {
    return this.populatePhysmap(pfns, 0).map((mfn) => this.wrap(mfn));
  }

  /**
   * Obtains up to `n` single pages from the hypervisor (`XENMEM_increase_reservation`;
   * it gives each the lowest free pfn), within the quota and the limit.
   * @returns the pages (for the caller, not put on the free list); fewer when the quota or limit runs out.
   */
  obtainPages(n: number): GuestPage[] {
    return this.increase(n, 0).map((mfn) => this.wrap(mfn));
  }

  /** Pages on the free list now. */
  get freePageCount(): number {
    return this.freePages.length;
  }

  /** Takes up to `n` pages off the free list (the caller owns them now). */
  takeFreePages(n: number): GuestPage[] {
    return this.freePages.splice(Math.max(0, this.freePages.length - n));
  }

  /**
   * Gives single pages back to the hypervisor (`XENMEM_decrease_reservation`, order
   * 0), {@link MEMOP_BATCH} per hypercall; their grants must have been ended. Stops at
   * the first the hypervisor refuses (one a peer still maps).
   * @returns how many were given back: the leading `pages` entries; their views are dead.
   */
  releasePages(pages: readonly GuestPage[]): number {
    const p = this.hc.page;
    const o = HypercallPort.argOffset(0, 1);
    let done = 0;
    while (done < pages.length) {
      const n = Math.min(MEMOP_BATCH, pages.length - done);
      this.writeReservation(n, 0);
      for (let j = 0; j < n; j++) writeU64(p, o + XEN_MEMORY_RESERVATION.size + j * 8, pages[done + j].mfn);
      const { result } = this.hc.call(HYPERVISOR.memory_op, XENMEM.decrease_reservation, 1);
      for (let j = 0; j < Math.max(0, result); j++) this.hc.frames.drop(pages[done + j].mfn);
      if (result > 0) {
        done += result;
        this.counters.returned += result;
      }
      if (result < n) break;
    }
    return done;
  }

  /**
   * Caps the domain's reservation (pages) for this allocator's own refills from the
   * hypervisor: the balloon driver sets its target here, so a guest ballooned down
   * does not grow back by allocating. null: no cap but the quota.
   */
  setReservationLimit(pages: number | null): void {
    this.limit = pages;
  }

  private writeReservation(nr: number, order: number): void {
    const p = this.hc.page;
    const o = HypercallPort.argOffset(0, 1);
    writeU64(p, o + R.extent_start.offset, 0);
    writeU64(p, o + R.nr_extents.offset, nr);
    p.setUint32(o + R.extent_order.offset, order, true);
    p.setUint32(o + R.mem_flags.offset, 0, true);
    p.setUint16(o + R.domid.offset, DOMID_SELF, true);
  }

  private wrap(mfn: number): GuestPage {
    const bytes = this.hc.frames.page(mfn);
    return { mfn, bytes, view: new DataView(bytes.buffer, bytes.byteOffset, PAGE_SIZE) };
  }
}

/** @throws RangeError unless every entry is an integer in 0 … 2^53 − 1 (a frame number). */
function checkFrameNumbers(xs: readonly number[]): void {
  for (const x of xs) if (!(Number.isSafeInteger(x) && x >= 0)) throw new RangeError(`${x} is not a frame number`);
}
