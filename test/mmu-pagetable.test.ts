// The CPU/MMU model's page tables (hypervisor/mmu/pagetable.ts): PTEs as two 32-bit
// halves round-trip every frame and flag; a 4-level walk over tables built in a frame
// pool translates every mapped page of a random address space and faults with
// Intel's error code elsewhere (not present; write to read-only; user to supervisor;
// fetch from NX; a PS bit, which the model does not support), setting A on every level
// and D on the leaf of a write; the software TLB serves hits, keeps a stale
// translation until invlpg or a flush (as the hardware does), and never after; P2M/M2P
// keep one owner per frame; the reserved range is Xen's.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START, MAX_PTE_FRAME, PF, PTE, PT_ENTRIES, PhysMap, SoftTlb, isReserved, makePte, pteFrame,
  vaParts, walk, type FrameWords,
} from '../hypervisor/mmu/pagetable.ts';

/** Frames in a Map, each 4 KiB of a SharedArrayBuffer; a builder that maps 4 KiB pages. */
function pool() {
  const frames = new Map<number, Uint32Array>();
  let next = 100;
  const alloc = () => {
    const mfn = next++;
    frames.set(mfn, new Uint32Array(new SharedArrayBuffer(4096)));
    return mfn;
  };
  const words: FrameWords = (mfn) => {
    const w = frames.get(mfn);
    if (!w) throw new Error(`no frame ${mfn}`);
    return w;
  };
  const cr3 = alloc();
  const setEntry = (table: number, i: number, frame: number, flags: number, nx = false) => {
    const { lo, hi } = makePte(frame, flags, nx);
    words(table)[2 * i] = lo;
    words(table)[2 * i + 1] = hi;
  };
  /** Maps the page of `va` to `frame` with `flags` (upper levels: P|RW|US, made as needed). */
  const map = (va: number, frame: number, flags: number, nx = false) => {
    const p = vaParts(va);
    let t = cr3;
    for (const i of [p.l4, p.l3, p.l2]) {
      const w = words(t);
      if (!(w[2 * i] & PTE.P)) setEntry(t, i, alloc(), PTE.P | PTE.RW | PTE.US);
      t = pteFrame(w[2 * i], w[2 * i + 1]);
    }
    setEntry(t, p.l1, frame, flags, nx);
    return { l1: t, index: p.l1 };
  };
  return { words, cr3, map, alloc };
}

const PAGE_VA = fc.integer({ min: 0, max: 2 ** 36 - 1 }).map((n) => n * 4096); // 48-bit, page aligned

describe('PTEs', () => {
  it('round-trip every frame number and flag set through the two halves', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: MAX_PTE_FRAME }), fc.integer({ min: 0, max: 0x1ff }), fc.boolean(), (frame, flags, nx) => {
      const { lo, hi } = makePte(frame, flags, nx);
      expect(pteFrame(lo, hi)).toBe(frame);
      expect(lo & 0x1ff).toBe(flags);
      expect((hi >>> 31) === 1).toBe(nx);
    }));
    expect(() => makePte(2 ** 40, PTE.P)).toThrow(RangeError);
  });
});

describe('the walk', () => {
  it('translates every mapped page of a random address space and faults (not present) elsewhere', () => {
    fc.assert(fc.property(fc.uniqueArray(PAGE_VA, { minLength: 1, maxLength: 40 }), fc.integer({ min: 0, max: 4095 }), PAGE_VA, (vas, off, probe) => {
      const pt = pool();
      const want = new Map<number, number>();
      vas.forEach((va, i) => {
        pt.map(va, 5000 + i, PTE.P | PTE.RW | PTE.US);
        want.set(va, 5000 + i);
      });
      for (const [va, frame] of want) {
        const t = walk(pt.words, pt.cr3, va + off, { write: false, user: true });
        expect(t).toMatchObject({ fault: false, mfn: frame, pa: frame * 4096 + off });
      }
      if (!want.has(probe)) {
        const f = walk(pt.words, pt.cr3, probe + off, { write: true, user: false });
        expect(f).toMatchObject({ fault: true, va: probe + off, errorCode: PF.W });
      }
    }), { numRuns: 60 });
  });

  it('checks permissions at every level, with Intel\'s error codes', () => {
    const pt = pool();
    pt.map(0x1000, 7, PTE.P | PTE.US); // read-only user page
    pt.map(0x2000, 8, PTE.P | PTE.RW); // supervisor page
    pt.map(0x3000, 9, PTE.P | PTE.RW | PTE.US, true); // NX
    expect(walk(pt.words, pt.cr3, 0x1000, { write: true, user: true })).toMatchObject({ fault: true, errorCode: PF.P | PF.W | PF.U, level: 1 });
    expect(walk(pt.words, pt.cr3, 0x1000, { write: false, user: true })).toMatchObject({ fault: false, mfn: 7 });
    expect(walk(pt.words, pt.cr3, 0x2000, { write: false, user: true })).toMatchObject({ fault: true, errorCode: PF.P | PF.U });
    expect(walk(pt.words, pt.cr3, 0x2000, { write: true, user: false })).toMatchObject({ fault: false, mfn: 8 });
    expect(walk(pt.words, pt.cr3, 0x3000, { write: false, user: true, fetch: true })).toMatchObject({ fault: true, errorCode: PF.P | PF.U | PF.I });
    expect(walk(pt.words, pt.cr3, 0x3000, { write: false, user: true })).toMatchObject({ fault: false, mfn: 9 });
    // An upper level without RW makes the whole range read-only.
    const { l1 } = pt.map(0x40_0000_0000, 10, PTE.P | PTE.RW | PTE.US);
    const l4 = pt.words(pt.cr3);
    const i = vaParts(0x40_0000_0000).l4;
    l4[2 * i] &= ~PTE.RW;
    expect(walk(pt.words, pt.cr3, 0x40_0000_0000, { write: true, user: false })).toMatchObject({ fault: true, errorCode: PF.P | PF.W, level: 4 });
    // A PS bit (a large page) is a reserved-bit fault here.
    pt.words(pt.cr3)[2 * i] |= PTE.PS;
    expect(walk(pt.words, pt.cr3, 0x40_0000_0000, { write: false, user: false })).toMatchObject({ fault: true, errorCode: PF.P | PF.RSVD, level: 4 });
    void l1;
    expect(() => walk(pt.words, pt.cr3, 2 ** 48, { write: false, user: false })).toThrow(RangeError);
  });

  it('sets A on every level it uses and D on the leaf of a write only', () => {
    const pt = pool();
    const { l1, index } = pt.map(0x1234_5000, 77, PTE.P | PTE.RW | PTE.US);
    walk(pt.words, pt.cr3, 0x1234_5678, { write: false, user: false });
    expect(pt.words(l1)[2 * index] & (PTE.A | PTE.D)).toBe(PTE.A);
    const l4e = pt.words(pt.cr3)[2 * vaParts(0x1234_5000).l4];
    expect(l4e & PTE.A).toBe(PTE.A);
    walk(pt.words, pt.cr3, 0x1234_5678, { write: true, user: false });
    expect(pt.words(l1)[2 * index] & (PTE.A | PTE.D)).toBe(PTE.A | PTE.D);
  });
});

describe('the software TLB', () => {
  it('hits after a miss, keeps a stale translation until invlpg or a flush, and none after', () => {
    const pt = pool();
    const tlb = new SoftTlb();
    const { l1, index } = pt.map(0x5000, 40, PTE.P | PTE.RW | PTE.US);
    const r = { write: false, user: true };
    expect(tlb.translate(pt.words, pt.cr3, 0x5010, r)).toMatchObject({ mfn: 40 });
    expect(tlb.translate(pt.words, pt.cr3, 0x5020, r)).toMatchObject({ mfn: 40 });
    expect(tlb.counters).toMatchObject({ hits: 1, misses: 1 });
    // The guest remaps the page: until it flushes, the old translation is still used.
    const { lo, hi } = makePte(41, PTE.P | PTE.RW | PTE.US);
    pt.words(l1)[2 * index] = lo;
    pt.words(l1)[2 * index + 1] = hi;
    expect(tlb.translate(pt.words, pt.cr3, 0x5000, r)).toMatchObject({ mfn: 40 });
    tlb.invlpg(0x5fff);
    expect(tlb.translate(pt.words, pt.cr3, 0x5000, r)).toMatchObject({ mfn: 41 });
    // Unmapped, then flushed: a fault, never the old frame.
    pt.words(l1)[2 * index] = 0;
    tlb.flush();
    expect(tlb.translate(pt.words, pt.cr3, 0x5000, r)).toMatchObject({ fault: true, errorCode: PF.U });
    // A write through a clean cached entry walks once to set D.
    pt.map(0x6000, 42, PTE.P | PTE.RW | PTE.US);
    tlb.translate(pt.words, pt.cr3, 0x6000, r);
    const misses = tlb.counters.misses;
    tlb.translate(pt.words, pt.cr3, 0x6000, { write: true, user: true });
    expect(tlb.counters.misses).toBe(misses + 1);
    tlb.translate(pt.words, pt.cr3, 0x6008, { write: true, user: true });
    expect(tlb.counters.misses).toBe(misses + 1);
  });

  it('after a random sequence of remaps, each followed by invlpg, every translation is the current one', () => {
    fc.assert(fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 7 }), fc.integer({ min: 1000, max: 2000 })), { maxLength: 60 }), (ops) => {
      const pt = pool();
      const tlb = new SoftTlb();
      const now = new Map<number, number>();
      for (const [slot, frame] of ops) {
        const va = 0x10_0000 + slot * 4096;
        pt.map(va, frame, PTE.P | PTE.RW | PTE.US);
        tlb.invlpg(va);
        now.set(va, frame);
        for (const [v, f] of now) expect(tlb.translate(pt.words, pt.cr3, v, { write: slot % 2 === 0, user: true })).toMatchObject({ mfn: f });
      }
    }), { numRuns: 60 });
  });
});

describe('P2M, M2P and the reserved range', () => {
  it('one owner per machine frame; a frame given back is forgotten both ways', () => {
    const pm = new PhysMap();
    pm.set(1, 0, 500);
    pm.set(1, 1, 501);
    expect(pm.mfnOf(1, 1)).toBe(501);
    expect(pm.pfnOf(500)).toEqual({ domid: 1, pfn: 0 });
    expect(pm.owns(1, 500)).toBe(true);
    expect(pm.owns(2, 500)).toBe(false);
    expect(() => pm.set(2, 0, 500)).toThrow(/already belongs to dom1/);
    expect(pm.clear(1, 0)).toBe(500);
    expect(pm.pfnOf(500)).toBeUndefined();
    pm.set(2, 0, 500);
    expect(pm.owns(2, 500)).toBe(true);
  });

  it('is Xen x86-64\'s HYPERVISOR_VIRT_START … END (L4 slots 256–271)', () => {
    expect(vaParts(HYPERVISOR_VIRT_START).l4).toBe(256);
    expect(vaParts(HYPERVISOR_VIRT_END - 1).l4).toBe(271);
    expect(isReserved(HYPERVISOR_VIRT_START)).toBe(true);
    expect(isReserved(HYPERVISOR_VIRT_START - 1)).toBe(false);
    expect(isReserved(HYPERVISOR_VIRT_END)).toBe(false);
    expect(PT_ENTRIES).toBe(512);
  });
});
