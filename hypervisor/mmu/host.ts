/**
 * The CPU/MMU model hosted in the hypervisor thread (DESIGN.md, "The CPU/MMU
 * model"): an {@link MmuHypervisor} over the hypervisor's own frame table, serving the
 * model's calls that domains' vCPUs make through their hypercall pages (encoding in
 * hypervisor/mmu/wire.ts). For each vCPU the host keeps what the hypervisor knows of
 * it — the base pointer, the table the hardware walks, and the accounting of every
 * entry by reason — and answers each call with the effect on the vCPU (TLB flushes,
 * invalidations) that the vCPU's worker applies to its TLB.
 *
 * Shadow tables are frames owned by `DOMID_XEN`, shared with the domain they shadow
 * for, since the domain's vCPU plays the hardware that walks them; they appear in the
 * handle log with reason `shadow table`.
 *
 * @see xen/arch/x86/mm.c, xen/arch/x86/mm/shadow/multi.c
 */
import { Accounting } from './accounting.ts';
import { HYPERVISOR, XEN_ERRNO as ERRNO } from '../abi.ts';
import type { MmuMemory } from './memory.ts';
import { MmuHypervisor, type MmuUpdateReq, type MmuextOp, type MulticallEntry, type VcpuState } from './mmu-hypervisor.ts';
import { PhysMap } from './pagetable.ts';
import {
  HYPERVISOR_PVIO_MMU, INSNS, MAX_REASONS, MAX_REPLY_VAS, MC_HEADER_BYTES, MMUEXT_OP_BYTES, MMU_UPDATE_BYTES, OUTCOME, PVIO_MMU,
  REASONS, REPLY, REPLY_RESULT_WORD, REPLY_VA_WORD, UVM_BYTES, getU64, setU64,
} from './wire.ts';

/**
 * Bytes of a model call's arguments in the hypercall page: the extent holding the
 * real arguments (u64 MFN, u32 length; see {@link MmuHost.serve}), or SETUP's mode.
 */
export const MMU_PAGE_ARGS_BYTES = 16;

/** Hypercall numbers the host serves. */
export const MMU_HYPERCALLS: ReadonlySet<number> = new Set([
  HYPERVISOR.mmu_update, HYPERVISOR.multicall, HYPERVISOR.update_va_mapping, HYPERVISOR.mmuext_op, HYPERVISOR_PVIO_MMU,
]);

/** A live frame of the hypervisor's frame table, as the host needs it. */
export interface HostFrame {
  readonly owner: number;
  readonly buffer: SharedArrayBuffer | null;
  readonly pageIndex: number;
}

/** What the host needs of the hypervisor. */
export interface HostBackend {
  /** A live frame, or undefined. */
  frame(mfn: number): HostFrame | undefined;
  /** Allocates a zeroed frame owned by DOMID_XEN and shared with `domid`, and has its handle posted to `domid`'s calling vCPU. @returns its MFN. */
  allocShared(domid: number, reason: string): number;
  /** Whether `domid` holds a grant mapping of `mfn` (writable or not). */
  grantMapped?(domid: number, mfn: number, writable: boolean): boolean;
  /** The hypervisor's P2M/M2P. */
  readonly phys: PhysMap;
}

/** The hypervisor's knowledge of one vCPU, and what happened to its TLB during a call. */
class HostVcpu implements VcpuState {
  readonly acct = new Accounting();
  cr3 = -1;
  hwCr3 = -1;
  flushes = 0;
  readonly invlpgs: number[] = [];
  constructor(readonly domid: number, readonly id: number) {}
  flushTlb(): void {
    this.flushes++;
  }
  invlpgTlb(va: number): void {
    this.invlpgs.push(va);
  }
}

/**
 * {@link MmuMemory} over the hypervisor's frame table. Views are made per call, not
 * cached: a cache would keep the buffers of freed frames alive, which the frame table
 * drops (DESIGN.md, decision 1).
 */
class FrameTableMemory implements MmuMemory {
  constructor(private readonly b: HostBackend) {}
  get phys(): PhysMap {
    return this.b.phys;
  }
  private live(mfn: number): HostFrame & { buffer: SharedArrayBuffer } {
    const f = this.b.frame(mfn);
    if (!f || !f.buffer) throw new RangeError(`no frame ${mfn}`);
    return f as HostFrame & { buffer: SharedArrayBuffer };
  }
  words(mfn: number): Uint32Array {
    const f = this.live(mfn);
    return new Uint32Array(f.buffer, f.pageIndex * 4096, 1024);
  }
  bytes(mfn: number): Uint8Array {
    const f = this.live(mfn);
    return new Uint8Array(f.buffer, f.pageIndex * 4096, 4096);
  }
  exists(mfn: number): boolean {
    return this.b.frame(mfn)?.buffer != null;
  }
  owns(domid: number, mfn: number): boolean {
    return this.b.frame(mfn)?.owner === domid;
  }
  mayMap(domid: number, mfn: number, writable: boolean): boolean {
    return this.owns(domid, mfn) || (this.b.grantMapped?.(domid, mfn, writable) ?? false);
  }
  allocShadow(domid: number): number {
    return this.b.allocShared(domid, 'shadow table');
  }
}

/** The model's hypervisor in the hypervisor thread. */
export class MmuHost {
  readonly hv: MmuHypervisor;
  private readonly vcpus = new Map<string, HostVcpu>();
  /** Accounting of every domain's entries (all its vCPUs). */
  private readonly perDomain = new Map<number, Accounting>();

  constructor(private readonly backend: HostBackend) {
    this.hv = new MmuHypervisor(new FrameTableMemory(backend));
  }

  private vcpu(domid: number, id: number): HostVcpu | undefined {
    return this.vcpus.get(`${domid}:${id}`);
  }

  /**
   * Serves one call of vCPU `vcpuId` of `domid`: `op` and `cmd` from the page header,
   * `count` items, the arguments in `args` (a private copy), the answer block written
   * into `reply` (the page's argument area).
   * @returns the hypercall's return value (0, a count, or a negative errno).
   * @throws RangeError for arguments past the page (the caller turns it into -EFAULT).
   */
  serve(domid: number, vcpuId: number, op: number, cmd: number, count: number, args: DataView, reply: DataView): number {
    if (op === HYPERVISOR_PVIO_MMU && cmd === PVIO_MMU.SETUP) {
      const paging = args.getUint32(0, true);
      if (paging > 1) return -ERRNO.EINVAL;
      if (this.vcpu(domid, vcpuId)) return -ERRNO.EINVAL; // set once
      try {
        this.hv.addDomain(domid, paging === 0 ? 'pv' : 'shadow');
      } catch {
        // another vCPU of the domain set it up already: same domain, a new vCPU
      }
      const v = new HostVcpu(domid, vcpuId);
      this.hv.addVcpu(v);
      this.vcpus.set(`${domid}:${vcpuId}`, v);
      if (!this.perDomain.has(domid)) this.perDomain.set(domid, new Accounting());
      return 0;
    }
    const v = this.vcpu(domid, vcpuId);
    if (!v) return -ERRNO.EINVAL; // no SETUP yet
    if (op === HYPERVISOR_PVIO_MMU && cmd === PVIO_MMU.STATS) {
      const json = new TextEncoder().encode(JSON.stringify(this.perDomain.get(domid)!.toJSON()));
      if (json.length > reply.byteLength) return -ERRNO.EINVAL;
      new Uint8Array(reply.buffer, reply.byteOffset, json.length).set(json);
      return json.length;
    }
    // The arguments are in the caller's memory (an extent it owns): copied once, then read.
    const fetched = this.copyFromGuest(domid, getU64(args, 0), args.getUint32(8, true));
    if (typeof fetched === 'number') return fetched;
    args = fetched;
    v.acct.reset();
    v.flushes = 0;
    v.invlpgs.length = 0;
    let rc = 0;
    let done = 0;
    let outcome: number = OUTCOME.RETRY;
    let reflect = 0;
    const results: number[] = [];
    switch (op) {
      case HYPERVISOR.mmu_update: {
        const r = this.hv.mmuUpdate(v, readUpdates(args, 0, count));
        rc = r.rc;
        done = r.done;
        break;
      }
      case HYPERVISOR.mmuext_op: {
        const r = this.hv.mmuextOp(v, readExtOps(args, 0, count));
        rc = r.rc;
        done = r.done;
        break;
      }
      case HYPERVISOR.update_va_mapping:
        rc = this.hv.updateVaMapping(v, getU64(args, 0), args.getUint32(8, true), args.getUint32(12, true), getU64(args, 16));
        break;
      case HYPERVISOR.multicall: {
        const calls: MulticallEntry[] = [];
        let off = 0;
        for (let i = 0; i < count; i++) {
          const callOp = args.getUint32(off, true);
          const n = args.getUint32(off + 4, true);
          off += MC_HEADER_BYTES;
          if (callOp === HYPERVISOR.mmu_update) {
            calls.push({ op: 'mmu_update', reqs: readUpdates(args, off, n) });
            off += n * MMU_UPDATE_BYTES;
          } else if (callOp === HYPERVISOR.mmuext_op) {
            calls.push({ op: 'mmuext_op', ops: readExtOps(args, off, n) });
            off += n * MMUEXT_OP_BYTES;
          } else if (callOp === HYPERVISOR.update_va_mapping) {
            calls.push({ op: 'update_va_mapping', va: getU64(args, off), lo: args.getUint32(off + 8, true), hi: args.getUint32(off + 12, true), flags: getU64(args, off + 16) });
            off += UVM_BYTES;
          } else return -ERRNO.ENOSYS;
        }
        if (calls.length > REPLY_VA_WORD - REPLY_RESULT_WORD) return -ERRNO.EINVAL;
        results.push(...this.hv.multicall(v, calls));
        done = calls.length;
        break;
      }
      case HYPERVISOR_PVIO_MMU:
        switch (cmd) {
          case PVIO_MMU.PAGE_FAULT: {
            const va = getU64(args, 0);
            const access = args.getUint32(8, true);
            const errorCode = args.getUint32(12, true);
            const len = args.getUint32(16, true);
            if (20 + len > args.byteLength) return -ERRNO.EFAULT;
            const data = len > 0 ? new Uint8Array(args.buffer, args.byteOffset + 20, len).slice() : undefined;
            const r = this.hv.pageFault(v, va, { write: (access & 1) !== 0, user: (access & 2) !== 0 }, errorCode, data);
            if (r === 'retry') outcome = OUTCOME.RETRY;
            else if (r === 'emulated') outcome = OUTCOME.EMULATED;
            else {
              outcome = OUTCOME.REFLECT;
              reflect = r.reflect;
            }
            break;
          }
          case PVIO_MMU.PRIVILEGED: {
            const insn = INSNS[args.getUint32(0, true)];
            if (!insn) return -ERRNO.EINVAL;
            rc = this.hv.privileged(v, insn, getU64(args, 8));
            break;
          }
          case PVIO_MMU.TRAP: {
            const kind = args.getUint32(0, true);
            if (kind > 1) return -ERRNO.EINVAL;
            this.hv.trap(v, kind === 0 ? 'gp' : 'syscall');
            break;
          }
          case PVIO_MMU.ENTER:
            this.hv.enterHypercall(v, args.getUint32(0, true));
            break;
          default:
            return -ERRNO.ENOSYS;
        }
        break;
      default:
        return -ERRNO.ENOSYS;
    }
    this.writeReply(v, reply, done, outcome, reflect, results);
    return rc;
  }

  private readonly argCopy = new Uint8Array(65536);

  /**
   * Copies `len` bytes of arguments from the start of `domid`'s extent at `mfn`
   * (Xen's copy_from_guest). @returns a view of the copy, or -EFAULT for memory that
   * is not the caller's or too short.
   */
  private copyFromGuest(domid: number, mfn: number, len: number): DataView | number {
    const f = this.backend.frame(mfn);
    if (!f || !f.buffer || f.owner !== domid || f.pageIndex !== 0 || len > f.buffer.byteLength || len > this.argCopy.length) return -ERRNO.EFAULT;
    this.argCopy.set(new Uint8Array(f.buffer, 0, len));
    return new DataView(this.argCopy.buffer, 0, len);
  }

  /** The accounting of `domid`'s entries (all vCPUs), as JSON-ready numbers. */
  stats(domid: number): Record<string, unknown> | undefined {
    return this.perDomain.get(domid)?.toJSON();
  }

  /** Forgets a destroyed domain's vCPUs (its shadow frames go with its other hypervisor frames). */
  forgetDomain(domid: number): void {
    for (const k of [...this.vcpus.keys()]) if (k.startsWith(`${domid}:`)) this.vcpus.delete(k);
  }

  /** Writes the answer block: the call's effect on the vCPU and its accounting (`v.acct`, zeroed when the call began). */
  private writeReply(v: HostVcpu, reply: DataView, done: number, outcome: number, reflect: number, results: number[]): void {
    const a = v.acct;
    const w = (i: number, x: number) => reply.setUint32(i * 4, x >>> 0, true);
    w(REPLY.DONE, done);
    w(REPLY.OUTCOME, outcome);
    w(REPLY.REFLECT, reflect);
    setU64(reply, REPLY.CR3_LO * 4, v.cr3 < 0 ? 2 ** 53 - 1 : v.cr3);
    setU64(reply, REPLY.HWCR3_LO * 4, v.hwCr3 < 0 ? 2 ** 53 - 1 : v.hwCr3);
    const tooMany = v.invlpgs.length > MAX_REPLY_VAS;
    w(REPLY.FLUSHES, v.flushes + (tooMany ? 1 : 0));
    w(REPLY.INVLPGS, tooMany ? 0 : v.invlpgs.length);
    if (!tooMany) v.invlpgs.forEach((va, i) => setU64(reply, (REPLY_VA_WORD + 2 * i) * 4, va));
    w(REPLY.VALIDATED, a.validatedPtes);
    w(REPLY.EMULATIONS, a.emulations);
    const reasons: number[] = [];
    for (const [k, n] of a.entries) for (let i = 0; i < n; i++) reasons.push(REASONS.indexOf(k as (typeof REASONS)[number]));
    if (reasons.length > MAX_REASONS || reasons.some((r) => r < 0)) throw new Error(`an entry with reasons ${reasons.join(',')}`);
    w(REPLY.NREASONS, reasons.length);
    reasons.forEach((r, i) => w(REPLY.REASON0 + i, r));
    results.forEach((r, i) => reply.setInt32((REPLY_RESULT_WORD + i) * 4, r, true));
    this.perDomain.get(v.domid)!.add(a);
  }
}

function readUpdates(dv: DataView, off: number, n: number): MmuUpdateReq[] {
  const out: MmuUpdateReq[] = [];
  for (let i = 0; i < n; i++) {
    const o = off + i * MMU_UPDATE_BYTES;
    out.push({ ptr: getU64(dv, o), lo: dv.getUint32(o + 8, true), hi: dv.getUint32(o + 12, true) });
  }
  return out;
}

function readExtOps(dv: DataView, off: number, n: number): MmuextOp[] {
  const out: MmuextOp[] = [];
  for (let i = 0; i < n; i++) {
    const o = off + i * MMUEXT_OP_BYTES;
    out.push({ cmd: dv.getUint32(o, true), arg: getU64(dv, o + 8) });
  }
  return out;
}

