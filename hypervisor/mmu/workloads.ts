/**
 * The CPU/MMU model's workloads, written once against the guest kernel's
 * paravirt-ops ({@link GuestKernel}) and run in any of its four modes:
 *
 * - `address-space`: build an address space of `n` user mappings in a new process
 *   and touch every page from ring 3 (the `fork` of the Xen paper's discussion);
 *   then two probes every mode must fault the same way: a write to a page made
 *   read-only and a read of an address never mapped.
 * - `process-switch`: `procs` processes with `pages` touched pages each are set up
 *   (not counted); then `n` switches, each with events masked around the base-pointer
 *   change (as a scheduler does), touching every page of the process switched to.
 * - `syscall`: `n` system calls from ring 3 to a handler that updates a kernel counter.
 *
 * @see Barham et al., "Xen and the Art of Virtualization", SOSP 2003, §3.3 (the costs these workloads expose)
 */
import { Accounting, DEFAULT_COSTS, type CostModel } from './accounting.ts';
import { GuestKernel, USER_BASE, type KernelMode } from './guest-kernel.ts';
import { ModelMemory } from './memory.ts';
import { MmuHypervisor } from './mmu-hypervisor.ts';
import { GuestPageFault } from './vcpu.ts';
import { createHash } from 'node:crypto';

/** The three workloads. */
export type WorkloadName = 'address-space' | 'process-switch' | 'syscall';
/** Every workload, in the benchmark's order. */
export const WORKLOADS: readonly WorkloadName[] = ['address-space', 'process-switch', 'syscall'];

/** Sizes of the workloads. */
export interface WorkloadSizes {
  /** address-space: user mappings; process-switch: switches; syscall: calls. */
  readonly n: number;
  /** process-switch: processes. */
  readonly procs?: number;
  /** process-switch: pages per process. */
  readonly pages?: number;
}

/** Default sizes: what `pvio bench mmu` runs without options. */
export const DEFAULT_SIZES: Readonly<Record<WorkloadName, WorkloadSizes>> = Object.freeze({
  'address-space': { n: 8192 },
  'process-switch': { n: 2000, procs: 8, pages: 32 },
  syscall: { n: 100_000 },
});

/** One run of one workload in one mode. */
export interface WorkloadResult {
  readonly mode: KernelMode;
  readonly workload: WorkloadName;
  readonly sizes: WorkloadSizes;
  readonly hypervisorEntries: number;
  readonly validatedPtes: number;
  readonly traps: number;
  readonly tlbFlushes: number;
  readonly tlbMisses: number;
  readonly modelledCycles: number;
  /** Measured time of the counted phase, ns. */
  readonly wallNs: number;
  /** Entries by reason. */
  readonly entries: Record<string, number>;
  readonly fastSyscalls: number;
  readonly emulations: number;
  /** What the guest sees, for equivalence across modes: SHA-256 of user memory read back and the faults delivered. */
  readonly guestView: { memory: string; faults: Array<[number, number]> };
}

const SYS_GETCOUNT = 39;

/** Frames a kernel needs for `workload` at `sizes` (user pages, their tables, the direct map's tables, slack). */
export function framesFor(workload: WorkloadName, sizes: WorkloadSizes): number {
  const procs = sizes.procs ?? 8;
  const perProc = sizes.pages ?? 32;
  const userPages = workload === 'address-space' ? sizes.n : workload === 'process-switch' ? procs * perProc : 0;
  const frames = userPages + Math.ceil(userPages / 512) * 2 + (workload === 'process-switch' ? procs * 4 : 8) + 256;
  return frames + Math.ceil(frames / 500) + 8;
}

/**
 * The workloads' system-call handler: call 39 adds one to a counter in kernel memory
 * (through the vCPU) and returns it; others return -ENOSYS. Bind it to its kernel
 * with `attach` once the kernel is up.
 */
export function counterSyscall(): { handler: (nr: number) => number; attach(k: GuestKernel): void } {
  let kref: GuestKernel | undefined;
  let counterVa = 0;
  return {
    handler: (nr) => {
      if (nr !== SYS_GETCOUNT || !kref) return -38;
      const c = kref.vcpu.load32(counterVa) + 1;
      kref.vcpu.store32(counterVa, c);
      return c;
    },
    attach: (k) => {
      kref = k;
      counterVa = k.kva(k.allocPage());
    },
  };
}

/**
 * Boots a fresh machine in one thread (memory, the model's hypervisor, one domain)
 * in `mode` and runs `workload` ({@link runOn}).
 * @throws Error when a mode misbehaves (a refused update, a value read back wrong).
 */
export function runWorkload(mode: KernelMode, workload: WorkloadName, sizes: WorkloadSizes = DEFAULT_SIZES[workload], costs: CostModel = DEFAULT_COSTS): WorkloadResult {
  const mem = new ModelMemory();
  const hv = new MmuHypervisor(mem);
  const sys = counterSyscall();
  const k = GuestKernel.boot(hv, mem, 1, mode, framesFor(workload, sizes), sys.handler);
  sys.attach(k);
  return runOn(k, workload, sizes, costs);
}

/**
 * Runs `workload` on a booted kernel whose system calls are {@link counterSyscall}'s
 * (attached): counts from the start of the workload's timed phase to its end.
 * @throws Error when the kernel misbehaves (a refused update, a value read back wrong).
 */
export function runOn(k: GuestKernel, workload: WorkloadName, sizes: WorkloadSizes = DEFAULT_SIZES[workload], costs: CostModel = DEFAULT_COSTS): WorkloadResult {
  const mode = k.mode;
  const procs = sizes.procs ?? 8;
  const perProc = sizes.pages ?? 32;
  const v = k.vcpu;
  const hash = createHash('sha256');
  let t0 = 0;
  let t1 = 0;
  let counted: Accounting | undefined;

  if (workload === 'address-space') {
    k.resetCounters();
    t0 = performance.now();
    const p = k.createProcess();
    k.switchTo(p.l4);
    for (let i = 0; i < sizes.n; i++) k.mapUser(p, USER_BASE + i * 4096);
    k.flushUpdates();
    v.user(() => {
      for (let i = 0; i < sizes.n; i++) v.store32(USER_BASE + i * 4096 + (i % 1024) * 4, Math.imul(i, 2654435761) >>> 0);
      for (let i = 0; i < sizes.n; i++) {
        const got = v.load32(USER_BASE + i * 4096 + (i % 1024) * 4);
        if (got !== Math.imul(i, 2654435761) >>> 0) throw new Error(`${mode}: page ${i} reads ${got}`);
      }
    });
    t1 = performance.now();
    counted = v.acct.clone();
    k.protectUser(p, USER_BASE);
    const probe = (fn: () => void) => {
      try {
        v.user(fn);
      } catch (e) {
        if (!(e instanceof GuestPageFault)) throw e;
      }
    };
    probe(() => v.store32(USER_BASE, 1)); // write to a read-only page
    probe(() => v.load32(USER_BASE + (sizes.n + 16) * 4096)); // never mapped
    v.user(() => {
      for (let i = 0; i < sizes.n; i += Math.max(1, Math.floor(sizes.n / 256))) hash.update(v.read(USER_BASE + i * 4096, 64));
    });
  } else if (workload === 'process-switch') {
    const ps = Array.from({ length: procs }, (_, j) => {
      const p = k.createProcess();
      for (let i = 0; i < perProc; i++) k.mapUser(p, USER_BASE + i * 4096);
      k.flushUpdates();
      k.switchTo(p.l4);
      v.user(() => {
        for (let i = 0; i < perProc; i++) v.store32(USER_BASE + i * 4096, j * 1000 + i);
      });
      return p;
    });
    k.resetCounters();
    t0 = performance.now();
    for (let s = 0; s < sizes.n; s++) {
      const j = s % procs;
      k.irqDisable();
      k.switchTo(ps[j].l4);
      k.irqEnable();
      v.user(() => {
        for (let i = 0; i < perProc; i++) {
          const a = USER_BASE + i * 4096;
          const x = v.load32(a);
          if (x !== j * 1000 + i + Math.floor(s / procs)) throw new Error(`${mode}: process ${j} page ${i} reads ${x}`);
          v.store32(a, x + 1);
        }
      });
    }
    t1 = performance.now();
    counted = v.acct.clone();
    for (let j = 0; j < procs; j++) {
      k.switchTo(ps[j].l4);
      v.user(() => {
        for (let i = 0; i < perProc; i++) hash.update(v.read(USER_BASE + i * 4096, 8));
      });
    }
  } else {
    k.resetCounters();
    t0 = performance.now();
    let last = 0;
    v.user(() => {
      for (let i = 0; i < sizes.n; i++) last = v.syscall(SYS_GETCOUNT) as number;
    });
    t1 = performance.now();
    counted = v.acct.clone();
    if (last !== sizes.n) throw new Error(`${mode}: the counter reads ${last} after ${sizes.n} calls`);
    hash.update(String(last));
  }
  // Counted up to the end of the timed phase; the probes and read-back are not.
  const a = counted!;
  return {
    mode, workload, sizes,
    hypervisorEntries: a.hypervisorEntries, validatedPtes: a.validatedPtes, traps: a.traps, tlbFlushes: a.tlbFlushes,
    tlbMisses: a.tlbMisses, modelledCycles: a.modelledCycles(costs), wallNs: Math.round((t1 - t0) * 1e6),
    entries: Object.fromEntries([...a.entries].sort()), fastSyscalls: a.fastSyscalls, emulations: a.emulations,
    guestView: { memory: hash.digest('hex'), faults: k.faults.map(([va, ec]) => [va, ec]) },
  };
}
