// Observing a running machine (toolstack/machine.ts): domain lifecycle events
// (created → running → paused → running → exited, with the exit), XenbusState changes
// of a guest's disk and NIC from both ends as they connect and as they close, and
// counter snapshots — one at a time (stats) and as a stream (snapshots) — whose
// counters move with the guest's I/O, a disk's latency histogram counting every
// request answered.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine, type ConsoleEvent, type DomainEvent, type XenbusEvent } from '../toolstack/machine.ts';
import { XenbusState } from '../xenstore/xenbus.ts';
import { parseDiskSpec } from '../toolstack/config.ts';
import { rpcGuest, eventually, guestPath, randomImage } from './helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'pvio-events-'));
let m: Machine;
const domainEvents: DomainEvent[] = [];
const xenbusEvents: XenbusEvent[] = [];

beforeAll(async () => {
  m = await Machine.boot({ onConsole: () => {} });
  m.on('domain', (e) => domainEvents.push(e));
  m.on('xenbus', (e) => xenbusEvents.push(e));
  await m.watchXenbus();
});
afterAll(async () => {
  await m?.shutdown();
  rmSync(dir, { recursive: true, force: true });
});

type Disk = { reads: number; bytesRead: number };

describe('a machine reports what happens in it', () => {
  it('lifecycle, device states from both ends, and counter snapshots', async () => {
    const img = randomImage(dir, 'd.img', 1 << 20);
    const g = await rpcGuest(m, 'watched', {
      disks: [parseDiskSpec(`${img.path},xvda,r`, dir)],
      vifs: [{}],
    });
    expect(domainEvents.filter((e) => e.domid === g.domid).map((e) => e.state)).toEqual(['created', 'running']);

    // Both ends of the disk and of the NIC reach Connected, the backend through InitWait.
    const states = (end: string, type: string) => xenbusEvents.filter((e) => e.domid === g.domid && e.end === end && e.type === type).map((e) => e.stateName);
    await eventually(() => ['frontend', 'backend'].every((end) => ['vbd', 'vif'].every((t) => states(end, t).includes('Connected'))), 10_000, 'all four ends Connected');
    for (const t of ['vbd', 'vif']) {
      expect(states('backend', t)).toContain('InitWait');
      expect(states('backend', t).indexOf('InitWait')).toBeLessThan(states('backend', t).indexOf('Connected'));
      expect(xenbusEvents.find((e) => e.domid === g.domid && e.type === t)?.devid).toBe(t === 'vbd' ? 202 << 8 : 0);
    }
    const vbdBackend = xenbusEvents.find((e) => e.domid === g.domid && e.end === 'backend' && e.type === 'vbd')!;
    expect(vbdBackend.path).toBe(`/local/domain/0/backend/vbd/${g.domid}/${202 << 8}/state`);
    expect(vbdBackend.state === null || vbdBackend.state in XenbusState).toBe(true);

    // A snapshot now, and a stream whose disk counters move with the guest's reads.
    const s0 = await m.stats();
    expect(s0.at).toBeGreaterThan(0);
    expect(Object.keys(s0.hypervisor).length).toBeGreaterThan(0);
    const diskKey = `watched/xvda`;
    const disks0 = (s0.dom0 as { disks: Record<string, Disk> }).disks;
    expect(disks0[diskKey]).toBeDefined();
    const seen: number[] = [];
    const stream = m.snapshots(50);
    let reads = 0;
    for await (const s of stream) {
      const d = (s.dom0 as { disks: Record<string, Disk> }).disks[diskKey];
      seen.push(d.bytesRead);
      if (reads++ < 3) await g.call('readDisk', { name: 'xvda', sector: reads * 8, count: 8 });
      else break;
    }
    expect(seen.length).toBe(4);
    expect(seen[3]).toBeGreaterThan(seen[0]);
    // Every request answered is in the disk's latency histogram (log2 buckets of µs).
    const d = ((await m.stats()).dom0 as { disks: Record<string, { requests: number; inFlight: number; latencyHistogramUs: number[] }> }).disks[diskKey];
    expect(d.latencyHistogramUs).toHaveLength(24);
    expect(d.latencyHistogramUs.reduce((x, y) => x + y, 0)).toBe(d.requests - d.inFlight);
    expect(d.requests).toBeGreaterThan(0);
    // Per domain: hypercalls made and wake-ups asked of its vCPUs, rising with its I/O.
    type Dom = { domid: number; hypercalls: number; wakes: number };
    const before = ((s0.hypervisor as { domains: Dom[] }).domains).find((x) => x.domid === g.domid)!;
    const now = (await m.domains()).find((x) => x.domid === g.domid)!;
    expect(now.hypercalls).toBeGreaterThanOrEqual(before.hypercalls);
    expect(now.wakes).toBeGreaterThan(before.wakes);

    // Pause and unpause, then the guest exits: its devices close from both ends.
    await m.pause(g.domid);
    await m.unpause(g.domid);
    await g.call('exit', { value: 'bye' });
    const exit = await g.exit;
    await eventually(() => domainEvents.some((e) => e.domid === g.domid && e.state === 'exited'), 5000, 'exited event');
    const mine = domainEvents.filter((e) => e.domid === g.domid);
    expect(mine.map((e) => e.state)).toEqual(['created', 'running', 'paused', 'running', 'exited']);
    expect(mine[4].exit).toEqual(exit);
    expect(exit.value).toBe('bye');
    await eventually(() => ['frontend', 'backend'].every((end) => ['vbd', 'vif'].every((t) => states(end, t).includes('Closed'))), 10_000, 'both ends closed');
    // The whole handshake, in order, as blkif's frontend and backend walk it.
    expect(states('frontend', 'vbd')).toEqual(['Initialising', 'Initialised', 'Connected', 'Closing', 'Closed']);
    expect(states('backend', 'vbd')).toEqual(['Initialising', 'InitWait', 'Connected', 'Closing', 'Closed']);
    expect(states('frontend', 'vif').slice(-3)).toEqual(['Connected', 'Closing', 'Closed']);
  });

  it('console input typed before the guest reads its console waits in the ring', async () => {
    const lines: string[] = [];
    const on = (e: ConsoleEvent) => {
      if (e.domain === 'late') lines.push(e.line);
    };
    m.on('console', on);
    try {
      const g = await m.createGuest({ name: 'late', memoryMiB: 16, vcpus: 1, kernel: guestPath('echo-console.ts'), args: { readerDelayMs: 400 } });
      await eventually(() => lines.includes('echo-console: ready'), 10_000, 'the guest to start');
      expect(await m.consoleInput(g.domid, 'typed early\n')).toBe(12);
      await eventually(() => lines.includes('echo: typed early'), 10_000, 'the echo');
      await m.destroy(g.domid);
      await g.exit; // gone before the next test listens for domain events
    } finally {
      m.off('console', on);
    }
  });

  it('a listener that throws does not stop the others, and off() removes one', async () => {
    const got: string[] = [];
    const bad = () => {
      throw new Error('listener bug');
    };
    const good = (e: DomainEvent) => {
      if (e.name === 'short') got.push(e.state);
    };
    m.on('domain', bad).on('domain', good);
    const g = await rpcGuest(m, 'short', {});
    m.off('domain', good);
    await g.call('exit', {});
    await g.exit;
    m.off('domain', bad);
    expect(got).toEqual(['created', 'running']);
  });
});
