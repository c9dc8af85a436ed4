/**
 * The x86-64 page tables of the CPU/MMU model (issue 7's first step): the 4-level
 * format (512 eight-byte entries per 4 KiB frame), read and written as two 32-bit
 * halves (no BigInt on the walk), the walk with the hardware's access checks and
 * accessed/dirty updates, page-fault error codes, a software TLB, P2M/M2P tables and
 * the virtual range the hypervisor reserves.
 *
 * Virtual addresses are 48-bit numbers, 0 … 2^48 − 1: the canonical upper half
 * (0xffff8000_00000000 and up) is written without its sign extension, as
 * 0x8000_0000_0000 and up, so every address is an exact JS number.
 *
 * A PTE, low half: P (bit 0), RW (1), US (2), PWT (3), PCD (4), A (5), D (6), PS (7),
 * G (8), frame bits 0–19 in bits 12–31; high half: frame bits 20–39 in bits 0–19, NX
 * in bit 31 (bit 63 of the entry).
 *
 * @see Intel SDM vol. 3A §4.5 (4-level paging), §4.7 (page-fault error code);
 *   xen/include/public/arch-x86/xen-x86_64.h (HYPERVISOR_VIRT_START/END)
 */

/** Entries per table (4096 / 8). */
export const PT_ENTRIES = 512;
/** PTE flag bits in the low half. */
export const PTE = Object.freeze({ P: 1 << 0, RW: 1 << 1, US: 1 << 2, PWT: 1 << 3, PCD: 1 << 4, A: 1 << 5, D: 1 << 6, PS: 1 << 7, G: 1 << 8 });
/** NX, bit 31 of the high half. */
export const PTE_HI_NX = 0x8000_0000;
/** Largest frame number a PTE holds (40 bits: 52-bit physical addresses). */
export const MAX_PTE_FRAME = 2 ** 40 - 1;
/** One past the largest virtual address (48 bits). */
export const VA_LIMIT = 2 ** 48;

/**
 * The hypervisor's reserved range, which no guest mapping may cover: Xen x86-64's
 * `HYPERVISOR_VIRT_START` 0xffff8000_00000000 … `HYPERVISOR_VIRT_END`
 * 0xffff8800_00000000 (L4 slots 256–271), here as 48-bit addresses.
 */
export const HYPERVISOR_VIRT_START = 0x8000_0000_0000;
export const HYPERVISOR_VIRT_END = 0x8800_0000_0000;

/** Whether `va` lies in the hypervisor's reserved range. */
export function isReserved(va: number): boolean {
  return va >= HYPERVISOR_VIRT_START && va < HYPERVISOR_VIRT_END;
}

/** A PTE as its two 32-bit halves. */
export interface PteHalves {
  lo: number;
  hi: number;
}

/**
 * Makes a PTE: `frame` (0 … 2^40 − 1), `flags` (low-half bits of {@link PTE}), `nx`.
 * @throws RangeError for a frame out of range.
 */
export function makePte(frame: number, flags: number, nx = false): PteHalves {
  if (!(Number.isInteger(frame) && frame >= 0 && frame <= MAX_PTE_FRAME)) throw new RangeError(`frame ${frame} does not fit a PTE`);
  const lo = ((frame % 2 ** 20) * 4096 + (flags & 0xfff)) >>> 0;
  const hi = ((Math.floor(frame / 2 ** 20) & 0xfffff) | (nx ? PTE_HI_NX : 0)) >>> 0;
  return { lo, hi };
}

/** The frame number of a PTE. */
export function pteFrame(lo: number, hi: number): number {
  return (hi & 0xfffff) * 2 ** 20 + (lo >>> 12);
}

/** The four table indexes and the page offset of a 48-bit virtual address. */
export function vaParts(va: number): { l4: number; l3: number; l2: number; l1: number; offset: number } {
  return {
    l4: Math.floor(va / 2 ** 39) % PT_ENTRIES,
    l3: Math.floor(va / 2 ** 30) % PT_ENTRIES,
    l2: Math.floor(va / 2 ** 21) % PT_ENTRIES,
    l1: Math.floor(va / 4096) % PT_ENTRIES,
    offset: va % 4096,
  };
}

/** Reads the 4 KiB frame `mfn` as 1024 u32 words (a table: entry i at words 2i, 2i+1). */
export type FrameWords = (mfn: number) => Uint32Array;

/** What an access is: a read or write, from user (ring 3) or supervisor (rings 0–2) mode, or an instruction fetch. */
export interface Access {
  readonly write: boolean;
  readonly user: boolean;
  readonly fetch?: boolean;
}

/** Page-fault error code bits (Intel SDM §4.7). */
export const PF = Object.freeze({ P: 1 << 0, W: 1 << 1, U: 1 << 2, RSVD: 1 << 3, I: 1 << 4 });

/** A page fault: the address, Intel's error code and the level (4 … 1) where the walk stopped. */
export interface PageFault {
  readonly fault: true;
  readonly va: number;
  readonly errorCode: number;
  readonly level: number;
}

/** A translation: the machine frame and the physical byte address. */
export interface Translation {
  readonly fault: false;
  readonly mfn: number;
  readonly pa: number;
  /** Permissions of the whole path (all levels), for the TLB. */
  readonly writable: boolean;
  readonly user: boolean;
  readonly nx: boolean;
  /** Whether the leaf's D bit is set (after this walk), so the TLB may serve writes. */
  readonly dirty: boolean;
}

/**
 * Walks the tables from `cr3` (the L4 frame) for an access to `va`, as the hardware
 * does: each level must be present; a write needs RW and a user access US at every
 * level; a fetch needs NX clear at every level. Sets A at every level it uses and D
 * in the leaf on a write (atomically: other vCPUs may share the tables). A PS bit is
 * a reserved-bit fault (the model has no large pages).
 * @throws RangeError for an address outside 0 … 2^48 − 1.
 */
export function walk(frames: FrameWords, cr3: number, va: number, access: Access): Translation | PageFault {
  if (!(Number.isInteger(va) && va >= 0 && va < VA_LIMIT)) throw new RangeError(`virtual address ${va} is not a 48-bit address`);
  const p = vaParts(va);
  const idx = [p.l4, p.l3, p.l2, p.l1];
  let table = cr3;
  let writable = true;
  let user = true;
  let nx = false;
  let dirty = false;
  const code = (present: boolean) => (present ? PF.P : 0) | (access.write ? PF.W : 0) | (access.user ? PF.U : 0) | (access.fetch ? PF.I : 0);
  for (let level = 4; level >= 1; level--) {
    const w = frames(table);
    const i = idx[4 - level] * 2;
    const lo = Atomics.load(w, i) >>> 0;
    const hi = Atomics.load(w, i + 1) >>> 0;
    if (!(lo & PTE.P)) return { fault: true, va, errorCode: code(false), level };
    if (level > 1 && (lo & PTE.PS)) return { fault: true, va, errorCode: code(true) | PF.RSVD, level };
    writable &&= (lo & PTE.RW) !== 0;
    user &&= (lo & PTE.US) !== 0;
    nx ||= (hi & PTE_HI_NX) !== 0;
    if ((access.write && !writable) || (access.user && !user) || (access.fetch && nx)) return { fault: true, va, errorCode: code(true), level };
    const set = PTE.A | (level === 1 && access.write ? PTE.D : 0);
    if ((lo & set) !== set) Atomics.or(w, i, set);
    if (level === 1) dirty = ((lo | set) & PTE.D) !== 0;
    table = pteFrame(lo, hi);
  }
  return { fault: false, mfn: table, pa: table * 4096 + p.offset, writable, user, nx, dirty };
}

/**
 * A software TLB: translations by virtual page, with the permissions of their walk.
 * A hit serves an access its permissions allow (a write only when the leaf was dirty
 * when the entry was filled: otherwise the write walks to set D, as the hardware does). Stale entries stay until
 * {@link invlpg} or {@link flush} — as on the hardware, which is why the guest must
 * flush after changing a mapping.
 */
export class SoftTlb {
  readonly counters = { hits: 0, misses: 0, flushes: 0, invlpgs: 0 };
  private readonly entries = new Map<number, { mfn: number; writable: boolean; user: boolean; nx: boolean; dirty: boolean }>();

  /** Translates through the TLB, walking (and filling it) on a miss. */
  translate(frames: FrameWords, cr3: number, va: number, access: Access): Translation | PageFault {
    const vpn = Math.floor(va / 4096);
    const e = this.entries.get(vpn);
    if (e && (!access.write || (e.writable && e.dirty)) && (!access.user || e.user) && (!access.fetch || !e.nx)) {
      this.counters.hits++;
      return { fault: false, mfn: e.mfn, pa: e.mfn * 4096 + (va % 4096), writable: e.writable, user: e.user, nx: e.nx, dirty: e.dirty };
    }
    this.counters.misses++;
    const t = walk(frames, cr3, va, access);
    if (t.fault) return t;
    this.entries.set(vpn, { mfn: t.mfn, writable: t.writable, user: t.user, nx: t.nx, dirty: t.dirty });
    return t;
  }

  /** Drops the translation of `va`'s page (`invlpg`). */
  invlpg(va: number): void {
    this.counters.invlpgs++;
    this.entries.delete(Math.floor(va / 4096));
  }

  /** Drops every translation (a new base pointer, a local flush). */
  flush(): void {
    this.counters.flushes++;
    this.entries.clear();
  }

  /** Translations held. */
  get size(): number {
    return this.entries.size;
  }
}

/**
 * A domain's P2M (pseudo-physical frame → machine frame) and the machine-wide M2P
 * (machine frame → owner and pseudo-physical frame), kept by the hypervisor.
 */
export class PhysMap {
  private readonly p2m = new Map<number, Map<number, number>>();
  private readonly m2p = new Map<number, { domid: number; pfn: number }>();

  /**
   * Records that `domid`'s pseudo-physical frame `pfn` is machine frame `mfn`.
   * @throws Error when `mfn` already belongs to a domain (a frame has one owner).
   */
  set(domid: number, pfn: number, mfn: number): void {
    const owner = this.m2p.get(mfn);
    if (owner && (owner.domid !== domid || owner.pfn !== pfn)) throw new Error(`mfn ${mfn} already belongs to dom${owner.domid} (pfn ${owner.pfn})`);
    let m = this.p2m.get(domid);
    if (!m) this.p2m.set(domid, (m = new Map()));
    const old = m.get(pfn);
    if (old !== undefined && old !== mfn) this.m2p.delete(old);
    m.set(pfn, mfn);
    this.m2p.set(mfn, { domid, pfn });
  }

  /** Forgets `domid`'s `pfn` (a frame given back: decrease_reservation). @returns the machine frame it was, if any. */
  clear(domid: number, pfn: number): number | undefined {
    const m = this.p2m.get(domid);
    const mfn = m?.get(pfn);
    if (mfn === undefined) return undefined;
    m!.delete(pfn);
    this.m2p.delete(mfn);
    return mfn;
  }

  /** P2M: the machine frame of `domid`'s `pfn`, or undefined. */
  mfnOf(domid: number, pfn: number): number | undefined {
    return this.p2m.get(domid)?.get(pfn);
  }

  /** M2P: the owner and pseudo-physical frame of `mfn`, or undefined. */
  pfnOf(mfn: number): { domid: number; pfn: number } | undefined {
    return this.m2p.get(mfn);
  }

  /** Whether `domid` owns machine frame `mfn`. */
  owns(domid: number, mfn: number): boolean {
    return this.m2p.get(mfn)?.domid === domid;
  }
}
