// Model-based property tests of rings/ring.ts: a FrontRing and a BackRing over one
// SharedArrayBuffer, driven by random interleavings of produce / publish / consume /
// respond / final-check on each side and compared with a plain-array model. Start
// indices are drawn next to 0xFFFFFFF0 and every run ends with enough traffic to
// cross 2^32, so u32 wrap-around is always exercised.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { BackRing, FrontRing, SRING_HEADER, SRING_RING_OFFSET } from '../rings/ring.ts';
import { ProtocolError } from '../rings/errors.ts';

const PAGE = 4096;
const ENTRY = 112;
const TAG_REQ = 0x5a5a_5a5a;
const TAG_RSP = 0xa5a5_a5a5;

type Op =
  | { kind: 'produce'; n: number }
  | { kind: 'frontPublish'; check: boolean }
  | { kind: 'backConsume'; n: number }
  | { kind: 'backRespond'; n: number; publish: boolean }
  | { kind: 'backPublish'; check: boolean }
  | { kind: 'frontConsume'; n: number }
  | { kind: 'frontFinalCheck'; batch: number }
  | { kind: 'backFinalCheck'; batch: number };

function opArb(size: number): fc.Arbitrary<Op> {
  const n = fc.oneof(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: size + 2 }));
  const batch = fc.oneof({ weight: 4, arbitrary: fc.constant(1) }, { weight: 1, arbitrary: fc.integer({ min: 2, max: 4 }) });
  return fc.oneof(
    fc.record({ kind: fc.constant('produce' as const), n }),
    fc.record({ kind: fc.constant('frontPublish' as const), check: fc.boolean() }),
    fc.record({ kind: fc.constant('backConsume' as const), n }),
    fc.record({ kind: fc.constant('backRespond' as const), n, publish: fc.boolean() }),
    fc.record({ kind: fc.constant('backPublish' as const), check: fc.boolean() }),
    fc.record({ kind: fc.constant('frontConsume' as const), n }),
    fc.record({ kind: fc.constant('frontFinalCheck' as const), batch }),
    fc.record({ kind: fc.constant('backFinalCheck' as const), batch }),
  );
}

/** Start indices within 32 of the wrap: 0xFFFFFFE0..0xFFFFFFFF, biased to 0xFFFFFFF0. */
const startArb = fc.oneof(
  fc.constant(0xffff_fff0),
  fc.integer({ min: 0xffff_ffe0, max: 0xffff_ffff }),
);

/** Independent statement of the event-index rule: notify iff event ∈ (old, new]. */
function eventInWindow(event: number, oldProd: number, newProd: number): boolean {
  const pos = (event - oldProd) >>> 0; // distance of the event past old
  const len = (newProd - oldProd) >>> 0;
  return pos >= 1 && pos <= len;
}

/** A FrontRing and a BackRing over one SharedArrayBuffer, checked against arrays. */
class Harness {
  readonly mem: Uint8Array;
  readonly front: FrontRing;
  readonly back: BackRing;
  readonly size: number;
  readonly words: Uint32Array;
  // The model: sequence numbers at each stage, FIFO.
  nextSeq = 0;
  frontUnpublished: number[] = [];
  published: number[] = [];
  inService: number[] = [];
  rspUnpublished: number[] = [];
  rspPublished: number[] = [];
  backExpect = 0;
  frontExpect = 0;
  frontArmed = false;
  backArmed = false;
  notifications = 0;
  /** The producer indices each side last read (what its ring may consume up to). */
  backSeen: number;
  frontSeen: number;
  private readonly buf = new Uint8Array(ENTRY);
  private readonly bufView = new DataView(this.buf.buffer);

  constructor(pages: number, readonly start: number) {
    this.mem = new Uint8Array(new SharedArrayBuffer(pages * PAGE));
    this.front = FrontRing.init(this.mem, ENTRY, start);
    this.back = BackRing.attach(this.mem, ENTRY, start);
    this.size = this.front.size;
    this.words = new Uint32Array(this.mem.buffer, 0, SRING_RING_OFFSET / 4);
    this.backSeen = start;
    this.frontSeen = start;
  }

  shared(f: 'req_prod' | 'req_event' | 'rsp_prod' | 'rsp_event'): number {
    return Atomics.load(this.words, SRING_HEADER.fields[f].offset / 4);
  }

  outstanding(): number {
    return this.frontUnpublished.length + this.published.length + this.inService.length
      + this.rspUnpublished.length + this.rspPublished.length;
  }

  run(op: Op): void {
    switch (op.kind) {
      case 'produce': return this.produce(op.n);
      case 'frontPublish': return this.frontPublish(op.check);
      case 'backConsume': return this.backConsume(op.n);
      case 'backRespond': return this.backRespond(op.n, op.publish);
      case 'backPublish': return this.backPublish(op.check);
      case 'frontConsume': return this.frontConsume(op.n);
      case 'frontFinalCheck': return void this.frontFinalCheck(op.batch);
      case 'backFinalCheck': return void this.backFinalCheck(op.batch);
    }
  }

  produce(n: number): void {
    const { front } = this;
    expect(front.freeRequests()).toBe(this.size - this.outstanding());
    const k = Math.min(n, front.freeRequests());
    for (let i = 0; i < k; i++) {
      const seq = this.nextSeq++;
      const off = front.produceRequest();
      front.view.setUint32(off, seq, true);
      front.view.setUint32(off + ENTRY - 4, (seq ^ TAG_REQ) >>> 0, true);
      this.frontUnpublished.push(seq);
    }
    expect(front.isFull()).toBe(this.outstanding() === this.size);
  }

  frontPublish(check: boolean): void {
    const oldProd = this.shared('req_prod');
    const event = this.shared('req_event');
    const newProd = this.front.reqProdPvt;
    if (check) {
      const notify = this.front.pushRequestsAndCheckNotify();
      expect(notify).toBe(eventInWindow(event, oldProd, newProd));
      if (this.backArmed && newProd !== oldProd) {
        // The backend armed req_event = req_cons + 1 with nothing pending: this push must wake it.
        expect(notify).toBe(true);
      }
      if (notify) this.notifications++;
    } else {
      this.front.pushRequests();
    }
    expect(this.shared('req_prod')).toBe(newProd);
    if (newProd !== oldProd) this.backArmed = false;
    this.published.push(...this.frontUnpublished.splice(0));
  }

  backConsume(n: number): void {
    const { back } = this;
    const avail = back.unconsumedRequests();
    this.backSeen = this.shared('req_prod');
    expect(avail).toBe(Math.min(this.published.length, this.size - this.inService.length - this.rspUnpublished.length - this.rspPublished.length));
    expect(avail).toBe(this.published.length);
    const k = Math.min(n, avail);
    for (let i = 0; i < k; i++) {
      expect(back.requestConsOverflow(back.reqCons)).toBe(false);
      back.consumeRequest(this.buf);
      const seq = this.bufView.getUint32(0, true);
      expect(seq).toBe(this.published.shift()); // not lost, duplicated or reordered
      expect(seq).toBe(this.backExpect++);
      expect(this.bufView.getUint32(ENTRY - 4, true)).toBe((seq ^ TAG_REQ) >>> 0);
      this.inService.push(seq);
    }
  }

  backRespond(n: number, publish: boolean): void {
    const { back } = this;
    const k = Math.min(n, this.inService.length);
    for (let i = 0; i < k; i++) {
      const seq = this.inService.shift()!;
      const off = back.produceResponse();
      back.view.setUint32(off, seq, true);
      back.view.setUint32(off + ENTRY - 4, (seq ^ TAG_RSP) >>> 0, true);
      this.rspUnpublished.push(seq);
    }
    if (publish) this.backPublish(true);
  }

  backPublish(check: boolean): void {
    const oldProd = this.shared('rsp_prod');
    const event = this.shared('rsp_event');
    const newProd = this.back.rspProdPvt;
    if (check) {
      const notify = this.back.pushResponsesAndCheckNotify();
      expect(notify).toBe(eventInWindow(event, oldProd, newProd));
      if (this.frontArmed && newProd !== oldProd) expect(notify).toBe(true);
      if (notify) this.notifications++;
    } else {
      this.back.pushResponses();
    }
    expect(this.shared('rsp_prod')).toBe(newProd);
    if (newProd !== oldProd) this.frontArmed = false;
    this.rspPublished.push(...this.rspUnpublished.splice(0));
  }

  frontConsume(n: number): void {
    const { front } = this;
    const ready = front.unconsumedResponses();
    this.frontSeen = this.shared('rsp_prod');
    expect(ready).toBe(this.rspPublished.length);
    const k = Math.min(n, ready);
    for (let i = 0; i < k; i++) {
      front.consumeResponse(this.buf);
      const seq = this.bufView.getUint32(0, true);
      expect(seq).toBe(this.rspPublished.shift());
      expect(seq).toBe(this.frontExpect++);
      expect(this.bufView.getUint32(ENTRY - 4, true)).toBe((seq ^ TAG_RSP) >>> 0);
    }
  }

  frontFinalCheck(batch: number): boolean {
    const work = this.front.finalCheckForResponses(batch);
    this.frontSeen = this.shared('rsp_prod');
    expect(work).toBe(this.rspPublished.length > 0);
    if (!work) {
      expect(this.shared('rsp_event')).toBe((this.front.rspCons + batch) >>> 0);
      this.frontArmed = batch === 1;
    }
    return work;
  }

  backFinalCheck(batch: number): boolean {
    const work = this.back.finalCheckForRequests(batch);
    this.backSeen = this.shared('req_prod');
    expect(work).toBe(this.published.length > 0);
    if (!work) {
      expect(this.shared('req_event')).toBe((this.back.reqCons + batch) >>> 0);
      this.backArmed = batch === 1;
    }
    return work;
  }

  /** Runs everything to completion, producing until at least `minTotal` requests went round. */
  drain(minTotal: number): void {
    for (let guard = 0; guard < 10_000; guard++) {
      if (this.nextSeq < minTotal) this.produce(minTotal - this.nextSeq);
      this.frontPublish(true);
      this.backConsume(this.size);
      this.backRespond(this.size, true);
      this.frontConsume(this.size);
      const idle = !this.backFinalCheck(1) && !this.frontFinalCheck(1);
      if (idle && this.nextSeq >= minTotal && this.outstanding() === 0) return;
    }
    throw new Error('drain did not finish');
  }

  checkEnd(): void {
    expect(this.frontExpect).toBe(this.nextSeq); // every request answered exactly once, in order
    expect(this.backExpect).toBe(this.nextSeq);
    expect(this.outstanding()).toBe(0);
    const { front, back, start } = this;
    expect(front.reqProdPvt).toBe((start + this.nextSeq) >>> 0);
    expect(front.reqProdPvt).toBeLessThan(start); // the indices wrapped past 2^32
    expect([front.rspCons, back.reqCons, back.rspProdPvt]).toEqual([front.reqProdPvt, front.reqProdPvt, front.reqProdPvt]);
    expect(front.counters.requestsProduced).toBe(this.nextSeq);
    expect(front.counters.responsesConsumed).toBe(this.nextSeq);
    expect(back.counters.requestsConsumed).toBe(this.nextSeq);
    expect(back.counters.responsesProduced).toBe(this.nextSeq);
    expect(front.counters.notificationsSent + back.counters.notificationsSent).toBe(this.notifications);
    expect(front.counters.protocolErrors + back.counters.protocolErrors).toBe(0);
  }
}

describe.each([1, 4])('FrontRing/BackRing against a plain-array model, %i page(s)', (pages) => {
  const size = pages === 1 ? 32 : 128;

  it('never loses, duplicates or reorders a request; notifies exactly by the event-index rule', () => {
    fc.assert(
      fc.property(startArb, fc.array(opArb(size), { maxLength: 80 }), (start, ops) => {
        const h = new Harness(pages, start);
        expect(h.size).toBe(size);
        for (const op of ops) h.run(op);
        h.drain(size + 16);
        h.checkEnd();
      }),
      { numRuns: pages === 1 ? 300 : 150 },
    );
  });

  it('a producer index written by a hostile peer is refused or within bounds, and never over-consumed', () => {
    fc.assert(
      fc.property(
        startArb, fc.array(opArb(size), { maxLength: 30 }), fc.boolean(),
        fc.oneof(
          fc.record({ raw: fc.constant(true), value: fc.integer({ min: 0, max: 0xffff_ffff }) }),
          fc.record({ raw: fc.constant(false), value: fc.integer({ min: -40, max: size + 40 }) }),
        ),
        (start, ops, hitBack, g) => {
          const h = new Harness(pages, start);
          for (const op of ops) h.run(op);
          // Either any u32, or a value near the consumer's index (mostly plausible ones).
          const base = hitBack ? h.back.reqCons : h.front.rspCons;
          const garbage = g.raw ? g.value : (base + g.value) >>> 0;
          const field = hitBack ? 'req_prod' : 'rsp_prod';
          Atomics.store(h.words, SRING_HEADER.fields[field].offset / 4, garbage);
          const buf = new Uint8Array(ENTRY);
          if (hitBack) {
            const { back } = h;
            // RING_REQUEST_PROD_OVERFLOW, or req_prod behind what the backend already read.
            const window = (garbage - back.rspProdPvt) >>> 0;
            const refuse = window > size || window < ((h.backSeen - back.rspProdPvt) >>> 0);
            let n = -1;
            try {
              n = back.unconsumedRequests();
            } catch (e) {
              expect(e).toBeInstanceOf(ProtocolError);
            }
            expect(n === -1).toBe(refuse);
            if (refuse) {
              // Nothing past the last good req_prod can be consumed.
              const left = (h.backSeen - back.reqCons) >>> 0;
              for (let i = 0; i < left; i++) back.consumeRequest(buf);
              expect(() => back.consumeRequest(buf)).toThrow();
              return;
            }
            expect(n).toBe((garbage - back.reqCons) >>> 0);
            expect(n).toBeLessThanOrEqual(size - ((back.reqCons - back.rspProdPvt) >>> 0));
            for (let i = 0; i < n; i++) back.consumeRequest(buf);
            expect(() => back.consumeRequest(buf)).toThrow();
          } else {
            const { front } = h;
            // More responses than requests produced (tightened RING_RESPONSE_PROD_OVERFLOW),
            // or rsp_prod behind what the frontend already read.
            const ready = (garbage - front.rspCons) >>> 0;
            const refuse = ready > ((front.reqProdPvt - front.rspCons) >>> 0)
              || ready < ((h.frontSeen - front.rspCons) >>> 0);
            let n = -1;
            try {
              n = front.unconsumedResponses();
            } catch (e) {
              expect(e).toBeInstanceOf(ProtocolError);
            }
            expect(n === -1).toBe(refuse);
            if (refuse) {
              const left = (h.frontSeen - front.rspCons) >>> 0;
              for (let i = 0; i < left; i++) front.consumeResponse(buf);
              expect(() => front.consumeResponse(buf)).toThrow();
              return;
            }
            expect(n).toBe(ready);
            expect(n).toBeLessThanOrEqual(size);
            for (let i = 0; i < n; i++) front.consumeResponse(buf);
            expect(() => front.consumeResponse(buf)).toThrow();
            expect(front.freeRequests()).toBeGreaterThanOrEqual(0);
            expect(front.freeRequests()).toBeLessThanOrEqual(size);
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});
