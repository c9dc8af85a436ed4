// Event channels between real worker domains: setup through the hypervisor
// (alloc_unbound, bind_interdomain, status, close), sends on the fast path, and a
// peer that writes garbage into the pair page it shares (a spurious wake-up at most).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Machine, type GuestHandle } from '../toolstack/machine.ts';
import { EVTCHNSTAT } from '../hypervisor/abi.ts';
import { rpcGuest, eventually } from './helpers.ts';

let m: Machine;
let a: GuestHandle;
let b: GuestHandle;
type Counters = { evtchn: { sent: number; suppressed: number; spurious: number; dispatched: number } };

beforeAll(async () => {
  m = await Machine.boot();
  [a, b] = await Promise.all([rpcGuest(m, 'evt-a'), rpcGuest(m, 'evt-b')]);
});
afterAll(async () => {
  await m?.shutdown();
});

describe('event channels across workers', () => {
  let pa: number;
  let pb: number;

  it('binds an interdomain channel: alloc_unbound in one domain, bind_interdomain in the other', async () => {
    pa = (await a.call('allocUnbound', { remote: b.domid })) as number;
    expect(await a.call('status', { port: pa })).toMatchObject({ status: EVTCHNSTAT.unbound, remoteDom: b.domid });
    pb = (await b.call('bind', { remote: a.domid, port: pa })) as number;
    expect(await a.call('status', { port: pa })).toMatchObject({ status: EVTCHNSTAT.interdomain, remoteDom: b.domid, remotePort: pb });
    expect(await b.call('status', { port: pb })).toMatchObject({ status: EVTCHNSTAT.interdomain, remoteDom: a.domid, remotePort: pa });
    // Xen sets the binder's local port pending on bind.
    await eventually(async () => ((await b.call('evtCount', { port: pb })) as number) >= 1, 5000, 'bind-time event');
  });

  it('refuses a bind to a port not offered to the binder', async () => {
    const p = (await a.call('allocUnbound', { remote: a.domid })) as number; // offered to a itself, not b
    await expect(b.call('bind', { remote: a.domid, port: p })).rejects.toThrow(/EINVAL/);
  });

  it('delivers sends both ways without the hypervisor, 200 ping-pongs', async () => {
    await b.call('echo', { port: pb });
    const hv0 = (await m.hypervisorStats()) as { hypercalls: Record<string, number> };
    const r = (await a.call('pingpong', { port: pa, rounds: 200 })) as { rounds: number; usPerRound: number };
    expect(r.rounds).toBe(200);
    const hv1 = (await m.hypervisorStats()) as { hypercalls: Record<string, number> };
    // No event_channel_op was issued for the sends.
    expect(hv1.hypercalls.event_channel_op ?? 0).toBe(hv0.hypercalls.event_channel_op ?? 0);
    expect(((await b.call('evtCount', { port: pb })) as number)).toBeGreaterThanOrEqual(200);
  });

  it('survives a peer writing garbage into its pair page and wake word', async () => {
    const before = (await b.call('counters')) as Counters;
    await a.call('garbage', { port: pa });
    // b folds the garbage: bits of ports not bound to a are counted spurious and dropped.
    const after = (await eventually(async () => {
      const c = (await b.call('counters')) as Counters;
      return c.evtchn.spurious > before.evtchn.spurious ? c : null;
    }, 5000, 'spurious bits counted')) as Counters;
    expect(after.evtchn.spurious - before.evtchn.spurious).toBeGreaterThan(1000);
    // Both domains still work: the channel still carries events.
    const r = (await a.call('pingpong', { port: pa, rounds: 20 })) as { rounds: number };
    expect(r.rounds).toBe(20);
    // b's other channels (its XenStore port, bound to dom0) are untouched.
    expect(await b.call('xsWrite', { path: `/local/domain/${b.domid}/data/after-garbage`, value: 'ok' })).toEqual({ ok: true });
    expect(await b.call('xsRead', { path: `/local/domain/${b.domid}/data/after-garbage` })).toEqual({ value: 'ok' });
  });

  it('close returns the peer end to unbound; sends on it are dropped', async () => {
    await a.call('closePort', { port: pa });
    expect(await b.call('status', { port: pb })).toMatchObject({ status: EVTCHNSTAT.unbound });
    expect(await a.call('status', { port: pa })).toMatchObject({ status: EVTCHNSTAT.closed });
    const before = (await b.call('counters')) as { evtchn: { dropped: number } };
    await b.call('notify', { port: pb, n: 3 });
    const after = (await b.call('counters')) as { evtchn: { dropped: number } };
    expect(after.evtchn.dropped - before.evtchn.dropped).toBe(3);
  });
});

describe('EVTCHNOP_bind_vcpu: a port served by a secondary vCPU', () => {
  let c: GuestHandle;
  let pc: number;
  let pb: number;
  beforeAll(async () => {
    c = await rpcGuest(m, 'evt-c', { vcpus: 2 });
    pc = (await c.call('allocUnbound', { remote: b.domid })) as number;
    pb = (await b.call('bind', { remote: c.domid, port: pc })) as number;
    await eventually(async () => ((await b.call('evtCount', { port: pb })) as number) >= 1, 5000, 'bind event');
  });

  it('moves delivery to vCPU 1: its handler runs there, vCPU 0 sees nothing, and vCPU 1 sends back', async () => {
    await c.call('onVcpu', { vcpu: 1, op: 'listen', args: { port: pc } });
    await c.call('bindVcpu', { port: pc, vcpu: 1 });
    expect(await c.call('status', { port: pc })).toMatchObject({ status: EVTCHNSTAT.interdomain, vcpu: 1 });
    // vCPU 1 learned the binding too (the hypervisor announces it to every vCPU).
    expect(await c.call('onVcpu', { vcpu: 1, op: 'vcpuOf', args: { port: pc } })).toBe(1);
    const on0 = (await c.call('evtCount', { port: pc })) as number;
    for (let i = 1; i <= 5; i++) {
      await b.call('notify', { port: pb });
      await eventually(async () => ((await c.call('onVcpu', { vcpu: 1, op: 'evtCount', args: { port: pc } })) as number) >= i, 5000, `event ${i} on vcpu 1`);
    }
    expect(await c.call('evtCount', { port: pc })).toBe(on0);
    const before = (await b.call('evtCount', { port: pb })) as number;
    await c.call('onVcpu', { vcpu: 1, op: 'notify', args: { port: pc } });
    await eventually(async () => ((await b.call('evtCount', { port: pb })) as number) === before + 1, 5000, 'event from vcpu 1');
    // And back to vCPU 0.
    await c.call('bindVcpu', { port: pc, vcpu: 0 });
    await b.call('notify', { port: pb });
    await eventually(async () => ((await c.call('evtCount', { port: pc })) as number) === on0 + 1, 5000, 'event on vcpu 0 again');
  });

  it('refuses a vCPU the domain does not have (ENOENT) and a closed port (EINVAL)', async () => {
    await expect(c.call('bindVcpu', { port: pc, vcpu: 2 })).rejects.toThrow(/ENOENT/);
    await expect(c.call('bindVcpu', { port: 999, vcpu: 1 })).rejects.toThrow(/EINVAL/);
  });
});

describe('masking and pausing', () => {
  let pa: number;
  let pb: number;
  beforeAll(async () => {
    pa = (await a.call('allocUnbound', { remote: b.domid })) as number;
    pb = (await b.call('bind', { remote: a.domid, port: pa })) as number;
    await eventually(async () => ((await b.call('evtCount', { port: pb })) as number) >= 1, 5000, 'bind event');
  });

  it('a masked port stays pending and is delivered on unmask (the re-check of evtchn_unmask)', async () => {
    await b.call('mask', { port: pb });
    const before = (await b.call('evtCount', { port: pb })) as number;
    await a.call('notify', { port: pa });
    await new Promise((r) => setTimeout(r, 200));
    expect(await b.call('evtCount', { port: pb })).toBe(before);
    await b.call('unmask', { port: pb });
    await eventually(async () => ((await b.call('evtCount', { port: pb })) as number) === before + 1, 5000, 'event after unmask');
  });

  it('a paused domain dispatches nothing until unpaused', async () => {
    const before = (await b.call('evtCount', { port: pb })) as number;
    await m.pause(b.domid);
    await a.call('notify', { port: pa });
    await new Promise((r) => setTimeout(r, 200));
    await m.unpause(b.domid);
    // The event stayed pending across the pause and arrives after it.
    await eventually(async () => ((await b.call('evtCount', { port: pb })) as number) === before + 1, 5000, 'event after unpause');
  });
});
