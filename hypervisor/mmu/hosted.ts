/**
 * The guest side of the CPU/MMU model hosted in the hypervisor thread: an
 * {@link MmuPort} that turns each of a vCPU's entries into a real synchronous
 * hypercall through its hypercall page (encoding in hypervisor/mmu/wire.ts), and
 * applies the answer to the vCPU: its base pointer, the table its walks use, TLB
 * flushes and invalidations, and the accounting of the entry. The vCPU's walks read
 * frames through the domain's frame handles (its own frames, and the shadow tables
 * the hypervisor shares with it).
 *
 * @see hypervisor/mmu/host.ts (the other side)
 */
import type { BatchResult, FaultOutcome, MmuPort, MmuUpdateReq, MmuextOp, MulticallEntry, PrivilegedInsn, VcpuState } from './mmu-hypervisor.ts';
import type { Access } from './pagetable.ts';
import { HYPERVISOR, XEN_ERRNO } from '../abi.ts';
import { GuestKernel, type KernelMode } from './guest-kernel.ts';
import type { SyscallHandler } from './vcpu.ts';
import {
  HYPERVISOR_PVIO_MMU, INSNS, MC_HEADER_BYTES, MMUEXT_OP_BYTES, MMU_UPDATE_BYTES, OUTCOME, PVIO_MMU, REASONS, REPLY, REPLY_RESULT_WORD,
  REPLY_VA_WORD, UVM_BYTES, getU64, setU64,
} from './wire.ts';

/** What the hosted port needs of the domain's hypercall machinery (a {@link HypercallPort} has it). */
export interface HypercallChannel {
  /** The vCPU's hypercall page (header and argument area). */
  readonly page: DataView;
  /** Issues a call whose arguments are in the page. @returns Xen's return value. */
  call(op: number, cmd: number, count: number): { result: number };
  /** The domain's frame handles: a frame's 4096 bytes. @throws RangeError for a frame it holds no handle to. */
  readonly frames: { page(mfn: number): Uint8Array };
}

/** Byte offset of the argument area in the hypercall page. */
const ARGS = 64;
/** The argument buffer: 2^4 pages (64 KiB), room for 4096 mmu_update requests. */
const ARG_ORDER = 4;

/** Thrown when the hypervisor refuses a call the model cannot go on without (SETUP, a bad encoding). */
export class HostedMmuError extends Error {}

/** An {@link MmuPort} over hypercalls to the model hosted in the hypervisor thread. */
export class HostedMmu implements MmuPort {
  private readonly words32 = new Map<number, Uint32Array>();
  private readonly bytes8 = new Map<number, Uint8Array>();
  private readonly page: DataView;

  private readonly argDv: DataView;

  /**
   * @param argBuffer frames of this domain (an extent, e.g. 16 pages) where calls put
   *   their arguments, which the hypervisor copies from, as Xen copies from guest
   *   memory: a multicall with its arguments may not fit the hypercall page.
   */
  constructor(private readonly hc: HypercallChannel, private readonly argBuffer: { readonly mfn: number; readonly bytes: Uint8Array }) {
    this.page = hc.page;
    this.argDv = new DataView(argBuffer.bytes.buffer, argBuffer.bytes.byteOffset, argBuffer.bytes.byteLength);
  }

  /**
   * Tells the hypervisor this vCPU's domain's paging (`pv` or `shadow`); once per vCPU.
   * @throws HostedMmuError when the hypervisor refuses (already set up, a bad mode).
   */
  setup(paging: 'pv' | 'shadow'): void {
    this.page.setUint32(ARGS, paging === 'pv' ? 0 : 1, true);
    const r = this.hc.call(HYPERVISOR_PVIO_MMU, PVIO_MMU.SETUP, 1).result;
    if (r < 0) throw new HostedMmuError(`the hypervisor refused the MMU model's setup: ${r}`);
  }

  /** The hypervisor's accounting of this domain's entries (all vCPUs). */
  stats(): Record<string, unknown> {
    const n = this.hc.call(HYPERVISOR_PVIO_MMU, PVIO_MMU.STATS, 0).result;
    if (n < 0) throw new HostedMmuError(`stats refused: ${n}`);
    const bytes = new Uint8Array(this.page.buffer, this.page.byteOffset + ARGS, n).slice();
    return JSON.parse(new TextDecoder().decode(bytes)) as Record<string, unknown>;
  }

  /** @see MmuPort.words */
  words(mfn: number): Uint32Array {
    let w = this.words32.get(mfn);
    if (!w) {
      const b = this.hc.frames.page(mfn);
      w = new Uint32Array(b.buffer, b.byteOffset, 1024);
      this.words32.set(mfn, w);
    }
    return w;
  }

  /** @see MmuPort.bytes */
  bytes(mfn: number): Uint8Array {
    let b = this.bytes8.get(mfn);
    if (!b) {
      b = this.hc.frames.page(mfn);
      this.bytes8.set(mfn, b);
    }
    return b;
  }

  /** Nothing to do: the hypervisor learns of the vCPU at {@link setup}. */
  addVcpu(_v: VcpuState): void {}

  /** Where a call writes its arguments (the argument buffer). */
  private dv(): DataView {
    return this.argDv;
  }

  /**
   * Issues the call with the first `len` bytes of the argument buffer as its
   * arguments, and applies the answer block (in the hypercall page) to `v`.
   * @returns the hypercall's value and the answer.
   */
  private call(v: VcpuState, op: number, cmd: number, count: number, len: number): { rc: number; a: DataView } {
    setU64(this.page, ARGS, this.argBuffer.mfn);
    this.page.setUint32(ARGS + 8, len, true);
    const rc = this.hc.call(op, cmd, count).result;
    const a = new DataView(this.page.buffer, this.page.byteOffset + ARGS, 4096 - ARGS);
    if (rc === -XEN_ERRNO.ENOSYS && op !== HYPERVISOR.mmu_update && op !== HYPERVISOR.mmuext_op) throw new HostedMmuError(`the hypervisor does not serve the MMU model's call ${op}/${cmd}`);
    const r = (i: number) => a.getUint32(i * 4, true);
    const cr3 = getU64(a, REPLY.CR3_LO * 4);
    const hw = getU64(a, REPLY.HWCR3_LO * 4);
    v.cr3 = cr3 === 2 ** 53 - 1 ? -1 : cr3;
    v.hwCr3 = hw === 2 ** 53 - 1 ? -1 : hw;
    const flushes = r(REPLY.FLUSHES);
    for (let i = 0; i < flushes; i++) v.flushTlb();
    v.acct.tlbFlushes += flushes;
    const n = r(REPLY.INVLPGS);
    for (let i = 0; i < n; i++) v.invlpgTlb(getU64(a, (REPLY_VA_WORD + 2 * i) * 4));
    v.acct.tlbInvlpgs += n;
    v.acct.validatedPtes += r(REPLY.VALIDATED);
    v.acct.emulations += r(REPLY.EMULATIONS);
    for (let i = 0; i < r(REPLY.NREASONS); i++) v.acct.enter(REASONS[r(REPLY.REASON0 + i)]);
    return { rc, a };
  }

  private writeUpdates(dv: DataView, off: number, reqs: readonly MmuUpdateReq[]): number {
    for (const q of reqs) {
      setU64(dv, off, q.ptr);
      dv.setUint32(off + 8, q.lo >>> 0, true);
      dv.setUint32(off + 12, q.hi >>> 0, true);
      off += MMU_UPDATE_BYTES;
    }
    return off;
  }

  private writeExtOps(dv: DataView, off: number, ops: readonly MmuextOp[]): number {
    for (const o of ops) {
      dv.setUint32(off, o.cmd, true);
      dv.setUint32(off + 4, 0, true);
      setU64(dv, off + 8, o.arg ?? 0);
      setU64(dv, off + 16, 0);
      off += MMUEXT_OP_BYTES;
    }
    return off;
  }

  /** @see MmuPort.mmuUpdate. Batches larger than a page's argument area go in several calls. */
  mmuUpdate(v: VcpuState, reqs: readonly MmuUpdateReq[]): BatchResult {
    const max = Math.floor(this.argDv.byteLength / MMU_UPDATE_BYTES);
    let done = 0;
    do {
      const part = reqs.slice(done, done + max);
      const { rc, a } = this.call(v, HYPERVISOR.mmu_update, 0, part.length, this.writeUpdates(this.dv(), 0, part));
      done += a.getUint32(REPLY.DONE * 4, true);
      if (rc < 0) return { rc, done };
    } while (done < reqs.length);
    return { rc: 0, done };
  }

  /** @see MmuPort.mmuextOp */
  mmuextOp(v: VcpuState, ops: readonly MmuextOp[]): BatchResult {
    const len = this.writeExtOps(this.dv(), 0, ops);
    const { rc, a } = this.call(v, HYPERVISOR.mmuext_op, 0, ops.length, len);
    return { rc: Math.min(rc, 0), done: a.getUint32(REPLY.DONE * 4, true) };
  }

  /** @see MmuPort.updateVaMapping */
  updateVaMapping(v: VcpuState, va: number, lo: number, hi: number, flags: number): number {
    const dv = this.dv();
    setU64(dv, 0, va);
    dv.setUint32(8, lo >>> 0, true);
    dv.setUint32(12, hi >>> 0, true);
    setU64(dv, 16, flags);
    return this.call(v, HYPERVISOR.update_va_mapping, 0, 1, UVM_BYTES).rc;
  }

  /**
   * @see MmuPort.multicall
   * @throws HostedMmuError when the calls do not fit one hypercall page.
   */
  multicall(v: VcpuState, calls: readonly MulticallEntry[]): number[] {
    const dv = this.dv();
    let off = 0;
    const room = (n: number) => {
      if (off + n > dv.byteLength) throw new HostedMmuError('a multicall larger than the hypercall page');
    };
    for (const c of calls) {
      const n = c.op === 'mmu_update' ? c.reqs.length : c.op === 'mmuext_op' ? c.ops.length : 1;
      room(MC_HEADER_BYTES + n * (c.op === 'mmu_update' ? MMU_UPDATE_BYTES : MMUEXT_OP_BYTES));
      dv.setUint32(off, HYPERVISOR[c.op], true);
      dv.setUint32(off + 4, n, true);
      off += MC_HEADER_BYTES;
      if (c.op === 'mmu_update') off = this.writeUpdates(dv, off, c.reqs);
      else if (c.op === 'mmuext_op') off = this.writeExtOps(dv, off, c.ops);
      else {
        setU64(dv, off, c.va);
        dv.setUint32(off + 8, c.lo >>> 0, true);
        dv.setUint32(off + 12, c.hi >>> 0, true);
        setU64(dv, off + 16, c.flags);
        off += UVM_BYTES;
      }
    }
    const { rc, a } = this.call(v, HYPERVISOR.multicall, 0, calls.length, off);
    if (rc < 0) return calls.map(() => rc);
    return calls.map((_, i) => a.getInt32((REPLY_RESULT_WORD + i) * 4, true));
  }

  /** @see MmuPort.enterHypercall */
  enterHypercall(v: VcpuState, nr: number): void {
    this.dv().setUint32(0, nr, true);
    this.call(v, HYPERVISOR_PVIO_MMU, PVIO_MMU.ENTER, 1, 4);
  }

  /** @see MmuPort.privileged */
  privileged(v: VcpuState, insn: PrivilegedInsn, arg = 0): number {
    const dv = this.dv();
    dv.setUint32(0, INSNS.indexOf(insn), true);
    dv.setUint32(4, 0, true);
    setU64(dv, 8, arg);
    return this.call(v, HYPERVISOR_PVIO_MMU, PVIO_MMU.PRIVILEGED, 1, 16).rc;
  }

  /** @see MmuPort.trap */
  trap(v: VcpuState, kind: 'gp' | 'syscall'): void {
    this.dv().setUint32(0, kind === 'gp' ? 0 : 1, true);
    this.call(v, HYPERVISOR_PVIO_MMU, PVIO_MMU.TRAP, 1, 4);
  }

  /** @see MmuPort.pageFault */
  pageFault(v: VcpuState, va: number, access: Access, errorCode: number, data?: Uint8Array): FaultOutcome {
    const dv = this.dv();
    setU64(dv, 0, va);
    dv.setUint32(8, (access.write ? 1 : 0) | (access.user ? 2 : 0), true);
    dv.setUint32(12, errorCode, true);
    const len = data?.length ?? 0;
    dv.setUint32(16, len, true);
    if (data) new Uint8Array(dv.buffer, dv.byteOffset + 20, len).set(data);
    const { a } = this.call(v, HYPERVISOR_PVIO_MMU, PVIO_MMU.PAGE_FAULT, 1, 20 + len);
    const outcome = a.getUint32(REPLY.OUTCOME * 4, true);
    if (outcome === OUTCOME.RETRY) return 'retry';
    if (outcome === OUTCOME.EMULATED) return 'emulated';
    return { reflect: a.getUint32(REPLY.REFLECT * 4, true) };
  }
}


/** Where a hosted kernel's memory starts (pfn 0x40000: 1 GiB into the direct map), clear of the pfns a domain's kernel already has. */
export const HOSTED_PFN_BASE = 0x40000;

/** What {@link bootHostedKernel} needs of a domain's kernel object (`Kernel` has it). */
export interface HostedDomain {
  readonly domid: number;
  readonly hypercall: HypercallChannel;
  readonly memory: {
    populatePhysmap(pfns: readonly number[], order?: number): number[];
    pfnToMfn(pfn: number): number | null;
    allocExtent(order: number): { readonly mfn: number; readonly bytes: Uint8Array };
  };
}

/**
 * Boots the model's guest kernel in this domain, with the model's hypervisor in the
 * hypervisor thread: sets the domain's paging for `mode`, populates `pages` frames
 * at pfns {@link HOSTED_PFN_BASE} … (`XENMEM_populate_physmap`), checks them against
 * the hypervisor's P2M, and starts the kernel ({@link GuestKernel.start}) on them.
 * @throws HostedMmuError when the hypervisor refuses the setup or the frames; Error
 *   when the kernel's boot fails.
 */
export function bootHostedKernel(k: HostedDomain, mode: KernelMode, pages: number, syscall: SyscallHandler): { kernel: GuestKernel; port: HostedMmu } {
  const port = new HostedMmu(k.hypercall, k.memory.allocExtent(ARG_ORDER));
  port.setup(mode === 'pv-batched' || mode === 'pv-single' ? 'pv' : 'shadow');
  const pfns = Array.from({ length: pages }, (_, i) => HOSTED_PFN_BASE + i);
  const mfns = k.memory.populatePhysmap(pfns);
  if (mfns.length !== pages) throw new HostedMmuError(`populate_physmap gave ${mfns.length} of ${pages} frames`);
  for (const i of [0, pages - 1]) {
    if (k.memory.pfnToMfn(pfns[i]) !== mfns[i]) throw new HostedMmuError(`the hypervisor's P2M disagrees at pfn ${pfns[i]}`);
  }
  return { kernel: GuestKernel.start(port, k.domid, mode, mfns, HOSTED_PFN_BASE, syscall), port };
}
