/**
 * netback's XenBus side: one vif's negotiation with its netfront, apart from the
 * data path (netback/netback.ts), and its port on a bridge (netback/bridge.ts).
 *
 * Backend states, as Linux's xen-netback:
 *
 *   Initialising ──(features written)──▶ InitWait
 *       ──(frontend Connected: map rings, bind ports, join the bridge)──▶ Connected
 *   frontend Closing ──▶ disconnect ──▶ Closing;  frontend Closed ──▶ Closed
 *   frontend back to Initialising ──▶ InitWait (reconnectable)
 *
 * Linux netback ignores the frontend's Initialised and connects on Connected (netfront
 * writes its keys and goes straight to Connected); so does this one.
 *
 * Keys written (backend dir) at probe: `feature-sg`, `feature-gso-tcpv4`,
 * `feature-gso-tcpv6`, `feature-rx-copy` (1), `feature-rx-flip` (0),
 * `feature-split-event-channels`, `multi-queue-max-queues`, and pvio's extension
 * `feature-persistent` (a fixed pool of granted buffers, kept mapped: see
 * netback.ts) when the vif's config asks for it. The toolstack wrote `mac`, `handle`,
 * `bridge` and, for a rate limit, `rate` ("bytes,usec").
 * Keys read (frontend dir): `tx-ring-ref`, `rx-ring-ref`, `event-channel` or
 * `event-channel-tx` + `event-channel-rx` — under `queue-N/` when
 * `multi-queue-num-queues` ≥ 2 —, `request-rx-copy` (must be 1, as Linux requires),
 * `feature-rx-notify`, `feature-sg`, `feature-no-csum-offload`, `feature-persistent`.
 *
 * @see xen/include/public/io/netif.h, Linux drivers/net/xen-netback/xenbus.c
 */
import { PvioError, ProtocolError } from '../rings/errors.ts';
import { GNTST, PAGE_SIZE, type EvtchnPort, type GrantHandle, type GrantRef } from '../hypervisor/abi.ts';
import type { Kernel } from '../hypervisor/kernel.ts';
import { XenbusState, switchState, readState, readUintKey } from '../xenstore/xenbus.ts';
import type { Unwatch } from '../xenstore/client.ts';
import { NetbackQueue, type NetbackCounters, type NetbackRate, type NetbackScheduler } from './netback.ts';
import type { Bridge, BridgePort } from './bridge.ts';

/** Most queues a vif offers (Linux: min(8, online CPUs)). */
export const NETBACK_MAX_QUEUES = 8;

/** The backend could not connect (bad keys, a ring that does not map, no rx-copy...). */
export class NetbackError extends PvioError {
  constructor(message: string) {
    super('PVIO_ERR_NETBACK', message);
  }
}

/** What the toolstack asks netback to serve. */
export interface NetbackDeviceOptions {
  readonly frontDomid: number;
  /** The vif's index in its guest (`handle`, `device/vif/<devid>`). */
  readonly devid: number;
  /** The bridge the vif joins. */
  readonly bridge: Bridge;
  /** Offer pvio's persistent buffer pool (`feature-persistent`). */
  readonly persistent: boolean;
  /** Most queues offered (default {@link NETBACK_MAX_QUEUES}). */
  readonly maxQueues?: number;
  /** Offer split event channels (default true). */
  readonly splitEventChannels?: boolean;
  /** Offer scatter-gather (default true). */
  readonly sg?: boolean;
  /** Offer GSO (default true). */
  readonly gso?: boolean;
  /** The credit scheduler, or null. */
  readonly rate: NetbackRate | null;
}

/** One connected queue with what it mapped and bound. */
interface Queue {
  q: NetbackQueue;
  ports: EvtchnPort[];
  handles: GrantHandle[];
}

/** One vif, backend side; while connected it is a port of its bridge. */
export class NetbackDevice implements BridgePort {
  readonly backendDir: string;
  readonly frontendDir: string;
  readonly name: string;
  csumOffload = false;
  private queues: Queue[] = [];
  private unwatch: Unwatch | null = null;
  private state = XenbusState.Initialising;
  private busy: Promise<void> = Promise.resolve();
  private destroyed = false;
  private rr = 0;
  /** A protocol error that disabled a queue, if any. */
  protocolError: string | null = null;
  /** Counters of queues of past connections. */
  private readonly past: NetbackCounters[] = [];
  /** What the current connection negotiated (for reports). */
  negotiated: { queues: number; persistent: boolean; split: boolean; sg: boolean; csumOffload: boolean } | null = null;

  constructor(private readonly k: Kernel, private readonly sched: NetbackScheduler, readonly opts: NetbackDeviceOptions) {
    this.backendDir = `/local/domain/${k.domid}/backend/vif/${opts.frontDomid}/${opts.devid}`;
    this.frontendDir = `/local/domain/${opts.frontDomid}/device/vif/${opts.devid}`;
    this.name = `vif${opts.frontDomid}.${opts.devid}`;
  }

  /** Probe: advertises features, goes InitWait and follows the frontend's state. */
  async start(): Promise<void> {
    const dir = this.backendDir;
    const o = this.opts;
    await this.k.xenbus.transaction(async (tx) => {
      await tx.write(`${dir}/feature-sg`, o.sg === false ? '0' : '1');
      await tx.write(`${dir}/feature-gso-tcpv4`, o.gso === false ? '0' : '1');
      await tx.write(`${dir}/feature-gso-tcpv6`, o.gso === false ? '0' : '1');
      await tx.write(`${dir}/feature-rx-copy`, '1');
      await tx.write(`${dir}/feature-rx-flip`, '0');
      await tx.write(`${dir}/feature-split-event-channels`, o.splitEventChannels === false ? '0' : '1');
      await tx.write(`${dir}/multi-queue-max-queues`, String(o.maxQueues ?? NETBACK_MAX_QUEUES));
      await tx.write(`${dir}/feature-persistent`, o.persistent ? '1' : '0');
    });
    await this.setState(XenbusState.InitWait);
    this.unwatch = await this.k.xenbus.watch(`${this.frontendDir}/state`, () => this.serialize(() => this.frontendChanged()));
  }

  private serialize(fn: () => Promise<void>): void {
    this.busy = this.busy.then(fn).catch((e) => {
      this.k.console.log(`netback ${this.name}: ${(e as Error).message}`);
    });
  }

  private async setState(s: XenbusState): Promise<void> {
    this.state = s;
    await switchState(this.k.xenbus, this.backendDir, s);
  }

  private async frontendChanged(): Promise<void> {
    if (this.destroyed) return;
    const fs = await readState(this.k.xenbus, this.frontendDir);
    switch (fs) {
      case XenbusState.Connected:
        if (this.state !== XenbusState.Connected && this.state !== XenbusState.Closing && this.state !== XenbusState.Closed) await this.connect();
        break;
      case XenbusState.Closing:
        this.disconnect();
        if (this.state !== XenbusState.Closed) await this.setState(XenbusState.Closing);
        break;
      case XenbusState.Closed:
        this.disconnect();
        await this.setState(XenbusState.Closed);
        break;
      case XenbusState.Initialising:
        if (this.state === XenbusState.Closed) {
          this.disconnect();
          await this.setState(XenbusState.InitWait);
        }
        break;
      default:
        break;
    }
  }

  private frontUint(key: string, dflt: number): Promise<number> {
    return readUintKey(this.k.xenbus, `${this.frontendDir}/${key}`, dflt,
      (v) => new NetbackError(`bad ${key} '${v.slice(0, 40)}' from dom${this.opts.frontDomid}`));
  }

  /** Maps every queue's rings, binds its ports, joins the bridge, Connected. */
  private async connect(): Promise<void> {
    const o = this.opts;
    if ((await this.frontUint('request-rx-copy', 0)) !== 1) throw new NetbackError(`dom${o.frontDomid} did not write request-rx-copy=1 (flipping is not supported)`);
    const nq = await this.frontUint('multi-queue-num-queues', 1);
    const maxQ = o.maxQueues ?? NETBACK_MAX_QUEUES;
    if (nq < 1 || nq > maxQ) throw new NetbackError(`multi-queue-num-queues ${nq} not in 1..${maxQ}`);
    const sg = o.sg !== false && (await this.frontUint('feature-sg', 0)) === 1;
    const csumOffload = (await this.frontUint('feature-no-csum-offload', 0)) !== 1;
    const persistent = o.persistent && (await this.frontUint('feature-persistent', 0)) === 1;
    const want: Array<{ tx: number; rx: number; evTx: number; evRx: number }> = [];
    let split = false;
    for (let q = 0; q < nq; q++) {
      const p = nq > 1 ? `queue-${q}/` : '';
      const tx = await this.frontUint(`${p}tx-ring-ref`, -1);
      const rx = await this.frontUint(`${p}rx-ring-ref`, -1);
      const one = await this.frontUint(`${p}event-channel`, -1);
      let evTx = one;
      let evRx = one;
      if (one < 0 && o.splitEventChannels !== false) {
        evTx = await this.frontUint(`${p}event-channel-tx`, -1);
        evRx = await this.frontUint(`${p}event-channel-rx`, -1);
        split = true;
      }
      if (tx < 0 || rx < 0 || evTx <= 0 || evRx <= 0) throw new NetbackError(`dom${o.frontDomid} wrote no ${p}tx-ring-ref/rx-ring-ref/event-channel`);
      want.push({ tx, rx, evTx, evRx });
    }
    try {
      for (const [i, w] of want.entries()) this.queues.push(this.connectQueue(i, nq, w, { persistent, sg, csumOffload }));
    } catch (e) {
      this.disconnect();
      throw e;
    }
    this.csumOffload = csumOffload;
    this.negotiated = { queues: nq, persistent, split, sg, csumOffload };
    o.bridge.addPort(this);
    await this.setState(XenbusState.Connected);
    for (const q of this.queues) this.sched.kick(q.q);
  }

  private connectQueue(i: number, nq: number, w: { tx: number; rx: number; evTx: number; evRx: number },
    f: { persistent: boolean; sg: boolean; csumOffload: boolean }): Queue {
    const domid = this.opts.frontDomid;
    const maps = this.k.gnttab.map([
      { domid, ref: w.tx as GrantRef, readonly: false },
      { domid, ref: w.rx as GrantRef, readonly: false },
    ]);
    const handles = maps.filter((m) => m.status === GNTST.okay).map((m) => m.handle);
    if (handles.length !== 2) {
      this.k.gnttab.unmap(handles);
      throw new NetbackError(`rings of dom${domid} do not map (${maps.map((m) => m.status).join(', ')})`);
    }
    const ports: EvtchnPort[] = [];
    try {
      ports.push(this.k.evtchn.bindInterdomain(domid, w.evTx));
      if (w.evRx !== w.evTx) ports.push(this.k.evtchn.bindInterdomain(domid, w.evRx));
    } catch (e) {
      for (const p of ports) this.k.evtchn.close(p);
      this.k.gnttab.unmap(handles);
      throw e;
    }
    const name = nq > 1 ? `${this.name}-q${i}` : this.name;
    const q: NetbackQueue = new NetbackQueue({
      name, frontDomid: domid, txMem: maps[0].page!.subarray(0, PAGE_SIZE), rxMem: maps[1].page!.subarray(0, PAGE_SIZE),
      txPort: ports[0], rxPort: ports[ports.length - 1], persistent: f.persistent, sg: f.sg, csumOffload: f.csumOffload,
      rate: this.opts.rate,
      deliver: (frame, csumBlank) => this.opts.bridge.input(this, frame, csumBlank),
      onError: (e) => {
        this.protocolError = e.message;
        const why = e instanceof ProtocolError ? `frontend dom${domid} broke the protocol` : 'serving the rings failed';
        this.k.console.log(`netback ${name}: ${why}, queue disabled: ${e.message}`);
      },
      kick: () => this.sched.kick(q),
    }, this.k.evtchn, this.k.gnttab, this.k.memory);
    for (const p of ports) this.k.evtchn.on(p, () => this.sched.kick(q));
    return { q, ports, handles };
  }

  /** BridgePort: a frame for the guest goes to one of its queues (round robin over live ones). */
  output(frame: Uint8Array, csumBlank: boolean): void {
    const qs = this.queues;
    if (qs.length === 0) return;
    const q = qs.length === 1 ? qs[0] : qs[this.rr++ % qs.length];
    q.q.enqueueRx(frame, csumBlank);
  }

  /** Counters of the data path, summed over connections and queues; `perQueue`: each queue (its tx and rx rings) of the current connection. */
  counters(): NetbackCounters & { state: string; queues: number; perQueue: NetbackCounters[] } {
    const sum = {} as NetbackCounters;
    for (const c of [...this.past, ...this.queues.map((q) => q.q.counters)]) {
      for (const [key, v] of Object.entries(c)) sum[key as keyof NetbackCounters] = (sum[key as keyof NetbackCounters] ?? 0) + v;
    }
    return { ...sum, state: XenbusState[this.state], queues: this.queues.length, perQueue: this.queues.map((q) => ({ ...q.q.counters })) };
  }

  /** Leaves the bridge, stops the queues, closes the ports and unmaps the rings. */
  private disconnect(): void {
    this.opts.bridge.removePort(this);
    const queues = this.queues;
    this.queues = [];
    for (const q of queues) {
      q.q.close();
      this.past.push({ ...q.q.counters });
      for (const p of q.ports) {
        this.k.evtchn.off(p);
        try {
          this.k.evtchn.close(p);
        } catch {
          /* already closed */
        }
      }
      this.k.gnttab.unmap(q.handles);
    }
  }

  /**
   * The toolstack detaches the vif while the guest runs (`xl network-detach`): the
   * backend goes Closing, which asks the frontend to close; its Closing and Closed
   * then take the backend to Closed.
   */
  requestClose(): Promise<void> {
    return new Promise((resolve) => {
      this.serialize(async () => {
        if (!this.destroyed && this.state !== XenbusState.Closing && this.state !== XenbusState.Closed) await this.setState(XenbusState.Closing);
        resolve();
      });
    });
  }

  /** The frontend's domain is gone (or the vif is detached): releases everything, Closed, directory removed. */
  destroy(): Promise<void> {
    return new Promise((resolve) => {
      this.serialize(async () => {
        if (this.destroyed) return resolve();
        this.destroyed = true;
        await this.unwatch?.().catch(() => undefined);
        this.disconnect();
        await this.setState(XenbusState.Closed).catch(() => undefined);
        await this.k.xenbus.rm(this.backendDir).catch(() => undefined);
        resolve();
      });
    });
  }
}
