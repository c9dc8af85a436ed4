/**
 * The hypervisor side of the CPU/MMU model: Xen's PV MMU (direct paging with
 * validated, batchable updates), shadow paging for comparison, and the entries a
 * vCPU makes into the hypervisor (hypercalls, trapped instructions, faults), each
 * counted by reason in the vCPU's {@link Accounting}.
 *
 * **Direct paging** (a domain in `pv` mode). The guest's page tables are its own
 * frames and hold machine frame numbers. Every frame has a type, as in Xen: none,
 * writable (mapped read-write somewhere), or L1…L4 page table, with a type count; a
 * frame changes type only when its count is zero, so a page-table frame can never be
 * mapped writable and a writable-mapped frame can never become a page table. A frame
 * becomes a page table of level k when something holds that type: a pin
 * (`MMUEXT_PIN_Lk_TABLE`), a validated level-(k+1) entry that points to it, or the
 * base pointer. Taking the type validates every present entry of the table (each
 * counted in `validatedPtes`); an entry is valid when it maps a frame the domain owns
 * or was granted (read-only grants only read-only), an L1 entry maps a page-table
 * frame read-only, upper entries point to a table of the level below and have no PS
 * bit, and no L4 entry covers the hypervisor's reserved range (slots 256–271).
 *
 * **Shadow paging** (a domain in `shadow` mode). The guest's tables are ordinary
 * frames holding *pseudo-physical* frame numbers, written directly by the guest. The
 * vCPU walks shadow tables (frames owned by the hypervisor, `DOMID_XEN`) holding
 * machine frames, built lazily: a walk that misses in the shadow enters the
 * hypervisor (`shadow:fill`), which walks the guest's tables, sets their A (and D)
 * bits, and fills the shadow. A guest frame that is shadowed as a table is mapped
 * read-only in every shadow L1, so each guest write to it traps (`shadow:write`), is
 * emulated, and drops the shadow entries it changed (refilled on the next miss).
 * A page whose guest PTE is not yet dirty is shadowed read-only, so the first write
 * traps (`shadow:dirty`) and sets D in the guest's PTE: accessed and dirty bits reach
 * the guest's tables.
 *
 * @see xen/arch/x86/mm.c (page types, mod_lN_entry, do_mmu_update, do_mmuext_op,
 *   do_update_va_mapping), xen/arch/x86/pv/mm.c, xen/arch/x86/mm/shadow/multi.c,
 *   xen/include/public/xen.h
 */
import { Accounting } from './accounting.ts';
import { HYPERCALL_NAME, XEN_ERRNO as ERRNO } from '../abi.ts';
import { MMU, MMUEXT, UVMF } from './abi.ts';
import type { MmuMemory } from './memory.ts';
import { PF, PTE, PTE_HI_NX, PT_ENTRIES, VA_LIMIT, isReserved, pteFrame, vaParts, type Access } from './pagetable.ts';

/** How a domain's page tables are virtualised. */
export type PagingMode = 'pv' | 'shadow';

/** Frame types (`PGT_*`): 0 none, 1–4 a page table of that level, 5 writable. @see xen/include/asm-x86/mm.h */
export const PGT = Object.freeze({ none: 0, l1: 1, l2: 2, l3: 3, l4: 4, writable: 5 } as const);

/** L4 slots of the hypervisor's reserved range (HYPERVISOR_VIRT_START … END). */
const RESERVED_L4_FIRST = 256;
const RESERVED_L4_LAST = 271;

/** One `mmu_update` request: `*ptr = val`, with `ptr`'s low 2 bits the command (`MMU_*`). */
export interface MmuUpdateReq {
  /** Machine byte address of the entry (MFN × 4096 + offset), low 2 bits = command. */
  readonly ptr: number;
  /** The new entry's low and high 32-bit halves (for MACHPHYS_UPDATE, `lo` is the pfn). */
  readonly lo: number;
  readonly hi: number;
}

/** One `mmuext_op`: `cmd` (`MMUEXT_*`) and its argument (an MFN, or a linear address for INVLPG). */
export interface MmuextOp {
  readonly cmd: number;
  readonly arg?: number;
}

/** One call of a multicall: the hypercall and its arguments. */
export type MulticallEntry =
  | { op: 'mmu_update'; reqs: readonly MmuUpdateReq[] }
  | { op: 'mmuext_op'; ops: readonly MmuextOp[] }
  | { op: 'update_va_mapping'; va: number; lo: number; hi: number; flags: number };

/** The result of a batched hypercall: Xen's return value and how many items were done. */
export interface BatchResult {
  readonly rc: number;
  readonly done: number;
}

/** What the hypervisor keeps of a vCPU; the model's vCPU ({@link Vcpu}) implements it. */
export interface VcpuState {
  readonly domid: number;
  readonly id: number;
  readonly acct: Accounting;
  /** The guest's base pointer: the L4's MFN (pv) or pfn (shadow). */
  cr3: number;
  /** The table the hardware walks: `cr3` (pv) or the shadow of the guest's L4 (shadow). */
  hwCr3: number;
  /** Flushes this vCPU's TLB (counted by the caller). */
  flushTlb(): void;
  /** Drops one translation from this vCPU's TLB. */
  invlpgTlb(va: number): void;
}

/**
 * What a vCPU needs of the hypervisor: the frames its walks read, and every entry.
 * {@link MmuHypervisor} serves it in the same thread; {@link HostedMmu}
 * (hypervisor/mmu/hosted.ts) through hypercalls to the hypervisor thread.
 */
export interface MmuPort {
  /** The 1024 u32 words of `mfn` (a frame the vCPU's walk reaches). */
  words(mfn: number): Uint32Array;
  /** The 4096 bytes of `mfn`. */
  bytes(mfn: number): Uint8Array;
  addVcpu(v: VcpuState): void;
  mmuUpdate(v: VcpuState, reqs: readonly MmuUpdateReq[]): BatchResult;
  mmuextOp(v: VcpuState, ops: readonly MmuextOp[]): BatchResult;
  updateVaMapping(v: VcpuState, va: number, lo: number, hi: number, flags: number): number;
  multicall(v: VcpuState, calls: readonly MulticallEntry[]): number[];
  /** A hypercall with no MMU work, counted (e.g. `xen_version`, `set_trap_table` after the guest side validated it). */
  enterHypercall(v: VcpuState, nr: number): void;
  privileged(v: VcpuState, insn: PrivilegedInsn, arg?: number): number;
  trap(v: VcpuState, kind: 'gp' | 'syscall'): void;
  pageFault(v: VcpuState, va: number, access: Access, errorCode: number, data?: Uint8Array): FaultOutcome;
}

/** The privileged instructions the model traps. */
export type PrivilegedInsn = 'write_cr3' | 'invlpg' | 'cli' | 'sti' | 'hlt';

/** What {@link MmuHypervisor.pageFault} decided. */
export type FaultOutcome =
  /** The shadow was fixed: retry the access. */
  | 'retry'
  /** The write was emulated (shadow:write): the access is complete. */
  | 'emulated'
  /** A fault of the guest's own: deliver #PF with this error code to its kernel. */
  | { reflect: number };

interface PageInfo {
  type: number;
  count: number;
  pinned: boolean;
}

interface ModelDomain {
  readonly domid: number;
  readonly paging: PagingMode;
  readonly vcpus: VcpuState[];
  /** Shadow tables: `gmfn * 8 + level` → shadow MFN. */
  readonly shadows: Map<number, number>;
  /** Guest frames shadowed as a table (write-protected in every shadow L1). */
  readonly shadowed: Set<number>;
  /** Guest frame → shadow L1 entries (`smfn * 512 + index`) that map it writable. */
  readonly rmap: Map<number, Set<number>>;
  /** Shadow frame → [guest frame, level] it shadows. */
  readonly shadowOf: Map<number, [number, number]>;
}

/** Counters of the hypervisor as a whole (per-vCPU counts are in each vCPU's accounting). */
export interface MmuHypervisorCounters {
  shadowTables: number;
  writeProtects: number;
}

/** The hypervisor side of the model. */
export class MmuHypervisor implements MmuPort {
  readonly counters: MmuHypervisorCounters = { shadowTables: 0, writeProtects: 0 };
  private readonly pages = new Map<number, PageInfo>();
  private readonly domains = new Map<number, ModelDomain>();

  constructor(readonly mem: MmuMemory) {}

  /** Registers a domain and its paging mode. @throws Error if it exists. */
  addDomain(domid: number, paging: PagingMode): void {
    if (this.domains.has(domid)) throw new Error(`dom${domid} exists`);
    this.domains.set(domid, { domid, paging, vcpus: [], shadows: new Map(), shadowed: new Set(), rmap: new Map(), shadowOf: new Map() });
  }

  /** @see MmuPort.words */
  words(mfn: number): Uint32Array {
    return this.mem.words(mfn);
  }

  /** @see MmuPort.bytes */
  bytes(mfn: number): Uint8Array {
    return this.mem.bytes(mfn);
  }

  /** Registers a vCPU of a domain added with {@link addDomain}. @throws Error for an unknown domain. */
  addVcpu(v: VcpuState): void {
    this.dom(v.domid).vcpus.push(v);
  }

  /** The paging mode of `domid`. @throws Error for an unknown domain. */
  paging(domid: number): PagingMode {
    return this.dom(domid).paging;
  }

  /** A frame's type (`PGT_*`), type count and pin state, for tests and audits. */
  pageType(mfn: number): { type: number; count: number; pinned: boolean } {
    const p = this.pages.get(mfn);
    return p ? { ...p } : { type: PGT.none, count: 0, pinned: false };
  }

  private dom(domid: number): ModelDomain {
    const d = this.domains.get(domid);
    if (!d) throw new Error(`no domain ${domid} in the MMU model`);
    return d;
  }

  private info(mfn: number): PageInfo {
    let p = this.pages.get(mfn);
    if (!p) this.pages.set(mfn, (p = { type: PGT.none, count: 0, pinned: false }));
    return p;
  }

  // -------------------------------------------------------------------------
  // Page types (Xen's get_page_type / put_page_type)

  /**
   * Takes a reference of `type` on `mfn` for `domid`; taking a page-table type on a
   * frame of count 0 validates the table. @returns 0 or a negative errno.
   */
  private getType(domid: number, mfn: number, type: number, acct: Accounting): number {
    const p = this.info(mfn);
    if (p.count > 0) {
      if (p.type !== type) return -ERRNO.EINVAL; // "Bad type": the frame is in use as something else
      p.count++;
      return 0;
    }
    // The type is taken before the entries are validated, so an entry that maps the
    // table itself writable (or links it as another level) is refused.
    p.type = type;
    p.count = 1;
    if (type >= PGT.l1 && type <= PGT.l4) {
      const rc = this.validateTable(domid, mfn, type, acct);
      if (rc < 0) {
        p.type = PGT.none;
        p.count = 0;
        return rc;
      }
    }
    return 0;
  }

  /** Drops a reference taken by {@link getType}; the last one of a table releases what its entries hold. */
  private putType(mfn: number): void {
    const p = this.pages.get(mfn);
    if (!p || p.count === 0) throw new Error(`type count of mfn ${mfn} underflows`);
    if (--p.count > 0) return;
    if (p.type >= PGT.l1 && p.type <= PGT.l4) {
      const w = this.mem.words(mfn);
      for (let i = 0; i < PT_ENTRIES; i++) if (w[2 * i] & PTE.P) this.putEntry(p.type, w[2 * i], w[2 * i + 1]);
    }
    p.type = PGT.none;
  }

  /** Validates every present entry of table `mfn` as level `level`; on a failure, releases what it took. */
  private validateTable(domid: number, mfn: number, level: number, acct: Accounting): number {
    const w = this.mem.words(mfn);
    for (let i = 0; i < PT_ENTRIES; i++) {
      const lo = w[2 * i];
      if (!(lo & PTE.P)) continue;
      const rc = this.getEntry(domid, level, i, lo, w[2 * i + 1], acct);
      if (rc < 0) {
        for (let j = 0; j < i; j++) if (w[2 * j] & PTE.P) this.putEntry(level, w[2 * j], w[2 * j + 1]);
        return rc;
      }
    }
    return 0;
  }

  /**
   * Validates one present entry at `index` of a level-`level` table and takes the
   * references it implies (Xen's get_page_from_lNe). @returns 0 or a negative errno.
   */
  private getEntry(domid: number, level: number, index: number, lo: number, hi: number, acct: Accounting): number {
    acct.validatedPtes++;
    const target = pteFrame(lo, hi);
    if (level === 4 && index >= RESERVED_L4_FIRST && index <= RESERVED_L4_LAST) return -ERRNO.EINVAL; // the hypervisor's slots
    if (level === 1) {
      const rw = (lo & PTE.RW) !== 0;
      if (!this.mem.exists(target) || !this.mem.mayMap(domid, target, rw)) return -ERRNO.EBUSY; // could_not_pin
      if (rw) {
        const rc = this.getType(domid, target, PGT.writable, acct);
        if (rc < 0) return -ERRNO.EBUSY; // a page-table frame is never mapped writable
      }
      return 0;
    }
    if (lo & PTE.PS) return -ERRNO.EINVAL; // no superpages in the model
    if (!this.mem.exists(target) || !this.mem.owns(domid, target)) return -ERRNO.EINVAL;
    return this.getType(domid, target, level - 1, acct);
  }

  /** Releases what {@link getEntry} took for a present entry. */
  private putEntry(level: number, lo: number, hi: number): void {
    const target = pteFrame(lo, hi);
    if (level === 1) {
      if (lo & PTE.RW) this.putType(target);
      return;
    }
    this.putType(target);
  }

  /**
   * Changes entry `index` of table `mfn` (of type `level`) to (lo, hi), validating the
   * new entry before releasing the old (Xen's mod_lN_entry). @returns 0 or a negative errno.
   */
  private modEntry(domid: number, mfn: number, level: number, index: number, lo: number, hi: number, preserveAd: boolean, acct: Accounting): number {
    const w = this.mem.words(mfn);
    const oldLo = w[2 * index];
    const oldHi = w[2 * index + 1];
    if (preserveAd) lo = (lo & ~(PTE.A | PTE.D)) | (oldLo & (PTE.A | PTE.D));
    const same = (oldLo & PTE.P) && (lo & PTE.P) && pteFrame(oldLo, oldHi) === pteFrame(lo, hi) && ((oldLo ^ lo) & (PTE.RW | PTE.PS)) === 0;
    if (same) {
      acct.validatedPtes++; // flags only: checked, no reference changes
      if (level === 4 && index >= RESERVED_L4_FIRST && index <= RESERVED_L4_LAST) return -ERRNO.EINVAL;
    } else if (lo & PTE.P) {
      const rc = this.getEntry(domid, level, index, lo, hi, acct);
      if (rc < 0) return rc;
    }
    Atomics.store(w, 2 * index + 1, hi);
    Atomics.store(w, 2 * index, lo);
    if (!same && (oldLo & PTE.P)) this.putEntry(level, oldLo, oldHi);
    return 0;
  }

  // -------------------------------------------------------------------------
  // Hypercalls

  /**
   * `HYPERVISOR_mmu_update`: applies `reqs` in order, stopping at the first failure.
   * Entries of a frame typed as a page table are validated (mod_lN_entry); a frame
   * that is not a page table is written as plain memory, if the domain owns it.
   * @returns rc 0 or a negative errno (`-EINVAL` bad request or table, `-EBUSY` a
   *   frame that may not be mapped so, `-ENOSYS` unknown command) and `done`.
   * @see xen/arch/x86/mm.c do_mmu_update
   */
  mmuUpdate(v: VcpuState, reqs: readonly MmuUpdateReq[], inMulticall = false): BatchResult {
    if (!inMulticall) v.acct.enter('hypercall:mmu_update');
    const d = this.dom(v.domid);
    let done = 0;
    for (const r of reqs) {
      const cmd = r.ptr % 4;
      const addr = r.ptr - cmd;
      const mfn = Math.floor(addr / 4096);
      let rc: number;
      if (cmd === MMU.MACHPHYS_UPDATE) {
        if (!this.mem.owns(d.domid, mfn)) rc = -ERRNO.EINVAL;
        else {
          this.mem.phys.set(d.domid, r.lo, mfn);
          rc = 0;
        }
      } else if (cmd === MMU.NORMAL_PT_UPDATE || cmd === MMU.PT_UPDATE_PRESERVE_AD) {
        if (addr % 8 !== 0 || !this.mem.exists(mfn) || !this.mem.owns(d.domid, mfn)) rc = -ERRNO.EINVAL;
        else {
          const index = (addr % 4096) / 8;
          const p = this.pages.get(mfn);
          if (p && p.count > 0 && p.type >= PGT.l1 && p.type <= PGT.l4) {
            rc = this.modEntry(d.domid, mfn, p.type, index, r.lo >>> 0, r.hi >>> 0, cmd === MMU.PT_UPDATE_PRESERVE_AD, v.acct);
          } else {
            const w = this.mem.words(mfn);
            Atomics.store(w, 2 * index + 1, r.hi >>> 0);
            Atomics.store(w, 2 * index, r.lo >>> 0);
            rc = 0;
          }
        }
      } else rc = -ERRNO.ENOSYS;
      if (rc < 0) return { rc, done };
      done++;
    }
    return { rc: 0, done };
  }

  /**
   * `HYPERVISOR_mmuext_op`: pin/unpin tables, load a base pointer, flush the TLB or
   * one entry. Stops at the first failure.
   * @returns rc 0 or a negative errno (`-EINVAL`: not owned, already pinned, not
   *   pinned, validation failed; `-ENOSYS`: unknown command) and `done`.
   * @see xen/arch/x86/mm.c do_mmuext_op
   */
  mmuextOp(v: VcpuState, ops: readonly MmuextOp[], inMulticall = false): BatchResult {
    if (!inMulticall) v.acct.enter('hypercall:mmuext_op');
    const d = this.dom(v.domid);
    let done = 0;
    for (const op of ops) {
      let rc = 0;
      const arg = op.arg ?? 0;
      switch (op.cmd) {
        case MMUEXT.PIN_L1_TABLE: case MMUEXT.PIN_L2_TABLE: case MMUEXT.PIN_L3_TABLE: case MMUEXT.PIN_L4_TABLE: {
          if (d.paging !== 'pv' || !this.mem.owns(d.domid, arg)) { rc = -ERRNO.EINVAL; break; }
          const p = this.info(arg);
          if (p.pinned) { rc = -ERRNO.EINVAL; break; } // "Mfn already pinned"
          rc = this.getType(d.domid, arg, op.cmd - MMUEXT.PIN_L1_TABLE + 1, v.acct);
          if (rc === 0) p.pinned = true;
          break;
        }
        case MMUEXT.UNPIN_TABLE: {
          const p = this.pages.get(arg);
          if (!this.mem.owns(d.domid, arg) || !p?.pinned) { rc = -ERRNO.EINVAL; break; }
          p.pinned = false;
          this.putType(arg);
          break;
        }
        case MMUEXT.NEW_BASEPTR:
          rc = this.newBaseptr(v, arg);
          break;
        case MMUEXT.TLB_FLUSH_LOCAL:
          this.flush(v);
          break;
        case MMUEXT.INVLPG_LOCAL:
          this.invlpg(v, arg);
          break;
        case MMUEXT.TLB_FLUSH_ALL: case MMUEXT.TLB_FLUSH_MULTI:
          for (const o of d.vcpus) this.flush(o);
          break;
        case MMUEXT.INVLPG_ALL: case MMUEXT.INVLPG_MULTI:
          for (const o of d.vcpus) this.invlpg(o, arg);
          break;
        default:
          rc = -ERRNO.ENOSYS;
      }
      if (rc < 0) return { rc, done };
      done++;
    }
    return { rc: 0, done };
  }

  /**
   * `HYPERVISOR_update_va_mapping`: sets the L1 entry that maps `va` in the current
   * tables to (lo, hi), validated, then flushes as `flags` (`UVMF_*`) asks.
   * @returns 0 or a negative errno (`-EINVAL`: reserved or unmapped address, bad
   *   entry; `-EBUSY`: a frame that may not be mapped so).
   * @see xen/arch/x86/mm.c do_update_va_mapping
   */
  updateVaMapping(v: VcpuState, va: number, lo: number, hi: number, flags: number, inMulticall = false): number {
    if (!inMulticall) v.acct.enter('hypercall:update_va_mapping');
    const d = this.dom(v.domid);
    if (d.paging !== 'pv' || !Number.isInteger(va) || va < 0 || va >= VA_LIMIT || isReserved(va)) return -ERRNO.EINVAL;
    const l1 = this.l1Of(v.cr3, va);
    if (l1 === undefined) return -ERRNO.EINVAL;
    const rc = this.modEntry(d.domid, l1, 1, vaParts(va).l1, lo >>> 0, hi >>> 0, false, v.acct);
    if (rc < 0) return rc;
    const targets = flags & UVMF.ALL ? d.vcpus : [v];
    const kind = flags & UVMF.FLUSH_TYPE_MASK;
    for (const o of targets) {
      if (kind === UVMF.TLB_FLUSH) this.flush(o);
      else if (kind === UVMF.INVLPG) this.invlpg(o, va);
    }
    return 0;
  }

  /**
   * `HYPERVISOR_multicall`: runs `calls` in order in one entry into the hypervisor.
   * @returns each call's result (Xen writes them into each entry's `result`).
   * @see xen/common/multicall.c
   */
  multicall(v: VcpuState, calls: readonly MulticallEntry[]): number[] {
    v.acct.enter('hypercall:multicall');
    return calls.map((c) => {
      switch (c.op) {
        case 'mmu_update': return this.mmuUpdate(v, c.reqs, true).rc;
        case 'mmuext_op': return this.mmuextOp(v, c.ops, true).rc;
        case 'update_va_mapping': return this.updateVaMapping(v, c.va, c.lo, c.hi, c.flags, true);
      }
    });
  }

  /** Counts a hypercall that carries no MMU work (e.g. `xen_version` to force an event callback). */
  enterHypercall(v: VcpuState, nr: number): void {
    v.acct.enter(`hypercall:${HYPERCALL_NAME[nr] ?? nr}`);
  }

  /** The L1 table (MFN) that maps `va` under `cr3` (MFNs in every entry), or undefined when a level is missing. */
  private l1Of(cr3: number, va: number): number | undefined {
    const p = vaParts(va);
    let t = cr3;
    for (const i of [p.l4, p.l3, p.l2]) {
      const w = this.mem.words(t);
      if (!(w[2 * i] & PTE.P)) return undefined;
      t = pteFrame(w[2 * i], w[2 * i + 1]);
    }
    return t;
  }

  /**
   * Loads a new base pointer for `v`: in pv mode an L4 the domain owns, which takes
   * (and validates, if not pinned) the L4 type, releasing the old base; in shadow mode
   * a guest pfn whose shadow becomes the hardware's table. Flushes the TLB.
   * @returns 0 or `-EINVAL`.
   */
  newBaseptr(v: VcpuState, base: number): number {
    const d = this.dom(v.domid);
    if (d.paging === 'pv') {
      if (!this.mem.owns(d.domid, base)) return -ERRNO.EINVAL;
      const rc = this.getType(d.domid, base, PGT.l4, v.acct);
      if (rc < 0) return -ERRNO.EINVAL;
      const old = v.cr3;
      v.cr3 = base;
      v.hwCr3 = base;
      if (old >= 0 && this.pages.get(old)?.count) this.putType(old);
    } else {
      const mfn = this.mem.phys.mfnOf(d.domid, base);
      if (mfn === undefined) return -ERRNO.EINVAL;
      v.cr3 = base;
      v.hwCr3 = this.shadowTable(d, mfn, 4);
    }
    this.flush(v);
    return 0;
  }

  private flush(v: VcpuState): void {
    v.acct.tlbFlushes++;
    v.flushTlb();
  }

  private invlpg(v: VcpuState, va: number): void {
    v.acct.tlbInvlpgs++;
    v.invlpgTlb(va);
  }

  // -------------------------------------------------------------------------
  // Traps and faults

  /**
   * A privileged instruction of the guest kernel (ring 1), trapped and emulated:
   * `write_cr3` (`arg` the new base), `invlpg` (`arg` the address), `cli`/`sti`/`hlt`
   * (the caller changes the upcall mask or blocks; the hypervisor only counts).
   * @returns 0, or a negative errno when the emulation refuses (the vCPU then raises #GP).
   * @see xen/arch/x86/pv/emul-priv-op.c
   */
  privileged(v: VcpuState, insn: PrivilegedInsn, arg = 0): number {
    v.acct.enter(`trap:${insn}`);
    v.acct.emulations++;
    if (insn === 'write_cr3') return this.newBaseptr(v, arg);
    if (insn === 'invlpg') this.invlpg(v, arg);
    return 0;
  }

  /** Counts a trap that the hypervisor reflects to the guest kernel (`trap:gp`, `trap:syscall`). */
  trap(v: VcpuState, kind: 'gp' | 'syscall'): void {
    v.acct.enter(`trap:${kind}`);
  }

  /**
   * A page fault on the hardware's walk of `va` (error code `errorCode`). In pv mode
   * every fault is the guest's and is reflected (`fault:page`). In shadow mode the
   * hypervisor walks the guest's tables: a fault there is reflected; otherwise it
   * emulates a write to a shadowed table (`data` are the bytes stored), marks a page
   * dirty, or fills the shadow.
   * @see xen/arch/x86/mm/shadow/multi.c sh_page_fault
   */
  pageFault(v: VcpuState, va: number, access: Access, errorCode: number, data?: Uint8Array): FaultOutcome {
    const d = this.dom(v.domid);
    if (d.paging === 'pv') {
      v.acct.enter('fault:page');
      return { reflect: errorCode };
    }
    const g = this.guestWalk(d, v.cr3, va, access);
    if ('fault' in g) {
      v.acct.enter('fault:page');
      return { reflect: g.fault };
    }
    if (access.write && d.shadowed.has(g.mfn) && data) {
      v.acct.enter('shadow:write');
      v.acct.emulations++;
      this.emulateTableWrite(d, g.mfn, va % 4096, data, v.acct);
      return 'emulated';
    }
    // The path is valid in the guest's tables: (re)build it in the shadow.
    const sl1 = this.fillShadow(d, v.hwCr3, va, g.path, v.acct);
    const i = vaParts(va).l1;
    const sw = this.mem.words(sl1);
    if (access.write && (sw[2 * i] & PTE.P) && !(sw[2 * i] & PTE.RW) && (g.leafLo & PTE.RW) && !d.shadowed.has(g.mfn)) {
      v.acct.enter('shadow:dirty');
    } else v.acct.enter('shadow:fill');
    v.acct.validatedPtes++;
    this.setShadowLeaf(d, sl1, i, g, access.write);
    return 'retry';
  }

  /** Walks the guest's tables (pfns) for `va`, setting A on every level and D on the leaf of a write. */
  private guestWalk(d: ModelDomain, cr3pfn: number, va: number, access: Access):
    { fault: number } | { mfn: number; leafLo: number; leafHi: number; path: Array<{ table: number; index: number; lo: number; hi: number }> } {
    const p = vaParts(va);
    const idx = [p.l4, p.l3, p.l2, p.l1];
    let table = this.mem.phys.mfnOf(d.domid, cr3pfn);
    const code = (present: boolean) => (present ? PF.P : 0) | (access.write ? PF.W : 0) | (access.user ? PF.U : 0);
    if (table === undefined) return { fault: code(false) };
    const path: Array<{ table: number; index: number; lo: number; hi: number }> = [];
    let writable = true;
    let user = true;
    for (let level = 4; level >= 1; level--) {
      const w = this.mem.words(table);
      const i = idx[4 - level];
      const lo = Atomics.load(w, 2 * i) >>> 0;
      const hi = Atomics.load(w, 2 * i + 1) >>> 0;
      if (!(lo & PTE.P)) return { fault: code(false) };
      if ((level > 1 && (lo & PTE.PS)) || (level === 4 && i >= RESERVED_L4_FIRST && i <= RESERVED_L4_LAST)) return { fault: code(true) | PF.RSVD };
      writable &&= (lo & PTE.RW) !== 0;
      user &&= (lo & PTE.US) !== 0;
      if ((access.write && !writable) || (access.user && !user)) return { fault: code(true) };
      const set = PTE.A | (level === 1 && access.write ? PTE.D : 0);
      if ((lo & set) !== set) Atomics.or(w, 2 * i, set);
      const next = this.mem.phys.mfnOf(d.domid, pteFrame(lo, hi));
      if (next === undefined) return { fault: code(true) | PF.RSVD }; // a pfn the domain does not have
      path.push({ table, index: i, lo: lo | set, hi });
      table = next;
    }
    return { mfn: table, leafLo: path[3].lo, leafHi: path[3].hi, path };
  }

  /** The shadow of guest table `gmfn` at `level`, made (empty) if it has none; the guest frame becomes write-protected. */
  private shadowTable(d: ModelDomain, gmfn: number, level: number): number {
    const key = gmfn * 8 + level;
    const s = d.shadows.get(key);
    if (s !== undefined) return s;
    const smfn = this.mem.allocShadow(d.domid);
    d.shadows.set(key, smfn);
    d.shadowOf.set(smfn, [gmfn, level]);
    this.counters.shadowTables++;
    if (!d.shadowed.has(gmfn)) {
      d.shadowed.add(gmfn);
      this.writeProtect(d, gmfn);
    }
    return smfn;
  }

  /** Removes write access to `gmfn` from every shadow L1 (sh_remove_write_access) and flushes the TLBs that may hold it. */
  private writeProtect(d: ModelDomain, gmfn: number): void {
    const refs = d.rmap.get(gmfn);
    if (!refs || refs.size === 0) return;
    for (const ref of refs) {
      const w = this.mem.words(Math.floor(ref / PT_ENTRIES));
      const i = ref % PT_ENTRIES;
      Atomics.and(w, 2 * i, ~PTE.RW);
    }
    refs.clear();
    this.counters.writeProtects++;
    for (const v of d.vcpus) this.flush(v);
  }

  /** Makes the shadow path of `va` under shadow L4 `sl4` mirror the guest's `path` down to the L1. @returns the shadow L1. */
  private fillShadow(d: ModelDomain, sl4: number, va: number, path: ReadonlyArray<{ table: number; index: number; lo: number; hi: number }>, acct: Accounting): number {
    let s = sl4;
    for (let level = 4; level >= 2; level--) {
      const e = path[4 - level];
      const w = this.mem.words(s);
      const gNext = this.mem.phys.mfnOf(d.domid, pteFrame(e.lo, e.hi))!;
      const sNext = this.shadowTable(d, gNext, level - 1);
      const lo = (sNext % 2 ** 20) * 4096 + (e.lo & (PTE.P | PTE.RW | PTE.US | PTE.A));
      const hi = Math.floor(sNext / 2 ** 20) | (e.hi & PTE_HI_NX);
      if (Atomics.load(w, 2 * e.index) >>> 0 !== lo >>> 0 || Atomics.load(w, 2 * e.index + 1) >>> 0 !== hi >>> 0) {
        acct.validatedPtes++;
        Atomics.store(w, 2 * e.index + 1, hi >>> 0);
        Atomics.store(w, 2 * e.index, lo >>> 0);
      }
      s = sNext;
    }
    return s;
  }

  /** Writes the shadow L1 entry `i` of `sl1` from the guest's leaf: read-only while the guest's is clean or maps a shadowed table. */
  private setShadowLeaf(d: ModelDomain, sl1: number, i: number, g: { mfn: number; leafLo: number; leafHi: number }, write: boolean): void {
    const w = this.mem.words(sl1);
    this.dropLeafRmap(d, sl1, i);
    let flags = g.leafLo & (PTE.P | PTE.RW | PTE.US | PTE.A | PTE.D);
    if (d.shadowed.has(g.mfn) || !((g.leafLo & PTE.D) || write)) flags &= ~PTE.RW;
    const lo = (g.mfn % 2 ** 20) * 4096 + flags;
    const hi = Math.floor(g.mfn / 2 ** 20) | (g.leafHi & PTE_HI_NX);
    Atomics.store(w, 2 * i + 1, hi >>> 0);
    Atomics.store(w, 2 * i, lo >>> 0);
    if (flags & PTE.RW) {
      let set = d.rmap.get(g.mfn);
      if (!set) d.rmap.set(g.mfn, (set = new Set()));
      set.add(sl1 * PT_ENTRIES + i);
    }
  }

  private dropLeafRmap(d: ModelDomain, sl1: number, i: number): void {
    const w = this.mem.words(sl1);
    const lo = w[2 * i];
    if ((lo & PTE.P) && (lo & PTE.RW)) d.rmap.get(pteFrame(lo, w[2 * i + 1]))?.delete(sl1 * PT_ENTRIES + i);
  }

  /** Emulates a guest write of `data` at byte `offset` of its table frame `gmfn`, dropping the shadow entries it changed. */
  private emulateTableWrite(d: ModelDomain, gmfn: number, offset: number, data: Uint8Array, acct: Accounting): void {
    if (offset + data.length > 4096) throw new RangeError('an emulated write crosses a page');
    this.mem.bytes(gmfn).set(data, offset);
    const first = Math.floor(offset / 8);
    const last = Math.floor((offset + data.length - 1) / 8);
    for (let level = 1; level <= 4; level++) {
      const s = d.shadows.get(gmfn * 8 + level);
      if (s === undefined) continue;
      const w = this.mem.words(s);
      for (let i = first; i <= last; i++) {
        acct.validatedPtes++;
        if (level === 1) this.dropLeafRmap(d, s, i);
        Atomics.store(w, 2 * i, 0);
        Atomics.store(w, 2 * i + 1, 0);
      }
    }
  }

  /** The shadow frames of `domid` (for audits: every one is owned by DOMID_XEN). */
  shadowFrames(domid: number): number[] {
    return [...this.dom(domid).shadows.values()];
  }
}

