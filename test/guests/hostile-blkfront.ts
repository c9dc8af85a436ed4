/**
 * A hostile blkfront for the adversarial suite (test/blk-hostile.test.ts), driven
 * by the test through `GuestHandle.call(op, args)` like test/guests/rpc.ts.
 *
 * It does the io/blkif.h frontend handshake by hand — allocate a one-page ring
 * extent and initialise it (`FrontRing.init`, only the frontend initialises), grant
 * it, allocate an unbound event channel, write `ring-ref`, `event-channel`,
 * `protocol`, `feature-persistent` and `state=Initialised`, wait for the backend's
 * Connected — and then bypasses every frontend check: it writes raw bytes into the
 * ring slots (offsets from the blkif layout tables, no codec, so any field may hold
 * any value), publishes `req_prod` itself with `Atomics` on the shared header
 * (offsets from `SRING_HEADER`), and reads the responses raw (id as two u32
 * halves, padding bytes included).
 *
 * Besides the rings it keeps named pages (granted read-write, read-only, to another
 * domain, or not at all) filled with a known byte, so the test can tell whether the
 * backend wrote anything into a page it should not have touched.
 */
import { createHash } from 'node:crypto';
import type { Kernel } from '../../hypervisor/kernel.ts';
import type { GuestPage } from '../../hypervisor/guest-memory.ts';
import type { EvtchnPort, GrantRef } from '../../hypervisor/abi.ts';
import { FrontRing, SRING_HEADER, SRING_RING_OFFSET } from '../../rings/ring.ts';
import {
  BLKIF_OP_DISCARD, BLKIF_OP_INDIRECT, BLKIF_REQUEST, BLKIF_REQUEST_DISCARD, BLKIF_REQUEST_INDIRECT, BLKIF_REQUEST_SEGMENT,
  BLKIF_RESPONSE, BLKIF_RING_ENTRY_SIZE, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
  XEN_IO_PROTO_ABI_X86_64,
} from '../../rings/blkif.ts';
import { XenbusState, waitForState } from '../../xenstore/xenbus.ts';
import { serveCalls } from '../../toolstack/guest-calls.ts';

/** A u64 field: a number below 2^53, or its two u32 halves (to write anything at all). */
export type U64 = number | { hi: number; lo: number };

/** One segment descriptor as written: any u32 gref, any u8 sectors. */
export interface RawSegment {
  gref: number;
  first: number;
  last: number;
}

/** A request as raw field values; nothing is checked. */
export type RawRequest =
  /** `blkif_request`: `nrSegments` (default segs.length) is written as is; at most 11 segments fit. */
  | { kind: 'rw'; operation: number; nrSegments?: number; handle?: number; id: U64; sector: U64; segs: RawSegment[] }
  /** `blkif_request_indirect` (operation 6): `grefs` are the indirect pages (at most 8 fit). */
  | { kind: 'indirect'; indirectOp: number; nrSegments: number; handle?: number; id: U64; sector: U64; grefs: number[] }
  /** `blkif_request_discard` (operation 5). */
  | { kind: 'discard'; flag: number; handle?: number; id: U64; sector: U64; nrSectors: U64 };

/** A response read raw from the ring. */
export interface RawResponse {
  /** The id when below 2^53, else -1 (see idHi/idLo). */
  id: number;
  idHi: number;
  idLo: number;
  operation: number;
  status: number;
  /** Whether every padding byte of the 16-byte response is zero (XSA-216). */
  padZero: boolean;
}

type Args = Record<string, unknown> & { [k: string]: any };

// Offsets, from the layout tables only.
const REQ_PROD_I = SRING_HEADER.fields.req_prod.offset >> 2;
const REQ_EVENT_I = SRING_HEADER.fields.req_event.offset >> 2;
const RSP_PROD_I = SRING_HEADER.fields.rsp_prod.offset >> 2;
const RSP_EVENT_I = SRING_HEADER.fields.rsp_event.offset >> 2;
const RQ = BLKIF_REQUEST.fields;
const IND = BLKIF_REQUEST_INDIRECT.fields;
const DISC = BLKIF_REQUEST_DISCARD.fields;
const SEG = BLKIF_REQUEST_SEGMENT.fields;
const RSP = BLKIF_RESPONSE.fields;
const ENTRY = BLKIF_RING_ENTRY_SIZE;
/** Bytes of `blkif_response` that belong to no field: the padding XSA-216 wants zeroed. */
const RSP_PADDING: number[] = [];
for (let b = 0; b < BLKIF_RESPONSE.size; b++) {
  if (!Object.values(RSP).some((f) => b >= f.offset && b < f.offset + f.size)) RSP_PADDING.push(b);
}
const TWO32 = 0x1_0000_0000;
/** 32-bit words of a slot a response overwrites. */
const RSP_WORDS = BLKIF_RESPONSE.size >> 2;

function writeU64Raw(dv: DataView, off: number, v: U64): void {
  const { hi, lo } = typeof v === 'number' ? { hi: Math.floor(v / TWO32), lo: v % TWO32 } : v;
  dv.setUint32(off, lo >>> 0, true);
  dv.setUint32(off + 4, hi >>> 0, true);
}

function writeSegmentRaw(dv: DataView, off: number, s: RawSegment): void {
  dv.setUint32(off + SEG.gref.offset, s.gref >>> 0, true);
  dv.setUint8(off + SEG.first_sect.offset, s.first & 0xff);
  dv.setUint8(off + SEG.last_sect.offset, s.last & 0xff);
}

/** Encodes `r` into a private 112-byte entry (zeroed first), raw. */
function encode(r: RawRequest, into = new Uint8Array(ENTRY)): Uint8Array {
  into.fill(0);
  const dv = new DataView(into.buffer, into.byteOffset, into.byteLength);
  switch (r.kind) {
    case 'rw': {
      dv.setUint8(RQ.operation.offset, r.operation & 0xff);
      dv.setUint8(RQ.nr_segments.offset, (r.nrSegments ?? r.segs.length) & 0xff);
      dv.setUint16(RQ.handle.offset, r.handle ?? 0, true);
      writeU64Raw(dv, RQ.id.offset, r.id);
      writeU64Raw(dv, RQ.sector_number.offset, r.sector);
      const n = Math.min(r.segs.length, BLKIF_MAX_SEGMENTS_PER_REQUEST);
      for (let i = 0; i < n; i++) writeSegmentRaw(dv, RQ.seg.offset + i * BLKIF_REQUEST_SEGMENT.size, r.segs[i]);
      break;
    }
    case 'indirect': {
      dv.setUint8(IND.operation.offset, BLKIF_OP_INDIRECT);
      dv.setUint8(IND.indirect_op.offset, r.indirectOp & 0xff);
      dv.setUint16(IND.nr_segments.offset, r.nrSegments & 0xffff, true);
      writeU64Raw(dv, IND.id.offset, r.id);
      writeU64Raw(dv, IND.sector_number.offset, r.sector);
      dv.setUint16(IND.handle.offset, r.handle ?? 0, true);
      const n = Math.min(r.grefs.length, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
      for (let i = 0; i < n; i++) dv.setUint32(IND.indirect_grefs.offset + i * 4, r.grefs[i] >>> 0, true);
      break;
    }
    case 'discard': {
      dv.setUint8(DISC.operation.offset, BLKIF_OP_DISCARD);
      dv.setUint8(DISC.flag.offset, r.flag & 0xff);
      dv.setUint16(DISC.handle.offset, r.handle ?? 0, true);
      writeU64Raw(dv, DISC.id.offset, r.id);
      writeU64Raw(dv, DISC.sector_number.offset, r.sector);
      writeU64Raw(dv, DISC.nr_sectors.offset, r.nrSectors);
      break;
    }
  }
  return into;
}

/** One hand-connected device: the ring as shared memory, and our private indices. */
interface Dev {
  devid: number;
  backendDir: string;
  backendId: number;
  /** The 64-byte shared header as i32 words (Atomics only). */
  hdr: Int32Array;
  /** The whole ring extent (slots written through it). */
  ring: Uint8Array;
  size: number;
  reqProdPvt: number;
  rspCons: number;
  port: EvtchnPort;
  ringRef: GrantRef;
  events: number;
  wake: (() => void) | null;
}

interface NamedPage {
  page: GuestPage;
  gref: number | null;
  fill: number;
}

/** Queue q of a multi-queue device is addressed as devid + q * QUEUE_STRIDE. */
export const QUEUE_STRIDE = 1 << 20;

export default function main(k: Kernel): Promise<unknown> {
  const devs = new Map<number, Dev>();
  const pages = new Map<string, NamedPage>();
  const ctl = k.control!;
  let finish!: (v: unknown) => void;
  const done = new Promise<unknown>((res) => (finish = res));

  const dev = (devid: number): Dev => {
    const d = devs.get(devid);
    if (!d) throw new Error(`device ${devid} is not connected`);
    return d;
  };
  const named = (name: string): NamedPage => {
    const p = pages.get(name);
    if (!p) throw new Error(`no page ${name}`);
    return p;
  };
  const slot = (d: Dev, idx: number): Uint8Array => {
    const off = SRING_RING_OFFSET + (idx & (d.size - 1)) * ENTRY;
    return d.ring.subarray(off, off + ENTRY);
  };
  const rspProd = (d: Dev): number => Atomics.load(d.hdr, RSP_PROD_I) >>> 0;
  const ready = (d: Dev): number => (rspProd(d) - d.rspCons) >>> 0;

  /** Writes `reqs` into the next slots and publishes them (or `reqProd` when given), notifying the backend. */
  const submit = (d: Dev, reqs: RawRequest[], reqProd?: number, notify = true): number => {
    for (const r of reqs) {
      slot(d, d.reqProdPvt).set(encode(r));
      d.reqProdPvt = (d.reqProdPvt + 1) >>> 0;
    }
    const prod = reqProd === undefined ? d.reqProdPvt : reqProd >>> 0;
    // The slots above must be visible before req_prod moves: Atomics.store releases them.
    Atomics.store(d.hdr, REQ_PROD_I, prod | 0);
    if (notify) k.evtchn.notify(d.port);
    return prod;
  };

  /** Reads the response at rspCons raw and advances rspCons. */
  const consume = (d: Dev): RawResponse => {
    const s = slot(d, d.rspCons);
    const dv = new DataView(s.buffer, s.byteOffset, BLKIF_RESPONSE.size);
    const idLo = dv.getUint32(RSP.id.offset, true);
    const idHi = dv.getUint32(RSP.id.offset + 4, true);
    const r: RawResponse = {
      id: idHi < 0x20_0000 ? idHi * TWO32 + idLo : -1, idHi, idLo,
      operation: dv.getUint8(RSP.operation.offset),
      status: dv.getInt16(RSP.status.offset, true),
      padZero: RSP_PADDING.every((b) => s[b] === 0),
    };
    d.rspCons = (d.rspCons + 1) >>> 0;
    return r;
  };

  /** Waits until `n` responses are ready or the deadline passes; event-driven, with a 5 ms poll as backstop. */
  const waitReady = async (d: Dev, n: number, deadline: number): Promise<boolean> => {
    for (;;) {
      if (ready(d) >= n) return true;
      // Ask to be notified at the next response, then look again (RING_FINAL_CHECK_FOR_RESPONSES).
      Atomics.store(d.hdr, RSP_EVENT_I, (d.rspCons + 1) | 0);
      if (ready(d) >= n) return true;
      if (performance.now() > deadline) return false;
      await new Promise<void>((res) => {
        const t = setTimeout(() => { d.wake = null; res(); }, 5);
        d.wake = () => { clearTimeout(t); d.wake = null; res(); };
      });
    }
  };

  const ops: Record<string, (a: Args) => unknown> = {
    info: () => ({ domid: k.domid }),

    /** The frontend handshake by hand (see the file comment). */
    connect: async (a) => {
      const devid = a.devid as number;
      const timeoutMs = (a.timeoutMs as number) ?? 10_000;
      const xb = k.xenbus;
      const dir = `/local/domain/${k.domid}/device/vbd/${devid}`;
      const backendDir = await xb.read(`${dir}/backend`);
      const backendId = Number(await xb.read(`${dir}/backend-id`));
      // With `queues` 2, queue q's ring is addressed as devid + q * QUEUE_STRIDE in later calls.
      const nq = (a.queues as number) ?? 1;
      const rings: Dev[] = [];
      for (let q = 0; q < nq; q++) {
        const extent = k.memory.allocExtent(0);
        const mem = extent.bytes.subarray(0, 4096);
        const size = FrontRing.init(mem, ENTRY).size; // only the frontend initialises the shared ring
        const ringRef = k.gnttab.grantAccess(backendId, extent.mfn, false);
        const port = k.evtchn.allocUnbound(backendId);
        const d: Dev = {
          devid: devid + q * QUEUE_STRIDE, backendDir, backendId, hdr: new Int32Array(mem.buffer, mem.byteOffset, SRING_RING_OFFSET >> 2),
          ring: mem, size,
          reqProdPvt: 0, rspCons: 0, port, ringRef, events: 0, wake: null,
        };
        k.evtchn.on(port, () => {
          d.events++;
          d.wake?.();
        });
        rings.push(d);
      }
      const [{ size, ringRef, port }] = rings;
      await xb.transaction(async (tx) => {
        if (nq > 1) await tx.write(`${dir}/multi-queue-num-queues`, String(nq));
        for (const [q, d] of rings.entries()) {
          const qdir = nq > 1 ? `${dir}/queue-${q}` : dir;
          await tx.write(`${qdir}/ring-ref`, String(d.ringRef));
          await tx.write(`${qdir}/event-channel`, String(d.port));
        }
        await tx.write(`${dir}/protocol`, XEN_IO_PROTO_ABI_X86_64);
        await tx.write(`${dir}/feature-persistent`, a.persistent ? '1' : '0');
        await tx.write(`${dir}/state`, String(XenbusState.Initialised));
      });
      const st = await waitForState(xb, backendDir, (s) => s === XenbusState.Connected || s >= XenbusState.Closing, { timeoutMs });
      if (st !== XenbusState.Connected) throw new Error(`backend went ${XenbusState[st]}`);
      for (const d of rings) devs.set(d.devid, d);
      const key = async (kname: string) => (await xb.readOptional(`${backendDir}/${kname}`)) ?? null;
      return {
        size, ringRef, port,
        sectors: Number(await key('sectors')), info: Number(await key('info')),
        feature: {
          persistent: (await key('feature-persistent')) === '1',
          maxIndirectSegments: Number((await key('feature-max-indirect-segments')) ?? 0),
          flush: (await key('feature-flush-cache')) === '1',
          barrier: (await key('feature-barrier')) === '1',
          discard: (await key('feature-discard')) === '1',
        },
      };
    },

    /**
     * A page filled with `fill`: granted to the backend read-write (`rw`) or read-only
     * (`ro`), to domain `domid` (`other`), or not granted at all (`none`).
     */
    page: (a) => {
      const [page] = k.memory.allocPages(1);
      page.bytes.fill(a.fill as number);
      let gref: number | null = null;
      // Every backend here runs in dom0.
      if (a.grant === 'rw' || a.grant === 'ro') gref = k.gnttab.grantAccess(0, page.mfn, a.grant === 'ro');
      else if (a.grant === 'other') gref = k.gnttab.grantAccess(a.domid as number, page.mfn, false);
      pages.set(a.name as string, { page, gref, fill: a.fill as number });
      return { gref, mfn: page.mfn };
    },
    /** Refills a page with its byte (after a READ landed in it). */
    refill: (a) => void named(a.name).page.bytes.fill(named(a.name).fill),
    /** sha256 of bytes [from, to) of a page. */
    pageSha: (a) => createHash('sha256').update(named(a.name).page.bytes.subarray(a.from ?? 0, a.to ?? 4096)).digest('hex'),
    /** The names among `names` whose page no longer holds only its fill byte. */
    touched: (a) => (a.names as string[]).filter((n) => named(n).page.bytes.some((b) => b !== named(n).fill)),
    /** Writes raw segment descriptors at the start of a page (an indirect page), entry i at i * 8. */
    descs: (a) => {
      const p = named(a.name).page;
      (a.descs as RawSegment[]).forEach((s, i) => writeSegmentRaw(p.view, i * BLKIF_REQUEST_SEGMENT.size, s));
    },

    /**
     * Writes `reqs` into the ring, publishes them, and waits (up to `timeoutMs`) for as
     * many responses; then waits `settleMs` more to catch any extra response.
     */
    io: async (a) => {
      const d = dev(a.devid);
      const reqs = a.reqs as RawRequest[];
      submit(d, reqs);
      const ok = await waitReady(d, reqs.length, performance.now() + ((a.timeoutMs as number) ?? 5000));
      const n = Math.min(ready(d), reqs.length);
      const responses: RawResponse[] = [];
      for (let i = 0; i < n; i++) responses.push(consume(d));
      await new Promise((r) => setTimeout(r, (a.settleMs as number) ?? 10));
      return { responses, timedOut: !ok, extra: ready(d) };
    },
    /** Writes `reqs` and publishes `reqProd` (default: just past them); no waiting. */
    submit: (a) => submit(dev(a.devid), (a.reqs as RawRequest[]) ?? [], a.reqProd as number | undefined, a.notify !== false),
    /** Waits up to `timeoutMs` for `n` responses and consumes those that came. */
    poll: async (a) => {
      const d = dev(a.devid);
      const ok = await waitReady(d, a.n, performance.now() + ((a.timeoutMs as number) ?? 1000));
      const responses: RawResponse[] = [];
      while (ready(d) > 0 && responses.length < a.n) responses.push(consume(d));
      return { responses, timedOut: !ok };
    },
    /** The shared indices and our private ones. */
    indices: (a) => {
      const d = dev(a.devid);
      return {
        reqProd: Atomics.load(d.hdr, REQ_PROD_I) >>> 0, reqEvent: Atomics.load(d.hdr, REQ_EVENT_I) >>> 0,
        rspProd: rspProd(d), rspEvent: Atomics.load(d.hdr, RSP_EVENT_I) >>> 0,
        reqProdPvt: d.reqProdPvt, rspCons: d.rspCons, events: d.events, size: d.size,
      };
    },
    /** Sends `n` notifications on the device's port. */
    hammer: (a) => {
      const d = dev(a.devid);
      for (let i = 0; i < a.n; i++) k.evtchn.notify(d.port);
    },

    /**
     * The double fetch: for each round, publishes `variants[0]` (with id `id + round`)
     * and, until the response arrives, keeps rewriting the whole slot with the
     * variants in turn (a tight synchronous loop: the backend serves from another
     * thread meanwhile). The response lands in that same slot, and the rewriting must
     * not clobber it (see below); `clobbered` reports a response whose id is not the
     * round's id, which is what a clobbered one would show (no variant has the id's
     * bytes where a response has them).
     */
    doubleFetch: async (a) => {
      const d = dev(a.devid);
      const variants = a.variants as RawRequest[];
      const rounds: Array<{ rewrites: number; timedOut: boolean; clobbered: boolean; response: RawResponse | null }> = [];
      for (let r = 0; r < a.rounds; r++) {
        const id = (a.id as number) + r;
        const bytes = variants.map((v) => encode({ ...v, id }));
        const s = slot(d, d.reqProdPvt);
        s.set(bytes[0]);
        d.reqProdPvt = (d.reqProdPvt + 1) >>> 0;
        Atomics.store(d.hdr, REQ_PROD_I, d.reqProdPvt | 0);
        k.evtchn.notify(d.port);
        // Bytes [0, 16) of the slot are where the response will land. Those four words are
        // rewritten only by compare-exchange from what we wrote last, so once the backend
        // has written a word of its response we never overwrite it (and stop); the rest of
        // the slot, which no response touches, is rewritten freely.
        const head = new Int32Array(s.buffer, s.byteOffset, RSP_WORDS);
        const body = s.subarray(BLKIF_RESPONSE.size);
        const heads = bytes.map((b) => new Int32Array(b.buffer, b.byteOffset, RSP_WORDS));
        const bodies = bytes.map((b) => b.subarray(BLKIF_RESPONSE.size));
        let last = heads[0];
        let rewrites = 0;
        const deadline = performance.now() + ((a.msPerRound as number) ?? 1000);
        rewrite: while (ready(d) === 0 && performance.now() < deadline) {
          const v = ++rewrites % bytes.length;
          body.set(bodies[v]);
          for (let w = 0; w < RSP_WORDS; w++) {
            if (Atomics.compareExchange(head, w, last[w], heads[v][w]) !== last[w]) break rewrite;
          }
          last = heads[v];
        }
        const ok = await waitReady(d, 1, performance.now() + 1000);
        const response = ok ? consume(d) : null;
        rounds.push({ rewrites, timedOut: !ok, clobbered: response !== null && response.id !== id, response });
      }
      return rounds;
    },

    /**
     * The flood: for `ms`, keeps every slot of the ring full with requests cycled from
     * `templates` (each with a fresh id), refilling as responses come, then drains.
     * Checks every response against the ids in flight.
     */
    flood: async (a) => {
      const d = dev(a.devid);
      const templates = a.templates as RawRequest[];
      const inFlight = new Set<number>();
      const statuses: Record<string, number> = {};
      let nextId = (a.firstId as number) ?? 1_000_000;
      let sent = 0;
      let received = 0;
      let unknownIds = 0;
      let badPadding = 0;
      let t = 0;
      const take = () => {
        while (ready(d) > 0) {
          const rsp = consume(d);
          received++;
          if (!inFlight.delete(rsp.id)) unknownIds++;
          if (!rsp.padZero) badPadding++;
          statuses[rsp.status] = (statuses[rsp.status] ?? 0) + 1;
        }
      };
      const end = performance.now() + (a.ms as number);
      let fullPasses = 0;
      while (performance.now() < end) {
        take();
        const batch: RawRequest[] = [];
        while (((d.reqProdPvt + batch.length - d.rspCons) >>> 0) < d.size) {
          const id = nextId++;
          batch.push({ ...templates[t++ % templates.length], id });
          inFlight.add(id);
        }
        if (batch.length > 0) {
          submit(d, batch);
          sent += batch.length;
        }
        if (((d.reqProdPvt - d.rspCons) >>> 0) === d.size) fullPasses++;
        await waitReady(d, 1, Math.min(end, performance.now() + 5));
      }
      const drained = await waitReady(d, inFlight.size, performance.now() + 5000);
      take();
      return { sent, received, unknownIds, badPadding, statuses, fullPasses, drained, stillInFlight: inFlight.size };
    },

    exit: (a) => finish(a.value ?? null),
  };

  serveCalls(ctl, ops);
  return done;
}
