// blkfront/blkback between real worker domains: the io/blkif.h handshake (also with
// the frontend reaching Initialised before the backend's InitWait), I/O against a
// real file, a read-only attachment, orderly teardown, a domU that crashes or is
// destroyed mid-I/O, XenStore permissions between domUs, and the handle audit.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine } from '../toolstack/machine.ts';
import { SHUTDOWN } from '../hypervisor/abi.ts';
import { XenbusState } from '../xenstore/xenbus.ts';
import { rpcGuest, eventually, domainInfo, randomImage, sha256 } from './helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'pvio-blk-'));
const sha = sha256;
const image = (name: string, bytes: number) => randomImage(dir, name, bytes);
const disk = (path: string, vdev: string, readOnly: boolean) => ({
  path, vdev, readOnly, virtualDevice: (202 << 8) | ((vdev.charCodeAt(3) - 97) << 4),
});
type Dom0Stats = { disks: Record<string, { state: string; bytesRead: number; bytesWritten: number; inFlight: number; requests: number }> };

let m: Machine;
beforeAll(async () => {
  m = await Machine.boot();
});
afterAll(async () => {
  await m?.shutdown();
  rmSync(dir, { recursive: true, force: true });
});

describe('blkfront/blkback', () => {
  it('connects, reads and writes a real file, refuses writes to a read-only disk, and tears down in order', async () => {
    const rw = image('rw.img', 3 * 1048576 + 512 * 7);
    const ro = image('ro.img', 200 * 1024);
    const g = await rpcGuest(m, 'disks', { disks: [disk(rw.path, 'xvda', false), disk(ro.path, 'xvdb', true)] });
    const info = (await g.call('diskInfo', { name: 'xvda' })) as { sectors: number; readOnly: boolean; backendStateAtInitialised: number };
    expect(info.sectors).toBe(rw.data.length / 512);
    expect(info.readOnly).toBe(false);
    expect(info.backendStateAtInitialised).toBe(XenbusState.InitWait);
    expect(await g.call('readDisk', { name: 'xvda' })).toBe(sha(rw.data));
    expect(await g.call('readDisk', { name: 'xvdb' })).toBe(sha(ro.data));
    // A write that spans several requests, then a flush; the file on the host changes.
    const written = (await g.call('writeDisk', { name: 'xvda', sector: 100, count: 300, byte: 0xab })) as string;
    const host = readFileSync(rw.path);
    expect(sha(host.subarray(100 * 512, 400 * 512))).toBe(written);
    expect(sha(host.subarray(0, 100 * 512))).toBe(sha(rw.data.subarray(0, 100 * 512)));
    expect(await g.call('writeExpectError', { name: 'xvdb' })).toMatch(/read-only/);
    const s = (await m.dom0Stats()) as Dom0Stats;
    expect(s.disks['disks/xvda'].bytesRead).toBe(rw.data.length);
    expect(s.disks['disks/xvda'].bytesWritten).toBe(300 * 512);
    // Orderly teardown: the guest exits, both sides go Closed, dom0 drops every mapping.
    await g.call('exit', { value: 'bye' });
    const exit = await g.exit;
    expect(exit).toMatchObject({ reason: SHUTDOWN.poweroff, value: 'bye' });
    await eventually(async () => ((await m.dom0Stats()) as Dom0Stats).disks['disks/xvda']?.state === 'Closed', 10_000, 'backend Closed');
    await eventually(async () => (await domainInfo(m, 0))?.mappings === 0, 10_000, 'dom0 unmapped everything');
    expect((await domainInfo(m, g.domid))?.state).toBe('dead');
  });

  it('tolerates a frontend that reaches Initialised before the backend reaches InitWait', async () => {
    const img = image('early.img', 512 * 1024);
    const g = await rpcGuest(m, 'early', { disks: [disk(img.path, 'xvda', true)], initWaitDelayMs: 1500 }); // longer than a loaded VM takes to start the guest's worker
    const info = (await g.call('diskInfo', { name: 'xvda' })) as { backendStateAtInitialised: number };
    expect(info.backendStateAtInitialised).toBe(XenbusState.Initialising);
    expect(await g.call('readDisk', { name: 'xvda' })).toBe(sha(img.data));
    await g.call('exit', {});
    expect((await g.exit).reason).toBe(SHUTDOWN.poweroff);
  });

  it('a domU that crashes mid-I/O: blkback releases its mappings and goes Closed; others keep running', async () => {
    const img = image('crash.img', 4 * 1048576);
    const other = image('other.img', 1048576);
    const bystander = await rpcGuest(m, 'bystander', { disks: [disk(other.path, 'xvda', true)] });
    const g = await rpcGuest(m, 'crasher', { disks: [disk(img.path, 'xvda', true)] });
    await g.call('readForever', { name: 'xvda' });
    await eventually(async () => ((await g.call('inFlight', { name: 'xvda' })) as number) > 0, 5000, 'I/O in flight');
    const releases = ((await m.dom0Stats()) as { releaseDomainEvents: number }).releaseDomainEvents;
    await g.call('crash', { message: 'panic mid-I/O' });
    const exit = await g.exit;
    expect(exit.reason).toBe(SHUTDOWN.crash);
    expect(exit.error).toMatch(/panic mid-I\/O/);
    await eventually(async () => ((await m.dom0Stats()) as Dom0Stats).disks['crasher/xvda']?.state === 'Closed', 10_000, 'crasher backend Closed');
    await eventually(async () => ((await m.dom0Stats()) as { releaseDomainEvents: number }).releaseDomainEvents > releases, 5000, '@releaseDomain');
    // dom0 still maps the bystander's ring (and its console/XenStore pages) — nothing of the crasher's.
    const log = await m.audit();
    expect(log.violations).toEqual([]);
    expect(await bystander.call('readDisk', { name: 'xvda' })).toBe(sha(other.data));
    await bystander.call('exit', {});
    expect((await bystander.exit).reason).toBe(SHUTDOWN.poweroff);
    await eventually(async () => (await domainInfo(m, 0))?.mappings === 0, 10_000, 'dom0 unmapped everything');
  });

  it('a domU destroyed mid-I/O (xl destroy): same cleanup', async () => {
    const img = image('destroy.img', 4 * 1048576);
    const g = await rpcGuest(m, 'victim', { disks: [disk(img.path, 'xvda', true)] });
    await g.call('readForever', { name: 'xvda' });
    await eventually(async () => ((await g.call('inFlight', { name: 'xvda' })) as number) > 0, 5000, 'I/O in flight');
    await m.destroy(g.domid);
    await g.exit;
    await eventually(async () => ((await m.dom0Stats()) as Dom0Stats).disks['victim/xvda']?.state === 'Closed', 10_000, 'victim backend Closed');
    await eventually(async () => (await domainInfo(m, 0))?.mappings === 0, 10_000, 'dom0 unmapped everything');
  });

  it('XenStore: a domU cannot read or write another domU\'s nodes', async () => {
    const img = image('perm.img', 64 * 1024);
    const [g1, g2] = await Promise.all([rpcGuest(m, 'perm1', { disks: [disk(img.path, 'xvda', true)] }), rpcGuest(m, 'perm2')]);
    const theirs = `/local/domain/${g1.domid}/device/vbd/51712/backend`;
    expect(await g1.call('xsRead', { path: theirs })).toEqual({ value: `/local/domain/0/backend/vbd/${g1.domid}/51712` });
    expect(await g2.call('xsRead', { path: theirs })).toEqual({ errno: 'EACCES' });
    expect(await g2.call('xsWrite', { path: `/local/domain/${g1.domid}/device/vbd/51712/state`, value: '6' })).toEqual({ errno: 'EACCES' });
    // The frontend may read its backend's directory, not write it.
    expect(await g1.call('xsRead', { path: `/local/domain/0/backend/vbd/${g1.domid}/51712/mode` })).toEqual({ value: 'r' });
    expect(await g1.call('xsWrite', { path: `/local/domain/0/backend/vbd/${g1.domid}/51712/sectors`, value: '1' })).toEqual({ errno: 'EACCES' });
    await Promise.all([g1.call('exit', {}), g2.call('exit', {})]);
    await Promise.all([g1.exit, g2.exit]);
  });

  it('handle audit: after a run with two domUs, each domain holds only its own frames, frames granted to it and its shared hypervisor pages', async () => {
    const i1 = image('audit1.img', 1048576);
    const i2 = image('audit2.img', 1048576);
    const [g1, g2] = await Promise.all([
      rpcGuest(m, 'audit1', { disks: [disk(i1.path, 'xvda', true)] }),
      rpcGuest(m, 'audit2', { disks: [disk(i2.path, 'xvda', true)] }),
    ]);
    // g1 grants a page to g2, which maps it: a legitimate cross-domU handle.
    const [p] = (await g1.call('allocPages', { n: 1 })) as number[];
    const ref = (await g1.call('grant', { domid: g2.domid, mfn: p, readonly: true })) as number;
    const [mres] = (await g2.call('map', { reqs: [{ domid: g1.domid, ref, readonly: true }] })) as Array<{ status: number; handle: number }>;
    expect(mres.status).toBe(0);
    expect(await g1.call('readDisk', { name: 'xvda' })).toBe(sha(i1.data));
    expect(await g2.call('readDisk', { name: 'xvda' })).toBe(sha(i2.data));
    const audit = await m.audit();
    expect(audit.violations).toEqual([]);
    const of = (d: number) => audit.log.filter((e) => e.domid === d);
    for (const g of [g1, g2]) {
      expect(of(g.domid).length).toBeGreaterThan(5);
      // A domU got frames of another domU only through map_grant_ref of a grant to it.
      for (const e of of(g.domid)) {
        if (e.owner !== g.domid && e.owner < 0x7ff0) expect(e.reason).toMatch(/^map_grant_ref /);
      }
    }
    expect(of(g2.domid).some((e) => e.owner === g1.domid)).toBe(true);
    expect(of(g1.domid).some((e) => e.owner === g2.domid)).toBe(false);
    // dom0 (blkback, xenstored, console) mapped frames of both guests, by grant.
    expect(of(0).filter((e) => e.owner === g1.domid).every((e) => e.reason.startsWith('map_grant_ref '))).toBe(true);
    await g2.call('unmap', { handles: [mres.handle] });
    await Promise.all([g1.call('exit', {}), g2.call('exit', {})]);
    await Promise.all([g1.exit, g2.exit]);
  });

  it('a 2-vCPU guest served by an asynchronous store: I/O, a WRITE refused by the backend, grants ended on close', async () => {
    const img = image('async.img', 2 * 1048576);
    const ro = image('async-ro.img', 64 * 1024);
    const g = await rpcGuest(m, 'async', { vcpus: 2, asyncStore: true, disks: [disk(img.path, 'xvda', false), disk(ro.path, 'xvdb', true)] });
    expect(await g.call('readDisk', { name: 'xvda' })).toBe(sha(img.data));
    const w = (await g.call('writeDisk', { name: 'xvda', sector: 8, count: 1000, byte: 7 })) as string;
    expect(sha(readFileSync(img.path).subarray(8 * 512, 1008 * 512))).toBe(w);
    // A frontend that ignores VDISK_READONLY: blkback answers BLKIF_RSP_ERROR (-1).
    expect(await g.call('forceWrite', { name: 'xvdb' })).toMatch(/write failed: status -1/);
    expect(sha(readFileSync(ro.path))).toBe(sha(ro.data));
    // Orderly close of one disk: both sides Closed, every grant the frontend made is ended.
    const c = (await g.call('closeDisk', { name: 'xvda' })) as { granted: number; ended: number };
    await g.call('closeDisk', { name: 'xvdb' });
    const c2 = (await g.call('counters')) as { gnttab: { granted: number; ended: number } };
    expect(c.granted).toBeGreaterThan(0);
    expect(c2.gnttab.ended).toBe(c2.gnttab.granted);
    const s = (await m.dom0Stats()) as Dom0Stats;
    expect(s.disks['async/xvda'].state).toBe('Closed');
    expect(s.disks['async/xvda'].inFlight).toBe(0);
    await g.call('exit', {});
    expect((await g.exit).reason).toBe(SHUTDOWN.poweroff);
  });
});
