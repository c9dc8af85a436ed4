// vif hot-plug on running guests (Machine.attachVif / detachVif, as xl network-attach
// / network-detach): two guests that booted without NICs get one each on the same
// bridge; each guest's kernel connects it (k.devices, k.onDevice) and frames cross
// the bridge both ways; a detach takes the backend to Closing, netfront breaks its
// queues, closes in order and leaves k.devices, the vif leaves the bridge (its port
// is gone from dom0's bridge report) and dom0 retires its counters; attached again
// with the next free devid, it works again; a paused guest is detached by force; bad
// requests get one clear error.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Machine, type GuestHandle } from '../toolstack/machine.ts';
import { rpcGuest, guestPath as guestPathOf } from './helpers.ts';

let m: Machine;
let a: GuestHandle;
let b: GuestHandle;

beforeAll(async () => {
  m = await Machine.boot({ onConsole: () => {} });
  [a, b] = await Promise.all([rpcGuest(m, 'ha'), rpcGuest(m, 'hb')]);
});
afterAll(async () => {
  await m?.shutdown();
});

type NicInfo = { mac: string; broken: boolean };
const macBytes = (mac: string) => mac.split(':').map((x) => parseInt(x, 16));
const frame = (dst: string, src: string, len: number, seed: number) => {
  const f = [...macBytes(dst), ...macBytes(src), 0x88, 0xb5];
  for (let i = f.length; i < len; i++) f.push((seed + i) & 0xff);
  return f;
};
const bridgePorts = async () => ((await m.dom0Stats()) as { bridges: Record<string, { ports: string[] }> }).bridges.hotbr?.ports ?? [];

describe('vif hot-plug', () => {
  it('NICs attached to running guests carry frames; detached, they leave the guest and the bridge; attached again, they work', async () => {
    expect(await a.call('devices')).toEqual([]);
    expect(await m.attachVif(a.domid, { bridge: 'hotbr' })).toBe(0);
    expect(await m.attachVif(b.domid, { bridge: 'hotbr' })).toBe(0);
    expect(await a.call('waitDevice', { name: 'eth0' })).toEqual(['added eth0']);
    await b.call('waitDevice', { name: 'eth0' });
    const [ia, ib] = (await Promise.all([a.call('nicInfo', { name: 'eth0' }), b.call('nicInfo', { name: 'eth0' })])) as NicInfo[];
    const bc = frame('ff:ff:ff:ff:ff:ff', ia.mac, 60, 1);
    await a.call('nicSend', { name: 'eth0', frames: [bc] });
    expect(await b.call('nicReceive', { name: 'eth0', max: 1 })).toEqual([bc]);
    const back = frame(ia.mac, ib.mac, 1514, 2);
    await b.call('nicSend', { name: 'eth0', frames: [back] });
    expect(await a.call('nicReceive', { name: 'eth0', max: 1 })).toEqual([back]);
    expect((await bridgePorts()).sort()).toEqual([`vif${a.domid}.0`, `vif${b.domid}.0`].sort());

    expect(await m.detachVif(a.domid, 0)).toEqual({ forced: false });
    expect(await a.call('waitDevice', { name: 'eth0', present: false })).toEqual(['added eth0', 'removed eth0']);
    expect(await bridgePorts()).toEqual([`vif${b.domid}.0`]);
    const st = (await m.dom0Stats()) as { vifs: Record<string, { txPackets: number }> };
    expect(st.vifs[`ha/vif${a.domid}.0`].txPackets).toBe(1); // retired with its counters
    // A frame to the departed MAC floods to nobody: b sends, nothing breaks.
    await b.call('nicSend', { name: 'eth0', frames: [frame(ia.mac, ib.mac, 60, 3)] });

    // Attached again: the lowest free devid (0), a new connection, frames flow again.
    expect(await m.attachVif(a.domid, { bridge: 'hotbr' })).toBe(0);
    await a.call('waitDevice', { name: 'eth0' });
    const again = frame('ff:ff:ff:ff:ff:ff', ia.mac, 100, 4);
    await a.call('nicSend', { name: 'eth0', frames: [again] });
    expect(await b.call('nicReceive', { name: 'eth0', max: 1 })).toEqual([again]);
    expect(await m.attachVif(a.domid, { bridge: 'hotbr' })).toBe(1); // a second NIC: eth1
    await a.call('waitDevice', { name: 'eth1' });
    expect(await a.call('devices')).toEqual(['eth0', 'eth1']);
  });

  it('a paused guest is detached by force after the timeout, and gets over it', async () => {
    await m.pause(b.domid);
    const t0 = Date.now();
    expect(await m.detachVif(b.domid, 0, { timeoutMs: 300 })).toEqual({ forced: true });
    expect(Date.now() - t0).toBeLessThan(5000);
    await m.unpause(b.domid);
    await b.call('waitDevice', { name: 'eth0', present: false });
    expect((await bridgePorts()).includes(`vif${b.domid}.0`)).toBe(false);
    expect((await m.audit()).violations).toEqual([]);
  });

  it('bad requests: no such vif, a devid in use, no such domain', async () => {
    await expect(m.detachVif(a.domid, 7)).rejects.toThrow(/has no vif 7/);
    await expect(m.attachVif(a.domid, {}, 1)).rejects.toThrow(/already has a vif 1/);
    await expect(m.attachVif(999, {})).rejects.toThrow(/dom999 is not introduced/);
  });
});

describe('a user\'s bridge port, loaded in dom0', () => {
  it('gets the frames the bridge floods to it and puts frames into the bridge', async () => {
    const name = await m.addBridgePort('portbr', guestPathOf('reflector-port.ts'), { mac: [2, 0, 0, 0, 0, 0x99] });
    expect(name).toBe('reflector@portbr');
    const g = await rpcGuest(m, 'withport', { vifs: [{ bridge: 'portbr' }] });
    const info = (await g.call('nicInfo', { name: 'eth0' })) as { mac: string };
    const out = frame('ff:ff:ff:ff:ff:ff', info.mac, 80, 9);
    await g.call('nicSend', { name: 'eth0', frames: [out] });
    const [back] = (await g.call('nicReceive', { name: 'eth0', max: 1 })) as number[][];
    expect(back.slice(0, 6)).toEqual(macBytes(info.mac)); // to the guest
    expect(back.slice(6, 12)).toEqual([2, 0, 0, 0, 0, 0x99]); // from the port
    expect(back.slice(12)).toEqual(out.slice(12));
    const ports = ((await m.dom0Stats()) as { bridges: Record<string, { ports: string[] }> }).bridges.portbr.ports;
    expect(ports.sort()).toEqual([`vif${g.domid}.0`, 'reflector@portbr'].sort());
    await expect(m.addBridgePort('portbr', guestPathOf('not-a-port.ts'))).rejects.toThrow(/the port must have a name and an output\(frame\) method/);
    await g.call('exit', {});
    await g.exit;
  });
});
