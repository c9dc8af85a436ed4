/**
 * DirectFileStore (blkback/direct-file-store.ts): O_DIRECT through an aligned bounce
 * arena. Data moves between SharedArrayBuffer page views and the file byte for byte
 * (reads, writes, vectors split over pages, transfers longer than a bounce slot,
 * read-modify-write when a request is not aligned to the logical block size), in
 * both completion modes — the asynchronous one with more requests than bounce slots —
 * and the data descriptor really carries O_DIRECT (/proc/self/fdinfo).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { constants, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DirectFileStore } from '../blkback/direct-file-store.ts';
import { STORAGE_PENDING, StorageError, type StorageBackend, type StorageStatus } from '../blkback/storage.ts';

const PAGE = 4096;
const page = (fill = 0) => {
  const p = new Uint8Array(new SharedArrayBuffer(PAGE));
  if (fill) p.fill(fill);
  return p;
};
function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}
const concat = (iov: readonly Uint8Array[]) => Buffer.concat(iov.map((v) => Buffer.from(v)));
const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));
/** `n` whole pages as an I/O vector. */
const pages = (n: number) => Array.from({ length: n }, () => page());

function completions(store: StorageBackend) {
  const done: Array<[number, StorageStatus]> = [];
  store.setCompletionHandler((id, status) => void done.push([id, status]));
  const waitFor = async (n: number) => {
    const deadline = Date.now() + 10_000;
    while (done.length < n) {
      if (Date.now() > deadline) throw new Error(`only ${done.length} of ${n} completions`);
      await new Promise((r) => setTimeout(r, 1));
    }
  };
  return { done, waitFor };
}

/** The open flags (octal, from /proc/self/fdinfo) of every descriptor of this process open on `path`. */
function openFlags(path: string): number[] {
  const out: number[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) !== path) continue;
      const m = /^flags:\s+([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
      if (m) out.push(parseInt(m[1], 8));
    } catch {
      /* closed meanwhile */
    }
  }
  return out;
}

let dir: string;
let img: string;
let data: Uint8Array;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'pvio-direct-'));
  img = join(dir, 'disk.img');
  data = pattern(4 << 20, 3);
  writeFileSync(img, data);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('DirectFileStore', () => {
  it('opens with O_DIRECT, finds an aligned bounce offset, and reads into page views', async () => {
    const store = DirectFileStore.open(img, { readOnly: true });
    expect(openFlags(img).some((f) => (f & constants.O_DIRECT) !== 0)).toBe(true);
    expect(store.stats.alignedOffset).not.toBeNull();
    expect(store.stats.probes).toBeGreaterThan(0);
    expect(store.sizeBytes).toBe(4 << 20);
    expect(store.readOnly).toBe(true);
    expect(store.canDiscard).toBe(false);

    // A 4 KiB page, a vector over three pages at sector offsets, and 3 MiB (three slots' worth).
    const one = page();
    expect(store.submit({ id: 1, op: 'read', offset: 8192, iov: [one] })).toBe(0);
    expect(same(one, data.subarray(8192, 12288))).toBe(true);
    const [p1, p2, p3] = pages(3);
    const iov = [p1.subarray(512, 1536), p2, p3.subarray(0, 512)];
    expect(store.submit({ id: 2, op: 'read', offset: 3 * 512, iov })).toBe(0);
    expect(same(concat(iov), data.subarray(1536, 1536 + 5632))).toBe(true);
    const big = pages(768);
    expect(store.submit({ id: 3, op: 'read', offset: 4096, iov: big })).toBe(0);
    expect(same(concat(big), data.subarray(4096, 4096 + (3 << 20)))).toBe(true);
    // Writes to a read-only store are refused.
    expect(store.submit({ id: 4, op: 'write', offset: 0, iov: [page()] })).toBe(-1);
    expect(store.counters.errors).toBe(1);
    expect(store.stats.bounceBytesIn).toBe(4096 + 5632 + (3 << 20));
    await store.close();
    expect(openFlags(img)).toEqual([]);
  });

  it('writes through the bounce arena; unaligned requests are read-modify-written on a 4096-byte-block device', async () => {
    for (const blockSize of [undefined, 4096] as const) {
      const path = join(dir, `w${blockSize ?? ''}.img`);
      writeFileSync(path, data.subarray(0, 1 << 20));
      const expected = Buffer.from(data.subarray(0, 1 << 20));
      const store = DirectFileStore.open(path, { readOnly: false, blockSize });
      expect(store.canFlush).toBe(true);
      const w1 = pattern(4096, 9);
      const pg = page();
      pg.set(w1);
      expect(store.submit({ id: 1, op: 'write', offset: 16384, iov: [pg] })).toBe(0);
      expected.set(w1, 16384);
      // 1 KiB at byte 512: inside one 4 KiB block.
      const small = page();
      small.set(pattern(1024, 11).subarray(0, 1024));
      expect(store.submit({ id: 2, op: 'write', offset: 512, iov: [small.subarray(0, 1024)] })).toBe(0);
      expected.set(small.subarray(0, 1024), 512);
      expect(store.submit({ id: 3, op: 'flush', offset: 0, iov: [] })).toBe(0);
      expect(same(readFileSync(path), expected)).toBe(true);
      const back = page();
      expect(store.submit({ id: 4, op: 'read', offset: 512, iov: [back.subarray(0, 1024)] })).toBe(0);
      expect(same(back.subarray(0, 1024), expected.subarray(512, 1536))).toBe(true);
      if (blockSize === 4096) expect(store.stats.widened).toBe(2);
      else expect(store.stats.widened).toBe(0);
      await store.close();
    }
  });

  it('asynchronous mode: more requests than bounce slots, all complete by id with the right bytes', async () => {
    const path = join(dir, 'async.img');
    writeFileSync(path, data.subarray(0, 2 << 20));
    const store = DirectFileStore.open(path, { readOnly: false, sync: false, bounceSlots: 4 });
    const { done, waitFor } = completions(store);
    const reads = Array.from({ length: 24 }, (_, i) => ({ id: 100 + i, pos: ((i * 37) % 500) * 4096, pg: page() }));
    for (const r of reads) expect(store.submit({ id: r.id, op: 'read', offset: r.pos, iov: [r.pg] })).toBe(STORAGE_PENDING);
    const wpg = page();
    wpg.set(pattern(4096, 21));
    expect(store.submit({ id: 1, op: 'write', offset: 1 << 20, iov: [wpg] })).toBe(STORAGE_PENDING);
    expect(store.inFlight).toBe(25);
    await waitFor(25);
    expect(done.every(([, s]) => s === 0)).toBe(true);
    expect(new Set(done.map(([id]) => id)).size).toBe(25);
    for (const r of reads) expect(same(r.pg, data.subarray(r.pos, r.pos + 4096))).toBe(true);
    expect(store.stats.slotWaits).toBeGreaterThan(0);
    expect(store.submit({ id: 2, op: 'flush', offset: 0, iov: [] })).toBe(STORAGE_PENDING);
    await waitFor(26);
    expect(same(readFileSync(path).subarray(1 << 20, (1 << 20) + 4096), pattern(4096, 21))).toBe(true);
    await store.close();
    expect(store.submit({ id: 3, op: 'read', offset: 0, iov: [page()] })).toBe(-1);
  });

  it('discards (holes read back as zeroes), resizes, and reports open errors as StorageError', async () => {
    const path = join(dir, 'discard.img');
    writeFileSync(path, data.subarray(0, 1 << 20));
    const store = DirectFileStore.open(path, { readOnly: false });
    if (store.canDiscard) {
      expect(store.submit({ id: 1, op: 'discard', offset: 8192, iov: [], length: 16384 })).toBe(0);
      const pg = page(0xee);
      expect(store.submit({ id: 2, op: 'read', offset: 8192, iov: [pg] })).toBe(0);
      expect(pg.every((b) => b === 0)).toBe(true);
    } else {
      expect(store.submit({ id: 1, op: 'discard', offset: 8192, iov: [], length: 16384 })).toBe(-2);
    }
    await store.resize(2 << 20);
    expect(store.sizeBytes).toBe(2 << 20);
    expect(statSync(path).size).toBe(2 << 20);
    const pg = page(0xee);
    expect(store.submit({ id: 3, op: 'read', offset: (2 << 20) - 4096, iov: [pg] })).toBe(0);
    expect(pg.every((b) => b === 0)).toBe(true);
    await store.close();
    expect(() => DirectFileStore.open(join(dir, 'missing.img'), { readOnly: true })).toThrow(StorageError);
  });
});
