/**
 * vchan: libxenvchan's inter-domain byte stream, both ends, written with the
 * driver-author primitives only (a layout table, byte rings over granted pages,
 * grants and their mapping, an event channel, XenStore keys).
 *
 * The server allocates one shared page holding `struct vchan_interface`:
 *
 * | field | offset | writer | meaning |
 * |---|---|---|---|
 * | `left.cons`, `left.prod` | 0, 4 | server, client | the ring the client writes and the server reads |
 * | `right.cons`, `right.prod` | 8, 12 | client, server | the ring the server writes and the client reads |
 * | `left_order`, `right_order` | 16, 18 | server | ring sizes: 2^order bytes |
 * | `cli_live`, `srv_live` | 20, 21 | client, server | 0 closed, 1 connected, 2 not yet |
 * | `cli_notify`, `srv_notify` | 22, 23 | either | bits the *other* side asks to be notified for: 1 `VCHAN_NOTIFY_WRITE` (data written), 2 `VCHAN_NOTIFY_READ` (space freed) |
 * | `grants[]` | 24 | server | the grant refs of the rings' own pages (left's, then right's) |
 *
 * A ring of order 10 sits at offset 1024 of the shared page, of order 11 at 2048
 * (only one ring may use the shared page), of order 12 and more in its own
 * 2^(order-12) pages, granted to the client and listed in `grants[]` (pvio maps them
 * as one region, so they are one extent of the server's). The server grants the
 * shared page, allocates an unbound event channel for the client and writes
 * `ring-ref` and `event-channel` under the XenStore path both sides agree on (its
 * own `data/vchan/<name>` directory, made readable by the client); the client reads
 * them, maps, binds, goes live and notifies.
 *
 * Each side asks for a notification by setting a bit in the byte the other side
 * checks (`srv_notify` for the client's requests of the server, `cli_notify` for the
 * server's of the client), then re-checks the ring (the race with a peer that has
 * just acted); the other side clears the bit and notifies when it does the thing
 * asked for. Closing writes the side's `*_live` 0 and notifies; a reader sees the
 * end once the peer is closed and the ring is empty.
 *
 * The indices the peer writes are checked (`prod - cons` at most the ring size);
 * an impossible one breaks the stream with ProtocolError.
 *
 * @see xen/include/public/io/libxenvchan.h, tools/libs/vchan/io.c
 */
import { Duplex } from 'node:stream';
// Everything below the stream comes from the driver kit, and nothing else.
import {
  ByteRingConsumer, ByteRingProducer, PAGE_SIZE, PvioError, TimeoutError, defineLayout, field,
  type ByteRingSpec, type EvtchnPort, type GrantHandle, type GrantRef, type Kernel,
} from '../kit/index.ts';

/** `struct vchan_interface` (24 bytes, then `grants[]`). @see io/libxenvchan.h */
export const VCHAN_INTERFACE = defineLayout('vchan_interface', 'io/libxenvchan.h', 24, {
  left_cons: field(0, 'u32', 'back'),
  left_prod: field(4, 'u32', 'front'),
  right_cons: field(8, 'u32', 'front'),
  right_prod: field(12, 'u32', 'back'),
  left_order: field(16, 'u16', 'back'),
  right_order: field(18, 'u16', 'back'),
  cli_live: field(20, 'u8', 'front'),
  srv_live: field(21, 'u8', 'back'),
  cli_notify: field(22, 'u8', 'either'),
  srv_notify: field(23, 'u8', 'either'),
});
/** Offset of `grants[]` in the shared page. */
export const VCHAN_GRANTS_OFFSET = 24;
/** Notification bits. */
export const VCHAN_NOTIFY_WRITE = 1;
export const VCHAN_NOTIFY_READ = 2;
/** `*_live` values. */
export const VCHAN_LIVE = Object.freeze({ closed: 0, connected: 1, waiting: 2 });
/** Smallest and largest ring orders: 1 KiB … 64 KiB (pvio maps a ring's pages as one extent, at most 16 pages; libxenvchan allows more). */
export const VCHAN_MIN_ORDER = 10;
export const VCHAN_MAX_ORDER = 16;

const F = VCHAN_INTERFACE.fields;

/** A vchan could not be set up, or broke (code `PVIO_ERR_VCHAN`). */
export class VchanError extends PvioError {
  constructor(message: string) {
    super('PVIO_ERR_VCHAN', message);
  }
}

/** Where the server publishes its keys: its own `data/vchan/<name>`. */
export function vchanPath(serverDomid: number, name: string): string {
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name)) throw new VchanError(`bad vchan name '${name.slice(0, 80)}'`);
  return `/local/domain/${serverDomid}/data/vchan/${name}`;
}

/** Where a ring's bytes are: in the shared page (order 10, 11) or in its own pages. */
function ringPlace(order: number, other: number): 'page1024' | 'page2048' | 'own' {
  if (order === 10) return 'page1024';
  if (order === 11) return other === 10 ? 'own' : 'page2048';
  return 'own';
}

/** Options of {@link vchanServer}. */
export interface VchanServerOptions {
  /** The client's domain. */
  readonly peer: number;
  /** Name of the channel (XenStore: `data/vchan/<name>` of the server). */
  readonly name: string;
  /** log2 of the ring the client writes (bytes; 10 … 16), default 16 (64 KiB). */
  readonly leftOrder?: number;
  /** log2 of the ring the server writes, default 16. */
  readonly rightOrder?: number;
  /** Deadline for the client to connect, ms (default 30 000). */
  readonly timeoutMs?: number;
}

/** Options of {@link vchanClient}. */
export interface VchanClientOptions {
  /** The server's domain. */
  readonly peer: number;
  readonly name: string;
  /** Deadline for the server's keys to appear, ms (default 30 000). */
  readonly timeoutMs?: number;
}

/** What a side holds, to release it at the end. */
interface Resources {
  readonly port: EvtchnPort;
  readonly grants: GrantRef[];
  readonly handles: GrantHandle[];
}

/**
 * One end of a vchan, as a Node `Duplex` of bytes: what is written arrives at the
 * other end, in order, byte for byte; `end()` closes this side (the other reads to
 * the end, then gets EOF); a peer that closes ends the readable side after the bytes
 * it sent, and makes further writes fail (`VchanError`, `peer closed`). Also
 * `read(n)`-free helpers: {@link send} and {@link recv}.
 */
export class Vchan extends Duplex {
  readonly counters = { bytesWritten: 0, bytesRead: 0, notifications: 0, events: 0, writeWaits: 0 };
  private readonly u8: Uint8Array;
  private readonly waiters: Array<() => void> = [];
  private released = false;
  private readonly chunk = new Uint8Array(64 * 1024);
  /** The readable side wants data (Node called _read and we have not pushed past its limit). */
  private reading = false;

  constructor(
    private readonly k: Kernel,
    /** True for the server (the side that allocated the shared page). */
    readonly isServer: boolean,
    shared: Uint8Array,
    private readonly out: ByteRingProducer,
    private readonly inp: ByteRingConsumer,
    private readonly res: Resources,
  ) {
    super({ allowHalfOpen: true });
    this.u8 = shared;
    k.evtchn.on(res.port, () => {
      this.counters.events++;
      this.wake();
      this.pump();
    });
  }

  private get myLive(): number {
    return this.isServer ? F.srv_live.offset : F.cli_live.offset;
  }

  private get peerLive(): number {
    return this.isServer ? F.cli_live.offset : F.srv_live.offset;
  }

  /** The byte holding what the peer asks *us* to notify it for. */
  private get myNotify(): number {
    return this.isServer ? F.srv_notify.offset : F.cli_notify.offset;
  }

  /** The byte holding what *we* ask the peer to notify us for. */
  private get peerNotify(): number {
    return this.isServer ? F.cli_notify.offset : F.srv_notify.offset;
  }

  /** Whether the peer has closed (or was never there). */
  get peerClosed(): boolean {
    return Atomics.load(this.u8, this.peerLive) === VCHAN_LIVE.closed;
  }

  /** Asks the peer to notify us for `bit` (libxenvchan `request_notify`). */
  private requestNotify(bit: number): void {
    Atomics.or(this.u8, this.peerNotify, bit);
  }

  /** Notifies the peer if it asked for `bit`, clearing the request (libxenvchan `send_notify`). */
  private sendNotify(bit: number): void {
    const prev = Atomics.and(this.u8, this.myNotify, ~bit & 0xff);
    if (prev & bit) {
      this.counters.notifications++;
      this.k.evtchn.notify(this.res.port);
    }
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private waitEvent(): Promise<void> {
    return new Promise((r) => this.waiters.push(r));
  }

  /** Moves what the ring holds into the readable side while it wants more. */
  private pump(): void {
    if (!this.reading || this.released) return;
    try {
      for (;;) {
        const n = this.inp.read(this.chunk);
        if (n > 0) {
          this.counters.bytesRead += n;
          this.sendNotify(VCHAN_NOTIFY_READ);
          if (!this.push(Buffer.from(this.chunk.subarray(0, n)))) {
            this.reading = false;
            return;
          }
          continue;
        }
        // Empty: ask to hear of the next write, then look again (the race).
        this.requestNotify(VCHAN_NOTIFY_WRITE);
        if (this.inp.available() > 0) continue;
        if (this.peerClosed) {
          this.reading = false;
          this.push(null);
        }
        return;
      }
    } catch (e) {
      this.destroy(e as Error);
    }
  }

  override _read(): void {
    this.reading = true;
    this.pump();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    void this.writeAll(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength)).then(() => cb(), cb);
  }

  /** Writes every byte, waiting for room as needed. @throws VchanError when the peer has closed. */
  private async writeAll(bytes: Uint8Array): Promise<void> {
    let rest = bytes;
    while (rest.length > 0) {
      if (this.peerClosed) throw new VchanError('peer closed');
      if (this.released) throw new VchanError('closed');
      const n = this.out.write(rest);
      if (n > 0) {
        this.counters.bytesWritten += n;
        rest = rest.subarray(n);
        this.sendNotify(VCHAN_NOTIFY_WRITE);
        continue;
      }
      // Full: ask to hear of the next read, then look again.
      const ev = this.waitEvent();
      this.requestNotify(VCHAN_NOTIFY_READ);
      if (this.out.free() > 0 || this.peerClosed) continue;
      this.counters.writeWaits++;
      await ev;
    }
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.close();
    cb();
  }

  override _destroy(e: Error | null, cb: (e?: Error | null) => void): void {
    this.close();
    cb(e);
  }

  /** Closes this side: live 0 and a notification (the peer reads to the end, then EOF). */
  private close(): void {
    if (Atomics.load(this.u8, this.myLive) === VCHAN_LIVE.closed) return;
    Atomics.store(this.u8, this.myLive, VCHAN_LIVE.closed);
    this.counters.notifications++;
    this.k.evtchn.notify(this.res.port);
    // The pages stay granted (or mapped) until both sides are done: released by release().
  }

  /**
   * Releases the event channel, grants and mappings (after both sides closed, or
   * when the domain goes away). Idempotent.
   */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.close();
    this.k.evtchn.off(this.res.port);
    try {
      this.k.evtchn.close(this.res.port);
    } catch {
      /* the peer's domain may be gone */
    }
    if (this.res.handles.length > 0) this.k.gnttab.unmap(this.res.handles);
    for (const g of this.res.grants) this.k.gnttab.endAccess(g);
    this.wake();
  }
}

function spec(order: number, other: number, cons: number, prod: number, own: Uint8Array | null): ByteRingSpec {
  const place = ringPlace(order, other);
  const size = 1 << order;
  if (place === 'own') return { dataOffset: 0, size, consOffset: cons, prodOffset: prod, dataRegion: own! };
  return { dataOffset: place === 'page1024' ? 1024 : 2048, size, consOffset: cons, prodOffset: prod };
}

function checkOrders(left: number, right: number): void {
  for (const o of [left, right]) {
    if (!(Number.isInteger(o) && o >= VCHAN_MIN_ORDER && o <= VCHAN_MAX_ORDER)) throw new VchanError(`ring order ${o} is not ${VCHAN_MIN_ORDER} … ${VCHAN_MAX_ORDER}`);
  }
  if (left <= 11 && right <= 11) throw new VchanError('only one ring may live in the shared page (an order of 10 or 11)');
}

/**
 * Listens as the server of vchan `name` for domain `peer`: allocates and grants the
 * shared page and the rings, allocates the event channel, publishes `ring-ref` and
 * `event-channel` and waits for the client to connect.
 * @throws VchanError for bad orders; TimeoutError when no client came in time.
 */
export async function vchanServer(k: Kernel, o: VchanServerOptions): Promise<Vchan> {
  const left = o.leftOrder ?? 16;
  const right = o.rightOrder ?? 16;
  checkOrders(left, right);
  const path = vchanPath(k.domid, o.name);
  const page = k.memory.allocPage();
  const shared = page.bytes.subarray(0, PAGE_SIZE);
  shared.fill(0);
  const dv = new DataView(shared.buffer, shared.byteOffset, PAGE_SIZE);
  dv.setUint16(F.left_order.offset, left, true);
  dv.setUint16(F.right_order.offset, right, true);
  shared[F.cli_live.offset] = VCHAN_LIVE.waiting;
  shared[F.srv_live.offset] = VCHAN_LIVE.connected;
  const grants: GrantRef[] = [];
  const own = (order: number, otherOrder: number): Uint8Array | null => {
    if (ringPlace(order, otherOrder) !== 'own') return null;
    const pages = Math.max(1, (1 << order) / PAGE_SIZE);
    const ext = k.memory.allocExtent(Math.log2(pages));
    for (let i = 0; i < pages; i++) {
      const g = k.gnttab.grantAccess(o.peer, ext.mfn + i, false);
      dv.setUint32(VCHAN_GRANTS_OFFSET + grants.length * 4, g, true);
      grants.push(g);
    }
    return ext.bytes.subarray(0, pages * PAGE_SIZE);
  };
  const leftBytes = own(left, right);
  const rightBytes = own(right, left);
  if (VCHAN_GRANTS_OFFSET + grants.length * 4 > 1024 && (left <= 11 || right <= 11)) throw new VchanError('too many ring pages for the shared page');
  const inp = new ByteRingConsumer(shared, spec(left, right, F.left_cons.offset, F.left_prod.offset, leftBytes));
  const out = new ByteRingProducer(shared, spec(right, left, F.right_cons.offset, F.right_prod.offset, rightBytes));
  const pageRef = k.gnttab.grantAccess(o.peer, page.mfn, false);
  grants.push(pageRef);
  const port = k.evtchn.allocUnbound(o.peer);
  const connected = new Promise<void>((resolve) => {
    const check = () => {
      if (Atomics.load(shared, F.cli_live.offset) !== VCHAN_LIVE.waiting) resolve();
    };
    k.evtchn.on(port, check);
    check();
  });
  await k.xenbus.transaction(async (tx) => {
    await tx.write(`${path}/ring-ref`, String(pageRef));
    await tx.write(`${path}/event-channel`, String(port));
    await tx.setPerms(path, [{ domid: k.domid, perm: 'n' }, { domid: o.peer, perm: 'r' }]);
    await tx.setPerms(`${path}/ring-ref`, [{ domid: k.domid, perm: 'n' }, { domid: o.peer, perm: 'r' }]);
    await tx.setPerms(`${path}/event-channel`, [{ domid: k.domid, perm: 'n' }, { domid: o.peer, perm: 'r' }]);
  });
  const timeoutMs = o.timeoutMs ?? 30_000;
  let timer!: NodeJS.Timeout;
  await Promise.race([connected, new Promise<never>((_, rej) => {
    timer = setTimeout(() => rej(new TimeoutError(`vchan ${o.name}: no client within ${timeoutMs} ms`)), timeoutMs);
  })]).finally(() => clearTimeout(timer));
  k.evtchn.off(port);
  await k.xenbus.rm(path).catch(() => undefined); // connected: the keys have served
  return new Vchan(k, true, shared, out, inp, { port, grants, handles: [] });
}

/**
 * Connects as the client of vchan `name` served by domain `peer`: waits for its
 * keys, maps the shared page and the rings, binds the event channel, goes live.
 * @throws VchanError for a shared page whose orders or grants make no sense;
 *   TimeoutError when the keys do not appear in time; GrantError when a page does not map.
 */
export async function vchanClient(k: Kernel, o: VchanClientOptions): Promise<Vchan> {
  const path = vchanPath(o.peer, o.name);
  const timeoutMs = o.timeoutMs ?? 30_000;
  const deadline = Date.now() + timeoutMs;
  let ref: string | undefined;
  let evt: string | undefined;
  for (;;) {
    ref = await k.xenbus.readOptional(`${path}/ring-ref`).catch(() => undefined);
    evt = await k.xenbus.readOptional(`${path}/event-channel`).catch(() => undefined);
    if (ref !== undefined && evt !== undefined) break;
    if (Date.now() > deadline) throw new TimeoutError(`vchan ${o.name}: no server keys at ${path} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
  const [m] = k.gnttab.map([{ domid: o.peer, ref: Number(ref) as GrantRef, readonly: false }]);
  if (!m.page) throw new VchanError(`vchan ${o.name}: the shared page does not map (status ${m.status})`);
  const handles: GrantHandle[] = [m.handle];
  const shared = m.page.subarray(0, PAGE_SIZE);
  const dv = new DataView(shared.buffer, shared.byteOffset, PAGE_SIZE);
  const left = dv.getUint16(F.left_order.offset, true);
  const right = dv.getUint16(F.right_order.offset, true);
  try {
    checkOrders(left, right);
  } catch (e) {
    k.gnttab.unmap(handles);
    throw e;
  }
  let next = 0;
  const own = (order: number, otherOrder: number): Uint8Array | null => {
    if (ringPlace(order, otherOrder) !== 'own') return null;
    const pages = Math.max(1, (1 << order) / PAGE_SIZE);
    const refs: GrantRef[] = [];
    for (let i = 0; i < pages; i++) refs.push(dv.getUint32(VCHAN_GRANTS_OFFSET + (next++) * 4, true) as GrantRef);
    const r = k.gnttab.mapRing(o.peer, refs);
    handles.push(...r.handles);
    return r.bytes;
  };
  let out: ByteRingProducer;
  let inp: ByteRingConsumer;
  try {
    const leftBytes = own(left, right);
    const rightBytes = own(right, left);
    out = new ByteRingProducer(shared, spec(left, right, F.left_cons.offset, F.left_prod.offset, leftBytes));
    inp = new ByteRingConsumer(shared, spec(right, left, F.right_cons.offset, F.right_prod.offset, rightBytes));
  } catch (e) {
    k.gnttab.unmap(handles);
    throw e;
  }
  const port = k.evtchn.bindInterdomain(o.peer, Number(evt));
  const v = new Vchan(k, false, shared, out, inp, { port, grants: [], handles });
  Atomics.store(shared, F.cli_live.offset, VCHAN_LIVE.connected);
  k.evtchn.notify(port);
  return v;
}
