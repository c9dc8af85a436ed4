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
 * Keys written (backend dir): `feature-flush-cache`, `sectors` (512-byte units),
 * `sector-size`, `info` (VDISK_READONLY for a read-only attachment), `state`.
 * Keys read (frontend dir): `ring-ref`, `event-channel`, `protocol` (absent means
 * `x86_32-abi` on x86, as Linux blkback assumes), `state`.
 *
 * @see io/blkif.h, Linux drivers/block/xen-blkback/xenbus.c
 */
import { PvioError, type ProtocolError } from '../rings/errors.ts';
import { blkifAbi, VDISK_READONLY, SECTOR_SIZE, XEN_IO_PROTO_ABI_X86_32, type BlkifProtocol } from '../rings/blkif.ts';
import { GNTST, PAGE_SIZE, type EvtchnPort, type GrantHandle, type GrantRef } from '../hypervisor/abi.ts';
import type { Kernel } from '../hypervisor/kernel.ts';
import { XenbusState, switchState, readState } from '../xenstore/xenbus.ts';
import type { Unwatch } from '../xenstore/client.ts';
import { BlkbackRing, BlkbackScheduler, type BlkbackCounters } from './blkback.ts';
import type { StorageBackend } from './storage.ts';

/** The backend could not connect (bad keys, a grant that does not map...). */
export class BlkbackError extends PvioError {
  constructor(message: string) {
    super('PVIO_ERR_BLKBACK', message);
  }
}

/** What the toolstack asks blkback to serve. */
export interface BlkbackDeviceOptions {
  readonly frontDomid: number;
  /** The frontend's device id (its `virtual-device` number). */
  readonly devid: number;
  readonly name: string;
  readonly store: StorageBackend;
  readonly readOnly: boolean;
  /** Test hook: delay before writing InitWait (ms), to exercise the frontend's shortcut. */
  readonly initWaitDelayMs?: number;
}

/** One virtual block device, backend side. */
export class BlkbackDevice {
  readonly backendDir: string;
  readonly frontendDir: string;
  private ring: BlkbackRing | null = null;
  private ringHandle: GrantHandle | null = null;
  private port: EvtchnPort | null = null;
  private unwatch: Unwatch | null = null;
  private state = XenbusState.Initialising;
  private busy: Promise<void> = Promise.resolve();
  private destroyed = false;
  /** Counters accumulated over every connection of this device. */
  private readonly past: BlkbackCounters = {
    requests: 0, reads: 0, writes: 0, flushes: 0, errors: 0, bytesRead: 0, bytesWritten: 0,
    grantMaps: 0, mapHypercalls: 0, notifications: 0, passes: 0,
  };
  /** A protocol error that disabled the ring, if any. */
  protocolError: string | null = null;

  constructor(private readonly k: Kernel, private readonly sched: BlkbackScheduler, readonly opts: BlkbackDeviceOptions) {
    this.backendDir = `/local/domain/${k.domid}/backend/vbd/${opts.frontDomid}/${opts.devid}`;
    this.frontendDir = `/local/domain/${opts.frontDomid}/device/vbd/${opts.devid}`;
  }

  /** Disk size in 512-byte sectors: floor(store size / 512). */
  get sectors(): number {
    return Math.floor(this.opts.store.sizeBytes / SECTOR_SIZE);
  }

  /** Counters of the data path, over all connections. */
  counters(): BlkbackCounters & { state: string; inFlight: number } {
    const c = { ...this.past };
    if (this.ring) for (const [key, v] of Object.entries(this.ring.counters)) c[key as keyof BlkbackCounters] += v;
    return { ...c, state: XenbusState[this.state], inFlight: this.ring?.inFlight() ?? 0 };
  }

  /**
   * Probe: advertises features, goes InitWait and follows the frontend's state.
   */
  async start(): Promise<void> {
    const xb = this.k.xenbus;
    await xb.write(`${this.backendDir}/feature-flush-cache`, this.opts.store.canFlush ? '1' : '0');
    if (this.opts.initWaitDelayMs) await new Promise((r) => setTimeout(r, this.opts.initWaitDelayMs));
    await this.setState(XenbusState.InitWait);
    this.unwatch = await xb.watch(`${this.frontendDir}/state`, () => this.serialize(() => this.frontendChanged()));
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

  /** Maps the ring, binds the port, publishes the disk's properties, Connected. */
  private async connect(): Promise<void> {
    const xb = this.k.xenbus;
    const ref = Number(await xb.read(`${this.frontendDir}/ring-ref`));
    const evtchn = Number(await xb.read(`${this.frontendDir}/event-channel`));
    const protocol = ((await xb.readOptional(`${this.frontendDir}/protocol`)) ?? XEN_IO_PROTO_ABI_X86_32) as BlkifProtocol;
    if (!Number.isInteger(ref) || ref < 0 || !Number.isInteger(evtchn) || evtchn <= 0) {
      throw new BlkbackError(`bad ring-ref/event-channel from dom${this.opts.frontDomid}`);
    }
    const abi = blkifAbi(protocol);
    const [m] = this.k.gnttab.map([{ domid: this.opts.frontDomid, ref: ref as GrantRef, readonly: false }]);
    if (m.status !== GNTST.okay) throw new BlkbackError(`ring-ref ${ref} of dom${this.opts.frontDomid} does not map (${m.status})`);
    this.ringHandle = m.handle;
    let port: EvtchnPort;
    try {
      port = this.k.evtchn.bindInterdomain(this.opts.frontDomid, evtchn);
    } catch (e) {
      this.k.gnttab.unmap([m.handle]);
      this.ringHandle = null;
      throw e;
    }
    this.port = port;
    const ring = new BlkbackRing({
      frontDomid: this.opts.frontDomid, ringMem: m.page!.subarray(0, PAGE_SIZE), port, abi, store: this.opts.store,
      sectors: this.sectors, readOnly: this.opts.readOnly,
      onProtocolError: (e: ProtocolError) => {
        this.protocolError = e.message;
        this.k.console.log(`blkback ${this.opts.name}: frontend dom${this.opts.frontDomid} broke the protocol, ring disabled: ${e.message}`);
      },
    }, this.k.evtchn, this.k.gnttab);
    this.ring = ring;
    this.k.evtchn.on(port, () => this.sched.kick(ring));
    await xb.transaction(async (tx) => {
      await tx.write(`${this.backendDir}/sectors`, String(this.sectors));
      await tx.write(`${this.backendDir}/sector-size`, String(SECTOR_SIZE));
      await tx.write(`${this.backendDir}/info`, String(this.opts.readOnly ? VDISK_READONLY : 0));
      await tx.write(`${this.backendDir}/state`, String(XenbusState.Connected));
    });
    this.state = XenbusState.Connected;
    this.sched.kick(ring);
  }

  /** Stops the ring, waits for the store, closes the port and unmaps the ring. */
  private async disconnect(): Promise<void> {
    const ring = this.ring;
    if (!ring) return;
    this.ring = null;
    await ring.close();
    for (const [key, v] of Object.entries(ring.counters)) this.past[key as keyof BlkbackCounters] += v;
    if (this.port !== null) {
      this.k.evtchn.off(this.port);
      try {
        this.k.evtchn.close(this.port);
      } catch {
        /* already closed */
      }
      this.port = null;
    }
    if (this.ringHandle !== null) {
      this.k.gnttab.unmap([this.ringHandle]);
      this.ringHandle = null;
    }
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
