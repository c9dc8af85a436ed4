/**
 * CowStore (blkback/cow-store.ts): reads from the base until a cluster is written,
 * copy-up of partly written clusters, the base never written, the allocation map
 * persisted on flush and close, discard that hides the base, resize, read-only
 * use, typed open errors — and a long random run checked against a plain model.
 */
import { describe, expect, it } from 'vitest';
import { existsSync, readFileSync, statSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { COW_CLUSTER_SIZE, CowStore } from '../blkback/cow-store.ts';
import { punchHoleAvailable } from '../blkback/file-io.ts';
import { StorageError } from '../blkback/storage.ts';
import { allZero, caught, page, pattern, readSync, sameBytes, tempDir, writeSync } from './fixtures/storage-helpers.ts';

const C = COW_CLUSTER_SIZE;
const dir = tempDir('pvio-cow-');

/** A base image of `size` bytes of `pattern(size, seed)` with an mtime in the past; returns its path. */
function makeBase(name: string, size: number, seed: number): string {
  const path = join(dir(), name);
  writeFileSync(path, pattern(size, seed));
  utimesSync(path, 1_000_000, 1_000_000);
  return path;
}

describe('CowStore', () => {
  it('reads the base where nothing was written; writes go to a new sparse overlay; the base is never written', async () => {
    const base = makeBase('base1.img', 16 * C, 1);
    const overlay = join(dir(), 'ov1.img');
    const store = CowStore.open({ base, overlay, readOnly: false });
    expect(store.sizeBytes).toBe(16 * C);
    expect([store.canFlush, store.canDiscard, store.discardZeroes, store.discardGranularity]).toEqual([true, true, true, C]);
    expect(statSync(overlay).size).toBe(16 * C);
    expect(statSync(overlay).blocks).toBe(0);
    expect(sameBytes(readSync(store, 0, 16 * C), pattern(16 * C, 1))).toBe(true);

    const data = pattern(2 * C, 9);
    writeSync(store, 4 * C, data); // two whole clusters: no copy-up needed
    expect(store.allocatedClusters).toBe(2);
    const disk = readSync(store, 0, 16 * C);
    const expected = pattern(16 * C, 1);
    expected.set(data, 4 * C);
    expect(sameBytes(disk, expected)).toBe(true);
    expect(sameBytes(readFileSync(overlay).subarray(4 * C, 6 * C), data)).toBe(true);
    expect(store.counters).toMatchObject({ reads: 2, writes: 1, bytesWritten: 2 * C, errors: 0 });
    await store.close();

    expect(sameBytes(readFileSync(base), pattern(16 * C, 1))).toBe(true);
    expect(statSync(base).mtimeMs).toBe(1_000_000_000);
  });

  it('a partial-cluster write copies the rest of the cluster from the base first', async () => {
    const base = makeBase('base2.img', 4 * C, 2);
    const overlay = join(dir(), 'ov2.img');
    const store = CowStore.open({ base, overlay, readOnly: false });
    // 1 KiB in the middle of cluster 1, and a write straddling clusters 2 and 3.
    writeSync(store, C + 8192, pattern(1024, 20));
    writeSync(store, 3 * C - 512, pattern(1024, 21));
    expect(store.allocatedClusters).toBe(3);
    const expected = pattern(4 * C, 2);
    expected.set(pattern(1024, 20), C + 8192);
    expected.set(pattern(1024, 21), 3 * C - 512);
    expect(sameBytes(readSync(store, 0, 4 * C), expected)).toBe(true);
    // The overlay itself holds the base's bytes around the write (the copy-up).
    const ov = readFileSync(overlay);
    expect(sameBytes(ov.subarray(C, 4 * C), expected.subarray(C, 4 * C))).toBe(true);
    expect(allZero(ov.subarray(0, C))).toBe(true);
    await store.close();
  });

  it('persists the map on flush and on close: a reopened overlay keeps its writes', async () => {
    const base = makeBase('base3.img', 8 * C, 3);
    const overlay = join(dir(), 'ov3.img');
    const a = CowStore.open({ base, overlay, readOnly: false });
    writeSync(a, 512, pattern(512, 30));
    expect(a.submit({ id: 1, op: 'flush', offset: 0, iov: [] })).toBe(0);
    expect(existsSync(`${overlay}.map`)).toBe(true);
    // A second opener sees what the flush made durable...
    const b = CowStore.open({ base, overlay, readOnly: true });
    expect(sameBytes(readSync(b, 512, 512), pattern(512, 30))).toBe(true);
    await b.close();
    // ...and what close wrote.
    writeSync(a, 5 * C, pattern(C, 31));
    await a.close();
    const c = CowStore.open({ base, overlay, readOnly: false });
    expect(c.allocatedClusters).toBe(2);
    const expected = pattern(8 * C, 3);
    expected.set(pattern(512, 30), 512);
    expected.set(pattern(C, 31), 5 * C);
    expect(sameBytes(readSync(c, 0, 8 * C), expected)).toBe(true);
    await c.close();
    expect(sameBytes(readFileSync(base), pattern(8 * C, 3))).toBe(true);
  });

  it('discard hides the base: the range reads zeroes, whole clusters are punched out of the overlay', async () => {
    const base = makeBase('base4.img', 8 * C, 4);
    const overlay = join(dir(), 'ov4.img');
    const store = CowStore.open({ base, overlay, readOnly: false });
    writeSync(store, 2 * C, pattern(4 * C, 40));
    expect(store.submit({ id: 1, op: 'flush', offset: 0, iov: [] })).toBe(0);
    // The written clusters, exactly: punched out of the overlay.
    const before = statSync(overlay).blocks;
    expect(store.submit({ id: 2, op: 'discard', offset: 2 * C, length: 4 * C, iov: [] })).toBe(0);
    if (punchHoleAvailable) expect(before - statSync(overlay).blocks).toBeGreaterThanOrEqual((4 * C) / 512);
    expect(store.allocatedClusters).toBe(4);
    // From the middle of cluster 1 (unwritten: base data) to the middle of cluster 6.
    const off = C + 4096;
    const len = 6 * C - 8192;
    expect(store.submit({ id: 3, op: 'discard', offset: off, length: len, iov: [] })).toBe(0);
    const expected = pattern(8 * C, 4);
    expected.fill(0, off, off + len);
    expect(sameBytes(readSync(store, 0, 8 * C), expected)).toBe(true);
    expect(store.counters).toMatchObject({ discards: 2, bytesDiscarded: 4 * C + len, errors: 0 });
    await store.close();
    const again = CowStore.open({ base, overlay, readOnly: true });
    expect(sameBytes(readSync(again, 0, 8 * C), expected)).toBe(true);
    await again.close();
  });

  it('resize: grown space reads zeroes, also where a shrink cut the base off', async () => {
    const base = makeBase('base5.img', 4 * C, 5);
    const overlay = join(dir(), 'ov5.img');
    const store = CowStore.open({ base, overlay, readOnly: false });
    writeSync(store, 0, pattern(512, 50));
    await store.resize(8 * C);
    expect(store.sizeBytes).toBe(8 * C);
    expect(statSync(overlay).size).toBe(8 * C);
    expect(allZero(readSync(store, 4 * C, 4 * C))).toBe(true);
    expect(sameBytes(readSync(store, 512, 4 * C - 512), pattern(4 * C, 5).subarray(512))).toBe(true);

    await store.resize(C + 4096); // cuts cluster 1 and drops clusters 2..7
    await store.resize(4 * C);
    const expected = pattern(4 * C, 5);
    expected.set(pattern(512, 50), 0);
    expected.fill(0, C + 4096);
    expect(sameBytes(readSync(store, 0, 4 * C), expected)).toBe(true);
    await store.close();
    const again = CowStore.open({ base, overlay, readOnly: true });
    expect(again.sizeBytes).toBe(4 * C);
    expect(sameBytes(readSync(again, 0, 4 * C), expected)).toBe(true);
    await again.close();
  });

  it('read-only: writes answer -1, discards -2, resize rejects; the map must exist', async () => {
    const base = makeBase('base6.img', 2 * C, 6);
    const overlay = join(dir(), 'ov6.img');
    expect(((await caught(() => CowStore.open({ base, overlay, readOnly: true }))) as StorageError).errno).toBe('ENOENT');
    await CowStore.open({ base, overlay, readOnly: false }).close();
    const store = CowStore.open({ base, overlay, readOnly: true });
    expect([store.readOnly, store.canFlush, store.canDiscard]).toEqual([true, false, false]);
    expect(store.submit({ id: 1, op: 'write', offset: 0, iov: [page(1)] })).toBe(-1);
    expect(store.submit({ id: 2, op: 'discard', offset: 0, length: 512, iov: [] })).toBe(-2);
    expect(store.submit({ id: 3, op: 'flush', offset: 0, iov: [] })).toBe(0);
    expect(((await caught(store.resize(4 * C))) as StorageError).errno).toBe('EROFS');
    expect(sameBytes(readSync(store, 0, 2 * C), pattern(2 * C, 6))).toBe(true);
    await store.close();
    expect(store.submit({ id: 4, op: 'read', offset: 0, iov: [page()] })).toBe(-1);
  });

  it('open errors are typed: missing base, an overlay holding data without a map, a bad map, a changed base', async () => {
    const overlay = join(dir(), 'ov7.img');
    const missing = await caught(() => CowStore.open({ base: join(dir(), 'nope.img'), overlay, readOnly: false }));
    expect(missing).toBeInstanceOf(StorageError);
    expect((missing as StorageError).errno).toBe('ENOENT');
    expect(existsSync(overlay)).toBe(false);

    const base = makeBase('base7.img', 2 * C, 7);
    writeFileSync(overlay, pattern(4096, 1));
    expect(((await caught(() => CowStore.open({ base, overlay, readOnly: false }))) as StorageError).errno).toBe('EEXIST');
    expect(sameBytes(readFileSync(overlay), pattern(4096, 1))).toBe(true); // left alone

    truncateSync(overlay, 0);
    await CowStore.open({ base, overlay, readOnly: false }).close();
    writeFileSync(`${overlay}.map`, 'not a map');
    expect(((await caught(() => CowStore.open({ base, overlay, readOnly: false }))) as StorageError).errno).toBe('EINVAL');

    const overlay2 = join(dir(), 'ov7b.img');
    await CowStore.open({ base, overlay: overlay2, readOnly: false }).close();
    truncateSync(base, C);
    const changed = await caught(() => CowStore.open({ base, overlay: overlay2, readOnly: false }));
    expect((changed as StorageError).errno).toBe('EINVAL');
    expect((changed as StorageError).message).toContain(base);

    const badCluster = await caught(() => CowStore.open({ base, overlay: join(dir(), 'ov7c.img'), readOnly: false, clusterSize: 3000 }));
    expect((badCluster as StorageError).errno).toBe('EINVAL');
  });

  it('a long random run of writes, discards, reads, flushes and resizes matches a plain byte model, also after reopening', async () => {
    const cluster = 4096;
    const base = makeBase('base8.img', 64 * cluster + 1536, 8); // the last cluster is partial
    const overlay = join(dir(), 'ov8.img');
    const open = (): CowStore => CowStore.open({ base, overlay, readOnly: false, clusterSize: cluster });
    let store = open();
    let model = pattern(64 * cluster + 1536, 8);
    let seed = 12345;
    const rand = (n: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return (seed >>> 8) % n;
    };
    for (let i = 0; i < 600; i++) {
      const sectors = Math.floor(model.byteLength / 512);
      const start = rand(sectors);
      const count = 1 + rand(Math.min(40, sectors - start));
      const off = start * 512;
      const len = count * 512;
      const op = rand(20);
      if (op < 8) {
        const data = pattern(len, i);
        writeSync(store, off, data, i);
        model.set(data, off);
      } else if (op < 12) {
        expect(store.submit({ id: i, op: 'discard', offset: off, length: len, iov: [] })).toBe(0);
        model.fill(0, off, off + len);
      } else if (op < 18) {
        expect(sameBytes(readSync(store, off, len, i), model.subarray(off, off + len))).toBe(true);
      } else if (op < 19) {
        expect(store.submit({ id: i, op: 'flush', offset: 0, iov: [] })).toBe(0);
        if (rand(2) === 0) {
          await store.close();
          store = open();
        }
      } else {
        const size = (16 + rand(80)) * 1024 + 512 * rand(2);
        await store.resize(size);
        const next = new Uint8Array(size);
        next.set(model.subarray(0, size));
        model = next;
      }
    }
    await store.close();
    store = open();
    expect(store.sizeBytes).toBe(model.byteLength);
    const whole = Math.floor(model.byteLength / 512) * 512;
    expect(sameBytes(readSync(store, 0, whole), model.subarray(0, whole))).toBe(true);
    await store.close();
    expect(sameBytes(readFileSync(base), pattern(64 * cluster + 1536, 8))).toBe(true);
  });
});
