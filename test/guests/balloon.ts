/**
 * Test guest for test/balloon.test.ts: serves memory operations on its control port
 * (the P2M/M2P reads, populate_physmap, raw memory_op calls with chosen arguments,
 * its balloon driver) and runs until told to `exit`. With `balloon` in its command
 * line (`extra`) or `args.balloon`, it starts its balloon driver at boot.
 */
import type { Kernel } from '../../hypervisor/kernel.ts';
import { MemoryOpError, type GuestPage } from '../../hypervisor/guest-memory.ts';
import { HypercallPort } from '../../hypervisor/hypercall.ts';
import { DOMID_SELF, HYPERVISOR, XEN_MEMORY_RESERVATION, XEN_TRANSLATE_GPFN_LIST } from '../../hypervisor/abi.ts';
import { writeU64 } from '../../rings/layout.ts';
import { serveCalls } from '../../toolstack/guest-calls.ts';

type Args = Record<string, any>;

export default async function main(k: Kernel): Promise<unknown> {
  const held = new Map<number, GuestPage>();
  const hold = (pages: GuestPage[]) => pages.map((p) => (held.set(p.mfn, p), p.mfn));
  let finish!: (v: unknown) => void;
  const done = new Promise<unknown>((r) => (finish = r));
  /** Runs `fn`; a MemoryOpError becomes `{ errno }`. */
  const memop = <T>(fn: () => T): T | { errno: number } => {
    try {
      return fn();
    } catch (e) {
      if (e instanceof MemoryOpError) return { errno: e.errno };
      throw e;
    }
  };
  const ops: Record<string, (a: Args) => unknown> = {
    info: () => ({ domid: k.domid, current: k.memory.currentReservation(), max: k.memory.maximumReservation(), free: k.memory.freePageCount }),
    /** Allocates `n` pages and frees them again: they stay on the free list. */
    allocFree: (a) => {
      const pages = k.memory.allocPages(a.n);
      for (const p of pages) k.memory.freePage(p);
      return pages.map((p) => p.mfn);
    },
    obtain: (a) => hold(k.memory.obtainPages(a.n)),
    /** Takes every page off the free list and keeps it (in use: the balloon cannot give it back). */
    hoard: () => hold(k.memory.takeFreePages(k.memory.freePageCount)),
    populate: (a) => memop(() => hold(k.memory.populatePages(a.pfns))),
    populateOrder: (a) => memop(() => k.memory.populatePhysmap(a.pfns, a.order)),
    release: (a) => k.memory.releasePages(a.mfns.map((m: number) => held.get(m)!)),
    p2m: (a) => k.memory.pfnsToMfns(a.pfns),
    m2p: (a) => k.memory.mfnsToPfns(a.mfns),
    /** Writes `text` into a held page and reads it back through the page's view. */
    touch: (a) => {
      const p = held.get(a.mfn)!;
      p.bytes.set(new TextEncoder().encode(a.text));
      return new TextDecoder().decode(p.bytes.subarray(0, a.text.length));
    },
    /** A reservation call with chosen header fields and list (u64 entries). @returns Xen's result. */
    rawReservation: (a) => {
      const R = XEN_MEMORY_RESERVATION.fields;
      const p = k.hypercall.page;
      const o = HypercallPort.argOffset(0, 1);
      writeU64(p, o + R.extent_start.offset, 0);
      p.setUint32(o + R.nr_extents.offset, a.nr, true);
      p.setUint32(o + R.nr_extents.offset + 4, a.nrHi ?? 0, true);
      p.setUint32(o + R.extent_order.offset, a.order ?? 0, true);
      p.setUint32(o + R.mem_flags.offset, 0, true);
      p.setUint16(o + R.domid.offset, a.domid ?? DOMID_SELF, true);
      for (const [i, x] of (a.list ?? []).entries()) {
        p.setUint32(o + XEN_MEMORY_RESERVATION.size + i * 8, x[0], true);
        p.setUint32(o + XEN_MEMORY_RESERVATION.size + i * 8 + 4, x[1], true);
      }
      return k.hypercall.call(HYPERVISOR.memory_op, a.cmd, 1).result;
    },
    /** A translate call (`XENMEM_translate_gpfn_list` or `_pvio_machphys_lookup`) with chosen domid and count. */
    rawTranslate: (a) => {
      const T = XEN_TRANSLATE_GPFN_LIST.fields;
      const p = k.hypercall.page;
      const o = HypercallPort.argOffset(0, 1);
      p.setUint16(o + T.domid.offset, a.domid ?? DOMID_SELF, true);
      writeU64(p, o + T.nr_gpfns.offset, a.nr);
      return k.hypercall.call(HYPERVISOR.memory_op, a.cmd, 1).result;
    },
    /** Tries to write our own memory/target (dom0 owns memory/: EACCES expected). */
    writeTarget: async (a) => {
      try {
        await k.xenbus.write(`/local/domain/${k.domid}/memory/target`, a.value);
        return 'written';
      } catch (e) {
        return (e as { errno?: string }).errno ?? String(e);
      }
    },
    balloonStart: () => k.balloon.start(),
    balloonStatus: () => k.balloon.status(),
    exit: () => finish(null),
  };
  serveCalls(k.control!, ops);
  if (k.extra?.includes('balloon') || (k.args as Args | null)?.balloon) await k.balloon.start();
  return done;
}
