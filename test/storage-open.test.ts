/**
 * openStore (blkback/open-store.ts): the store a disk's config names — raw, cow, a
 * user's module (test/fixtures/xor-store.ts) — with the wrappers stacked inner →
 * error → latency → trace, and typed errors that leave nothing open.
 */
import { describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CowStore } from '../blkback/cow-store.ts';
import { MemoryStore } from '../blkback/memory-store.ts';
import { openStore } from '../blkback/open-store.ts';
import { RawFileStore } from '../blkback/raw-file-store.ts';
import { ErrorStore, LatencyStore, TraceStore } from '../blkback/store-wrappers.ts';
import { STORAGE_PENDING, StorageError, type StorageBackend } from '../blkback/storage.ts';
import { XOR_KEY } from './fixtures/xor-store.ts';
import { caught, completions, page, pattern, readSync, sameBytes, tempDir, writeSync } from './fixtures/storage-helpers.ts';

const dir = tempDir('pvio-open-');
const xorModule = fileURLToPath(new URL('./fixtures/xor-store.ts', import.meta.url));

/** Writes a small ES module into the temp dir and returns its path. */
function module(name: string, source: string): string {
  const path = join(dir(), name);
  writeFileSync(path, source);
  return path;
}

describe('openStore', () => {
  it('opens a raw file by default, in the completion mode asked for', async () => {
    const path = join(dir(), 'raw.img');
    writeFileSync(path, pattern(8192, 1));
    const sync = await openStore({ path, readOnly: false }, { domid: 1 });
    expect(sync).toBeInstanceOf(RawFileStore);
    expect((sync as RawFileStore).sync).toBe(true);
    expect(sameBytes(readSync(sync, 0, 8192), pattern(8192, 1))).toBe(true);
    await sync.close();
    const async = await openStore({ path, readOnly: true, store: { type: 'raw' } }, { domid: 1, sync: false });
    expect((async as RawFileStore).sync).toBe(false);
    expect(async.readOnly).toBe(true);
    await async.close();
  });

  it('opens a copy-on-write overlay over its base', async () => {
    const base = join(dir(), 'base.img');
    writeFileSync(base, pattern(65536, 2));
    const path = join(dir(), 'overlay.img');
    const store = await openStore({ path, readOnly: false, store: { type: 'cow', base } }, { domid: 1 });
    expect(store).toBeInstanceOf(CowStore);
    writeSync(store, 0, pattern(512, 3));
    await store.close();
    expect(sameBytes(readFileSync(base), pattern(65536, 2))).toBe(true);
    expect(sameBytes(readFileSync(path).subarray(0, 512), pattern(512, 3))).toBe(true);
  });

  it('opens a user\'s store module: its default export gets { path, readOnly }', async () => {
    const path = join(dir(), 'xor.img');
    writeFileSync(path, new Uint8Array(16384));
    const store = await openStore({ path, readOnly: false, store: { type: 'module', module: xorModule } }, { domid: 1 });
    const data = pattern(4096, 4);
    writeSync(store, 4096, data);
    expect(sameBytes(readSync(store, 4096, 4096), data)).toBe(true);
    await store.close();
    const file = readFileSync(path);
    expect(sameBytes(file.subarray(4096, 8192), data.map((b) => b ^ XOR_KEY))).toBe(true);
    expect(file[0]).toBe(0);
    const ro = await openStore({ path, readOnly: true, store: { type: 'module', module: xorModule } }, { domid: 1 });
    expect(ro.readOnly).toBe(true);
    expect(ro.submit({ id: 1, op: 'write', offset: 0, iov: [page()] })).toBe(-1);
    expect(readSync(ro, 0, 512).every((b) => b === XOR_KEY)).toBe(true);
    await ro.close();
  });

  it('stacks the wrappers inner → error → latency → trace, so the trace records what the guest sees', async () => {
    const path = join(dir(), 'wrapped.img');
    writeFileSync(path, new Uint8Array(64 * 4096));
    const trace = join(dir(), 'wrapped.jsonl');
    const store = await openStore(
      { path, readOnly: false, store: { type: 'raw', errorRate: 0.5, errorSeed: 9, latencyUs: 2000, trace } },
      { domid: 5 },
    );
    const layers: StorageBackend[] = [store];
    while (layers.at(-1) instanceof TraceStore || layers.at(-1) instanceof LatencyStore || layers.at(-1) instanceof ErrorStore) {
      layers.push((layers.at(-1) as ErrorStore).inner);
    }
    expect(layers.map((s) => s.constructor.name)).toEqual(['TraceStore', 'LatencyStore', 'ErrorStore', 'RawFileStore']);
    const { done } = completions(store);
    for (let i = 0; i < 32; i++) expect(store.submit({ id: i, op: 'write', offset: i * 4096, iov: [page(1)] })).toBe(STORAGE_PENDING);
    await store.close();
    const injected = (layers[2] as ErrorStore).injected;
    expect(injected).toBeGreaterThan(0);
    expect(done.filter(([, st]) => st === -1)).toHaveLength(injected);
    const lines = readFileSync(trace, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { status: number; latency: number; domid: number });
    expect(lines).toHaveLength(32);
    expect(lines.filter((l) => l.status === -1)).toHaveLength(injected);
    expect(lines.every((l) => l.latency >= 2000 && l.domid === 5)).toBe(true);
  });

  it('opening errors are StorageErrors', async () => {
    const path = join(dir(), 'err.img');
    writeFileSync(path, new Uint8Array(4096));
    const cases: Array<[Parameters<typeof openStore>[0], string | undefined, string]> = [
      [{ path: join(dir(), 'missing.img'), readOnly: true }, 'ENOENT', 'missing.img'],
      [{ path, readOnly: false, store: { type: 'cow' } }, 'EINVAL', 'base=PATH'],
      [{ path, readOnly: false, store: { type: 'module' } }, 'EINVAL', 'module=PATH'],
      [{ path, readOnly: false, store: { type: 'module', module: join(dir(), 'no-such.mjs') } }, 'ERR_MODULE_NOT_FOUND', 'no-such.mjs'],
      [{ path, readOnly: false, store: { type: 'module', module: module('nodefault.mjs', 'export const x = 1;\n') } }, 'EINVAL', 'not a function'],
      [{ path, readOnly: false, store: { type: 'module', module: module('junk.mjs', 'export default () => ({ submit: 1 });\n') } }, 'EINVAL', 'did not return a StorageBackend'],
      [{ path, readOnly: false, store: { type: 'module', module: module('throws.mjs', 'export default () => { throw new Error("no disk here"); };\n') } }, undefined, 'no disk here'],
      [{ path, readOnly: false, store: { type: 'raw', errorRate: 2 } }, 'EINVAL', 'error rate'],
      [{ path, readOnly: false, store: { type: 'raw', latencyUs: -1 } }, 'EINVAL', 'latency'],
      [{ path, readOnly: false, store: { type: 'raw', trace: dir() } }, 'EISDIR', dir()],
    ];
    for (const [disk, errno, text] of cases) {
      const err = await caught(openStore(disk, { domid: 1 }));
      expect(err, text).toBeInstanceOf(StorageError);
      expect((err as StorageError).errno, text).toBe(errno);
      expect((err as StorageError).message).toContain(text);
    }
  });

  it('a module that returns a writable store for a read-only disk is refused, and that store is closed', async () => {
    const g = globalThis as { pvioOpenTestStore?: MemoryStore };
    g.pvioOpenTestStore = new MemoryStore(4096);
    const path = module('writable.mjs', 'export default () => globalThis.pvioOpenTestStore;\n');
    const err = await caught(openStore({ path: '/dev/null', readOnly: true, store: { type: 'module', module: path } }, { domid: 1 }));
    expect((err as StorageError).errno).toBe('EINVAL');
    expect(g.pvioOpenTestStore.submit({ id: 1, op: 'read', offset: 0, iov: [page()] })).toBe(-1); // closed
    delete g.pvioOpenTestStore;
  });

  it('when a wrapper cannot be made, the inner store is closed', async () => {
    const g = globalThis as { pvioOpenTestStore?: MemoryStore };
    g.pvioOpenTestStore = new MemoryStore(4096);
    const path = module('inner.mjs', 'export default () => globalThis.pvioOpenTestStore;\n');
    const err = await caught(openStore({ path: '/dev/null', readOnly: false, store: { type: 'module', module: path, trace: dir() } }, { domid: 1 }));
    expect((err as StorageError).errno).toBe('EISDIR');
    expect(g.pvioOpenTestStore.submit({ id: 1, op: 'read', offset: 0, iov: [page()] })).toBe(-1);
    delete g.pvioOpenTestStore;
  });
});
