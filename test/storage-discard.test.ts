/**
 * Discard and resize in the storage interface (blkback/storage.ts): RawFileStore
 * really punches holes (the `pvio-punch-hole` addon built by npm install) so the
 * file's allocated blocks shrink and the range reads back zero; a store that cannot
 * discard does not advertise it and answers -2; MemoryStore zeroes; both resize.
 */
import { describe, expect, it } from 'vitest';
import { closeSync, fstatSync, openSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { punchHoleAvailable, zeroFileRange } from '../blkback/file-io.ts';
import { MemoryStore } from '../blkback/memory-store.ts';
import { RawFileStore } from '../blkback/raw-file-store.ts';
import { checkStorageRequest, STORAGE_PENDING, StorageError } from '../blkback/storage.ts';
import {
  allZero, caught, completions, page, pattern, readSync, sameBytes, tempDir, writeSync,
} from './fixtures/storage-helpers.ts';

const MiB = 1024 * 1024;
const dir = tempDir('pvio-discard-');

describe('the punch-hole addon', () => {
  it('was built by the install and loads', () => {
    expect(punchHoleAvailable, 'native/punch-hole did not build or load: run npm install and read its output').toBe(true);
  });

  it('zeroFileRange punches whole blocks and zero-writes the partial ends', () => {
    const path = join(dir(), 'zero-range.bin');
    writeFileSync(path, pattern(64 * 1024, 1));
    const fd = openSync(path, 'r+');
    const { blocks: before, blksize } = fstatSync(fd);
    zeroFileRange(fd, 1000, 40_000, blksize);
    const after = fstatSync(fd).blocks;
    closeSync(fd);
    const bytes = readFileSync(path);
    expect(sameBytes(bytes.subarray(0, 1000), pattern(64 * 1024, 1).subarray(0, 1000))).toBe(true);
    expect(allZero(bytes.subarray(1000, 41_000))).toBe(true);
    expect(sameBytes(bytes.subarray(41_000), pattern(64 * 1024, 1).subarray(41_000))).toBe(true);
    expect(bytes.byteLength).toBe(64 * 1024);
    // the whole blocks inside [1000, 41000) are freed (9 of 4 KiB: 4096..40959)
    const whole = Math.floor(41_000 / blksize) - Math.ceil(1000 / blksize);
    expect(before - after).toBe((whole * blksize) / 512);
  });
});

describe('RawFileStore discard', () => {
  it('punches holes: the allocated blocks shrink and the range reads back zero', async () => {
    const path = join(dir(), 'punch.img');
    RawFileStore.createSparse(path, 8 * MiB);
    const store = RawFileStore.open(path, { readOnly: false });
    expect(store.canDiscard).toBe(true);
    expect(store.discardZeroes).toBe(true);
    expect(store.discardGranularity).toBe(statSync(path).blksize);
    const data = pattern(4 * MiB, 2);
    for (let off = 0; off < 4 * MiB; off += MiB) writeSync(store, off, data.subarray(off, off + MiB));
    expect(store.submit({ id: 1, op: 'flush', offset: 0, iov: [] })).toBe(0);
    const before = statSync(path).blocks;
    expect(before * 512).toBeGreaterThanOrEqual(4 * MiB);

    // Sector-aligned but not block-aligned at either end: partial blocks are zeroed by writes.
    const off = 512 * 1024 + 512;
    const len = 3 * MiB - 1024;
    expect(store.submit({ id: 2, op: 'discard', offset: off, length: len, iov: [] })).toBe(0);
    const after = statSync(path).blocks;
    expect(before - after).toBeGreaterThanOrEqual((len - 2 * 4096) / 512);
    expect(statSync(path).size).toBe(8 * MiB);

    expect(allZero(readSync(store, off, len))).toBe(true);
    expect(sameBytes(readSync(store, 0, off), data.subarray(0, off))).toBe(true);
    expect(sameBytes(readSync(store, off + len, 4 * MiB - off - len), data.subarray(off + len))).toBe(true);
    expect(store.counters).toMatchObject({ discards: 1, bytesDiscarded: len, errors: 0 });
    await store.close();
  });

  it('answers a discard at once in asynchronous mode too', async () => {
    const path = join(dir(), 'punch-async.img');
    writeFileSync(path, pattern(256 * 1024, 3));
    const store = RawFileStore.open(path, { readOnly: false, sync: false });
    const { done } = completions(store);
    expect(store.submit({ id: 1, op: 'discard', offset: 65536, length: 65536, iov: [] })).toBe(0);
    expect(store.submit({ id: 2, op: 'read', offset: 0, iov: [page()] })).toBe(STORAGE_PENDING);
    await store.close();
    expect(done).toEqual([[2, 0]]);
    const bytes = readFileSync(path);
    expect(allZero(bytes.subarray(65536, 131072))).toBe(true);
    expect(sameBytes(bytes.subarray(0, 65536), pattern(256 * 1024, 3).subarray(0, 65536))).toBe(true);
  });

  it('a read-only store, or one opened with discard: false, does not advertise discard and answers -2', async () => {
    const path = join(dir(), 'no-discard.img');
    writeFileSync(path, pattern(65536, 4));
    for (const options of [{ readOnly: true }, { readOnly: false, discard: false }]) {
      const store = RawFileStore.open(path, options);
      expect(store.canDiscard).toBe(false);
      expect(store.discardZeroes).toBe(false);
      expect(store.submit({ id: 1, op: 'discard', offset: 0, length: 4096, iov: [] })).toBe(-2);
      expect(store.counters).toMatchObject({ discards: 1, bytesDiscarded: 0, errors: 1 });
      await store.close();
    }
    expect(sameBytes(readFileSync(path), pattern(65536, 4))).toBe(true);
  });
});

describe('RawFileStore resize', () => {
  it('grows with a sparse zero tail and shrinks, and requests follow the new size', async () => {
    const path = join(dir(), 'resize.img');
    writeFileSync(path, pattern(65536, 5));
    const store = RawFileStore.open(path, { readOnly: false });
    await store.resize(4 * MiB);
    expect(store.sizeBytes).toBe(4 * MiB);
    expect(statSync(path).size).toBe(4 * MiB);
    expect(allZero(readSync(store, 4 * MiB - 4096, 4096))).toBe(true);
    expect(sameBytes(readSync(store, 0, 65536), pattern(65536, 5))).toBe(true);

    await store.resize(8192);
    expect(statSync(path).size).toBe(8192);
    expect(store.submit({ id: 1, op: 'read', offset: 8192, iov: [page()] })).toBe(-1);
    expect(sameBytes(readSync(store, 0, 8192), pattern(8192, 5))).toBe(true);
    await store.close();
    const err = await caught(store.resize(4096));
    expect(err).toBeInstanceOf(StorageError);
    expect((err as StorageError).errno).toBe('EBADF');
  });

  it('rejects a read-only store (EROFS) and a bad size (EINVAL)', async () => {
    const path = join(dir(), 'resize-ro.img');
    writeFileSync(path, pattern(8192, 6));
    const ro = RawFileStore.open(path, { readOnly: true });
    expect(((await caught(ro.resize(16384))) as StorageError).errno).toBe('EROFS');
    await ro.close();
    const rw = RawFileStore.open(path, { readOnly: false });
    for (const bad of [-1, 1.5, Number.NaN]) {
      const err = await caught(rw.resize(bad));
      expect(err).toBeInstanceOf(StorageError);
      expect((err as StorageError).errno).toBe('EINVAL');
    }
    await rw.close();
    expect(statSync(path).size).toBe(8192);
  });
});

describe('MemoryStore discard and resize', () => {
  it('discard zeroes exactly the range; a read-only store answers -2', async () => {
    const store = new MemoryStore(65536);
    expect([store.canDiscard, store.discardZeroes, store.discardGranularity]).toEqual([true, true, 512]);
    store.data.set(pattern(65536, 7));
    expect(store.submit({ id: 1, op: 'discard', offset: 1024, length: 1536, iov: [] })).toBe(0);
    expect(allZero(store.data.subarray(1024, 2560))).toBe(true);
    expect(sameBytes(store.data.subarray(0, 1024), pattern(65536, 7).subarray(0, 1024))).toBe(true);
    expect(sameBytes(store.data.subarray(2560), pattern(65536, 7).subarray(2560))).toBe(true);
    expect(store.counters).toMatchObject({ discards: 1, bytesDiscarded: 1536 });

    const ro = new MemoryStore(65536, { readOnly: true });
    expect(ro.canDiscard).toBe(false);
    expect(ro.submit({ id: 1, op: 'discard', offset: 0, length: 512, iov: [] })).toBe(-2);
    expect(((await caught(ro.resize(512))) as StorageError).errno).toBe('EROFS');
  });

  it('resize keeps the bytes that fit; a queued request past the new end answers -1 at completion', async () => {
    const store = new MemoryStore(8192, { asyncDelayMs: 1 });
    const { done, waitFor } = completions(store);
    store.data.set(pattern(8192, 8));
    await store.resize(16384);
    expect(store.sizeBytes).toBe(16384);
    expect(sameBytes(store.data.subarray(0, 8192), pattern(8192, 8))).toBe(true);
    expect(allZero(store.data.subarray(8192))).toBe(true);

    expect(store.submit({ id: 1, op: 'write', offset: 8192, iov: [page(9)] })).toBe(STORAGE_PENDING);
    expect(store.submit({ id: 2, op: 'discard', offset: 0, length: 512, iov: [] })).toBe(STORAGE_PENDING);
    await store.resize(4096);
    await waitFor(2);
    expect(done).toEqual([[1, -1], [2, 0]]);
    expect(store.data.byteLength).toBe(4096);
    expect(allZero(store.data.subarray(0, 512))).toBe(true);
  });
});

describe('checkStorageRequest, discard', () => {
  it('accepts an in-range sector-multiple discard only when the store can discard', () => {
    const ok = { id: 1, op: 'discard' as const, offset: 512, length: 1024, iov: [] };
    expect(checkStorageRequest(ok, 2048, false, true)).toBe(0);
    expect(checkStorageRequest(ok, 2048, false)).toBe(-2);
    expect(checkStorageRequest({ ...ok, length: 0 }, 2048, false, true)).toBe(0);
    expect(checkStorageRequest({ ...ok, length: 2048 }, 2048, false, true)).toBe(-1);
    expect(checkStorageRequest({ ...ok, length: 1000 }, 2048, false, true)).toBe(-1);
    expect(checkStorageRequest({ ...ok, length: -512 }, 2048, false, true)).toBe(-1);
    expect(checkStorageRequest({ ...ok, offset: 100 }, 2048, false, true)).toBe(-1);
    expect(checkStorageRequest({ ...ok, length: undefined }, 2048, false, true)).toBe(-1);
    expect(checkStorageRequest({ ...ok, iov: [new Uint8Array(512)] }, 2048, false, true)).toBe(-1);
  });
});
