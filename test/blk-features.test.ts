// blkif features between real worker domains, each negotiated through XenStore:
// indirect descriptors, persistent grants, multi-page rings, multi-queue, flush and
// barrier, a 4096-byte sector size, resize — on by default, and each switched off
// per disk in the disk spec.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, writeFileSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine } from '../toolstack/machine.ts';
import { parseDiskSpec } from '../toolstack/config.ts';
import { rpcGuest, eventually, guestPath, randomImage, sha256, dom0Disk } from './helpers.ts';
import { XOR_KEY } from './fixtures/xor-store.ts';

const dir = mkdtempSync(join(tmpdir(), 'pvio-blkf-'));
const sha = sha256;
const image = (name: string, bytes: number) => randomImage(dir, name, bytes);
type Io = { sha?: string; error?: string; status?: number };
type Info = {
  sectors: number; sectorSize: number;
  counters: { requests: number; indirectRequests: number; grantsIssued: number; persistentPool: number };
  features: { persistent: boolean; maxSegments: number; ringPages: number; queues: number; flush: boolean; barrier: boolean; discard: boolean };
  queues: Array<{ requests: number }>;
};
type Disk = {
  requests: number; indirect: number; flushes: number; barriers: number; grantMaps: number; persistentHits: number;
  persistentGrants: number; bytesWritten: number; errors: number;
  negotiated: { queues: number; ringPages: number; persistent: boolean };
};
const fill = (n: number, byte: number) => new Uint8Array(n).fill(byte);

let m: Machine;
beforeAll(async () => {
  m = await Machine.boot();
});
afterAll(async () => {
  await m?.shutdown();
  rmSync(dir, { recursive: true, force: true });
});
const disk = (name: string) => dom0Disk<Disk>(m, name);

describe('blkif features', () => {
  it('by default: 1 MiB indirect requests, persistent grants, 16-page rings, one queue per vCPU, flush and barrier, resize', async () => {
    const img = image('all.img', 8 * 1048576);
    const g = await rpcGuest(m, 'all', { vcpus: 2, memoryMiB: 64, disks: [parseDiskSpec(`${img.path},xvda,w`, dir)] });
    const info = (await g.call('diskInfo', { name: 'xvda' })) as Info;
    expect(info.features).toMatchObject({ persistent: true, maxSegments: 256, ringPages: 16, queues: 2, flush: true, barrier: true });
    expect((await disk('all/xvda')).negotiated).toEqual({ queues: 2, ringPages: 16, persistent: true, protocol: 'x86_64-abi' });

    // 3 MiB from sector 8: three indirect requests of up to 256 segments.
    const [w] = (await g.call('diskIo', { name: 'xvda', ops: [{ op: 'write', sector: 8, count: 6144, byte: 0x5a }] })) as Io[];
    expect(w.sha).toBe(sha(fill(3 * 1048576, 0x5a)));
    expect(sha(readFileSync(img.path).subarray(8 * 512, 8 * 512 + 3 * 1048576))).toBe(w.sha);
    const [r] = (await g.call('diskIo', { name: 'xvda', ops: [{ op: 'read', sector: 0, count: 16384 }] })) as Io[];
    expect(r.sha).toBe(sha(readFileSync(img.path)));
    let d = await disk('all/xvda');
    expect(d.indirect).toBeGreaterThanOrEqual(3 + 8); // 3 MiB written, 8 MiB read
    expect(d.errors).toBe(0);

    // Persistent grants: the same 32 reads twice; the second round maps nothing new.
    const reads = Array.from({ length: 32 }, (_, i) => ({ op: 'read', sector: i * 64, count: 8 }));
    await g.call('diskIo', { name: 'xvda', ops: reads });
    const before = await disk('all/xvda');
    const again = (await g.call('diskIo', { name: 'xvda', ops: reads })) as Io[];
    const host = readFileSync(img.path);
    again.forEach((x, i) => expect(x.sha).toBe(sha(host.subarray(i * 64 * 512, i * 64 * 512 + 4096))));
    d = await disk('all/xvda');
    expect(d.grantMaps).toBe(before.grantMaps);
    expect(d.persistentHits - before.persistentHits).toBe(32);
    expect(d.persistentGrants).toBeGreaterThan(0);
    expect(d.persistentGrants).toBeLessThanOrEqual(2 * 1056);

    // The cache is bounded: 16 concurrent 1 MiB reads need 16 × 257 pool pages, more
    // than 1056 per ring; blkback evicts the least recently used and stays in bounds.
    const big = Array.from({ length: 16 }, (_, i) => ({ op: 'read', sector: (i % 8) * 2048, count: 2048 }));
    const bigR = (await g.call('diskIo', { name: 'xvda', ops: big })) as Io[];
    bigR.forEach((x, i) => expect(x.sha).toBe(sha(host.subarray((i % 8) * 1048576, ((i % 8) + 1) * 1048576))));
    d = await disk('all/xvda');
    expect((d as Disk & { persistentEvictions: number }).persistentEvictions).toBeGreaterThan(0);
    expect(d.persistentGrants).toBeLessThanOrEqual(2 * 1056);

    // Both queues carried requests.
    const q = ((await g.call('diskInfo', { name: 'xvda' })) as Info).queues;
    expect(q).toHaveLength(2);
    for (const c of q) expect(c.requests).toBeGreaterThan(0);

    // Flush and a dataless barrier reach the backend.
    const fb = (await g.call('diskIo', { name: 'xvda', ops: [{ op: 'flush' }, { op: 'barrier' }] })) as Io[];
    expect(fb.every((x) => x.sha !== undefined)).toBe(true);
    d = await disk('all/xvda');
    expect(d.flushes).toBeGreaterThanOrEqual(1);
    expect(d.barriers).toBe(1);

    // Resize: the backend announces 12 MiB; the frontend picks it up and reads the new end.
    await m.resizeDisk(g.domid, 'xvda', 12 * 1048576);
    expect(statSync(img.path).size).toBe(12 * 1048576);
    await eventually(async () => ((await g.call('diskInfo', { name: 'xvda' })) as Info).sectors === 24576, 10_000, 'the new size');
    const [tail] = (await g.call('diskIo', { name: 'xvda', ops: [{ op: 'read', sector: 24576 - 8, count: 8 }] })) as Io[];
    expect(tail.sha).toBe(sha(new Uint8Array(4096)));
    await g.call('exit', {});
    await g.exit;
  });

  it('each feature switched off in the disk spec: direct 11-segment requests, fresh grants, 1 page, 1 queue, no flush or barrier', async () => {
    const img = image('none.img', 4 * 1048576);
    const spec = `max-indirect-segments=0,persistent=0,max-ring-page-order=0,max-queues=1,barrier=0,flush=0,no-discard,${img.path},xvda,w`;
    const g = await rpcGuest(m, 'none', { vcpus: 2, memoryMiB: 32, disks: [parseDiskSpec(spec, dir)] });
    const info = (await g.call('diskInfo', { name: 'xvda' })) as Info;
    expect(info.features).toMatchObject({ persistent: false, maxSegments: 11, ringPages: 1, queues: 1, flush: false, barrier: false, discard: false });
    const [w] = (await g.call('diskIo', { name: 'xvda', ops: [{ op: 'write', sector: 0, count: 2048, byte: 7 }] })) as Io[];
    expect(w.sha).toBe(sha(fill(1048576, 7)));
    expect(sha(readFileSync(img.path).subarray(0, 1048576))).toBe(w.sha);
    let d = await disk('none/xvda');
    expect(d.requests).toBe(Math.ceil(256 / 11));
    expect(d.indirect).toBe(0);
    expect(d.grantMaps).toBe(256); // one map per page, none kept
    expect(d.persistentGrants).toBe(0);
    // flush() has nothing to send; barrier() and discard() are refused by the frontend.
    const r = (await g.call('diskIo', { name: 'xvda', ops: [{ op: 'flush' }, { op: 'barrier' }, { op: 'discard', sector: 0, count: 8 }] })) as Io[];
    expect(r[0].sha).toBeDefined();
    expect(r[1]).toMatchObject({ status: -2 });
    expect(r[2]).toMatchObject({ status: -2 });
    d = await disk('none/xvda');
    expect(d.flushes + d.barriers).toBe(0);
    expect(d.negotiated).toEqual({ queues: 1, ringPages: 1, persistent: false, protocol: 'x86_64-abi' });
    await g.call('exit', {});
    await g.exit;
  });

  it('a 4096-byte sector size: aligned I/O works, misaligned I/O is refused', async () => {
    const img = image('4k.img', 1048576);
    const g = await rpcGuest(m, 'fourk', { disks: [parseDiskSpec(`sector-size=4096,${img.path},xvda,w`, dir)] });
    const info = (await g.call('diskInfo', { name: 'xvda' })) as Info;
    expect(info.sectorSize).toBe(4096);
    expect(info.sectors).toBe(2048); // still 512-byte units
    const r = (await g.call('diskIo', {
      name: 'xvda', ops: [
        { op: 'write', sector: 16, count: 16, byte: 1 },
        { op: 'write', sector: 3, count: 8, byte: 2 },
        { op: 'read', sector: 8, count: 4 },
      ],
    })) as Io[];
    expect(r[0].sha).toBe(sha(fill(8192, 1)));
    expect(r[1].error).toMatch(/not aligned to the 4096-byte sector size/);
    expect(r[2].error).toMatch(/not aligned/);
    expect(sha(readFileSync(img.path).subarray(16 * 512, 32 * 512))).toBe(r[0].sha);
    await g.call('exit', {});
    await g.exit;
  });
});

describe('stores and wrappers named in the disk spec, through blkfront and blkback', () => {
  it('discard punches holes in the raw file: its allocated blocks shrink and the range reads back zero', async () => {
    const img = image('discard.img', 8 * 1048576);
    const g = await rpcGuest(m, 'disc', { disks: [parseDiskSpec(`${img.path},xvda,w`, dir)] });
    const info = (await g.call('diskInfo', { name: 'xvda' })) as Info & { features: { discardZeroes: boolean } };
    expect(info.features.discard).toBe(true);
    expect(info.features.discardZeroes).toBe(true);
    const before = statSync(img.path).blocks;
    const r = (await g.call('diskIo', { name: 'xvda', ops: [{ op: 'discard', sector: 2048, count: 8192 }] })) as Io[];
    expect(r[0].error).toBeUndefined();
    const after = statSync(img.path).blocks;
    expect(before - after).toBeGreaterThanOrEqual((8192 * 512) / 512 - 8); // st_blocks are 512-byte units
    const [z] = (await g.call('diskIo', { name: 'xvda', ops: [{ op: 'read', sector: 2048, count: 8192 }] })) as Io[];
    expect(z.sha).toBe(sha(new Uint8Array(8192 * 512)));
    const host = readFileSync(img.path);
    expect(sha(host.subarray(0, 2048 * 512))).toBe(sha(img.data.subarray(0, 2048 * 512)));
    expect((await disk('disc/xvda')) as Disk & { discards: number }).toMatchObject({ discards: 1 });
    await g.call('exit', {});
    await g.exit;
  });

  it('copy-on-write: the guest reads the base, its writes land in the overlay, the base never changes', async () => {
    const base = image('base.img', 4 * 1048576);
    const overlay = join(dir, 'overlay.img');
    const g = await rpcGuest(m, 'cow', { disks: [parseDiskSpec(`store=cow,base=${base.path},${overlay},xvda,w`, dir)] });
    const [r0] = (await g.call('diskIo', { name: 'xvda', ops: [{ op: 'read', sector: 0, count: 8192 }] })) as Io[];
    expect(r0.sha).toBe(sha(base.data));
    await g.call('diskIo', { name: 'xvda', ops: [{ op: 'write', sector: 100, count: 9, byte: 0xee }, { op: 'flush' }] });
    const [r1] = (await g.call('diskIo', { name: 'xvda', ops: [{ op: 'read', sector: 0, count: 8192 }] })) as Io[];
    const want = Buffer.from(base.data);
    want.fill(0xee, 100 * 512, 109 * 512);
    expect(r1.sha).toBe(sha(want));
    expect(sha(readFileSync(base.path))).toBe(sha(base.data));
    expect(existsSync(`${overlay}.map`)).toBe(true);
    expect(readFileSync(overlay).subarray(100 * 512, 109 * 512).every((b) => b === 0xee)).toBe(true);
    await g.call('exit', {});
    await g.exit;
  });

  it('wrappers: injected errors reach the guest as BLKIF_RSP_ERROR, and the trace has one JSON line per request', async () => {
    const img = image('wrapped.img', 1048576);
    const trace = join(dir, 'trace.jsonl');
    const g = await rpcGuest(m, 'wrapped', { disks: [parseDiskSpec(`error-rate=0.5,error-seed=7,latency-us=200,trace=${trace},${img.path},xvda,w`, dir)] });
    const ops = Array.from({ length: 40 }, (_, i) => ({ op: 'read', sector: i * 8, count: 8 }));
    const r = (await g.call('diskIo', { name: 'xvda', ops })) as Io[];
    const failed = r.filter((x) => x.error !== undefined);
    expect(failed.length).toBeGreaterThan(5);
    expect(failed.length).toBeLessThan(35);
    for (const f of failed) expect(f.status).toBe(-1);
    for (const [i, x] of r.entries()) if (!x.error) expect(x.sha).toBe(sha(img.data.subarray(i * 4096, i * 4096 + 4096)));
    await g.call('exit', {});
    await g.exit;
    const lines = await eventually(() => {
      const l = existsSync(trace) ? readFileSync(trace, 'utf8').trim().split('\n').filter(Boolean) : [];
      return l.length >= 40 ? l : null;
    }, 10_000, 'the trace');
    const recs = lines!.map((l) => JSON.parse(l) as { time: number; domid: number; op: string; sector: number; sectors: number; latency: number });
    const reads = recs.filter((x) => x.op === 'read');
    expect(reads).toHaveLength(40);
    for (const x of reads) {
      expect(x.domid).toBe(g.domid);
      expect(x.sectors).toBe(8);
      expect(x.latency).toBeGreaterThanOrEqual(200);
      expect(x.time).toBeGreaterThan(0);
    }
    expect(new Set(reads.map((x) => x.sector)).size).toBe(40);
  });

  it('a user\'s store module named in the disk spec', async () => {
    const plain = randomBytes(65536);
    const path = join(dir, 'xor.img');
    writeFileSync(path, plain.map((b) => b ^ XOR_KEY));
    const mod = guestPath('../fixtures/xor-store.ts');
    const g = await rpcGuest(m, 'xor', { disks: [parseDiskSpec(`store=module,module=${mod},${path},xvda,w`, dir)] });
    const [r] = (await g.call('diskIo', { name: 'xvda', ops: [{ op: 'read', sector: 0, count: 128 }] })) as Io[];
    expect(r.sha).toBe(sha(plain));
    await g.call('diskIo', { name: 'xvda', ops: [{ op: 'write', sector: 0, count: 1, byte: 0x11 }] });
    expect(readFileSync(path)[0]).toBe(0x11 ^ XOR_KEY);
    await g.call('exit', {});
    await g.exit;
  });
});
