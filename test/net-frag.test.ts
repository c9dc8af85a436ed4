// FragAllocator (netfront/frag.ts): frames carved from shared chunks are private
// copies — each equals its source bytes, later copies never overwrite a live one,
// a frame built from parts equals their concatenation even when it outgrows its
// chunk, and an aborted frame leaves nothing behind. Recycling: a chunk whose frames
// were all released is reused, a pinned chunk never is, and a random mix of
// releases, pins and new frames never overwrites a frame still live.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { FragAllocator, type FragChunk } from '../netfront/frag.ts';

const bytes = (n: number, seed: number) => {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
};
/** Byte-for-byte equality (fast on large arrays; toEqual walks them element by element). */
const same = (a: Uint8Array, b: Uint8Array) => a.length === b.length && Buffer.compare(a, b) === 0;

describe('FragAllocator', () => {
  it('copies are private and stay intact while later copies are made', () => {
    fc.assert(fc.property(fc.array(fc.record({ len: fc.integer({ min: 0, max: 9000 }), off: fc.integer({ min: 0, max: 100 }) }), { maxLength: 60 }), (specs) => {
      const a = new FragAllocator(16 * 1024);
      const out: Array<{ f: Uint8Array; want: Uint8Array }> = [];
      specs.forEach(({ len, off }, k) => {
        const src = bytes(off + len + 3, k);
        const f = a.copy(src, off, len);
        src.fill(0xee); // the source changes afterwards: the copy must not
        out.push({ f, want: bytes(off + len + 3, k).subarray(off, off + len) });
      });
      for (const { f, want } of out) expect(same(f, want)).toBe(true);
    }), { numRuns: 60 });
  });

  it('a frame built from parts equals their concatenation, even past its chunk', () => {
    fc.assert(fc.property(fc.array(fc.array(fc.integer({ min: 0, max: 4096 }), { minLength: 1, maxLength: 18 }), { maxLength: 12 }), (frames) => {
      const a = new FragAllocator(8 * 1024);
      const built: Array<{ f: Uint8Array; want: Uint8Array }> = [];
      frames.forEach((parts, k) => {
        a.start(parts[0]); // room for the first part only: later parts may move the frame
        const want = new Uint8Array(parts.reduce((x, y) => x + y, 0));
        let at = 0;
        parts.forEach((len, j) => {
          const page = bytes(4096, k * 100 + j);
          const off = 4096 - len;
          a.append(page, off, len);
          want.set(page.subarray(off), at);
          at += len;
        });
        expect(a.building).toBe(want.length);
        built.push({ f: a.finish(), want });
      });
      for (const { f, want } of built) expect(same(f, want)).toBe(true);
    }), { numRuns: 60 });
  });

  it('abort drops a frame; misuse is refused', () => {
    const a = new FragAllocator(1024);
    const first = a.copy(bytes(100, 1));
    a.start(50);
    a.append(bytes(50, 2), 0, 50);
    a.abort();
    expect(a.building).toBe(0);
    const second = a.copy(bytes(60, 3));
    expect(first).toEqual(bytes(100, 1));
    expect(second).toEqual(bytes(60, 3));
    expect(() => a.append(bytes(4, 0), 0, 4)).toThrow(/no frame started/);
    expect(() => a.finish()).toThrow(/no frame started/);
    a.start(10);
    expect(() => a.start(10)).toThrow(/already/);
    expect(() => a.append(bytes(4, 0), 2, 4)).toThrow(RangeError);
  });

  it('a chunk is reused once all its frames are released; a pinned one never is', () => {
    const a = new FragAllocator(1024);
    const f1 = a.copy(bytes(500, 1));
    const c1 = a.lastChunk;
    a.copy(bytes(400, 2));
    expect(a.lastChunk).toBe(c1);
    a.release(c1);
    a.release(c1);
    a.copy(bytes(600, 3)); // does not fit: a new chunk; c1 has nothing live, so it is freed
    expect(a.lastChunk).not.toBe(c1);
    a.copy(bytes(600, 4)); // the next new chunk is c1 again
    expect(a.lastChunk).toBe(c1);
    expect(a.counters.chunksReused).toBe(1);
    expect(f1.buffer).toBe(c1.buf.buffer); // (its bytes were overwritten: it had been released)
    const pinned = a.lastChunk;
    a.pin(pinned);
    a.release(pinned);
    a.copy(bytes(600, 5));
    a.copy(bytes(600, 6));
    expect(a.lastChunk).not.toBe(pinned);
  });

  it('random releases, pins and new frames never overwrite a live frame', () => {
    fc.assert(fc.property(fc.array(fc.record({ op: fc.integer({ min: 0, max: 3 }), len: fc.integer({ min: 0, max: 3000 }), pick: fc.nat() }), { maxLength: 200 }), (ops) => {
      const a = new FragAllocator(4096);
      const live: Array<{ f: Uint8Array; want: Uint8Array; chunk: FragChunk }> = [];
      const kept: Array<{ f: Uint8Array; want: Uint8Array }> = [];
      ops.forEach(({ op, len, pick }, k) => {
        if (op <= 1 || live.length === 0) {
          const want = bytes(len, k);
          live.push({ f: a.copy(want), want, chunk: a.lastChunk });
        } else {
          const [x] = live.splice(pick % live.length, 1);
          if (op === 2) a.release(x.chunk); // given back: its bytes may be reused
          else {
            a.pin(x.chunk); // kept for good
            kept.push(x);
          }
        }
        for (const x of [...live, ...kept]) expect(same(x.f, x.want)).toBe(true);
      });
    }), { numRuns: 60 });
  });
});
