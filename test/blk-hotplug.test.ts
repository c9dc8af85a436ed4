// Disk hot-plug on a running guest (Machine.attachDisk / detachDisk, as xl
// block-attach / block-detach): the guest's kernel watches device/vbd, connects a disk
// attached after boot and adds it to k.devices (k.onDevice tells it); the guest reads
// it byte for byte; a detach takes the backend to Closing, the guest's blkfront closes
// in order and leaves k.devices, dom0 removes both directories and retires the
// disk's counters; the same device can be attached again; a guest that cannot answer
// (paused) is detached by force after the timeout; a guest created with probeDevices
// false is left to connect its devices itself; bad requests get one clear error.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine, type GuestHandle, type XenbusEvent } from '../toolstack/machine.ts';
import { parseDiskSpec } from '../toolstack/config.ts';
import { rpcGuest, randomImage, sha256, eventually } from './helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'pvio-hotplug-'));
let m: Machine;
let g: GuestHandle;
const xenbus: XenbusEvent[] = [];

beforeAll(async () => {
  m = await Machine.boot({ onConsole: () => {} });
  m.on('xenbus', (e) => xenbus.push(e));
  await m.watchXenbus();
  const boot = randomImage(dir, 'boot.img', 64 * 1024);
  g = await rpcGuest(m, 'hot', { disks: [parseDiskSpec(`${boot.path},xvda,r`, dir)] });
});
afterAll(async () => {
  await m?.shutdown();
  rmSync(dir, { recursive: true, force: true });
});

const paths = (domid: number, devid: number) => ({
  fe: `/local/domain/${domid}/device/vbd/${devid}`,
  be: `/local/domain/0/backend/vbd/${domid}/${devid}`,
});

describe('disk hot-plug', () => {
  it('a disk attached to a running guest is connected and read byte for byte; detached, it leaves cleanly; attached again, it works again', async () => {
    expect(await g.call('devices')).toEqual(['xvda']);
    const img = randomImage(dir, 'b.img', 1 << 20);
    const spec = parseDiskSpec(`${img.path},xvdb,w`, dir);
    await m.attachDisk(g.domid, spec);
    expect(await g.call('waitDevice', { name: 'xvdb' })).toEqual(['added xvdb']);
    expect(await g.call('readDisk', { name: 'xvdb' })).toBe(sha256(img.data));
    expect(await g.call('writeDisk', { name: 'xvdb', sector: 8, count: 8, byte: 0x5a })).toMatch(/^[0-9a-f]{64}$/);

    const n0 = xenbus.length;
    expect(await m.detachDisk(g.domid, 'xvdb')).toEqual({ forced: false });
    expect(await g.call('waitDevice', { name: 'xvdb', present: false })).toEqual(['added xvdb', 'removed xvdb']);
    expect(await g.call('devices')).toEqual(['xvda']);
    // Both ends walked Closing → Closed, the backend first; then both directories went.
    const { fe, be } = paths(g.domid, spec.virtualDevice);
    const seq = xenbus.slice(n0).filter((e) => e.path === `${fe}/state` || e.path === `${be}/state`).map((e) => `${e.end[0]}:${e.stateName}`);
    expect(seq.slice(0, 4)).toEqual(['b:Closing', 'f:Closing', 'f:Closed', 'b:Closed']);
    expect(await g.call('xsRead', { path: `${fe}/state` })).toMatchObject({ errno: 'ENOENT' });
    const s = (await m.dom0Stats()) as { disks: Record<string, { bytesWritten: number }> };
    expect(s.disks['hot/xvdb'].bytesWritten).toBe(8 * 512); // retired with its counters
    expect(await g.call('readDisk', { name: 'xvda' })).toMatch(/^[0-9a-f]{64}$/); // the other disk is untouched

    // The same device again: a fresh connection, the write of before is on the file.
    await m.attachDisk(g.domid, spec);
    await g.call('waitDevice', { name: 'xvdb' });
    const after = Buffer.from(img.data);
    after.fill(0x5a, 8 * 512, 16 * 512);
    expect(await g.call('readDisk', { name: 'xvdb' })).toBe(sha256(after));
    expect(await m.detachDisk(g.domid, 'xvdb')).toEqual({ forced: false });
    await g.call('waitDevice', { name: 'xvdb', present: false });
  });

  it('a guest that cannot answer (paused) is detached by force after the timeout, and gets over it', async () => {
    const img = randomImage(dir, 'c.img', 256 * 1024);
    await m.attachDisk(g.domid, parseDiskSpec(`${img.path},xvdc,r`, dir));
    await g.call('waitDevice', { name: 'xvdc' });
    await m.pause(g.domid);
    const t0 = Date.now();
    expect(await m.detachDisk(g.domid, 'xvdc', { timeoutMs: 300 })).toEqual({ forced: true });
    expect(Date.now() - t0).toBeLessThan(5000);
    await m.unpause(g.domid);
    await g.call('waitDevice', { name: 'xvdc', present: false });
    expect(await g.call('readDisk', { name: 'xvda' })).toMatch(/^[0-9a-f]{64}$/);
    const audit = await m.audit();
    expect(audit.violations).toEqual([]);
  });

  it('probeDevices: false leaves every frontend to the guest program: nothing is connected, at boot or hot-plugged', async () => {
    const img = randomImage(dir, 'e.img', 64 * 1024);
    const h = await rpcGuest(m, 'byhand', { probeDevices: false, disks: [parseDiskSpec(`${img.path},xvda,r`, dir)] });
    await m.attachDisk(h.domid, parseDiskSpec(`${img.path},xvdb,r`, dir));
    await new Promise((r) => setTimeout(r, 300));
    expect(await h.call('devices')).toEqual([]);
    expect(await h.call('xsRead', { path: `/local/domain/${h.domid}/device/vbd/${parseDiskSpec(`${img.path},xvdb,r`, dir).virtualDevice}/state` })).toEqual({ value: '1' });
    await h.call('exit', {});
    await h.exit;
  });

  it('bad requests: no such disk, a device already attached, no such domain', async () => {
    await expect(m.detachDisk(g.domid, 'xvdz')).rejects.toThrow(/has no disk xvdz/);
    const img = randomImage(dir, 'd.img', 64 * 1024);
    await expect(m.attachDisk(g.domid, parseDiskSpec(`${img.path},xvda,r`, dir))).rejects.toThrow(/already has a disk xvda/);
    await expect(m.attachDisk(999, parseDiskSpec(`${img.path},xvdd,r`, dir))).rejects.toThrow(/dom999 is not introduced/);
    await eventually(async () => (await g.call('devices') as string[]).join() === 'xvda', 2000, 'only xvda left');
  });
});
