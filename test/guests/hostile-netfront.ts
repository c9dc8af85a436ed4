/**
 * A hostile netfront for the adversarial suite (test/net-hostile.test.ts), driven by
 * the test through `GuestHandle.call(op, args)` like test/guests/hostile-blkfront.ts.
 *
 * It does the io/netif.h frontend handshake by hand, as netfront/xenbus.ts does it —
 * wait for the backend's InitWait; allocate a tx and an rx ring page and initialise
 * both (`FrontRing.init`: only the frontend initialises), grant both to the backend,
 * allocate an unbound event channel (one, or a tx and an rx one); write in one
 * transaction `tx-ring-ref`, `rx-ring-ref`, `event-channel` (or `event-channel-tx` /
 * `-rx`), `request-rx-copy=1`, `feature-rx-notify=1`, `feature-sg`,
 * `feature-persistent` and `state=Connected` (Linux netfront goes Connected once its
 * keys are written; netback ignores Initialised), then wait for the backend's
 * Connected — and then bypasses every frontend check: it writes raw bytes into the
 * ring slots (offsets from the netif layout tables, no codec: any field may hold any
 * value), publishes `req_prod` itself with `Atomics` on the shared header (offsets
 * from `SRING_HEADER`), and reads the responses raw.
 *
 * Besides the rings it keeps named pages (granted read-write, read-only, to another
 * domain, or not at all), filled with a known byte and optionally written with frame
 * bytes; `touched` reports a page whose bytes differ from what this guest last wrote,
 * so the test can tell whether the backend wrote into a page it should not have.
 */
import { createHash } from 'node:crypto';
import type { Kernel } from '../../hypervisor/kernel.ts';
import type { GuestPage } from '../../hypervisor/guest-memory.ts';
import type { EvtchnPort, GrantRef } from '../../hypervisor/abi.ts';
import { FrontRing, SRING_HEADER, SRING_RING_OFFSET } from '../../rings/ring.ts';
import {
  NETIF_EXTRA_INFO, NETIF_EXTRA_INFO_GSO, NETIF_RSP_NULL, NETIF_RX_REQUEST, NETIF_RX_RESPONSE, NETIF_RX_RING_ENTRY_SIZE,
  NETIF_TX_REQUEST, NETIF_TX_RESPONSE, NETIF_TX_RING_ENTRY_SIZE,
} from '../../rings/netif.ts';
import { XenbusState, waitForState } from '../../xenstore/xenbus.ts';
import { serveCalls } from '../../toolstack/guest-calls.ts';

/** A data slot (`netif_tx_request`) as raw field values; nothing is checked. */
export interface RawTxRequest {
  kind?: 'req';
  /** Any u32. */
  gref: number;
  /** Any u16 (default 0). */
  offset?: number;
  /** Any u16, `NETTXF_*` (default 0). */
  flags?: number;
  /** Any u16. */
  id: number;
  /** Any u16: the whole packet in a first slot, the fragment in a follow-on slot. */
  size: number;
}

/** An extra-info slot (`netif_extra_info`), raw. */
export interface RawExtra {
  kind: 'extra';
  /** Any u8, `XEN_NETIF_EXTRA_TYPE_*`. */
  type: number;
  /** Any u8, `XEN_NETIF_EXTRA_FLAG_*` (default 0). */
  flags?: number;
  /** The 6 union bytes at offset 2 (default zeros); ignored when `gso` is given. */
  u?: number[];
  /** Fills the union as `u.gso`: size (MSS) u16, type u8, features u16. */
  gso?: { size: number; type: number; features?: number };
}

/** One tx ring slot as written: a data slot or an extra-info slot. */
export type RawSlot = RawTxRequest | RawExtra;

/** A tx response read raw, with the ring index it was read at. */
export interface RawTxResponse {
  idx: number;
  id: number;
  status: number;
}

/** An rx request as written: any u16 id, any u32 gref. */
export interface RawRxRequest {
  id: number;
  gref: number;
}

/** An rx response read raw, with the ring index it was read at. */
export interface RawRxResponse {
  idx: number;
  id: number;
  offset: number;
  flags: number;
  status: number;
}

/** A packet template of the flood: its slots (ids replaced) and the status its data slots must get. */
export interface FloodPacket {
  slots: RawSlot[];
  expect: number;
}

type Args = Record<string, unknown> & { [k: string]: any };

const REQ_PROD_I = SRING_HEADER.fields.req_prod.offset >> 2;
const REQ_EVENT_I = SRING_HEADER.fields.req_event.offset >> 2;
const RSP_PROD_I = SRING_HEADER.fields.rsp_prod.offset >> 2;
const RSP_EVENT_I = SRING_HEADER.fields.rsp_event.offset >> 2;
const TX = NETIF_TX_REQUEST.fields;
const TXR = NETIF_TX_RESPONSE.fields;
const RXQ = NETIF_RX_REQUEST.fields;
const RXR = NETIF_RX_RESPONSE.fields;
const EXTRA = NETIF_EXTRA_INFO.fields;
const GSO = NETIF_EXTRA_INFO_GSO.fields;
/** 32-bit words of a tx slot a response overwrites (id u16 + status i16). */
const TX_RSP_WORDS = NETIF_TX_RESPONSE.size >> 2;

/** One shared ring as seen from this end: the header words, the slots, and our private indices. */
interface Ring {
  hdr: Int32Array;
  mem: Uint8Array;
  size: number;
  entry: number;
  reqProdPvt: number;
  rspCons: number;
}

/** One hand-connected vif. */
interface Vif {
  devid: number;
  mac: string;
  backendDir: string;
  backendId: number;
  tx: Ring;
  rx: Ring;
  txPort: EvtchnPort;
  rxPort: EvtchnPort;
  events: number;
  wake: (() => void) | null;
}

/** A named page and the bytes it must hold as far as this guest knows. */
interface NamedPage {
  page: GuestPage;
  gref: number | null;
  expected: Uint8Array;
}

/** Encodes one slot into a private 12-byte entry (zeroed first), raw. */
function encodeSlot(s: RawSlot, into: Uint8Array = new Uint8Array(NETIF_TX_RING_ENTRY_SIZE)): Uint8Array {
  into.fill(0);
  const dv = new DataView(into.buffer, into.byteOffset, into.byteLength);
  if (s.kind === 'extra') {
    dv.setUint8(EXTRA.type.offset, s.type & 0xff);
    dv.setUint8(EXTRA.flags.offset, (s.flags ?? 0) & 0xff);
    if (s.gso) {
      dv.setUint16(GSO.gso_size.offset, s.gso.size & 0xffff, true);
      dv.setUint8(GSO.gso_type.offset, s.gso.type & 0xff);
      dv.setUint16(GSO.gso_features.offset, (s.gso.features ?? 0) & 0xffff, true);
    } else {
      (s.u ?? []).slice(0, EXTRA.u.size).forEach((b, i) => dv.setUint8(EXTRA.u.offset + i, b & 0xff));
    }
  } else {
    dv.setUint32(TX.gref.offset, s.gref >>> 0, true);
    dv.setUint16(TX.offset.offset, (s.offset ?? 0) & 0xffff, true);
    dv.setUint16(TX.flags.offset, (s.flags ?? 0) & 0xffff, true);
    dv.setUint16(TX.id.offset, s.id & 0xffff, true);
    dv.setUint16(TX.size.offset, s.size & 0xffff, true);
  }
  return into;
}

/** The guest's main: serves the operations below until `exit`. */
export default function main(k: Kernel): Promise<unknown> {
  const vifs = new Map<number, Vif>();
  const pages = new Map<string, NamedPage>();
  const ctl = k.control!;
  let finish!: (v: unknown) => void;
  const done = new Promise<unknown>((res) => (finish = res));

  const vif = (devid: number): Vif => {
    const v = vifs.get(devid);
    if (!v) throw new Error(`vif ${devid} is not connected`);
    return v;
  };
  const named = (name: string): NamedPage => {
    const p = pages.get(name);
    if (!p) throw new Error(`no page ${name}`);
    return p;
  };
  const slot = (r: Ring, idx: number): Uint8Array => {
    const off = SRING_RING_OFFSET + (idx & (r.size - 1)) * r.entry;
    return r.mem.subarray(off, off + r.entry);
  };
  const rspProd = (r: Ring): number => Atomics.load(r.hdr, RSP_PROD_I) >>> 0;
  const ready = (r: Ring): number => (rspProd(r) - r.rspCons) >>> 0;
  const notify = (v: Vif, r: Ring) => k.evtchn.notify(r === v.tx ? v.txPort : v.rxPort);

  /** Publishes `prod` (default: everything written) as req_prod, and notifies unless told not to. */
  const publish = (v: Vif, r: Ring, prod?: number, doNotify = true): number => {
    const p = prod === undefined ? r.reqProdPvt : prod >>> 0;
    // The slots written before must be visible before req_prod moves: Atomics.store releases them.
    Atomics.store(r.hdr, REQ_PROD_I, p | 0);
    if (doNotify) notify(v, r);
    return p;
  };
  /** Writes tx slots at reqProdPvt (not published). */
  const writeTx = (v: Vif, slots: RawSlot[]): void => {
    for (const s of slots) {
      encodeSlot(s, slot(v.tx, v.tx.reqProdPvt));
      v.tx.reqProdPvt = (v.tx.reqProdPvt + 1) >>> 0;
    }
  };
  /** Writes rx requests at reqProdPvt (not published). */
  const writeRx = (v: Vif, reqs: RawRxRequest[]): void => {
    for (const q of reqs) {
      const s = slot(v.rx, v.rx.reqProdPvt);
      s.fill(0);
      const dv = new DataView(s.buffer, s.byteOffset, s.byteLength);
      dv.setUint16(RXQ.id.offset, q.id & 0xffff, true);
      dv.setUint32(RXQ.gref.offset, q.gref >>> 0, true);
      v.rx.reqProdPvt = (v.rx.reqProdPvt + 1) >>> 0;
    }
  };
  /** Reads the tx response at rspCons raw and advances rspCons. */
  const consumeTx = (v: Vif): RawTxResponse => {
    const idx = v.tx.rspCons;
    const s = slot(v.tx, idx);
    const dv = new DataView(s.buffer, s.byteOffset, s.byteLength);
    v.tx.rspCons = (idx + 1) >>> 0;
    return { idx, id: dv.getUint16(TXR.id.offset, true), status: dv.getInt16(TXR.status.offset, true) };
  };
  /** Reads the rx response at rspCons raw and advances rspCons. */
  const consumeRx = (v: Vif): RawRxResponse => {
    const idx = v.rx.rspCons;
    const s = slot(v.rx, idx);
    const dv = new DataView(s.buffer, s.byteOffset, s.byteLength);
    v.rx.rspCons = (idx + 1) >>> 0;
    return {
      idx, id: dv.getUint16(RXR.id.offset, true), offset: dv.getUint16(RXR.offset.offset, true),
      flags: dv.getUint16(RXR.flags.offset, true), status: dv.getInt16(RXR.status.offset, true),
    };
  };

  /** Waits until `n` responses are ready on `r` or the deadline passes; event-driven, with a 5 ms poll as backstop. */
  const waitReady = async (v: Vif, r: Ring, n: number, deadline: number): Promise<boolean> => {
    for (;;) {
      if (ready(r) >= n) return true;
      // Ask to be notified at the next response, then look again (RING_FINAL_CHECK_FOR_RESPONSES).
      Atomics.store(r.hdr, RSP_EVENT_I, (r.rspCons + 1) | 0);
      if (ready(r) >= n) return true;
      if (performance.now() > deadline) return false;
      await new Promise<void>((res) => {
        const t = setTimeout(() => { v.wake = null; res(); }, 5);
        v.wake = () => { clearTimeout(t); v.wake = null; res(); };
      });
    }
  };

  const ringIndices = (r: Ring) => ({
    reqProd: Atomics.load(r.hdr, REQ_PROD_I) >>> 0, reqEvent: Atomics.load(r.hdr, REQ_EVENT_I) >>> 0,
    rspProd: rspProd(r), rspEvent: Atomics.load(r.hdr, RSP_EVENT_I) >>> 0, reqProdPvt: r.reqProdPvt, rspCons: r.rspCons, size: r.size,
  });

  const ops: Record<string, (a: Args) => unknown> = {
    info: () => ({ domid: k.domid }),

    /**
     * The frontend handshake by hand (see the file comment). `persistent` writes
     * feature-persistent=1, `split` uses a tx and an rx event channel, `sg` (default
     * true) writes feature-sg.
     */
    connect: async (a) => {
      const devid = a.devid as number;
      const timeoutMs = (a.timeoutMs as number) ?? 10_000;
      const xb = k.xenbus;
      const dir = `/local/domain/${k.domid}/device/vif/${devid}`;
      const backendDir = await xb.read(`${dir}/backend`);
      const backendId = Number(await xb.read(`${dir}/backend-id`));
      const mac = await xb.read(`${dir}/mac`);
      await waitForState(xb, backendDir, (s) => s >= XenbusState.InitWait, { timeoutMs });
      const ring = (entry: number): { r: Ring; ref: GrantRef } => {
        const page = k.memory.allocPage();
        const mem = page.bytes.subarray(0, 4096);
        const size = FrontRing.init(mem, entry).size; // only the frontend initialises the shared ring
        return {
          r: { hdr: new Int32Array(mem.buffer, mem.byteOffset, SRING_RING_OFFSET >> 2), mem, size, entry, reqProdPvt: 0, rspCons: 0 },
          ref: k.gnttab.grantAccess(backendId, page.mfn, false),
        };
      };
      const tx = ring(NETIF_TX_RING_ENTRY_SIZE);
      const rx = ring(NETIF_RX_RING_ENTRY_SIZE);
      const txPort = k.evtchn.allocUnbound(backendId);
      const rxPort = a.split ? k.evtchn.allocUnbound(backendId) : txPort;
      const v: Vif = { devid, mac, backendDir, backendId, tx: tx.r, rx: rx.r, txPort, rxPort, events: 0, wake: null };
      const onEvent = () => {
        v.events++;
        v.wake?.();
      };
      k.evtchn.on(txPort, onEvent);
      if (rxPort !== txPort) k.evtchn.on(rxPort, onEvent);
      await xb.transaction(async (t) => {
        await t.write(`${dir}/tx-ring-ref`, String(tx.ref));
        await t.write(`${dir}/rx-ring-ref`, String(rx.ref));
        if (a.split) {
          await t.write(`${dir}/event-channel-tx`, String(txPort));
          await t.write(`${dir}/event-channel-rx`, String(rxPort));
        } else {
          await t.write(`${dir}/event-channel`, String(txPort));
        }
        await t.write(`${dir}/request-rx-copy`, '1');
        await t.write(`${dir}/feature-rx-notify`, '1');
        await t.write(`${dir}/feature-sg`, a.sg === false ? '0' : '1');
        await t.write(`${dir}/feature-persistent`, a.persistent ? '1' : '0');
        await t.write(`${dir}/state`, String(XenbusState.Connected));
      });
      const st = await waitForState(xb, backendDir, (s) => s === XenbusState.Connected || s >= XenbusState.Closing, { timeoutMs });
      if (st !== XenbusState.Connected) throw new Error(`backend went ${XenbusState[st]}`);
      vifs.set(devid, v);
      const key = async (kname: string) => (await xb.readOptional(`${backendDir}/${kname}`)) ?? null;
      return {
        mac, txSize: v.tx.size, rxSize: v.rx.size, txRef: tx.ref, rxRef: rx.ref,
        feature: { persistent: (await key('feature-persistent')) === '1', sg: (await key('feature-sg')) === '1', rxCopy: (await key('feature-rx-copy')) === '1' },
      };
    },

    /**
     * A page filled with `fill`: granted to the backend read-write (`rw`) or read-only
     * (`ro`), to domain `domid` (`other`), or not granted at all (`none`).
     */
    page: (a) => {
      const page = k.memory.allocPage();
      page.bytes.fill(a.fill as number);
      let gref: number | null = null;
      // Every backend here runs in dom0.
      if (a.grant === 'rw' || a.grant === 'ro') gref = k.gnttab.grantAccess(0, page.mfn, a.grant === 'ro');
      else if (a.grant === 'other') gref = k.gnttab.grantAccess(a.domid as number, page.mfn, false);
      pages.set(a.name as string, { page, gref, expected: page.bytes.slice(0, 4096) });
      return { gref, mfn: page.mfn };
    },
    /** Writes `bytes` into a page at `offset` (and takes them as what the page must hold). */
    write: (a) => {
      const p = named(a.name);
      const b = Uint8Array.from(a.bytes as number[]);
      p.page.bytes.set(b, a.offset ?? 0);
      p.expected.set(b, a.offset ?? 0);
    },
    /** Revokes the grant of a page (as a frontend does after a response). @returns whether it could (false: still mapped). */
    endAccess: (a) => k.gnttab.endAccess(named(a.name).gref as GrantRef),
    /** Fills a page with `fill` again (after the backend wrote a frame into it), and takes that as its content. */
    refill: (a) => {
      const p = named(a.name);
      p.page.bytes.fill(a.fill as number, 0, 4096);
      p.expected.fill(a.fill as number);
    },
    /** Bytes [from, to) of a page. */
    pageBytes: (a) => [...named(a.name).page.bytes.subarray(a.from ?? 0, a.to ?? 4096)],
    /** sha256 of bytes [from, to) of a page. */
    pageSha: (a) => createHash('sha256').update(named(a.name).page.bytes.subarray(a.from ?? 0, a.to ?? 4096)).digest('hex'),
    /** The names among `names` whose page no longer holds what this guest last put there. */
    touched: (a) => (a.names as string[]).filter((n) => {
      const p = named(n);
      const b = p.page.bytes;
      for (let i = 0; i < 4096; i++) if (b[i] !== p.expected[i]) return true;
      return false;
    }),

    /**
     * Writes `slots` into the tx ring, publishes them, and waits (up to `timeoutMs`)
     * for as many responses (one per slot, extras included); then waits `settleMs`
     * more to catch any extra response.
     */
    tx: async (a) => {
      const v = vif(a.devid);
      const slots = a.slots as RawSlot[];
      writeTx(v, slots);
      publish(v, v.tx);
      const ok = await waitReady(v, v.tx, slots.length, performance.now() + ((a.timeoutMs as number) ?? 5000));
      const n = Math.min(ready(v.tx), slots.length);
      const responses: RawTxResponse[] = [];
      for (let i = 0; i < n; i++) responses.push(consumeTx(v));
      await new Promise((r) => setTimeout(r, (a.settleMs as number) ?? 20));
      return { responses, timedOut: !ok, extra: ready(v.tx) };
    },
    /** Writes `slots` and publishes `reqProd` (default: just past them); no waiting. */
    txSubmit: (a) => {
      const v = vif(a.devid);
      writeTx(v, (a.slots as RawSlot[]) ?? []);
      return publish(v, v.tx, a.reqProd as number | undefined, a.notify !== false);
    },
    /** Waits up to `timeoutMs` for `n` tx responses and consumes those that came (at most `n`). */
    txPoll: async (a) => {
      const v = vif(a.devid);
      const ok = await waitReady(v, v.tx, a.n, performance.now() + ((a.timeoutMs as number) ?? 1000));
      const responses: RawTxResponse[] = [];
      while (ready(v.tx) > 0 && responses.length < a.n) responses.push(consumeTx(v));
      return { responses, timedOut: !ok };
    },
    /** Writes rx requests and publishes `reqProd` (default: just past them), notifying. */
    rxPost: (a) => {
      const v = vif(a.devid);
      writeRx(v, (a.reqs as RawRxRequest[]) ?? []);
      return publish(v, v.rx, a.reqProd as number | undefined, a.notify !== false);
    },
    /** Waits up to `timeoutMs` for `n` rx responses, consumes them, then waits `settleMs` to catch extra ones. */
    rxPoll: async (a) => {
      const v = vif(a.devid);
      const ok = await waitReady(v, v.rx, a.n, performance.now() + ((a.timeoutMs as number) ?? 2000));
      const responses: RawRxResponse[] = [];
      while (ready(v.rx) > 0 && responses.length < a.n) responses.push(consumeRx(v));
      await new Promise((r) => setTimeout(r, (a.settleMs as number) ?? 20));
      return { responses, timedOut: !ok, extra: ready(v.rx) };
    },
    /** The shared indices and our private ones, of both rings. */
    indices: (a) => {
      const v = vif(a.devid);
      return { tx: ringIndices(v.tx), rx: ringIndices(v.rx), events: v.events };
    },
    /** Sends `n` notifications on the vif's port(s). */
    hammer: (a) => {
      const v = vif(a.devid);
      for (let i = 0; i < a.n; i++) {
        k.evtchn.notify(v.txPort);
        if (v.rxPort !== v.txPort) k.evtchn.notify(v.rxPort);
      }
    },

    /**
     * The double fetch: for each round, publishes a one-slot packet, `variants[0]`
     * (with id `id + round`), and, until its response arrives, keeps rewriting the
     * slot with the variants in turn (a tight synchronous loop: the backend serves
     * from another thread meanwhile). Every variant is a one-slot packet (no
     * more_data or extra_info flag), so any torn mix of them is one too. The
     * response lands in that same slot: its first word (id, status) is rewritten
     * only by compare-exchange from what we wrote last, so once the backend has
     * written it we never overwrite it (and stop); the rest of the slot, which no
     * response touches, is rewritten freely. `clobbered` reports a response whose id
     * is not the round's.
     */
    doubleFetch: async (a) => {
      const v = vif(a.devid);
      const variants = a.variants as RawTxRequest[];
      const rounds: Array<{ rewrites: number; timedOut: boolean; clobbered: boolean; response: RawTxResponse | null }> = [];
      for (let r = 0; r < a.rounds; r++) {
        const id = ((a.id as number) + r) & 0xffff;
        const bytes = variants.map((x) => encodeSlot({ ...x, id }));
        const s = slot(v.tx, v.tx.reqProdPvt);
        s.set(bytes[0]);
        v.tx.reqProdPvt = (v.tx.reqProdPvt + 1) >>> 0;
        publish(v, v.tx);
        const head = new Int32Array(s.buffer, s.byteOffset, TX_RSP_WORDS);
        const body = s.subarray(NETIF_TX_RESPONSE.size);
        const heads = bytes.map((b) => new Int32Array(b.buffer, b.byteOffset, TX_RSP_WORDS));
        const bodies = bytes.map((b) => b.subarray(NETIF_TX_RESPONSE.size));
        let last = heads[0];
        let rewrites = 0;
        const deadline = performance.now() + ((a.msPerRound as number) ?? 1000);
        rewrite: while (ready(v.tx) === 0 && performance.now() < deadline) {
          const x = ++rewrites % bytes.length;
          body.set(bodies[x]);
          for (let w = 0; w < TX_RSP_WORDS; w++) {
            if (Atomics.compareExchange(head, w, last[w], heads[x][w]) !== last[w]) break rewrite;
          }
          last = heads[x];
        }
        const ok = await waitReady(v, v.tx, 1, performance.now() + 1000);
        const response = ok ? consumeTx(v) : null;
        rounds.push({ rewrites, timedOut: !ok, clobbered: response !== null && response.id !== id, response });
      }
      return rounds;
    },

    /**
     * The flood: for `ms`, keeps the tx ring full with packets cycled from `packets`
     * (each data slot with a fresh id), refilling as responses come, then drains.
     * Checks every response: a NULL only while extras are outstanding, any other
     * status for an id in flight and equal to what its packet expects.
     */
    flood: async (a) => {
      const v = vif(a.devid);
      const packets = a.packets as FloodPacket[];
      const inFlight = new Map<number, number>();
      const statuses: Record<string, number> = {};
      let extrasOut = 0;
      let nextId = 0;
      let sentSlots = 0;
      let sentPackets = 0;
      let received = 0;
      let unknownIds = 0;
      let wrongStatus = 0;
      let unexpectedNull = 0;
      let t = 0;
      const take = () => {
        while (ready(v.tx) > 0) {
          const rsp = consumeTx(v);
          received++;
          statuses[rsp.status] = (statuses[rsp.status] ?? 0) + 1;
          if (rsp.status === NETIF_RSP_NULL) {
            if (extrasOut === 0) unexpectedNull++;
            else extrasOut--;
            continue;
          }
          const want = inFlight.get(rsp.id);
          if (want === undefined) unknownIds++;
          else {
            inFlight.delete(rsp.id);
            if (want !== rsp.status) wrongStatus++;
          }
        }
      };
      const used = () => (v.tx.reqProdPvt - v.tx.rspCons) >>> 0;
      const end = performance.now() + (a.ms as number);
      let fullPasses = 0;
      while (performance.now() < end) {
        take();
        let wrote = false;
        for (;;) {
          const p = packets[t % packets.length];
          if (used() + p.slots.length > v.tx.size) break;
          t++;
          const slots = p.slots.map((s) => {
            if (s.kind === 'extra') {
              extrasOut++;
              return s;
            }
            const id = nextId;
            nextId = (nextId + 1) & 0xffff;
            inFlight.set(id, p.expect);
            return { ...s, id };
          });
          writeTx(v, slots);
          sentSlots += slots.length;
          sentPackets++;
          wrote = true;
        }
        // Whole packets only: req_prod never splits one.
        if (wrote) publish(v, v.tx);
        if (v.tx.size - used() < 32) fullPasses++;
        await waitReady(v, v.tx, 1, Math.min(end, performance.now() + 5));
      }
      const drained = await waitReady(v, v.tx, used(), performance.now() + 5000);
      take();
      return {
        sentSlots, sentPackets, received, unknownIds, wrongStatus, unexpectedNull, statuses, fullPasses, drained,
        stillInFlight: inFlight.size, extrasOut,
      };
    },

    exit: (a) => finish(a.value ?? null),
  };

  serveCalls(ctl, ops);
  return done;
}
