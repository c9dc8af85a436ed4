import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ByteRingConsumer, ByteRingProducer, type ByteRingSpec } from '../rings/byte-ring.ts';
import { ProtocolError, InvariantError } from '../rings/errors.ts';
import {
  XENSTORE_DOMAIN_INTERFACE,
  xenstoreDaemonEnds,
  xenstoreGuestEnds,
} from '../rings/xenstore-ring.ts';
import { XENCONS_INTERFACE, consoleDom0Ends, consoleGuestEnds } from '../rings/console-ring.ts';

// A 64-byte ring at offset 0 with its indices after it, in a 4 KiB shared page.
const SPEC: ByteRingSpec = { dataOffset: 0, size: 64, consOffset: 64, prodOffset: 68 };

function page(): Uint8Array {
  return new Uint8Array(new SharedArrayBuffer(4096));
}

function setIndices(p: Uint8Array, spec: ByteRingSpec, cons: number, prod: number): void {
  const dv = new DataView(p.buffer, p.byteOffset);
  dv.setUint32(spec.consOffset, cons >>> 0, true);
  dv.setUint32(spec.prodOffset, prod >>> 0, true);
}

function indices(p: Uint8Array, spec: ByteRingSpec): { cons: number; prod: number } {
  const dv = new DataView(p.buffer, p.byteOffset);
  return { cons: dv.getUint32(spec.consOffset, true), prod: dv.getUint32(spec.prodOffset, true) };
}

function seq(n: number, start = 0): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (start + i) & 0xff);
}

describe('ByteRing', () => {
  it('moves bytes from producer to consumer and publishes both indices', () => {
    const p = page();
    const prod = new ByteRingProducer(p, SPEC);
    const cons = new ByteRingConsumer(p, SPEC);
    expect(prod.write(seq(10))).toBe(10);
    expect(indices(p, SPEC)).toEqual({ cons: 0, prod: 10 });
    expect(cons.available()).toBe(10);
    const out = new Uint8Array(16);
    expect(cons.read(out)).toBe(10);
    expect(out.subarray(0, 10)).toEqual(seq(10));
    expect(indices(p, SPEC)).toEqual({ cons: 10, prod: 10 });
    expect(cons.read(out)).toBe(0);
    expect(prod.counters).toMatchObject({ bytes: 10, updates: 1 });
    expect(cons.counters).toMatchObject({ bytes: 10, updates: 1, stalls: 1 });
  });

  it('wraps the data and the u32 indices when starting near 0xFFFFFFF0', () => {
    const p = page();
    setIndices(p, SPEC, 0xfffffff0, 0xfffffff0);
    const prod = new ByteRingProducer(p, SPEC);
    const cons = new ByteRingConsumer(p, SPEC);
    expect(prod.prodIndex).toBe(0xfffffff0);
    // 0xfffffff0 & 63 = 48: the first write straddles the end of the buffer.
    expect(prod.write(seq(40))).toBe(40);
    expect(indices(p, SPEC).prod).toBe(0x18); // wrapped past 2^32
    const out = new Uint8Array(40);
    expect(cons.read(out)).toBe(40);
    expect(out).toEqual(seq(40));
    expect(indices(p, SPEC).cons).toBe(0x18);
    // And again across the buffer end with a full ring.
    expect(prod.write(seq(64, 100))).toBe(64);
    expect(prod.free()).toBe(0);
    const out2 = new Uint8Array(64);
    expect(cons.read(out2)).toBe(64);
    expect(out2).toEqual(seq(64, 100));
  });

  it('writes only what fits and returns the count (partial writes)', () => {
    const p = page();
    const prod = new ByteRingProducer(p, SPEC);
    const cons = new ByteRingConsumer(p, SPEC);
    expect(prod.write(seq(50))).toBe(50);
    expect(prod.write(seq(50, 50))).toBe(14);
    expect(prod.write(seq(1))).toBe(0);
    expect(prod.counters.stalls).toBe(1);
    const out = new Uint8Array(20);
    expect(cons.read(out)).toBe(20);
    expect(prod.free()).toBe(20);
    expect(prod.write(seq(36, 64))).toBe(20);
    const all = new Uint8Array(100);
    expect(cons.read(all)).toBe(64);
    expect(all.subarray(0, 64)).toEqual(seq(64, 20));
  });

  it('reads into a small buffer in pieces', () => {
    const p = page();
    const prod = new ByteRingProducer(p, SPEC);
    const cons = new ByteRingConsumer(p, SPEC);
    prod.write(seq(30));
    const got: number[] = [];
    const b = new Uint8Array(7);
    for (let n; (n = cons.read(b)) > 0;) got.push(...b.subarray(0, n));
    expect(Uint8Array.from(got)).toEqual(seq(30));
  });

  it('detects an impossible producer index (consumer side): ProtocolError, nothing read', () => {
    const p = page();
    setIndices(p, SPEC, 0xfffffff0, 0xfffffff0);
    const cons = new ByteRingConsumer(p, SPEC);
    setIndices(p, SPEC, 0xfffffff0, (0xfffffff0 + 65) >>> 0); // prod - cons = 65 > 64
    expect(() => cons.available()).toThrow(ProtocolError);
    expect(() => cons.read(new Uint8Array(100))).toThrow(ProtocolError);
    expect(indices(p, SPEC).cons).toBe(0xfffffff0);
    setIndices(p, SPEC, 0xfffffff0, 0xffffffef); // prod behind cons
    expect(() => cons.available()).toThrow(ProtocolError);
    setIndices(p, SPEC, 0xfffffff0, (0xfffffff0 + 64) >>> 0); // exactly full is fine
    expect(cons.available()).toBe(64);
  });

  it('detects an impossible consumer index (producer side): ProtocolError, nothing written', () => {
    const p = page();
    const prod = new ByteRingProducer(p, SPEC);
    prod.write(seq(8));
    setIndices(p, SPEC, 9, 8); // cons ahead of prod
    expect(() => prod.write(seq(4))).toThrow(ProtocolError);
    expect(() => prod.free()).toThrow(ProtocolError);
    expect(indices(p, SPEC).prod).toBe(8);
  });

  it('ignores a peer scribbling on its own index (keeps a private copy)', () => {
    const p = page();
    const prod = new ByteRingProducer(p, SPEC);
    prod.write(seq(8));
    setIndices(p, SPEC, 0, 0x7777); // peer overwrote prod
    expect(prod.write(seq(4))).toBe(4);
    expect(indices(p, SPEC).prod).toBe(12);
  });

  it('refuses specs that do not fit (pvio bug → InvariantError)', () => {
    const p = page();
    expect(() => new ByteRingProducer(p, { ...SPEC, size: 48 })).toThrow(InvariantError);
    expect(() => new ByteRingProducer(p, { ...SPEC, dataOffset: 4090 })).toThrow(InvariantError);
    expect(() => new ByteRingProducer(p, { ...SPEC, consOffset: 66 })).toThrow(InvariantError);
    expect(() => new ByteRingProducer(p, { ...SPEC, prodOffset: 32 })).toThrow(InvariantError);
  });

  it('matches a plain-array model for random chunk sizes and start indices near 2^32', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0xffffff00, max: 0xffffffff }),
        fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 100 })), { maxLength: 60 }),
        (start, ops) => {
          const p = page();
          setIndices(p, SPEC, start, start);
          const prod = new ByteRingProducer(p, SPEC);
          const cons = new ByteRingConsumer(p, SPEC);
          const model: number[] = [];
          let next = 0;
          for (const [isWrite, len] of ops) {
            if (isWrite) {
              const chunk = seq(len, next);
              const n = prod.write(chunk);
              expect(n).toBe(Math.min(len, 64 - model.length));
              for (let i = 0; i < n; i++) model.push(chunk[i]);
              next += n;
            } else {
              const into = new Uint8Array(len);
              const n = cons.read(into);
              expect(n).toBe(Math.min(len, model.length));
              expect(Array.from(into.subarray(0, n))).toEqual(model.splice(0, n));
            }
            expect(cons.available()).toBe(model.length);
            const { cons: c, prod: q } = indices(p, SPEC);
            expect((q - c) >>> 0).toBe(model.length);
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('XenStore and console ring pages', () => {
  it('xenstore_domain_interface has io/xs_wire.h offsets', () => {
    const f = XENSTORE_DOMAIN_INTERFACE.fields;
    expect(XENSTORE_DOMAIN_INTERFACE.size).toBe(2080);
    expect([f.req.offset, f.req.size, f.rsp.offset, f.rsp.size]).toEqual([0, 1024, 1024, 1024]);
    expect([f.req_cons.offset, f.req_prod.offset, f.rsp_cons.offset, f.rsp_prod.offset]).toEqual([2048, 2052, 2056, 2060]);
    expect([f.server_features.offset, f.connection.offset, f.error.offset, f.evtchn_port.offset]).toEqual([2064, 2068, 2072, 2076]);
  });

  it('xencons_interface has io/console.h offsets', () => {
    const f = XENCONS_INTERFACE.fields;
    expect(XENCONS_INTERFACE.size).toBe(3088);
    expect([f.in.offset, f.in.size, f.out.offset, f.out.size]).toEqual([0, 1024, 1024, 2048]);
    expect([f.in_cons.offset, f.in_prod.offset, f.out_cons.offset, f.out_prod.offset]).toEqual([3072, 3076, 3080, 3084]);
  });

  it('guest and xenstored ends talk over one page in both directions', () => {
    const p = page();
    const g = xenstoreGuestEnds(p);
    const d = xenstoreDaemonEnds(p);
    expect(g.req.write(seq(1500))).toBe(1024);
    const buf = new Uint8Array(2048);
    expect(d.req.read(buf)).toBe(1024);
    expect(buf.subarray(0, 1024)).toEqual(seq(1024));
    expect(d.rsp.write(seq(3, 7))).toBe(3);
    expect(g.rsp.read(buf)).toBe(3);
    const dv = new DataView(p.buffer);
    expect(dv.getUint32(2052, true)).toBe(1024); // req_prod
    expect(dv.getUint32(2048, true)).toBe(1024); // req_cons
    expect(dv.getUint32(2060, true)).toBe(3); // rsp_prod
  });

  it('console guest writes out (2048 bytes), dom0 writes in (1024 bytes)', () => {
    const p = page();
    const g = consoleGuestEnds(p);
    const d = consoleDom0Ends(p);
    expect(g.out.size).toBe(2048);
    expect(d.in.size).toBe(1024);
    const text = new TextEncoder().encode('hello from domU\n');
    expect(g.out.write(text)).toBe(text.length);
    const buf = new Uint8Array(64);
    const n = d.out.read(buf);
    expect(new TextDecoder().decode(buf.subarray(0, n))).toBe('hello from domU\n');
    expect(d.in.write(seq(5))).toBe(5);
    expect(g.in.read(buf)).toBe(5);
    expect(new DataView(p.buffer).getUint32(3084, true)).toBe(text.length); // out_prod
  });

  it('refuses a page smaller than the interface', () => {
    expect(() => xenstoreGuestEnds(new Uint8Array(new SharedArrayBuffer(2048)))).toThrow(InvariantError);
    expect(() => consoleGuestEnds(new Uint8Array(new SharedArrayBuffer(3084)))).toThrow(InvariantError);
  });
});
