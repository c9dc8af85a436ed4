/**
 * The small kernel a guest module runs on: one per vCPU worker. It gives the guest
 * its domid, hypercalls, event channels, grant table, memory, XenStore client,
 * console, and the frontends the toolstack attached to it, and runs the vCPU's
 * event loop.
 *
 * The event loop (DESIGN.md, decision 2): a domain is event-driven. Its vCPU idles
 * in `Atomics.waitAsync` on its wake word (a ref'd interval keeps the worker alive,
 * since waitAsync alone does not), so promises, timers and sockets keep working.
 * On each wake it drains the hypervisor's pushes, folds the event pair pages into
 * shared_info and dispatches the upcall. When events have just arrived it spins a
 * little on the wake word first — only while holding a spin token — because the
 * next one usually follows within microseconds under load.
 */
import type { MessagePort } from 'node:worker_threads';
import { SHUTDOWN, HYPERVISOR, SCHEDOP, SCHED_SHUTDOWN, WAKE_PAGE, type DomId, type EvtchnPort } from './abi.ts';
import type { BootInfo } from './boot.ts';
import { HypercallPort } from './hypercall.ts';
import { GuestMemory } from './guest-memory.ts';
import { Balloon } from '../xenstore/balloon.ts';
import { SpinTokens } from './spin.ts';
import type { HandleMessage } from './hypervisor.ts';
import { EventChannels } from '../event-channel/evtchn.ts';
import { GuestTime } from './time.ts';
import { GrantTable } from '../grant-table/gnttab.ts';
import { XenbusClient } from '../xenstore/client.ts';
import { Xenstored } from '../xenstore/xenstored.ts';
import { connectGuestToRing, connectLocal } from '../xenstore/connect.ts';
import { consoleGuestEnds } from '../rings/console-ring.ts';
import { CallClient, answerCall, type CallMessage, type GuestOps } from '../toolstack/guest-calls.ts';

const I_WAKE = WAKE_PAGE.fields.wake.offset >> 2;
/** Spin iterations in the idle loop after recent events (~20 µs). */
const IDLE_SPIN_ITERATIONS = 4000;
/** While events keep arriving, the idle loop yields to macrotasks at least this often (ms). */
const MACROTASK_TURN_MS = 0.25;

/** The guest's console: text written here goes through the console ring to dom0. */
export interface GuestConsole {
  /** Writes text (UTF-8) to the console; buffered if the ring is full. */
  write(text: string): void;
  /** Writes one line (arguments joined with spaces). */
  log(...args: unknown[]): void;
  /**
   * Calls `fn` with the text typed at the console (`pvio console NAME`: dom0 writes
   * it into the ring's `in` half), as it comes (UTF-8, in pieces of any size).
   */
  onInput(fn: (text: string) => void): void;
}

/** A frontend hot-plugged into or detached from a guest ({@link Kernel.onDevice}). */
export interface DeviceEvent {
  /** `xvdb`, `eth1`, ... */
  readonly name: string;
  readonly change: 'added' | 'removed';
  /** The `Blkfront` or `Netfront`. */
  readonly device: unknown;
}

/** A guest module: its default export is called once on vCPU 0 and its result is reported to the toolstack. */
export type GuestMain = (kernel: Kernel) => Promise<unknown> | unknown;
/**
 * A guest module's optional `secondary` export: called once on every vCPU but 0,
 * after the first unpause; typically it registers {@link Kernel.serveVcpuCalls}
 * operations through which vCPU 0 hands it work. The vCPU keeps dispatching its
 * events after it returns.
 */
export type SecondaryMain = (kernel: Kernel) => Promise<void> | void;

/** The kernel object handed to a guest program. */
export class Kernel {
  readonly domid: DomId;
  readonly name: string;
  readonly vcpuId: number;
  readonly nrVcpus: number;
  readonly privileged: boolean;
  /** Guest arguments from the toolstack (structured clone). */
  readonly args: unknown;
  /** Guest command line (`extra` in the config). */
  readonly extra: string | undefined;
  readonly hypercall: HypercallPort;
  readonly evtchn: EventChannels;
  readonly gnttab: GrantTable;
  readonly memory: GuestMemory;
  /**
   * The balloon driver (xenstore/balloon.ts), off until the guest calls
   * `k.balloon.start()` on vCPU 0: then it moves the domain's reservation toward
   * `memory/target` (KiB, written by the toolstack: `pvio mem-set`).
   */
  readonly balloon: Balloon;
  /**
   * Time (hypervisor/time.ts): system time (ns since the machine booted, read from
   * `vcpu_time_info` without a hypercall), wall-clock time, the domain's virtual time
   * (`VCPUOP_get_runstate_info`), and this vCPU's one-shot timer (`set_timer_op`,
   * delivered as `VIRQ_TIMER`).
   */
  readonly time: GuestTime;
  readonly spin: SpinTokens;
  /** The XenStore client (over the XenStore ring; dom0 talks to its own xenstored). */
  xenbus!: XenbusClient;
  /** dom0 only: the XenStore daemon. */
  xenstored: Xenstored | null = null;
  readonly console: GuestConsole;
  /** Toolstack control channel (vCPU 0 only). */
  readonly control: MessagePort | null;
  /**
   * Channels to this domain's other vCPU workers, by vCPU index (null at our own).
   * Prefer {@link callVcpu} / {@link serveVcpuCalls}.
   */
  readonly siblings: ReadonlyArray<MessagePort | null>;
  private readonly siblingClients: Array<CallClient | null>;
  private readonly vcpuOps: GuestOps = {};
  /** Calls from other vCPUs that came before this vCPU served any operation. */
  private vcpuCallsEarly: Array<[MessagePort, CallMessage]> | null = [];
  /**
   * Frontends attached by the toolstack, by name (`xvda`, `eth0`, ...): those there at
   * boot, then those hot-plugged (added when they connect, removed once a detach has
   * closed them; see {@link onDevice}).
   */
  readonly devices = new Map<string, unknown>();
  private readonly deviceListeners: Array<(e: DeviceEvent) => void> = [];
  private readonly wake: Int32Array;
  private readonly keepAlive: NodeJS.Timeout;
  private stopped = false;
  private idleDone: Promise<void> | null = null;
  private readonly teardown: Array<() => Promise<void> | void> = [];
  private consoleFlush: (() => boolean) | null = null;
  /** Idle-loop counters: wake-ups, spins that caught an event, passes. */
  readonly counters = { wakeups: 0, spinHits: 0, passes: 0 };

  constructor(readonly boot: BootInfo) {
    this.domid = boot.domid as DomId;
    this.name = boot.name;
    this.vcpuId = boot.vcpuId;
    this.nrVcpus = boot.nrVcpus;
    this.privileged = boot.privileged;
    this.args = boot.guest.args;
    this.extra = boot.guest.extra;
    this.control = boot.controlPort;
    this.siblings = boot.siblingPorts;
    this.siblingClients = boot.siblingPorts.map((p, i) => (p ? new CallClient(p, `${boot.name}/vcpu${i}`) : null));
    for (const p of boot.siblingPorts) {
      p?.on('message', (m: CallMessage) => {
        if (m?.type !== 'call') return;
        if (this.vcpuCallsEarly) this.vcpuCallsEarly.push([p, m]);
        else answerCall(p, this.vcpuOps, m);
      });
    }
    this.spin = new SpinTokens(boot.spinTokens);
    this.hypercall = new HypercallPort(boot.hypercallPage, boot.hvWake, boot.spinTokens, boot.handlePort, (m) => this.onPush(m));
    for (const p of [boot.sharedInfo, boot.grantTable, boot.hypercallPage, ...boot.wakePages]) this.hypercall.frames.add(p);
    if (boot.store) this.hypercall.frames.add(boot.store.page);
    if (boot.console) this.hypercall.frames.add(boot.console.page);
    const wakes = boot.wakePages.map((p) => new Int32Array(p.buffer, 0, 1));
    this.wake = wakes[boot.vcpuId];
    this.evtchn = new EventChannels(this.hypercall, boot.sharedInfo.buffer, boot.vcpuId, wakes, this.spin);
    this.gnttab = new GrantTable(this.hypercall, boot.grantTable.buffer, boot.nrGrantEntries);
    this.memory = new GuestMemory(this.hypercall);
    this.balloon = new Balloon(this);
    this.time = new GuestTime(this.hypercall, boot.sharedInfo.buffer, boot.vcpuId, this.evtchn);
    this.keepAlive = setInterval(() => {}, 1 << 30);
    this.console = boot.console ? this.ringConsole(boot.console.page.buffer, boot.console.port as EvtchnPort) : this.stdoutConsole();
  }

  private onPush(m: HandleMessage): void {
    for (const i of m.info) this.evtchn.applyInfo(i);
  }

  private stdoutConsole(): GuestConsole {
    const prefix = `(${this.name}) `;
    return {
      write: (t) => void process.stdout.write(t),
      log: (...a) => void process.stdout.write(prefix + a.map((x) => (typeof x === 'string' ? x : String(x))).join(' ') + '\n'),
      onInput: () => undefined, // dom0 has no console ring: nothing is ever typed at it
    };
  }

  /** The console over `xencons_interface`: writes to `out`, notifies dom0's console daemon. */
  private ringConsole(buffer: SharedArrayBuffer, port: EvtchnPort): GuestConsole {
    const ends = consoleGuestEnds(new Uint8Array(buffer, 0, 4096));
    const pending: Uint8Array[] = [];
    const enc = new TextEncoder();
    /** Writes what fits; @returns true when nothing is left pending. */
    const flush = (): boolean => {
      let wrote = false;
      while (pending.length > 0) {
        const head = pending[0];
        const n = ends.out.write(head);
        if (n > 0) wrote = true;
        if (n < head.length) {
          pending[0] = head.subarray(n);
          break;
        }
        pending.shift();
      }
      if (wrote) this.evtchn.notify(port);
      return pending.length === 0;
    };
    this.consoleFlush = flush;
    const inputListeners: Array<(text: string) => void> = [];
    const inBuf = new Uint8Array(1024);
    const dec = new TextDecoder();
    /** Reads what dom0 wrote into `in` and hands it to the listeners. */
    const readInput = () => {
      // Unread input stays in the ring until the program has a reader (as a real
      // console's does), so a line typed before `onInput` is not lost.
      if (inputListeners.length === 0) return;
      let got = false;
      for (;;) {
        const n = ends.in.read(inBuf);
        if (n === 0) break;
        got = true;
        const text = dec.decode(inBuf.subarray(0, n), { stream: true });
        for (const fn of inputListeners) {
          try {
            fn(text);
          } catch {
            /* a listener's fault is its own */
          }
        }
      }
      if (got) this.evtchn.notify(port); // room again in `in`
    };
    // dom0 notifies us when it has consumed output (continue flushing) or written input.
    this.evtchn.on(port, () => {
      flush();
      readInput();
    });
    return {
      onInput: (fn) => {
        inputListeners.push(fn);
        if (inputListeners.length === 1) queueMicrotask(readInput); // what came before the first reader
      },
      write: (t) => {
        pending.push(enc.encode(t));
        flush();
      },
      log: (...a) => {
        pending.push(enc.encode(a.map((x) => (typeof x === 'string' ? x : String(x))).join(' ') + '\n'));
        flush();
      },
    };
  }

  /**
   * Waits (up to `timeoutMs`) until every console byte is in the ring, so dom0 can
   * still read it after this domain is gone.
   */
  async drainConsole(timeoutMs = 5000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (this.consoleFlush && !this.consoleFlush() && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /**
   * Connects the XenStore client: dom0 starts xenstored and talks to it in-process;
   * a domU uses its XenStore ring page and event channel from start info.
   */
  connectXenStore(): void {
    if (this.vcpuId !== 0) return; // one XenStore connection per domain, on vCPU 0
    if (this.privileged) {
      this.xenstored = new Xenstored();
      this.xenbus = connectLocal(this.xenstored, this.domid);
    } else {
      const s = this.boot.store!;
      this.xenbus = connectGuestToRing(this.evtchn, new Uint8Array(s.page.buffer, 0, 4096), s.port as EvtchnPort);
    }
  }

  /**
   * Calls `op` on vCPU `vcpu` of this domain (which serves it with
   * {@link serveVcpuCalls}): pvio's inter-processor call, since vCPUs do not share a heap.
   * @param args structured-clone data (SharedArrayBuffers are shared, not copied).
   * @throws CallError when the op throws there or no answer comes within `timeoutMs`;
   *   Error for a vCPU index that is ours or out of range.
   */
  callVcpu(vcpu: number, op: string, args: unknown = {}, timeoutMs = 30_000): Promise<unknown> {
    const c = this.siblingClients[vcpu];
    if (!c) return Promise.reject(new Error(`vcpu ${vcpu} is not a sibling of vcpu ${this.vcpuId} (domain has ${this.nrVcpus})`));
    return c.call(op, args, timeoutMs);
  }

  /**
   * Serves `ops` to calls from every other vCPU of this domain ({@link callVcpu});
   * later calls add to (or replace) the operations served. Calls that arrive before
   * the first one wait for it (then an op still unknown is answered with an error).
   */
  serveVcpuCalls(ops: GuestOps): void {
    Object.assign(this.vcpuOps, ops);
    const early = this.vcpuCallsEarly;
    this.vcpuCallsEarly = null;
    for (const [p, m] of early ?? []) answerCall(p, this.vcpuOps, m);
  }

  /**
   * Calls `fn` when a frontend is hot-plugged (`added`: connected and in
   * {@link devices}) or detached (`removed`: closed and gone from it).
   */
  onDevice(fn: (e: DeviceEvent) => void): void {
    this.deviceListeners.push(fn);
  }

  /** Adds a connected frontend to {@link devices} and tells the {@link onDevice} listeners. */
  addDevice(name: string, dev: unknown): void {
    this.devices.set(name, dev);
    this.tellDevice({ name, change: 'added', device: dev });
  }

  /** Removes a frontend from {@link devices} (if it is still the one given) and tells the listeners. */
  removeDevice(name: string, dev: unknown): void {
    if (this.devices.get(name) !== dev) return;
    this.devices.delete(name);
    this.tellDevice({ name, change: 'removed', device: dev });
  }

  private tellDevice(e: DeviceEvent): void {
    for (const fn of this.deviceListeners) {
      try {
        fn(e);
      } catch (err) {
        this.console.log(`a device listener threw: ${(err as Error)?.message ?? err}`);
      }
    }
  }

  /** Registers a teardown step run (last registered first) before the domain shuts down. */
  onTeardown(fn: () => Promise<void> | void): void {
    this.teardown.push(fn);
  }

  /** Runs the teardown steps (device Closing → Closed, grants ended, ports closed). */
  async runTeardown(): Promise<void> {
    while (this.teardown.length > 0) {
      const fn = this.teardown.pop()!;
      try {
        await fn();
      } catch (e) {
        this.console.log(`teardown step failed: ${(e as Error).message}`);
      }
    }
  }

  /**
   * The vCPU's event loop; resolves when {@link stop} is called.
   * While the hypervisor has the domain paused, events stay pending.
   */
  runIdleLoop(): Promise<void> {
    if (this.idleDone) return this.idleDone;
    this.idleDone = (async () => {
      let recent = false;
      let lastTurn = performance.now();
      while (!this.stopped) {
        const seen = Atomics.load(this.wake, I_WAKE);
        this.counters.passes++;
        this.hypercall.drainPushes();
        let work = 0;
        if (!this.hypercall.isPaused()) {
          // Senders wake the vCPU a port is bound to; whichever vCPU wakes folds the
          // pair pages (raising each event on its own vCPU), then dispatches its own.
          work = this.evtchn.fold();
          work += this.evtchn.dispatch();
        }
        if (work > 0) {
          recent = true;
          // Let promise continuations of the handlers run before the next pass; and while
          // events keep coming, give macrotasks (I/O callbacks, timers) a turn now and then.
          if (performance.now() - lastTurn > MACROTASK_TURN_MS) {
            await new Promise((r) => setImmediate(r));
            lastTurn = performance.now();
          } else {
            await Promise.resolve();
          }
          continue;
        }
        if (recent && this.spin.spinWhileEqual(this.wake, I_WAKE, seen, IDLE_SPIN_ITERATIONS)) {
          this.counters.spinHits++;
          continue;
        }
        recent = false;
        const w = Atomics.waitAsync(this.wake, I_WAKE, seen, 1000);
        if (w.async) await w.value;
        // Macrotasks (timers, I/O callbacks) get a turn between passes.
        await new Promise((r) => setImmediate(r));
        lastTurn = performance.now();
        this.counters.wakeups++;
      }
    })();
    return this.idleDone;
  }

  /** Waits until the hypervisor unpauses the domain (or `timeoutMs` passes). */
  async waitUnpaused(timeoutMs = 60_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (this.hypercall.isPaused()) {
      if (performance.now() > deadline) throw new Error('domain stayed paused');
      const seen = Atomics.load(this.wake, I_WAKE);
      if (!this.hypercall.isPaused()) break;
      const w = Atomics.waitAsync(this.wake, I_WAKE, seen, 100);
      if (w.async) await w.value;
    }
  }

  /** Stops the event loop and lets the worker exit. */
  stop(): void {
    this.stopped = true;
    clearInterval(this.keepAlive);
    for (const c of this.siblingClients) c?.failAll('domain stopping');
    for (const p of this.siblings) p?.close();
    Atomics.add(this.wake, I_WAKE, 1);
    Atomics.notify(this.wake, I_WAKE);
  }

  /**
   * `SCHEDOP_shutdown`: tells the hypervisor this domain is done (poweroff) or has
   * crashed. The hypervisor then destroys it.
   */
  shutdown(reason: number = SHUTDOWN.poweroff): void {
    const o = HypercallPort.argOffset(0, SCHED_SHUTDOWN.size);
    this.hypercall.page.setUint32(o + SCHED_SHUTDOWN.fields.reason.offset, reason, true);
    this.hypercall.call(HYPERVISOR.sched_op, SCHEDOP.shutdown, 1);
  }

  /** Counters of every layer of this vCPU, for reports. */
  snapshot(): Record<string, unknown> {
    return {
      hypercalls: { ...this.hypercall.counters.calls },
      hypercallWaits: { spun: this.hypercall.counters.spun, blocked: this.hypercall.counters.blocked, reissues: this.hypercall.counters.reissues },
      evtchn: { ...this.evtchn.counters },
      gnttab: { ...this.gnttab.counters },
      memory: { ...this.memory.counters },
      balloon: { ...this.balloon.counters },
      time: { ...this.time.counters },
      idle: { ...this.counters },
    };
  }
}
