/**
 * netfront's XenBus side and the guest's NIC API: the handshake with netback as
 * Linux's xen-netfront does it, then {@link Netfront} (`nic.mac`, `nic.mtu`,
 * `nic.send(frame)`, received frames as an async iterator, counters).
 *
 * Handshake: read the backend's features once it is in InitWait; for each queue
 * allocate and initialise a one-page tx ring and rx ring, grant both, allocate one
 * event channel (or a tx and an rx one with `feature-split-event-channels`); write in
 * one transaction `tx-ring-ref`, `rx-ring-ref`, `event-channel` (or
 * `event-channel-tx`/`-rx`) — under `queue-N/` with several queues, then
 * `multi-queue-num-queues` —, `request-rx-copy=1`, `feature-rx-notify=1`,
 * `feature-sg`, `feature-gso-tcpv4`, `feature-no-csum-offload` when asked,
 * pvio's `feature-persistent` when asked, and `state=Connected` (Linux netfront goes
 * Connected once its keys are written); then wait for the backend's Connected.
 *
 * Keys the toolstack wrote in the device dir: `backend`, `backend-id`, `handle`,
 * `mac`, and optionally `mtu` (default 1500).
 *
 * @see xen/include/public/io/netif.h, Linux drivers/net/xen-netfront.c
 */
import { FrontRing } from '../rings/ring.ts';
import { PvioError } from '../rings/errors.ts';
import { NETIF_RX_RING_ENTRY_SIZE, NETIF_TX_RING_ENTRY_SIZE } from '../rings/netif.ts';
import { PAGE_SIZE, type EvtchnPort, type GrantRef } from '../hypervisor/abi.ts';
import type { Kernel } from '../hypervisor/kernel.ts';
import { TimeoutError } from '../rings/errors.ts';
import { XenbusState, switchState, readState, waitForState, readUintKey, watchFrontends } from '../xenstore/xenbus.ts';
import { NetfrontQueue, NetfrontBrokenError, type NetfrontCounters, type SendOptions } from './netfront.ts';

const HANDSHAKE_TIMEOUT_MS = 30_000;
/** Largest frame with `feature-sg`: 64 KiB (IP's limit) plus the Ethernet header. */
const SG_MAX_FRAME = 65535;

/** The handshake failed (backend missing, refusing, too slow, bad keys). */
export class NetfrontHandshakeError extends PvioError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('PVIO_ERR_NETFRONT_HANDSHAKE', message, options);
  }
}

/** What this frontend offers (each defaults to what Linux's netfront does). */
export interface NetfrontOptions {
  /** Most queues (default: min(vCPUs, backend max)). */
  readonly maxQueues?: number;
  /** Use split event channels when offered (default true). */
  readonly splitEventChannels?: boolean;
  /** Offer scatter-gather (default true). */
  readonly sg?: boolean;
  /** Write `feature-no-csum-offload=1`: never receive partial checksums (default: the toolstack's `no-csum-offload` hint in the device dir, else false). */
  readonly noCsumOffload?: boolean;
  /** Offer pvio's persistent buffer pool (default: what the toolstack wrote in `feature-persistent` of the device dir, else false). */
  readonly persistent?: boolean;
  readonly timeoutMs?: number;
}

/** A virtual NIC, guest side. */
export class Netfront {
  private rr = 0;
  private readonly queueOf = (frame: Uint8Array): number => {
    if (this.queues.length === 1) return 0;
    // Keep a flow on one queue: hash the IPv4 addresses when there are any.
    if (frame.length >= 34 && frame[12] === 0x08 && frame[13] === 0x00) {
      let h = 0;
      for (let i = 26; i < 34; i++) h = (h * 31 + frame[i]) >>> 0;
      return h % this.queues.length;
    }
    return this.rr++ % this.queues.length;
  };

  constructor(
    /** `eth<devid>`. */
    readonly name: string,
    /** The MAC, `xx:xx:xx:xx:xx:xx`. */
    readonly mac: string,
    /** The MTU in bytes (the largest IP packet; frames add 14 bytes of Ethernet header). */
    readonly mtu: number,
    readonly dir: string,
    readonly backendDir: string,
    private readonly queues: NetfrontQueue[],
    /** What was negotiated. */
    readonly features: { queues: number; split: boolean; sg: boolean; gso: boolean; persistent: boolean; csumOffload: boolean },
    private readonly k: Kernel,
  ) {}

  /**
   * Sends one Ethernet frame (copied before this resolves).
   * @throws NetfrontBrokenError when the vif is broken; RangeError for a bad size.
   */
  send(frame: Uint8Array, opts?: SendOptions): Promise<void> {
    return this.queues[this.queueOf(frame)].send(frame, opts);
  }

  /**
   * Sends one Ethernet frame if its queue's tx ring has room, without waiting
   * (copied before this returns).
   * @returns false when the ring is full (nothing queued: retry, or `await send`).
   * @throws NetfrontBrokenError when the vif is broken; RangeError for a bad size.
   */
  trySend(frame: Uint8Array, opts?: SendOptions): boolean {
    return this.queues[this.queueOf(frame)].trySend(frame, opts);
  }

  /** A frame already received (from any queue), or null; never waits. */
  tryReceive(): Uint8Array | null {
    return this.takeAny(false);
  }

  /**
   * Up to `max` received frames: those already received at once, else waits up to
   * `timeoutMs` for the first (an empty array when none came). One promise per
   * batch, as a NAPI poll takes a batch per interrupt.
   *
   * With `borrow`, the frames are lent, not given: their bytes stay valid only until
   * the next `receiveBatch` with `borrow` (or {@link releaseLent}), then are reused
   * for later frames — no allocation per frame, as a driver's rx descriptors are
   * recycled once the stack is done with them. Without it the frames are the
   * caller's to keep.
   * @throws NetfrontBrokenError when every queue is broken and nothing is left.
   */
  async receiveBatch(max: number, timeoutMs = 1000, opts: { borrow?: boolean } = {}): Promise<Uint8Array[]> {
    const borrow = opts.borrow === true;
    if (borrow) this.releaseLent();
    const out: Uint8Array[] = [];
    let f = this.takeAny(borrow);
    if (!f) {
      await this.waitRx(timeoutMs);
      f = this.takeAny(borrow);
      if (!f) return out;
    }
    do out.push(f);
    while (out.length < max && (f = this.takeAny(borrow)) !== null);
    return out;
  }

  /** Gives back every frame lent by `receiveBatch(..., { borrow: true })`: their bytes may be reused from now on. */
  releaseLent(): void {
    for (const q of this.queues) q.releaseLent();
  }

  private takeAny(lend: boolean): Uint8Array | null {
    const qs = this.queues;
    for (let i = 0; i < qs.length; i++) {
      const f = lend ? qs[i].tryReceiveLent() : qs[i].tryReceive();
      if (f) return f;
    }
    return null;
  }

  /** Waits until some queue has a frame, every queue is broken, or `timeoutMs` passed. @throws NetfrontBrokenError when every queue is broken. */
  private async waitRx(timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      if (this.queues.some((q) => q.pendingRx > 0)) return;
      if (this.queues.every((q) => q.isBroken)) throw new NetfrontBrokenError(`${this.name}: broken`);
      const left = deadline - performance.now();
      if (left <= 0) return;
      if (this.queues.length === 1) {
        await this.queues[0].waitRx(left);
        return;
      }
      await new Promise((r) => setTimeout(r, Math.min(1, left)));
    }
  }

  /**
   * The next received frame from any queue, or null after `timeoutMs` with none.
   * @throws NetfrontBrokenError when every queue is broken.
   */
  async receive(timeoutMs = 1000): Promise<Uint8Array | null> {
    await this.waitRx(timeoutMs);
    return this.takeAny(false);
  }

  /** Received frames, as they come (ends when the vif breaks or closes). */
  async *[Symbol.asyncIterator](): AsyncIterableIterator<Uint8Array> {
    for (;;) {
      let f: Uint8Array | null;
      try {
        f = await this.receive(1000);
      } catch {
        return;
      }
      if (f) yield f;
    }
  }

  /** Counters summed over the queues. */
  get counters(): NetfrontCounters {
    const out = {} as NetfrontCounters;
    for (const q of this.queues) for (const [k, v] of Object.entries(q.counters)) out[k as keyof NetfrontCounters] = (out[k as keyof NetfrontCounters] ?? 0) + v;
    return out;
  }

  private closed = false;

  /** Whether {@link close} has begun. */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Whether any queue is broken. */
  get isBroken(): boolean {
    return this.queues.some((q) => q.isBroken);
  }

  /** Closing → (backend Closing/Closed) → Closed; every grant ended. */
  async close(timeoutMs = 5000): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const xb = this.k.xenbus;
    for (const q of this.queues) q.breakQueue(new NetfrontBrokenError(`${this.name}: closed`));
    await switchState(xb, this.dir, XenbusState.Closing).catch(() => undefined);
    await waitForState(xb, this.backendDir, (s) => s >= XenbusState.Closing, { timeoutMs }).catch(() => undefined);
    await switchState(xb, this.dir, XenbusState.Closed).catch(() => undefined);
    await waitForState(xb, this.backendDir, (s) => s === XenbusState.Closed, { timeoutMs }).catch(() => undefined);
    for (const q of this.queues) q.endGrants();
  }
}

/**
 * Connects the vif `device/vif/<devid>` (see the module comment).
 * @throws NetfrontHandshakeError (backend missing, refusing, bad keys, or too slow).
 */
export async function connectNetfront(k: Kernel, devid: string, opts: NetfrontOptions = {}): Promise<Netfront> {
  const timeoutMs = opts.timeoutMs ?? HANDSHAKE_TIMEOUT_MS;
  const xb = k.xenbus;
  const dir = `/local/domain/${k.domid}/device/vif/${devid}`;
  const backendDir = await xb.read(`${dir}/backend`);
  const backendId = Number(await xb.read(`${dir}/backend-id`));
  const mac = await xb.read(`${dir}/mac`);
  const uint = (path: string, dflt: number) => readUintKey(xb, path, dflt, (v) => new NetfrontHandshakeError(`bad ${path} '${v.slice(0, 40)}'`));
  const mtu = await uint(`${dir}/mtu`, 1500);
  try {
    await waitForState(xb, backendDir, (s) => s >= XenbusState.InitWait, { timeoutMs });
  } catch (e) {
    throw new NetfrontHandshakeError(`eth${devid}: backend never reached InitWait (${e instanceof TimeoutError ? 'timeout' : (e as Error).message})`, { cause: e });
  }
  const flag = async (key: string) => (await uint(`${backendDir}/${key}`, 0)) === 1;
  const split = opts.splitEventChannels !== false && await flag('feature-split-event-channels');
  const sg = opts.sg !== false && await flag('feature-sg');
  const gso = sg && await flag('feature-gso-tcpv4');
  const persistentAsked = opts.persistent ?? (await uint(`${dir}/feature-persistent`, 0)) === 1;
  const noCsumOffload = opts.noCsumOffload ?? (await uint(`${dir}/no-csum-offload`, 0)) === 1;
  const persistent = persistentAsked && await flag('feature-persistent');
  const nq = Math.max(1, Math.min(opts.maxQueues ?? k.nrVcpus, await uint(`${backendDir}/multi-queue-max-queues`, 1)));
  const rings: Array<{ txRing: FrontRing; rxRing: FrontRing; txRef: GrantRef; rxRef: GrantRef; txPort: EvtchnPort; rxPort: EvtchnPort }> = [];
  for (let q = 0; q < nq; q++) {
    const txPage = k.memory.allocPage();
    const rxPage = k.memory.allocPage();
    const txRing = FrontRing.init(txPage.bytes.subarray(0, PAGE_SIZE), NETIF_TX_RING_ENTRY_SIZE);
    const rxRing = FrontRing.init(rxPage.bytes.subarray(0, PAGE_SIZE), NETIF_RX_RING_ENTRY_SIZE);
    const txRef: GrantRef = k.gnttab.grantAccess(backendId, txPage.mfn, false);
    const rxRef: GrantRef = k.gnttab.grantAccess(backendId, rxPage.mfn, false);
    const txPort: EvtchnPort = k.evtchn.allocUnbound(backendId);
    const rxPort: EvtchnPort = split ? k.evtchn.allocUnbound(backendId) : txPort;
    rings.push({ txRing, rxRing, txRef, rxRef, txPort, rxPort });
  }
  await xb.transaction(async (tx) => {
    if (nq > 1) await tx.write(`${dir}/multi-queue-num-queues`, String(nq));
    for (const [q, r] of rings.entries()) {
      const qdir = nq > 1 ? `${dir}/queue-${q}` : dir;
      await tx.write(`${qdir}/tx-ring-ref`, String(r.txRef));
      await tx.write(`${qdir}/rx-ring-ref`, String(r.rxRef));
      if (split) {
        await tx.write(`${qdir}/event-channel-tx`, String(r.txPort));
        await tx.write(`${qdir}/event-channel-rx`, String(r.rxPort));
      } else {
        await tx.write(`${qdir}/event-channel`, String(r.txPort));
      }
    }
    await tx.write(`${dir}/request-rx-copy`, '1');
    await tx.write(`${dir}/feature-rx-notify`, '1');
    await tx.write(`${dir}/feature-sg`, sg ? '1' : '0');
    await tx.write(`${dir}/feature-gso-tcpv4`, gso ? '1' : '0');
    if (noCsumOffload) await tx.write(`${dir}/feature-no-csum-offload`, '1');
    await tx.write(`${dir}/feature-persistent`, persistent ? '1' : '0');
    await tx.write(`${dir}/state`, String(XenbusState.Connected));
  });
  const maxFrame = sg ? SG_MAX_FRAME : Math.min(PAGE_SIZE, mtu + 14);
  const queues = rings.map((r) => new NetfrontQueue({
    backendDomid: backendId, txRing: r.txRing, rxRing: r.rxRing, txPort: r.txPort, rxPort: r.rxPort, persistent, sg, gso, maxFrame,
  }, k.evtchn, k.gnttab, k.memory));
  rings.forEach((r, i) => {
    k.evtchn.on(r.txPort, () => queues[i].onEvent());
    if (r.rxPort !== r.txPort) k.evtchn.on(r.rxPort, () => queues[i].onEvent());
  });
  let st: XenbusState;
  try {
    st = await waitForState(xb, backendDir, (s) => s === XenbusState.Connected || s >= XenbusState.Closing, { timeoutMs });
  } catch (e) {
    throw new NetfrontHandshakeError(`eth${devid}: backend did not connect (${e instanceof TimeoutError ? 'timeout' : (e as Error).message})`, { cause: e });
  }
  if (st !== XenbusState.Connected) throw new NetfrontHandshakeError(`eth${devid}: backend went ${XenbusState[st]}`);
  // Buffers posted before the backend connected: tell it they are there.
  for (const q of queues) q.onEvent();
  const nic = new Netfront(`eth${devid}`, mac, mtu, dir, backendDir, queues,
    { queues: nq, split, sg, gso, persistent, csumOffload: !noCsumOffload }, k);
  // The backend going Closing (a detach, or dom0 tearing the domain down) breaks the
  // queues, closes the vif in order and takes it out of k.devices.
  const unwatch = await xb.watch(`${backendDir}/state`, () => {
    void (async () => {
      const s = await readState(xb, backendDir).catch(() => XenbusState.Unknown);
      if (s >= XenbusState.Closing || s === XenbusState.Unknown) {
        for (const q of queues) q.breakQueue(new NetfrontBrokenError(`eth${devid}: backend closed`));
        if (!nic.isClosed) {
          await nic.close().catch(() => undefined);
          await unwatch().catch(() => undefined);
          k.removeDevice(nic.name, nic);
        }
      }
    })();
  });
  k.onTeardown(async () => {
    await unwatch().catch(() => undefined);
    await nic.close();
  });
  return nic;
}

/**
 * Hot-plug: watches `device/vif/` and connects each vif the toolstack adds after boot
 * (`known`: the device ids connected already), adding it to `k.devices`
 * ({@link Kernel.addDevice}); a detached vif leaves once closed and its id may come
 * again. @returns the function that stops watching.
 */
export function watchNetfronts(k: Kernel, known: Iterable<string>, opts: NetfrontOptions = {}): Promise<() => Promise<void>> {
  return watchFrontends(k, 'vif', known, (id) => connectNetfront(k, id, opts));
}

/**
 * Connects every vif the toolstack attached to this domain (`device/vif/*`), as
 * Linux's xenbus probe does at boot.
 * @returns the NICs by name (`eth0`, ...).
 */
export async function probeNetfronts(k: Kernel, opts: NetfrontOptions = {}): Promise<Map<string, Netfront>> {
  const out = new Map<string, Netfront>();
  const ids = await k.xenbus.directory(`/local/domain/${k.domid}/device/vif`).catch(() => [] as string[]);
  const nics = await Promise.all(ids.map((id) => connectNetfront(k, id, opts)));
  for (const n of nics) out.set(n.name, n);
  return out;
}
