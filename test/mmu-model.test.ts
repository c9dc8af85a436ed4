// The CPU/MMU model (hypervisor/mmu/): Xen's validation rules for direct paging, each
// refusal by the errno Xen returns; the pin/unpin life cycle and page types; TLB
// consistency (a property: after invlpg or a new base pointer no stale translation is
// used, in direct and shadow paging); the same workload leaving the same guest-visible
// memory and faults in every mode; faults delivered to the guest kernel with the
// faulting address, and fixed by it (demand paging) in every mode; a hypercall or a
// privileged instruction from ring 3 is a #GP to the guest kernel; the fast system
// call enters no hypervisor, trap-and-emulate enters it once per call; events wait
// while the upcall mask is set; shadow paging propagates accessed/dirty bits to the
// guest's tables and traps writes to shadowed tables; no mapping reaches the
// hypervisor's reserved range; modelled cycles follow the counts; the ≥10x entries
// claim of the benchmark holds at a small size.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { Accounting, DEFAULT_COSTS, parseCosts } from '../hypervisor/mmu/accounting.ts';
import { XEN_ERRNO as ERRNO } from '../hypervisor/abi.ts';
import { MMU, MMUEXT, UVMF } from '../hypervisor/mmu/abi.ts';
import { DIRECTMAP, GuestKernel, KERNEL_MODES, USER_BASE, type KernelMode } from '../hypervisor/mmu/guest-kernel.ts';
import { ModelMemory } from '../hypervisor/mmu/memory.ts';
import { MmuHypervisor, PGT } from '../hypervisor/mmu/mmu-hypervisor.ts';
import { HYPERVISOR_VIRT_START, PF, PTE, makePte, vaParts } from '../hypervisor/mmu/pagetable.ts';
import { GuestPageFault, Vcpu } from '../hypervisor/mmu/vcpu.ts';
import { WORKLOADS, runWorkload } from '../hypervisor/mmu/workloads.ts';

/** A PV domain with hand-built tables: frames f[0..n), an L4 at f[0] → L3 f[1] → L2 f[2] → L1 f[3], mapping va 0… */
function pvDomain(n = 16) {
  const mem = new ModelMemory();
  const hv = new MmuHypervisor(mem);
  hv.addDomain(1, 'pv');
  hv.addDomain(2, 'pv');
  const f = mem.alloc(1, n);
  const other = mem.alloc(2, 4);
  const v = new Vcpu(hv, 1);
  const set = (table: number, i: number, frame: number, flags: number) => {
    const { lo, hi } = makePte(frame, flags);
    mem.words(table)[2 * i] = lo;
    mem.words(table)[2 * i + 1] = hi;
  };
  const U = PTE.P | PTE.RW | PTE.US;
  set(f[0], 0, f[1], U);
  set(f[1], 0, f[2], U);
  set(f[2], 0, f[3], U);
  /** An mmu_update request for entry `i` of table `t`. */
  const req = (t: number, i: number, frame: number, flags: number, cmd: number = MMU.NORMAL_PT_UPDATE) => ({ ptr: t * 4096 + i * 8 + cmd, ...makePte(frame, flags) });
  return { mem, hv, f, other, v, set, req, U };
}

describe('direct paging: Xen\'s validation rules, each refusal by its errno', () => {
  it('pinning validates the whole tree and types every table; a base pointer takes the L4 type', () => {
    const { hv, f, v } = pvDomain();
    expect(v.mmuextOp([{ cmd: MMUEXT.PIN_L4_TABLE, arg: f[0] }]).rc).toBe(0);
    expect(hv.pageType(f[0])).toEqual({ type: PGT.l4, count: 1, pinned: true });
    expect(hv.pageType(f[1])).toEqual({ type: PGT.l3, count: 1, pinned: false });
    expect(hv.pageType(f[3])).toEqual({ type: PGT.l1, count: 1, pinned: false });
    expect(v.acct.validatedPtes).toBe(3);
    expect(v.mmuextOp([{ cmd: MMUEXT.NEW_BASEPTR, arg: f[0] }]).rc).toBe(0);
    expect(hv.pageType(f[0]).count).toBe(2);
    expect(v.acct.entries.get('hypercall:mmuext_op')).toBe(2);
  });

  it('maps only frames the domain owns or was granted (read-only grants read-only): -EBUSY otherwise', () => {
    const { mem, f, other, v, req, U } = pvDomain();
    expect(v.mmuextOp([{ cmd: MMUEXT.PIN_L4_TABLE, arg: f[0] }]).rc).toBe(0);
    expect(v.mmuUpdate([req(f[3], 0, f[8], U)]).rc).toBe(0);
    expect(v.mmuUpdate([req(f[3], 1, other[0], U)])).toEqual({ rc: -ERRNO.EBUSY, done: 0 });
    expect(v.mmuUpdate([req(f[3], 1, other[0], PTE.P | PTE.US)]).rc).toBe(-ERRNO.EBUSY);
    mem.grant(2, 1, other[0], true);
    expect(v.mmuUpdate([req(f[3], 1, other[0], PTE.P | PTE.US)]).rc).toBe(0);
    expect(v.mmuUpdate([req(f[3], 2, other[0], U)]).rc).toBe(-ERRNO.EBUSY);
    mem.grant(2, 1, other[1], false);
    expect(v.mmuUpdate([req(f[3], 2, other[1], U)]).rc).toBe(0);
    expect(v.mmuUpdate([req(f[3], 3, 0x7fff_ffff, U)]).rc).toBe(-ERRNO.EBUSY); // no such frame
    // An upper-level entry must point to a table the domain owns.
    expect(v.mmuUpdate([req(f[2], 1, other[2], U)]).rc).toBe(-ERRNO.EINVAL);
  });

  it('never maps a page-table frame writable, and never makes a writable-mapped frame a table', () => {
    const { hv, f, v, req, U } = pvDomain();
    expect(v.mmuextOp([{ cmd: MMUEXT.PIN_L4_TABLE, arg: f[0] }]).rc).toBe(0);
    expect(v.mmuUpdate([req(f[3], 5, f[3], U)]).rc).toBe(-ERRNO.EBUSY); // its own L1, writable
    expect(v.mmuUpdate([req(f[3], 5, f[0], U)]).rc).toBe(-ERRNO.EBUSY); // the pinned L4
    expect(v.mmuUpdate([req(f[3], 5, f[3], PTE.P | PTE.US)]).rc).toBe(0); // read-only is fine
    expect(v.mmuUpdate([req(f[3], 6, f[9], U)]).rc).toBe(0);
    expect(hv.pageType(f[9])).toEqual({ type: PGT.writable, count: 1, pinned: false });
    expect(v.mmuextOp([{ cmd: MMUEXT.PIN_L1_TABLE, arg: f[9] }]).rc).toBe(-ERRNO.EINVAL); // mapped writable
    expect(v.mmuUpdate([req(f[2], 1, f[9], U)]).rc).toBe(-ERRNO.EINVAL); // nor linked as an L1
    expect(v.mmuUpdate([req(f[3], 6, 0, 0)]).rc).toBe(0); // unmapped: now it can be
    expect(hv.pageType(f[9]).count).toBe(0);
    expect(v.mmuextOp([{ cmd: MMUEXT.PIN_L1_TABLE, arg: f[9] }]).rc).toBe(0);
  });

  it('refuses the reserved range, superpages, foreign or misaligned tables, unknown commands; a batch stops at the first failure', () => {
    const { f, v, req, U } = pvDomain();
    expect(v.mmuextOp([{ cmd: MMUEXT.PIN_L4_TABLE, arg: f[0] }, { cmd: MMUEXT.NEW_BASEPTR, arg: f[0] }]).rc).toBe(0);
    const slot = vaParts(HYPERVISOR_VIRT_START).l4;
    expect(slot).toBe(256);
    expect(v.mmuUpdate([req(f[0], 256, f[10], U)]).rc).toBe(-ERRNO.EINVAL);
    expect(v.mmuUpdate([req(f[0], 271, f[10], U)]).rc).toBe(-ERRNO.EINVAL);
    expect(v.updateVaMapping(HYPERVISOR_VIRT_START + 4096, makePte(f[8], U).lo, 0, UVMF.INVLPG)).toBe(-ERRNO.EINVAL);
    expect(v.updateVaMapping(0x1234_0000_0000, makePte(f[8], U).lo, 0, UVMF.INVLPG)).toBe(-ERRNO.EINVAL); // no L1 there
    expect(v.mmuUpdate([req(f[2], 3, f[11], U | PTE.PS)]).rc).toBe(-ERRNO.EINVAL);
    expect(v.mmuUpdate([{ ptr: f[3] * 4096 + 4, lo: 0, hi: 0 }]).rc).toBe(-ERRNO.EINVAL);
    expect(v.mmuUpdate([req(f[3], 0, f[8], U, 3)]).rc).toBe(-ERRNO.ENOSYS);
    expect(v.mmuextOp([{ cmd: 99 }]).rc).toBe(-ERRNO.ENOSYS);
    const r = v.mmuUpdate([req(f[3], 0, f[8], U), req(f[3], 1, f[9], U), req(f[3], 2, f[3], U), req(f[3], 3, f[10], U)]);
    expect(r).toEqual({ rc: -ERRNO.EBUSY, done: 2 });
    // A table with a bad entry cannot be pinned (nothing is left typed).
    const { hv, f: g, v: w, set } = pvDomain();
    set(g[5], 0, g[5], PTE.P | PTE.RW);
    expect(w.mmuextOp([{ cmd: MMUEXT.PIN_L1_TABLE, arg: g[5] }]).rc).toBe(-ERRNO.EBUSY); // it maps itself writable
    expect(hv.pageType(g[5]).count).toBe(0);
  });

  it('pin/unpin life cycle: double pin and unpinning an unpinned frame are -EINVAL; unpinning releases the tree', () => {
    const { hv, f, other, v } = pvDomain();
    expect(v.mmuextOp([{ cmd: MMUEXT.PIN_L4_TABLE, arg: f[0] }]).rc).toBe(0);
    expect(v.mmuextOp([{ cmd: MMUEXT.PIN_L4_TABLE, arg: f[0] }]).rc).toBe(-ERRNO.EINVAL);
    expect(v.mmuextOp([{ cmd: MMUEXT.PIN_L1_TABLE, arg: other[0] }]).rc).toBe(-ERRNO.EINVAL); // not ours
    expect(v.mmuextOp([{ cmd: MMUEXT.UNPIN_TABLE, arg: f[3] }]).rc).toBe(-ERRNO.EINVAL); // typed, not pinned
    expect(v.mmuextOp([{ cmd: MMUEXT.UNPIN_TABLE, arg: f[0] }]).rc).toBe(0);
    for (const x of [f[0], f[1], f[2], f[3]]) expect(hv.pageType(x)).toEqual({ type: PGT.none, count: 0, pinned: false });
    expect(v.mmuextOp([{ cmd: MMUEXT.UNPIN_TABLE, arg: f[0] }]).rc).toBe(-ERRNO.EINVAL);
    // An L1 pinned on its own, then linked: two type references.
    expect(v.mmuextOp([{ cmd: MMUEXT.PIN_L1_TABLE, arg: f[3] }, { cmd: MMUEXT.PIN_L4_TABLE, arg: f[0] }]).rc).toBe(0);
    expect(hv.pageType(f[3])).toEqual({ type: PGT.l1, count: 2, pinned: true });
  });

  it('multicall: one entry for many calls, each with its own result', () => {
    const { f, v, req, U } = pvDomain();
    const rcs = v.multicall([
      { op: 'mmuext_op', ops: [{ cmd: MMUEXT.PIN_L4_TABLE, arg: f[0] }, { cmd: MMUEXT.NEW_BASEPTR, arg: f[0] }] },
      { op: 'mmu_update', reqs: [req(f[3], 0, f[8], U), req(f[3], 1, f[9], U)] },
      { op: 'update_va_mapping', va: 0x2000, ...makePte(f[3], U), flags: UVMF.INVLPG },
      { op: 'update_va_mapping', va: 0x2000, ...makePte(f[10], U), flags: UVMF.TLB_FLUSH },
    ]);
    expect(rcs).toEqual([0, 0, -ERRNO.EBUSY, 0]);
    expect([...v.acct.entries]).toEqual([['hypercall:multicall', 1]]);
    v.store32(0x2000, 7);
    expect(v.load32(0x2000)).toBe(7);
  });
});

describe('TLB consistency', () => {
  for (const paging of ['pv', 'shadow'] as const) {
    it(`${paging}: after invlpg or a new base pointer, every access uses the current tables (property)`, () => {
      fc.assert(fc.property(fc.array(fc.record({ op: fc.constantFrom('remap', 'invlpg', 'switch', 'read'), page: fc.integer({ min: 0, max: 7 }), frame: fc.integer({ min: 0, max: 15 }) }), { minLength: 1, maxLength: 60 }), (ops) => {
        const mode: KernelMode = paging === 'pv' ? 'pv-single' : 'shadow';
        const mem = new ModelMemory();
        const hv = new MmuHypervisor(mem);
        const k = GuestKernel.boot(hv, mem, 1, mode, 512, () => 0);
        const v = k.vcpu;
        const p = k.createProcess();
        k.switchTo(p.l4);
        const data = Array.from({ length: 16 }, (_, i) => {
          const pfn = k.allocPage();
          v.store32(k.kva(pfn), 0xa000 + i);
          return pfn;
        });
        for (let i = 0; i < 8; i++) k.mapUser(p, USER_BASE + i * 4096);
        k.flushUpdates();
        // What each page maps now (the model's truth) and whether the TLB may be stale for it.
        const stale = new Set<number>();
        const current = new Map<number, number>();
        for (const o of ops) {
          const va = USER_BASE + o.page * 4096;
          if (o.op === 'remap') {
            // Through the kernel's pv-op, without a flush: the TLB may now be stale for this page.
            const l1pfn = k.l1Of(p, va)!;
            k.setPte(l1pfn, vaParts(va).l1, data[o.frame], PTE.P | PTE.RW | PTE.US);
            k.flushUpdates();
            current.set(o.page, o.frame);
            stale.add(o.page);
          } else if (o.op === 'invlpg') {
            k.invlpg(va);
            stale.delete(o.page);
          } else if (o.op === 'switch') {
            k.switchTo(p.l4);
            stale.clear();
          } else if (!stale.has(o.page) && current.has(o.page)) {
            expect(v.user(() => v.load32(va))).toBe(0xa000 + current.get(o.page)!);
          }
        }
      }), { numRuns: 40 });
    });
  }

  it('a stale translation is served until invlpg (as on the hardware), and never after', () => {
    const mem = new ModelMemory();
    const hv = new MmuHypervisor(mem);
    const k = GuestKernel.boot(hv, mem, 1, 'pv-batched', 256, () => 0);
    const v = k.vcpu;
    const p = k.createProcess();
    k.switchTo(p.l4);
    k.mapUser(p, USER_BASE);
    k.flushUpdates();
    v.user(() => v.store32(USER_BASE, 1));
    const other = k.allocPage();
    v.store32(k.kva(other), 2);
    const l1pfn = k.l1Of(p, USER_BASE)!;
    k.setPte(l1pfn, vaParts(USER_BASE).l1, other, PTE.P | PTE.RW | PTE.US);
    k.flushUpdates();
    expect(v.user(() => v.load32(USER_BASE))).toBe(1); // stale
    k.invlpg(USER_BASE);
    expect(v.user(() => v.load32(USER_BASE))).toBe(2);
  });
});

describe('the guest kernel under every mode', () => {
  it('the same workload leaves the same guest-visible memory and faults in every mode', () => {
    for (const w of WORKLOADS) {
      const sizes = w === 'address-space' ? { n: 600 } : w === 'syscall' ? { n: 300 } : { n: 40, procs: 3, pages: 8 };
      const rs = KERNEL_MODES.map((m) => runWorkload(m, w, sizes));
      for (const r of rs.slice(1)) expect(r.guestView, `${w}: ${r.mode} vs ${rs[0].mode}`).toEqual(rs[0].guestView);
      if (w === 'address-space') {
        // The two probes: a write to the page made read-only (P|W|U) and a read of an unmapped page (U).
        expect(rs[0].guestView.faults).toEqual([[USER_BASE, PF.P | PF.W | PF.U], [USER_BASE + 616 * 4096, PF.U]]);
      }
    }
  });

  it('PV batched needs at least 10x fewer hypervisor entries than shadow paging to build an address space', () => {
    const b = runWorkload('pv-batched', 'address-space', { n: 2048 });
    const s = runWorkload('shadow', 'address-space', { n: 2048 });
    const one = runWorkload('pv-single', 'address-space', { n: 2048 });
    expect(s.hypervisorEntries / b.hypervisorEntries).toBeGreaterThanOrEqual(10);
    expect(one.entries['hypercall:mmu_update']).toBeGreaterThanOrEqual(2048); // one per PTE
    expect(s.entries['shadow:fill']).toBeGreaterThanOrEqual(2048); // one hidden fault per touched page at least
    expect(b.traps).toBe(0);
  });

  for (const mode of KERNEL_MODES) {
    it(`${mode}: a page fault reaches the kernel's handler with the faulting address; the handler maps the page and the access retries`, () => {
      const mem = new ModelMemory();
      const hv = new MmuHypervisor(mem);
      const k = GuestKernel.boot(hv, mem, 1, mode, 256, () => 0);
      const v = k.vcpu;
      const p = k.createProcess();
      k.switchTo(p.l4);
      const va = USER_BASE + 77 * 4096 + 12;
      k.onPageFault = (fr) => {
        expect(fr.cr2).toBe(va);
        expect(fr.errorCode).toBe(PF.W | PF.U);
        expect(fr.ring).toBe(3);
        expect(v.ring).toBe(1); // the handler runs in the guest kernel
        k.mapUser(p, fr.cr2 - (fr.cr2 % 4096));
        k.flushUpdates();
        return true;
      };
      v.user(() => v.store32(va, 0xfeed));
      expect(v.user(() => v.load32(va))).toBe(0xfeed);
      expect(k.faults).toEqual([[va, PF.W | PF.U]]);
      expect(v.acct.entries.get('fault:page')).toBe(1);
      // A handler that does not fix it: the access fails with the fault.
      k.onPageFault = () => false;
      expect(() => v.user(() => v.load32(USER_BASE + 500 * 4096))).toThrow(GuestPageFault);
      // A user access to a kernel (supervisor) page is a protection fault.
      expect(() => v.user(() => v.load32(DIRECTMAP))).toThrow(GuestPageFault);
      expect(k.faults.at(-1)).toEqual([DIRECTMAP, PF.P | PF.U]);
    });
  }
});

describe('rings, traps and events', () => {
  it('a hypercall or a privileged instruction from ring 3 is a #GP to the guest kernel', () => {
    const mem = new ModelMemory();
    const hv = new MmuHypervisor(mem);
    const k = GuestKernel.boot(hv, mem, 1, 'pv-batched', 128, () => 0);
    const v = k.vcpu;
    const before = hv.pageType(k.mfn(k.kernelL4));
    expect(v.user(() => v.mmuextOp([{ cmd: MMUEXT.UNPIN_TABLE, arg: k.mfn(k.kernelL4) }]))).toEqual({ rc: -ERRNO.EPERM, done: 0 });
    expect(hv.pageType(k.mfn(k.kernelL4))).toEqual(before); // nothing happened
    expect(v.user(() => v.updateVaMapping(0, 0, 0, 0))).toBe(-ERRNO.EPERM);
    v.user(() => v.writeCr3(0));
    v.user(() => v.cli());
    expect(k.gpFaults).toBe(4);
    expect(v.acct.entries.get('trap:gp')).toBe(4);
    expect(v.acct.entries.get('hypercall:mmuext_op')).toBeUndefined();
    expect(v.upcallMask).toBe(false);
  });

  it('system calls: the fast handler enters no hypervisor; without it each call bounces through the hypervisor', () => {
    const pv = runWorkload('pv-batched', 'syscall', { n: 500 });
    const te = runWorkload('trap-emulate', 'syscall', { n: 500 });
    expect(pv.hypervisorEntries).toBe(0);
    expect(pv.fastSyscalls).toBe(500);
    expect(te.entries['trap:syscall']).toBe(500);
    expect(te.hypervisorEntries).toBe(500);
  });

  it('set_trap_table and set_callbacks validate before installing: an address in the reserved range is -EINVAL', () => {
    const mem = new ModelMemory();
    const hv = new MmuHypervisor(mem);
    hv.addDomain(1, 'pv');
    const v = new Vcpu(hv, 1);
    expect(v.setTrapTable([{ vector: 14, dpl: 0, address: HYPERVISOR_VIRT_START, handler: () => 0 }])).toBe(-ERRNO.EINVAL);
    expect(v.setTrapTable([{ vector: 256, dpl: 0, address: 0x1000, handler: () => 0 }])).toBe(-ERRNO.EINVAL);
    expect(v.traps.size).toBe(0);
    expect(v.setCallbacks({ syscall: { address: HYPERVISOR_VIRT_START + 8, handler: () => 1 } })).toBe(-ERRNO.EINVAL);
    v.ring = 3;
    expect(() => v.syscall(1)).toThrow(/vector 13 with no handler/); // no fast handler, no vector 0x80, no #GP handler: Xen crashes the domain
  });

  it('events: held while the upcall mask is set, delivered when it clears (PV: by hypercall; trap-emulate: a trapped sti)', () => {
    for (const mode of ['pv-batched', 'trap-emulate'] as const) {
      const mem = new ModelMemory();
      const hv = new MmuHypervisor(mem);
      const k = GuestKernel.boot(hv, mem, 1, mode, 128, () => 0);
      const v = k.vcpu;
      let got = 0;
      v.setCallbacks({ event: { address: DIRECTMAP + 0x900, handler: () => void got++ } });
      k.resetCounters();
      k.irqDisable();
      v.raiseEvent();
      expect(got).toBe(0);
      expect(v.upcallPending).toBe(true);
      k.irqEnable();
      expect(got).toBe(1);
      expect(v.upcallPending).toBe(false);
      v.raiseEvent();
      expect(got).toBe(2); // unmasked: at once
      const e = Object.fromEntries(v.acct.entries);
      expect(e).toEqual(mode === 'pv-batched' ? { 'hypercall:xen_version': 1 } : { 'trap:cli': 1, 'trap:sti': 1 });
    }
  });
});

describe('shadow paging', () => {
  it('propagates accessed and dirty bits to the guest\'s PTEs; traps writes to shadowed tables', () => {
    const mem = new ModelMemory();
    const hv = new MmuHypervisor(mem);
    const k = GuestKernel.boot(hv, mem, 1, 'shadow', 256, () => 0);
    const v = k.vcpu;
    const p = k.createProcess();
    k.switchTo(p.l4);
    const page = k.mapUser(p, USER_BASE);
    const l1 = k.l1Of(p, USER_BASE)!;
    const pte = () => mem.words(k.mfn(l1))[2 * vaParts(USER_BASE).l1];
    expect(pte() & (PTE.A | PTE.D)).toBe(0);
    k.resetCounters();
    v.user(() => v.load32(USER_BASE));
    expect(pte() & (PTE.A | PTE.D)).toBe(PTE.A);
    v.user(() => v.store32(USER_BASE, 5));
    expect(pte() & (PTE.A | PTE.D)).toBe(PTE.A | PTE.D);
    expect(Object.fromEntries(v.acct.entries)).toEqual({ 'shadow:fill': 1, 'shadow:dirty': 1 }); // one fill builds the whole path (and shadows the L1)
    // The L1 is now a shadowed table: the kernel's next write to it traps and is emulated.
    k.setPte(l1, 1, page, PTE.P | PTE.US);
    expect(v.acct.entries.get('shadow:write')).toBe(1);
    expect(mem.words(k.mfn(l1))[2]).toBe(makePte(page, PTE.P | PTE.US).lo);
    // Every shadow table is the hypervisor's frame, never the guest's.
    for (const s of hv.shadowFrames(1)) expect(mem.owner(s)).toBe(0x7ff2);
  });

  it('a guest L4 entry in the reserved range is a reserved-bit fault, never a mapping', () => {
    const mem = new ModelMemory();
    const hv = new MmuHypervisor(mem);
    const k = GuestKernel.boot(hv, mem, 1, 'shadow', 256, () => 0);
    const v = k.vcpu;
    const t = k.allocPage();
    k.setPte(k.kernelL4, 256, t, PTE.P | PTE.RW);
    expect(() => v.load32(HYPERVISOR_VIRT_START)).toThrow(GuestPageFault);
    expect(k.faults.at(-1)).toEqual([HYPERVISOR_VIRT_START, PF.P | PF.RSVD]);
  });
});

describe('accounting', () => {
  it('modelled cycles are the counts times the costs; costs can be overridden by name', () => {
    const a = new Accounting();
    a.enter('hypercall:mmu_update');
    a.enter('shadow:fill');
    a.validatedPtes = 10;
    a.tlbFlushes = 2;
    a.tlbMisses = 3;
    a.fastSyscalls = 4;
    a.emulations = 1;
    const c = DEFAULT_COSTS;
    expect(a.hypervisorEntries).toBe(2);
    expect(a.traps).toBe(1);
    expect(a.modelledCycles()).toBe(2 * c.entry + 10 * c.validatePte + 2 * c.tlbFlush + 3 * c.tlbMiss + 4 * c.syscall + c.emulate);
    expect(parseCosts(['entry=1500']).entry).toBe(1500);
    expect(() => parseCosts(['bogus=1'])).toThrow(/bad cost 'bogus=1'/);
  });
});
