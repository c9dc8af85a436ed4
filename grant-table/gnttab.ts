/**
 * Grant tables v1, guest side.
 *
 * Granting side: the domain's own grant table (frames it owns, which the hypervisor
 * reads) holds 8-byte `grant_entry_v1` entries. {@link GrantTable.grantAccess}
 * writes `frame`, then publishes `{flags, domid}` in one 32-bit atomic store (the
 * write barrier Xen asks for before `flags`). {@link GrantTable.endAccess} revokes
 * only when neither GTF_reading nor GTF_writing is set, with a compare-exchange on
 * `flags`, as Linux's `gnttab_end_foreign_access_ref` — a page whose grant is still
 * in use must not be reused (XSA-396), so the caller defers.
 *
 * Mapping side: {@link GrantTable.map} / {@link GrantTable.unmap} / {@link GrantTable.copy}
 * are the batched `GNTTABOP_*` hypercalls; a successful map yields a view of the
 * granted page (the buffer handle arrives on the handle port the first time).
 *
 * @see xen/include/public/grant_table.h, Linux drivers/xen/grant-table.c
 */
import { PvioError } from '../rings/errors.ts';
import { readU64, writeU64 } from '../rings/layout.ts';
import {
  DOMID_SELF, GNTCOPY, GNTMAP, GNTST, GNTTABOP, GNTTAB_COPY, GNTTAB_MAP_GRANT_REF, GNTTAB_NR_RESERVED_ENTRIES,
  GNTTAB_UNMAP_GRANT_REF, GRANT_ENTRY_V1, GTF, HYPERVISOR, PAGE_SIZE,
  type GrantHandle, type GrantRef,
} from '../hypervisor/abi.ts';
import { HypercallPort } from '../hypervisor/hypercall.ts';

const GE_FRAME = GRANT_ENTRY_V1.fields.frame.offset;
const MAP = GNTTAB_MAP_GRANT_REF.fields;
const UNMAP = GNTTAB_UNMAP_GRANT_REF.fields;
const COPY = GNTTAB_COPY.fields;

/** Name of a GNTST code (`GNTST_bad_gntref`, ...). */
export function gntstName(st: number): string {
  const e = Object.entries(GNTST).find(([, v]) => v === st);
  return e ? `GNTST_${e[0]}` : `GNTST(${st})`;
}

/** A grant operation failed; `status` is the `GNTST_*` code. */
export class GrantError extends PvioError {
  constructor(readonly status: number, message: string) {
    super('PVIO_ERR_GRANT', `${message}: ${gntstName(status)}`);
  }
}

/** One map request: map `ref` of domain `domid`, read-only or writable. */
export interface MapRequest {
  readonly domid: number;
  readonly ref: GrantRef;
  readonly readonly: boolean;
}
/** The answer to one {@link MapRequest}. */
export interface MapResult {
  /** `GNTST_*` status (0 = okay). */
  readonly status: number;
  readonly handle: GrantHandle;
  /** MFN of the mapped frame (0 on failure). */
  readonly mfn: number;
  /** The mapped page's 4096 bytes, or null on failure. */
  readonly page: Uint8Array | null;
}
/** One side of a grant copy: a grant ref of `domid`, or one of the caller's own frames. */
export type CopySide =
  | { readonly ref: GrantRef; readonly domid: number; readonly offset: number }
  | { readonly mfn: number; readonly offset: number };
/** One `GNTTABOP_copy` entry: `len` bytes (≤ 4096, not crossing a page). */
export interface CopyRequest {
  readonly source: CopySide;
  readonly dest: CopySide;
  readonly len: number;
}

/** A domain's grant table (granting side) and its grant hypercalls (mapping side). */
export class GrantTable {
  private readonly u32: Uint32Array;
  private readonly u16: Uint16Array;
  private readonly dv: DataView;
  private readonly free: number[] = [];
  /** Counters: grants made/ended/refused-to-end, maps, unmaps, copies, map failures. */
  readonly counters = { granted: 0, ended: 0, endBusy: 0, maps: 0, unmaps: 0, copies: 0, mapFailures: 0 };

  /**
   * @param table the grant-table extent (nrEntries × 8 bytes), owned by this domain
   * @param nrEntries entries in the table
   */
  constructor(private readonly hc: HypercallPort, table: SharedArrayBuffer, readonly nrEntries: number) {
    this.u32 = new Uint32Array(table, 0, nrEntries * 2);
    this.u16 = new Uint16Array(table, 0, nrEntries * 4);
    this.dv = new DataView(table, 0, nrEntries * GRANT_ENTRY_V1.size);
    for (let r = nrEntries - 1; r >= GNTTAB_NR_RESERVED_ENTRIES; r--) this.free.push(r);
  }

  /** Free (unused) entries left. */
  freeCount(): number {
    return this.free.length;
  }

  /**
   * Grants `domid` access to this domain's frame `mfn`.
   * @returns the grant ref to publish to the peer.
   * @throws GrantError (GNTST_no_space) when the table is full.
   * @see Linux gnttab_grant_foreign_access
   */
  grantAccess(domid: number, mfn: number, readonly: boolean): GrantRef {
    const ref = this.free.pop();
    if (ref === undefined) throw new GrantError(GNTST.no_space, 'grant table full');
    this.dv.setUint32(ref * GRANT_ENTRY_V1.size + GE_FRAME, mfn, true);
    // frame and domid must be visible before flags says the entry is valid.
    Atomics.store(this.u32, ref * 2, ((domid << 16) | GTF.permit_access | (readonly ? GTF.readonly : 0)) >>> 0);
    this.counters.granted++;
    return ref as GrantRef;
  }

  /**
   * Revokes a grant if the peer no longer has it mapped (neither GTF_reading nor
   * GTF_writing), with a compare-exchange on `flags`; the ref returns to the free list.
   * @returns false when the grant is still in use (the caller must defer reuse of the page).
   * @see Linux gnttab_end_foreign_access_ref (v1)
   */
  endAccess(ref: GrantRef): boolean {
    const i = ref * 4; // u16 index of flags
    let flags = Atomics.load(this.u16, i);
    for (;;) {
      if (flags & (GTF.reading | GTF.writing)) {
        this.counters.endBusy++;
        return false;
      }
      const prev = Atomics.compareExchange(this.u16, i, flags, 0);
      if (prev === flags) break;
      flags = prev;
    }
    this.free.push(ref);
    this.counters.ended++;
    return true;
  }

  /** Raw flags of an entry (GTF_*), for tests and diagnostics. */
  flags(ref: GrantRef): number {
    return Atomics.load(this.u16, ref * 4);
  }

  /**
   * Issues `GNTTABOP_<cmd>` over `items`, as many calls as the hypercall page needs:
   * `write` fills argument struct `i` (of `size` bytes) at byte offset `o` of the
   * page, `read` turns the struct the hypervisor answered into a result.
   */
  private batched<T, R>(cmd: number, size: number, items: readonly T[], write: (o: number, item: T) => void, read: (o: number) => R): R[] {
    const out: R[] = [];
    const max = HypercallPort.maxBatch(size);
    for (let s = 0; s < items.length; s += max) {
      const n = Math.min(max, items.length - s);
      for (let i = 0; i < n; i++) write(HypercallPort.argOffset(i, size), items[s + i]);
      this.hc.call(HYPERVISOR.grant_table_op, cmd, n);
      for (let i = 0; i < n; i++) out.push(read(HypercallPort.argOffset(i, size)));
    }
    return out;
  }

  /**
   * Maps a batch of grants (`GNTTABOP_map_grant_ref`, `count` form, split into as
   * many calls as the hypercall page needs).
   * @returns one result per request, in order; failures carry their GNTST status.
   */
  map(reqs: readonly MapRequest[]): MapResult[] {
    const p = this.hc.page;
    return this.batched(GNTTABOP.map_grant_ref, GNTTAB_MAP_GRANT_REF.size, reqs, (o, r) => {
      writeU64(p, o + MAP.host_addr.offset, 0);
      p.setUint32(o + MAP.flags.offset, GNTMAP.host_map | (r.readonly ? GNTMAP.readonly : 0), true);
      p.setUint32(o + MAP.ref.offset, r.ref, true);
      p.setUint16(o + MAP.dom.offset, r.domid, true);
      p.setInt16(o + MAP.status.offset, GNTST.general_error, true);
    }, (o) => {
      const status = p.getInt16(o + MAP.status.offset, true);
      this.counters.maps++;
      if (status !== GNTST.okay) {
        this.counters.mapFailures++;
        return { status, handle: 0 as GrantHandle, mfn: 0, page: null };
      }
      const mfn = readU64(p, o + MAP.dev_bus_addr.offset) / PAGE_SIZE;
      return { status, handle: p.getUint32(o + MAP.handle.offset, true) as GrantHandle, mfn, page: this.hc.frames.page(mfn) };
    });
  }


  /**
   * Maps a multi-page shared ring (`ring-ref0..N-1`) as one contiguous region.
   * pvio limit (a JS view cannot join several buffers): the refs must name
   * consecutive pages of one extent of the granting domain, in order, starting at
   * the extent's first page; anything else is refused and whatever was mapped is
   * unmapped again.
   * @returns the handles and a view of the whole ring (refs.length × 4096 bytes).
   * @throws GrantError with the first failing GNTST status, or GNTST_general_error
   *   when the pages are not one extent in order.
   */
  mapRing(domid: number, refs: readonly GrantRef[], readonly = false): { handles: GrantHandle[]; bytes: Uint8Array } {
    const res = this.map(refs.map((ref) => ({ domid, ref, readonly })));
    const handles = res.filter((r) => r.status === GNTST.okay).map((r) => r.handle);
    const bad = res.find((r) => r.status !== GNTST.okay);
    const fail = (st: number, msg: string): never => {
      if (handles.length) this.unmap(handles);
      throw new GrantError(st, msg);
    };
    if (bad) fail(bad.status, `ring of dom${domid} does not map`);
    const base = res[0].mfn;
    let ext;
    try {
      ext = this.hc.frames.extent(base);
    } catch {
      return fail(GNTST.general_error, 'ring pages do not start an extent');
    }
    if ((1 << ext.order) < res.length || res.some((r, i) => r.mfn !== base + i)) {
      fail(GNTST.general_error, 'ring pages are not consecutive pages of one extent, in order');
    }
    return { handles, bytes: new Uint8Array(ext.buffer, 0, res.length * PAGE_SIZE) };
  }

  /**
   * Unmaps a batch of handles (`GNTTABOP_unmap_grant_ref`).
   * @returns one GNTST status per handle (`GNTST_bad_handle` for an unknown one).
   */
  unmap(handles: readonly GrantHandle[]): number[] {
    const p = this.hc.page;
    return this.batched(GNTTABOP.unmap_grant_ref, GNTTAB_UNMAP_GRANT_REF.size, handles, (o, h) => {
      writeU64(p, o + UNMAP.host_addr.offset, 0);
      writeU64(p, o + UNMAP.dev_bus_addr.offset, 0);
      p.setUint32(o + UNMAP.handle.offset, h, true);
      p.setInt16(o + UNMAP.status.offset, GNTST.general_error, true);
    }, (o) => {
      this.counters.unmaps++;
      return p.getInt16(o + UNMAP.status.offset, true);
    });
  }


  /**
   * Copies between grants and/or own frames in the hypervisor (`GNTTABOP_copy`).
   * A copy that crosses a page answers `GNTST_bad_copy_arg`.
   * @returns one GNTST status per request.
   */
  copy(reqs: readonly CopyRequest[]): number[] {
    const p = this.hc.page;
    /** Writes one side of a copy; @returns whether it names a grant ref. */
    const side = (o: number, uOff: number, dOff: number, offOff: number, c: CopySide): boolean => {
      if ('ref' in c) {
        writeU64(p, o + uOff, 0);
        p.setUint32(o + uOff, c.ref, true);
        p.setUint16(o + dOff, c.domid, true);
      } else {
        writeU64(p, o + uOff, c.mfn);
        p.setUint16(o + dOff, DOMID_SELF, true);
      }
      p.setUint16(o + offOff, c.offset, true);
      return 'ref' in c;
    };
    return this.batched(GNTTABOP.copy, GNTTAB_COPY.size, reqs, (o, r) => {
      let flags = 0;
      if (side(o, COPY.source_u.offset, COPY.source_domid.offset, COPY.source_offset.offset, r.source)) flags |= GNTCOPY.source_gref;
      if (side(o, COPY.dest_u.offset, COPY.dest_domid.offset, COPY.dest_offset.offset, r.dest)) flags |= GNTCOPY.dest_gref;
      p.setUint16(o + COPY.len.offset, r.len, true);
      p.setUint16(o + COPY.flags.offset, flags, true);
      p.setInt16(o + COPY.status.offset, GNTST.general_error, true);
    }, (o) => {
      this.counters.copies++;
      return p.getInt16(o + COPY.status.offset, true);
    });
  }

}
