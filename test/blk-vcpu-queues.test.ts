// Multi-queue blkback with each queue served by its own dom0 vCPU: a 2-vCPU dom0
// hands queue 1 to vCPU 1, which opens the same file, maps the ring, binds the port
// to itself (EVTCHNOP_bind_vcpu) and serves it on its own worker thread. Checked:
// the data, the vCPU each queue's counters come from, resize across vCPUs, stores
// that cannot be shared staying on vCPU 0, and a crash releasing every mapping.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine } from '../toolstack/machine.ts';
import { SHUTDOWN } from '../hypervisor/abi.ts';
import { parseDiskSpec } from '../toolstack/config.ts';
import { rpcGuest, eventually, randomImage, sha256, domainInfo, guestPath, dom0Disk } from './helpers.ts';
import { QUEUE_STRIDE, type RawRequest, type RawResponse } from './guests/hostile-blkfront.ts';
import { BLKIF_OP_READ, BLKIF_RSP_OKAY } from '../rings/blkif.ts';

const dir = mkdtempSync(join(tmpdir(), 'pvio-vq-'));
type Io = { sha?: string; error?: string };
type Disk = {
  requests: number; errors: number; queues: Array<{ vcpu: number; requests: number; bytesRead: number; bytesWritten: number; latencyUs: number[] }>;
  negotiated: { queues: number }; protocolError: string | null; slotsConsumed: number; slotCopies: number;
};
type Info = { sectors: number; queues: Array<{ requests: number }> };

let m: Machine;
beforeAll(async () => {
  m = await Machine.boot({ dom0Vcpus: 2 });
});
afterAll(async () => {
  await m?.shutdown();
  rmSync(dir, { recursive: true, force: true });
});
const disk = (name: string) => dom0Disk<Disk>(m, name);
/** 64 concurrent 4 KiB reads spread over the disk (enough to keep both queues busy). */
const spread = (sectors: number) => Array.from({ length: 64 }, (_, i) => ({ op: 'read', sector: ((i * 7919) % (sectors / 8)) * 8, count: 8 }));

describe('each queue served by its own dom0 vCPU', () => {
  it('queue 0 on vCPU 0, queue 1 on vCPU 1: both carry I/O, the bytes are the file\'s, and a resize reaches both', async () => {
    const img = randomImage(dir, 'vq.img', 8 << 20);
    const g = await rpcGuest(m, 'vq', { vcpus: 2, memoryMiB: 64, disks: [parseDiskSpec(`${img.path},xvda,w`, dir)] });
    await g.call('diskInfo', { name: 'xvda' }); // the guest's main runs once its disks are connected
    let d = await disk('vq/xvda');
    expect(d.negotiated.queues).toBe(2);
    expect(d.queues.map((q) => q.vcpu)).toEqual([0, 1]);

    const reads = spread(16384);
    const host = readFileSync(img.path);
    for (let round = 0; round < 4; round++) {
      const r = (await g.call('diskIo', { name: 'xvda', ops: reads })) as Io[];
      r.forEach((x, i) => expect(x.sha).toBe(sha256(host.subarray(reads[i].sector * 512, reads[i].sector * 512 + 4096))));
    }
    const writes = Array.from({ length: 32 }, (_, i) => ({ op: 'write', sector: i * 256, count: 16, byte: 0x40 + i }));
    const w = (await g.call('diskIo', { name: 'xvda', ops: writes })) as Io[];
    expect(w.every((x) => x.sha !== undefined)).toBe(true);
    const after = readFileSync(img.path);
    for (let i = 0; i < 32; i++) expect(sha256(after.subarray(i * 256 * 512, i * 256 * 512 + 8192))).toBe(sha256(new Uint8Array(8192).fill(0x40 + i)));

    d = await disk('vq/xvda');
    const fe = ((await g.call('diskInfo', { name: 'xvda' })) as Info).queues;
    // Both queues carried requests, and dom0's counters for queue 1 come from vCPU 1.
    expect(d.queues).toHaveLength(2);
    for (const [i, q] of d.queues.entries()) {
      expect(q.vcpu).toBe(i);
      expect(q.requests).toBeGreaterThan(0);
      expect(q.requests).toBe(fe[i].requests);
      // Each ring's own counters and latency histogram (every request it answered is in it).
      expect(q.bytesRead + q.bytesWritten).toBeGreaterThan(0);
      expect(q.latencyUs.reduce((x, y) => x + y, 0)).toBe(q.requests);
    }
    expect(d.requests).toBe(fe[0].requests + fe[1].requests);
    expect(d.errors).toBe(0);
    expect(d.slotCopies).toBe(d.slotsConsumed);

    // Resize: vCPU 0 grows the file and tells vCPU 1; reads of the new end succeed on both queues.
    await m.resizeDisk(g.domid, 'xvda', 12 << 20);
    expect(statSync(img.path).size).toBe(12 << 20);
    await eventually(async () => ((await g.call('diskInfo', { name: 'xvda' })) as Info).sectors === 24576, 10_000, 'the new size');
    const tail = Array.from({ length: 32 }, (_, i) => ({ op: 'read', sector: 16384 + i * 8, count: 8 }));
    const before = (await disk('vq/xvda')).queues.map((q) => q.requests);
    const t = (await g.call('diskIo', { name: 'xvda', ops: tail })) as Io[];
    for (const x of t) expect(x.sha).toBe(sha256(new Uint8Array(4096)));
    const grew = (await disk('vq/xvda')).queues.map((q, i) => q.requests - before[i]);
    expect(grew[0] + grew[1]).toBe(32);
    expect(grew[1]).toBeGreaterThan(0); // vCPU 1 served reads past the old end

    await g.call('exit', {});
    await g.exit;
    // The retired counters include what vCPU 1 served, and every mapping is gone.
    const retired = await disk('vq/xvda');
    expect(retired.requests).toBe(d.requests + 32);
    await eventually(async () => (await domainInfo(m, 0))?.mappings === 0, 10_000, 'dom0 unmapped everything');
  });

  it('a copy-on-write disk (one cluster map) keeps every queue on vCPU 0', async () => {
    const base = randomImage(dir, 'base.img', 4 << 20);
    const spec = parseDiskSpec(`store=cow,base=${base.path},${join(dir, 'overlay.img')},xvda,w`, dir);
    const g = await rpcGuest(m, 'cow', { vcpus: 2, memoryMiB: 64, disks: [spec] });
    const reads = spread(8192);
    const r = (await g.call('diskIo', { name: 'xvda', ops: reads })) as Io[];
    r.forEach((x, i) => expect(x.sha).toBe(sha256(base.data.subarray(reads[i].sector * 512, reads[i].sector * 512 + 4096))));
    const d = await disk('cow/xvda');
    expect(d.queues.map((q) => q.vcpu)).toEqual([0, 0]);
    await g.call('exit', {});
    await g.exit;
  });

  it('a guest that crashes mid-I/O: vCPU 1 releases its ring and grants too', async () => {
    const img = randomImage(dir, 'crash.img', 4 << 20);
    const g = await rpcGuest(m, 'crash', { vcpus: 2, memoryMiB: 64, disks: [parseDiskSpec(`${img.path},xvda,w`, dir)] });
    await g.call('diskInfo', { name: 'xvda' });
    expect((await disk('crash/xvda')).queues.map((q) => q.vcpu)).toEqual([0, 1]);
    await g.call('readLoop', { name: 'xvda', loop: 'l', parallel: 16 });
    await eventually(async () => {
      const q = (await disk('crash/xvda')).queues;
      return q.length === 2 && q[0].requests > 0 && q[1].requests > 0;
    }, 10_000, 'both queues busy');
    await g.call('crash', {});
    await expect(g.exit).resolves.toMatchObject({ reason: SHUTDOWN.crash });
    await eventually(async () => (await domainInfo(m, 0))?.mappings === 0, 10_000, 'dom0 unmapped everything');
  });

  it('a frontend that breaks queue 1\'s ring: vCPU 1 disables it and reports to vCPU 0; queue 0 keeps serving', async () => {
    const img = randomImage(dir, 'hostile.img', 1 << 20);
    const h = await m.createGuest({ name: 'hostile', memoryMiB: 32, vcpus: 2, kernel: guestPath('hostile-blkfront.ts'), probeDevices: false });
    await h.call('info'); // its main runs: the disk below is connected by hand
    const devid = (202 << 8) | (0 << 4);
    await m.dom0Request({ type: 'addDisk', domid: h.domid, vdev: 'xvda', virtualDevice: devid, path: img.path, readOnly: false });
    await h.call('connect', { devid, queues: 2 }, 15_000);
    const gref = ((await h.call('page', { name: 'q', grant: 'rw', fill: 0x22 })) as { gref: number }).gref;
    const read = (id: number): RawRequest => ({ kind: 'rw', operation: BLKIF_OP_READ, id, sector: 0, segs: [{ gref, first: 0, last: 7 }] });
    const io = async (dev: number, id: number) => {
      const r = (await h.call('io', { devid: dev, reqs: [read(id)], timeoutMs: 5000 }, 10_000)) as { responses: RawResponse[]; timedOut: boolean };
      expect(r.timedOut).toBe(false);
      return r.responses.map((x) => [x.id, x.status]);
    };
    const q1 = devid + QUEUE_STRIDE;
    expect(await io(devid, 1)).toEqual([[1, BLKIF_RSP_OKAY]]);
    expect(await io(q1, 2)).toEqual([[2, BLKIF_RSP_OKAY]]);
    let d = await disk('hostile/xvda');
    expect(d.queues.map((q) => q.vcpu)).toEqual([0, 1]);
    expect(d.protocolError).toBeNull();
    // 40 requests claimed on queue 1's 32-slot ring with nothing outstanding.
    const idx = (await h.call('indices', { devid: q1 })) as { reqProdPvt: number };
    await h.call('submit', { devid: q1, reqs: [read(3)], reqProd: idx.reqProdPvt + 40 });
    await eventually(async () => (await disk('hostile/xvda')).protocolError, 5000, 'the protocol error reported by vCPU 1');
    d = await disk('hostile/xvda');
    expect(d.protocolError).toMatch(/impossible req_prod/);
    expect(d.queues[1]).toMatchObject({ vcpu: 1, requests: 1 });
    expect(await io(devid, 4)).toEqual([[4, BLKIF_RSP_OKAY]]);
    await m.destroy(h.domid);
    await eventually(async () => (await domainInfo(m, 0))?.mappings === 0, 10_000, 'dom0 unmapped everything');
  });
});
