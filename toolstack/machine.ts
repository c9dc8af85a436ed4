/**
 * A pvio machine, driven from the main thread: the hypervisor worker, dom0 and the
 * guests. This is the toolstack's core (xl's `libxl` in spirit): it creates domains
 * through the hypervisor, has dom0 introduce them to xenstored and attach their
 * devices, unpauses them, collects their results, and tears everything down.
 *
 * Control traffic (domctl-style requests to the hypervisor, commands to dom0, guest
 * results) travels by postMessage — it is not the data path.
 */
import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { isAbsolute, resolve } from 'node:path';
import { PvioError, TimeoutError } from '../rings/errors.ts';
import { SpinTokens } from '../hypervisor/spin.ts';
import { SHUTDOWN, PAGE_SIZE } from '../hypervisor/abi.ts';
import type { HvMessage, HvRequest } from '../hypervisor/main.ts';
import type { CreateDomainOptions, DomainSummary } from '../hypervisor/hypervisor.ts';
import { DEFAULT_VIF_BRIDGE, DEFAULT_VIF_MTU, type DiskSpec, type VifSpec } from './config.ts';
import type { Dom0Request, Dom0Reply, Dom0Vif } from './dom0.ts';
import { XenbusState } from '../xenstore/xenbus.ts';
import { XEN_DOMCTL_SCHEDOP, XEN_ERRNO, XEN_SCHEDULER, type XenDomctlSchedulerOp } from '../hypervisor/abi.ts';
import { CSCHED_MAX_WEIGHT, SCHED_CAP_UNCHANGED, SCHED_WEIGHT_UNCHANGED, type DomainSchedStats } from '../hypervisor/sched-credit.ts';

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

const BOOTSTRAP = fileURLToPath(new URL('../hypervisor/worker-bootstrap.mjs', import.meta.url));
const HV_ENTRY = new URL('../hypervisor/main.ts', import.meta.url).href;
const DOM0_MODULE = new URL('./dom0.ts', import.meta.url).href;

/** How a domain ended. */
export interface DomainExit {
  readonly domid: number;
  readonly name: string;
  /** `SHUTDOWN_*` reason: 0 poweroff, 3 crash. */
  readonly reason: number;
  /** What the guest's main returned (structured clone), if it returned. */
  readonly value?: unknown;
  /** The error text when the guest crashed. */
  readonly error?: string;
}

/** A guest domain to create. */
export interface GuestSpec {
  readonly name: string;
  /** Memory quota in MiB. */
  readonly memoryMiB: number;
  readonly vcpus: number;
  /** Guest program: a module path (relative to cwd) or file URL. */
  readonly kernel: string;
  readonly args?: unknown;
  readonly extra?: string;
  readonly disks?: readonly DiskSpec[];
  /** Test hook: blkback waits this long (ms) before InitWait, so the frontend gets to Initialised first. */
  readonly initWaitDelayMs?: number;
  /** Serve the disks with the raw-file store's asynchronous mode (completion by id through libuv). */
  readonly asyncStore?: boolean;
  /** Virtual NICs (`vif = [...]` in the config), `eth0`, `eth1`, ... in the guest. */
  readonly vifs?: readonly VifSpec[];
  /**
   * False: the guest's kernel connects no frontend, at boot or hot-plugged; the guest
   * program does the handshakes itself (a hand-written or hostile frontend). Default true.
   */
  readonly probeDevices?: boolean;
}

/** A running guest. */
export interface GuestHandle {
  readonly domid: number;
  readonly name: string;
  /** Resolves when the domain is destroyed. */
  readonly exit: Promise<DomainExit>;
  /** Messages the guest sent on its control port other than its result. */
  onMessage(fn: (m: unknown) => void): void;
  /**
   * Calls an operation the guest serves on its control port (see test/guests/rpc.ts):
   * posts `{type: 'call', id, op, args}` and resolves with the guest's `reply`.
   * @throws MachineError with the guest's error text; TimeoutError after `timeoutMs`.
   */
  call(op: string, args?: unknown, timeoutMs?: number): Promise<unknown>;
}

/** A domain's life, as {@link Machine} reports it (`m.on('domain', fn)`). */
export interface DomainEvent {
  readonly domid: number;
  readonly name: string;
  /** `created` (paused, devices being attached), `running`, `paused`, `exited`. */
  readonly state: 'created' | 'running' | 'paused' | 'exited';
  /** With `exited`: how it ended. */
  readonly exit?: DomainExit;
}

/**
 * A device's XenbusState changed (`m.on('xenbus', fn)`): the frontend's
 * `/local/domain/<domid>/device/<type>/<devid>/state` or the backend's
 * `/local/domain/<backend>/backend/<type>/<domid>/<devid>/state`.
 * @see xen/include/public/io/xenbus.h
 */
export interface XenbusEvent {
  /** The `state` node. */
  readonly path: string;
  readonly end: 'frontend' | 'backend';
  /** Device type: `vbd`, `vif`, ... */
  readonly type: string;
  /** The guest the device belongs to (the frontend's domain). */
  readonly domid: number;
  /** The device id (`device/<type>/<devid>`). */
  readonly devid: number;
  /** The new state; null once the node was removed. */
  readonly state: XenbusState | null;
  /** `Initialising`, `InitWait`, `Initialised`, `Connected`, `Closing`, `Closed`, ... or `removed`. */
  readonly stateName: string;
}

/** A line a guest wrote to its console (`m.on('console', fn)`). */
export interface ConsoleEvent {
  readonly domain: string;
  readonly line: string;
}

/** The events a {@link Machine} emits, by name. */
export interface MachineEvents {
  domain: DomainEvent;
  xenbus: XenbusEvent;
  console: ConsoleEvent;
}

/** One reading of every counter of a machine ({@link Machine.stats}). */
export interface MachineSnapshot {
  /** When it was taken: ms since the epoch. */
  readonly at: number;
  /** The hypervisor's counters: hypercalls by kind, grant maps, event channels, domains, frames. */
  readonly hypervisor: Record<string, unknown>;
  /** dom0's: per disk (blkback requests, bytes, notifications, latency), per vif (netback), bridges, xenstored, console. */
  readonly dom0: Record<string, unknown>;
}

const FRONTEND_STATE = /^\/local\/domain\/(\d+)\/device\/([a-z]+)\/(\d+)\/state$/;
const BACKEND_STATE = /^\/local\/domain\/\d+\/backend\/([a-z]+)\/(\d+)\/(\d+)\/state$/;

/** Options of {@link Machine.boot}. */
export interface MachineOptions {
  /** Spin tokens (default: the number of cores). */
  readonly spinTokens?: number;
  /** A spin-token buffer to share with other threads of the process (e.g. a benchmark's); overrides `spinTokens`. */
  readonly spinTokenBuffer?: SharedArrayBuffer;
  /** dom0 memory quota in MiB (default 256). */
  readonly dom0MemoryMiB?: number;
  /**
   * dom0's vCPUs (default 1, at most 32). With several, blkback serves queue N of a
   * multi-queue disk on vCPU N mod dom0Vcpus (for stores that can be opened per vCPU:
   * raw files, without a trace).
   */
  readonly dom0Vcpus?: number;
  /**
   * Capture every frame crossing dom0's bridges to this pcap file (`pvio up --pcap`);
   * frames with partial checksums are written completed.
   */
  readonly pcap?: string;
  /** Deadline for each control request (ms). */
  readonly requestTimeoutMs?: number;
  /**
   * Receives every line a guest writes to its console (read from its console ring
   * by dom0). Without it, dom0 writes the lines to stdout as `[name] line`.
   */
  readonly onConsole?: (domain: string, line: string) => void;
}

/**
 * A vif spec with the toolstack's defaults filled in: a MAC in Xen's OUI 00:16:3e
 * made from the domid and index when none is given (as xl generates one), bridge
 * `xenbr0`, MTU 1500, grant-copy mode.
 */
export function dom0Vif(domid: number, devid: number, v: VifSpec): Dom0Vif {
  const hex = (n: number) => (n & 0xff).toString(16).padStart(2, '0');
  return {
    devid,
    mac: v.mac ?? `00:16:3e:${hex(domid >> 8)}:${hex(domid)}:${hex(devid)}`,
    bridge: v.bridge ?? DEFAULT_VIF_BRIDGE,
    mtu: v.mtu ?? DEFAULT_VIF_MTU,
    rate: v.rate ?? null,
    persistent: v.persistent ?? false,
    maxQueues: v.queues,
    sg: v.sg,
    gso: v.gso,
    splitEventChannels: v.splitEventChannels,
    csumOffload: v.csumOffload,
  };
}

/** A control request failed or timed out. */
export class MachineError extends PvioError {
  constructor(message: string) {
    super('PVIO_ERR_MACHINE', message);
  }
}

/**
 * The hypervisor refused a domctl (code `PVIO_ERR_DOMCTL`): `errno` is Xen's positive
 * errno (`XEN_ERRNO.EINVAL` = 22 for a parameter out of range, `ESRCH` = 3 for no
 * such domain); `message` is one line ending with the errno's name.
 */
export class DomctlError extends PvioError {
  constructor(readonly errno: number, message: string) {
    super('PVIO_ERR_DOMCTL', message);
  }
}

/**
 * A domain's credit-scheduler parameters, as `xl sched-credit` shows and sets them.
 * @see xen/include/public/domctl.h (xen_domctl_sched_credit)
 */
export interface SchedParams {
  /** Its share relative to other domains' (1..65535, default 256): of hypervisor service and of dom0's backends when contended. */
  readonly weight: number;
  /** Most hypervisor time its hypercalls may take, in percent of one CPU (0 = no cap; at most 100 × its vCPUs). */
  readonly cap: number;
}

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

/** A machine: hypervisor + dom0 + guests. */
export class Machine {
  private reqId = 0;
  private readonly hvPending = new Map<number, Pending>();
  private readonly dom0Pending = new Map<number, Pending>();
  private readonly exits = new Map<number, { resolve(e: DomainExit): void; name: string; value?: unknown; error?: string; listeners: Array<(m: unknown) => void> }>();
  private closed = false;
  private readonly timeoutMs: number;
  private readonly consoleSink: MachineOptions['onConsole'];
  private readonly events = new EventEmitter();
  private xenbusWatch: Promise<void> | null = null;
  /** dom0 sends guests' console lines here (not to its stdout). */
  private consoleForwarded = false;
  /** Each running guest's vif ids (for {@link attachVif}'s default). */
  private readonly vifIds = new Map<number, Set<number>>();

  private constructor(private readonly hv: Worker, private readonly dom0Port: MessagePort, opts: MachineOptions) {
    this.timeoutMs = opts.requestTimeoutMs ?? 30_000;
    this.consoleSink = opts.onConsole;
    this.consoleForwarded = opts.onConsole !== undefined;
  }

  /**
   * Starts the hypervisor worker and dom0 (xenstored, console daemon, blkback).
   * @throws MachineError when either does not come up.
   */
  static async boot(opts: MachineOptions = {}): Promise<Machine> {
    const tokens = opts.spinTokenBuffer ?? SpinTokens.createBuffer(opts.spinTokens ?? Math.max(1, availableParallelism()));
    const hv = new Worker(BOOTSTRAP, { workerData: { entry: HV_ENTRY, spinTokens: tokens }, name: 'hypervisor' });
    const ch = new MessageChannel();
    const m = new Machine(hv, ch.port1, opts);
    hv.on('message', (msg: HvMessage) => m.onHvMessage(msg));
    hv.on('error', (e) => m.failAll(new MachineError(`hypervisor failed: ${e.message}`)));
    ch.port1.on('message', (msg: Dom0Reply) => m.onDom0Message(msg));
    const ready = new Promise<void>((res, rej) => {
      const t = setTimeout(() => rej(new MachineError('dom0 did not start')), m.timeoutMs);
      const onReady = (msg: Dom0Reply) => {
        if (msg.type === 'ready') {
          clearTimeout(t);
          ch.port1.off('message', onReady);
          res();
        }
      };
      ch.port1.on('message', onReady);
    });
    const dom0Pages = ((opts.dom0MemoryMiB ?? 256) << 20) / PAGE_SIZE;
    const dom0 = (await m.hvRequest({
      type: 'createDomain', reqId: 0,
      opts: { name: 'Domain-0', maxPages: dom0Pages, vcpus: opts.dom0Vcpus ?? 1, privileged: true, guest: { module: DOM0_MODULE }, controlPort: ch.port2 } as CreateDomainOptions,
    }, [ch.port2])) as { domid: number };
    void m.trackExit(dom0.domid, 'Domain-0');
    await m.hvRequest({ type: 'unpause', reqId: 0, domid: dom0.domid });
    await ready;
    if (opts.onConsole) await m.dom0Request({ type: 'console', forward: true });
    if (opts.pcap) await m.dom0Request({ type: 'capture', path: opts.pcap });
    return m;
  }

  private trackExit(domid: number, name: string): Promise<DomainExit> {
    return new Promise<DomainExit>((resolveExit) => {
      this.exits.set(domid, { resolve: resolveExit, name, listeners: [] });
    });
  }

  private onHvMessage(msg: HvMessage): void {
    if (msg.type === 'reply') {
      const p = this.hvPending.get(msg.reqId);
      if (!p) return;
      this.hvPending.delete(msg.reqId);
      clearTimeout(p.timer);
      if (msg.ok) p.resolve(msg.value);
      else p.reject(new MachineError(msg.error));
      return;
    }
    if (msg.type === 'domainDestroyed') {
      const e = this.exits.get(msg.domid);
      if (msg.domid !== 0 && !this.closed) void this.dom0Request({ type: 'release', domid: msg.domid }).catch(() => {});
      if (!e) return;
      this.exits.delete(msg.domid);
      this.vifIds.delete(msg.domid);
      const crashed = msg.reason === SHUTDOWN.crash || e.error !== undefined;
      const exit: DomainExit = {
        domid: msg.domid, name: e.name, reason: crashed ? SHUTDOWN.crash : msg.reason, value: e.value,
        error: e.error ?? (msg.reason === SHUTDOWN.crash ? (msg.error ?? 'crashed') : undefined),
      };
      e.resolve(exit);
      this.emitDomain({ domid: msg.domid, name: e.name, state: 'exited', exit });
    }
  }

  private onDom0Message(msg: Dom0Reply): void {
    if (msg.type === 'console') {
      if (this.consoleSink) this.consoleSink(msg.domain, msg.line);
      else process.stdout.write(`[${msg.domain}] ${msg.line}\n`); // forwarded for 'console' listeners: still printed, as dom0 would
      this.emitSafely('console', { domain: msg.domain, line: msg.line });
      return;
    }
    if (msg.type === 'xenbus') {
      this.emitXenbus(msg.path, msg.state);
      return;
    }
    if (msg.type !== 'reply') return;
    const p = this.dom0Pending.get(msg.reqId);
    if (!p) return;
    this.dom0Pending.delete(msg.reqId);
    clearTimeout(p.timer);
    if (msg.ok) p.resolve(msg.value);
    else p.reject(new MachineError(msg.error));
  }

  private failAll(e: Error): void {
    for (const m of [this.hvPending, this.dom0Pending]) {
      for (const p of m.values()) {
        clearTimeout(p.timer);
        p.reject(e);
      }
      m.clear();
    }
  }

  private request<T>(map: Map<number, Pending>, send: (id: number) => void, what: string): Promise<T> {
    const id = ++this.reqId;
    return new Promise<T>((res, rej) => {
      const timer = setTimeout(() => {
        map.delete(id);
        rej(new TimeoutError(`${what} got no answer within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      map.set(id, { resolve: res as (v: unknown) => void, reject: rej, timer });
      send(id);
    });
  }

  /** Sends a domctl-style request to the hypervisor. */
  hvRequest(req: HvRequest, transfer: MessagePort[] = []): Promise<unknown> {
    return this.request(this.hvPending, (id) => this.hv.postMessage({ ...req, reqId: id }, transfer), `hypervisor ${req.type}`);
  }

  /** Sends a command to dom0. */
  dom0Request(req: DistributiveOmit<Dom0Request, 'reqId'>): Promise<unknown> {
    return this.request(this.dom0Pending, (id) => this.dom0Port.postMessage({ ...req, reqId: id }), `dom0 ${req.type}`);
  }

  /**
   * Creates a guest: the domain (paused), its introduction to xenstored, its disks
   * (backend and frontend directories), then unpauses it.
   * @throws MachineError when dom0 cannot attach a disk (the domain is destroyed).
   */
  async createGuest(spec: GuestSpec): Promise<GuestHandle> {
    const ctl = new MessageChannel();
    const module = spec.kernel.startsWith('file:') ? spec.kernel : pathToFileURL(isAbsolute(spec.kernel) ? spec.kernel : resolve(spec.kernel)).href;
    const created = (await this.hvRequest({
      type: 'createDomain', reqId: 0,
      opts: {
        name: spec.name, maxPages: (spec.memoryMiB << 20) / PAGE_SIZE, vcpus: spec.vcpus,
        guest: { module, args: spec.args ?? null, extra: spec.extra, probe: spec.probeDevices !== false }, controlPort: ctl.port2,
      } as CreateDomainOptions,
    }, [ctl.port2])) as { domid: number; store: { mfn: number; port: number }; console: { mfn: number; port: number } };
    const domid = created.domid;
    const exit = this.trackExit(domid, spec.name);
    this.emitDomain({ domid, name: spec.name, state: 'created' });
    const rec = this.exits.get(domid)!;
    const calls = new Map<number, Pending>();
    let callId = 0;
    ctl.port1.on('message', (m: { type: string; id?: number; ok?: boolean; value?: unknown; error?: string }) => {
      if (m?.type === 'result') rec.value = m.value;
      else if (m?.type === 'error') rec.error = m.error;
      else if (m?.type === 'reply' && m.id !== undefined && calls.has(m.id)) {
        const p = calls.get(m.id)!;
        calls.delete(m.id);
        clearTimeout(p.timer);
        if (m.ok) p.resolve(m.value);
        else p.reject(new MachineError(m.error ?? 'guest call failed'));
      } else for (const l of rec.listeners) l(m);
    });
    void exit.then(() => {
      ctl.port1.close();
      for (const p of calls.values()) {
        clearTimeout(p.timer);
        p.reject(new MachineError(`${spec.name} exited`));
      }
      calls.clear();
    });
    const call = (op: string, args?: unknown, timeoutMs = this.timeoutMs) => new Promise<unknown>((res, rej) => {
      const id = ++callId;
      const timer = setTimeout(() => {
        calls.delete(id);
        rej(new TimeoutError(`${spec.name}: call ${op} got no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      calls.set(id, { resolve: res, reject: rej, timer });
      ctl.port1.postMessage({ type: 'call', id, op, args });
    });
    try {
      await this.dom0Request({
        type: 'introduce', domid, name: spec.name, storePort: created.store.port, consolePort: created.console.port,
        memoryKiB: spec.memoryMiB * 1024,
      });
      for (const d of spec.disks ?? []) {
        await this.dom0Request({
          type: 'addDisk', domid, vdev: d.vdev, virtualDevice: d.virtualDevice, path: d.path, readOnly: d.readOnly,
          features: d.features, store: d.store, initWaitDelayMs: spec.initWaitDelayMs, asyncStore: spec.asyncStore,
        });
      }
      for (const [devid, v] of (spec.vifs ?? []).entries()) {
        await this.dom0Request({ type: 'addVif', domid, vif: dom0Vif(domid, devid, v) });
      }
      this.vifIds.set(domid, new Set((spec.vifs ?? []).map((_, i) => i)));
    } catch (e) {
      await this.hvRequest({ type: 'destroy', reqId: 0, domid });
      throw e;
    }
    await this.hvRequest({ type: 'unpause', reqId: 0, domid });
    this.emitDomain({ domid, name: spec.name, state: 'running' });
    return { domid, name: spec.name, exit, onMessage: (fn) => rec.listeners.push(fn), call };
  }

  /** Pauses a domain (as `xl pause`): it stops dispatching events; its hypercalls wait. */
  async pause(domid: number): Promise<void> {
    await this.hvRequest({ type: 'pause', reqId: 0, domid });
    const e = this.exits.get(domid);
    if (e) this.emitDomain({ domid, name: e.name, state: 'paused' });
  }

  /** Unpauses a domain (as `xl unpause`). */
  async unpause(domid: number): Promise<void> {
    await this.hvRequest({ type: 'unpause', reqId: 0, domid });
    const e = this.exits.get(domid);
    if (e) this.emitDomain({ domid, name: e.name, state: 'running' });
  }

  /**
   * Calls `fn` on every event of that name: `domain` (a domain created, running,
   * paused, exited), `xenbus` (a device's XenbusState changed; the first `xenbus`
   * listener arms dom0's watch, see {@link watchXenbus}) or `console` (a line a guest
   * wrote to its console). A listener that throws is reported on stderr and stays
   * registered.
   */
  on<K extends keyof MachineEvents>(event: K, fn: (e: MachineEvents[K]) => void): this {
    this.events.on(event, fn);
    if (event === 'xenbus') void this.watchXenbus().catch((e: Error) => process.stderr.write(`pvio: xenbus events: ${e.message}\n`));
    if (event === 'console' && !this.consoleForwarded) {
      this.consoleForwarded = true;
      void this.dom0Request({ type: 'console', forward: true }).catch((e: Error) => process.stderr.write(`pvio: console events: ${e.message}\n`));
    }
    return this;
  }

  /** Removes a listener added with {@link on}. */
  off<K extends keyof MachineEvents>(event: K, fn: (e: MachineEvents[K]) => void): this {
    this.events.off(event, fn);
    return this;
  }

  /**
   * Arms dom0's watch on every device's `state` node; resolves once it is armed, so
   * every change after that is reported as a `xenbus` event. Idempotent.
   * @throws MachineError or TimeoutError when dom0 does not answer.
   */
  watchXenbus(): Promise<void> {
    this.xenbusWatch ??= this.dom0Request({ type: 'watchXenbus' }).then(() => undefined);
    return this.xenbusWatch;
  }

  /**
   * Every counter of the machine, now: the hypervisor's and dom0's (per domain,
   * disk, vif, bridge; see {@link MachineSnapshot}).
   * @throws MachineError or TimeoutError when a worker does not answer.
   */
  async stats(): Promise<MachineSnapshot> {
    const [hypervisor, dom0] = await Promise.all([this.hypervisorStats(), this.dom0Stats()]);
    return { at: Date.now(), hypervisor, dom0 };
  }

  /**
   * A snapshot of every counter every `intervalMs` ms (the first at once), until the
   * machine shuts down or the caller stops iterating (`break`).
   */
  async *snapshots(intervalMs = 1000): AsyncGenerator<MachineSnapshot, void, undefined> {
    while (!this.closed) {
      let s: MachineSnapshot;
      try {
        s = await this.stats();
      } catch (e) {
        if (this.closed) return;
        throw e;
      }
      yield s;
      await sleep(intervalMs);
    }
  }

  private emitDomain(e: DomainEvent): void {
    this.emitSafely('domain', e);
  }

  private emitXenbus(path: string, state: number | null): void {
    const f = FRONTEND_STATE.exec(path);
    const b = f ? null : BACKEND_STATE.exec(path);
    if (!f && !b) return;
    const stateName = state === null ? 'removed' : XenbusState[state] ?? String(state);
    const ev: XenbusEvent = f
      ? { path, end: 'frontend', type: f[2], domid: Number(f[1]), devid: Number(f[3]), state, stateName }
      : { path, end: 'backend', type: b![1], domid: Number(b![2]), devid: Number(b![3]), state, stateName };
    this.emitSafely('xenbus', ev);
  }

  private emitSafely<K extends keyof MachineEvents>(event: K, e: MachineEvents[K]): void {
    for (const fn of this.events.listeners(event)) {
      try {
        (fn as (x: MachineEvents[K]) => void)(e);
      } catch (err) {
        process.stderr.write(`pvio: a '${event}' listener threw: ${(err as Error)?.message ?? err}\n`);
      }
    }
  }

  /**
   * Asks a guest to shut down (`xl shutdown`): writes `control/shutdown` = `poweroff`
   * in its XenStore directory; its kernel closes its devices and powers off. A guest
   * still there after `timeoutMs` (default 10 000 ms) is destroyed.
   * @returns whether it had to be destroyed.
   * @throws MachineError when there is no such domain.
   */
  async shutdownDomain(domid: number, timeoutMs = 10_000): Promise<{ forced: boolean }> {
    if (!(await this.domains()).some((d) => d.domid === domid)) throw new MachineError(`no domain ${domid}`);
    await this.xenstoreWrite(`/local/domain/${domid}/control/shutdown`, 'poweroff');
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const d = (await this.domains()).find((x) => x.domid === domid);
      if (!d || d.state === 'dying' || d.state === 'dead') return { forced: false };
      await sleep(20);
    }
    await this.destroy(domid);
    return { forced: true };
  }

  /**
   * Sets a guest's memory target, as `xl mem-set`: dom0 writes
   * `/local/domain/<domid>/memory/target` = `kib` (KiB, as libxl does). The guest's
   * balloon driver, if it runs one (`k.balloon.start()`), moves its reservation
   * toward it, giving free pages back or taking pages in (it reports the reservation
   * reached in `data/balloon/current`, KiB); the hypervisor's quota stays
   * `memory/static-max` (set at creation from `memoryMiB`). Resolves once the target
   * is written, not when it is reached.
   * @param kib the target in KiB, an integer from 0 to the guest's `static-max`.
   * @throws MachineError when there is no such guest, `kib` is not a whole number of
   *   KiB, or it is above `static-max` (libxl's `ERROR_INVAL`: "memory_dynamic_max must
   *   be less than or equal to memory_static_max").
   * @see tools/libs/light/libxl_mem.c (libxl_set_memory_target)
   */
  async setMemoryTarget(domid: number, kib: number): Promise<void> {
    if (!(Number.isSafeInteger(kib) && kib >= 0)) throw new MachineError(`memory target ${kib} is not a whole number of KiB`);
    const d = (await this.domains()).find((x) => x.domid === domid);
    if (!d || d.state === 'dying' || d.state === 'dead') throw new MachineError(`no domain ${domid}`);
    const max = Number(await this.xenstoreRead(`/local/domain/${domid}/memory/static-max`).catch(() => NaN));
    if (!Number.isFinite(max)) throw new MachineError(`dom${domid} has no memory/static-max: not a guest`);
    if (kib > max) throw new MachineError(`memory target ${kib} KiB is above dom${domid}'s static-max of ${max} KiB`);
    await this.xenstoreWrite(`/local/domain/${domid}/memory/target`, String(kib));
  }

  /** Destroys a domain (as `xl destroy`). */
  async destroy(domid: number): Promise<void> {
    await this.hvRequest({ type: 'destroy', reqId: 0, domid });
  }

  /** Sends `XEN_DOMCTL_scheduler_op` (credit). @throws DomctlError naming the errno the hypervisor answered. */
  private async schedulerOp(domid: number, cmd: number, credit: { weight: number; cap: number }): Promise<SchedParams> {
    const op: XenDomctlSchedulerOp = { sched_id: XEN_SCHEDULER.credit, cmd, u: { credit } };
    const r = (await this.hvRequest({ type: 'schedulerOp', reqId: 0, domid, op })) as { rc: number; op: XenDomctlSchedulerOp };
    if (r.rc === -XEN_ERRNO.ESRCH) throw new DomctlError(XEN_ERRNO.ESRCH, `no domain ${domid} (ESRCH)`);
    if (r.rc < 0) {
      const name = Object.entries(XEN_ERRNO).find(([, v]) => v === -r.rc)?.[0] ?? `errno ${-r.rc}`;
      const vcpus = (await this.domains()).find((d) => d.domid === domid)?.vcpus;
      const why = cmd === XEN_DOMCTL_SCHEDOP.putinfo && credit.cap !== SCHED_CAP_UNCHANGED && vcpus !== undefined
        ? `cap ${credit.cap} is out of range for dom${domid}: 0 to ${100 * vcpus} (100 × its ${vcpus} vCPU${vcpus === 1 ? '' : 's'})`
        : `the hypervisor refused the scheduler parameters of dom${domid}`;
      throw new DomctlError(-r.rc, `${why} (${name})`);
    }
    return { weight: r.op.u.credit.weight, cap: r.op.u.credit.cap };
  }

  /**
   * A domain's credit-scheduler parameters (`xl sched-credit -d`; `XEN_DOMCTL_SCHEDOP_getinfo`).
   * @throws DomctlError (ESRCH) when there is no such domain.
   */
  getSchedParams(domid: number): Promise<SchedParams> {
    return this.schedulerOp(domid, XEN_DOMCTL_SCHEDOP.getinfo, { weight: 0, cap: 0 });
  }

  /**
   * Sets a domain's credit-scheduler parameters (`xl sched-credit -d D -w W -c C`;
   * `XEN_DOMCTL_SCHEDOP_putinfo`); what `p` leaves out stays as it is. The weight
   * applies to the hypervisor's service of its hypercalls when other domains' calls
   * are pending too, and to dom0's blkback and netback between guests' rings (dom0 is
   * told here); the cap to the hypervisor's time serving its hypercalls
   * (hypervisor/sched-credit.ts, rings/weighted-scheduler.ts).
   * @returns the parameters now in force.
   * @throws DomctlError: EINVAL (nothing changed) when `weight` is not an integer 1..65535
   *   or `cap` not an integer 0..100 × the domain's vCPUs; ESRCH when there is no such
   *   domain. MachineError when dom0 does not take the weight.
   */
  async setSchedParams(domid: number, p: { weight?: number; cap?: number }): Promise<SchedParams> {
    const { weight, cap } = p;
    if (weight !== undefined && !(Number.isInteger(weight) && weight >= 1 && weight <= CSCHED_MAX_WEIGHT)) {
      throw new DomctlError(XEN_ERRNO.EINVAL, `weight ${weight} is out of range: 1 to ${CSCHED_MAX_WEIGHT} (EINVAL)`);
    }
    if (cap !== undefined && !(Number.isInteger(cap) && cap >= 0 && cap < SCHED_CAP_UNCHANGED)) {
      throw new DomctlError(XEN_ERRNO.EINVAL, `cap ${cap} is out of range: 0 (no cap) to 100 × the domain's vCPUs (EINVAL)`);
    }
    if (weight === undefined && cap === undefined) return this.getSchedParams(domid);
    await this.schedulerOp(domid, XEN_DOMCTL_SCHEDOP.putinfo, { weight: weight ?? SCHED_WEIGHT_UNCHANGED, cap: cap ?? SCHED_CAP_UNCHANGED });
    const now = await this.getSchedParams(domid);
    if (domid !== 0) await this.dom0Request({ type: 'schedParams', domid, weight: now.weight, cap: now.cap });
    return now;
  }

  /** The hypervisor's scheduling counters per domain (calls served and deferred for weight and cap; see hypervisor/sched-credit.ts). */
  async schedStats(): Promise<DomainSchedStats[]> {
    return (await this.hvRequest({ type: 'schedStats', reqId: 0 })) as DomainSchedStats[];
  }

  /**
   * Resizes a guest's disk (`xl block-resize`-like): the store grows or shrinks to
   * `sizeBytes` and blkback announces the new `sectors`; the frontend picks it up
   * through its watch. @throws Error from dom0 (no such disk, store cannot resize).
   */
  async resizeDisk(domid: number, vdev: string, sizeBytes: number): Promise<void> {
    await this.dom0Request({ type: 'resizeDisk', domid, vdev, sizeBytes });
  }

  /**
   * Attaches a disk to a running guest (`xl block-attach`): dom0 opens the store and
   * writes both directories; the guest's kernel sees the new `device/vbd/<id>`,
   * connects it and adds it to `k.devices` (the guest can wait with `k.onDevice`).
   * Resolves once the backend waits for the frontend (InitWait), not when the guest
   * has connected (watch `xenbus` events for that).
   * @throws MachineError from dom0 (no such domain, a store that does not open, the
   *   virtual device in use).
   */
  async attachDisk(domid: number, disk: DiskSpec): Promise<void> {
    await this.dom0Request({
      type: 'addDisk', domid, vdev: disk.vdev, virtualDevice: disk.virtualDevice, path: disk.path, readOnly: disk.readOnly,
      features: disk.features, store: disk.store,
    });
  }

  /**
   * Detaches a disk from a running guest (`xl block-detach`): the backend goes
   * Closing, the guest's blkfront fails what is in flight, closes (Closing, Closed,
   * grants ended) and leaves `k.devices`; then dom0 removes both directories and
   * closes the store. A frontend that does not close within `timeoutMs` (default
   * 10 000 ms) is detached by force. @returns whether it was forced.
   * @throws MachineError when the guest has no such disk.
   */
  async detachDisk(domid: number, vdev: string, opts: { timeoutMs?: number } = {}): Promise<{ forced: boolean }> {
    return (await this.dom0Request({ type: 'removeDisk', domid, vdev, timeoutMs: opts.timeoutMs ?? 10_000 })) as { forced: boolean };
  }

  /**
   * Attaches a vif to a running guest (`xl network-attach`) as `eth<devid>` (default:
   * the lowest free index), with the toolstack's defaults for what `vif` leaves out
   * (see {@link dom0Vif}); the guest's kernel connects it and adds it to `k.devices`.
   * Resolves once the backend waits for the frontend. @returns the devid.
   * @throws MachineError from dom0 (no such domain, the devid in use).
   */
  async attachVif(domid: number, vif: VifSpec, devid?: number): Promise<number> {
    const used = this.vifIds.get(domid) ?? new Set<number>();
    let id = devid ?? 0;
    if (devid === undefined) while (used.has(id)) id++;
    await this.dom0Request({ type: 'addVif', domid, vif: dom0Vif(domid, id, vif) });
    used.add(id);
    this.vifIds.set(domid, used);
    return id;
  }

  /**
   * Detaches vif `devid` from a running guest (`xl network-detach`): the backend goes
   * Closing, the guest's netfront breaks its queues, closes in order and leaves
   * `k.devices`, the vif leaves its bridge; a frontend that does not close within
   * `timeoutMs` (default 10 000 ms) is detached by force. @returns whether it was forced.
   * @throws MachineError when the guest has no such vif.
   */
  async detachVif(domid: number, devid: number, opts: { timeoutMs?: number } = {}): Promise<{ forced: boolean }> {
    const r = (await this.dom0Request({ type: 'removeVif', domid, devid, timeoutMs: opts.timeoutMs ?? 10_000 })) as { forced: boolean };
    this.vifIds.get(domid)?.delete(devid);
    return r;
  }

  /**
   * Joins a user's bridge port to bridge `bridge` (created if new): `module` (a path
   * relative to the cwd, or a file URL) is loaded in dom0, the bridge's domain; its
   * default export gets a `BridgePortContext` (the bridge's name, `args`, `input` to
   * put frames into the bridge) and returns the port (`name`, `output(frame)`), which
   * gets every frame the bridge sends it, as a vif would.
   * @returns the port's name. @throws MachineError when the module does not load or make a port.
   */
  async addBridgePort(bridge: string, module: string, args?: unknown): Promise<string> {
    const url = module.startsWith('file:') ? module : pathToFileURL(isAbsolute(module) ? module : resolve(module)).href;
    return (await this.dom0Request({ type: 'addBridgePort', bridge, module: url, args: args ?? null })) as string;
  }

  /**
   * Types `data` at a guest's console: dom0 writes it into the console ring's `in`
   * half (the guest's program reads it with `k.console.onInput`).
   * @returns the bytes written. @throws MachineError (no such domain, a guest that does not read its console).
   */
  async consoleInput(domid: number, data: string): Promise<number> {
    return (await this.dom0Request({ type: 'consoleInput', domid, data })) as number;
  }

  /**
   * Reads a XenStore node (absolute path) with dom0's rights.
   * @throws MachineError naming the errno (`ENOENT`, `EINVAL`, ...).
   */
  async xenstoreRead(path: string): Promise<string> {
    return (await this.dom0Request({ type: 'xsRead', path })) as string;
  }

  /** Writes a XenStore node (absolute path) with dom0's rights, creating parents. @throws MachineError naming the errno. */
  async xenstoreWrite(path: string, value: string): Promise<void> {
    await this.dom0Request({ type: 'xsWrite', path, value });
  }

  /** Every node at and below `path`, depth first, with its value. @throws MachineError naming the errno. */
  async xenstoreList(path = '/'): Promise<Array<[string, string]>> {
    return (await this.dom0Request({ type: 'xsList', path })) as Array<[string, string]>;
  }

  /** The domains, as `xl list` shows them (dom0 first). @throws MachineError or TimeoutError when the hypervisor does not answer. */
  async domains(): Promise<DomainSummary[]> {
    return ((await this.hypervisorStats()) as { domains: DomainSummary[] }).domains;
  }

  /** Hypervisor counters (hypercalls by kind, grant maps, event channels, domains). */
  async hypervisorStats(): Promise<Record<string, unknown>> {
    return (await this.hvRequest({ type: 'snapshot', reqId: 0 })) as Record<string, unknown>;
  }

  /**
   * The handle audit: violations (empty when every handle was legitimate and every
   * live domain's P2M/M2P agrees with the frame table), the log, and each live
   * domain's P2M as `[pfn, mfn]` pairs sorted by pfn (see `Hypervisor.auditHandles`).
   */
  async audit(): Promise<{
    violations: string[]; entries: number; log: Array<{ domid: number; extentBase: number; pages: number; owner: number; reason: string }>;
    physmap: Record<number, Array<[number, number]>>;
  }> {
    return (await this.hvRequest({ type: 'audit', reqId: 0 })) as never;
  }

  /** dom0's counters (blkback per device, xenstored, console). */
  async dom0Stats(): Promise<Record<string, unknown>> {
    return (await this.dom0Request({ type: 'stats' })) as Record<string, unknown>;
  }

  /**
   * Destroys every domain, stops dom0 and the hypervisor, and resolves once every
   * worker has exited. Idempotent.
   */
  async shutdown(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const hvExit = new Promise<void>((r) => this.hv.once('exit', () => r()));
    try {
      await this.dom0Request({ type: 'shutdown' }).catch(() => {});
      await this.hvRequest({ type: 'shutdown', reqId: 0 });
    } catch {
      /* the hypervisor may already be gone */
    }
    this.dom0Port.close();
    const t = setTimeout(() => void this.hv.terminate(), 10_000);
    await hvExit;
    clearTimeout(t);
    this.failAll(new MachineError('machine shut down'));
  }
}
