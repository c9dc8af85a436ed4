/**
 * The hypervisor: frame table, domains, hypercall dispatch, grant validation and
 * copy, event-channel setup. One instance runs in the hypervisor worker thread
 * (hypervisor/main.ts); tests may also drive it directly.
 *
 * Hypercalls (DESIGN.md, decision 2): a vCPU writes Xen's argument structs into its
 * hypercall page, stores `state = PENDING`, bumps the single wake-up word and blocks.
 * {@link Hypervisor.serviceOnce} scans every vCPU's page round-robin, copies the
 * arguments once into private memory before validating them, does at most
 * {@link MAX_OPS_PER_SLICE} entries of a batch (a longer batch answers with progress
 * and `preempted = 1`, and the guest re-issues the rest, like Xen's continuations),
 * posts any frame handles on the vCPU's MessagePort, and only then stores
 * `state = DONE` and notifies.
 *
 * The data path never comes here: event sends and ring traffic go straight between
 * domains (decision 3). Grant map/unmap/copy do come here — the cost persistent
 * grants exist to avoid.
 */
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { invariant } from '../rings/errors.ts';
import { readU64, writeU64 } from '../rings/layout.ts';
import {
  DOMID_SELF, DOMID_XEN, EVTCHNOP, EVTCHNSTAT, EVTCHN_ALLOC_UNBOUND, EVTCHN_BIND_INTERDOMAIN, EVTCHN_BIND_VCPU,
  EVTCHN_PORT_ARG, EVTCHN_STATUS, GNTCOPY, GNTMAP, GNTST, GNTTABOP,
  GNTTAB_COPY, GNTTAB_MAP_GRANT_REF, GNTTAB_QUERY_SIZE, GNTTAB_RESERVED_CONSOLE,
  GNTTAB_RESERVED_XENSTORE, GNTTAB_UNMAP_GRANT_REF, GRANT_ENTRY_V1, GRANT_ENTRIES_PER_FRAME,
  GTF, HC_ARGS_BYTES, HC_ARGS_OFFSET, HC_STATE, HYPERCALL_NAME, HYPERCALL_PAGE, HYPERVISOR,
  NR_EVENT_CHANNELS, PAGE_SIZE, SCHEDOP, SCHED_SHUTDOWN, SHUTDOWN,
  WAKE_PAGE, XENMEM, XEN_ERRNO, XEN_MEMORY_RESERVATION, type DomId, type Mfn,
} from './abi.ts';
import {
  INVALID_FRAME_U32, MAX_EXTENT_ORDER, XEN_MEMORY_DOMAIN, XEN_TRANSLATE_GPFN_LIST,
} from './abi.ts';
import { FrameTable, type ExtentHandle, type Frame } from './frames.ts';
import { MAX_PTE_FRAME, PhysMap } from './mmu/pagetable.ts';
import { MMU_HYPERCALLS, MMU_PAGE_ARGS_BYTES, MmuHost } from './mmu/host.ts';
import { isPortDeliverable, raiseUpcall, setPortPending } from './shared-info.ts';
import type { BootInfo } from './boot.ts';
import { XEN_DOMCTL_SCHEDOP, XEN_SCHEDULER, type XenDomctlSchedulerOp } from './abi.ts';
import { CreditScheduler } from './sched-credit.ts';
import {
  EVTCHN_BIND_VIRQ, EVTCHN_STATUS_VIRQ, NR_VIRQS, RUNSTATE, SET_TIMER_OP_ARGS, VCPUOP, VCPU_OP_ARGS,
  VCPU_OP_EXTRA_OFFSET, VIRQ,
} from './abi.ts';
import { RunstateClock, tscNow, writeRunstateInfo, writeVcpuTimeInfo, writeWallclock } from './time.ts';

/** Most entries of one batched hypercall served before the rest is re-issued. */
export const MAX_OPS_PER_SLICE = 64;
/** Bounded retries of the grant-entry compare-exchange, as Xen's `_set_status_v1`. */
export const GNT_CAS_RETRIES = 4;
/** log2 of the grant-table frames per domain (one extent): 64 frames = 32768 v1 entries, Xen's default `gnttab_max_frames`. */
export const GRANT_TABLE_ORDER = 6;

const HC = HYPERCALL_PAGE.fields;
const I_STATE = HC.state.offset >> 2;
const I_PUSHSEQ = HC.pushSeq.offset >> 2;
const I_PAUSED = HC.paused.offset >> 2;
const I_WAKE = WAKE_PAGE.fields.wake.offset >> 2;
const GE_FRAME = GRANT_ENTRY_V1.fields.frame.offset;

/** Lifecycle of a domain. */
export type DomainState = 'paused' | 'running' | 'dying' | 'dead';

/** An event channel end in the hypervisor's table. */
interface Evtchn {
  state: 'unbound' | 'interdomain' | 'virq';
  remoteDom: DomId;
  remotePort: number;
  vcpu: number;
  /** The VIRQ (`state === 'virq'`). */
  virq?: number;
}

/** A grant mapping held by a domain (its maptrack entry). */
interface MapTrack {
  granter: DomId;
  ref: number;
  readonly: boolean;
  mfn: Mfn;
}

/** Pin counts of one grant entry (Xen's active grant entry). */
interface ActiveGrant {
  readPins: number;
  writePins: number;
  mfn: Mfn;
}

/** One vCPU as the hypervisor sees it. */
interface Vcpu {
  readonly domid: DomId;
  readonly id: number;
  readonly hcFrame: Frame;
  readonly hc: Int32Array;
  readonly hcU8: Uint8Array;
  readonly hcDv: DataView;
  readonly wakeFrame: Frame;
  readonly wake: Int32Array;
  /** Hypervisor end of the handle port. */
  readonly port: MessagePort;
  worker: Worker | null;
  /** The one-shot alarm of `set_timer_op`: absolute system time (ns), 0 when none. */
  timer: number;
  /** Ports bound to each VIRQ on this vCPU (`EVTCHNOP_bind_virq`), 0 when none. */
  readonly virqPorts: number[];
  /** Time spent per runstate (`VCPUOP_get_runstate_info`). */
  readonly runstate: RunstateClock;
}

/** A domain in the hypervisor's table. */
export interface Domain {
  readonly domid: DomId;
  readonly name: string;
  readonly maxPages: number;
  ramPages: number;
  state: DomainState;
  readonly privileged: boolean;
  readonly vcpus: Vcpu[];
  readonly sharedInfo: Frame;
  readonly sharedInfoI32: Int32Array;
  readonly grantTable: Frame;
  readonly gtU32: Uint32Array;
  readonly gtDv: DataView;
  readonly nrGrantEntries: number;
  readonly active: Map<number, ActiveGrant>;
  readonly maptrack: Map<number, MapTrack>;
  nextHandle: number;
  /** Hypercalls this domain made. */
  hypercalls: number;
  readonly evtchns: Map<number, Evtchn>;
  /** Event pair pages where this domain is the receiver, by sender domid. */
  readonly pairPages: Map<DomId, Frame>;
  shutdownReason: number | null;
  crashError: string | null;
  readonly store: { mfn: Mfn; port: number } | null;
  readonly console: { mfn: Mfn; port: number } | null;
}

/** Parameters of {@link Hypervisor.createDomain}. */
export interface CreateDomainOptions {
  readonly name: string;
  /** Memory quota in 4 KiB pages. */
  readonly maxPages: number;
  readonly vcpus: number;
  /** Guest module (file URL or path) and its arguments. */
  readonly guest: { module: string; args?: unknown; extra?: string; probe?: boolean };
  /** Toolstack control channel given to the domain (transferred). */
  readonly controlPort?: MessagePort | null;
  /** Whether the domain is dom0 (domid 0, local XenStore, no console ring). */
  readonly privileged?: boolean;
  /** Resource limits for the worker (tests). */
  readonly resourceLimits?: { maxOldGenerationSizeMb?: number };
}

/** Counters that benchmarks and the toolstack report. */
export interface HypervisorCounters {
  /** Hypercalls by name (each re-issue after preemption counts once more). */
  hypercalls: Record<string, number>;
  /** Grant ops by kind. */
  grantMaps: number;
  grantUnmaps: number;
  grantCopies: number;
  grantCopyBytes: number;
  preemptions: number;
  wakeups: number;
  spins: number;
  /** `set_timer_op` alarms that fired (`VIRQ_TIMER` raised, or dropped for want of a bound port). */
  timerFires: number;
  /** Of {@link timerFires}, those whose vCPU had no port bound to `VIRQ_TIMER`. */
  timerFiresUnbound: number;
}

/** Events the hypervisor reports to its embedder (the toolstack). */
export interface HypervisorEvents {
  onDomainShutdown?(domid: DomId, reason: number, error: string | null): void;
  onDomainDestroyed?(domid: DomId, reason: number, error: string | null): void;
}

/** Path of the `.mjs` bootstrap that registers tsx and imports a `.ts` entry. */
export const WORKER_BOOTSTRAP = fileURLToPath(new URL('./worker-bootstrap.mjs', import.meta.url));
const DOMAIN_ENTRY = new URL('../toolstack/domain-main.ts', import.meta.url).href;

/** The hypervisor: owns the frame table and every domain's hypervisor-side state. */
export class Hypervisor {
  readonly frames = new FrameTable();
  /**
   * Every domain's P2M (pseudo-physical frame → MFN) and the machine-wide M2P, for
   * guest RAM frames only (`kind: 'ram'`): kept here, read by guests through
   * `XENMEM_translate_gpfn_list` / `XENMEM_pvio_machphys_lookup`.
   */
  readonly physmap = new PhysMap();
  /**
   * The CPU/MMU model (hypervisor/mmu/): page types, pins, shadow tables and the
   * accounting of every domain's MMU entries; served for `mmu_update`,
   * `update_va_mapping`, `mmuext_op`, `multicall` and pvio's model entries.
   */
  readonly mmu: MmuHost = new MmuHost({
    phys: this.physmap,
    frame: (mfn) => this.frames.get(mfn),
    allocShared: (domid, reason) => {
      const f = this.frames.alloc(DOMID_XEN, 0, 'shadow', [domid as DomId])[0];
      const h = this.mmuOut && this.frames.give(domid as DomId, this.mmuOut.vcpu, f, reason);
      if (h) this.mmuOut!.handles.push(h);
      return f.mfn;
    },
    grantMapped: (domid, mfn, writable) => {
      for (const m of this.domains.get(domid)?.maptrack.values() ?? []) if (m.mfn === mfn && (!writable || !m.readonly)) return true;
      return false;
    },
  });
  /** The outgoing handles of the MMU call being served (shadow tables are posted to the calling vCPU). */
  private mmuOut: Outgoing | null = null;
  readonly domains = new Map<number, Domain>();
  readonly hvWakeBuffer = new SharedArrayBuffer(64);
  readonly hvWake = new Int32Array(this.hvWakeBuffer);
  readonly counters: HypervisorCounters = {
    hypercalls: {}, grantMaps: 0, grantUnmaps: 0, grantCopies: 0, grantCopyBytes: 0,
    preemptions: 0, wakeups: 0, spins: 0, timerFires: 0, timerFiresUnbound: 0,
  };
  /** pvio TSC (hypervisor/time.ts `tscNow`, ns) when this hypervisor booted: system time 0. */
  readonly bootTsc = tscNow();
  /** Earliest armed alarm of a running domain (system ns), Infinity when none. */
  private earliestTimer = Infinity;
  private readonly allVcpus: Vcpu[] = [];
  private rr = 0;
  /** The credit scheduler's per-domain weight and cap, applied by {@link serviceOnce} (hypervisor/sched-credit.ts). */
  readonly sched = new CreditScheduler();
  /** Scratch of one weighted pass: the pending vCPUs, their domids, which to serve. */
  private readonly passVcpus: Vcpu[] = [];
  private readonly passDomids: number[] = [];
  private readonly passServe: boolean[] = [];
  private nextDomid = 1;
  /** Pair pages by `${receiver}:${sender}`. */
  private readonly pairs = new Map<string, Frame>();
  /** Scratch for copied arguments (decision 2: copy once, then validate). */
  private readonly argCopy = new Uint8Array(HC_ARGS_BYTES);
  private readonly argDv = new DataView(this.argCopy.buffer);

  constructor(readonly spinTokens: SharedArrayBuffer, readonly events: HypervisorEvents = {}) {}

  // -------------------------------------------------------------------------
  // Domain lifecycle (domctl; called by the toolstack, never by guests)

  /**
   * Creates a domain, paused, with its vCPU workers started. dom0 (privileged) gets
   * domid 0; others count up from 1. A domU gets XenStore and console ring pages
   * with grant refs 1 and 0 seeded for dom0 and unbound ports towards dom0, as Xen's
   * domain builder does.
   * @returns the new domain.
   */
  createDomain(opts: CreateDomainOptions): Domain {
    const privileged = opts.privileged ?? false;
    invariant(opts.vcpus >= 1 && opts.vcpus <= 32, 'vcpus must be 1..32');
    const domid = (privileged ? 0 : this.nextDomid++) as DomId;
    invariant(!this.domains.has(domid), `domain ${domid} exists`);
    const [sharedInfo] = this.frames.alloc(domid, 0, 'shared-info');
    const gtFrames = this.frames.alloc(domid, GRANT_TABLE_ORDER, 'grant-table');
    const grantTable = gtFrames[0];
    const nrGrantEntries = gtFrames.length * GRANT_ENTRIES_PER_FRAME;
    const vcpus: Vcpu[] = [];
    const guestPorts: MessagePort[] = [];
    for (let v = 0; v < opts.vcpus; v++) {
      const [hcFrame] = this.frames.alloc(domid, 0, 'hypercall');
      const [wakeFrame] = this.frames.alloc(DOMID_XEN, 0, 'wake', [domid]);
      const ch = new MessageChannel();
      vcpus.push({
        domid, id: v, hcFrame, hc: new Int32Array(hcFrame.buffer!), hcU8: new Uint8Array(hcFrame.buffer!),
        hcDv: new DataView(hcFrame.buffer!), wakeFrame, wake: new Int32Array(wakeFrame.buffer!),
        port: ch.port1, worker: null,
        timer: 0, virqPorts: new Array<number>(NR_VIRQS).fill(0), runstate: new RunstateClock(RUNSTATE.offline, this.systemNs()),
      });
      guestPorts.push(ch.port2);
    }
    const dom: Domain = {
      domid, name: opts.name, maxPages: opts.maxPages, ramPages: 0, state: 'paused', privileged,
      vcpus, sharedInfo, sharedInfoI32: new Int32Array(sharedInfo.buffer!), grantTable,
      gtU32: new Uint32Array(grantTable.buffer!), gtDv: new DataView(grantTable.buffer!), nrGrantEntries,
      active: new Map(), maptrack: new Map(), nextHandle: 1, hypercalls: 0, evtchns: new Map(), pairPages: new Map(),
      shutdownReason: null, crashError: null, store: null, console: null,
    };
    for (const v of vcpus) Atomics.store(v.hc, I_PAUSED, 1);
    this.initTime(dom);
    this.domains.set(domid, dom);
    let storeFrame: Frame | null = null;
    let consFrame: Frame | null = null;
    if (!privileged) {
      [storeFrame] = this.frames.alloc(domid, 0, 'ram');
      [consFrame] = this.frames.alloc(domid, 0, 'ram');
      dom.ramPages += 2;
      this.physmapAdd(dom, this.lowestFreePfn(dom), storeFrame.mfn); // pfn 0
      this.physmapAdd(dom, this.lowestFreePfn(dom), consFrame.mfn); // pfn 1
      this.seedGrant(dom, GNTTAB_RESERVED_CONSOLE, consFrame.mfn, 0 as DomId);
      this.seedGrant(dom, GNTTAB_RESERVED_XENSTORE, storeFrame.mfn, 0 as DomId);
      const storePort = this.allocUnbound(dom, 0 as DomId);
      const consPort = this.allocUnbound(dom, 0 as DomId);
      (dom as { store: Domain['store'] }).store = { mfn: storeFrame.mfn, port: storePort };
      (dom as { console: Domain['console'] }).console = { mfn: consFrame.mfn, port: consPort };
    }
    // vCPU-to-vCPU channels, one per pair: the kernel's inter-processor messages.
    const siblings: Array<Array<MessagePort | null>> = vcpus.map(() => vcpus.map(() => null));
    for (let i = 0; i < vcpus.length; i++) {
      for (let j = i + 1; j < vcpus.length; j++) {
        const ch = new MessageChannel();
        siblings[i][j] = ch.port1;
        siblings[j][i] = ch.port2;
      }
    }
    for (const v of vcpus) {
      const guestPort = guestPorts[v.id];
      // Each vCPU worker is its own heap: every one is given the domain's boot pages.
      const give = (f: Frame, why: string) => this.frames.give(domid, v.id, f, why)!;
      const boot: BootInfo = {
        domid, name: opts.name, vcpuId: v.id, nrVcpus: vcpus.length, privileged,
        hvWake: this.hvWakeBuffer, spinTokens: this.spinTokens,
        hypercallPage: give(v.hcFrame, `hypercall page of vcpu ${v.id}`),
        wakePages: vcpus.map((w) => give(w.wakeFrame, `wake page of vcpu ${w.id}`)),
        sharedInfo: give(sharedInfo, 'shared_info'), grantTable: give(grantTable, 'grant table'), nrGrantEntries,
        store: storeFrame ? { page: give(storeFrame, 'start_info.store_mfn'), port: dom.store!.port } : null,
        console: consFrame ? { page: give(consFrame, 'start_info.console_mfn'), port: dom.console!.port } : null,
        maxPages: opts.maxPages, handlePort: guestPort,
        controlPort: v.id === 0 ? (opts.controlPort ?? null) : null,
        siblingPorts: siblings[v.id],
        guest: { module: opts.guest.module, args: opts.guest.args ?? null, extra: opts.guest.extra, probe: opts.guest.probe },
      };
      const transferList: MessagePort[] = [guestPort, ...siblings[v.id].filter((p): p is MessagePort => p !== null)];
      if (boot.controlPort) transferList.push(boot.controlPort);
      const worker = new Worker(WORKER_BOOTSTRAP, {
        workerData: { entry: DOMAIN_ENTRY, boot },
        transferList,
        name: `${opts.name}/vcpu${v.id}`,
        resourceLimits: opts.resourceLimits,
      });
      v.worker = worker;
      worker.on('error', (err: Error) => {
        if (dom.state === 'dead') return;
        dom.crashError = err?.stack ?? String(err);
        this.shutdownDomain(dom, SHUTDOWN.crash);
      });
      worker.on('exit', () => {
        v.worker = null;
        if (dom.state !== 'dead' && dom.state !== 'dying') {
          dom.crashError ??= `vcpu ${v.id} exited without SCHEDOP_shutdown`;
          this.shutdownDomain(dom, SHUTDOWN.crash);
        } else if (dom.state === 'dying' && dom.vcpus.every((x) => x.worker === null)) {
          this.finishDestroy(dom);
        }
      });
      this.allVcpus.push(v);
    }
    return dom;
  }

  /**
   * Lets a paused domain run (its kernel starts or resumes dispatching events). Its
   * vCPUs enter RUNSTATE_running, and alarms that fell due while it was paused fire now.
   */
  unpause(domid: number): void {
    const dom = this.mustGet(domid);
    if (dom.state !== 'paused') return;
    dom.state = 'running';
    const now = this.systemNs();
    for (const v of dom.vcpus) {
      v.runstate.change(RUNSTATE.running, now);
      this.refreshTime(dom, v);
      Atomics.store(v.hc, I_PAUSED, 0);
      this.kick(v);
    }
    this.timersChanged();
    this.runTimers();
  }

  /** Pauses a domain: its kernel stops dispatching events; its hypercalls wait. */
  pause(domid: number): void {
    const dom = this.mustGet(domid);
    if (dom.state !== 'running') return;
    dom.state = 'paused';
    const now = this.systemNs();
    for (const v of dom.vcpus) {
      v.runstate.change(RUNSTATE.offline, now);
      Atomics.store(v.hc, I_PAUSED, 1);
    }
    this.timersChanged(); // its alarms wait for the unpause
  }

  /**
   * Destroys a domain: stops its workers, releases the grant mappings it holds,
   * closes its event channels (remote ends return to unbound) and frees its frames
   * (frames still mapped by others live until their last unmap).
   */
  destroy(domid: number, reason: number = SHUTDOWN.poweroff): void {
    const dom = this.domains.get(domid);
    if (!dom || dom.state === 'dead' || dom.state === 'dying') return;
    if (dom.shutdownReason === null) dom.shutdownReason = reason;
    this.beginDestroy(dom);
  }

  private shutdownDomain(dom: Domain, reason: number): void {
    if (dom.state === 'dead' || dom.state === 'dying') return;
    dom.shutdownReason = reason;
    this.events.onDomainShutdown?.(dom.domid, reason, dom.crashError);
    // on_poweroff = on_crash = destroy (xl's defaults for a one-shot guest).
    this.beginDestroy(dom);
  }

  private beginDestroy(dom: Domain): void {
    dom.state = 'dying';
    const now = this.systemNs();
    for (const v of dom.vcpus) {
      v.timer = 0;
      v.runstate.change(RUNSTATE.offline, now);
    }
    this.timersChanged();
    this.releaseDomainResources(dom);
    const live = dom.vcpus.filter((v) => v.worker !== null);
    if (live.length === 0) return this.finishDestroy(dom);
    for (const v of live) void v.worker!.terminate();
  }

  private releaseDomainResources(dom: Domain): void {
    // Release mappings this domain holds on others' grants.
    for (const [h, m] of dom.maptrack) {
      this.unpin(m);
      dom.maptrack.delete(h);
    }
    // Close its event channels.
    for (const port of [...dom.evtchns.keys()]) this.closePort(dom, port);
    // Remove its vCPUs from the scan.
    for (let i = this.allVcpus.length - 1; i >= 0; i--) if (this.allVcpus[i].domid === dom.domid) this.allVcpus.splice(i, 1);
    this.sched.forget(dom.domid);
    // Its shadow tables (hypervisor frames shared with it only).
    for (const f of this.frames.ownedBy(DOMID_XEN)) if (f.kind === 'shadow' && f.sharers.has(dom.domid)) this.frames.freeExtent(f.mfn);
    this.mmu.forgetDomain(dom.domid);
  }

  private finishDestroy(dom: Domain): void {
    if (dom.state === 'dead') return;
    dom.state = 'dead';
    for (const v of dom.vcpus) v.port.close();
    this.forgetPhysmap(dom);
    for (const f of this.frames.ownedBy(dom.domid)) if (f.pageIndex === 0) this.frames.freeExtent(f.mfn);
    this.frames.forgetDomain(dom.domid);
    this.events.onDomainDestroyed?.(dom.domid, dom.shutdownReason ?? SHUTDOWN.poweroff, dom.crashError);
  }

  /** Destroys every domain and resolves once all their workers have exited. */
  async destroyAll(timeoutMs = 10_000): Promise<void> {
    const workers: Worker[] = [];
    for (const d of this.domains.values()) for (const v of d.vcpus) if (v.worker) workers.push(v.worker);
    const exits = workers.map((w) => new Promise<void>((r) => w.once('exit', () => r())));
    for (const d of [...this.domains.values()].sort((a, b) => b.domid - a.domid)) this.destroy(d.domid);
    await Promise.race([Promise.all(exits), new Promise((r) => setTimeout(r, timeoutMs).unref())]);
  }

  private mustGet(domid: number): Domain {
    const d = this.domains.get(domid);
    if (!d) throw new RangeError(`no domain ${domid}`);
    return d;
  }

  // -------------------------------------------------------------------------
  // Time (hypervisor/time.ts has the views and the guest side)

  /** System time: ns since this hypervisor booted, from the host's monotonic clock. */
  systemNs(): number {
    return tscNow() - this.bootTsc;
  }

  /**
   * Sets a new domain's clocks: `shared_info.wc_*` to the wall time at system time 0,
   * and every vCPU's `vcpu_time_info`.
   */
  private initTime(dom: Domain): void {
    const tsc = tscNow();
    const sys = tsc - this.bootTsc;
    // Wall time now (ms, sub-µs precision: timeOrigin + now), less the system time.
    const bootMs = performance.timeOrigin + performance.now() - sys / 1e6;
    const sec = Math.floor(bootMs / 1000);
    writeWallclock(dom.sharedInfoI32, sec, Math.min(999_999_999, Math.round((bootMs - sec * 1000) * 1e6)));
    for (const v of dom.vcpus) writeVcpuTimeInfo(dom.sharedInfoI32, v.id, tsc, sys);
  }

  /** Re-samples vCPU `v`'s `vcpu_time_info` (system time and the TSC it was taken at). */
  private refreshTime(dom: Domain, v: Vcpu): void {
    const tsc = tscNow();
    writeVcpuTimeInfo(dom.sharedInfoI32, v.id, tsc, tsc - this.bootTsc);
  }

  /**
   * `set_timer_op(timeout)`: arms the calling vCPU's one-shot alarm at absolute system
   * time `timeout` (ns), replacing any earlier one; 0 cancels it; a time already past
   * fires at once. pvio answers EINVAL for a timeout at or above 2^53 ns (Xen clamps
   * far-future ones instead).
   * @see xen.h __HYPERVISOR_set_timer_op, xen/common/sched/core.c do_set_timer_op
   */
  private setTimerOp(dom: Domain, v: Vcpu): number {
    const a = this.copyArgs(v, 0, SET_TIMER_OP_ARGS.size);
    const o = SET_TIMER_OP_ARGS.fields.timeout.offset;
    const hi = a.getUint32(o + 4, true);
    if (hi >= 0x20_0000) return -XEN_ERRNO.EINVAL;
    v.timer = hi * 0x1_0000_0000 + a.getUint32(o, true);
    this.timersChanged();
    if (v.timer !== 0 && v.timer <= this.systemNs()) this.fireTimer(dom, v);
    return 0;
  }

  /**
   * `vcpu_op(cmd, vcpuid, extra_args)` with pvio's argument layout ({@link VCPU_OP_ARGS},
   * the extra struct inline after it). Serves `VCPUOP_get_runstate_info` for any vCPU
   * of the caller's domain; ENOENT for no such vCPU, ENOSYS for other commands.
   * @see vcpu.h
   */
  private vcpuOp(dom: Domain, v: Vcpu, cmd: number): number {
    const a = this.copyArgs(v, 0, VCPU_OP_ARGS.size);
    const target = dom.vcpus[a.getUint32(VCPU_OP_ARGS.fields.vcpuid.offset, true)];
    if (!target) return -XEN_ERRNO.ENOENT;
    switch (cmd) {
      case VCPUOP.get_runstate_info:
        writeRunstateInfo(v.hcDv, HC_ARGS_OFFSET + VCPU_OP_EXTRA_OFFSET, target.runstate.info(this.systemNs()));
        return 0;
      default:
        return -XEN_ERRNO.ENOSYS;
    }
  }

  /** Fires vCPU `v`'s alarm: refreshes its time info and raises `VIRQ_TIMER` on its bound port. */
  private fireTimer(dom: Domain, v: Vcpu): void {
    v.timer = 0;
    this.counters.timerFires++;
    this.refreshTime(dom, v);
    const port = v.virqPorts[VIRQ.timer];
    if (port !== 0) this.setPending(dom, port);
    else this.counters.timerFiresUnbound++;
    this.timersChanged();
  }

  /**
   * Fires every alarm of a running domain that is due (paused domains' alarms wait
   * for {@link unpause}). Cheap when none is armed or due (no clock read when none).
   * @returns how many fired.
   */
  runTimers(): number {
    if (this.earliestTimer === Infinity) return 0;
    const now = this.systemNs();
    if (now < this.earliestTimer) return 0;
    let fired = 0;
    for (const v of this.allVcpus) {
      if (v.timer === 0 || v.timer > now) continue;
      const dom = this.domains.get(v.domid);
      if (!dom || dom.state !== 'running') continue;
      this.fireTimer(dom, v);
      fired++;
    }
    return fired;
  }

  /**
   * How long the service loop may sleep (ms) before the earliest alarm of a running
   * domain falls due, at most `maxMs`; 0 when one is due now.
   */
  timerWaitMs(maxMs: number): number {
    if (this.earliestTimer === Infinity) return maxMs;
    return Math.max(0, Math.min(maxMs, (this.earliestTimer - this.systemNs()) / 1e6));
  }

  /**
   * Recomputes the earliest alarm of a running domain; when it moved earlier, bumps
   * the hypervisor's wake-up word so a service loop parked with a longer timeout
   * re-reads it.
   */
  private timersChanged(): void {
    let earliest = Infinity;
    for (const v of this.allVcpus) {
      if (v.timer === 0 || v.timer >= earliest) continue;
      if (this.domains.get(v.domid)?.state === 'running') earliest = v.timer;
    }
    const sooner = earliest < this.earliestTimer;
    this.earliestTimer = earliest;
    if (sooner) {
      Atomics.add(this.hvWake, 0, 1);
      Atomics.notify(this.hvWake, 0);
    }
  }

  // -------------------------------------------------------------------------
  // The hypercall service loop

  /**
   * Scans every vCPU's hypercall page once, round-robin from where the last scan
   * stopped, and serves each pending call (one slice each). Once some domain's
   * scheduling parameters are not the defaults, the credit scheduler decides which
   * pending calls a pass serves ({@link serviceWeighted}); otherwise this path is
   * unchanged (one extra field test per pass).
   * @returns the number of calls served.
   */
  serviceOnce(): number {
    if (this.sched.active) return this.serviceWeighted();
    const n = this.allVcpus.length;
    let served = 0;
    for (let k = 0; k < n; k++) {
      const v = this.allVcpus[(this.rr + k) % n];
      if (Atomics.load(v.hc, I_STATE) !== HC_STATE.PENDING) continue;
      const dom = this.domains.get(v.domid)!;
      if (dom.state === 'paused' || dom.state === 'dying' || dom.state === 'dead') continue;
      this.serve(dom, v);
      served++;
    }
    if (n > 0) this.rr = (this.rr + 1) % n;
    return served;
  }

  /**
   * One pass with weights and caps (hypervisor/sched-credit.ts): collects the pending
   * calls in scan order, lets {@link CreditScheduler.choose} pick which to serve now
   * (the rest stay pending) and, while some domain has a cap, charges each call's
   * time (ms) to its domain.
   * @returns the number of calls served.
   */
  private serviceWeighted(): number {
    const n = this.allVcpus.length;
    const vs = this.passVcpus;
    const ids = this.passDomids;
    let m = 0;
    for (let k = 0; k < n; k++) {
      const v = this.allVcpus[(this.rr + k) % n];
      if (Atomics.load(v.hc, I_STATE) !== HC_STATE.PENDING) continue;
      const dom = this.domains.get(v.domid)!;
      if (dom.state === 'paused' || dom.state === 'dying' || dom.state === 'dead') continue;
      vs[m] = v;
      ids[m] = v.domid;
      m++;
    }
    if (n > 0) this.rr = (this.rr + 1) % n;
    if (m === 0) return 0;
    const timed = this.sched.hasCaps;
    let t = timed ? performance.now() : 0;
    this.sched.choose(ids, m, this.passServe, t);
    let served = 0;
    for (let i = 0; i < m; i++) {
      const v = vs[i];
      (vs as Array<Vcpu | undefined>)[i] = undefined; // no reference to a destroyed domain's vCPU stays behind
      if (!this.passServe[i]) continue;
      this.serve(this.domains.get(v.domid)!, v);
      served++;
      if (timed) {
        const t1 = performance.now();
        this.sched.charge(v.domid, t1 - t);
        t = t1;
      }
    }
    return served;
  }

  /**
   * How long (ms) the service loop may sleep when a pass served nothing: `maxMs`,
   * or less when a capped domain's call waits for its next cap period.
   */
  serviceIdleWaitMs(maxMs: number): number {
    return this.sched.active ? this.sched.idleWaitMs(performance.now(), maxMs) : maxMs;
  }

  /**
   * `XEN_DOMCTL_scheduler_op` (toolstack only): `putinfo` sets domain `domid`'s
   * credit-scheduler weight (1..65535; 0 leaves it) and cap (percent of one CPU, 0 =
   * none, at most 100 × its vCPUs; 0xffff leaves it); `getinfo` writes them into
   * `op.u.credit`. They apply to its hypercalls at once, and — told by the toolstack —
   * to dom0's backends, blkback and netback (rings/weighted-scheduler.ts).
   * @returns 0; -ESRCH when there is no such live domain; -EINVAL for another
   *   `sched_id` than credit's, an unknown `cmd`, or a weight or cap out of range.
   * @see xen/include/public/domctl.h, xen/common/sched/core.c (sched_adjust)
   */
  domctlSchedulerOp(domid: number, op: XenDomctlSchedulerOp): number {
    const dom = this.domains.get(domid);
    if (!dom || dom.state === 'dying' || dom.state === 'dead') return -XEN_ERRNO.ESRCH;
    if (op.sched_id !== XEN_SCHEDULER.credit) return -XEN_ERRNO.EINVAL;
    switch (op.cmd) {
      case XEN_DOMCTL_SCHEDOP.getinfo:
        op.u.credit = this.sched.params(dom.domid);
        return 0;
      case XEN_DOMCTL_SCHEDOP.putinfo:
        return this.sched.put(dom.domid, dom.vcpus.length, op.u.credit);
      default:
        return -XEN_ERRNO.EINVAL;
    }
  }

  private serve(dom: Domain, v: Vcpu): void {
    const dv = v.hcDv;
    const op = dv.getUint32(HC.op.offset, true);
    const cmd = dv.getUint32(HC.cmd.offset, true);
    const count = dv.getUint32(HC.count.offset, true);
    const start = dv.getUint32(HC.start.offset, true);
    const seq = dv.getUint32(HC.seq.offset, true);
    const name = HYPERCALL_NAME[op] ?? `hypercall_${op}`;
    this.counters.hypercalls[name] = (this.counters.hypercalls[name] ?? 0) + 1;
    dom.hypercalls++;
    // Xen refreshes a vCPU's time info when it schedules it; pvio does when it serves it.
    this.refreshTime(dom, v);
    const out: Outgoing = { vcpu: v.id, handles: [], info: [] };
    let result = 0;
    let progress = 0;
    let preempted = false;
    try {
      switch (op) {
        case HYPERVISOR.grant_table_op:
          ({ result, progress, preempted } = this.grantTableOp(dom, v, cmd, count, start, out));
          break;
        case HYPERVISOR.event_channel_op:
          result = this.eventChannelOp(dom, v, cmd, out);
          break;
        case HYPERVISOR.memory_op:
          result = this.memoryOp(dom, v, cmd, out);
          break;
        case HYPERVISOR.sched_op:
          result = this.schedOp(dom, v, cmd);
          break;
        case HYPERVISOR.xen_version:
          result = (4 << 16) | 17;
          break;
        case HYPERVISOR.set_timer_op:
          result = this.setTimerOp(dom, v);
          break;
        case HYPERVISOR.vcpu_op:
          result = this.vcpuOp(dom, v, cmd);
          break;
        default:
          if (MMU_HYPERCALLS.has(op)) {
            this.mmuOut = out;
            try {
              result = this.mmu.serve(dom.domid, v.id, op, cmd, count, this.copyArgs(v, 0, MMU_PAGE_ARGS_BYTES), new DataView(v.hcDv.buffer, v.hcDv.byteOffset + HC_ARGS_OFFSET, HC_ARGS_BYTES));
            } finally {
              this.mmuOut = null;
            }
          } else result = -XEN_ERRNO.ENOSYS;
      }
    } catch (e) {
      // A guest's arguments may make a DataView access fail: that is its fault (EFAULT).
      if (e instanceof RangeError) result = -XEN_ERRNO.EFAULT;
      else throw e;
    }
    if (preempted) this.counters.preemptions++;
    let posted = 0;
    if (out.handles.length > 0 || out.info.length > 0) {
      // Handles travel before the completion store so the guest finds them at once.
      v.port.postMessage({ seq, handles: out.handles, info: out.info });
      posted = 1;
    }
    dv.setInt32(HC.result.offset, result, true);
    dv.setUint32(HC.progress.offset, progress, true);
    dv.setUint32(HC.preempted.offset, preempted ? 1 : 0, true);
    dv.setUint32(HC.posted.offset, posted, true);
    // The completion store publishes the result fields written above.
    Atomics.store(v.hc, I_STATE, HC_STATE.DONE);
    Atomics.notify(v.hc, I_STATE);
    if (dom.state === 'dying' && v.worker) void v.worker.terminate();
  }

  /** Copies `bytes` of argument structs starting at `offset` into private memory. */
  private copyArgs(v: Vcpu, offset: number, bytes: number): DataView {
    if (offset < 0 || bytes < 0 || offset + bytes > HC_ARGS_BYTES) throw new RangeError('arguments past the hypercall page');
    this.argCopy.set(v.hcU8.subarray(HC_ARGS_OFFSET + offset, HC_ARGS_OFFSET + offset + bytes));
    return this.argDv;
  }

  // -------------------------------------------------------------------------
  // Grant tables

  private grantTableOp(dom: Domain, v: Vcpu, cmd: number, count: number, start: number, out: Outgoing):
    { result: number; progress: number; preempted: boolean } {
    const size = cmd === GNTTABOP.map_grant_ref ? GNTTAB_MAP_GRANT_REF.size
      : cmd === GNTTABOP.unmap_grant_ref ? GNTTAB_UNMAP_GRANT_REF.size
        : cmd === GNTTABOP.copy ? GNTTAB_COPY.size
          : cmd === GNTTABOP.query_size ? GNTTAB_QUERY_SIZE.size : 0;
    if (size === 0) return { result: -XEN_ERRNO.ENOSYS, progress: 0, preempted: false };
    if (count * size > HC_ARGS_BYTES || start > count) return { result: -XEN_ERRNO.EINVAL, progress: 0, preempted: false };
    const end = Math.min(count, start + MAX_OPS_PER_SLICE);
    const args = this.copyArgs(v, start * size, (end - start) * size);
    const o = v.hcDv; // outputs go back into the guest's page, as Xen writes guest memory
    for (let i = start; i < end; i++) {
      const a = (i - start) * size;
      const g = HC_ARGS_OFFSET + i * size;
      switch (cmd) {
        case GNTTABOP.map_grant_ref: this.mapGrantRef(dom, args, a, o, g, out); break;
        case GNTTABOP.unmap_grant_ref: this.unmapGrantRef(dom, args, a, o, g); break;
        case GNTTABOP.copy: this.grantCopy(dom, args, a, o, g); break;
        case GNTTABOP.query_size: this.querySize(dom, args, a, o, g); break;
      }
    }
    return { result: 0, progress: end, preempted: end < count };
  }

  private querySize(dom: Domain, a: DataView, ao: number, o: DataView, go: number): void {
    const F = GNTTAB_QUERY_SIZE.fields;
    const d = a.getUint16(ao + F.dom.offset, true);
    const target = d === DOMID_SELF || d === dom.domid ? dom : (dom.privileged ? this.domains.get(d) : undefined);
    if (!target) { o.setInt16(go + F.status.offset, GNTST.bad_domain, true); return; }
    o.setUint32(go + F.nr_frames.offset, target.nrGrantEntries / GRANT_ENTRIES_PER_FRAME, true);
    o.setUint32(go + F.max_nr_frames.offset, target.nrGrantEntries / GRANT_ENTRIES_PER_FRAME, true);
    o.setInt16(go + F.status.offset, GNTST.okay, true);
  }

  /**
   * Sets GTF_reading (and GTF_writing unless read-only) on `granter`'s entry `ref`
   * for `mapper`, with one 32-bit compare-exchange over flags and domid together,
   * retried a bounded number of times (Xen's `_set_status_v1`).
   * @returns a GNTST code and the frame the entry names.
   */
  private pinGrant(granter: Domain, ref: number, mapper: DomId, readonly: boolean): { status: number; mfn: Mfn } {
    if (ref >= granter.nrGrantEntries) return { status: GNTST.bad_gntref, mfn: 0 as Mfn };
    const w = ref * 2; // u32 index of {flags, domid}
    let retries = 0;
    for (;;) {
      const scombo = Atomics.load(granter.gtU32, w);
      const flags = scombo & 0xffff;
      const domid = scombo >>> 16;
      if ((flags & GTF.type_mask) !== GTF.permit_access || domid !== mapper) return { status: GNTST.general_error, mfn: 0 as Mfn };
      if (!readonly && (flags & GTF.readonly)) return { status: GNTST.general_error, mfn: 0 as Mfn };
      const next = (scombo | GTF.reading | (readonly ? 0 : GTF.writing)) >>> 0;
      if (next === scombo || Atomics.compareExchange(granter.gtU32, w, scombo, next) === scombo) break;
      if (++retries >= GNT_CAS_RETRIES) return { status: GNTST.general_error, mfn: 0 as Mfn }; // "unstable"
    }
    const act = granter.active.get(ref);
    let mfn: Mfn;
    if (act) {
      mfn = act.mfn;
    } else {
      // The frame is read after the flags are pinned, so it cannot change under us.
      mfn = granter.gtDv.getUint32(ref * GRANT_ENTRY_V1.size + GE_FRAME, true) as Mfn;
      const f = this.frames.get(mfn);
      if (!f || f.owner !== granter.domid || f.kind !== 'ram') {
        this.clearGrantFlags(granter, ref, true, true);
        return { status: GNTST.general_error, mfn: 0 as Mfn };
      }
      granter.active.set(ref, { readPins: 0, writePins: 0, mfn });
    }
    const a2 = granter.active.get(ref)!;
    if (readonly) a2.readPins++; else a2.writePins++;
    return { status: GNTST.okay, mfn };
  }

  private clearGrantFlags(granter: Domain, ref: number, reading: boolean, writing: boolean): void {
    const mask = (reading ? GTF.reading : 0) | (writing ? GTF.writing : 0);
    Atomics.and(granter.gtU32, ref * 2, ~mask >>> 0);
  }

  /** Drops one pin taken by {@link pinGrant}; clears the flags as the pins reach zero. */
  private unpin(m: MapTrack): void {
    const granter = this.domains.get(m.granter);
    const f = this.frames.get(m.mfn);
    if (f) f.mapCount--;
    if (granter && granter.state !== 'dead') {
      const act = granter.active.get(m.ref);
      if (act) {
        if (m.readonly) act.readPins--; else act.writePins--;
        const clearW = act.writePins === 0;
        const clearR = act.writePins + act.readPins === 0;
        this.clearGrantFlags(granter, m.ref, clearR, clearW);
        if (clearR) granter.active.delete(m.ref);
      }
    } else if (f && f.mapCount === 0 && granter?.state === 'dead') {
      this.frames.freeExtent(f.extentBase);
    }
  }

  private mapGrantRef(dom: Domain, a: DataView, ao: number, o: DataView, go: number, out: Outgoing): void {
    const F = GNTTAB_MAP_GRANT_REF.fields;
    this.counters.grantMaps++;
    const flags = a.getUint32(ao + F.flags.offset, true);
    const ref = a.getUint32(ao + F.ref.offset, true);
    const d = a.getUint16(ao + F.dom.offset, true);
    const fail = (st: number) => o.setInt16(go + F.status.offset, st, true);
    if (!(flags & (GNTMAP.host_map | GNTMAP.device_map))) return fail(GNTST.general_error);
    const granter = this.domains.get(d);
    if (!granter || granter.state === 'dead' || granter.state === 'dying' || d === dom.domid) return fail(GNTST.bad_domain);
    const readonly = (flags & GNTMAP.readonly) !== 0;
    const { status, mfn } = this.pinGrant(granter, ref, dom.domid, readonly);
    if (status !== GNTST.okay) return fail(status);
    const frame = this.frames.get(mfn)!;
    frame.mapCount++;
    const handle = dom.nextHandle++;
    dom.maptrack.set(handle, { granter: granter.domid, ref, readonly, mfn });
    const h = this.frames.give(dom.domid, out.vcpu, frame, `map_grant_ref dom${d} ref ${ref}`);
    if (h) out.handles.push(h);
    o.setUint32(go + F.handle.offset, handle, true);
    writeU64(o, go + F.dev_bus_addr.offset, mfn * PAGE_SIZE);
    o.setInt16(go + F.status.offset, GNTST.okay, true);
  }

  private unmapGrantRef(dom: Domain, a: DataView, ao: number, o: DataView, go: number): void {
    const F = GNTTAB_UNMAP_GRANT_REF.fields;
    this.counters.grantUnmaps++;
    const handle = a.getUint32(ao + F.handle.offset, true);
    const m = dom.maptrack.get(handle);
    if (!m) return o.setInt16(go + F.status.offset, GNTST.bad_handle, true);
    dom.maptrack.delete(handle);
    this.unpin(m);
    o.setInt16(go + F.status.offset, GNTST.okay, true);
  }

  private grantCopy(dom: Domain, a: DataView, ao: number, o: DataView, go: number): void {
    const F = GNTTAB_COPY.fields;
    this.counters.grantCopies++;
    const flags = a.getUint16(ao + F.flags.offset, true);
    const len = a.getUint16(ao + F.len.offset, true);
    const so = a.getUint16(ao + F.source_offset.offset, true);
    const doff = a.getUint16(ao + F.dest_offset.offset, true);
    const fail = (st: number) => o.setInt16(go + F.status.offset, st, true);
    if (so + len > PAGE_SIZE || doff + len > PAGE_SIZE) return fail(GNTST.bad_copy_arg);
    const src = this.copySide(dom, a, ao + F.source_u.offset, ao + F.source_domid.offset, (flags & GNTCOPY.source_gref) !== 0, true);
    if (typeof src === 'number') return fail(src);
    const dst = this.copySide(dom, a, ao + F.dest_u.offset, ao + F.dest_domid.offset, (flags & GNTCOPY.dest_gref) !== 0, false);
    if (typeof dst === 'number') {
      src.release();
      return fail(dst);
    }
    const s = new Uint8Array(src.frame.buffer!, src.frame.pageIndex * PAGE_SIZE + so, len);
    const d = new Uint8Array(dst.frame.buffer!, dst.frame.pageIndex * PAGE_SIZE + doff, len);
    d.set(s);
    this.counters.grantCopyBytes += len;
    src.release();
    dst.release();
    o.setInt16(go + F.status.offset, GNTST.okay, true);
  }

  /** Resolves one side of a grant copy to a frame, pinning a gref for the copy's duration. */
  private copySide(dom: Domain, a: DataView, uOff: number, domOff: number, isGref: boolean, isSource: boolean):
    { frame: Frame; release(): void } | number {
    const d = a.getUint16(domOff, true);
    if (!isGref) {
      if (d !== DOMID_SELF && d !== dom.domid) return GNTST.permission_denied;
      let mfn: number;
      try { mfn = readU64(a, uOff); } catch { return GNTST.bad_page; }
      const f = this.frames.get(mfn);
      if (!f || f.owner !== dom.domid || f.kind !== 'ram') return GNTST.bad_page;
      return { frame: f, release() {} };
    }
    const ref = a.getUint32(uOff, true);
    const granter = this.domains.get(d);
    if (!granter || granter.state === 'dead' || granter.state === 'dying') return GNTST.bad_domain;
    const { status, mfn } = this.pinGrant(granter, ref, dom.domid, isSource);
    if (status !== GNTST.okay) return status;
    const f = this.frames.get(mfn)!;
    const m: MapTrack = { granter: granter.domid, ref, readonly: isSource, mfn };
    f.mapCount++;
    return { frame: f, release: () => this.unpin(m) };
  }

  private seedGrant(dom: Domain, ref: number, mfn: Mfn, to: DomId): void {
    dom.gtDv.setUint32(ref * GRANT_ENTRY_V1.size + GE_FRAME, mfn, true);
    Atomics.store(dom.gtU32, ref * 2, ((to << 16) | GTF.permit_access) >>> 0);
  }

  // -------------------------------------------------------------------------
  // Event channels (setup only; sends never come here)

  private allocUnbound(dom: Domain, remote: DomId): number {
    for (let p = 1; p < NR_EVENT_CHANNELS; p++) {
      if (!dom.evtchns.has(p)) {
        dom.evtchns.set(p, { state: 'unbound', remoteDom: remote, remotePort: 0, vcpu: 0 });
        return p;
      }
    }
    return -XEN_ERRNO.ENOSPC;
  }

  private pairPage(receiver: DomId, sender: DomId): Frame {
    const key = `${receiver}:${sender}`;
    let f = this.pairs.get(key);
    if (!f) {
      [f] = this.frames.alloc(DOMID_XEN, 0, 'evtchn-pair', [receiver, sender]);
      this.pairs.set(key, f);
      this.domains.get(receiver)?.pairPages.set(sender, f);
    }
    return f;
  }

  /**
   * Binding info for the `port` end of `local`, and the frames that end needs: the
   * two pair pages and the wake page of the remote vCPU its sends notify.
   */
  private bindingInfo(local: Domain, port: number, remote: Domain, remotePort: number): { info: BindingInfo; frames: Array<[Frame, string]> } {
    const sendPage = this.pairPage(remote.domid, local.domid);
    const recvPage = this.pairPage(local.domid, remote.domid);
    const rv = remote.vcpus[remote.evtchns.get(remotePort)?.vcpu ?? 0];
    // A bound sender may bump the remote vCPU's wake word: it now shares that page.
    rv.wakeFrame.sharers.add(local.domid);
    return {
      info: {
        kind: 'bound', port, vcpu: local.evtchns.get(port)?.vcpu ?? 0, remoteDom: remote.domid, remotePort,
        sendPage: sendPage.mfn, recvPage: recvPage.mfn, remoteWake: rv.wakeFrame.mfn,
      },
      frames: [[sendPage, 'evtchn pair (send)'], [recvPage, 'evtchn pair (receive)'], [rv.wakeFrame, `wake page of dom${remote.domid}`]],
    };
  }

  /**
   * Tells every vCPU of `dom` about a port (each keeps its own view of the domain's
   * bindings): the calling vCPU in its answer `out`, the others by a push.
   */
  private announce(dom: Domain, info: BindingInfo | PortInfo, frames: Array<[Frame, string]>, out: Outgoing | null): void {
    for (const v of dom.vcpus) {
      const handles: ExtentHandle[] = [];
      for (const [f, why] of frames) {
        const h = this.frames.give(dom.domid, v.id, f, why);
        if (h) handles.push(h);
      }
      if (out && v.id === out.vcpu) {
        out.handles.push(...handles);
        out.info.push(info);
      } else {
        this.pushTo(dom, v, handles, [info]);
      }
    }
  }

  /** Announces both ends of the interdomain channel `dom:port` ↔ `remote:remotePort` (the caller's in `out`). */
  private announceBinding(dom: Domain, port: number, remote: Domain, remotePort: number, out: Outgoing): void {
    const mine = this.bindingInfo(dom, port, remote, remotePort);
    this.announce(dom, mine.info, mine.frames, out);
    const theirs = this.bindingInfo(remote, remotePort, dom, port);
    this.announce(remote, theirs.info, theirs.frames, remote === dom ? out : null);
  }

  private eventChannelOp(dom: Domain, v: Vcpu, cmd: number, out: Outgoing): number {
    switch (cmd) {
      case EVTCHNOP.alloc_unbound: {
        const F = EVTCHN_ALLOC_UNBOUND.fields;
        const a = this.copyArgs(v, 0, EVTCHN_ALLOC_UNBOUND.size);
        const d = a.getUint16(F.dom.offset, true);
        const remote = a.getUint16(F.remote_dom.offset, true) as DomId;
        const target = d === DOMID_SELF || d === dom.domid ? dom : (dom.privileged ? this.domains.get(d) : undefined);
        if (!target) return d === DOMID_SELF || this.domains.has(d) ? -XEN_ERRNO.EPERM : -XEN_ERRNO.ESRCH;
        const port = this.allocUnbound(target, remote === DOMID_SELF ? target.domid : remote);
        if (port < 0) return port;
        v.hcDv.setUint32(HC_ARGS_OFFSET + F.port.offset, port, true);
        return 0;
      }
      case EVTCHNOP.bind_interdomain: {
        const F = EVTCHN_BIND_INTERDOMAIN.fields;
        const a = this.copyArgs(v, 0, EVTCHN_BIND_INTERDOMAIN.size);
        const rd = a.getUint16(F.remote_dom.offset, true);
        const rport = a.getUint32(F.remote_port.offset, true);
        const remote = this.domains.get(rd === DOMID_SELF ? dom.domid : rd);
        if (!remote || remote.state === 'dead' || remote.state === 'dying') return -XEN_ERRNO.ESRCH;
        const rch = remote.evtchns.get(rport);
        if (!rch || rch.state !== 'unbound' || rch.remoteDom !== dom.domid) return -XEN_ERRNO.EINVAL;
        const lport = this.allocUnbound(dom, remote.domid);
        if (lport < 0) return lport;
        dom.evtchns.set(lport, { state: 'interdomain', remoteDom: remote.domid, remotePort: rport, vcpu: 0 });
        rch.state = 'interdomain';
        rch.remotePort = lport;
        this.announceBinding(dom, lport, remote, rport, out);
        v.hcDv.setUint32(HC_ARGS_OFFSET + F.local_port.offset, lport, true);
        // Xen sets the local port pending on bind, covering sends made before it.
        this.setPending(dom, lport);
        return 0;
      }
      case EVTCHNOP.bind_virq: {
        // Xen's evtchn_bind_virq: a new port of the caller, raised by the hypervisor on
        // vCPU `vcpu`. pvio raises VIRQ_TIMER only, so it binds only that (per-vCPU) VIRQ.
        const F = EVTCHN_BIND_VIRQ.fields;
        const a = this.copyArgs(v, 0, EVTCHN_BIND_VIRQ.size);
        const virq = a.getUint32(F.virq.offset, true);
        const vcpu = a.getUint32(F.vcpu.offset, true);
        if (virq !== VIRQ.timer) return -XEN_ERRNO.EINVAL;
        const target = dom.vcpus[vcpu];
        if (!target) return -XEN_ERRNO.ENOENT;
        if (target.virqPorts[virq] !== 0) return -XEN_ERRNO.EEXIST;
        const port = this.allocUnbound(dom, dom.domid);
        if (port < 0) return port;
        dom.evtchns.set(port, { state: 'virq', remoteDom: dom.domid, remotePort: 0, vcpu, virq });
        target.virqPorts[virq] = port;
        this.announce(dom, { kind: 'virq', port, vcpu, virq }, [], out);
        v.hcDv.setUint32(HC_ARGS_OFFSET + F.port.offset, port, true);
        return 0;
      }
      case EVTCHNOP.close: {
        const a = this.copyArgs(v, 0, EVTCHN_PORT_ARG.size);
        const port = a.getUint32(EVTCHN_PORT_ARG.fields.port.offset, true);
        if (!dom.evtchns.has(port)) return -XEN_ERRNO.EINVAL;
        this.closePort(dom, port);
        this.announce(dom, { kind: 'closed', port }, [], out);
        return 0;
      }
      case EVTCHNOP.bind_vcpu: {
        const F = EVTCHN_BIND_VCPU.fields;
        const a = this.copyArgs(v, 0, EVTCHN_BIND_VCPU.size);
        const port = a.getUint32(F.port.offset, true);
        const vcpu = a.getUint32(F.vcpu.offset, true);
        if (vcpu >= dom.vcpus.length) return -XEN_ERRNO.ENOENT;
        const ch = dom.evtchns.get(port);
        if (!ch) return -XEN_ERRNO.EINVAL;
        if (ch.state === 'virq') return -XEN_ERRNO.EINVAL; // per-vCPU VIRQs stay on their vCPU
        ch.vcpu = vcpu;
        if (ch.state === 'interdomain') {
          const remote = this.domains.get(ch.remoteDom);
          if (remote && remote.state !== 'dead') {
            // The peer's sends now wake the new vCPU.
            this.announceBinding(dom, port, remote, ch.remotePort, out);
          }
        }
        // An event already pending moves with the port (its upcall is raised there).
        if (isPortDeliverable(dom.sharedInfoI32, port)) {
          raiseUpcall(dom.sharedInfoI32, port, vcpu);
          this.kick(dom.vcpus[vcpu]);
        }
        return 0;
      }
      case EVTCHNOP.status: {
        const F = EVTCHN_STATUS.fields;
        const a = this.copyArgs(v, 0, EVTCHN_STATUS.size);
        const d = a.getUint16(F.dom.offset, true);
        const port = a.getUint32(F.port.offset, true);
        const target = d === DOMID_SELF || d === dom.domid ? dom : (dom.privileged ? this.domains.get(d) : undefined);
        if (!target) return -XEN_ERRNO.ESRCH;
        if (port >= NR_EVENT_CHANNELS) return -XEN_ERRNO.EINVAL;
        const ch = target.evtchns.get(port);
        const o = v.hcDv;
        const base = HC_ARGS_OFFSET;
        o.setUint32(base + F.vcpu.offset, ch?.vcpu ?? 0, true);
        if (ch?.state === 'virq') {
          o.setUint32(base + F.status.offset, EVTCHNSTAT.virq, true);
          o.setUint32(base + EVTCHN_STATUS_VIRQ.fields.virq.offset, ch.virq ?? 0, true); // u.virq
          o.setUint32(base + F.remote_port.offset, 0, true);
          return 0;
        }
        o.setUint32(base + F.status.offset, !ch ? EVTCHNSTAT.closed : ch.state === 'unbound' ? EVTCHNSTAT.unbound : EVTCHNSTAT.interdomain, true);
        o.setUint16(base + F.remote_dom.offset, ch?.remoteDom ?? 0, true);
        o.setUint32(base + F.remote_port.offset, ch?.state === 'interdomain' ? ch.remotePort : 0, true);
        return 0;
      }
      default:
        return -XEN_ERRNO.ENOSYS;
    }
  }

  /** Closes `port` of `dom`; an interdomain peer end returns to unbound (Xen's `evtchn_close`). */
  private closePort(dom: Domain, port: number): void {
    const ch = dom.evtchns.get(port);
    if (!ch) return;
    dom.evtchns.delete(port);
    if (ch.state === 'virq') {
      const vc = dom.vcpus[ch.vcpu];
      if (vc && vc.virqPorts[ch.virq ?? 0] === port) vc.virqPorts[ch.virq ?? 0] = 0;
    }
    if (ch.state === 'interdomain') {
      const remote = this.domains.get(ch.remoteDom);
      const rch = remote?.evtchns.get(ch.remotePort);
      if (remote && rch && rch.state === 'interdomain' && rch.remotePort === port && rch.remoteDom === dom.domid) {
        rch.state = 'unbound';
        rch.remotePort = 0;
        if (remote !== dom && remote.state !== 'dead') this.announce(remote, { kind: 'unbound', port: ch.remotePort }, [], null);
      }
    }
  }

  /**
   * Marks `port` pending in `dom`'s shared_info and raises the upcall, as Xen's
   * `evtchn_set_pending` does (used on bind; sends from peers use pair pages).
   */
  private setPending(dom: Domain, port: number): void {
    const vcpu = dom.evtchns.get(port)?.vcpu ?? 0;
    if (setPortPending(dom.sharedInfoI32, port, vcpu)) this.kick(dom.vcpus[vcpu]);
  }

  /** Posts unsolicited handles/info to vCPU `v` of `dom` and wakes it. */
  private pushTo(dom: Domain, v: Vcpu, handles: ExtentHandle[], info: Array<BindingInfo | PortInfo>): void {
    if (dom.state === 'dead') return;
    v.port.postMessage({ push: true, handles, info });
    Atomics.add(v.hc, I_PUSHSEQ, 1);
    this.kick(v);
  }

  private kick(v: Vcpu): void {
    Atomics.add(v.wake, I_WAKE, 1);
    Atomics.notify(v.wake, I_WAKE);
  }

  // -------------------------------------------------------------------------
  // Memory and scheduling

  /**
   * Per domain: how many pfns its P2M holds (for the audit) and a floor below which
   * every pfn is populated (where the search for the lowest free pfn starts).
   */
  private readonly pfnState = new Map<number, { count: number; floor: number }>();

  private pfnsOf(dom: Domain): { count: number; floor: number } {
    let s = this.pfnState.get(dom.domid);
    if (!s) this.pfnState.set(dom.domid, (s = { count: 0, floor: 0 }));
    return s;
  }

  /** The lowest pseudo-physical frame number of `dom` that has no frame. */
  private lowestFreePfn(dom: Domain): number {
    const s = this.pfnsOf(dom);
    while (this.physmap.mfnOf(dom.domid, s.floor) !== undefined) s.floor++;
    return s.floor;
  }

  /** Enters RAM frame `mfn` of `dom` at `pfn` in the P2M and the M2P (`pfn` must be free). */
  private physmapAdd(dom: Domain, pfn: number, mfn: number): void {
    invariant(this.physmap.mfnOf(dom.domid, pfn) === undefined, `pfn ${pfn} of dom${dom.domid} is populated`);
    this.physmap.set(dom.domid, pfn, mfn);
    this.pfnsOf(dom).count++;
  }

  /** Forgets the pfn of `dom`'s frame `mfn` (given back or freed), if it has one. */
  private physmapRemove(dom: Domain, mfn: number): void {
    const e = this.physmap.pfnOf(mfn);
    if (!e || e.domid !== dom.domid) return;
    this.physmap.clear(dom.domid, e.pfn);
    const s = this.pfnsOf(dom);
    s.count--;
    if (e.pfn < s.floor) s.floor = e.pfn;
  }

  /** Forgets a dead domain's P2M and its frames' M2P entries. */
  private forgetPhysmap(dom: Domain): void {
    for (const f of this.frames.ownedBy(dom.domid)) this.physmapRemove(dom, f.mfn);
    this.pfnState.delete(dom.domid);
  }

  /** Allocates an extent of RAM for `dom`, counts it and posts its handle to the calling vCPU. */
  private allocRam(dom: Domain, order: number, why: string, out: Outgoing): Frame[] {
    const fr = this.frames.alloc(dom.domid, order, 'ram');
    dom.ramPages += fr.length;
    const h = this.frames.give(dom.domid, out.vcpu, fr[0], why);
    if (h) out.handles.push(h);
    return fr;
  }

  /**
   * `__HYPERVISOR_memory_op`. Every RAM frame a domain holds has a pseudo-physical
   * frame number (pfn) in its P2M, kept here ({@link physmap}): the XenStore and
   * console pages get pfns 0 and 1 at creation, `increase_reservation` gives each page
   * of each extent the lowest free pfn, `populate_physmap` the pfns the guest names,
   * and `decrease_reservation` (and destruction) forgets them. All counts are pages
   * and all numbers frame numbers (not bytes).
   *
   * - `increase_reservation` / `decrease_reservation` / `populate_physmap`: a
   *   {@link XEN_MEMORY_RESERVATION} with its list inline; the answer is the number of
   *   extents done (a short count when one fails, as Xen's `nr_done`: quota
   *   `maxPages` reached, a pfn already populated — Xen's `-EBUSY` inside, never
   *   returned — a frame not the caller's or still mapped by a peer, a frame number
   *   ≥ 2^53 or a pfn past 2^40 − 1); at most {@link MAX_OPS_PER_SLICE} extents per call.
   *   `-EINVAL` for an order above {@link MAX_EXTENT_ORDER} or a list past the page,
   *   `-EPERM` for another domain.
   * - `current_reservation` / `maximum_reservation`: a {@link XEN_MEMORY_DOMAIN}; the
   *   answer is pages (`ramPages` / `maxPages`). `-ESRCH` for no such domain, `-EPERM`
   *   for another domain unless the caller is privileged.
   * - `translate_gpfn_list` / `pvio_machphys_lookup`: see {@link translateOp}.
   * @see xen/common/memory.c, xen/include/public/memory.h
   */
  private memoryOp(dom: Domain, v: Vcpu, cmd: number, out: Outgoing): number {
    switch (cmd) {
      case XENMEM.increase_reservation:
      case XENMEM.decrease_reservation:
      case XENMEM.populate_physmap:
        return this.reservationOp(dom, v, cmd, out);
      case XENMEM.current_reservation:
      case XENMEM.maximum_reservation: {
        const d = this.copyArgs(v, 0, XEN_MEMORY_DOMAIN.size).getUint16(XEN_MEMORY_DOMAIN.fields.domid.offset, true);
        const target = this.memopTarget(dom, d);
        if (typeof target === 'number') return target;
        return cmd === XENMEM.current_reservation ? target.ramPages : target.maxPages;
      }
      case XENMEM.translate_gpfn_list:
      case XENMEM.pvio_machphys_lookup:
        return this.translateOp(dom, v, cmd);
      default:
        return -XEN_ERRNO.ENOSYS;
    }
  }

  /** The domain a memory_op names: the caller, or (privileged callers only) another. @returns it or `-errno`. */
  private memopTarget(dom: Domain, d: number): Domain | number {
    if (d === DOMID_SELF || d === dom.domid) return dom;
    const t = this.domains.get(d);
    if (!t || t.state === 'dead') return -XEN_ERRNO.ESRCH;
    return dom.privileged ? t : -XEN_ERRNO.EPERM;
  }

  private reservationOp(dom: Domain, v: Vcpu, cmd: number, out: Outgoing): number {
    const F = XEN_MEMORY_RESERVATION.fields;
    const hdr = this.copyArgs(v, 0, XEN_MEMORY_RESERVATION.size);
    const nr = guestU64(hdr, F.nr_extents.offset);
    const order = hdr.getUint32(F.extent_order.offset, true);
    const d = hdr.getUint16(F.domid.offset, true);
    if (d !== DOMID_SELF && d !== dom.domid) return -XEN_ERRNO.EPERM;
    if (order > MAX_EXTENT_ORDER) return -XEN_ERRNO.EINVAL;
    const listOff = XEN_MEMORY_RESERVATION.size;
    if (nr < 0 || listOff + nr * 8 > HC_ARGS_BYTES) return -XEN_ERRNO.EINVAL;
    const o = v.hcDv;
    const slot = (i: number) => HC_ARGS_OFFSET + listOff + i * 8;
    const pages = 1 << order;
    let done = 0;
    if (cmd === XENMEM.increase_reservation) {
      for (; done < nr && done < MAX_OPS_PER_SLICE; done++) {
        if (dom.ramPages + pages > dom.maxPages) break;
        const fr = this.allocRam(dom, order, 'increase_reservation', out);
        for (const f of fr) this.physmapAdd(dom, this.lowestFreePfn(dom), f.mfn);
        writeU64(o, slot(done), fr[0].mfn);
      }
      return done;
    }
    // The list is read from the private copy (the header copy is no longer needed).
    const list = this.copyArgs(v, listOff, nr * 8);
    if (cmd === XENMEM.populate_physmap) {
      for (; done < nr && done < MAX_OPS_PER_SLICE; done++) {
        const gpfn = guestU64(list, done * 8);
        if (gpfn < 0 || gpfn + pages - 1 > MAX_PTE_FRAME) break;
        if (dom.ramPages + pages > dom.maxPages) break;
        let busy = false;
        for (let j = 0; j < pages && !busy; j++) busy = this.physmap.mfnOf(dom.domid, gpfn + j) !== undefined;
        if (busy) break; // Xen: -EBUSY from the p2m, reported as a short count
        const fr = this.allocRam(dom, order, 'populate_physmap', out);
        for (let j = 0; j < pages; j++) this.physmapAdd(dom, gpfn + j, fr[j].mfn);
        writeU64(o, slot(done), fr[0].mfn); // PV: the MFN base goes back in place of the GPFN
      }
      return done;
    }
    // decrease_reservation: MFN bases of whole extents of this order.
    for (; done < nr && done < MAX_OPS_PER_SLICE; done++) {
      const mfn = guestU64(list, done * 8);
      const f = mfn < 0 ? undefined : this.frames.get(mfn);
      if (!f || f.owner !== dom.domid || f.kind !== 'ram' || f.extentBase !== mfn || f.extentOrder !== order) break;
      if (this.frames.freeExtent(mfn) === 0) break; // still mapped by a peer
      for (let j = 0; j < pages; j++) this.physmapRemove(dom, mfn + j);
      dom.ramPages -= pages;
    }
    return done;
  }

  /**
   * `XENMEM_translate_gpfn_list` (P2M: each pfn of the list becomes its MFN, or
   * `INVALID_MFN` for a hole) and `XENMEM_pvio_machphys_lookup` (M2P: each MFN becomes
   * its pfn, or `INVALID_M2P_ENTRY` when the frame is not a RAM frame of the named
   * domain). The argument is a {@link XEN_TRANSLATE_GPFN_LIST} with `nr_gpfns` u64
   * entries inline after it, translated in place (lookups are cheap: a whole page of
   * them, up to 500, is served in one call). @returns 0, `-EINVAL` for a list past the
   * page, `-ESRCH`/`-EPERM` as {@link memopTarget}.
   */
  private translateOp(dom: Domain, v: Vcpu, cmd: number): number {
    const F = XEN_TRANSLATE_GPFN_LIST.fields;
    const hdr = this.copyArgs(v, 0, XEN_TRANSLATE_GPFN_LIST.size);
    const target = this.memopTarget(dom, hdr.getUint16(F.domid.offset, true));
    const nr = guestU64(hdr, F.nr_gpfns.offset);
    if (typeof target === 'number') return target;
    const listOff = XEN_TRANSLATE_GPFN_LIST.size;
    if (nr < 0 || listOff + nr * 8 > HC_ARGS_BYTES) return -XEN_ERRNO.EINVAL;
    const list = this.copyArgs(v, listOff, nr * 8);
    const o = v.hcDv;
    for (let i = 0; i < nr; i++) {
      const x = guestU64(list, i * 8);
      let answer: number | undefined;
      if (x >= 0) {
        if (cmd === XENMEM.translate_gpfn_list) {
          answer = this.physmap.mfnOf(target.domid, x);
        } else {
          const e = this.physmap.pfnOf(x);
          answer = e && e.domid === target.domid ? e.pfn : undefined;
        }
      }
      const at = HC_ARGS_OFFSET + listOff + i * 8;
      if (answer === undefined) {
        o.setUint32(at, INVALID_FRAME_U32, true);
        o.setUint32(at + 4, INVALID_FRAME_U32, true);
      } else {
        writeU64(o, at, answer);
      }
    }
    return 0;
  }

  private schedOp(dom: Domain, v: Vcpu, cmd: number): number {
    switch (cmd) {
      case SCHEDOP.yield:
      case SCHEDOP.block:
        return 0;
      case SCHEDOP.shutdown: {
        const a = this.copyArgs(v, 0, SCHED_SHUTDOWN.size);
        const reason = a.getUint32(SCHED_SHUTDOWN.fields.reason.offset, true);
        queueMicrotask(() => this.shutdownDomain(dom, reason));
        return 0;
      }
      default:
        return -XEN_ERRNO.ENOSYS;
    }
  }

  // -------------------------------------------------------------------------
  // Audit

  /**
   * Checks the handle log: every extent posted to a domain must be owned by it,
   * mapped through a grant it was given, or a hypervisor frame it shares. Checks the
   * P2M/M2P against the frame table too: for each domain not yet dead, every live RAM
   * frame it owns has a pfn whose P2M entry names that frame, and its P2M holds
   * exactly `ramPages` entries (so none names a frame given back or not its own).
   * @returns the violations (empty when the audit passes), the number of log
   *   entries, and each live domain's P2M as `[pfn, mfn]` pairs sorted by pfn.
   */
  auditHandles(): { violations: string[]; entries: number; physmap: Record<number, Array<[number, number]>> } {
    const violations: string[] = [];
    for (const e of this.frames.log) {
      if (e.owner === e.domid) continue;
      if (e.owner === DOMID_XEN) {
        // Hypervisor frames: the sharers were fixed at allocation.
        const f = this.frames.lookup(e.extentBase);
        if (!f || !f.sharers.has(e.domid)) violations.push(`dom${e.domid} got hypervisor frame ${e.extentBase} it does not share`);
        continue;
      }
      if (!e.reason.startsWith(`map_grant_ref dom${e.owner} `)) {
        violations.push(`dom${e.domid} got frame ${e.extentBase} of dom${e.owner} (${e.reason})`);
      }
    }
    const physmap: Record<number, Array<[number, number]>> = {};
    for (const dom of this.domains.values()) {
      if (dom.state === 'dead') continue;
      const pairs: Array<[number, number]> = [];
      for (const f of this.frames.ownedBy(dom.domid)) {
        if (f.kind !== 'ram') continue;
        const e = this.physmap.pfnOf(f.mfn);
        if (!e || e.domid !== dom.domid) violations.push(`dom${dom.domid}'s RAM frame ${f.mfn} has no pfn`);
        else if (this.physmap.mfnOf(dom.domid, e.pfn) !== f.mfn) violations.push(`P2M and M2P of dom${dom.domid} disagree on frame ${f.mfn}`);
        else pairs.push([e.pfn, f.mfn]);
      }
      const entries = this.pfnState.get(dom.domid)?.count ?? 0;
      if (entries !== pairs.length || entries !== dom.ramPages) {
        violations.push(`dom${dom.domid}: P2M holds ${entries} pfns, ${pairs.length} of its live RAM frames have one, ramPages ${dom.ramPages}`);
      }
      physmap[dom.domid] = pairs.sort((a, b) => a[0] - b[0]);
    }
    return { violations, entries: this.frames.log.length, physmap };
  }

  /** Counter snapshot for reports. */
  snapshot(): HypervisorCounters & { frames: FrameTable['counters']; domains: DomainSummary[]; systemNs: number } {
    const now = this.systemNs();
    return {
      ...this.counters, systemNs: now, hypercalls: { ...this.counters.hypercalls }, frames: { ...this.frames.counters },
      domains: [...this.domains.values()].map((d) => ({
        domid: d.domid, name: d.name, state: d.state, ramPages: d.ramPages, maxPages: d.maxPages, vcpus: d.vcpus.length,
        busyMs: d.vcpus.reduce((t, v) => t + (v.worker ? v.worker.performance.eventLoopUtilization().active : 0), 0),
        hypercalls: d.hypercalls, wakes: d.vcpus.reduce((t, v) => t + (Atomics.load(v.wake, I_WAKE) >>> 0), 0),
        mappings: d.maptrack.size, ports: d.evtchns.size,
        virtualNs: d.vcpus[0]?.runstate.info(now).time[RUNSTATE.running] ?? 0,
      })),
    };
  }
}

/** One domain in a {@link Hypervisor.snapshot}. */
export interface DomainSummary {
  readonly domid: number;
  readonly name: string;
  readonly state: DomainState;
  /** Pages allocated, and the quota (4 KiB pages). */
  readonly ramPages: number;
  readonly maxPages: number;
  readonly vcpus: number;
  /**
   * Time its vCPU workers' event loops were busy, summed, in ms (Node's
   * eventLoopUtilization: handlers, spinning and JS work; not kernel CPU accounting).
   */
  readonly busyMs: number;
  /** Hypercalls it made. */
  readonly hypercalls: number;
  /**
   * Wake-ups asked of its vCPUs: every event-channel notification, hypervisor push or
   * stop bumps the vCPU's wake word once (whether the vCPU was asleep or not).
   */
  readonly wakes: number;
  /** Grant mappings it holds, and its event-channel ports. */
  readonly mappings: number;
  readonly ports: number;
  /** Its virtual time (ns): vCPU 0's time in RUNSTATE_running, i.e. time unpaused. */
  readonly virtualNs: number;
}

/** Info a vCPU receives about a new binding of one of its ports. */
export interface BindingInfo {
  readonly kind: 'bound';
  readonly port: number;
  /** The vCPU this port notifies (`EVTCHNOP_bind_vcpu`; 0 until rebound). */
  readonly vcpu: number;
  readonly remoteDom: number;
  readonly remotePort: number;
  /** Pair page (receiver = remote, sender = this domain): where sends set bits. */
  readonly sendPage: number;
  /** Pair page (receiver = this domain, sender = remote): folded on wake-up. */
  readonly recvPage: number;
  /** Wake page of the remote vCPU the port is bound to. */
  readonly remoteWake: number;
}
/**
 * Info a vCPU receives when one of its ports closes or loses its peer, or is bound
 * to a VIRQ (`virq`: raised by the hypervisor on vCPU `vcpu`).
 */
export interface PortInfo {
  readonly kind: 'closed' | 'unbound' | 'virq';
  readonly port: number;
  /** `virq` only: the vCPU the VIRQ is raised on. */
  readonly vcpu?: number;
  /** `virq` only: the VIRQ (`VIRQ_TIMER`...). */
  readonly virq?: number;
}
/** A handle-port message: the answer to call `seq`, or an unsolicited push. */
export interface HandleMessage {
  readonly seq?: number;
  readonly push?: boolean;
  readonly handles: ExtentHandle[];
  readonly info: Array<BindingInfo | PortInfo>;
}
interface Outgoing {
  /** The calling vCPU (handles are posted per vCPU). */
  readonly vcpu: number;
  handles: ExtentHandle[];
  info: Array<BindingInfo | PortInfo>;
}

/**
 * A u64 a guest wrote (little-endian, at `offset` of the private copy), or -1 when it
 * is 2^53 or more: no frame or count is that large, and `readU64` would throw a
 * ProtocolError out of the service loop instead of failing the one call.
 */
function guestU64(dv: DataView, offset: number): number {
  const hi = dv.getUint32(offset + 4, true);
  if (hi >= 0x20_0000) return -1;
  return hi * 2 ** 32 + dv.getUint32(offset, true);
}
