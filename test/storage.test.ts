/**
 * blkback's storage backends (blkback/storage.ts, raw-file-store.ts, memory-store.ts):
 * readv/writev straight into SharedArrayBuffer-backed page views, short files,
 * read-only stores, flush, typed open errors, and asynchronous completion by id —
 * including out-of-order completion — so blkback can rely on both paths.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  chmodSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InvariantError, PvioError } from '../rings/errors.ts';
import {
  checkStorageRequest, SECTOR_SIZE, STORAGE_PENDING, StorageError,
  type StorageRequest, type StorageStatus,
} from '../blkback/storage.ts';
import { RawFileStore } from '../blkback/raw-file-store.ts';
import { MemoryStore } from '../blkback/memory-store.ts';
import { completions, page, pattern, sameBytes } from './fixtures/storage-helpers.ts';

const PAGE = 4096;

function concat(iov: readonly Uint8Array[]): Uint8Array {
  const total = iov.reduce((n, v) => n + v.byteLength, 0);
  const out = new Uint8Array(total);
  let pos = 0;
  for (const v of iov) {
    out.set(v, pos);
    pos += v.byteLength;
  }
  return out;
}

let dir: string;
beforeAll(() => { dir = mkdtempSync(join(tmpdir(), 'pvio-storage-')); });
afterAll(() => { rmSync(dir, { recursive: true, force: true }); });

describe('RawFileStore.createSparse', () => {
  it('makes parent directories and a sparse file of the requested size', () => {
    const path = join(dir, 'scratch', 'deep', 'disk.img');
    const size = 64 * 1024 * 1024;
    RawFileStore.createSparse(path, size);
    const st = statSync(path);
    expect(st.size).toBe(size);
    expect(st.blocks * 512).toBeLessThan(size); // no blocks allocated up front
  });

  it('rejects an invalid size with a typed error', () => {
    const path = join(dir, 'bad-size.img');
    const err = (() => { try { RawFileStore.createSparse(path, -1); } catch (e) { return e; } })();
    expect(err).toBeInstanceOf(StorageError);
    expect((err as StorageError).code).toBe('PVIO_ERR_STORAGE');
    expect((err as StorageError).errno).toBe('EINVAL');
  });
});

describe('RawFileStore, synchronous mode', () => {
  it('writev/readv move data between SharedArrayBuffer page views at offsets and the file', async () => {
    const path = join(dir, 'roundtrip.img');
    RawFileStore.createSparse(path, 1024 * 1024);
    const store = RawFileStore.open(path, { readOnly: false });
    expect(store.sizeBytes).toBe(1024 * 1024);
    expect(store.readOnly).toBe(false);
    expect(store.canFlush).toBe(true);

    // Segments as blkback builds them: first_sect..last_sect inside different pages.
    const p1 = page(); const p2 = page(); const p3 = page();
    const wiov = [p1.subarray(512, 1536), p2.subarray(0, 512), p3.subarray(3584, 4096)];
    const src = pattern(2048, 1);
    let pos = 0;
    for (const v of wiov) { v.set(src.subarray(pos, pos + v.byteLength)); pos += v.byteLength; }
    const offset = 8 * SECTOR_SIZE;
    expect(store.submit({ id: 1, op: 'write', offset, iov: wiov })).toBe(0);

    // The file holds the bytes at that offset, in vector order.
    expect(readFileSync(path).subarray(offset, offset + 2048)).toEqual(Buffer.from(src));

    // Read back into other pages at other offsets; bytes outside the views stay put.
    const q1 = page(0xaa); const q2 = page(0xaa);
    const riov = [q1.subarray(3072, 4096), q2.subarray(1024, 2048)];
    expect(store.submit({ id: 2, op: 'read', offset, iov: riov })).toBe(0);
    expect(concat(riov)).toEqual(src);
    expect(q1.subarray(0, 3072).every((b) => b === 0xaa)).toBe(true);
    expect(q2.subarray(0, 1024).every((b) => b === 0xaa)).toBe(true);
    expect(q2.subarray(2048).every((b) => b === 0xaa)).toBe(true);

    expect(store.counters).toEqual({
      reads: 1, writes: 1, flushes: 0, discards: 0, bytesRead: 2048, bytesWritten: 2048, bytesDiscarded: 0, errors: 0,
    });
    await store.close();
  });

  it('round-trips a vector longer than IOV_MAX (continues short transfers)', async () => {
    const path = join(dir, 'long-iov.img');
    RawFileStore.createSparse(path, 2 * 1024 * 1024);
    const store = RawFileStore.open(path, { readOnly: false });
    const n = 1100; // Linux IOV_MAX is 1024
    const pages = Array.from({ length: Math.ceil(n / 8) }, () => page());
    const wiov = Array.from({ length: n }, (_, i) => pages[i >> 3]!.subarray((i & 7) * 512, (i & 7) * 512 + 512));
    const src = pattern(n * 512, 2);
    let pos = 0;
    for (const v of wiov) { v.set(src.subarray(pos, pos + 512)); pos += 512; }
    expect(store.submit({ id: 1, op: 'write', offset: 4096, iov: wiov })).toBe(0);
    const rpages = Array.from({ length: Math.ceil(n / 8) }, () => page());
    const riov = Array.from({ length: n }, (_, i) => rpages[i >> 3]!.subarray((i & 7) * 512, (i & 7) * 512 + 512));
    expect(store.submit({ id: 2, op: 'read', offset: 4096, iov: riov })).toBe(0);
    expect(sameBytes(concat(riov), src)).toBe(true);
    expect(sameBytes(readFileSync(path).subarray(4096, 4096 + n * 512), src)).toBe(true);
    await store.close();
  });

  it('a short file exposes only whole sectors; a request past the last one answers -1', async () => {
    const path = join(dir, 'short.img');
    writeFileSync(path, pattern(1000, 3));
    const store = RawFileStore.open(path, { readOnly: false });
    expect(store.sizeBytes).toBe(1000); // floor(1000/512) = 1 sector
    const p = page();
    expect(store.submit({ id: 1, op: 'read', offset: 0, iov: [p.subarray(0, 512)] })).toBe(0);
    expect(p.subarray(0, 512)).toEqual(pattern(1000, 3).subarray(0, 512));
    expect(store.submit({ id: 2, op: 'read', offset: 512, iov: [p.subarray(0, 512)] })).toBe(-1);
    expect(store.submit({ id: 3, op: 'write', offset: 0, iov: [p.subarray(0, 1024)] })).toBe(-1);
    expect(store.counters.errors).toBe(2);
    expect(statSync(path).size).toBe(1000); // nothing written past the end
    await store.close();
  });

  it('a read past end of file (the file shrank after open) fills zeroes', async () => {
    const path = join(dir, 'shrinks.img');
    writeFileSync(path, pattern(8192, 4));
    const store = RawFileStore.open(path, { readOnly: true });
    truncateSync(path, 1024 + 100);
    const p1 = page(0xaa); const p2 = page(0xaa);
    const iov = [p1, p2];
    expect(store.submit({ id: 1, op: 'read', offset: 0, iov })).toBe(0);
    expect(p1.subarray(0, 1124)).toEqual(pattern(8192, 4).subarray(0, 1124));
    expect(p1.subarray(1124).every((b) => b === 0)).toBe(true);
    expect(p2.every((b) => b === 0)).toBe(true);
    expect(store.counters.bytesRead).toBe(8192);
    await store.close();
  });

  it('a read-only store answers -1 to writes and leaves the file unchanged', async () => {
    const path = join(dir, 'ro.img');
    const orig = pattern(4096, 5);
    writeFileSync(path, orig);
    const store = RawFileStore.open(path, { readOnly: true });
    expect(store.readOnly).toBe(true);
    expect(store.canFlush).toBe(false);
    const p = page(0x55);
    expect(store.submit({ id: 1, op: 'write', offset: 0, iov: [p] })).toBe(-1);
    expect(store.counters.errors).toBe(1);
    expect(store.counters.writes).toBe(1);
    expect(store.counters.bytesWritten).toBe(0);
    expect(readFileSync(path)).toEqual(Buffer.from(orig));
    expect(store.submit({ id: 2, op: 'read', offset: 0, iov: [p] })).toBe(0);
    expect(p).toEqual(orig);
    await store.close();
  });

  it('flush returns 0 and is counted', async () => {
    const path = join(dir, 'flush.img');
    RawFileStore.createSparse(path, 65536);
    const store = RawFileStore.open(path, { readOnly: false });
    expect(store.submit({ id: 1, op: 'write', offset: 0, iov: [page(7)] })).toBe(0);
    expect(store.submit({ id: 2, op: 'flush', offset: 0, iov: [] })).toBe(0);
    expect(store.counters.flushes).toBe(1);
    expect(store.counters.errors).toBe(0);
    await store.close();
  });

  it('malformed requests are answered, never thrown: -1 for bad ranges, -2 for an unknown op', async () => {
    const path = join(dir, 'malformed.img');
    RawFileStore.createSparse(path, 8192);
    const store = RawFileStore.open(path, { readOnly: false });
    const p = page();
    const bad: Array<[StorageRequest, StorageStatus]> = [
      [{ id: 1, op: 'read', offset: 100, iov: [p.subarray(0, 512)] }, -1],        // unaligned offset
      [{ id: 2, op: 'read', offset: 0, iov: [p.subarray(0, 500)] }, -1],          // partial sector
      [{ id: 3, op: 'read', offset: 8192, iov: [p.subarray(0, 512)] }, -1],       // past the end
      [{ id: 4, op: 'write', offset: 4096, iov: [p, p.subarray(0, 512)] }, -1],   // straddles the end
      [{ id: 5, op: 'read', offset: -512, iov: [p.subarray(0, 512)] }, -1],       // negative
      [{ id: 6, op: 'read', offset: 2 ** 60, iov: [p.subarray(0, 512)] }, -1],    // not a safe integer
      [{ id: 7, op: 'flush', offset: 0, iov: [p] }, -1],                          // flush with data
      [{ id: 8, op: 'trim' as never, offset: 0, iov: [] }, -2],                   // unknown op
      [{ id: 9, op: 'discard', offset: 0, iov: [] }, -1],                         // discard without a length
      [{ id: 10, op: 'discard', offset: 0, length: 4096, iov: [p] }, -1],         // discard with data
      [{ id: 11, op: 'discard', offset: 0, length: 100, iov: [] }, -1],           // partial sector
      [{ id: 12, op: 'discard', offset: 4096, length: 8192, iov: [] }, -1],       // past the end
    ];
    for (const [req, status] of bad) expect(store.submit(req)).toBe(status);
    expect(store.counters.errors).toBe(bad.length);
    await store.close();
    expect(store.submit({ id: 13, op: 'read', offset: 0, iov: [p.subarray(0, 512)] })).toBe(-1); // after close
  });

  it('close is idempotent', async () => {
    const path = join(dir, 'close.img');
    RawFileStore.createSparse(path, 4096);
    const store = RawFileStore.open(path, { readOnly: false });
    const a = store.close();
    expect(store.close()).toBe(a);
    await a;
    await store.close();
  });
});

describe('RawFileStore.open errors', () => {
  it('a missing path throws StorageError with a stable code and a message naming the path and errno', () => {
    const path = join(dir, 'no', 'such', 'disk.img');
    let err: unknown;
    try { RawFileStore.open(path, { readOnly: true }); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(StorageError);
    expect(err).toBeInstanceOf(PvioError);
    const se = err as StorageError;
    expect(se.code).toBe('PVIO_ERR_STORAGE');
    expect(se.errno).toBe('ENOENT');
    expect(se.path).toBe(path);
    expect(se.message).toBe(`cannot open ${path}: ENOENT (no such file or directory)`);
  });

  it('a directory is refused with EISDIR', () => {
    let err: unknown;
    try { RawFileStore.open(dir, { readOnly: true }); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(StorageError);
    expect((err as StorageError).errno).toBe('EISDIR');
    expect((err as StorageError).message).toContain(dir);
  });

  it.skipIf(process.getuid?.() === 0)('an unreadable file throws StorageError EACCES', () => {
    const path = join(dir, 'unreadable.img');
    writeFileSync(path, new Uint8Array(512));
    chmodSync(path, 0o000);
    let err: unknown;
    try { RawFileStore.open(path, { readOnly: true }); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(StorageError);
    expect((err as StorageError).errno).toBe('EACCES');
    expect((err as StorageError).message).toContain(path);
  });
});

describe('RawFileStore, asynchronous mode', () => {
  it('answers STORAGE_PENDING and completes several in-flight requests by id', async () => {
    const path = join(dir, 'async.img');
    RawFileStore.createSparse(path, 1024 * 1024);
    const store = RawFileStore.open(path, { readOnly: false, sync: false });
    expect(store.sync).toBe(false);
    const { done, waitFor } = completions(store);

    const n = 16;
    const srcs = Array.from({ length: n }, (_, i) => pattern(PAGE, 100 + i));
    const ids = Array.from({ length: n }, (_, i) => 1000 + i * 3);
    for (let i = 0; i < n; i++) {
      const p = page();
      p.set(srcs[i]!);
      const iov = [p.subarray(0, 1536), p.subarray(1536)];
      expect(store.submit({ id: ids[i]!, op: 'write', offset: i * PAGE, iov })).toBe(STORAGE_PENDING);
    }
    expect(done).toHaveLength(0); // never completed from inside submit
    expect(store.inFlight).toBe(n);
    await waitFor(n);
    expect(done.map(([id]) => id).sort((a, b) => a - b)).toEqual(ids);
    expect(done.every(([, s]) => s === 0)).toBe(true);

    done.length = 0;
    const rpages = Array.from({ length: n }, () => page(0xaa));
    for (let i = 0; i < n; i++) {
      expect(store.submit({ id: i, op: 'read', offset: i * PAGE, iov: [rpages[i]!] })).toBe(STORAGE_PENDING);
    }
    expect(store.submit({ id: n, op: 'flush', offset: 0, iov: [] })).toBe(STORAGE_PENDING);
    await waitFor(n + 1);
    expect(done.every(([, s]) => s === 0)).toBe(true);
    for (let i = 0; i < n; i++) expect(rpages[i]).toEqual(srcs[i]);
    expect(store.counters).toEqual({
      reads: n, writes: n, flushes: 1, discards: 0, bytesRead: n * PAGE, bytesWritten: n * PAGE, bytesDiscarded: 0, errors: 0,
    });
    await store.close();
  });

  it('continues short readv/writev on the thread pool (vector longer than IOV_MAX)', async () => {
    const path = join(dir, 'async-long-iov.img');
    RawFileStore.createSparse(path, 2 * 1024 * 1024);
    const store = RawFileStore.open(path, { readOnly: false, sync: false });
    const { done, waitFor } = completions(store);
    const n = 1100; // Linux IOV_MAX is 1024: the first readv is short
    const views = () => {
      const pages = Array.from({ length: Math.ceil(n / 8) }, () => page());
      return Array.from({ length: n }, (_, i) => pages[i >> 3]!.subarray((i & 7) * 512, (i & 7) * 512 + 512));
    };
    const wiov = views();
    const src = pattern(n * 512, 6);
    let pos = 0;
    for (const v of wiov) { v.set(src.subarray(pos, pos + 512)); pos += 512; }
    expect(store.submit({ id: 1, op: 'write', offset: 0, iov: wiov })).toBe(STORAGE_PENDING);
    await waitFor(1);
    const riov = views();
    expect(store.submit({ id: 2, op: 'read', offset: 0, iov: riov })).toBe(STORAGE_PENDING);
    await waitFor(2);
    expect(done).toEqual([[1, 0], [2, 0]]);
    expect(sameBytes(concat(riov), src)).toBe(true);
    expect(store.counters.bytesRead).toBe(n * 512);
    await store.close();
  });

  it('close waits for in-flight requests, whose completions are still delivered', async () => {
    const path = join(dir, 'async-close.img');
    RawFileStore.createSparse(path, 256 * 1024);
    const store = RawFileStore.open(path, { readOnly: false, sync: false });
    const { done } = completions(store);
    for (let i = 0; i < 8; i++) {
      expect(store.submit({ id: i, op: 'write', offset: i * PAGE, iov: [page(i + 1)] })).toBe(STORAGE_PENDING);
    }
    await store.close();
    expect(done).toHaveLength(8);
    expect(store.inFlight).toBe(0);
    expect(store.submit({ id: 99, op: 'read', offset: 0, iov: [page()] })).toBe(-1);
    const file = readFileSync(path);
    for (let i = 0; i < 8; i++) expect(file[i * PAGE]).toBe(i + 1);
  });

  it('refusals are still synchronous, and a duplicate in-flight id is an invariant failure', async () => {
    const path = join(dir, 'async-ro.img');
    RawFileStore.createSparse(path, 65536);
    const ro = RawFileStore.open(path, { readOnly: true, sync: false });
    const { done } = completions(ro);
    expect(ro.submit({ id: 1, op: 'write', offset: 0, iov: [page()] })).toBe(-1);
    expect(ro.submit({ id: 2, op: 'read', offset: 0, iov: [page()] })).toBe(STORAGE_PENDING);
    expect(() => ro.submit({ id: 2, op: 'read', offset: 0, iov: [page()] })).toThrow(InvariantError);
    await ro.close();
    expect(done).toEqual([[2, 0]]);
  });
});

describe('MemoryStore', () => {
  it('synchronous round trip through page views', async () => {
    const store = new MemoryStore(1024 * 1024 + 100);
    expect(store.sizeBytes).toBe(1024 * 1024 + 100);
    const p = page();
    p.set(pattern(PAGE, 9));
    expect(store.submit({ id: 1, op: 'write', offset: 2 * PAGE, iov: [p.subarray(512, 2048)] })).toBe(0);
    expect(store.data.subarray(2 * PAGE, 2 * PAGE + 1536)).toEqual(p.subarray(512, 2048));
    const q = page(0xaa);
    expect(store.submit({ id: 2, op: 'read', offset: 2 * PAGE, iov: [q.subarray(0, 1024), q.subarray(3584)] })).toBe(0);
    expect(concat([q.subarray(0, 1024), q.subarray(3584)])).toEqual(p.subarray(512, 2048));
    expect(store.submit({ id: 3, op: 'flush', offset: 0, iov: [] })).toBe(0);
    // The partial last sector is not addressable.
    expect(store.submit({ id: 4, op: 'read', offset: 1024 * 1024, iov: [q.subarray(0, 512)] })).toBe(-1);
    expect(store.counters).toEqual({
      reads: 2, writes: 1, flushes: 1, discards: 0, bytesRead: 1536, bytesWritten: 1536, bytesDiscarded: 0, errors: 1,
    });
    await store.close();
  });

  it('read-only memory store answers -1 to writes', () => {
    const store = new MemoryStore(8192, { readOnly: true });
    expect(store.submit({ id: 1, op: 'write', offset: 0, iov: [page(1)] })).toBe(-1);
    expect(store.data.every((b) => b === 0)).toBe(true);
  });

  it('with reorder, a batch completes in reverse order of submission', async () => {
    const store = new MemoryStore(65536, { asyncDelayMs: 5, reorder: true });
    const { done, waitFor } = completions(store);
    const ids = [10, 11, 12, 13, 14];
    for (const [i, id] of ids.entries()) {
      expect(store.submit({ id, op: 'write', offset: i * PAGE, iov: [page(i + 1)] })).toBe(STORAGE_PENDING);
    }
    expect(done).toHaveLength(0);
    await waitFor(ids.length);
    expect(done.map(([id]) => id)).toEqual([...ids].reverse());
    expect(done.every(([, s]) => s === 0)).toBe(true);
    for (let i = 0; i < ids.length; i++) expect(store.data[i * PAGE]).toBe(i + 1);
    await store.close();
  });

  it('without reorder, a delayed batch completes in submission order', async () => {
    const store = new MemoryStore(65536, { asyncDelayMs: 2 });
    const { done, waitFor } = completions(store);
    for (let id = 0; id < 4; id++) expect(store.submit({ id, op: 'read', offset: 0, iov: [page()] })).toBe(STORAGE_PENDING);
    await waitFor(4);
    expect(done.map(([id]) => id)).toEqual([0, 1, 2, 3]);
    await store.close();
  });

  it('data moves at completion; close waits; a duplicate in-flight id is an invariant failure', async () => {
    const store = new MemoryStore(65536, { asyncDelayMs: 5, reorder: true });
    const { done } = completions(store);
    const w = page(0x42);
    const r = page(0xaa);
    // Submitted write-then-read; reversed completion runs the read first.
    expect(store.submit({ id: 1, op: 'write', offset: 0, iov: [w] })).toBe(STORAGE_PENDING);
    expect(store.submit({ id: 2, op: 'read', offset: 0, iov: [r] })).toBe(STORAGE_PENDING);
    expect(() => store.submit({ id: 2, op: 'flush', offset: 0, iov: [] })).toThrow(InvariantError);
    expect(store.data[0]).toBe(0); // nothing moved yet
    await store.close();
    expect(done).toEqual([[2, 0], [1, 0]]);
    expect(r.every((b) => b === 0)).toBe(true);
    expect(store.data[0]).toBe(0x42);
    expect(store.submit({ id: 3, op: 'read', offset: 0, iov: [r] })).toBe(-1);
  });
});

describe('checkStorageRequest', () => {
  it('accepts aligned in-range requests and refuses the rest', () => {
    const v = new Uint8Array(1024);
    expect(checkStorageRequest({ id: 1, op: 'read', offset: 0, iov: [v] }, 1024, false)).toBe(0);
    expect(checkStorageRequest({ id: 1, op: 'read', offset: 512, iov: [v] }, 1024, false)).toBe(-1);
    expect(checkStorageRequest({ id: 1, op: 'write', offset: 0, iov: [v] }, 1024, true)).toBe(-1);
    expect(checkStorageRequest({ id: 1, op: 'read', offset: 0, iov: [v] }, 1023, false)).toBe(-1);
    expect(checkStorageRequest({ id: 1.5, op: 'read', offset: 0, iov: [v] }, 1024, false)).toBe(-1);
    expect(checkStorageRequest({ id: 1, op: 'flush', offset: 0, iov: [] }, 0, true)).toBe(0);
  });
});
