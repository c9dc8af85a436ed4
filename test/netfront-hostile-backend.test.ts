// A hostile backend against netfront, in process: a NetfrontQueue (behind the guest's
// Netfront API) over two FrontRings on SharedArrayBuffers, with small fakes for the
// event channel, grant table and guest memory (just what netfront calls), and the test
// playing netback by reading the tx requests and rx buffers and writing raw responses
// into the rings (offsets from the SRING_HEADER and NETIF_*_RESPONSE layout tables)
// and publishing rsp_prod itself. Both data-path modes (grant copy, persistent pool).
//
// Cases that must break the vif (pvio's rule, module comment of netfront/netfront.ts):
// an rx response with an impossible size — status over 4096 (4097, 5000, 32767) or
// offset + status past the page, in a first or a later slot —; an rx rsp_prod beyond
// the buffers posted (= beyond the ring: netfront keeps all 256 posted), far beyond
// (2^31) or moving back; a tx response whose id is out of range (256, 65535), or not
// in flight: a duplicate in one batch or in a later one; a tx rsp_prod beyond the ring,
// ahead of the requests produced within the ring, far beyond, or moving back; a NULL tx
// status (the answer to an extra-info slot) for a data slot with no extra in flight —
// that id would stay in flight for good, and after 256 of them every send would wait
// forever on a vif that is not broken (it did, before netfront counted its extras).
// Each time: a send waiting for ring space and a pending receive are released within
// a deadline (the send rejects with NetfrontBrokenError carrying the protocol error; the
// receive returns null or rejects with NetfrontBrokenError), every later send, trySend,
// receive and receiveBatch fails the same way, nothing more reaches the tx ring, the
// event handler never throws, and well-formed responses afterwards change nothing.
//
// Cases that must only drop one packet (counted in rxErrors; the vif goes on, the next
// frame is received intact), as Linux netfront does: negative rx statuses (ERROR,
// DROPPED, and undefined ones: -3, -32768) on a one-slot packet, or on the first, a
// middle or the last slot of a three-slot packet (its good slots must not be kept); an
// empty or a sub-14-byte packet; a chain of 30 slots (over XEN_NETIF_NR_SLOTS_MIN + 1:
// never a frame over 64 KiB); an rx buffer the backend still has mapped when it answers
// (its bytes are not trusted, its page not reused: XSA-396). Tx error statuses (ERROR,
// DROPPED, undefined ones) only count txErrors, and a tx page the backend still maps
// when it answers is never reused for a later frame.
import { describe, expect, it } from 'vitest';
import { NetfrontBrokenError, NetfrontQueue } from '../netfront/netfront.ts';
import { Netfront } from '../netfront/xenbus.ts';
import { FrontRing, SRING_HEADER, SRING_RING_OFFSET } from '../rings/ring.ts';
import {
  NETIF_RSP_DROPPED, NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETIF_RX_REQUEST, NETIF_RX_RESPONSE, NETIF_RX_RING_ENTRY_SIZE,
  NETIF_TX_REQUEST, NETIF_TX_RESPONSE, NETIF_TX_RING_ENTRY_SIZE, NETRXF_more_data, NETTXF_extra_info,
  XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_GSO_TYPE_TCPV4,
} from '../rings/netif.ts';
import type { EvtchnPort, GrantRef } from '../hypervisor/abi.ts';
import type { EventChannels } from '../event-channel/evtchn.ts';
import type { GrantTable } from '../grant-table/gnttab.ts';
import type { GuestMemory, GuestPage } from '../hypervisor/guest-memory.ts';
import type { Kernel } from '../hypervisor/kernel.ts';

const REQ_PROD_I = SRING_HEADER.fields.req_prod.offset >> 2;
const RSP_PROD_I = SRING_HEADER.fields.rsp_prod.offset >> 2;
const TX = NETIF_TX_REQUEST.fields;
const TXR = NETIF_TX_RESPONSE.fields;
const RXQ = NETIF_RX_REQUEST.fields;
const RXR = NETIF_RX_RESPONSE.fields;
const RING = 256;

/** The grant table netfront sees: grants are recorded; `held` refs are still mapped by the backend. */
class FakeGrants {
  next = 8;
  readonly pages = new Map<number, GuestPage>();
  readonly held = new Set<number>();
  ended = 0;
  constructor(private readonly mem: FakeMemory) {}
  grantAccess(_domid: number, mfn: number, _readonly: boolean): GrantRef {
    const ref = this.next++;
    this.pages.set(ref, this.mem.byMfn.get(mfn)!);
    return ref as GrantRef;
  }
  endAccess(ref: GrantRef): boolean {
    if (this.held.has(ref)) return false;
    this.pages.delete(ref);
    this.ended++;
    return true;
  }
}

/** The domain's pages: allocated fresh, freed pages recorded. */
class FakeMemory {
  nextMfn = 0x1000;
  readonly byMfn = new Map<number, GuestPage>();
  readonly freed = new Set<number>();
  allocPage(): GuestPage {
    const bytes = new Uint8Array(4096);
    const pg: GuestPage = { mfn: this.nextMfn++, bytes, view: new DataView(bytes.buffer) };
    this.byMfn.set(pg.mfn, pg);
    return pg;
  }
  allocPages(n: number): GuestPage[] {
    return Array.from({ length: n }, () => this.allocPage());
  }
  freePage(pg: GuestPage): void {
    this.freed.add(pg.mfn);
  }
}

/** A tx slot as the backend read it (copied out of the ring once). */
type SeenTx =
  | { kind: 'req'; idx: number; gref: number; offset: number; flags: number; id: number; size: number }
  | { kind: 'extra'; idx: number; type: number; flags: number };

/** A posted rx buffer: its ring index, id and gref. */
interface SeenRx {
  idx: number;
  id: number;
  gref: number;
}

/** The test's backend: reads the tx requests and rx buffers, writes raw responses. */
class HostileNetback {
  readonly txHdr: Int32Array;
  readonly rxHdr: Int32Array;
  readonly txDv: DataView;
  readonly rxDv: DataView;
  txReqCons = 0;
  txRspProd = 0;
  rxReqCons = 0;
  rxRspProd = 0;
  constructor(readonly txMem: Uint8Array, readonly rxMem: Uint8Array, readonly grants: FakeGrants) {
    this.txHdr = new Int32Array(txMem.buffer, 0, SRING_RING_OFFSET >> 2);
    this.rxHdr = new Int32Array(rxMem.buffer, 0, SRING_RING_OFFSET >> 2);
    this.txDv = new DataView(txMem.buffer);
    this.rxDv = new DataView(rxMem.buffer);
  }
  private txOff(idx: number): number {
    return SRING_RING_OFFSET + (idx & (RING - 1)) * NETIF_TX_RING_ENTRY_SIZE;
  }
  private rxOff(idx: number): number {
    return SRING_RING_OFFSET + (idx & (RING - 1)) * NETIF_RX_RING_ENTRY_SIZE;
  }

  /** Takes every published tx slot (each copied out once, then decoded; extras follow a first slot's extra_info). */
  takeTx(): SeenTx[] {
    const out: SeenTx[] = [];
    const prod = Atomics.load(this.txHdr, REQ_PROD_I) >>> 0;
    let extraNext = false;
    for (; this.txReqCons !== prod; this.txReqCons = (this.txReqCons + 1) >>> 0) {
      const o = this.txOff(this.txReqCons);
      const dv = new DataView(this.txMem.slice(o, o + NETIF_TX_RING_ENTRY_SIZE).buffer);
      if (extraNext) {
        const flags = dv.getUint8(1);
        out.push({ kind: 'extra', idx: this.txReqCons, type: dv.getUint8(0), flags });
        extraNext = (flags & XEN_NETIF_EXTRA_FLAG_MORE) !== 0;
        continue;
      }
      const s: SeenTx = {
        kind: 'req', idx: this.txReqCons, gref: dv.getUint32(TX.gref.offset, true), offset: dv.getUint16(TX.offset.offset, true),
        flags: dv.getUint16(TX.flags.offset, true), id: dv.getUint16(TX.id.offset, true), size: dv.getUint16(TX.size.offset, true),
      };
      out.push(s);
      if (s.flags & NETTXF_extra_info) extraNext = true;
    }
    return out;
  }

  /** The frame carried by the data slots of `slots` (one packet), read from the granted pages. */
  txFrame(slots: SeenTx[]): number[] {
    const data = slots.filter((s): s is Extract<SeenTx, { kind: 'req' }> => s.kind === 'req');
    const rest = data.slice(1).reduce((n, s) => n + s.size, 0);
    return data.flatMap((s, i) => [...this.grants.pages.get(s.gref)!.bytes.subarray(s.offset, s.offset + (i === 0 ? s.size - rest : s.size))]);
  }

  /** Writes one raw tx response at index `txRspProd` (not yet published). */
  txRespond(id: number, status: number): void {
    const o = this.txOff(this.txRspProd);
    this.txDv.setUint16(o + TXR.id.offset, id, true);
    this.txDv.setInt16(o + TXR.status.offset, status, true);
    this.txRspProd = (this.txRspProd + 1) >>> 0;
  }

  /** Answers every slot of `slots` in order: `status` for data slots, NULL for extras. */
  txAnswer(slots: SeenTx[], status = NETIF_RSP_OKAY): void {
    for (const s of slots) this.txRespond(s.kind === 'req' ? s.id : 0, s.kind === 'req' ? status : NETIF_RSP_NULL);
  }

  /** Publishes the tx rsp_prod (the responses written, or any value at all). */
  publishTx(prod = this.txRspProd): void {
    Atomics.store(this.txHdr, RSP_PROD_I, prod | 0);
  }

  /** Takes the next `n` posted rx buffers. */
  takeRx(n: number): SeenRx[] {
    const prod = Atomics.load(this.rxHdr, REQ_PROD_I) >>> 0;
    const out: SeenRx[] = [];
    for (; out.length < n && this.rxReqCons !== prod; this.rxReqCons = (this.rxReqCons + 1) >>> 0) {
      const o = this.rxOff(this.rxReqCons);
      out.push({ idx: this.rxReqCons, id: this.rxDv.getUint16(o + RXQ.id.offset, true), gref: this.rxDv.getUint32(o + RXQ.gref.offset, true) });
    }
    expect(out).toHaveLength(n);
    return out;
  }

  /**
   * Answers rx buffer `r` in its own slot (the next response index must be its index):
   * `bytes` written into its page at `offset`, then the raw response.
   */
  rxRespond(r: SeenRx, rsp: { offset?: number; flags?: number; status: number }, bytes?: ArrayLike<number>): void {
    expect(r.idx).toBe(this.rxRspProd);
    if (bytes) this.grants.pages.get(r.gref)!.bytes.set(bytes, rsp.offset ?? 0);
    const o = this.rxOff(this.rxRspProd);
    this.rxDv.setUint16(o + RXR.id.offset, r.id, true);
    this.rxDv.setUint16(o + RXR.offset.offset, rsp.offset ?? 0, true);
    this.rxDv.setUint16(o + RXR.flags.offset, rsp.flags ?? 0, true);
    this.rxDv.setInt16(o + RXR.status.offset, rsp.status, true);
    this.rxRspProd = (this.rxRspProd + 1) >>> 0;
  }

  /** Delivers `frame` as netback does: one buffer per 4096 bytes, more_data on all but the last. */
  rxDeliver(frame: number[]): void {
    const n = Math.max(1, Math.ceil(frame.length / 4096));
    this.takeRx(n).forEach((r, i) => {
      const part = frame.slice(i * 4096, (i + 1) * 4096);
      this.rxRespond(r, { flags: i < n - 1 ? NETRXF_more_data : 0, status: part.length }, part);
    });
  }

  /** Publishes the rx rsp_prod (the responses written, or any value at all). */
  publishRx(prod = this.rxRspProd): void {
    Atomics.store(this.rxHdr, RSP_PROD_I, prod | 0);
  }
}

/** One vif with one queue, in grant-copy or persistent mode, and its hostile backend. */
function setup(persistent: boolean) {
  const memory = new FakeMemory();
  const grants = new FakeGrants(memory);
  let notified = 0;
  const evtchn = { notify: () => void notified++ } as unknown as EventChannels;
  const txMem = new Uint8Array(new SharedArrayBuffer(4096));
  const rxMem = new Uint8Array(new SharedArrayBuffer(4096));
  const txRing = FrontRing.init(txMem, NETIF_TX_RING_ENTRY_SIZE);
  const rxRing = FrontRing.init(rxMem, NETIF_RX_RING_ENTRY_SIZE);
  const q = new NetfrontQueue({
    backendDomid: 0, txRing, rxRing, txPort: 3 as EvtchnPort, rxPort: 4 as EvtchnPort, persistent, sg: true, gso: true, maxFrame: 65535,
  }, evtchn, grants as unknown as GrantTable, memory as unknown as GuestMemory);
  // Netfront only needs the kernel to close; these tests never close.
  const nic = new Netfront('eth0', '00:16:3e:00:00:01', 1500, '/local/domain/1/device/vif/0', '/local/domain/0/backend/vif/1/0', [q],
    { queues: 1, split: true, sg: true, gso: true, persistent, csumOffload: true }, {} as Kernel);
  const be = new HostileNetback(txMem, rxMem, grants);
  /** Delivers the event; the handler must never throw into the domain. */
  const event = () => expect(() => q.onEvent()).not.toThrow();
  return { q, nic, be, grants, memory, event, notified: () => notified };
}
type Vif = ReturnType<typeof setup>;

/** An Ethernet frame of `len` bytes (ethertype 0x88b5), payload `seed`-derived. */
function frame(len: number, seed: number): number[] {
  const f = [0x00, 0x16, 0x3e, 0, 0, 1, 0x00, 0x16, 0x3e, 0, 0, 2, 0x88, 0xb5];
  for (let i = f.length; i < len; i++) f.push((seed * 31 + i) & 0xff);
  return f.slice(0, len);
}

/** Settles `p` within `ms` (a hang fails the test instead of the suite's timeout). */
async function settled<T>(p: Promise<T>, ms = 1000): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, rej) => {
    timer = setTimeout(() => rej(new Error(`still pending after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p.then((value) => ({ ok: true as const, value }), (error: unknown) => ({ ok: false as const, error })), hang]);
  } finally {
    clearTimeout(timer);
  }
}

/** Expects `p` to reject promptly with a NetfrontBrokenError whose message matches `msg`. */
async function rejectsBroken(p: Promise<unknown>, msg: RegExp): Promise<void> {
  const r = await settled(p);
  expect(r.ok).toBe(false);
  const e = (r as { error: unknown }).error;
  expect(e).toBeInstanceOf(NetfrontBrokenError);
  expect((e as NetfrontBrokenError).code).toBe('PVIO_ERR_NETFRONT');
  expect((e as Error).message).toMatch(msg);
}

/** Fills the tx ring with one-slot frames (each answered by nobody yet). @returns how many. */
function fillTx(d: Vif): number {
  let n = 0;
  while (d.nic.trySend(Uint8Array.from(frame(60, n)))) n++;
  return n;
}

/**
 * Starts what must not hang: a send waiting for ring space (the tx ring is filled
 * first) and a receive with a long timeout.
 */
function pendingOps(d: Vif): { send: Promise<void>; receive: Promise<Uint8Array | null> } {
  expect(fillTx(d)).toBe(RING);
  return { send: d.nic.send(Uint8Array.from(frame(100, 999))), receive: d.nic.receive(30_000) };
}

/**
 * After a break: the pending send rejects and the pending receive returns null or
 * rejects, within 1 s; every later operation fails with NetfrontBrokenError; nothing
 * more reaches the tx ring; and well-formed responses change nothing (nor throw).
 */
async function expectBroken(d: Vif, pending: { send?: Promise<void>; receive: Promise<Uint8Array | null> }, msg: RegExp): Promise<void> {
  expect(d.q.isBroken).toBe(true);
  expect(d.nic.isBroken).toBe(true);
  if (pending.send) await rejectsBroken(pending.send, msg);
  const r = await settled(pending.receive);
  if (r.ok) expect(r.value).toBeNull();
  else expect((r as { error: unknown }).error).toBeInstanceOf(NetfrontBrokenError);
  const produced = Atomics.load(d.be.txHdr, REQ_PROD_I);
  await rejectsBroken(d.nic.send(Uint8Array.from(frame(60, 1))), msg);
  expect(() => d.nic.trySend(Uint8Array.from(frame(60, 2)))).toThrow(NetfrontBrokenError);
  await rejectsBroken(d.nic.receive(30_000), /broken/);
  await rejectsBroken(d.nic.receiveBatch(8, 30_000), /broken/);
  expect(Atomics.load(d.be.txHdr, REQ_PROD_I)).toBe(produced);
  // Well-formed responses now (a tx answer, a frame) change nothing.
  const before = { ...d.q.counters };
  d.be.txRespond(0, NETIF_RSP_OKAY);
  d.be.publishTx();
  d.event();
  expect(d.q.counters).toEqual(before);
  expect(d.nic.tryReceive()).toBeNull();
}

describe.each([{ mode: 'grant copy', persistent: false }, { mode: 'persistent', persistent: true }])('netfront against a hostile backend, $mode', ({ persistent }) => {
  it('the control: frames go out and come in whole (one slot, several slots, a GSO extra), grants are ended', async () => {
    const d = setup(persistent);
    const out = [frame(60, 1), frame(9000, 2), frame(1514, 3)];
    await d.nic.send(Uint8Array.from(out[0]));
    await d.nic.send(Uint8Array.from(out[1]));
    await d.nic.send(Uint8Array.from(out[2]), { gso: { size: 1400, type: XEN_NETIF_GSO_TYPE_TCPV4 } });
    const slots = d.be.takeTx();
    expect(slots.map((s) => s.kind)).toEqual(['req', 'req', 'req', 'req', 'req', 'extra']);
    expect(slots[5]).toMatchObject({ kind: 'extra', type: XEN_NETIF_EXTRA_TYPE_GSO });
    expect(d.be.txFrame(slots.slice(0, 1))).toEqual(out[0]);
    expect(d.be.txFrame(slots.slice(1, 4))).toEqual(out[1]);
    expect(d.be.txFrame(slots.slice(4))).toEqual(out[2]);
    d.be.txAnswer(slots);
    d.be.publishTx();
    const inbound = [frame(100, 4), frame(9000, 5), frame(14, 6)];
    for (const f of inbound) d.be.rxDeliver(f);
    d.be.publishRx();
    d.event();
    expect(d.q.isBroken).toBe(false);
    expect((await d.nic.receiveBatch(8, 1000)).map((f) => [...f])).toEqual(inbound);
    expect(d.q.counters).toMatchObject({ txPackets: 3, txErrors: 0, rxPackets: 3, rxErrors: 0, grantsDeferred: 0 });
    // Copy mode: every tx grant ended after its response; only the 256 posted rx buffers stay granted.
    if (!persistent) expect(d.grants.pages.size).toBe(RING);
  });

  // Each act writes raw responses and publishes them; the ring is full of sends and a receive is pending.
  const breakers: Array<{ name: string; msg: RegExp; act: (d: Vif) => void }> = [
    ...[4097, 5000, 32767].map((status) => ({
      name: `an rx response of ${status} bytes (more than a page)`, msg: new RegExp(`rx response of ${status} bytes at offset 0 runs past its page`),
      act: (d: Vif) => {
        d.be.rxRespond(d.be.takeRx(1)[0], { status });
        d.be.publishRx();
      },
    })),
    {
      name: 'an rx response at offset 4000 of 200 bytes (past its page)', msg: /rx response of 200 bytes at offset 4000 runs past its page/,
      act: (d) => {
        d.be.rxRespond(d.be.takeRx(1)[0], { offset: 4000, status: 200 });
        d.be.publishRx();
      },
    },
    {
      name: 'an rx response past its page in the second slot of a packet', msg: /rx response of 4096 bytes at offset 1 runs past its page/,
      act: (d) => {
        const [r0, r1] = d.be.takeRx(2);
        d.be.rxRespond(r0, { flags: NETRXF_more_data, status: 4096 });
        d.be.rxRespond(r1, { offset: 1, status: 4096 });
        d.be.publishRx();
      },
    },
    {
      name: 'an rx rsp_prod beyond the buffers posted (and the ring)', msg: /impossible rsp_prod 257 .*RING_RESPONSE_PROD_OVERFLOW/,
      act: (d) => {
        d.be.rxDeliver(frame(60, 1));
        d.be.publishRx(RING + 1);
      },
    },
    { name: 'an rx rsp_prod far beyond (2^31)', msg: /impossible rsp_prod 2147483648/, act: (d) => d.be.publishRx(0x8000_0000) },
    {
      name: 'a tx response id out of range (256)', msg: /tx response for id 256, not in flight/,
      act: (d) => {
        d.be.txRespond(256, NETIF_RSP_OKAY);
        d.be.publishTx();
      },
    },
    {
      name: 'a tx response id out of range (65535)', msg: /tx response for id 65535, not in flight/,
      act: (d) => {
        d.be.txRespond(0xffff, NETIF_RSP_ERROR);
        d.be.publishTx();
      },
    },
    {
      name: 'a duplicate tx id in one batch', msg: /tx response for id 5, not in flight/,
      act: (d) => {
        d.be.txRespond(5, NETIF_RSP_OKAY);
        d.be.txRespond(5, NETIF_RSP_OKAY);
        d.be.publishTx();
      },
    },
    {
      name: 'a tx rsp_prod beyond the requests produced (and the ring)', msg: /impossible rsp_prod 257 .*RING_RESPONSE_PROD_OVERFLOW/,
      act: (d) => {
        d.be.txRespond(0, NETIF_RSP_OKAY);
        d.be.publishTx(RING + 1);
      },
    },
    { name: 'a tx rsp_prod far beyond (2^31)', msg: /impossible rsp_prod 2147483648/, act: (d) => d.be.publishTx(0x8000_0000) },
  ];
  for (const b of breakers) {
    it(`${b.name} breaks the vif: a waiting send and a pending receive are released, later calls fail`, async () => {
      const d = setup(persistent);
      const pending = pendingOps(d);
      expect(d.be.takeTx()).toHaveLength(RING);
      b.act(d);
      d.event();
      await expectBroken(d, pending, b.msg);
    });
  }

  // Without a full ring (no send can be waiting): the id must not be in flight again, and rsp_prod within the ring.
  it('a tx id answered again in a later batch (completed, not reused) breaks the vif', async () => {
    const d = setup(persistent);
    await d.nic.send(Uint8Array.from(frame(60, 1)));
    await d.nic.send(Uint8Array.from(frame(60, 2)));
    const s = d.be.takeTx() as Array<Extract<SeenTx, { kind: 'req' }>>;
    expect(s.map((x) => x.id)).toEqual([0, 1]);
    d.be.txAnswer([s[1]]);
    d.be.publishTx();
    d.event();
    expect(d.q.isBroken).toBe(false);
    const pending = { receive: d.nic.receive(30_000) };
    d.be.txRespond(1, NETIF_RSP_OKAY);
    d.be.publishTx();
    d.event();
    await expectBroken(d, pending, /tx response for id 1, not in flight/);
  });

  it('a tx rsp_prod ahead of the requests produced, within the ring, breaks the vif', async () => {
    const d = setup(persistent);
    await d.nic.send(Uint8Array.from(frame(60, 1)));
    await d.nic.send(Uint8Array.from(frame(60, 2)));
    d.be.txAnswer(d.be.takeTx());
    const pending = { receive: d.nic.receive(30_000) };
    d.be.publishTx(4);
    d.event();
    await expectBroken(d, pending, /impossible rsp_prod 4 .*RING_RESPONSE_PROD_OVERFLOW/);
  });

  for (const which of ['tx', 'rx'] as const) {
    it(`${which} rsp_prod moving back breaks the vif`, async () => {
      const d = setup(persistent);
      await d.nic.send(Uint8Array.from(frame(60, 1)));
      d.be.txAnswer(d.be.takeTx());
      d.be.publishTx();
      d.be.rxDeliver(frame(60, 2));
      d.be.publishRx();
      d.event();
      expect((await d.nic.receive(1000))?.length).toBe(60);
      const pending = pendingOps(d);
      if (which === 'tx') d.be.publishTx(0);
      else d.be.publishRx(0);
      d.event();
      await expectBroken(d, pending, /impossible rsp_prod 0/);
    });
  }

  it('negative rx statuses (defined or not) drop their packet only; the next frame comes through whole', async () => {
    const d = setup(persistent);
    for (const status of [NETIF_RSP_ERROR, NETIF_RSP_DROPPED, -3, -32768]) d.be.rxRespond(d.be.takeRx(1)[0], { status });
    // A packet of three slots whose first, then middle, then last slot is an error.
    for (let bad = 0; bad < 3; bad++) {
      d.be.takeRx(3).forEach((r, i) => d.be.rxRespond(r, { flags: i < 2 ? NETRXF_more_data : 0, status: i === bad ? NETIF_RSP_ERROR : 4096 }, new Array(4096).fill(9)));
    }
    const good = frame(5000, 7);
    d.be.rxDeliver(good);
    d.be.publishRx();
    d.event();
    expect(d.q.isBroken).toBe(false);
    expect(d.q.counters.rxErrors).toBe(4 + 3);
    expect((await d.nic.receiveBatch(8, 1000)).map((f) => [...f])).toEqual([good]);
    // The vif still works both ways.
    await d.nic.send(Uint8Array.from(frame(60, 8)));
    const s = d.be.takeTx();
    expect(d.be.txFrame(s)).toEqual(frame(60, 8));
  });

  it('empty and sub-14-byte packets, and a chain of 30 slots, are dropped; nothing over 64 KiB is ever delivered', async () => {
    const d = setup(persistent);
    d.be.rxRespond(d.be.takeRx(1)[0], { status: 0 });
    d.be.rxRespond(d.be.takeRx(1)[0], { status: 13 }, frame(13, 1));
    d.be.takeRx(30).forEach((r, i) => d.be.rxRespond(r, { flags: i < 29 ? NETRXF_more_data : 0, status: 4096 }, new Array(4096).fill(i)));
    const good = frame(200, 3);
    d.be.rxDeliver(good);
    d.be.publishRx();
    d.event();
    expect(d.q.isBroken).toBe(false);
    expect(d.q.counters.rxErrors).toBe(3);
    expect((await d.nic.receiveBatch(8, 1000)).map((f) => [...f])).toEqual([good]);
  });

  it('tx error statuses (ERROR, DROPPED, undefined ones) only count errors; the vif goes on', async () => {
    const d = setup(persistent);
    const statuses = [NETIF_RSP_ERROR, NETIF_RSP_DROPPED, 7, -7, -32768];
    for (let i = 0; i < statuses.length; i++) await d.nic.send(Uint8Array.from(frame(60, i)));
    const s = d.be.takeTx() as Array<Extract<SeenTx, { kind: 'req' }>>;
    s.forEach((x, i) => d.be.txRespond(x.id, statuses[i]));
    d.be.publishTx();
    d.event();
    expect(d.q.isBroken).toBe(false);
    expect(d.q.counters.txErrors).toBe(statuses.length);
    await d.nic.send(Uint8Array.from(frame(60, 9)));
    const [t] = d.be.takeTx();
    expect(d.be.txFrame([t])).toEqual(frame(60, 9));
  });

  it('a NULL tx status for a data slot (no extra-info slot in flight) breaks the vif: its id would never come back', async () => {
    const d = setup(persistent);
    // A GSO frame's extra is answered NULL: fine.
    await d.nic.send(Uint8Array.from(frame(1514, 1)), { gso: { size: 1400, type: XEN_NETIF_GSO_TYPE_TCPV4 } });
    d.be.txAnswer(d.be.takeTx());
    d.be.publishTx();
    d.event();
    expect(d.q.isBroken).toBe(false);
    const pending = pendingOps(d);
    const [first] = d.be.takeTx() as Array<Extract<SeenTx, { kind: 'req' }>>;
    d.be.txRespond(first.id, NETIF_RSP_NULL);
    d.be.publishTx();
    d.event();
    await expectBroken(d, pending, /NULL tx response with no extra-info slot in flight/);
  });
});

describe('netfront against a hostile backend, grant copy: pages the backend still maps (XSA-396)', () => {
  it('an rx buffer still mapped when answered: its bytes are not delivered and its page is not reused', async () => {
    const d = setup(false);
    const [r] = d.be.takeRx(1);
    d.grants.held.add(r.gref);
    const mfn = d.grants.pages.get(r.gref)!.mfn;
    d.be.rxRespond(r, { status: 100 }, frame(100, 1));
    const good = frame(100, 2);
    d.be.rxDeliver(good);
    d.be.publishRx();
    d.event();
    expect(d.q.isBroken).toBe(false);
    expect(d.q.counters).toMatchObject({ rxErrors: 1, grantsDeferred: 1 });
    expect(d.memory.freed.has(mfn)).toBe(false);
    expect((await d.nic.receiveBatch(8, 1000)).map((f) => [...f])).toEqual([good]);
  });

  it('a tx page still mapped when answered is never reused for a later frame', async () => {
    const d = setup(false);
    await d.nic.send(Uint8Array.from(frame(60, 1)));
    const [s] = d.be.takeTx() as Array<Extract<SeenTx, { kind: 'req' }>>;
    const page = d.grants.pages.get(s.gref)!;
    d.grants.held.add(s.gref);
    d.be.txAnswer([s]);
    d.be.publishTx();
    d.event();
    expect(d.q.counters.grantsDeferred).toBe(1);
    for (let i = 0; i < 8; i++) {
      await d.nic.send(Uint8Array.from(frame(60, 10 + i)));
      const [t] = d.be.takeTx() as Array<Extract<SeenTx, { kind: 'req' }>>;
      expect(d.grants.pages.get(t.gref)).not.toBe(page);
      d.be.txAnswer([t]);
      d.be.publishTx();
      d.event();
    }
    expect(page.bytes.subarray(0, 60)).toEqual(Uint8Array.from(frame(60, 1)));
  });
});
