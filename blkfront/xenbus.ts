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
 * (a shortcut the backend tolerates); it alone initialises the shared ring.
 *
 * Keys written (frontend dir): `ring-ref`, `event-channel`, `protocol`
 * (`x86_64-abi`), `state`. Keys read (backend dir): `sectors` (512-byte units),
 * `sector-size`, `info` (VDISK_* bits), `feature-flush-cache`, `state`.
 *
 * @see io/blkif.h, Linux drivers/block/xen-blkfront.c (talk_to_blkback, blkfront_connect)
 */
import { PvioError, TimeoutError } from '../rings/errors.ts';
import { FrontRing } from '../rings/ring.ts';
import { blkifAbi, VDISK_READONLY, XEN_IO_PROTO_ABI_X86_64, SECTOR_SIZE } from '../rings/blkif.ts';
import type { EvtchnPort, GrantRef } from '../hypervisor/abi.ts';
import type { Kernel } from '../hypervisor/kernel.ts';
import type { GuestExtent } from '../hypervisor/guest-memory.ts';
import { XenbusState, switchState, waitForState, readState } from '../xenstore/xenbus.ts';
import { BlkfrontRing, BlkError, type BlkfrontCounters } from './blkfront.ts';

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

/** A connected virtual disk, as the guest uses it. */
export class Blkfront {
  /** Disk size in 512-byte sectors. */
  get sectors(): number {
    return this.ring.opts.sectors;
  }
  /** Logical sector size in bytes (the `sector-size` key). */
  readonly sectorSize: number;
  readonly readOnly: boolean;
  /** The backend's state when this frontend went Initialised (the handshake's order, for tests). */
  backendStateAtInitialised: XenbusState = XenbusState.Unknown;
  private closed = false;

  constructor(
    private readonly k: Kernel,
    /** `xvda`, ... */
    readonly name: string,
    readonly virtualDevice: number,
    private readonly dir: string,
    private readonly backendDir: string,
    private readonly ring: BlkfrontRing,
    private readonly ringExtent: GuestExtent,
    private readonly ringRef: GrantRef,
    private readonly port: EvtchnPort,
    sectorSize: number,
  ) {
    this.sectorSize = sectorSize;
    this.readOnly = ring.opts.readOnly;
  }

  /** Reads `count` 512-byte sectors at `sector`. @throws BlkError */
  read(sector: number, count: number): Promise<Uint8Array> {
    return this.ring.read(sector, count);
  }
  /** Reads into `into` (length a multiple of 512) at `sector`. @throws BlkError */
  readInto(sector: number, into: Uint8Array): Promise<void> {
    return this.ring.readInto(sector, into);
  }
  /** Writes `data` (length a multiple of 512) at `sector`. @throws BlkError */
  write(sector: number, data: Uint8Array): Promise<void> {
    return this.ring.write(sector, data);
  }
  /** FLUSH_DISKCACHE. @throws BlkError */
  flush(): Promise<void> {
    return this.ring.flush();
  }
  /** Counters of the data path. */
  get counters(): BlkfrontCounters {
    return this.ring.counters;
  }
  /** Requests in flight right now. */
  get inFlight(): number {
    return this.ring.requestsInFlight;
  }
  /** Size in bytes. */
  get sizeBytes(): number {
    return this.sectors * SECTOR_SIZE;
  }

  /**
   * Orderly teardown: waits for I/O in flight, Closing, waits for the backend to
   * close, closes the port, ends the ring grant, Closed.
   * @throws BlkfrontHandshakeError when the backend does not follow in time.
   */
  async close(timeoutMs = HANDSHAKE_TIMEOUT_MS): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const deadline = Date.now() + timeoutMs;
    while (this.ring.busy() && !this.ring.error && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
    const xb = this.k.xenbus;
    await switchState(xb, this.dir, XenbusState.Closing);
    await waitForState(xb, this.backendDir, (s) => s >= XenbusState.Closing || s === XenbusState.Unknown, { timeoutMs: Math.max(1, deadline - Date.now()) });
    this.ring.disable(new BlkError(-1, 'device closed'));
    try {
      this.k.evtchn.close(this.port);
    } catch {
      /* the backend's domain may be gone already */
    }
    await switchState(xb, this.dir, XenbusState.Closed);
    await waitForState(xb, this.backendDir, (s) => s === XenbusState.Closed || s === XenbusState.Unknown, { timeoutMs: Math.max(1, deadline - Date.now()) })
      .catch(() => undefined);
    // The backend unmapped the ring and the data pages when it went Closed.
    if (this.k.gnttab.endAccess(this.ringRef)) this.k.memory.release(this.ringExtent.mfn, this.ringExtent.order);
    this.ring.releaseAll();
  }
}

/**
 * Connects the frontend of device `devid` (a directory under `device/vbd/`):
 * allocates and initialises the ring, grants it, allocates the event channel,
 * writes the transport keys and Initialised in one transaction, waits for the
 * backend's Connected, reads the disk's properties and goes Connected.
 * @throws BlkfrontHandshakeError (backend missing, refusing, or too slow).
 */
export async function connectBlkfront(k: Kernel, devid: string, timeoutMs = HANDSHAKE_TIMEOUT_MS): Promise<Blkfront> {
  const xb = k.xenbus;
  const dir = `/local/domain/${k.domid}/device/vbd/${devid}`;
  const backendDir = await xb.read(`${dir}/backend`);
  const backendId = Number(await xb.read(`${dir}/backend-id`));
  const virtualDevice = Number((await xb.readOptional(`${dir}/virtual-device`)) ?? devid);
  const abi = blkifAbi(XEN_IO_PROTO_ABI_X86_64);
  const extent = k.memory.allocExtent(0);
  const ring = FrontRing.init(extent.bytes, abi.entrySize); // only the frontend initialises
  const ringRef = k.gnttab.grantAccess(backendId, extent.mfn, false);
  const port = k.evtchn.allocUnbound(backendId);
  const backendAtInit = await readState(xb, backendDir);
  await xb.transaction(async (tx) => {
    await tx.write(`${dir}/ring-ref`, String(ringRef));
    await tx.write(`${dir}/event-channel`, String(port));
    await tx.write(`${dir}/protocol`, XEN_IO_PROTO_ABI_X86_64);
    await tx.write(`${dir}/state`, String(XenbusState.Initialised));
  });
  let st: XenbusState;
  try {
    st = await waitForState(xb, backendDir, (s) => s === XenbusState.Connected || s >= XenbusState.Closing, { timeoutMs });
  } catch (e) {
    throw new BlkfrontHandshakeError(`${vdevName(virtualDevice)}: backend did not connect (${e instanceof TimeoutError ? 'timeout' : (e as Error).message})`, { cause: e });
  }
  if (st !== XenbusState.Connected) throw new BlkfrontHandshakeError(`${vdevName(virtualDevice)}: backend went ${XenbusState[st]}`);
  const sectors = Number(await xb.read(`${backendDir}/sectors`));
  const info = Number((await xb.readOptional(`${backendDir}/info`)) ?? '0');
  const sectorSize = Number((await xb.readOptional(`${backendDir}/sector-size`)) ?? '512');
  const flush = (await xb.readOptional(`${backendDir}/feature-flush-cache`)) === '1';
  if (!Number.isSafeInteger(sectors) || sectors < 0) throw new BlkfrontHandshakeError(`bad sectors key '${sectors}'`);
  const data = new BlkfrontRing(
    { backendDomid: backendId, handle: virtualDevice & 0xffff, ring, port, abi, sectors, readOnly: (info & VDISK_READONLY) !== 0, flush },
    k.evtchn, k.gnttab, k.memory,
  );
  k.evtchn.on(port, () => data.onEvent());
  await switchState(xb, dir, XenbusState.Connected);
  const dev = new Blkfront(k, vdevName(virtualDevice), virtualDevice, dir, backendDir, data, extent, ringRef, port, sectorSize);
  dev.backendStateAtInitialised = backendAtInit;
  // The backend re-writing Connected announces a resize; Closing means it is going away.
  const unwatch = await xb.watch(`${backendDir}/state`, () => {
    void (async () => {
      const s = await readState(xb, backendDir).catch(() => XenbusState.Unknown);
      if (s === XenbusState.Connected) {
        const n = Number(await xb.readOptional(`${backendDir}/sectors`));
        if (Number.isSafeInteger(n) && n >= 0) data.setSectors(n);
      } else if (s >= XenbusState.Closing || s === XenbusState.Unknown) {
        data.disable(new BlkError(-1, `${dev.name}: backend closed`));
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
 * Connects every virtual disk the toolstack attached to this domain (the entries of
 * `device/vbd/`), as Linux's xenbus probe does at boot.
 * @returns the disks by name (`xvda`, ...).
 */
export async function probeBlkfronts(k: Kernel): Promise<Map<string, Blkfront>> {
  const out = new Map<string, Blkfront>();
  const ids = await k.xenbus.directory(`/local/domain/${k.domid}/device/vbd`).catch(() => [] as string[]);
  const devs = await Promise.all(ids.map((id) => connectBlkfront(k, id)));
  for (const d of devs) out.set(d.name, d);
  return out;
}
