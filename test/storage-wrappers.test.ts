/**
 * The experiment wrappers (blkback/store-wrappers.ts) over inner stores that answer
 * synchronously and ones that answer later, by id, out of order: injected errors
 * (reproducible, never reaching the inner store), added latency, and the JSON-lines
 * trace; plus what every wrapper passes through.
 */
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { InvariantError } from '../rings/errors.ts';
import { MemoryStore } from '../blkback/memory-store.ts';
import { ErrorStore, LatencyStore, TraceStore } from '../blkback/store-wrappers.ts';
import { STORAGE_PENDING, StorageError, type StorageStatus } from '../blkback/storage.ts';
import { allZero, caught, completions, page, tempDir } from './fixtures/storage-helpers.ts';

const dir = tempDir('pvio-wrappers-');

/** The parsed lines of a trace file. */
function traceLines(path: string): Array<Record<string, unknown>> {
  return readFileSync(path, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** Submits `n` one-page writes (ids 0..n-1, page i at i * 4096, filled with i + 1) and returns their answers. */
function writes(store: { submit: MemoryStore['submit'] }, n: number): number[] {
  return Array.from({ length: n }, (_, i) => store.submit({ id: i, op: 'write', offset: i * 4096, iov: [page((i % 255) + 1)] }));
}

describe('ErrorStore', () => {
  it('fails about `rate` of reads and writes with -1, never reaching the inner store, reproducibly by seed', async () => {
    const inner = new MemoryStore(400 * 4096);
    const store = new ErrorStore(inner, 0.25, 7);
    const answers = writes(store, 400);
    const failed = answers.flatMap((st, i) => (st === -1 ? [i] : []));
    expect(answers.every((st) => st === 0 || st === -1)).toBe(true);
    expect(failed.length).toBe(store.injected);
    expect(failed.length).toBeGreaterThan(60);
    expect(failed.length).toBeLessThan(140);
    expect(inner.counters.writes).toBe(400 - failed.length);
    for (const i of failed) expect(allZero(inner.data.subarray(i * 4096, i * 4096 + 4096))).toBe(true);
    expect(store.counters).toMatchObject({ writes: 400, errors: failed.length, bytesWritten: (400 - failed.length) * 4096 });
    // Flush and discard always pass.
    for (let i = 0; i < 50; i++) expect(store.submit({ id: 1000 + i, op: 'flush', offset: 0, iov: [] })).toBe(0);
    expect(store.submit({ id: 2000, op: 'discard', offset: 0, length: 4096, iov: [] })).toBe(0);

    const same = new ErrorStore(new MemoryStore(400 * 4096), 0.25, 7);
    expect(writes(same, 400)).toEqual(answers);
    const other = new ErrorStore(new MemoryStore(400 * 4096), 0.25, 8);
    expect(writes(other, 400)).not.toEqual(answers);
    await Promise.all([store.close(), same.close(), other.close()]);
  });

  it('over an asynchronous, reordering inner store: injected errors answer at once, the rest complete by id', async () => {
    const inner = new MemoryStore(64 * 4096, { asyncDelayMs: 2, reorder: true });
    const store = new ErrorStore(inner, 0.5, 3);
    const { done, waitFor } = completions(store);
    const answers = writes(store, 64);
    const pending = answers.flatMap((st, i) => (st === STORAGE_PENDING ? [i] : []));
    expect(answers.filter((st) => st === -1)).toHaveLength(store.injected);
    expect(pending.length).toBeGreaterThan(10);
    expect(done).toHaveLength(0);
    await waitFor(pending.length);
    expect(done.map(([id]) => id)).toEqual([...pending].reverse());
    expect(done.every(([, st]) => st === 0)).toBe(true);
    await store.close();
  });

  it('refuses a rate outside 0..1 with a typed error', () => {
    for (const rate of [-0.1, 1.5, Number.NaN]) {
      expect(() => new ErrorStore(new MemoryStore(4096), rate)).toThrow(StorageError);
    }
  });
});

describe('LatencyStore', () => {
  it('completes every request asynchronously, at least latencyUs after a synchronous inner store answered', async () => {
    const inner = new MemoryStore(16 * 4096);
    const store = new LatencyStore(inner, 3000);
    const { done, waitFor } = completions(store);
    const t0 = performance.now();
    expect(writes(store, 8).every((st) => st === STORAGE_PENDING)).toBe(true);
    expect(store.submit({ id: 8, op: 'read', offset: 0, iov: [page()] })).toBe(STORAGE_PENDING);
    expect(store.submit({ id: 9, op: 'read', offset: 1 << 30, iov: [page()] })).toBe(STORAGE_PENDING); // out of range
    expect(done).toHaveLength(0);
    expect(inner.data[0]).toBe(1); // the inner store did the work at once
    await waitFor(10);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(3);
    expect(done.map(([id]) => id)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(done.at(-1)![1]).toBe(-1);
    expect(store.counters).toMatchObject({ writes: 8, reads: 2, errors: 1, bytesWritten: 8 * 4096, bytesRead: 4096 });
    await store.close();
  });

  it('sub-millisecond latency is never early', async () => {
    const store = new LatencyStore(new MemoryStore(4096), 300);
    const at: number[] = [];
    store.setCompletionHandler(() => { at.push(performance.now()); });
    const t0 = performance.now();
    expect(store.submit({ id: 1, op: 'flush', offset: 0, iov: [] })).toBe(STORAGE_PENDING);
    await store.close();
    expect(at).toHaveLength(1);
    expect(at[0]! - t0).toBeGreaterThanOrEqual(0.3);
  });

  it('over a reordering inner store completes in the inner store\'s order; close waits for the delayed ones', async () => {
    const inner = new MemoryStore(8 * 4096, { asyncDelayMs: 1, reorder: true });
    const store = new LatencyStore(inner, 2000);
    const { done } = completions(store);
    writes(store, 8);
    expect(() => store.submit({ id: 3, op: 'flush', offset: 0, iov: [] })).toThrow(InvariantError);
    await store.close();
    expect(done.map(([id]) => id)).toEqual([7, 6, 5, 4, 3, 2, 1, 0]);
    expect(store.inFlight).toBe(0);
    expect(store.submit({ id: 99, op: 'read', offset: 0, iov: [page()] })).toBe(-1);
  });
});

describe('TraceStore', () => {
  it('writes one JSON line per request: time, domid, op, sector, sectors, latency, status', async () => {
    const path = join(dir(), 'sub', 'trace.jsonl');
    const store = new TraceStore(new MemoryStore(64 * 4096), path, 7);
    const before = Date.now();
    expect(store.submit({ id: 1, op: 'write', offset: 8 * 512, iov: [page(1), page(2).subarray(0, 1024)] })).toBe(0);
    expect(store.submit({ id: 2, op: 'read', offset: 16 * 512, iov: [page()] })).toBe(0);
    expect(store.submit({ id: 3, op: 'flush', offset: 0, iov: [] })).toBe(0);
    expect(store.submit({ id: 4, op: 'discard', offset: 4096, length: 8192, iov: [] })).toBe(0);
    expect(store.submit({ id: 5, op: 'read', offset: 1 << 30, iov: [page()] })).toBe(-1);
    await store.close();
    const lines = traceLines(path);
    expect(lines.map(({ op, domid, sector, sectors, status }) => ({ op, domid, sector, sectors, status }))).toEqual([
      { op: 'write', domid: 7, sector: 8, sectors: 10, status: 0 },
      { op: 'read', domid: 7, sector: 16, sectors: 8, status: 0 },
      { op: 'flush', domid: 7, sector: 0, sectors: 0, status: 0 },
      { op: 'discard', domid: 7, sector: 8, sectors: 16, status: 0 },
      { op: 'read', domid: 7, sector: 2 ** 21, sectors: 8, status: -1 },
    ]);
    for (const l of lines) {
      expect(Object.keys(l)).toEqual(['time', 'domid', 'op', 'sector', 'sectors', 'latency', 'status']);
      expect(l.time as number).toBeGreaterThanOrEqual(before - 1);
      expect(l.time as number).toBeLessThanOrEqual(Date.now() + 1);
      expect(l.latency as number).toBeGreaterThanOrEqual(0);
      expect(l.latency as number).toBeLessThan(1e6);
    }
  });

  it('over latency and an out-of-order inner store: lines follow completions, with the latency the caller saw', async () => {
    const path = join(dir(), 'trace-latency.jsonl');
    const inner = new MemoryStore(8 * 4096, { asyncDelayMs: 1, reorder: true });
    const store = new TraceStore(new LatencyStore(inner, 4000), path, 2);
    const { done } = completions(store);
    for (let i = 0; i < 4; i++) expect(store.submit({ id: i, op: 'read', offset: i * 4096, iov: [page()] })).toBe(STORAGE_PENDING);
    await store.close();
    expect(done.map(([id]) => id)).toEqual([3, 2, 1, 0]);
    const lines = traceLines(path);
    expect(lines.map((l) => l.sector)).toEqual([24, 16, 8, 0]);
    for (const l of lines) expect(l.latency as number).toBeGreaterThanOrEqual(4000);
  });

  it('appends to an existing trace, and an unopenable path is a typed error', async () => {
    const path = join(dir(), 'append.jsonl');
    for (let run = 0; run < 2; run++) {
      const store = new TraceStore(new MemoryStore(4096), path, run);
      store.submit({ id: 1, op: 'flush', offset: 0, iov: [] });
      await store.close();
    }
    expect(traceLines(path).map((l) => l.domid)).toEqual([0, 1]);
    const err = await caught(() => new TraceStore(new MemoryStore(4096), dir(), 1));
    expect(err).toBeInstanceOf(StorageError);
    expect((err as StorageError).errno).toBe('EISDIR');
  });
});

describe('every wrapper', () => {
  it('passes the disk\'s description and resize through to the inner store', async () => {
    const inner = new MemoryStore(8192, { canFlush: true });
    const store = new TraceStore(new LatencyStore(new ErrorStore(inner, 0), 1), join(dir(), 'pass.jsonl'), 1);
    expect([store.sizeBytes, store.readOnly, store.canFlush, store.canDiscard, store.discardZeroes, store.discardGranularity])
      .toEqual([8192, false, true, true, true, 512]);
    await store.resize(16384);
    expect(inner.sizeBytes).toBe(16384);
    expect(store.sizeBytes).toBe(16384);
    await store.close();
    const ro = new LatencyStore(new MemoryStore(4096, { readOnly: true }), 1);
    expect([ro.readOnly, ro.canDiscard]).toEqual([true, false]);
    const statuses: StorageStatus[] = [];
    ro.setCompletionHandler((_, st) => statuses.push(st));
    ro.submit({ id: 1, op: 'discard', offset: 0, length: 512, iov: [] });
    await ro.close();
    expect(statuses).toEqual([-2]);
  });
});
