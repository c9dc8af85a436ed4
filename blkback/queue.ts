/**
 * One blkif queue, backend side: its ring mapped from the frontend's grant refs,
 * its event channel bound, and the {@link BlkbackRing} serving it. A vCPU connects
 * the queues it serves: vCPU 0 through {@link BlkbackDevice} (blkback/xenbus.ts),
 * the other vCPUs of dom0 through blkback/vcpu-queues.ts — Linux's blkback likewise
 * gives every ring its own kthread.
 *
 * @see Linux drivers/block/xen-blkback/xenbus.c (xen_blkif_map, read_per_ring_refs)
 */
import { PvioError, ProtocolError } from '../rings/errors.ts';
import { blkifAbi, type BlkifProtocol } from '../rings/blkif.ts';
import { GNTST, PAGE_SIZE, type EvtchnPort, type GrantHandle, type GrantRef } from '../hypervisor/abi.ts';
import type { Kernel } from '../hypervisor/kernel.ts';
import type { BlkbackFeatures } from './features.ts';
import { BlkbackRing, type BlkbackCounters, type BlkbackScheduler, type StoreMux } from './blkback.ts';

/** The backend could not connect (bad keys, a grant that does not map...). */
export class BlkbackError extends PvioError {
  constructor(message: string) {
    super('PVIO_ERR_BLKBACK', message);
  }
}

/** What a queue needs to connect: plain data, so vCPU 0 can hand it to another vCPU. */
export interface BlkbackQueueParams {
  /** The device's name (`guest/xvda`), for log lines. */
  readonly name: string;
  readonly frontDomid: number;
  /** Grant refs of the ring's pages, page 0 first (1 or 2^`ring-page-order`). */
  readonly refs: readonly number[];
  /** The frontend's unbound port (its `event-channel` key). */
  readonly evtchn: number;
  readonly protocol: BlkifProtocol;
  /** Whether persistent grants were negotiated. */
  readonly persistent: boolean;
  /** Disk size in 512-byte sectors. */
  readonly sectors: number;
  readonly readOnly: boolean;
  readonly features: BlkbackFeatures;
}

/** What one queue reports: its ring's counters and its state now. */
export interface BlkbackQueueStats {
  /** The vCPU of dom0 that serves the queue. */
  readonly vcpu: number;
  readonly counters: BlkbackCounters;
  /** Requests handed to the store and not yet answered. */
  readonly inFlight: number;
  /** Persistent grants mapped now. */
  readonly persistentGrants: number;
  /** Ring slots consumed, and slot copies made by the one copying accessor. */
  readonly slotsConsumed: number;
  readonly slotCopies: number;
  /** Requests answered by latency bucket (see blkback.ts `latencyBucket`). */
  readonly latencyUs: number[];
  /** The error that disabled the ring, if any. */
  readonly ringError: string | null;
}

/** One connected queue on the calling vCPU. */
export class BlkbackQueue {
  private ringError: string | null = null;

  private constructor(
    private readonly k: Kernel,
    readonly ring: BlkbackRing,
    readonly port: EvtchnPort,
    private readonly handles: GrantHandle[],
  ) {}

  /**
   * Maps the ring (one page, or one extent of the frontend's through
   * `gnttab.mapRing`), binds the port — to the calling vCPU, with
   * `EVTCHNOP_bind_vcpu` when that is not vCPU 0 — and starts serving on `sched`.
   * @param onRingError called once if the ring is disabled (protocol error or store fault).
   * @throws BlkbackError when a ring page does not map; EvtchnError when the port
   *   does not bind. Nothing stays mapped or bound when it throws.
   */
  static connect(k: Kernel, sched: BlkbackScheduler, mux: StoreMux, p: BlkbackQueueParams, onRingError: (message: string) => void): BlkbackQueue {
    const domid = p.frontDomid;
    const refs = p.refs as GrantRef[];
    let handles: GrantHandle[];
    let mem: Uint8Array;
    if (refs.length === 1) {
      const [m] = k.gnttab.map([{ domid, ref: refs[0], readonly: false }]);
      if (m.status !== GNTST.okay) throw new BlkbackError(`ring-ref ${refs[0]} of dom${domid} does not map (${m.status})`);
      handles = [m.handle];
      mem = m.page!.subarray(0, PAGE_SIZE);
    } else {
      try {
        ({ handles, bytes: mem } = k.gnttab.mapRing(domid, refs));
      } catch (e) {
        throw new BlkbackError(`ring of dom${domid} does not map: ${(e as Error).message}`);
      }
    }
    let port: EvtchnPort;
    try {
      port = k.evtchn.bindInterdomain(domid, p.evtchn);
    } catch (e) {
      k.gnttab.unmap(handles);
      throw e;
    }
    try {
      if (k.vcpuId !== 0) k.evtchn.bindVcpu(port, k.vcpuId);
    } catch (e) {
      k.evtchn.close(port);
      k.gnttab.unmap(handles);
      throw e;
    }
    let q: BlkbackQueue | null = null;
    const ring: BlkbackRing = new BlkbackRing({
      frontDomid: domid, ringMem: mem, port, abi: blkifAbi(p.protocol), mux, sectors: p.sectors,
      readOnly: p.readOnly, features: p.features, persistent: p.persistent,
      onRingError: (e: Error) => {
        const why = e instanceof ProtocolError ? `frontend dom${domid} broke the protocol` : 'serving the ring failed';
        k.console.log(`blkback ${p.name}: ${why}, ring disabled on vcpu ${k.vcpuId}: ${e.message}`);
        if (q) q.ringError = e.message;
        onRingError(e.message);
      },
      kick: () => sched.kick(ring),
    }, k.evtchn, k.gnttab);
    q = new BlkbackQueue(k, ring, port, handles);
    k.evtchn.on(port, () => sched.kick(ring));
    sched.kick(ring);
    return q;
  }

  /** Counters and state now. */
  stats(): BlkbackQueueStats {
    const r = this.ring;
    return {
      vcpu: this.k.vcpuId, counters: { ...r.counters }, inFlight: r.inFlight(), persistentGrants: r.persistentGrants(),
      slotsConsumed: r.ring.counters.requestsConsumed, slotCopies: r.ring.counters.requestCopies, latencyUs: [...r.latencyUs], ringError: this.ringError,
    };
  }

  /** A resize: requests are checked against `sectors` (512-byte units) from now on. */
  setSectors(sectors: number): void {
    this.ring.setSectors(sectors);
  }

  /**
   * Stops the ring (waiting for the store's outstanding requests), closes the port
   * and unmaps the ring. @returns the final counters.
   */
  async close(): Promise<BlkbackQueueStats> {
    await this.ring.close();
    this.k.evtchn.off(this.port);
    try {
      this.k.evtchn.close(this.port);
    } catch {
      /* already closed (the frontend's domain is gone) */
    }
    this.k.gnttab.unmap(this.handles);
    return this.stats();
  }
}
