/**
 * A guest kernel for the CPU/MMU model, written once against the vCPU API, with the
 * paravirt-ops of four modes (as Linux's pv_ops choose native or Xen code):
 *
 * | mode | page tables | PTE writes | base pointer, invlpg | cli/sti | system calls |
 * |---|---|---|---|---|---|
 * | `pv-batched` | direct paging | queued, one `multicall` of `mmu_update`s per {@link BATCH} | `mmuext_op` | upcall mask | fast handler |
 * | `pv-single` | direct paging | one `mmu_update` each | `mmuext_op` | upcall mask | fast handler |
 * | `shadow` | shadow paging | plain stores (trapped when the table is shadowed) | `mmuext_op` | upcall mask | fast handler |
 * | `trap-emulate` | shadow paging | plain stores | `mov cr3`, `invlpg` (trapped) | `cli`/`sti` (trapped) | through the hypervisor |
 *
 * The kernel has a direct map of all its memory at {@link DIRECTMAP}
 * (0xffff880000000000, just above the hypervisor's range, where Linux x86-64 puts it),
 * built by the domain builder ({@link bootKernel}); in direct paging its page-table
 * frames are mapped read-only there, as Xen requires. A process is an L4 that shares
 * the kernel's slot and maps user pages below 0x800000000000.
 *
 * In direct paging, PTEs hold machine frames (the kernel reads the P2M the hypervisor
 * keeps); in shadow paging they hold pseudo-physical frames.
 *
 * @see linux/arch/x86/xen/mmu_pv.c (pinning, batched updates, read-only page tables)
 */
import { MMU, MMUEXT, UVMF } from './abi.ts';
import type { ModelMemory } from './memory.ts';
import type { MmuHypervisor, MmuPort, MmuUpdateReq, MulticallEntry } from './mmu-hypervisor.ts';
import { PTE, makePte, vaParts } from './pagetable.ts';
import { Vcpu, type SyscallHandler, type TrapFrame } from './vcpu.ts';

/** The four modes of the benchmark. */
export type KernelMode = 'pv-batched' | 'pv-single' | 'shadow' | 'trap-emulate';
/** Every mode, in the benchmark's order. */
export const KERNEL_MODES: readonly KernelMode[] = ['pv-batched', 'pv-single', 'shadow', 'trap-emulate'];

/** Where the kernel's direct map starts (0xffff880000000000 as a 48-bit address). */
export const DIRECTMAP = 0x8800_0000_0000;
/** Where user mappings start. */
export const USER_BASE = 0x40_0000;
/**
 * Updates per batch in pv-batched mode: 32, as Linux batches them — its per-CPU
 * multicall buffer holds `MC_BATCH` = 32 calls and `MC_ARGS` = 32 × 16 bytes of
 * arguments, so at most 32 `mmu_update` requests go in one hypercall.
 * @see linux/arch/x86/xen/multicalls.c
 */
export const BATCH = 32;
/** The kernel's code: handler addresses point here (a direct-map address). */
const KERNEL_TEXT = DIRECTMAP;

/** A process: its L4 (pfn) and the user pages it maps. */
export interface Process {
  readonly l4: number;
  readonly pages: Array<{ va: number; pfn: number }>;
}

/** A guest kernel under the model: its vCPU, its memory and its paravirt-ops. */
export class GuestKernel {
  readonly vcpu: Vcpu;
  /** The kernel's own L4 (pfn). */
  readonly kernelL4: number;
  /** Page faults delivered to the kernel: [address, error code]. */
  readonly faults: Array<[number, number]> = [];
  /** General-protection faults delivered to the kernel. */
  gpFaults = 0;
  /** Events the kernel's upcall handled. */
  events = 0;
  private readonly free: number[];
  private queue: MulticallEntry[] = [];
  private queued = 0;
  private readonly pv: boolean;
  /** Pfns of the frames that are page tables (read-only in the direct map under direct paging). */
  private readonly tables = new Set<number>();
  /** The kernel's record of its tables' links: `tablePfn * 512 + index` → the pfn of the table below. */
  private readonly links = new Map<number, number>();
  /** A page fault handler's hook: return true to have the access retried. */
  onPageFault: ((frame: TrapFrame) => boolean) | undefined;

  private constructor(readonly port: MmuPort, readonly domid: number, readonly mode: KernelMode, private readonly mfns: readonly number[],
    private readonly pfnBase: number, kernelL4: number, free: number[], tables: Iterable<number>) {
    this.pv = mode === 'pv-batched' || mode === 'pv-single';
    this.vcpu = new Vcpu(port, domid, 0);
    this.kernelL4 = kernelL4;
    this.free = free;
    for (const t of tables) this.tables.add(t);
  }

  /**
   * Boots the kernel in one thread: registers `domid` with the model's hypervisor
   * `hv` in the mode's paging, gives it `pages` frames of `mem` (pfns 0 …), and runs
   * {@link start}. @throws as {@link start}.
   */
  static boot(hv: MmuHypervisor, mem: ModelMemory, domid: number, mode: KernelMode, pages: number, syscall: SyscallHandler): GuestKernel {
    hv.addDomain(domid, mode === 'pv-batched' || mode === 'pv-single' ? 'pv' : 'shadow');
    return GuestKernel.start(hv, domid, mode, mem.alloc(domid, pages), 0, syscall);
  }

  /**
   * The domain builder and the kernel's boot, over frames the domain already has:
   * `mfns[i]` is the machine frame of pfn `pfnBase + i` (the P2M, as the kernel
   * keeps it). Builds the direct map of those pfns in the first of them (page-table
   * frames read-only under direct paging), loads it (pinned under direct paging),
   * installs the IDT (#PF, #GP, vector 0x80 for system calls) and — except in
   * trap-emulate mode — the fast system-call handler and event callback, then zeroes
   * the vCPU's counters. The domain's paging mode must already be set in the hypervisor.
   * @throws Error when the hypervisor refuses the tables or the handlers.
   */
  static start(port: MmuPort, domid: number, mode: KernelMode, mfns: readonly number[], pfnBase: number, syscall: SyscallHandler): GuestKernel {
    const pv = mode === 'pv-batched' || mode === 'pv-single';
    const pages = mfns.length;
    const ref = (pfn: number) => (pv ? mfns[pfn - pfnBase] : pfn);
    const set = (tablePfn: number, i: number, framePfn: number, flags: number) => {
      const { lo, hi } = makePte(ref(framePfn), flags);
      const w = port.words(mfns[tablePfn - pfnBase]);
      w[2 * i] = lo;
      w[2 * i + 1] = hi;
    };
    // Tables come from the first frames, made as the direct map needs them.
    let next = pfnBase;
    const tables: number[] = [];
    const table = () => {
      const t = next++;
      tables.push(t);
      return t;
    };
    const l4 = table();
    const below = new Map<string, number>();
    const reserve = Math.ceil(pages / 512) + Math.ceil(pages / 512 / 512) + 4;
    if (reserve >= pages) throw new Error(`${pages} pages are too few for the kernel's tables`);
    const dmBase = vaParts(DIRECTMAP);
    const links: Array<[number, number, number]> = [];
    for (let pfn = pfnBase; pfn < pfnBase + pages; pfn++) {
      const va = DIRECTMAP + pfn * 4096;
      const parts = vaParts(va);
      if (parts.l4 !== dmBase.l4) throw new Error('the model kernel maps at most 512 GiB');
      let t = l4;
      for (const [lvl, i] of [[4, parts.l4], [3, parts.l3], [2, parts.l2]] as const) {
        const key = `${t}:${i}`;
        let n = below.get(key);
        if (n === undefined) {
          if (next >= pfnBase + reserve) throw new Error('the boot table reserve is exhausted');
          n = table();
          below.set(key, n);
          links.push([t, i, n]);
        }
        t = n;
        void lvl;
      }
      links.push([t, parts.l1, -pfn - 1]); // a leaf, written below once every table is known
    }
    const isTable = new Set(tables);
    for (const [t, i, n] of links) {
      if (n >= 0) set(t, i, n, PTE.P | PTE.RW);
      else {
        const pfn = -n - 1;
        set(t, i, pfn, PTE.P | (pv && isTable.has(pfn) ? 0 : PTE.RW) | PTE.A | PTE.D);
      }
    }
    const free = Array.from({ length: pfnBase + pages - next }, (_, i) => pfnBase + pages - 1 - i);
    const k = new GuestKernel(port, domid, mode, mfns, pfnBase, l4, free, tables);
    for (const [t, i, n] of links) if (n >= 0) k.links.set(t * 512 + i, n);
    const v = k.vcpu;
    const r = v.mmuextOp(pv ? [{ cmd: MMUEXT.PIN_L4_TABLE, arg: ref(l4) }, { cmd: MMUEXT.NEW_BASEPTR, arg: ref(l4) }] : [{ cmd: MMUEXT.NEW_BASEPTR, arg: l4 }]);
    if (r.rc < 0) throw new Error(`the hypervisor refused the boot tables: ${r.rc}`);
    const install = v.setTrapTable([
      { vector: 14, dpl: 0, address: KERNEL_TEXT + 0x100, handler: (f) => k.pageFault(f) },
      { vector: 13, dpl: 0, address: KERNEL_TEXT + 0x200, handler: () => void k.gpFaults++ },
      { vector: 0x80, dpl: 3, address: KERNEL_TEXT + 0x300, handler: (f) => syscall(f.syscall!.nr, f.syscall!.args) },
    ]);
    if (install < 0) throw new Error(`set_trap_table: ${install}`);
    if (mode !== 'trap-emulate') {
      const rc = v.setCallbacks({
        event: { address: KERNEL_TEXT + 0x400, handler: () => void k.events++ },
        syscall: { address: KERNEL_TEXT + 0x500, handler: syscall },
      });
      if (rc < 0) throw new Error(`set_callbacks: ${rc}`);
    }
    v.upcallMask = false;
    k.resetCounters();
    return k;
  }

  /** Zeroes the vCPU's accounting and TLB counters (after boot or a setup phase). */
  resetCounters(): void {
    this.vcpu.acct.reset();
  }

  private pageFault(f: TrapFrame): unknown {
    this.faults.push([f.cr2, f.errorCode]);
    return this.onPageFault?.(f) ? 'retry' : undefined;
  }

  /** The direct-map address of `pfn`. */
  kva(pfn: number): number {
    return DIRECTMAP + pfn * 4096;
  }

  /** The machine frame of `pfn` (the kernel's copy of the P2M, as a PV kernel keeps it). @throws Error for a pfn outside the kernel's memory. */
  mfn(pfn: number): number {
    const m = this.mfns[pfn - this.pfnBase];
    if (m === undefined) throw new Error(`pfn ${pfn} is not this kernel's`);
    return m;
  }

  /** What a PTE holds for `pfn`: its MFN (direct paging) or the pfn (shadow paging). */
  private ref(pfn: number): number {
    return this.pv ? this.mfn(pfn) : pfn;
  }

  /** Allocates a zeroed page. @throws Error when the kernel is out of memory. */
  allocPage(): number {
    const pfn = this.free.pop();
    if (pfn === undefined) throw new Error(`dom${this.domid}: out of memory`);
    this.vcpu.write(this.kva(pfn), ZERO_PAGE);
    return pfn;
  }

  // -------------------------------------------------------------------------
  // Paravirt-ops

  /**
   * Sets entry `index` of page table `tablePfn` to (`framePfn`, `flags`): a queued or
   * single `mmu_update` under direct paging, a plain store through the direct map
   * under shadow paging.
   */
  setPte(tablePfn: number, index: number, framePfn: number, flags: number): void {
    const { lo, hi } = framePfn < 0 ? { lo: 0, hi: 0 } : makePte(this.ref(framePfn), flags);
    if (this.pv) {
      this.queueUpdate({ op: 'mmu_update', reqs: [{ ptr: this.mfn(tablePfn) * 4096 + index * 8 + MMU.NORMAL_PT_UPDATE, lo, hi }] });
      return;
    }
    const b = new Uint8Array(8);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, lo, true);
    dv.setUint32(4, hi, true);
    this.vcpu.write(this.kva(tablePfn) + index * 8, b);
  }

  /** Queues (pv-batched) or issues (pv-single) one MMU call; other modes never call it. */
  private queueUpdate(e: MulticallEntry): void {
    if (this.mode === 'pv-single') {
      const rc = e.op === 'mmu_update' ? this.vcpu.mmuUpdate(e.reqs).rc
        : e.op === 'mmuext_op' ? this.vcpu.mmuextOp(e.ops).rc
          : this.vcpu.updateVaMapping(e.va, e.lo, e.hi, e.flags);
      if (rc < 0) throw new Error(`dom${this.domid}: ${e.op} refused: ${rc}`);
      return;
    }
    const last = this.queue[this.queue.length - 1];
    if (e.op === 'mmu_update' && last?.op === 'mmu_update') (last.reqs as MmuUpdateReq[]).push(...e.reqs);
    else this.queue.push(e.op === 'mmu_update' ? { op: 'mmu_update', reqs: [...e.reqs] } : e);
    if (++this.queued >= BATCH) this.flushUpdates();
  }

  /** Issues the queued updates (pv-batched): one `mmu_update`, or one `multicall` for several calls. @throws Error when one is refused. */
  flushUpdates(): void {
    if (this.queue.length === 0) return;
    const q = this.queue;
    this.queue = [];
    this.queued = 0;
    const rcs = q.length === 1 && q[0].op === 'mmu_update' ? [this.vcpu.mmuUpdate(q[0].reqs).rc] : this.vcpu.multicall(q);
    rcs.forEach((rc, i) => {
      if (rc < 0) throw new Error(`dom${this.domid}: ${q[i].op} refused in a batch: ${rc}`);
    });
  }

  /** Makes a fresh page a page table: under direct paging, maps it read-only in the direct map first (Xen refuses a writable page table). */
  private makeTable(pfn: number): void {
    this.tables.add(pfn);
    if (!this.pv) return;
    const { lo, hi } = makePte(this.mfn(pfn), PTE.P | PTE.A | PTE.D);
    this.queueUpdate({ op: 'update_va_mapping', va: this.kva(pfn), lo, hi, flags: UVMF.INVLPG });
  }

  /** Loads `l4` (pfn) as the base pointer: `mmuext_op` NEW_BASEPTR, or a trapped `mov cr3` in trap-emulate mode. */
  switchTo(l4: number): void {
    this.flushUpdates();
    if (this.mode === 'trap-emulate') this.vcpu.writeCr3(l4);
    else {
      const r = this.vcpu.mmuextOp([{ cmd: MMUEXT.NEW_BASEPTR, arg: this.ref(l4) }]);
      if (r.rc < 0) throw new Error(`NEW_BASEPTR refused: ${r.rc}`);
    }
  }

  /** Drops the TLB entry of `va`: `mmuext_op` INVLPG_LOCAL, or a trapped `invlpg`. */
  invlpg(va: number): void {
    this.flushUpdates();
    if (this.mode === 'trap-emulate') this.vcpu.invlpg(va);
    else this.vcpu.mmuextOp([{ cmd: MMUEXT.INVLPG_LOCAL, arg: va }]);
  }

  /** Masks events: a trapped `cli`, or the upcall mask. */
  irqDisable(): void {
    if (this.mode === 'trap-emulate') this.vcpu.cli();
    else this.vcpu.setUpcallMask(true);
  }

  /** Unmasks events: a trapped `sti`, or the upcall mask. */
  irqEnable(): void {
    if (this.mode === 'trap-emulate') this.vcpu.sti();
    else this.vcpu.setUpcallMask(false);
  }

  // -------------------------------------------------------------------------
  // Processes

  /**
   * Creates a process: a new L4 sharing the kernel's direct-map slot, made a page
   * table (and pinned, under direct paging, as Linux pins a new mm's pgd).
   */
  createProcess(): Process {
    const l4 = this.allocPage();
    const dm = vaParts(DIRECTMAP).l4;
    // The kernel's slot, copied while the new page is still an ordinary page.
    this.vcpu.write(this.kva(l4) + dm * 8, this.vcpu.read(this.kva(this.kernelL4) + dm * 8, 8));
    this.makeTable(l4);
    if (this.pv) this.queueUpdate({ op: 'mmuext_op', ops: [{ cmd: MMUEXT.PIN_L4_TABLE, arg: this.mfn(l4) }] });
    this.flushUpdates();
    return { l4, pages: [] };
  }

  /**
   * Maps a fresh page at user address `va` of process `p` (read-write, user),
   * making the tables it needs (linked first, then filled, as a page-fault handler
   * does). Updates may stay queued: {@link flushUpdates} before using the mapping.
   */
  mapUser(p: Process, va: number): number {
    const parts = vaParts(va);
    let table = p.l4;
    for (const i of [parts.l4, parts.l3, parts.l2]) {
      const key = table * 512 + i;
      const next = this.links.get(key);
      if (next !== undefined) {
        table = next;
        continue;
      }
      const t = this.allocPage();
      this.makeTable(t);
      this.setPte(table, i, t, PTE.P | PTE.RW | PTE.US);
      this.links.set(key, t);
      table = t;
    }
    const page = this.allocPage();
    this.setPte(table, parts.l1, page, PTE.P | PTE.RW | PTE.US);
    p.pages.push({ va, pfn: page });
    return page;
  }

  /** The L1 table (pfn) of `va` in process `p`, from the kernel's record of its tables, or undefined. */
  l1Of(p: Process, va: number): number | undefined {
    const parts = vaParts(va);
    let table: number | undefined = p.l4;
    for (const i of [parts.l4, parts.l3, parts.l2]) {
      table = this.links.get(table * 512 + i);
      if (table === undefined) return undefined;
    }
    return table;
  }

  /** Removes the mapping of `va` in process `p` (its entry zeroed) and drops its TLB entry. */
  unmapUser(p: Process, va: number): void {
    const l1 = this.l1Of(p, va);
    if (l1 === undefined) return;
    this.setPte(l1, vaParts(va).l1, -1, 0);
    this.invlpg(va);
  }

  /** Changes the mapping of `va` in process `p` to read-only (as for copy-on-write) and drops its TLB entry. */
  protectUser(p: Process, va: number): void {
    const l1 = this.l1Of(p, va);
    const page = p.pages.find((x) => x.va === va);
    if (l1 === undefined || !page) throw new Error(`0x${va.toString(16)} is not mapped`);
    this.setPte(l1, vaParts(va).l1, page.pfn, PTE.P | PTE.US);
    this.invlpg(va);
  }
}

const ZERO_PAGE = new Uint8Array(4096);
