// A hostile backend against blkfront, in process: BlkfrontRing/BlkfrontIo over a
// FrontRing on a SharedArrayBuffer, with small fakes for the event channel, grant
// table and guest memory (just what blkfront calls), and the test playing the backend
// by reading the requests and writing raw responses into the ring (offsets from the
// SRING_HEADER and BLKIF_RESPONSE layout tables) and publishing rsp_prod itself.
//
// Cases: a response with an unknown id (out of range, or in range but not in flight),
// a duplicated id (a second response for an id already completed, in the same batch
// or a later one), a response for the wrong operation (also an indirect request
// answered as INDIRECT instead of its inner operation), an id at or above 2^53, a
// response producer overflow (rsp_prod - rsp_cons > ring size), rsp_prod ahead of the
// requests produced, and rsp_prod moving back. Each must disable the disk: every
// pending request and every later one (read, write, flush, discard) rejects with the
// ProtocolError, nothing hangs, the event handler never throws, later responses are
// ignored, and the pages of the failed requests are not reused while the backend may
// still hold them (XSA-396). A merely unexpected status fails one request with a
// BlkError and leaves the disk working.
import { describe, expect, it } from 'vitest';
import { BlkfrontIo, BlkfrontRing, BlkError, type BlkfrontDiskInfo } from '../blkfront/blkfront.ts';
import { FrontRing, SRING_HEADER, SRING_RING_OFFSET } from '../rings/ring.ts';
import {
  BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RESPONSE, BLKIF_RSP_OKAY, BLKIF_SEGS_PER_INDIRECT_FRAME,
  blkifAbi, peekBlkifOperation, readBlkifSegment, XEN_IO_PROTO_ABI_X86_64,
  type BlkifIndirectRequest, type BlkifRequest, type BlkifSegment,
} from '../rings/blkif.ts';
import { ProtocolError } from '../rings/errors.ts';
import type { EvtchnPort, GrantRef } from '../hypervisor/abi.ts';
import type { EventChannels } from '../event-channel/evtchn.ts';
import type { GrantTable } from '../grant-table/gnttab.ts';
import type { GuestMemory, GuestPage } from '../hypervisor/guest-memory.ts';

const abi = blkifAbi(XEN_IO_PROTO_ABI_X86_64);
const RSP_PROD_I = SRING_HEADER.fields.rsp_prod.offset >> 2;
const REQ_PROD_I = SRING_HEADER.fields.req_prod.offset >> 2;
const RSP = BLKIF_RESPONSE.fields;
const TWO32 = 0x1_0000_0000;
const SECTORS = 4096;

/** The grant table blkfront sees: grants are recorded; `held` refs are still mapped by the backend. */
class FakeGrants {
  next = 8;
  readonly pages = new Map<number, GuestPage>();
  readonly held = new Set<number>();
  ended = 0;
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
  constructor(private readonly mem: FakeMemory) {}
}

/** The domain's pages: allocated fresh, freed pages recorded. */
class FakeMemory {
  nextMfn = 0x1000;
  readonly byMfn = new Map<number, GuestPage>();
  readonly freed = new Set<number>();
  allocPages(n: number): GuestPage[] {
    return Array.from({ length: n }, () => {
      const bytes = new Uint8Array(4096);
      const pg: GuestPage = { mfn: this.nextMfn++, bytes, view: new DataView(bytes.buffer) };
      this.byMfn.set(pg.mfn, pg);
      this.freed.delete(pg.mfn);
      return pg;
    });
  }
  freePage(pg: GuestPage): void {
    this.freed.add(pg.mfn);
  }
}

interface SeenRequest {
  id: number;
  operation: number;
  /** The inner operation of an indirect request. */
  inner: number;
  sector: number;
  segs: BlkifSegment[];
}

/** The test's backend: reads requests from the shared ring, writes raw responses into it. */
class HostileBackend {
  readonly hdr: Int32Array;
  readonly dv: DataView;
  reqCons = 0;
  rspProd = 0;
  constructor(readonly mem: Uint8Array, readonly size: number, readonly grants: FakeGrants) {
    this.hdr = new Int32Array(mem.buffer, 0, SRING_RING_OFFSET >> 2);
    this.dv = new DataView(mem.buffer);
  }

  private off(idx: number): number {
    return SRING_RING_OFFSET + (idx & (this.size - 1)) * abi.entrySize;
  }

  /** Takes every published request (copied out of the slot once, then decoded). */
  take(): SeenRequest[] {
    const out: SeenRequest[] = [];
    const prod = Atomics.load(this.hdr, REQ_PROD_I) >>> 0;
    for (; this.reqCons !== prod; this.reqCons = (this.reqCons + 1) >>> 0) {
      const copy = this.mem.slice(this.off(this.reqCons), this.off(this.reqCons) + abi.entrySize);
      const cdv = new DataView(copy.buffer);
      if (peekBlkifOperation(cdv, 0) === BLKIF_OP_INDIRECT) {
        const r: BlkifIndirectRequest = abi.readIndirectRequest(cdv, 0);
        const segs: BlkifSegment[] = [];
        for (let i = 0; i < r.nrSegments; i++) {
          const page = this.grants.pages.get(r.indirectGrefs[Math.floor(i / BLKIF_SEGS_PER_INDIRECT_FRAME)])!;
          segs.push(readBlkifSegment(page.view, (i % BLKIF_SEGS_PER_INDIRECT_FRAME) * 8));
        }
        out.push({ id: r.id, operation: r.operation, inner: r.indirectOp, sector: r.sectorNumber, segs });
      } else {
        const r: BlkifRequest = abi.readRequest(cdv, 0);
        out.push({ id: r.id, operation: r.operation, inner: r.operation, sector: r.sectorNumber, segs: r.segments });
      }
    }
    return out;
  }

  /** Fills a READ's pages with `byte` (what a backend does before answering OKAY). */
  fill(r: SeenRequest, byte: number): void {
    for (const s of r.segs) this.grants.pages.get(s.gref)!.bytes.fill(byte, s.firstSect * 512, (s.lastSect + 1) * 512);
  }

  /** Writes one raw response at rsp index `rspProd` (not yet published). */
  write(id: number | { hi: number; lo: number }, operation: number, status: number): void {
    const o = this.off(this.rspProd);
    const { hi, lo } = typeof id === 'number' ? { hi: Math.floor(id / TWO32), lo: id % TWO32 } : id;
    for (let b = 0; b < BLKIF_RESPONSE.size; b++) this.dv.setUint8(o + b, 0);
    this.dv.setUint32(o + RSP.id.offset, lo, true);
    this.dv.setUint32(o + RSP.id.offset + 4, hi, true);
    this.dv.setUint8(o + RSP.operation.offset, operation);
    this.dv.setInt16(o + RSP.status.offset, status, true);
    this.rspProd = (this.rspProd + 1) >>> 0;
  }

  /** Publishes rsp_prod (the responses written, or any value at all). */
  publish(rspProd = this.rspProd): void {
    Atomics.store(this.hdr, RSP_PROD_I, rspProd | 0);
  }

  answer(r: SeenRequest, status = BLKIF_RSP_OKAY): void {
    if (r.inner === BLKIF_OP_READ && status === BLKIF_RSP_OKAY) this.fill(r, 0x42);
    this.write(r.id, r.inner, status);
  }
}

/** One disk over one ring, with everything a test needs to poke at. */
function setup(opts: { maxSegments?: number } = {}) {
  const memory = new FakeMemory();
  const grants = new FakeGrants(memory);
  let notified = 0;
  const evtchn = { notify: () => void notified++ } as unknown as EventChannels;
  const mem = new Uint8Array(new SharedArrayBuffer(4096));
  const ring = FrontRing.init(mem, abi.entrySize);
  const info: BlkfrontDiskInfo = {
    backendDomid: 0, handle: 51712, abi, sectors: SECTORS, sectorSize: 512, readOnly: false,
    features: {
      flush: true, barrier: true, discard: true, discardZeroes: false, discardGranularity: 512, discardAlignment: 0,
      persistent: false, maxSegments: opts.maxSegments ?? 11, ringPages: 1, queues: 1,
    },
  };
  const r = new BlkfrontRing({ info, ring, port: 3 as EvtchnPort }, evtchn, grants as unknown as GrantTable, memory as unknown as GuestMemory);
  const io = new BlkfrontIo(info, [r]);
  const be = new HostileBackend(mem, ring.size, grants);
  /** Delivers the event; the handler must never throw into the domain. */
  const event = () => expect(() => r.onEvent()).not.toThrow();
  return { io, ring: r, be, grants, memory, event, notified: () => notified };
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

/** Expects `p` to reject (promptly) with a ProtocolError matching `msg`; returns it. */
async function rejectsProtocol(p: Promise<unknown>, msg: RegExp): Promise<ProtocolError> {
  const r = await settled(p);
  expect(r.ok).toBe(false);
  const e = (r as { error: unknown }).error;
  expect(e).toBeInstanceOf(ProtocolError);
  expect((e as ProtocolError).code).toBe('PVIO_ERR_PROTOCOL');
  expect((e as Error).message).toMatch(msg);
  return e as ProtocolError;
}

/** After a break: the disk stays broken, every later I/O rejects with that same error, and nothing reaches the ring. */
async function expectBroken(d: ReturnType<typeof setup>, err: ProtocolError): Promise<void> {
  expect(d.io.error).toBe(err);
  const produced = Atomics.load(d.be.hdr, REQ_PROD_I);
  const later = [d.io.readInto(0, new Uint8Array(4096)), d.io.write(8, new Uint8Array(512)), d.io.flush(), d.io.discard(16, 8), d.io.barrier()];
  for (const p of later) {
    const r = await settled(p);
    expect(r.ok).toBe(false);
    expect((r as { error: unknown }).error).toBe(err);
  }
  expect(Atomics.load(d.be.hdr, REQ_PROD_I)).toBe(produced);
  expect(d.io.busy()).toBe(false);
  // A well-formed response now changes nothing (and does not throw).
  d.be.write(0, BLKIF_OP_READ, BLKIF_RSP_OKAY);
  d.be.publish();
  d.event();
  expect(d.io.error).toBe(err);
}

describe('blkfront against a hostile backend', () => {
  it('the control: well-formed responses complete reads and writes, out of order too', async () => {
    const d = setup();
    const buf = new Uint8Array(8192);
    const rd = d.io.readInto(0, buf);
    const wr = d.io.write(100, new Uint8Array(1024).fill(7));
    const reqs = d.be.take();
    expect(reqs.map((r) => r.operation)).toEqual([BLKIF_OP_READ, BLKIF_OP_WRITE]);
    d.be.answer(reqs[1]);
    d.be.answer(reqs[0]);
    d.be.publish();
    d.event();
    expect(await settled(wr)).toEqual({ ok: true, value: undefined });
    expect(await settled(rd)).toEqual({ ok: true, value: undefined });
    expect(buf.every((b) => b === 0x42)).toBe(true);
    expect(d.io.error).toBeNull();
    // Every grant ended, every page freed.
    expect(d.grants.pages.size).toBe(0);
    expect(d.memory.freed.size).toBe(d.memory.byMfn.size);
  });

  it('an unexpected status fails that request with a BlkError and leaves the disk working', async () => {
    const d = setup();
    const p = d.io.readInto(0, new Uint8Array(512));
    const [r] = d.be.take();
    d.be.write(r.id, r.inner, 7);
    d.be.publish();
    d.event();
    const s = await settled(p);
    expect(s.ok).toBe(false);
    const e = (s as { error: unknown }).error;
    expect(e).toBeInstanceOf(BlkError);
    expect((e as BlkError).status).toBe(7);
    expect(d.io.error).toBeNull();
    const q = d.io.readInto(8, new Uint8Array(512));
    d.be.take().forEach((x) => d.be.answer(x));
    d.be.publish();
    d.event();
    expect((await settled(q)).ok).toBe(true);
  });

  const breakers: Array<{ name: string; msg: RegExp; act: (d: ReturnType<typeof setup>, reqs: SeenRequest[]) => void }> = [
    { name: 'a response id out of range', msg: /response id 4096 out of range/, act: (d) => d.be.write(4096, BLKIF_OP_READ, 0) },
    {
      name: 'a response id in range but not in flight', msg: /not in flight/,
      act: (d, reqs) => d.be.write(reqs.length + 5, BLKIF_OP_READ, 0),
    },
    {
      name: 'a duplicated id in one batch', msg: /for id 0, which is not in flight/,
      act: (d, reqs) => {
        d.be.answer(reqs[0]);
        d.be.write(reqs[0].id, BLKIF_OP_READ, 0);
      },
    },
    { name: 'a response for the wrong operation', msg: /response op 1 for a request of op 0/, act: (d, reqs) => d.be.write(reqs[0].id, BLKIF_OP_WRITE, 0) },
    { name: 'an id at or above 2^53', msg: /2\^53/, act: (d) => d.be.write({ hi: 0xffff_ffff, lo: 0 }, BLKIF_OP_READ, 0) },
  ];
  for (const b of breakers) {
    it(`${b.name} disables the disk: pending and later I/O reject with the ProtocolError`, async () => {
      const d = setup();
      const pending = [d.io.readInto(0, new Uint8Array(4096)), d.io.readInto(8, new Uint8Array(4096)), d.io.readInto(16, new Uint8Array(4096))];
      const reqs = d.be.take();
      expect(reqs).toHaveLength(3);
      b.act(d, reqs);
      d.be.publish();
      d.event();
      // (With a duplicate, the first answer for id 0 was good: that read completed.)
      const completed = b.name.startsWith('a duplicated') ? 1 : 0;
      for (const p of pending.slice(0, completed)) expect(await settled(p)).toEqual({ ok: true, value: undefined });
      const errs = await Promise.all(pending.slice(completed).map((p) => rejectsProtocol(p, b.msg)));
      const err = d.io.error as ProtocolError;
      expect(err).toBeInstanceOf(ProtocolError);
      for (const e of errs) expect(e).toBe(err);
      await expectBroken(d, err);
    });
  }

  it('a duplicated id in a later batch (the id already completed) disables the disk', async () => {
    const d = setup();
    const first = d.io.readInto(0, new Uint8Array(512));
    const second = d.io.readInto(8, new Uint8Array(512));
    const [r0] = d.be.take();
    d.be.answer(r0);
    d.be.publish();
    d.event();
    expect((await settled(first)).ok).toBe(true);
    // Id 0 was completed and is free (no request of ours uses it now): a second answer for it.
    d.be.write(r0.id, BLKIF_OP_READ, 0);
    d.be.publish();
    d.event();
    const err = await rejectsProtocol(second, /for id 0, which is not in flight/);
    await expectBroken(d, err);
  });

  it('an indirect request answered as INDIRECT instead of its inner operation disables the disk', async () => {
    const d = setup({ maxSegments: 256 });
    const p = d.io.readInto(0, new Uint8Array(64 * 1024));
    const [r] = d.be.take();
    expect(r).toMatchObject({ operation: BLKIF_OP_INDIRECT, inner: BLKIF_OP_READ });
    expect(r.segs).toHaveLength(16);
    d.be.write(r.id, BLKIF_OP_INDIRECT, 0);
    d.be.publish();
    d.event();
    await expectBroken(d, await rejectsProtocol(p, /response op 6 for a request of op 0/));
  });

  const prods: Array<{ name: string; rspProd: (d: ReturnType<typeof setup>) => number }> = [
    { name: 'rsp_prod - rsp_cons > ring size', rspProd: (d) => d.be.rspProd + d.ring.opts.ring.size + 1 },
    { name: 'rsp_prod far beyond (2^31)', rspProd: () => 0x8000_0000 },
    { name: 'rsp_prod ahead of the requests produced', rspProd: (d) => d.be.rspProd + 4 },
  ];
  for (const c of prods) {
    it(`a response producer overflow (${c.name}) disables the disk without consuming anything`, async () => {
      const d = setup();
      const pending = [d.io.readInto(0, new Uint8Array(4096)), d.io.write(8, new Uint8Array(4096))];
      const reqs = d.be.take();
      // Well-formed responses sit in the slots; only the index is impossible.
      for (const r of reqs) d.be.answer(r);
      d.be.publish(c.rspProd(d));
      d.event();
      const errs = await Promise.all(pending.map((p) => rejectsProtocol(p, /impossible rsp_prod .*RING_RESPONSE_PROD_OVERFLOW/)));
      expect(errs[0]).toBe(errs[1]);
      expect(d.ring.counters.responses).toBe(0);
      await expectBroken(d, errs[0]);
    });
  }

  it('rsp_prod moving back disables the disk', async () => {
    const d = setup();
    const a = d.io.readInto(0, new Uint8Array(512));
    const b = d.io.readInto(8, new Uint8Array(512));
    const reqs = d.be.take();
    d.be.answer(reqs[0]);
    d.be.publish();
    d.event();
    expect((await settled(a)).ok).toBe(true);
    d.be.publish(0);
    d.event();
    await expectBroken(d, await rejectsProtocol(b, /impossible rsp_prod/));
  });

  it('with two queues, a protocol error on one disables the whole disk (as Linux marks the device, not the ring)', async () => {
    const a = setup();
    const b = setup();
    // One disk over both rings (the info object is the disk's).
    const r1 = new BlkfrontRing({ info: a.ring.opts.info, ring: b.ring.opts.ring, port: 4 as EvtchnPort },
      { notify: () => undefined } as unknown as EventChannels, b.grants as unknown as GrantTable, b.memory as unknown as GuestMemory);
    const io = new BlkfrontIo(a.ring.opts.info, [a.ring, r1]);
    const pending = [io.readInto(0, new Uint8Array(512)), io.readInto(8, new Uint8Array(512)), io.readInto(16, new Uint8Array(512))];
    expect(a.be.take().length + b.be.take().length).toBe(3);
    a.be.write(4096, BLKIF_OP_READ, 0);
    a.be.publish();
    a.event();
    const err = io.error as ProtocolError;
    expect(err).toBeInstanceOf(ProtocolError);
    for (const p of pending) {
      const r = await settled(p);
      expect(r.ok).toBe(false);
      expect((r as { error: unknown }).error).toBe(err);
    }
    for (const p of [io.flush(), io.barrier(), io.discard(0, 8), io.readInto(0, new Uint8Array(512))]) {
      const r = await settled(p);
      expect(r.ok).toBe(false);
      expect((r as { error: unknown }).error).toBe(err);
    }
    expect(r1.error).toBe(err);
    expect(b.be.take()).toEqual([]);
  });

  it('a broken disk keeps the pages of failed requests until their grants can be ended (XSA-396)', async () => {
    const d = setup();
    const p = d.io.write(0, new Uint8Array(8192).fill(1));
    const [r] = d.be.take();
    for (const s of r.segs) d.grants.held.add(s.gref); // the backend still maps them
    d.be.write(4096, BLKIF_OP_WRITE, 0);
    d.be.publish();
    d.event();
    await rejectsProtocol(p, /out of range/);
    const mfns = r.segs.map((s) => d.grants.pages.get(s.gref)!.mfn);
    expect(mfns).toHaveLength(2);
    for (const mfn of mfns) expect(d.memory.freed.has(mfn)).toBe(false);
    expect(d.ring.releaseAll()).toBe(2); // still held: not freed, not reused
    for (const mfn of mfns) expect(d.memory.freed.has(mfn)).toBe(false);
    d.grants.held.clear(); // the backend unmapped them
    expect(d.ring.releaseAll()).toBe(0);
    for (const mfn of mfns) expect(d.memory.freed.has(mfn)).toBe(true);
  });
});
