/**
 * The frame table (DESIGN.md, decision 1): machine memory as 4 KiB frames, each
 * named by an MFN. Every grantable page is its own SharedArrayBuffer; a multi-page
 * ring is an *extent*, one SharedArrayBuffer of 2^order pages with consecutive MFNs,
 * always handed out whole. The table records each frame's owner and reference counts
 * (grant mappings), and a frame's buffer is never handed to a second owner: a freed
 * frame's buffer is dropped, its MFN retired, and later allocations get new buffers.
 *
 * The table also keeps the handle log: every extent buffer the hypervisor posts to a
 * domain is recorded with the reason, so a test can audit who holds what.
 */
import { invariant } from '../rings/errors.ts';
import { PAGE_SIZE, type DomId, type Mfn } from './abi.ts';

/** What a frame is for; `ram` frames belong to a guest, the rest to the hypervisor's bookkeeping. */
export type FrameKind = 'ram' | 'grant-table' | 'shared-info' | 'hypercall' | 'wake' | 'evtchn-pair' | 'shadow';

/** One 4 KiB frame. */
export interface Frame {
  readonly mfn: Mfn;
  /** Owning domain (`DOMID_XEN` for hypervisor frames). */
  readonly owner: DomId;
  readonly kind: FrameKind;
  /** The extent's buffer (2^order pages); this frame is page `pageIndex` of it. */
  buffer: SharedArrayBuffer | null;
  readonly pageIndex: number;
  /** MFN of page 0 of the extent. */
  readonly extentBase: Mfn;
  readonly extentOrder: number;
  /** Domains other than the owner allowed to hold this frame's handle (hypervisor frames only). */
  readonly sharers: Set<DomId>;
  /** Grant mappings currently held on this frame by other domains. */
  mapCount: number;
  /** True once freed: the MFN is never reused. */
  freed: boolean;
}

/** One handle given to a domain: the extent, its pages and why it was given. */
export interface HandleLogEntry {
  readonly domid: DomId;
  readonly extentBase: Mfn;
  readonly pages: number;
  readonly owner: DomId;
  readonly reason: string;
}

/** An extent as posted to a domain: base MFN, order, and its buffer. */
export interface ExtentHandle {
  readonly mfn: number;
  readonly order: number;
  readonly buffer: SharedArrayBuffer;
}

/** The hypervisor's frame table and handle log. Lives only in the hypervisor thread. */
export class FrameTable {
  private readonly frames = new Map<number, Frame>();
  private nextMfn = 0x1000;
  /**
   * Extents each vCPU of each domain has received (by base MFN): sent once to each
   * vCPU worker (each is its own heap), then named by MFN only.
   */
  private readonly given = new Map<DomId, Map<number, Set<number>>>();
  /** Extents logged per domain (the handle log has one entry per domain and extent). */
  private readonly logged = new Map<DomId, Set<number>>();
  readonly log: HandleLogEntry[] = [];
  readonly counters = { allocated: 0, freed: 0, handlesGiven: 0 };

  /**
   * Allocates an extent of 2^order zeroed pages owned by `owner`.
   * @returns the frames, page 0 first (consecutive MFNs).
   */
  alloc(owner: DomId, order: number, kind: FrameKind = 'ram', sharers: DomId[] = []): Frame[] {
    invariant(Number.isInteger(order) && order >= 0 && order <= 8, `bad extent order ${order}`);
    const pages = 1 << order;
    const buffer = new SharedArrayBuffer(pages * PAGE_SIZE);
    const base = this.nextMfn as Mfn;
    this.nextMfn += pages;
    const out: Frame[] = [];
    for (let i = 0; i < pages; i++) {
      const f: Frame = {
        mfn: (base + i) as Mfn, owner, kind, buffer, pageIndex: i, extentBase: base,
        extentOrder: order, sharers: new Set(sharers), mapCount: 0, freed: false,
      };
      this.frames.set(f.mfn, f);
      out.push(f);
    }
    this.counters.allocated += pages;
    return out;
  }

  /** Looks up a live frame. @returns undefined for unknown or freed MFNs. */
  get(mfn: number): Frame | undefined {
    const f = this.frames.get(mfn);
    return f && !f.freed ? f : undefined;
  }

  /**
   * Frees a whole extent (given its base): drops the buffer and retires the MFNs.
   * Frames still mapped by another domain stay until their last unmap (Xen keeps a
   * page alive while a grant mapping holds a reference).
   * @returns the number of pages freed now.
   */
  freeExtent(base: number): number {
    const f0 = this.frames.get(base);
    if (!f0 || f0.freed || f0.extentBase !== base) return 0;
    const pages = 1 << f0.extentOrder;
    for (let i = 0; i < pages; i++) if (this.frames.get(base + i)!.mapCount > 0) return 0;
    for (let i = 0; i < pages; i++) {
      const f = this.frames.get(base + i)!;
      f.freed = true;
      f.buffer = null;
    }
    this.counters.freed += pages;
    return pages;
  }

  /** Looks up a frame, live or freed (for audits of past handles). */
  lookup(mfn: number): Frame | undefined {
    return this.frames.get(mfn);
  }

  /** All live frames owned by `owner`. */
  ownedBy(owner: DomId): Frame[] {
    const out: Frame[] = [];
    for (const f of this.frames.values()) if (!f.freed && f.owner === owner) out.push(f);
    return out;
  }

  /**
   * Records that vCPU `vcpu` of `domid` is given the extent holding `frame`.
   * @returns the handle to post, or null when that vCPU already holds the buffer.
   * The handle log gets one entry per domain and extent (the first vCPU to get it).
   */
  give(domid: DomId, vcpu: number, frame: Frame, reason: string): ExtentHandle | null {
    let perVcpu = this.given.get(domid);
    if (!perVcpu) this.given.set(domid, (perVcpu = new Map()));
    let set = perVcpu.get(vcpu);
    if (!set) perVcpu.set(vcpu, (set = new Set()));
    if (set.has(frame.extentBase)) return null;
    invariant(frame.buffer, `frame ${frame.mfn} has no buffer`);
    set.add(frame.extentBase);
    let logged = this.logged.get(domid);
    if (!logged) this.logged.set(domid, (logged = new Set()));
    if (!logged.has(frame.extentBase)) {
      logged.add(frame.extentBase);
      this.log.push({ domid, extentBase: frame.extentBase, pages: 1 << frame.extentOrder, owner: frame.owner, reason });
    }
    this.counters.handlesGiven++;
    return { mfn: frame.extentBase, order: frame.extentOrder, buffer: frame.buffer };
  }

  /** Forgets what a destroyed domain held (its worker and heap are gone). */
  forgetDomain(domid: DomId): void {
    this.given.delete(domid);
    this.logged.delete(domid);
  }
}
