/**
 * blkfront's XenBus side: negotiation with blkback through XenStore, apart from the
 * data path (blkfront/blkfront.ts), as Unikraft splits blkfront.c / blkfront_xs.c.
 *
 * Frontend states (io/blkif.h):
 *
 *   Initialising ──(ring, grant, port, keys written)──▶ Initialised
 *        ──(backend Connected: read sectors, info, features)──▶ Connected
 *   Connected ──close()──▶ Closing ──(backend ≥ Closing)──▶ Closed
 *
 * The frontend does not wait for the backend's InitWait before writing its keys
 * (a shortcut the backend tolerates): it reads the backend's maxima
 * (`max-ring-page-order`, `multi-queue-max-queues`, written before InitWait) when it
 * starts, and a backend that has not written them yet gets one 1-page ring, as
 * Linux does when the keys are absent. It alone initialises the shared rings.
 *
 * Keys written (frontend dir): `ring-ref` (order 0) or `ring-page-order` and
 * `ring-ref0..N`; `event-channel`; with several queues `multi-queue-num-queues` and
 * those keys under `queue-N/` instead; `protocol` (`x86_64-abi`),
 * `feature-persistent`, `state`. Keys read (backend dir): `max-ring-page-order`,
 * `multi-queue-max-queues`, then at Connected `sectors` (512-byte units),
 * `sector-size`, `info` (VDISK_* bits), `feature-flush-cache`, `feature-barrier`,
 * `feature-discard` (+ `discard-granularity`, `discard-alignment`, and pvio's
 * `discard-zeroes`), `feature-persistent`, `feature-max-indirect-segments`, `state`.
 *
 * @see io/blkif.h, Linux drivers/block/xen-blkfront.c (talk_to_blkback, blkfront_connect)
 */
import { PvioError, TimeoutError } from '../rings/errors.ts';
import { FrontRing } from '../rings/ring.ts';
import { blkifAbi, BLKIF_MAX_SEGMENTS_PER_REQUEST, VDISK_READONLY, XEN_IO_PROTO_ABI_X86_64, SECTOR_SIZE } from '../rings/blkif.ts';
import { PAGE_SIZE, type EvtchnPort, type GrantRef } from '../hypervisor/abi.ts';
import type { Kernel } from '../hypervisor/kernel.ts';
import type { GuestExtent } from '../hypervisor/guest-memory.ts';
import { XenbusState, switchState, waitForState, readState, readUintKey, watchFrontends } from '../xenstore/xenbus.ts';
import {
  BlkfrontIo, BlkfrontRing, BlkError, BLKFRONT_MAX_INDIRECT_SEGMENTS,
  type BlkfrontCounters, type BlkfrontDiskInfo, type BlkfrontFeatures,
} from './blkfront.ts';

/** How long each handshake step may wait for the backend (ms). */
export const HANDSHAKE_TIMEOUT_MS = 20_000;

/** Linux's name for a Xen virtual-device number: (202 << 8) | (index << 4) → `xvd` + letter. */
export function vdevName(virtualDevice: number): string {
  const major = virtualDevice >> 8;
  const index = (virtualDevice >> 4) & 0xf;
  if (major !== 202) return `vbd${virtualDevice}`;
  return `xvd${String.fromCharCode(97 + index)}`;
}

/** The handshake failed (the backend refused, closed, or did not answer in time). */
export class BlkfrontHandshakeError extends PvioError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('PVIO_ERR_BLKFRONT', message, options);
  }
}

/** blkfront's own limits; the backend's keys can only lower them. */
export interface BlkfrontOptions {
  /** Most queues to use (default: the domain's vCPU count, at most 4, as Linux). */
  readonly maxQueues?: number;
  /** Largest ring order to use, 0..4 (default 4). */
  readonly maxRingPageOrder?: number;
  /** Most segments per indirect request (default 256; ≤ 11 turns indirect requests off). */
  readonly maxIndirectSegments?: number;
  /** Offer `feature-persistent` (default true). */
  readonly persistent?: boolean;
  /** How long each handshake step may wait for the backend (ms). */
  readonly timeoutMs?: number;
}

/** One queue's shared ring, as granted. */
interface QueueRing {
  extent: GuestExtent;
  refs: GrantRef[];
  port: EvtchnPort;
  ring: FrontRing;
}

/** A connected virtual disk, as the guest uses it. */
export class Blkfront {
  /** Disk size in 512-byte sectors. */
  get sectors(): number {
    return this.io.info.sectors;
  }
  /** Logical sector size in bytes (the `sector-size` key): offsets and lengths must align to it. */
  get sectorSize(): number {
    return this.io.info.sectorSize;
  }
  get readOnly(): boolean {
    return this.io.info.readOnly;
  }
  /** What was negotiated with the backend. */
  get features(): BlkfrontFeatures {
    return this.io.info.features;
  }
  /** The backend's state when this frontend went Initialised (the handshake's order, for tests). */
  backendStateAtInitialised: XenbusState = XenbusState.Unknown;
  private closed = false;

  /** Whether {@link close} has begun (the disk no longer takes I/O once it has). */
  get isClosed(): boolean {
    return this.closed;
  }

  constructor(
    private readonly k: Kernel,
    /** `xvda`, ... */
    readonly name: string,
    readonly virtualDevice: number,
    private readonly dir: string,
    private readonly backendDir: string,
    private readonly io: BlkfrontIo,
    private readonly queues: readonly QueueRing[],
  ) {}

  /** Reads `count` 512-byte sectors at `sector`. @throws BlkError */
  async read(sector: number, count: number): Promise<Uint8Array> {
    const out = new Uint8Array(count * SECTOR_SIZE);
    await this.io.readInto(sector, out);
    return out;
  }
  /** Reads into `into` (length a multiple of 512) at `sector` (512-byte units). @throws BlkError, RangeError */
  readInto(sector: number, into: Uint8Array): Promise<void> {
    return this.io.readInto(sector, into);
  }
  /** Writes `data` (length a multiple of 512) at `sector` (512-byte units). @throws BlkError */
  write(sector: number, data: Uint8Array): Promise<void> {
    return this.io.write(sector, data);
  }
  /** FLUSH_DISKCACHE (or a dataless WRITE_BARRIER; nothing without either). @throws BlkError */
  flush(): Promise<void> {
    return this.io.flush();
  }
  /** A dataless WRITE_BARRIER. @throws BlkError (-2 without `feature-barrier`) */
  barrier(): Promise<void> {
    return this.io.barrier();
  }
  /** DISCARD of `count` 512-byte sectors at `sector`. @throws BlkError (-2 without `feature-discard`) */
  discard(sector: number, count: number): Promise<void> {
    return this.io.discard(sector, count);
  }
  /** Counters of the data path, summed over the queues. */
  get counters(): BlkfrontCounters {
    return this.io.counters();
  }
  /** Counters of each queue. */
  queueCounters(): BlkfrontCounters[] {
    return this.io.rings.map((r) => ({ ...r.counters }));
  }
  /** Requests in flight right now. */
  get inFlight(): number {
    return this.io.inFlight;
  }
  /** Size in bytes. */
  get sizeBytes(): number {
    return this.sectors * SECTOR_SIZE;
  }

  /**
   * Orderly teardown: waits for I/O in flight, Closing, waits for the backend to
   * close, closes the ports, ends the ring and pool grants, Closed.
   * @throws BlkfrontHandshakeError when the backend does not follow in time.
   */
  async close(timeoutMs = HANDSHAKE_TIMEOUT_MS): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const deadline = Date.now() + timeoutMs;
    while (this.io.busy() && !this.io.error && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
    const xb = this.k.xenbus;
    await switchState(xb, this.dir, XenbusState.Closing);
    await waitForState(xb, this.backendDir, (s) => s >= XenbusState.Closing || s === XenbusState.Unknown, { timeoutMs: Math.max(1, deadline - Date.now()) });
    this.io.disable(new BlkError(-1, 'device closed'));
    for (const q of this.queues) {
      try {
        this.k.evtchn.close(q.port);
      } catch {
        /* the backend's domain may be gone already */
      }
    }
    await switchState(xb, this.dir, XenbusState.Closed);
    await waitForState(xb, this.backendDir, (s) => s === XenbusState.Closed || s === XenbusState.Unknown, { timeoutMs: Math.max(1, deadline - Date.now()) })
      .catch(() => undefined);
    // The backend unmapped the rings and the data pages when it went Closed.
    for (const q of this.queues) {
      if (q.refs.every((r) => this.k.gnttab.endAccess(r))) this.k.memory.release(q.extent.mfn, q.extent.order);
    }
    for (const r of this.io.rings) r.releaseAll();
  }
}

/** Reads an unsigned key of the backend; `dflt` when absent. @throws BlkfrontHandshakeError for garbage. */
function readUint(k: Kernel, path: string, dflt: number): Promise<number> {
  return readUintKey(k.xenbus, path, dflt, (v) => new BlkfrontHandshakeError(`bad backend key ${path} = '${v.slice(0, 40)}'`));
}

/**
 * Connects the frontend of device `devid` (a directory under `device/vbd/`): reads
 * the backend's maxima, allocates, initialises and grants the rings (2^order pages
 * each, one per queue), allocates their event channels, writes the transport keys
 * and Initialised in one transaction, waits for the backend's Connected, reads the
 * disk's properties and features and goes Connected.
 * @throws BlkfrontHandshakeError (backend missing, refusing, bad keys, or too slow).
 */
export async function connectBlkfront(k: Kernel, devid: string, opts: BlkfrontOptions = {}): Promise<Blkfront> {
  const timeoutMs = opts.timeoutMs ?? HANDSHAKE_TIMEOUT_MS;
  const xb = k.xenbus;
  const dir = `/local/domain/${k.domid}/device/vbd/${devid}`;
  const backendDir = await xb.read(`${dir}/backend`);
  const backendId = Number(await xb.read(`${dir}/backend-id`));
  const virtualDevice = Number((await xb.readOptional(`${dir}/virtual-device`)) ?? devid);
  const abi = blkifAbi(XEN_IO_PROTO_ABI_X86_64);
  const backendAtInit = await readState(xb, backendDir);
  const order = Math.min(opts.maxRingPageOrder ?? 4, await readUint(k, `${backendDir}/max-ring-page-order`, 0), 4);
  const nq = Math.max(1, Math.min(opts.maxQueues ?? Math.min(4, k.nrVcpus), await readUint(k, `${backendDir}/multi-queue-max-queues`, 1)));
  const persistentOffered = opts.persistent ?? true;
  const queues: QueueRing[] = [];
  for (let q = 0; q < nq; q++) {
    const extent = k.memory.allocExtent(order);
    const ring = FrontRing.init(extent.bytes.subarray(0, PAGE_SIZE << order), abi.entrySize); // only the frontend initialises
    const refs: GrantRef[] = [];
    for (let i = 0; i < 1 << order; i++) refs.push(k.gnttab.grantAccess(backendId, extent.mfn + i, false));
    queues.push({ extent, refs, ring, port: k.evtchn.allocUnbound(backendId) });
  }
  await xb.transaction(async (tx) => {
    if (order > 0) await tx.write(`${dir}/ring-page-order`, String(order));
    if (nq > 1) await tx.write(`${dir}/multi-queue-num-queues`, String(nq));
    for (let q = 0; q < nq; q++) {
      const qdir = nq > 1 ? `${dir}/queue-${q}` : dir;
      const { refs, port } = queues[q];
      if (order === 0) await tx.write(`${qdir}/ring-ref`, String(refs[0]));
      else for (let i = 0; i < refs.length; i++) await tx.write(`${qdir}/ring-ref${i}`, String(refs[i]));
      await tx.write(`${qdir}/event-channel`, String(port));
    }
    await tx.write(`${dir}/protocol`, XEN_IO_PROTO_ABI_X86_64);
    await tx.write(`${dir}/feature-persistent`, persistentOffered ? '1' : '0');
    await tx.write(`${dir}/state`, String(XenbusState.Initialised));
  });
  let st: XenbusState;
  try {
    st = await waitForState(xb, backendDir, (s) => s === XenbusState.Connected || s >= XenbusState.Closing, { timeoutMs });
  } catch (e) {
    throw new BlkfrontHandshakeError(`${vdevName(virtualDevice)}: backend did not connect (${e instanceof TimeoutError ? 'timeout' : (e as Error).message})`, { cause: e });
  }
  if (st !== XenbusState.Connected) throw new BlkfrontHandshakeError(`${vdevName(virtualDevice)}: backend went ${XenbusState[st]}`);
  const sectors = await readUint(k, `${backendDir}/sectors`, -1);
  if (sectors < 0) throw new BlkfrontHandshakeError(`${vdevName(virtualDevice)}: backend wrote no sectors key`);
  const info = await readUint(k, `${backendDir}/info`, 0);
  const sectorSize = await readUint(k, `${backendDir}/sector-size`, SECTOR_SIZE);
  if (sectorSize !== 512 && sectorSize !== 4096) throw new BlkfrontHandshakeError(`unsupported sector-size ${sectorSize}`);
  const flag = async (key: string): Promise<boolean> => (await readUint(k, `${backendDir}/${key}`, 0)) === 1;
  const indirect = Math.min(opts.maxIndirectSegments ?? BLKFRONT_MAX_INDIRECT_SEGMENTS, await readUint(k, `${backendDir}/feature-max-indirect-segments`, 0));
  const features: BlkfrontFeatures = {
    flush: await flag('feature-flush-cache'),
    barrier: await flag('feature-barrier'),
    discard: await flag('feature-discard'),
    discardZeroes: await flag('discard-zeroes'),
    discardGranularity: await readUint(k, `${backendDir}/discard-granularity`, sectorSize),
    discardAlignment: await readUint(k, `${backendDir}/discard-alignment`, 0),
    persistent: persistentOffered && await flag('feature-persistent'),
    maxSegments: indirect > BLKIF_MAX_SEGMENTS_PER_REQUEST ? indirect : BLKIF_MAX_SEGMENTS_PER_REQUEST,
    ringPages: 1 << order,
    queues: nq,
  };
  const diskInfo: BlkfrontDiskInfo = {
    backendDomid: backendId, handle: virtualDevice & 0xffff, abi, sectors, sectorSize,
    readOnly: (info & VDISK_READONLY) !== 0, features,
  };
  const rings = queues.map((q) => new BlkfrontRing({ info: diskInfo, ring: q.ring, port: q.port }, k.evtchn, k.gnttab, k.memory));
  rings.forEach((r, i) => k.evtchn.on(queues[i].port, () => r.onEvent()));
  const io = new BlkfrontIo(diskInfo, rings);
  await switchState(xb, dir, XenbusState.Connected);
  const dev = new Blkfront(k, vdevName(virtualDevice), virtualDevice, dir, backendDir, io, queues);
  dev.backendStateAtInitialised = backendAtInit;
  // The backend re-writing Connected announces a resize; Closing means it is going away
  // (a detach, or dom0 tearing the domain down): fail what is in flight, close in order
  // (Closing, Closed, grants ended) and leave k.devices, as Linux's blkfront does when
  // its backend goes Closing.
  const unwatch = await xb.watch(`${backendDir}/state`, () => {
    void (async () => {
      const s = await readState(xb, backendDir).catch(() => XenbusState.Unknown);
      if (s === XenbusState.Connected) {
        const n = await readUint(k, `${backendDir}/sectors`, -1).catch(() => -1);
        if (n >= 0) io.setSectors(n);
      } else if (s >= XenbusState.Closing || s === XenbusState.Unknown) {
        io.disable(new BlkError(-1, `${dev.name}: backend closed`));
        if (!dev.isClosed) {
          await dev.close(5000).catch(() => undefined);
          await unwatch().catch(() => undefined);
          k.removeDevice(dev.name, dev);
        }
      }
    })();
  });
  k.onTeardown(async () => {
    await unwatch().catch(() => undefined);
    await dev.close();
  });
  return dev;
}

/**
 * Hot-plug: watches `device/vbd/` and connects each disk the toolstack adds after
 * boot (`known`: the device ids connected already), adding it to `k.devices`
 * ({@link Kernel.addDevice}); a disk that fails its handshake is logged on the console.
 * A detached disk leaves `k.devices` once closed (see {@link connectBlkfront}); its id
 * may be attached again.
 * @returns the function that stops watching.
 */
export function watchBlkfronts(k: Kernel, known: Iterable<string>, opts: BlkfrontOptions = {}): Promise<() => Promise<void>> {
  return watchFrontends(k, 'vbd', known, (id) => connectBlkfront(k, id, opts));
}

/**
 * Connects every virtual disk the toolstack attached to this domain (the entries of
 * `device/vbd/`), as Linux's xenbus probe does at boot.
 * @returns the disks by name (`xvda`, ...).
 */
export async function probeBlkfronts(k: Kernel, opts: BlkfrontOptions = {}): Promise<Map<string, Blkfront>> {
  const out = new Map<string, Blkfront>();
  const ids = await k.xenbus.directory(`/local/domain/${k.domid}/device/vbd`).catch(() => [] as string[]);
  const devs = await Promise.all(ids.map((id) => connectBlkfront(k, id, opts)));
  for (const d of devs) out.set(d.name, d);
  return out;
}
