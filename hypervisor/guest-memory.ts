/**
 * A domain's page allocator, guest side. Pages come from the hypervisor through
 * `XENMEM_increase_reservation` (counted against the domain's memory quota), a batch
 * at a time, and are kept on a free list for reuse inside the domain; an extent
 * (2^order pages in one buffer, for multi-page rings) is allocated whole.
 * {@link GuestMemory.release} returns pages to the hypervisor
 * (`XENMEM_decrease_reservation`).
 *
 * A page that was granted must have had its grant ended successfully before it is
 * freed or reused (XSA-396); that is the caller's duty, checked by the grant table.
 *
 * @see xen/include/public/memory.h
 */
import { PvioError } from '../rings/errors.ts';
import { readU64, writeU64 } from '../rings/layout.ts';
import { DOMID_SELF, HYPERVISOR, PAGE_SIZE, XENMEM, XEN_MEMORY_RESERVATION } from './abi.ts';
import { HypercallPort } from './hypercall.ts';

const R = XEN_MEMORY_RESERVATION.fields;
/** Pages fetched per increase_reservation when the free list is empty. */
const REFILL_BATCH = 32;

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

/** Page allocator over the hypervisor's memory_op. */
export class GuestMemory {
  private readonly freePages: GuestPage[] = [];
  /** Counters: pages obtained from the hypervisor, returned, allocated from the free list. */
  readonly counters = { obtained: 0, returned: 0, allocs: 0 };

  constructor(private readonly hc: HypercallPort) {}

  /**
   * Obtains `nr` extents of 2^order pages from the hypervisor.
   * @returns their base MFNs (fewer than `nr` when the quota runs out).
   */
  private increase(nr: number, order: number): number[] {
    const p = this.hc.page;
    const max = Math.floor((HypercallPort.maxBatch(1) - XEN_MEMORY_RESERVATION.size) / 8);
    const out: number[] = [];
    while (out.length < nr) {
      const n = Math.min(max, nr - out.length);
      const o = HypercallPort.argOffset(0, 1);
      writeU64(p, o + R.extent_start.offset, 0);
      writeU64(p, o + R.nr_extents.offset, n);
      p.setUint32(o + R.extent_order.offset, order, true);
      p.setUint32(o + R.mem_flags.offset, 0, true);
      p.setUint16(o + R.domid.offset, DOMID_SELF, true);
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
      for (const mfn of this.increase(REFILL_BATCH, 0)) {
        const bytes = this.hc.frames.page(mfn);
        this.freePages.push({ mfn, bytes, view: new DataView(bytes.buffer, bytes.byteOffset, PAGE_SIZE) });
      }
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
}
