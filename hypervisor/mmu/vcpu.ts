/**
 * The model's vCPU: how a guest program under the CPU/MMU model reaches memory and
 * the hypervisor. JavaScript cannot trap a store, so the model is explicit: every
 * load and store goes through {@link Vcpu.load32} & co., which translate through a
 * software TLB and the page walk of the table the hardware uses (the guest's own in
 * pv mode, the shadow in shadow mode), raise page faults, and enter the hypervisor
 * where the hardware would.
 *
 * Privileged state: the current ring (0 hypervisor, 1 guest kernel, 3 guest user);
 * the virtual IDT from `set_trap_table`; faults delivered to the guest kernel's
 * handler with the faulting address in the frame (a PV guest reads no CR2); a fast
 * system-call handler (`set_callbacks`, validated) so a ring-3 `syscall` reaches the
 * guest kernel without entering the hypervisor, else the call bounces through it;
 * privileged instructions of the ring-1 kernel (`write_cr3`, `invlpg`, `cli`, `sti`,
 * `hlt`) trap and are emulated, and from ring 3 they and every hypercall are a #GP to
 * the guest kernel; event upcalls are virtual interrupts, held while the upcall mask
 * (virtual `cli`) is set.
 *
 * @see xen/include/public/arch-x86/xen.h (trap_info, vcpu_info's upcall mask),
 *   xen/include/public/callback.h, xen/arch/x86/x86_64/entry.S (bounce frames),
 *   Intel SDM vol. 3A §6.15 (#GP, #PF)
 */
import { Accounting } from './accounting.ts';
import { HYPERVISOR as HYPERCALL, XEN_ERRNO as ERRNO } from '../abi.ts';
import { VECTOR } from './abi.ts';
import type { MmuPort, MmuUpdateReq, MmuextOp, MulticallEntry, BatchResult, PrivilegedInsn, VcpuState } from './mmu-hypervisor.ts';
import { SoftTlb, VA_LIMIT, isReserved, type Access, type FrameWords } from './pagetable.ts';

/** What a guest kernel's trap handler is given: the vector, error code and (for #PF) the faulting address. */
export interface TrapFrame {
  readonly vector: number;
  readonly errorCode: number;
  /** The faulting virtual address of a #PF (Xen's extended frame: no CR2 read). */
  readonly cr2: number;
  /** The ring the vCPU was in when the trap happened. */
  readonly ring: number;
  /** For a system call that bounced through the hypervisor: its number and arguments. */
  readonly syscall?: { nr: number; args: readonly number[] };
}

/** A trap handler: `'retry'` makes a faulting access try again; its return value answers a bounced system call. */
export type TrapHandler = (frame: TrapFrame) => unknown;

/** One virtual IDT entry, as `struct trap_info`: vector, the lowest ring allowed to raise it with `int`, handler address and code. */
export interface TrapInfo {
  readonly vector: number;
  /** Privilege level (0–3): ring 3 may raise it with `int` only when 3. */
  readonly dpl: number;
  /** The handler's virtual address (validated like Xen: inside the guest's range). */
  readonly address: number;
  readonly handler: TrapHandler;
}

/** A fast system-call handler: (number, arguments) → result, run at ring 1. */
export type SyscallHandler = (nr: number, args: readonly number[]) => unknown;

/** A callback registered with `set_callbacks`. */
export interface Callback<F> {
  readonly address: number;
  readonly handler: F;
}

/** A page fault the guest kernel did not fix (its handler did not answer `'retry'`): the access fails. */
export class GuestPageFault extends Error {
  constructor(readonly va: number, readonly errorCode: number) {
    super(`page fault at 0x${va.toString(16)} (error code ${errorCode})`);
  }
}

/** A trap with no handler in the virtual IDT: Xen crashes the domain. */
export class DomainCrash extends Error {}

const MAX_RETRIES = 8;

/** A vCPU of a domain under the model. */
export class Vcpu implements VcpuState {
  /** The current ring: 1 guest kernel, 3 guest user. */
  ring = 1;
  readonly acct = new Accounting();
  readonly tlb = new SoftTlb();
  cr3 = -1;
  hwCr3 = -1;
  /** `evtchn_upcall_mask`: set, events wait; clear, they are delivered. */
  upcallMask = true;
  /** `evtchn_upcall_pending`. */
  upcallPending = false;
  /** The virtual IDT, by vector. */
  readonly traps = new Map<number, TrapInfo>();
  private eventCallback: Callback<() => void> | undefined;
  private syscallCallback: Callback<SyscallHandler> | undefined;
  private readonly frames: FrameWords;

  constructor(readonly hv: MmuPort, readonly domid: number, readonly id = 0) {
    this.frames = (mfn) => hv.words(mfn);
    hv.addVcpu(this);
  }

  /** @see VcpuState.flushTlb */
  flushTlb(): void {
    this.tlb.flush();
  }

  /** @see VcpuState.invlpgTlb */
  invlpgTlb(va: number): void {
    this.tlb.invlpg(va);
  }

  // -------------------------------------------------------------------------
  // Memory

  /**
   * Translates `va` for an access, handling faults: a fault the hypervisor resolves
   * (shadow fill, dirty bit) is retried; a guest fault goes to the kernel's #PF
   * handler, and is retried when it answers `'retry'`.
   * @returns the physical byte address, or -1 when the hypervisor emulated the store of `data`.
   * @throws GuestPageFault when the kernel's handler does not fix the fault; DomainCrash without a #PF handler.
   */
  private translate(va: number, write: boolean, data?: Uint8Array): number {
    if (!(va >= 0 && va < VA_LIMIT)) throw new RangeError(`virtual address ${va} is not a 48-bit address`);
    const access: Access = { write, user: this.ring === 3 };
    for (let attempt = 0; attempt < MAX_RETRIES; attempt++) {
      const misses = this.tlb.counters.misses;
      const t = this.tlb.translate(this.frames, this.hwCr3, va, access);
      if (this.tlb.counters.misses !== misses) this.acct.tlbMisses++;
      if (!t.fault) return t.pa;
      const r = this.hv.pageFault(this, va, access, t.errorCode, data);
      if (r === 'retry') continue;
      if (r === 'emulated') return -1;
      if (this.deliver(VECTOR.PF, r.reflect, va) !== 'retry') throw new GuestPageFault(va, r.reflect);
    }
    throw new GuestPageFault(va, -1);
  }

  /** Calls `fn(bytes, offset, n)` on each page-sized piece of [va, va + length). */
  private pieces(va: number, length: number, write: boolean, data: Uint8Array | undefined, fn: (bytes: Uint8Array, off: number, at: number, n: number) => void): void {
    let done = 0;
    while (done < length) {
      const v = va + done;
      const n = Math.min(length - done, 4096 - (v % 4096));
      const pa = this.translate(v, write, data?.subarray(done, done + n));
      if (pa >= 0) fn(this.hv.bytes(Math.floor(pa / 4096)), pa % 4096, done, n);
      done += n;
    }
  }

  /** Reads `length` bytes at `va`. @throws as {@link translate}. */
  read(va: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    this.pieces(va, length, false, undefined, (b, off, at, n) => out.set(b.subarray(off, off + n), at));
    return out;
  }

  /** Writes `data` at `va`. @throws as {@link translate}. */
  write(va: number, data: Uint8Array): void {
    this.pieces(va, data.length, true, data, (b, off, at, n) => b.set(data.subarray(at, at + n), off));
  }

  /** Loads an 8-bit value. */
  load8(va: number): number {
    return this.read(va, 1)[0];
  }

  /** Loads a little-endian 16-bit value. */
  load16(va: number): number {
    const b = this.read(va, 2);
    return b[0] | (b[1] << 8);
  }

  /** Loads a little-endian 32-bit value (unsigned). */
  load32(va: number): number {
    if (va % 4096 <= 4092) {
      const pa = this.translate(va, false);
      const b = this.hv.bytes(Math.floor(pa / 4096));
      const o = pa % 4096;
      return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
    }
    const b = this.read(va, 4);
    return (b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)) >>> 0;
  }

  /** Stores an 8-bit value. */
  store8(va: number, v: number): void {
    this.write(va, Uint8Array.of(v & 0xff));
  }

  /** Stores a little-endian 16-bit value. */
  store16(va: number, v: number): void {
    this.write(va, Uint8Array.of(v & 0xff, (v >>> 8) & 0xff));
  }

  /** Stores a little-endian 32-bit value. */
  store32(va: number, v: number): void {
    this.write(va, Uint8Array.of(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff));
  }

  // -------------------------------------------------------------------------
  // Traps

  /**
   * Delivers `vector` to the guest kernel's handler at ring 1.
   * @returns the handler's answer. @throws DomainCrash when the IDT has no handler.
   */
  private deliver(vector: number, errorCode: number, cr2: number, syscall?: TrapFrame['syscall']): unknown {
    const e = this.traps.get(vector);
    if (!e) throw new DomainCrash(`dom${this.domid}: vector ${vector} with no handler (error code ${errorCode})`);
    const prev = this.ring;
    this.ring = 1;
    try {
      return e.handler({ vector, errorCode, cr2, ring: prev, syscall });
    } finally {
      this.ring = prev;
    }
  }

  /** A #GP: the hypervisor reflects it to the guest kernel. */
  private gp(): void {
    this.hv.trap(this, 'gp');
    this.deliver(VECTOR.GP, 0, 0);
  }

  /** Whether the hypercall may go on: from ring 3 it is a #GP to the guest kernel instead. */
  private kernelOnly(): boolean {
    if (this.ring === 1) return true;
    this.gp();
    return false;
  }

  // -------------------------------------------------------------------------
  // Hypercalls (ring 1). From ring 3 each is a #GP and returns -EPERM.

  /** `HYPERVISOR_mmu_update`. @see MmuHypervisor.mmuUpdate */
  mmuUpdate(reqs: readonly MmuUpdateReq[]): BatchResult {
    return this.kernelOnly() ? this.hv.mmuUpdate(this, reqs) : { rc: -ERRNO.EPERM, done: 0 };
  }

  /** `HYPERVISOR_mmuext_op`. @see MmuHypervisor.mmuextOp */
  mmuextOp(ops: readonly MmuextOp[]): BatchResult {
    return this.kernelOnly() ? this.hv.mmuextOp(this, ops) : { rc: -ERRNO.EPERM, done: 0 };
  }

  /** `HYPERVISOR_update_va_mapping`. @see MmuHypervisor.updateVaMapping */
  updateVaMapping(va: number, lo: number, hi: number, flags: number): number {
    return this.kernelOnly() ? this.hv.updateVaMapping(this, va, lo, hi, flags) : -ERRNO.EPERM;
  }

  /** `HYPERVISOR_multicall`: one entry for all of `calls`. @returns each call's result. */
  multicall(calls: readonly MulticallEntry[]): number[] {
    return this.kernelOnly() ? this.hv.multicall(this, calls) : calls.map(() => -ERRNO.EPERM);
  }

  /**
   * `HYPERVISOR_set_trap_table`: installs the virtual IDT entries (an entry replaces
   * the one of its vector). Validated first: vector 0–255, dpl 0–3, an address inside
   * the guest's range (not the hypervisor's). @returns 0 or `-EINVAL` (nothing installed).
   */
  setTrapTable(entries: readonly TrapInfo[]): number {
    if (!this.kernelOnly()) return -ERRNO.EPERM;
    this.hv.enterHypercall(this, HYPERCALL.set_trap_table);
    for (const e of entries) {
      if (!(Number.isInteger(e.vector) && e.vector >= 0 && e.vector <= 255 && Number.isInteger(e.dpl) && e.dpl >= 0 && e.dpl <= 3)) return -ERRNO.EINVAL;
      if (!validAddress(e.address) || typeof e.handler !== 'function') return -ERRNO.EINVAL;
    }
    for (const e of entries) this.traps.set(e.vector, e);
    return 0;
  }

  /**
   * `HYPERVISOR_set_callbacks`: the event upcall and the fast system-call handler,
   * each validated (an address inside the guest's range, a handler). Once `syscall`
   * is installed, a ring-3 {@link syscall} runs it without entering the hypervisor.
   * @returns 0 or `-EINVAL` (nothing installed).
   */
  setCallbacks(cb: { event?: Callback<() => void>; syscall?: Callback<SyscallHandler> }): number {
    if (!this.kernelOnly()) return -ERRNO.EPERM;
    this.hv.enterHypercall(this, HYPERCALL.set_callbacks);
    for (const c of [cb.event, cb.syscall]) if (c && (!validAddress(c.address) || typeof c.handler !== 'function')) return -ERRNO.EINVAL;
    if (cb.event) this.eventCallback = cb.event;
    if (cb.syscall) this.syscallCallback = cb.syscall;
    return 0;
  }

  // -------------------------------------------------------------------------
  // Privileged instructions: trapped and emulated from ring 1, #GP from ring 3.

  /** Runs a privileged instruction: from ring 1 it traps and is emulated; from ring 3 it is a #GP. @returns whether it ran. */
  private privileged(insn: PrivilegedInsn, arg = 0): boolean {
    if (this.ring !== 1) {
      this.gp();
      return false;
    }
    if (this.hv.privileged(this, insn, arg) < 0) {
      this.gp();
      return false;
    }
    return true;
  }

  /** `mov cr3`: loads a new base pointer (trapped; a refused base is a #GP). */
  writeCr3(base: number): void {
    this.privileged('write_cr3', base);
  }

  /** `invlpg`: drops the TLB entry of `va` (trapped). */
  invlpg(va: number): void {
    this.privileged('invlpg', va);
  }

  /** `cli` (trapped): sets the upcall mask. */
  cli(): void {
    if (this.privileged('cli')) this.upcallMask = true;
  }

  /** `sti` (trapped): clears the upcall mask and delivers a pending event. */
  sti(): void {
    if (this.privileged('sti')) {
      this.upcallMask = false;
      this.deliverEvents();
    }
  }

  /** `hlt` (trapped): idles until an event; delivers a pending one. */
  hlt(): void {
    if (this.privileged('hlt')) this.deliverEvents();
  }

  /**
   * The PV way to mask and unmask events: writes `evtchn_upcall_mask` in shared
   * memory, no entry. Unmasking with an event pending makes the hypercall Linux makes
   * to have it delivered (`xen_version`, as xen_force_evtchn_callback does).
   */
  setUpcallMask(masked: boolean): void {
    this.upcallMask = masked;
    if (!masked && this.upcallPending && this.eventCallback) {
      this.hv.enterHypercall(this, HYPERCALL.xen_version);
      this.deliverEvents();
    }
  }

  // -------------------------------------------------------------------------
  // Events

  /** Marks an event pending (the hypervisor's `evtchn_upcall_pending = 1`) and delivers it unless masked. */
  raiseEvent(): void {
    this.upcallPending = true;
    this.deliverEvents();
  }

  /** Runs the event callback at ring 1 if an event is pending and the mask is clear; the mask is set while it runs. */
  private deliverEvents(): void {
    while (this.upcallPending && !this.upcallMask && this.eventCallback) {
      this.upcallPending = false;
      const prev = this.ring;
      this.ring = 1;
      this.upcallMask = true;
      try {
        this.eventCallback.handler();
      } finally {
        this.upcallMask = false;
        this.ring = prev;
      }
    }
  }

  // -------------------------------------------------------------------------
  // User mode

  /** Runs `fn` at ring 3 (a user process), back to ring 1 after. */
  user<T>(fn: () => T): T {
    const prev = this.ring;
    this.ring = 3;
    try {
      return fn();
    } finally {
      this.ring = prev;
    }
  }

  /**
   * `syscall` from ring 3: with a fast handler installed it runs at ring 1 without
   * entering the hypervisor; otherwise the hypervisor takes it (`trap:syscall`) and
   * bounces it to the IDT's vector 0x80 handler (dpl 3), or reflects a #GP.
   * @returns the handler's result.
   * @throws Error from ring 1 (the model's kernel calls its code directly).
   */
  syscall(nr: number, args: readonly number[] = []): unknown {
    if (this.ring !== 3) throw new Error('syscall from ring 1: the kernel calls its code directly');
    const fast = this.syscallCallback;
    if (fast) {
      this.acct.fastSyscalls++;
      this.ring = 1;
      try {
        return fast.handler(nr, args);
      } finally {
        this.ring = 3;
      }
    }
    this.hv.trap(this, 'syscall');
    const e = this.traps.get(0x80);
    if (!e || e.dpl < 3) {
      this.deliver(VECTOR.GP, 0, 0);
      return undefined;
    }
    return this.deliver(0x80, 0, 0, { nr, args });
  }
}

/** An address a handler may have: inside 0 … 2^48 − 1 and outside the hypervisor's range. */
function validAddress(va: number): boolean {
  return Number.isInteger(va) && va >= 0 && va < VA_LIMIT && !isReserved(va);
}
