/**
 * blkback's XenBus side: one virtual block device's negotiation with its frontend,
 * apart from the data path (blkback/blkback.ts).
 *
 * Backend states (io/blkif.h):
 *
 *   Initialising ──(store opened, features written)──▶ InitWait
 *       ──(frontend Initialised or Connected: map ring, bind port,
 *          write sectors/info/sector-size)──▶ Connected
 *   frontend Closing ──▶ disconnect ──▶ Closing;  frontend Closed ──▶ Closed
 *   frontend back to Initialising ──▶ InitWait (reconnectable)
 *   frontend domain released (@releaseDomain) ──▶ disconnect ──▶ Closed, dirs removed
 *
 * The backend tolerates a frontend that reached Initialised before it reached
 * InitWait: whenever it (re)reads the frontend state it acts on what it finds.
 *
 * Keys written (backend dir), at probe, before InitWait (the frontend reads the
 * maxima before it builds its rings): `feature-max-indirect-segments`,
 * `max-ring-page-order`, `multi-queue-max-queues` (each only when the feature is on),
 * `feature-flush-cache`, `feature-barrier`, `feature-discard` with
 * `discard-granularity` (bytes), `discard-alignment` (bytes), `discard-secure` (0)
 * and pvio's `discard-zeroes` (1 when a discarded range reads back as zeroes: the
 * meaning of Linux's old `discard_zeroes_data`), `feature-persistent`; at connect,
 * in one transaction with `state`: `sectors` (512-byte units), `sector-size`,
 * `physical-sector-size`, `info` (VDISK_READONLY for a read-only attachment). A
 * resize re-writes `sectors` and `state` (Connected) in one transaction, as Linux's
 * `xen_vbd_resize`.
 * Keys read (frontend dir): `ring-ref` or `ring-page-order` + `ring-ref0..N`,
 * `event-channel` — under `queue-N/` when `multi-queue-num-queues` ≥ 2 —,
 * `protocol` (absent means `x86_32-abi` on x86, as Linux blkback assumes),
 * `feature-persistent`, `state`.
 *
 * @see io/blkif.h, Linux drivers/block/xen-blkback/xenbus.c
 */
import { blkifAbi, VDISK_READONLY, SECTOR_SIZE, XEN_IO_PROTO_ABI_X86_32, type BlkifProtocol } from '../rings/blkif.ts';
import { blkbackFeatures, type BlkbackFeatures } from './features.ts';
import type { Kernel } from '../hypervisor/kernel.ts';
import { XenbusState, switchState, readState, readUintKey } from '../xenstore/xenbus.ts';
import type { Unwatch } from '../xenstore/client.ts';
import { BlkbackScheduler, LATENCY_BUCKETS, StoreMux, newBlkbackCounters, type BlkbackCounters } from './blkback.ts';
import type { StorageBackend } from './storage.ts';
import { BlkbackError, BlkbackQueue, type BlkbackQueueParams, type BlkbackQueueStats } from './queue.ts';
import type { StoreContext, StoreDisk } from './open-store.ts';
import type { RemoteQueueConnect } from './vcpu-queues.ts';

export { BlkbackError } from './queue.ts';

/** What the toolstack asks blkback to serve. */
export interface BlkbackDeviceOptions {
  readonly frontDomid: number;
  /** The frontend's device id (its `virtual-device` number). */
  readonly devid: number;
  readonly name: string;
  readonly store: StorageBackend;
  readonly readOnly: boolean;
  /** Features switched from their defaults (`DEFAULT_BLKBACK_FEATURES`: all on). */
  readonly features?: Partial<BlkbackFeatures>;
  /** Test hook: delay before writing InitWait (ms), to exercise the frontend's shortcut. */
  readonly initWaitDelayMs?: number;
  /**
   * How another vCPU of dom0 opens this disk's store (the same target; see
   * `storeIsShareable` in vcpu-queues.ts). When set and dom0 has several vCPUs,
   * queue N is served by vCPU N mod nrVcpus; otherwise vCPU 0 serves every queue.
   */
  readonly share?: { readonly disk: StoreDisk; readonly ctx: StoreContext };
}

/** One connected queue: served here (`local`) or by another vCPU under `key`. */
interface Queue {
  readonly vcpu: number;
  readonly key: string;
  readonly local: BlkbackQueue | null;
}

/** Device counters: the data path summed over connections and queues, and the state now. */
export type BlkbackDeviceCounters = BlkbackCounters & {
  state: string;
  inFlight: number;
  persistentGrants: number;
  slotsConsumed: number;
  slotCopies: number;
  /** Per queue (ring) of the current connection: the vCPU serving it, its counters and its latency histogram. */
  queues: Array<{ vcpu: number; latencyUs: number[] } & BlkbackCounters>;
  /**
   * Requests answered by latency, all connections: bucket 0 under 2 µs, bucket i in
   * [2^i, 2^(i+1)) µs, the last everything slower (ring to response, in dom0).
   */
  latencyHistogramUs: number[];
};

/** One virtual block device, backend side. */
export class BlkbackDevice {
  readonly backendDir: string;
  readonly frontendDir: string;
  /** What this device advertises. */
  readonly features: BlkbackFeatures;
  private queues: Queue[] = [];
  private readonly mux: StoreMux;
  private unwatch: Unwatch | null = null;
  private state = XenbusState.Initialising;
  private busy: Promise<void> = Promise.resolve();
  private destroyed = false;
  /** Counters accumulated over every connection of this device. */
  private readonly past: BlkbackCounters = newBlkbackCounters();
  /** Ring slots consumed and copied out over past connections (see {@link counters}). */
  private readonly pastRing = { slotsConsumed: 0, slotCopies: 0, latencyUs: new Array<number>(LATENCY_BUCKETS).fill(0) };
  /** Connections made so far (names remote queues uniquely). */
  private connections = 0;
  /** A protocol error that disabled a ring, if any. */
  protocolError: string | null = null;
  /** What the current connection negotiated (for reports). */
  negotiated: { queues: number; ringPages: number; persistent: boolean; protocol: string } | null = null;

  constructor(private readonly k: Kernel, private readonly sched: BlkbackScheduler, readonly opts: BlkbackDeviceOptions) {
    this.backendDir = `/local/domain/${k.domid}/backend/vbd/${opts.frontDomid}/${opts.devid}`;
    this.frontendDir = `/local/domain/${opts.frontDomid}/device/vbd/${opts.devid}`;
    this.mux = new StoreMux(opts.store);
    const f = blkbackFeatures(opts.features);
    const st = opts.store;
    // Offer only what the store can do too.
    this.features = {
      ...f,
      flush: f.flush && st.canFlush,
      barrier: f.barrier && st.canFlush,
      discard: f.discard && st.canDiscard && !opts.readOnly,
    };
  }

  /** Disk size in 512-byte sectors: floor(store size / 512). */
  get sectors(): number {
    return Math.floor(this.opts.store.sizeBytes / SECTOR_SIZE);
  }

  /**
   * Counters of the data path, over all connections and queues; `slotsConsumed` and
   * `slotCopies` count ring slots taken and slot copies made by the one copying
   * accessor (equal when no request was read twice). Queues served by other vCPUs
   * are asked for theirs.
   * @throws CallError when a vCPU serving a queue does not answer.
   */
  async counters(): Promise<BlkbackDeviceCounters> {
    const c = { ...this.past };
    let { slotsConsumed, slotCopies } = this.pastRing;
    let inFlight = 0;
    let persistentGrants = 0;
    const queues: BlkbackDeviceCounters['queues'] = [];
    const latencyHistogramUs = [...this.pastRing.latencyUs];
    for (const st of await this.queueStats()) {
      if (!st) continue;
      st.latencyUs.forEach((n, i) => (latencyHistogramUs[i] += n));
      for (const [key, v] of Object.entries(st.counters)) c[key as keyof BlkbackCounters] += v;
      inFlight += st.inFlight;
      persistentGrants += st.persistentGrants;
      slotsConsumed += st.slotsConsumed;
      slotCopies += st.slotCopies;
      queues.push({ vcpu: st.vcpu, ...st.counters, latencyUs: st.latencyUs });
    }
    return { ...c, state: XenbusState[this.state], inFlight, persistentGrants, slotsConsumed, slotCopies, queues, latencyHistogramUs };
  }

  /** Each current queue's stats, in queue order (null for a queue its vCPU no longer knows). */
  private async queueStats(): Promise<Array<BlkbackQueueStats | null>> {
    const qs = this.queues;
    const remote = new Map<number, string[]>();
    for (const q of qs) if (!q.local) remote.set(q.vcpu, [...(remote.get(q.vcpu) ?? []), q.key]);
    const got = new Map<string, BlkbackQueueStats | null>();
    await Promise.all([...remote].map(async ([vcpu, keys]) => {
      const r = (await this.k.callVcpu(vcpu, 'blkback.stats', { keys })) as Array<BlkbackQueueStats | null>;
      keys.forEach((key, i) => got.set(key, r[i]));
    }));
    return qs.map((q) => (q.local ? q.local.stats() : got.get(q.key) ?? null));
  }

  /** A queue served by another vCPU was disabled by `message` (reported by that vCPU). */
  remoteRingError(key: string, message: string): void {
    if (this.queues.some((q) => q.key === key)) this.protocolError = message;
  }

  /**
   * Probe: advertises features, goes InitWait and follows the frontend's state.
   */
  async start(): Promise<void> {
    const f = this.features;
    const dir = this.backendDir;
    await this.k.xenbus.transaction(async (tx) => {
      if (f.maxIndirectSegments > 0) await tx.write(`${dir}/feature-max-indirect-segments`, String(f.maxIndirectSegments));
      if (f.maxRingPageOrder > 0) await tx.write(`${dir}/max-ring-page-order`, String(f.maxRingPageOrder));
      if (f.maxQueues > 1) await tx.write(`${dir}/multi-queue-max-queues`, String(f.maxQueues));
      await tx.write(`${dir}/feature-flush-cache`, f.flush ? '1' : '0');
      await tx.write(`${dir}/feature-barrier`, f.barrier ? '1' : '0');
      await tx.write(`${dir}/feature-discard`, f.discard ? '1' : '0');
      if (f.discard) {
        await tx.write(`${dir}/discard-granularity`, String(Math.max(this.opts.store.discardGranularity, f.sectorSize)));
        await tx.write(`${dir}/discard-alignment`, '0');
        await tx.write(`${dir}/discard-secure`, '0');
        await tx.write(`${dir}/discard-zeroes`, this.opts.store.discardZeroes ? '1' : '0');
      }
      await tx.write(`${dir}/feature-persistent`, f.persistent ? '1' : '0');
    });
    if (this.opts.initWaitDelayMs) await new Promise((r) => setTimeout(r, this.opts.initWaitDelayMs));
    await this.setState(XenbusState.InitWait);
    this.unwatch = await this.k.xenbus.watch(`${this.frontendDir}/state`, () => this.serialize(() => this.frontendChanged()));
  }

  /** Runs state changes one at a time, in order. */
  private serialize(fn: () => Promise<void>): void {
    this.busy = this.busy.then(fn).catch((e) => {
      this.k.console.log(`blkback ${this.opts.name}: ${(e as Error).message}`);
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
      case XenbusState.Initialised:
      case XenbusState.Connected:
        if (this.state !== XenbusState.Connected && this.state !== XenbusState.Closing && this.state !== XenbusState.Closed) await this.connect();
        break;
      case XenbusState.Closing:
        await this.disconnect();
        if (this.state !== XenbusState.Closed) await this.setState(XenbusState.Closing);
        break;
      case XenbusState.Closed:
        await this.disconnect();
        await this.setState(XenbusState.Closed);
        break;
      case XenbusState.Initialising:
        if (this.state === XenbusState.Closed) {
          await this.disconnect();
          await this.setState(XenbusState.InitWait);
        }
        break;
      default:
        break;
    }
  }

  /** Reads an unsigned integer key of the frontend; `dflt` when absent. @throws BlkbackError for garbage. */
  private frontUint(key: string, dflt: number): Promise<number> {
    return readUintKey(this.k.xenbus, `${this.frontendDir}/${key}`, dflt,
      (v) => new BlkbackError(`bad ${key} '${v.slice(0, 40)}' from dom${this.opts.frontDomid}`));
  }

  /** Maps every queue's ring, binds its port, publishes the disk's properties, Connected. */
  private async connect(): Promise<void> {
    const xb = this.k.xenbus;
    const f = this.features;
    const protocol = ((await xb.readOptional(`${this.frontendDir}/protocol`)) ?? XEN_IO_PROTO_ABI_X86_32) as BlkifProtocol;
    blkifAbi(protocol); // @throws for a protocol we do not speak, before anything is mapped
    const order = await this.frontUint('ring-page-order', 0);
    if (order > f.maxRingPageOrder) throw new BlkbackError(`ring-page-order ${order} over the advertised ${f.maxRingPageOrder}`);
    const nq = await this.frontUint('multi-queue-num-queues', 1);
    if (nq < 1 || nq > f.maxQueues) throw new BlkbackError(`multi-queue-num-queues ${nq} not in 1..${f.maxQueues}`);
    const persistent = f.persistent && (await this.frontUint('feature-persistent', 0)) === 1;
    // Read every queue's keys first: nothing is mapped if one is bad.
    const want: Array<{ refs: number[]; evtchn: number }> = [];
    for (let q = 0; q < nq; q++) {
      const qkey = nq > 1 ? `queue-${q}/` : '';
      const refs: number[] = [];
      if (order === 0) refs.push(await this.frontUint(`${qkey}ring-ref`, -1));
      else for (let i = 0; i < 1 << order; i++) refs.push(await this.frontUint(`${qkey}ring-ref${i}`, -1));
      const evtchn = await this.frontUint(`${qkey}event-channel`, -1);
      if (refs.some((r) => r < 0) || evtchn <= 0) throw new BlkbackError(`dom${this.opts.frontDomid} wrote no ${qkey}ring-ref/event-channel`);
      want.push({ refs, evtchn });
    }
    const conn = ++this.connections;
    const share = this.opts.share && this.k.nrVcpus > 1 ? this.opts.share : null;
    try {
      for (const [i, w] of want.entries()) {
        const params: BlkbackQueueParams = {
          name: this.opts.name, frontDomid: this.opts.frontDomid, refs: w.refs, evtchn: w.evtchn, protocol,
          persistent, sectors: this.sectors, readOnly: this.opts.readOnly, features: f,
        };
        const key = `${this.opts.frontDomid}/${this.opts.devid}/${conn}/${i}`;
        const vcpu = share ? i % this.k.nrVcpus : 0;
        if (vcpu === 0) {
          const local = BlkbackQueue.connect(this.k, this.sched, this.mux, params, (message) => (this.protocolError = message));
          this.queues.push({ vcpu, key, local });
        } else {
          await this.k.callVcpu(vcpu, 'blkback.connect', { key, disk: share!.disk, ctx: share!.ctx, params } satisfies RemoteQueueConnect);
          this.queues.push({ vcpu, key, local: null });
        }
      }
    } catch (e) {
      await this.disconnect();
      throw e;
    }
    this.negotiated = { queues: nq, ringPages: 1 << order, persistent, protocol };
    await xb.transaction(async (tx) => {
      await tx.write(`${this.backendDir}/sectors`, String(this.sectors));
      await tx.write(`${this.backendDir}/sector-size`, String(f.sectorSize));
      await tx.write(`${this.backendDir}/physical-sector-size`, String(f.sectorSize));
      await tx.write(`${this.backendDir}/info`, String(this.opts.readOnly ? VDISK_READONLY : 0));
      await tx.write(`${this.backendDir}/state`, String(XenbusState.Connected));
    });
    this.state = XenbusState.Connected;
    for (const q of this.queues) if (q.local) this.sched.kick(q.local.ring);
  }

  /** Stops every queue (here or on its vCPU), adding its final counters to the past ones. */
  private async disconnect(): Promise<void> {
    const queues = this.queues;
    this.queues = [];
    for (const q of queues) {
      let st: BlkbackQueueStats | null;
      try {
        st = q.local ? await q.local.close() : ((await this.k.callVcpu(q.vcpu, 'blkback.disconnect', { key: q.key })) as BlkbackQueueStats | null);
      } catch (e) {
        this.k.console.log(`blkback ${this.opts.name}: queue ${q.key} on vcpu ${q.vcpu} did not close: ${(e as Error).message}`);
        continue;
      }
      if (!st) continue;
      for (const [key, v] of Object.entries(st.counters)) this.past[key as keyof BlkbackCounters] += v;
      this.pastRing.slotsConsumed += st.slotsConsumed;
      this.pastRing.slotCopies += st.slotCopies;
      st.latencyUs.forEach((n, i) => (this.pastRing.latencyUs[i] += n));
    }
  }

  /**
   * Resizes the disk to `sizeBytes` (the store grows or shrinks) and announces it:
   * `sectors` and `state` (Connected again) in one transaction, which the frontend's
   * watch picks up.
   * @throws StorageError when the store cannot resize.
   */
  resize(sizeBytes: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.serialize(async () => {
        try {
          await this.opts.store.resize(sizeBytes);
          for (const q of this.queues) {
            if (q.local) q.local.setSectors(this.sectors);
            else await this.k.callVcpu(q.vcpu, 'blkback.resize', { key: q.key, sizeBytes });
          }
          if (this.state === XenbusState.Connected) {
            await this.k.xenbus.transaction(async (tx) => {
              await tx.write(`${this.backendDir}/sectors`, String(this.sectors));
              await tx.write(`${this.backendDir}/state`, String(XenbusState.Connected));
            });
          }
          resolve();
        } catch (e) {
          reject(e);
        }
      });
    });
  }

  /**
   * The toolstack detaches the disk while the guest runs (`xl block-detach`): the
   * backend goes Closing, which asks the frontend to close; the frontend's Closing
   * and Closed then take the backend to Closed ({@link frontendChanged}).
   */
  requestClose(): Promise<void> {
    return new Promise((resolve) => {
      this.serialize(async () => {
        if (!this.destroyed && this.state !== XenbusState.Closing && this.state !== XenbusState.Closed) await this.setState(XenbusState.Closing);
        resolve();
      });
    });
  }

  /**
   * The frontend's domain is gone (or the toolstack detaches the disk): releases
   * every mapping, goes Closed, removes the backend directory, closes the store.
   */
  destroy(): Promise<void> {
    return new Promise((resolve) => {
      this.serialize(async () => {
        if (this.destroyed) return resolve();
        this.destroyed = true;
        await this.unwatch?.().catch(() => undefined);
        await this.disconnect();
        await this.setState(XenbusState.Closed).catch(() => undefined);
        await this.k.xenbus.rm(this.backendDir).catch(() => undefined);
        await this.opts.store.close();
        resolve();
      });
    });
  }
}
