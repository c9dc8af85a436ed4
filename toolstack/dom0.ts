/**
 * dom0's program: xenstored, the console daemon (xenconsoled), blkback, and the
 * toolstack agent that carries out the main thread's commands — introducing a new
 * domain to xenstored (mapping its XenStore page by grant ref 1 and binding its
 * XenStore port), attaching its console (grant ref 0), creating its disks' backend
 * and frontend directories, and releasing it when it is destroyed (`@releaseDomain`).
 *
 * @see docs/misc/xenstore.txt (INTRODUCE/RELEASE), tools/console/daemon, xl's device add
 */
import type { Kernel } from '../hypervisor/kernel.ts';
import { GNTST, GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE, type EvtchnPort, type GrantHandle } from '../hypervisor/abi.ts';
import { serveGuestRing } from '../xenstore/connect.ts';
import type { XenstoreRingServer } from '../xenstore/client.ts';
import { XenbusState, waitForState } from '../xenstore/xenbus.ts';
import { consoleDom0Ends } from '../rings/console-ring.ts';
import type { ByteRingProducer } from '../rings/byte-ring.ts';
import { BlkbackScheduler } from '../blkback/blkback.ts';
import { BlkbackDevice } from '../blkback/xenbus.ts';
import { openStore } from '../blkback/open-store.ts';
import { serveBlkbackQueues, storeIsShareable } from '../blkback/vcpu-queues.ts';
import { Bridge, type BridgePort, type BridgePortModule } from '../netback/bridge.ts';
import { NetbackDevice } from '../netback/xenbus.ts';
import { NetbackScheduler, type NetbackRate } from '../netback/netback.ts';
import { PcapWriter } from '../netback/pcap.ts';
import type { StoreSpec } from '../blkback/storage.ts';
import type { BlkbackFeatures } from '../blkback/features.ts';

/** A command from the toolstack to dom0. */
export type Dom0Request =
  /** `memoryKiB`: the guest's quota; dom0 writes `memory/static-max` and (if absent) `memory/target` from it. */
  | { type: 'introduce'; reqId: number; domid: number; name: string; storePort: number; consolePort: number; memoryKiB?: number }
  | {
    type: 'addDisk'; reqId: number; domid: number; vdev: string; virtualDevice: number; path: string; readOnly: boolean;
    features?: Partial<BlkbackFeatures>; store?: StoreSpec; initWaitDelayMs?: number; asyncStore?: boolean;
  }
  | { type: 'resizeDisk'; reqId: number; domid: number; vdev: string; sizeBytes: number }
  | { type: 'removeDisk'; reqId: number; domid: number; vdev: string; timeoutMs: number }
  | { type: 'addVif'; reqId: number; domid: number; vif: Dom0Vif }
  /** A user's bridge port: `module` (a file URL) is loaded here and joined to `bridge`. */
  | { type: 'addBridgePort'; reqId: number; bridge: string; module: string; args: unknown }
  | { type: 'removeVif'; reqId: number; domid: number; devid: number; timeoutMs: number }
  | { type: 'capture'; reqId: number; path: string | null }
  | { type: 'release'; reqId: number; domid: number }
  | { type: 'stats'; reqId: number }
  | { type: 'console'; reqId: number; forward: boolean }
  | { type: 'watchXenbus'; reqId: number }
  /** XenStore access for the toolstack (`pvio xenstore-read/-write/-ls`), with dom0's rights. */
  | { type: 'xsRead'; reqId: number; path: string }
  | { type: 'xsWrite'; reqId: number; path: string; value: string }
  | { type: 'xsList'; reqId: number; path: string }
  /** Text typed at a guest's console (`pvio console`): written into its ring's `in` half. */
  | { type: 'consoleInput'; reqId: number; domid: number; data: string }
  /**
   * A guest's credit-scheduler parameters changed (`Machine.setSchedParams`): blkback
   * (on every vCPU of dom0) and netback serve its rings with `weight` from now on (the
   * cap is the hypervisor's business; rings/weighted-scheduler.ts).
   */
  | { type: 'schedParams'; reqId: number; domid: number; weight: number; cap: number }
  | { type: 'shutdown'; reqId: number };

/** A vif as the toolstack asks dom0 to attach it (defaults filled in). */
export interface Dom0Vif {
  /** Index in the guest (`device/vif/<devid>`, `handle`). */
  readonly devid: number;
  /** `xx:xx:xx:xx:xx:xx`. */
  readonly mac: string;
  readonly bridge: string;
  /** MTU in bytes (written to the frontend dir). */
  readonly mtu: number;
  readonly rate: NetbackRate | null;
  /** Offer pvio's persistent buffer pool (else grant copy, Linux's way). */
  readonly persistent: boolean;
  readonly maxQueues?: number;
  readonly sg?: boolean;
  readonly gso?: boolean;
  readonly splitEventChannels?: boolean;
  /** False: the frontend is asked (`no-csum-offload` in its device dir) to write feature-no-csum-offload. */
  readonly csumOffload?: boolean;
}

/** dom0's answers (and its one `ready` notice). */
export type Dom0Reply =
  | { type: 'ready' }
  | { type: 'console'; domain: string; line: string }
  /** A device's XenbusState changed (`watchXenbus`): `path` is its `.../state` node; `state` null once removed. */
  | { type: 'xenbus'; path: string; state: number | null }
  | { type: 'reply'; reqId: number; ok: true; value: unknown }
  | { type: 'reply'; reqId: number; ok: false; error: string };

/** dom0's state for one introduced domain. */
interface Guest {
  domid: number;
  name: string;
  store: { server: XenstoreRingServer; port: EvtchnPort; handle: GrantHandle };
  /** Its console: `in` is where typed text goes (`pvio console`). */
  console: { port: EvtchnPort; handle: GrantHandle; drain(): void; partial: string; in: ByteRingProducer };
  disks: BlkbackDevice[];
  vifs: NetbackDevice[];
}

/** dom0's main: serves toolstack commands until told to shut down. */
export default async function dom0(k: Kernel): Promise<unknown> {
  const xs = k.xenbus;
  const xenstored = k.xenstored!;
  const sched = new BlkbackScheduler();
  const netSched = new NetbackScheduler();
  /** Bridges by name, created on first use. */
  const bridges = new Map<string, Bridge>();
  let capture: PcapWriter | null = null;
  const bridge = (name: string): Bridge => {
    let b = bridges.get(name);
    if (!b) bridges.set(name, (b = new Bridge(name, capture)));
    return b;
  };
  const guests = new Map<number, Guest>();
  const consoleCounters = { lines: 0, bytes: 0 };
  /** `@releaseDomain` watch events seen (the first one fires when the watch is set). */
  let releaseDomainEvents = 0;
  /** When set, guest console lines go to the toolstack (which shares the terminal with a progress bar). */
  let forwardConsole = false;
  /**
   * Reports every change of a device's `state` node (frontend
   * `/local/domain/<d>/device/<type>/<id>/state`, backend
   * `/local/domain/0/backend/<type>/<d>/<id>/state`) to the toolstack, once asked:
   * xenstored's change listener sees each committed change synchronously, so every
   * state a driver writes is reported, in order (a watch would re-read later and
   * could skip one).
   */
  let watchingXenbus = false;
  const lastStates = new Map<string, number | null>();
  const STATE_PATH = /^\/local\/domain\/\d+\/(device\/[a-z]+\/\d+|backend\/[a-z]+\/\d+\/\d+)\/state$/;
  const decoder = new TextDecoder();
  function watchXenbus(): void {
    if (watchingXenbus) return;
    watchingXenbus = true;
    xenstored.setChangeListener((paths) => {
      for (const path of paths) {
        if (!STATE_PATH.test(path)) continue;
        const node = xenstored.inspect(path);
        const v = node ? Number(decoder.decode(node.value)) : NaN;
        const st = Number.isInteger(v) ? v : null;
        if (lastStates.get(path) === st) continue;
        if (st === null) lastStates.delete(path);
        else lastStates.set(path, st);
        k.control!.postMessage({ type: 'xenbus', path, state: st } satisfies Dom0Reply);
      }
    });
  }
  /**
   * Writes `data` into a guest's console `in` ring and notifies it, waiting (up to
   * 5 s) while the ring is full. @returns the bytes written.
   * @throws Error when the guest is not introduced or does not read its console.
   */
  async function consoleInput(domid: number, data: string): Promise<number> {
    const g = guests.get(domid);
    if (!g) throw new Error(`dom${domid} is not introduced`);
    let bytes = new TextEncoder().encode(data);
    const total = bytes.length;
    const deadline = Date.now() + 5000;
    while (bytes.length > 0) {
      const n = g.console.in.write(bytes);
      if (n > 0) k.evtchn.notify(g.console.port);
      bytes = bytes.subarray(n);
      if (bytes.length === 0) break;
      if (Date.now() > deadline) throw new Error(`${g.name} does not read its console`);
      await new Promise((r) => setTimeout(r, 5));
    }
    return total;
  }

  /** Every node at and below `path`, depth first: [path, value] (a directory's value too, usually empty). */
  async function xsList(path: string): Promise<Array<[string, string]>> {
    const out: Array<[string, string]> = [];
    const walk = async (p: string): Promise<void> => {
      out.push([p, await xs.read(p)]);
      for (const c of await xs.directory(p)) await walk(p === '/' ? `/${c}` : `${p}/${c}`);
    };
    await walk(path);
    return out;
  }
  const emit = (name: string, line: string) => {
    consoleCounters.lines++;
    if (forwardConsole) k.control!.postMessage({ type: 'console', domain: name, line } satisfies Dom0Reply);
    else process.stdout.write(`[${name}] ${line}\n`);
  };
  /** Final counters of devices whose domain is gone, by device name. */
  const retired: Record<string, unknown> = {};
  /** Final counters of vifs whose domain is gone, by `guest/vifD.N`. */
  const retiredVifs: Record<string, unknown> = {};
  // Queues served by dom0's other vCPUs report their protocol errors here.
  k.serveVcpuCalls({
    'blkback.ringError': (a: { key: string; message: string }) => {
      const [domid, devid] = a.key.split('/').map(Number);
      guests.get(domid)?.disks.find((d) => d.opts.devid === devid)?.remoteRingError(a.key, a.message);
    },
  });
  /**
   * Serves guest `domid`'s rings — its disks' on every vCPU of dom0, its vifs' — with
   * `weight` (null: forgets the guest). @throws RangeError for a weight that is not 1..65535.
   */
  async function setBackendWeight(domid: number, weight: number | null): Promise<void> {
    if (weight === null) {
      sched.forgetDomain(domid);
      netSched.forgetDomain(domid);
    } else {
      sched.setWeight(domid, weight);
      netSched.setWeight(domid, weight);
    }
    const others = Array.from({ length: k.nrVcpus - 1 }, (_, i) => i + 1);
    await Promise.all(others.map((v) => k.callVcpu(v, 'blkback.setWeight', { domid, weight })));
  }
  await xs.write('/local/domain/0/name', 'Domain-0');
  await xs.write('/local/domain/0/domid', '0');

  // @releaseDomain: blkback tears down the devices of every domain that is gone.
  await xs.watch('@releaseDomain', () => {
    releaseDomainEvents++;
    for (const g of guests.values()) {
      if (!xenstored.isIntroduced(g.domid)) void teardownGuest(g);
    }
  });

  function mapOne(domid: number, ref: number, what: string): { page: Uint8Array; handle: GrantHandle } {
    const [m] = k.gnttab.map([{ domid, ref: ref as never, readonly: false }]);
    if (m.status !== GNTST.okay) throw new Error(`cannot map ${what} of dom${domid}: status ${m.status}`);
    return { page: m.page!, handle: m.handle };
  }

  function introduce(domid: number, name: string, storePort: number, consolePort: number): void {
    const sp = mapOne(domid, GNTTAB_RESERVED_XENSTORE, 'XenStore page');
    xenstored.introduce(domid);
    const store = serveGuestRing(k.evtchn, xenstored, domid, sp.page, storePort);
    const cp = mapOne(domid, GNTTAB_RESERVED_CONSOLE, 'console page');
    const ends = consoleDom0Ends(cp.page);
    const port = k.evtchn.bindInterdomain(domid, consolePort);
    const buf = new Uint8Array(2048);
    const dec = new TextDecoder();
    const g: Guest = {
      domid, name, disks: [], vifs: [], store: { ...store, handle: sp.handle },
      console: {
        port, handle: cp.handle, partial: '', in: ends.in,
        drain() {
          let got = false;
          for (;;) {
            const n = ends.out.read(buf);
            if (n === 0) break;
            got = true;
            consoleCounters.bytes += n;
            g.console.partial += dec.decode(buf.subarray(0, n), { stream: true });
          }
          const lines = g.console.partial.split('\n');
          g.console.partial = lines.pop()!;
          for (const l of lines) emit(name, l);
          // Tell the guest there is room again.
          if (got) k.evtchn.notify(port);
        },
      },
    };
    k.evtchn.on(port, () => {
      try {
        g.console.drain();
      } catch (e) {
        k.console.log(`console of ${name}: ${(e as Error).message}`);
      }
    });
    guests.set(domid, g);
  }

  /**
   * Writes a new guest's `memory/` directory as libxl does: dom0 owns it and the guest
   * may only read it (libxl's `roperm`); `static-max` is the quota and `target` the
   * reservation wanted, both in KiB (`target` only when not already there, so one
   * written before the introduction stays). The guest's balloon driver watches `target`.
   * @see tools/libs/light/libxl_create.c (libxl__domain_make), libxl_dom.c (libxl__build_post)
   */
  async function writeMemoryKeys(domid: number, kib: number): Promise<void> {
    const dir = `/local/domain/${domid}/memory`;
    await xs.transaction(async (tx) => {
      await tx.mkdir(dir);
      await tx.setPerms(dir, [{ domid: 0, perm: 'n' }, { domid, perm: 'r' }]);
      await tx.write(`${dir}/static-max`, String(kib));
      if ((await tx.readOptional(`${dir}/target`)) === undefined) await tx.write(`${dir}/target`, String(kib));
    });
  }

  async function addDisk(r: Extract<Dom0Request, { type: 'addDisk' }>): Promise<void> {
    const g = guests.get(r.domid);
    if (!g) throw new Error(`dom${r.domid} is not introduced`);
    if (g.disks.some((d) => d.opts.name === `${g.name}/${r.vdev}` || d.opts.devid === r.virtualDevice)) {
      throw new Error(`dom${r.domid} already has a disk ${r.vdev}`);
    }
    // The asynchronous mode completes through libuv by request id, possibly out of order.
    const disk = { path: r.path, readOnly: r.readOnly, store: r.store };
    const ctx = { domid: r.domid, sync: !r.asyncStore };
    const store = await openStore(disk, ctx);
    const be = `/local/domain/0/backend/vbd/${r.domid}/${r.virtualDevice}`;
    const fe = `/local/domain/${r.domid}/device/vbd/${r.virtualDevice}`;
    // The toolstack's part of the handshake: both directories, both Initialising.
    await xs.transaction(async (tx) => {
      // Permissions first: nodes created below inherit their parent's.
      await tx.mkdir(be);
      await tx.setPerms(be, [{ domid: 0, perm: 'n' }, { domid: r.domid, perm: 'r' }]);
      await tx.mkdir(fe);
      await tx.setPerms(fe, [{ domid: r.domid, perm: 'n' }, { domid: 0, perm: 'r' }]);
      await tx.write(`${be}/frontend`, fe);
      await tx.write(`${be}/frontend-id`, String(r.domid));
      await tx.write(`${be}/online`, '1');
      await tx.write(`${be}/params`, r.path);
      await tx.write(`${be}/mode`, r.readOnly ? 'r' : 'w');
      await tx.write(`${be}/dev`, r.vdev);
      await tx.write(`${be}/state`, String(XenbusState.Initialising));
      await tx.write(`${fe}/backend`, be);
      await tx.write(`${fe}/backend-id`, '0');
      await tx.write(`${fe}/virtual-device`, String(r.virtualDevice));
      await tx.write(`${fe}/device-type`, 'disk');
      await tx.write(`${fe}/state`, String(XenbusState.Initialising));
    });
    const dev = new BlkbackDevice(k, sched, {
      frontDomid: r.domid, devid: r.virtualDevice, name: `${g.name}/${r.vdev}`, store, readOnly: r.readOnly,
      features: r.features, initWaitDelayMs: r.initWaitDelayMs,
      // dom0's other vCPUs may serve queues of a store that can be opened once per vCPU.
      share: storeIsShareable(r.store) ? { disk, ctx } : undefined,
    });
    g.disks.push(dev);
    const started = dev.start();
    if (!r.initWaitDelayMs) await started;
    else void started;
  }

  /**
   * Detaches a disk from a running guest, as `xl block-detach`: the backend goes
   * Closing; once the frontend is Closed (or after `timeoutMs`: forced) the backend
   * is destroyed (Closed, its directory removed, the store closed) and the frontend
   * directory removed. @returns whether it had to be forced.
   * @throws Error when the guest has no such disk.
   */
  async function removeDisk(r: Extract<Dom0Request, { type: 'removeDisk' }>): Promise<{ forced: boolean }> {
    const g = guests.get(r.domid);
    if (!g) throw new Error(`dom${r.domid} is not introduced`);
    const i = g.disks.findIndex((d) => d.opts.name === `${g.name}/${r.vdev}`);
    if (i < 0) throw new Error(`dom${r.domid} has no disk ${r.vdev}`);
    const d = g.disks[i];
    g.disks.splice(i, 1);
    const fe = `/local/domain/${r.domid}/device/vbd/${d.opts.devid}`;
    await d.requestClose();
    let forced = false;
    await waitForState(xs, fe, (s) => s === XenbusState.Closed || s === XenbusState.Unknown, { timeoutMs: r.timeoutMs }).catch(() => {
      forced = true;
    });
    await d.destroy();
    retired[d.opts.name] = await diskStats(d);
    await xs.rm(fe).catch(() => undefined);
    return { forced };
  }

  async function addVif(domid: number, v: Dom0Vif): Promise<void> {
    const g = guests.get(domid);
    if (!g) throw new Error(`dom${domid} is not introduced`);
    if (g.vifs.some((x) => x.opts.devid === v.devid)) throw new Error(`dom${domid} already has a vif ${v.devid}`);
    const be = `/local/domain/0/backend/vif/${domid}/${v.devid}`;
    const fe = `/local/domain/${domid}/device/vif/${v.devid}`;
    await xs.transaction(async (tx) => {
      await tx.mkdir(be);
      await tx.setPerms(be, [{ domid: 0, perm: 'n' }, { domid, perm: 'r' }]);
      await tx.mkdir(fe);
      await tx.setPerms(fe, [{ domid, perm: 'n' }, { domid: 0, perm: 'r' }]);
      await tx.write(`${be}/frontend`, fe);
      await tx.write(`${be}/frontend-id`, String(domid));
      await tx.write(`${be}/online`, '1');
      await tx.write(`${be}/handle`, String(v.devid));
      await tx.write(`${be}/mac`, v.mac);
      await tx.write(`${be}/bridge`, v.bridge);
      if (v.rate) await tx.write(`${be}/rate`, `${v.rate.bytesPerInterval},${v.rate.intervalUs}`);
      await tx.write(`${be}/state`, String(XenbusState.Initialising));
      await tx.write(`${fe}/backend`, be);
      await tx.write(`${fe}/backend-id`, '0');
      await tx.write(`${fe}/handle`, String(v.devid));
      await tx.write(`${fe}/mac`, v.mac);
      await tx.write(`${fe}/mtu`, String(v.mtu));
      if (v.persistent) await tx.write(`${fe}/feature-persistent`, '1');
      if (v.csumOffload === false) await tx.write(`${fe}/no-csum-offload`, '1');
      await tx.write(`${fe}/state`, String(XenbusState.Initialising));
    });
    const dev = new NetbackDevice(k, netSched, {
      frontDomid: domid, devid: v.devid, bridge: bridge(v.bridge), persistent: v.persistent, maxQueues: v.maxQueues,
      sg: v.sg, gso: v.gso, splitEventChannels: v.splitEventChannels, rate: v.rate,
    });
    g.vifs.push(dev);
    await dev.start();
  }

  /**
   * Detaches a vif from a running guest, as `xl network-detach`: the backend goes
   * Closing (and leaves the bridge when the frontend closes); once the frontend is
   * Closed (or after `timeoutMs`: forced) the backend is destroyed and the frontend
   * directory removed. @returns whether it had to be forced.
   * @throws Error when the guest has no such vif.
   */
  async function removeVif(r: Extract<Dom0Request, { type: 'removeVif' }>): Promise<{ forced: boolean }> {
    const g = guests.get(r.domid);
    if (!g) throw new Error(`dom${r.domid} is not introduced`);
    const i = g.vifs.findIndex((x) => x.opts.devid === r.devid);
    if (i < 0) throw new Error(`dom${r.domid} has no vif ${r.devid}`);
    const v = g.vifs[i];
    g.vifs.splice(i, 1);
    await v.requestClose();
    let forced = false;
    await waitForState(xs, v.frontendDir, (s) => s === XenbusState.Closed || s === XenbusState.Unknown, { timeoutMs: r.timeoutMs }).catch(() => {
      forced = true;
    });
    await v.destroy();
    retiredVifs[`${g.name}/${v.name}`] = vifStats(v);
    await xs.rm(v.frontendDir).catch(() => undefined);
    return { forced };
  }

  /**
   * Loads a user's bridge-port module (its default export, a {@link BridgePortModule})
   * and joins the port it makes to bridge `name` (created if new).
   * @returns the port's name. @throws Error when the module cannot be loaded or makes no port.
   */
  async function addBridgePort(name: string, module: string, args: unknown): Promise<string> {
    const mod = (await import(module)) as { default?: BridgePortModule };
    if (typeof mod.default !== 'function') throw new Error(`${module}: its default export must make a bridge port`);
    const b = bridge(name);
    // The port object exists before `input` is first called: the module may call it later only.
    let port: BridgePort | null = null;
    const made = mod.default({
      bridge: name, args,
      input: (frame, csumBlank = false) => {
        if (port) b.input(port, frame, csumBlank);
      },
      log: (...a) => k.console.log(`bridge port ${name}:`, ...a),
    });
    if (made && typeof (made as { then?: unknown }).then === 'function') {
      void (made as unknown as Promise<unknown>).catch(() => undefined); // not a port: do not let it reject unhandled in dom0
      throw new Error(`${module}: its default export must return the port itself, not a promise`);
    }
    if (!made || typeof made.output !== 'function' || typeof made.name !== 'string') throw new Error(`${module}: the port must have a name and an output(frame) method`);
    port = { name: made.name, csumOffload: made.csumOffload ?? false, output: (f, c) => made.output(f, c) };
    b.addPort(port);
    return made.name;
  }

  function vifStats(v: NetbackDevice): unknown {
    return { ...v.counters(), bridge: v.opts.bridge.name, protocolError: v.protocolError, negotiated: v.negotiated };
  }

  async function diskStats(d: BlkbackDevice): Promise<unknown> {
    return { ...(await d.counters()), sectors: d.sectors, protocolError: d.protocolError, features: d.features, negotiated: d.negotiated };
  }

  const tearing = new Map<number, Promise<void>>();
  function teardownGuest(g: Guest): Promise<void> {
    let p = tearing.get(g.domid);
    if (p) return p;
    p = (async () => {
      for (const d of g.disks) {
        await d.destroy();
        retired[d.opts.name] = await diskStats(d);
      }
      for (const v of g.vifs) {
        await v.destroy();
        retiredVifs[`${g.name}/${v.name}`] = vifStats(v);
      }
      try {
        g.console.drain();
      } catch {
        /* the page stays mapped until we unmap it below */
      }
      if (g.console.partial) emit(g.name, g.console.partial);
      for (const port of [g.console.port, g.store.port]) {
        k.evtchn.off(port);
        try {
          k.evtchn.close(port);
        } catch {
          /* already closed */
        }
      }
      k.gnttab.unmap([g.console.handle, g.store.handle]);
      await xs.rm(`/local/domain/${g.domid}`).catch(() => undefined);
      await xs.rm(`/local/domain/0/backend/vbd/${g.domid}`).catch(() => undefined);
      guests.delete(g.domid);
    })();
    tearing.set(g.domid, p);
    return p;
  }

  async function stats(): Promise<unknown> {
    const disks: Record<string, unknown> = { ...retired };
    for (const g of guests.values()) for (const d of g.disks) disks[d.opts.name] = await diskStats(d);
    const vifs: Record<string, unknown> = { ...retiredVifs };
    for (const g of guests.values()) for (const v of g.vifs) vifs[`${g.name}/${v.name}`] = vifStats(v);
    return {
      disks, vifs,
      bridges: Object.fromEntries([...bridges].map(([n, b]) => [n, { ...b.counters, ports: b.portNames() }])), console: { ...consoleCounters }, releaseDomainEvents, xenstored: { ...xenstored.counters },
      guests: [...guests.values()].map((g) => ({ domid: g.domid, name: g.name })), kernel: k.snapshot(),
      // vCPU 0's blkback scheduler: rounds, weighted rounds, whether weights apply now.
      blkbackSched: { ...sched.counters, weighted: sched.isWeighted() },
      // netback's scheduler (vCPU 0 serves every vif queue): the same.
      netbackSched: { ...netSched.counters, weighted: netSched.isWeighted() },
    };
  }

  const control = k.control!;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  control.on('message', (req: Dom0Request) => {
    void (async () => {
      try {
        let value: unknown = null;
        switch (req.type) {
          case 'introduce':
            introduce(req.domid, req.name, req.storePort, req.consolePort);
            if (req.memoryKiB !== undefined) await writeMemoryKeys(req.domid, req.memoryKiB);
            break;
          case 'addDisk': await addDisk(req); break;
          case 'removeDisk': value = await removeDisk(req); break;
          case 'resizeDisk': {
            const d = guests.get(req.domid)?.disks.find((x) => x.opts.name.endsWith(`/${req.vdev}`));
            if (!d) throw new Error(`dom${req.domid} has no disk ${req.vdev}`);
            await d.resize(req.sizeBytes);
            break;
          }
          case 'release': {
            const g = guests.get(req.domid);
            if (xenstored.isIntroduced(req.domid)) xenstored.release(req.domid); // fires @releaseDomain
            if (g) await teardownGuest(g);
            void setBackendWeight(req.domid, null).catch(() => undefined);
            break;
          }
          case 'schedParams': await setBackendWeight(req.domid, req.weight); break;
          case 'stats': value = await stats(); break;
          case 'addVif': await addVif(req.domid, req.vif); break;
          case 'addBridgePort': value = await addBridgePort(req.bridge, req.module, req.args); break;
          case 'removeVif': value = await removeVif(req); break;
          case 'capture':
            capture?.close();
            capture = req.path ? PcapWriter.open(req.path) : null;
            for (const b of bridges.values()) b.setCapture(capture);
            break;
          case 'console': forwardConsole = req.forward; break;
          case 'watchXenbus': watchXenbus(); break;
          case 'xsRead': value = await xs.read(req.path); break;
          case 'xsWrite': await xs.write(req.path, req.value); break;
          case 'xsList': value = await xsList(req.path); break;
          case 'consoleInput': value = await consoleInput(req.domid, req.data); break;
          case 'shutdown':
            for (const g of [...guests.values()]) await teardownGuest(g);
            capture?.close();
            capture = null;
            resolveDone();
            break;
        }
        control.postMessage({ type: 'reply', reqId: req.reqId, ok: true, value } satisfies Dom0Reply);
      } catch (e) {
        control.postMessage({ type: 'reply', reqId: req.reqId, ok: false, error: (e as Error).message } satisfies Dom0Reply);
      }
    })();
  });
  control.postMessage({ type: 'ready' } satisfies Dom0Reply);
  await done;
  return stats();
}

/** dom0's other vCPUs: they serve the blkback queues vCPU 0 hands them (blkback/vcpu-queues.ts). */
export function secondary(k: Kernel): void {
  serveBlkbackQueues(k);
}
