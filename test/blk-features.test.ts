// blkif features between real worker domains, each negotiated through XenStore:
// indirect descriptors, persistent grants, multi-page rings, multi-queue, flush and
// barrier, a 4096-byte sector size, resize — on by default, and each switched off
// per disk in the disk spec.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine } from '../toolstack/machine.ts';
import { parseDiskSpec } from '../toolstack/config.ts';
import { rpcGuest, eventually } from './helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'pvio-blkf-'));
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
function image(name: string, bytes: number): { path: string; data: Buffer } {
  const data = randomBytes(bytes);
  const path = join(dir, name);
  writeFileSync(path, data);
  return { path, data };
}
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
async function disk(name: string): Promise<Disk> {
  const s = (await m.dom0Stats()) as { disks: Record<string, Disk> };
  return s.disks[name];
}

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
