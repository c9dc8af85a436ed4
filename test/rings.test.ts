// Unit tests of rings/ring.ts: io/ring.h semantics (init, sizes, notify rule,
// final-check arming, overflow detection, attach) over a SharedArrayBuffer.
import { describe, expect, it, vi } from 'vitest';
import {
  BackRing, FrontRing, readSringIndices, ringSize, SRING_HEADER, SRING_RING_OFFSET,
} from '../rings/ring.ts';
import { InvariantError, ProtocolError } from '../rings/errors.ts';

const PAGE = 4096;
const BLKIF_ENTRY = 112;

function region(pages: number, byteOffset = 0): Uint8Array {
  const sab = new SharedArrayBuffer(pages * PAGE + byteOffset);
  return new Uint8Array(sab, byteOffset, pages * PAGE);
}

/** Raw u32 access to the shared header, as a hostile peer would write it. */
function header(mem: Uint8Array) {
  const w = new Uint32Array(mem.buffer, mem.byteOffset, SRING_RING_OFFSET / 4);
  const at = (f: keyof typeof SRING_HEADER.fields) => SRING_HEADER.fields[f].offset / 4;
  return {
    get: (f: 'req_prod' | 'req_event' | 'rsp_prod' | 'rsp_event') => Atomics.load(w, at(f)),
    set: (f: 'req_prod' | 'req_event' | 'rsp_prod' | 'rsp_event', v: number) => Atomics.store(w, at(f), v >>> 0),
  };
}

function pair(pages = 1, startIdx = 0) {
  const mem = region(pages);
  const front = FrontRing.init(mem, BLKIF_ENTRY, startIdx);
  const back = BackRing.attach(mem, BLKIF_ENTRY, startIdx);
  return { mem, front, back, hdr: header(mem) };
}

/** Front produces n requests, each carrying a sequence number in its first word. */
function produce(front: FrontRing, n: number, seq0: number): void {
  for (let i = 0; i < n; i++) front.view.setUint32(front.produceRequest(), seq0 + i, true);
}

describe('SRING_HEADER layout', () => {
  it('matches struct <name>_sring: indices at 0/4/8/12, pvt@16, __pad@20..64, ring[] at 64', () => {
    const f = SRING_HEADER.fields;
    expect(SRING_HEADER.size).toBe(64);
    expect([f.req_prod.offset, f.req_event.offset, f.rsp_prod.offset, f.rsp_event.offset]).toEqual([0, 4, 8, 12]);
    expect([f.req_prod.writer, f.req_event.writer, f.rsp_prod.writer, f.rsp_event.writer])
      .toEqual(['front', 'back', 'back', 'front']);
    expect([f.pvt.offset, f.pvt.size]).toEqual([16, 4]);
    expect([f.__pad.offset, f.__pad.size]).toEqual([20, 44]);
    expect(SRING_RING_OFFSET).toBe(64);
  });
});

describe('ringSize (__RING_SIZE)', () => {
  it.each([[1, 32], [2, 64], [4, 128], [8, 256], [16, 512]])('blkif %i page(s) hold %i entries', (pages, n) => {
    expect(ringSize(pages * PAGE, BLKIF_ENTRY)).toBe(n);
    expect(ringSize(pages * PAGE, 108)).toBe(n);
  });
  it('rounds down to a power of two for netif entries', () => {
    expect(ringSize(PAGE, 12)).toBe(256); // netif tx
    expect(ringSize(PAGE, 8)).toBe(256); // netif rx
    expect(ringSize(PAGE, 16)).toBe(128); // netif ctrl
  });
  it('is 0 when no entry fits, and rejects bad arguments', () => {
    expect(ringSize(64, 8)).toBe(0);
    expect(ringSize(64 + 7, 8)).toBe(0);
    expect(ringSize(64 + 8, 8)).toBe(1);
    expect(() => ringSize(PAGE, 0)).toThrow(InvariantError);
    expect(() => ringSize(-1, 8)).toThrow(InvariantError);
  });
});

describe('FrontRing.init (SHARED_RING_INIT + FRONT_RING_INIT)', () => {
  it('writes req_prod=rsp_prod=0, req_event=rsp_event=1 and zeroes pvt and __pad', () => {
    const mem = region(1);
    mem.fill(0xaa);
    const front = FrontRing.init(mem, BLKIF_ENTRY);
    expect(readSringIndices(mem)).toEqual({ reqProd: 0, reqEvent: 1, rspProd: 0, rspEvent: 1 });
    expect([...mem.subarray(16, 64)].every((b) => b === 0)).toBe(true);
    expect(mem[64]).toBe(0xaa); // entries are not touched
    expect(front.size).toBe(32);
    expect(front.reqProdPvt).toBe(0);
    expect(front.rspCons).toBe(0);
    expect(front.freeRequests()).toBe(32);
    expect(front.isFull()).toBe(false);
  });
  it('can start at an arbitrary index, wrapping the event indices', () => {
    const mem = region(1);
    FrontRing.init(mem, BLKIF_ENTRY, 0xffff_ffff);
    expect(readSringIndices(mem)).toEqual({ reqProd: 0xffff_ffff, reqEvent: 0, rspProd: 0xffff_ffff, rspEvent: 0 });
  });
  it('accepts a view with a non-zero byteOffset (multiple of 4) and refuses a misaligned one', () => {
    const mem = region(1, 8);
    const front = FrontRing.init(mem, BLKIF_ENTRY);
    expect(front.requestOffset(0)).toBe(64);
    front.view.setUint32(front.produceRequest(), 0xdeadbeef, true);
    expect(new DataView(mem.buffer).getUint32(8 + 64, true)).toBe(0xdeadbeef);
    const bad = new Uint8Array(new SharedArrayBuffer(PAGE + 2), 2, PAGE);
    expect(() => FrontRing.init(bad, BLKIF_ENTRY)).toThrow(InvariantError);
    expect(() => FrontRing.init(region(1).subarray(0, 100), BLKIF_ENTRY)).toThrow(InvariantError);
  });
});

describe('slots and free requests', () => {
  it('maps idx & (size-1) to byte 64 + slot * entrySize', () => {
    const { front, back } = pair(1);
    expect(front.requestOffset(0)).toBe(64);
    expect(front.requestOffset(1)).toBe(64 + 112);
    expect(front.requestOffset(31)).toBe(64 + 31 * 112);
    expect(front.requestOffset(32)).toBe(64);
    expect(front.requestOffset(0xffff_ffff)).toBe(64 + 31 * 112);
    expect(back.responseOffset(33)).toBe(64 + 112);
  });
  it('fills up to size and refuses one more (RING_FULL)', () => {
    const { front } = pair(1);
    produce(front, 32, 0);
    expect(front.isFull()).toBe(true);
    expect(front.freeRequests()).toBe(0);
    expect(() => front.produceRequest()).toThrow(InvariantError);
    expect(() => { front.reqProdPvt = front.reqProdPvt + 1; }).toThrow(InvariantError);
    expect(front.counters.requestsProduced).toBe(32);
  });
  it('lets the caller advance reqProdPvt by assignment, wrapping u32, but never backwards', () => {
    const { front } = pair(1, 0xffff_fffe);
    front.reqProdPvt++;
    front.reqProdPvt++;
    expect(front.reqProdPvt).toBe(0);
    expect(front.freeRequests()).toBe(30);
    expect(() => { front.reqProdPvt = 0xffff_ffff; }).toThrow(InvariantError);
    expect(front.counters.requestsProduced).toBe(2);
  });
});

describe('a full round trip', () => {
  it('delivers requests and responses in order and counts them', () => {
    const { front, back } = pair(1);
    produce(front, 3, 100);
    expect(back.unconsumedRequests()).toBe(0); // not pushed yet
    front.pushRequests();
    expect(back.unconsumedRequests()).toBe(3);
    const buf = new Uint8Array(BLKIF_ENTRY);
    const dv = new DataView(buf.buffer);
    for (let i = 0; i < 3; i++) {
      back.consumeRequest(buf);
      expect(dv.getUint32(0, true)).toBe(100 + i);
      back.view.setUint32(back.produceResponse(), 200 + i, true);
    }
    expect(() => back.consumeRequest(buf)).toThrow(InvariantError);
    expect(() => back.produceResponse()).toThrow(InvariantError);
    back.pushResponses();
    expect(front.unconsumedResponses()).toBe(3);
    for (let i = 0; i < 3; i++) {
      front.consumeResponse(buf);
      expect(dv.getUint32(0, true)).toBe(200 + i);
    }
    expect(() => front.consumeResponse(buf)).toThrow(InvariantError);
    expect(front.freeRequests()).toBe(32);
    expect(front.counters).toMatchObject({ requestsProduced: 3, responsesConsumed: 3 });
    expect(back.counters).toMatchObject({ requestsConsumed: 3, responsesProduced: 3 });
  });
  it('copyRequest copies the whole slot once into a private buffer', () => {
    const { front, back } = pair(1);
    const off = front.produceRequest();
    for (let i = 0; i < BLKIF_ENTRY; i++) front.view.setUint8(off + i, i);
    front.pushRequests();
    expect(back.unconsumedRequests()).toBe(1);
    const copy = new Uint8Array(BLKIF_ENTRY);
    back.copyRequest(back.reqCons, copy);
    front.view.setUint8(off, 0xff); // a later scribble does not reach the copy
    expect([...copy]).toEqual([...Array(BLKIF_ENTRY).keys()]);
    expect(() => back.copyRequest(0, new Uint8Array(BLKIF_ENTRY - 1))).toThrow(InvariantError);
  });
  it('caps unconsumed requests at the free response slots (XEN_RING_NR_UNCONSUMED_REQUESTS)', () => {
    const { front, back } = pair(1);
    const buf = new Uint8Array(BLKIF_ENTRY);
    produce(front, 32, 0);
    front.pushRequests();
    expect(back.unconsumedRequests()).toBe(32);
    for (let i = 0; i < 32; i++) back.consumeRequest(buf);
    expect(back.requestConsOverflow(back.reqCons)).toBe(true);
    expect(back.unconsumedRequests()).toBe(0);
    back.produceResponse();
    expect(back.requestConsOverflow(back.reqCons)).toBe(false);
  });
});

describe('index assignment, Xen style (r->req_cons++ etc.)', () => {
  it('advances all four private indices by assignment across the 2^32 wrap and counts them', () => {
    const { front, back } = pair(1, 0xffff_fffe);
    const buf = new Uint8Array(BLKIF_ENTRY);
    for (let i = 0; i < 4; i++) {
      front.view.setUint32(front.requestOffset(front.reqProdPvt), 10 + i, true);
      front.reqProdPvt++;
    }
    front.pushRequests();
    expect(back.unconsumedRequests()).toBe(4);
    for (let i = 0; i < 4; i++) {
      back.copyRequest(back.reqCons, buf);
      expect(new DataView(buf.buffer).getUint32(0, true)).toBe(10 + i);
      back.reqCons++;
      back.rspProdPvt++;
    }
    expect(() => { back.reqCons++; }).toThrow(InvariantError);
    expect(() => { back.rspProdPvt++; }).toThrow(InvariantError);
    back.pushResponses();
    expect(front.unconsumedResponses()).toBe(4);
    front.rspCons++;
    front.rspCons += 3;
    expect(() => { front.rspCons++; }).toThrow(InvariantError);
    expect(() => { front.rspCons = 0xffff_ffff; }).toThrow(InvariantError); // backwards
    expect([front.reqProdPvt, front.rspCons, back.reqCons, back.rspProdPvt]).toEqual([2, 2, 2, 2]);
    expect(front.counters).toMatchObject({ requestsProduced: 4, responsesConsumed: 4 });
    expect(back.counters).toMatchObject({ requestsConsumed: 4, responsesProduced: 4 });
  });
});

describe('push and check notify (event-index rule)', () => {
  it('notifies iff req_event lies in (old, new]', () => {
    const cases: Array<[old: number, nw: number, event: number, notify: boolean]> = [
      [0, 1, 1, true], // fresh ring: req_event = 1
      [0, 3, 1, true],
      [0, 3, 3, true], // event == new
      [0, 3, 4, false], // event past new
      [2, 3, 2, false], // event == old
      [2, 5, 1, false], // event behind old: already notified
      [0xffff_fffe, 2, 0xffff_ffff, true], // across the wrap
      [0xffff_fffe, 2, 3, false],
      [0xffff_fffe, 2, 0xffff_fffe, false],
    ];
    for (const [old, nw, event, notify] of cases) {
      const { front, back, hdr } = pair(1, old);
      const n = (nw - old) >>> 0;
      produce(front, n, 0);
      hdr.set('req_event', event);
      expect(front.pushRequestsAndCheckNotify(), `requests old=${old} new=${nw} event=${event}`).toBe(notify);
      expect(hdr.get('req_prod')).toBe(nw);

      // The same rule for responses.
      const buf = new Uint8Array(BLKIF_ENTRY);
      expect(back.unconsumedRequests()).toBe(n);
      for (let i = 0; i < n; i++) { back.consumeRequest(buf); back.produceResponse(); }
      hdr.set('rsp_event', event);
      expect(back.pushResponsesAndCheckNotify(), `responses old=${old} new=${nw} event=${event}`).toBe(notify);
      expect(hdr.get('rsp_prod')).toBe(nw);
    }
  });
  it('a second push with nothing new neither notifies nor counts; a suppressed one is counted', () => {
    const { front } = pair(1);
    produce(front, 1, 0);
    expect(front.pushRequestsAndCheckNotify()).toBe(true);
    expect(front.pushRequestsAndCheckNotify()).toBe(false);
    produce(front, 1, 1); // req_event is still 1: the backend has not re-armed
    expect(front.pushRequestsAndCheckNotify()).toBe(false);
    expect(front.counters).toMatchObject({ notificationsSent: 1, notificationsSuppressed: 1 });
  });
});

describe('final check (RING_FINAL_CHECK_FOR_*)', () => {
  it('with no work, arms req_event = req_cons + 1 so the next push notifies', () => {
    const { front, back, hdr } = pair(1);
    const buf = new Uint8Array(BLKIF_ENTRY);
    produce(front, 2, 0);
    expect(front.pushRequestsAndCheckNotify()).toBe(true);
    produce(front, 1, 2);
    expect(front.pushRequestsAndCheckNotify()).toBe(false); // backend not yet re-armed
    expect(back.finalCheckForRequests()).toBe(true); // work pending: no arming
    expect(hdr.get('req_event')).toBe(1);
    for (let n = back.unconsumedRequests(); n > 0; n--) back.consumeRequest(buf);
    expect(back.finalCheckForRequests()).toBe(false);
    expect(hdr.get('req_event')).toBe(back.reqCons + 1);
    produce(front, 1, 3);
    expect(front.pushRequestsAndCheckNotify()).toBe(true);
    expect(back.counters).toMatchObject({ finalChecks: 2, finalChecksWithWork: 1 });
  });
  it('with no work, arms rsp_event = rsp_cons + 1 so the next push notifies', () => {
    const { front, back, hdr } = pair(1, 0xffff_fff0);
    const buf = new Uint8Array(BLKIF_ENTRY);
    produce(front, 20, 0);
    front.pushRequests();
    expect(back.unconsumedRequests()).toBe(20);
    for (let i = 0; i < 20; i++) back.consumeRequest(buf);
    back.produceResponse();
    expect(back.pushResponsesAndCheckNotify()).toBe(true);
    expect(front.unconsumedResponses()).toBe(1);
    front.consumeResponse(buf);
    expect(front.finalCheckForResponses()).toBe(false);
    expect(hdr.get('rsp_event')).toBe((front.rspCons + 1) >>> 0);
    back.produceResponse();
    expect(back.pushResponsesAndCheckNotify()).toBe(true);
    expect(front.finalCheckForResponses()).toBe(true);
  });
  it('finds work the peer published between arming and the re-check (the sleep/wake-up race)', () => {
    const { front, back, hdr } = pair(1);
    produce(front, 1, 0);
    // Run the frontend's push right after the backend's arming store of req_event,
    // i.e. after its first (empty) check: the re-check must see the request.
    const reqEventWord = SRING_HEADER.fields.req_event.offset / 4;
    const store = Atomics.store.bind(Atomics) as (ta: Int32Array, i: number, v: number) => number;
    let injected = false;
    const spy = vi.spyOn(Atomics, 'store').mockImplementation(((ta: Int32Array, i: number, v: number) => {
      const r = store(ta, i, v);
      if (!injected && i === reqEventWord) {
        injected = true;
        // Armed already (req_event = 1), so this push notifies as well; the re-check must still see it.
        expect(front.pushRequestsAndCheckNotify()).toBe(true);
      }
      return r;
    }) as typeof Atomics.store);
    try {
      expect(back.finalCheckForRequests()).toBe(true);
    } finally {
      spy.mockRestore();
    }
    expect(injected).toBe(true);
    expect(hdr.get('req_event')).toBe(1);
    expect(back.counters).toMatchObject({ finalChecks: 1, finalChecksWithWork: 1 });
  });
  it('with a batch, arms event = cons + batch (custom batching)', () => {
    const { front, back, hdr } = pair(1);
    expect(back.finalCheckForRequests(4)).toBe(false);
    expect(hdr.get('req_event')).toBe(4);
    for (let i = 0; i < 3; i++) {
      produce(front, 1, i);
      expect(front.pushRequestsAndCheckNotify()).toBe(false);
    }
    produce(front, 1, 3);
    expect(front.pushRequestsAndCheckNotify()).toBe(true);
    expect(front.finalCheckForResponses(8)).toBe(false);
    expect(hdr.get('rsp_event')).toBe(8);
    expect(() => back.finalCheckForRequests(0)).toThrow(InvariantError);
    expect(() => back.finalCheckForRequests(33)).toThrow(InvariantError);
    expect(() => front.finalCheckForResponses(1.5)).toThrow(InvariantError);
  });
});

describe('overflow detection (hostile peers)', () => {
  it('RING_REQUEST_PROD_OVERFLOW: a req_prod more than size ahead is a ProtocolError and is never consumed', () => {
    const { front, back, hdr } = pair(1);
    const buf = new Uint8Array(BLKIF_ENTRY);
    produce(front, 2, 0);
    front.pushRequests();
    expect(back.unconsumedRequests()).toBe(2);
    back.consumeRequest(buf);
    hdr.set('req_prod', 33); // rsp_prod_pvt is 0: 33 outstanding > 32
    expect(back.requestProdOverflow(33)).toBe(true);
    expect(() => back.unconsumedRequests()).toThrow(ProtocolError);
    expect(() => back.finalCheckForRequests()).toThrow(ProtocolError);
    // Only what was seen before the corruption may be consumed.
    back.consumeRequest(buf);
    expect(() => back.consumeRequest(buf)).toThrow(InvariantError);
    expect(() => { back.reqCons = 5; }).toThrow(InvariantError);
    expect(back.reqCons).toBe(2);
    expect(back.counters.protocolErrors).toBe(2);
    hdr.set('req_prod', 0xffff_ff00);
    expect(() => back.unconsumedRequests()).toThrow(ProtocolError);
  });
  it('a req_prod that moves backwards is a ProtocolError', () => {
    const { front, back, hdr } = pair(1);
    produce(front, 4, 0);
    front.pushRequests();
    expect(back.unconsumedRequests()).toBe(4);
    hdr.set('req_prod', 2);
    expect(() => back.unconsumedRequests()).toThrow(ProtocolError);
    hdr.set('req_prod', 0xffff_ffff);
    expect(() => back.unconsumedRequests()).toThrow(ProtocolError);
  });
  it('RING_RESPONSE_PROD_OVERFLOW: an impossible rsp_prod is a ProtocolError and is never consumed', () => {
    const { front, back, hdr } = pair(1);
    const buf = new Uint8Array(BLKIF_ENTRY);
    produce(front, 2, 0);
    front.pushRequests();
    hdr.set('rsp_prod', 40); // more than size ahead of rsp_cons
    expect(front.responseProdOverflow(40)).toBe(true);
    expect(() => front.unconsumedResponses()).toThrow(ProtocolError);
    expect(() => front.finalCheckForResponses()).toThrow(ProtocolError);
    hdr.set('rsp_prod', 3); // within size, but only 2 requests were ever produced
    expect(front.responseProdOverflow(3)).toBe(false);
    expect(() => front.unconsumedResponses()).toThrow(ProtocolError);
    hdr.set('rsp_prod', 0xffff_ffff); // behind rsp_cons
    expect(() => front.unconsumedResponses()).toThrow(ProtocolError);
    expect(() => front.consumeResponse(buf)).toThrow(InvariantError);
    expect(front.rspCons).toBe(0);
    expect(front.counters.protocolErrors).toBe(4);
    // A legitimate value afterwards is accepted again.
    expect(back.unconsumedRequests()).toBe(2);
    back.consumeRequest(buf);
    back.produceResponse();
    back.pushResponses();
    expect(front.unconsumedResponses()).toBe(1);
  });
});

describe('attach', () => {
  it('BackRing.attach never writes the shared page', () => {
    const mem = region(1);
    FrontRing.init(mem, BLKIF_ENTRY);
    const before = mem.slice(0, 64);
    const back = BackRing.attach(mem, BLKIF_ENTRY);
    expect(back.size).toBe(32);
    expect(back.reqCons).toBe(0);
    expect(back.rspProdPvt).toBe(0);
    expect(mem.slice(0, 64)).toEqual(before);
  });
  it('FRONT_RING_ATTACH / BACK_RING_ATTACH start the private indices at startIdx', () => {
    const { mem, front, back } = pair(4);
    const buf = new Uint8Array(BLKIF_ENTRY);
    produce(front, 5, 0);
    front.pushRequests();
    expect(back.unconsumedRequests()).toBe(5);
    for (let i = 0; i < 5; i++) { back.consumeRequest(buf); back.produceResponse(); }
    back.pushResponses();
    // Reconnect both ends at the shared rsp_prod, as Linux netback does.
    const rspProd = readSringIndices(mem).rspProd;
    const before = mem.slice(0, 64);
    const front2 = FrontRing.attach(mem, BLKIF_ENTRY, rspProd);
    const back2 = BackRing.attach(mem, BLKIF_ENTRY, rspProd);
    expect(mem.slice(0, 64)).toEqual(before);
    expect([front2.reqProdPvt, front2.rspCons, front2.size]).toEqual([5, 5, 128]);
    expect([back2.reqCons, back2.rspProdPvt]).toEqual([5, 5]);
    expect(back2.unconsumedRequests()).toBe(0);
    expect(front2.unconsumedResponses()).toBe(0);
    produce(front2, 1, 77);
    front2.pushRequests();
    expect(back2.unconsumedRequests()).toBe(1);
    back2.consumeRequest(buf);
    expect(new DataView(buf.buffer).getUint32(0, true)).toBe(77);
  });
  it('refuses a start index that is not a u32', () => {
    const mem = region(1);
    expect(() => FrontRing.init(mem, BLKIF_ENTRY, -1)).toThrow(InvariantError);
    expect(() => BackRing.attach(mem, BLKIF_ENTRY, 2 ** 32)).toThrow(InvariantError);
  });
});

describe('entries built in private memory', () => {
  it('produceRequestFrom / produceResponseFrom copy a privately built entry into the next slot', () => {
    const mem = new Uint8Array(new SharedArrayBuffer(4096));
    const f = FrontRing.init(mem, 112, 0xffff_fffe);
    const b = BackRing.attach(mem, 112, 0xffff_fffe);
    const entry = new Uint8Array(112).map((_, i) => i + 1);
    for (let i = 0; i < 3; i++) {
      entry[0] = 0xa0 + i;
      f.produceRequestFrom(entry);
    }
    expect(f.pushRequestsAndCheckNotify()).toBe(true);
    const copy = new Uint8Array(112);
    for (let i = 0; i < 3; i++) {
      expect(b.unconsumedRequests()).toBe(3 - i);
      b.consumeRequest(copy);
      expect(copy[0]).toBe(0xa0 + i);
      expect(copy[111]).toBe(112);
      b.produceResponseFrom(new Uint8Array(16).fill(0x40 + i));
    }
    b.pushResponsesAndCheckNotify();
    const rsp = new Uint8Array(16);
    for (let i = 0; i < 3; i++) {
      f.unconsumedResponses();
      f.consumeResponse(rsp, 16);
      expect([...rsp]).toEqual(new Array(16).fill(0x40 + i));
    }
    expect(() => f.produceRequestFrom(new Uint8Array(113))).toThrow(/longer than a slot/);
    expect(() => f.copyResponse(0, new Uint8Array(8), 16)).toThrow(/shorter/);
  });
});
