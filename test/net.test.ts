// The virtual network between real worker domains: netfront ↔ netback over the netif
// rings, joined by dom0's learning bridge; both data-path modes (grant copy, and
// pvio's persistent pool); frames over one page with feature-sg; the capture.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine, type GuestHandle } from '../toolstack/machine.ts';
import { rpcGuest, eventually, domainInfo } from './helpers.ts';
import { readPcap } from '../netback/pcap.ts';

const dir = mkdtempSync(join(tmpdir(), 'pvio-net-'));
const pcap = join(dir, 'bridge.pcap');
type NicInfo = { mac: string; mtu: number; features: { queues: number; split: boolean; sg: boolean; persistent: boolean }; counters: Record<string, number> };
type Vif = { txPackets: number; rxPackets: number; txBytes: number; rxBytes: number; grantCopies: number; grantMaps: number; persistentHits: number; negotiated: { persistent: boolean; split: boolean; sg: boolean } };

let m: Machine;
beforeAll(async () => {
  m = await Machine.boot({ pcap });
});
afterAll(async () => {
  await m?.shutdown();
  rmSync(dir, { recursive: true, force: true });
});

const macBytes = (mac: string) => mac.split(':').map((x) => parseInt(x, 16));
/** An Ethernet frame of `len` bytes to `dst` from `src`, ethertype 0x88b5 (local experimental), payload bytes `seed + i`. */
function frame(dst: string, src: string, len: number, seed: number): number[] {
  const f = [...macBytes(dst), ...macBytes(src), 0x88, 0xb5];
  for (let i = f.length; i < len; i++) f.push((seed + i) & 0xff);
  return f;
}
async function vif(name: string): Promise<Vif> {
  const s = (await m.dom0Stats()) as { vifs: Record<string, Vif> };
  return s.vifs[name];
}

describe.each([
  { mode: 'grant copy', persistent: false },
  { mode: 'persistent pool', persistent: true },
])('two guests on xenbr0, $mode', ({ persistent }) => {
  let a: GuestHandle;
  let b: GuestHandle;
  let ia: NicInfo;
  let ib: NicInfo;
  const tag = persistent ? 'p' : 'c';
  beforeAll(async () => {
    [a, b] = await Promise.all([
      rpcGuest(m, `net-a${tag}`, { vifs: [{ persistent }] }),
      rpcGuest(m, `net-b${tag}`, { vifs: [{ persistent }] }),
    ]);
    [ia, ib] = (await Promise.all([a.call('nicInfo', { name: 'eth0' }), b.call('nicInfo', { name: 'eth0' })])) as NicInfo[];
  });
  afterAll(async () => {
    await Promise.all([a?.call('exit', {}), b?.call('exit', {})]);
    await Promise.all([a?.exit, b?.exit]);
  });

  it('negotiates: one queue, split event channels, scatter-gather, the data-path mode asked for', () => {
    expect(ia.mac).not.toBe(ib.mac);
    expect(ia.mtu).toBe(1500);
    expect(ia.features).toMatchObject({ queues: 1, split: true, sg: true, persistent });
  });

  it('a broadcast reaches the other guest, not the sender; then unicast both ways after learning', async () => {
    const bc = frame('ff:ff:ff:ff:ff:ff', ia.mac, 60, 1);
    await a.call('nicSend', { name: 'eth0', frames: [bc] });
    expect(await b.call('nicReceive', { name: 'eth0', max: 1 })).toEqual([bc]);
    expect(await a.call('nicReceive', { name: 'eth0', timeoutMs: 100 })).toEqual([]);
    const toA = frame(ia.mac, ib.mac, 1514, 7);
    await b.call('nicSend', { name: 'eth0', frames: [toA] });
    expect(await a.call('nicReceive', { name: 'eth0', max: 1 })).toEqual([toA]);
    const toB = Array.from({ length: 100 }, (_, i) => frame(ib.mac, ia.mac, 60 + i * 14, i));
    await a.call('nicSend', { name: 'eth0', frames: toB });
    expect(await b.call('nicReceive', { name: 'eth0', max: 100 })).toEqual(toB);
  });

  it('frames over one page travel in several slots (feature-sg): 9000 and 65535 bytes', async () => {
    const big = [frame(ib.mac, ia.mac, 9000, 3), frame(ib.mac, ia.mac, 65535, 5)];
    await a.call('nicSend', { name: 'eth0', frames: big });
    expect(await b.call('nicReceive', { name: 'eth0', max: 2 })).toEqual(big);
  });

  it('trySend fills the tx ring without waiting; frames lent by receiveBatch({ borrow }) arrive intact across chunk reuse', async () => {
    // 400 frames of 1514 bytes: ~9 chunks of 64 KiB, so the receiver's chunks are given back and reused.
    const many = Array.from({ length: 400 }, (_, i) => frame(ib.mac, ia.mac, 1514, 1000 + i));
    const [took, got] = await Promise.all([
      a.call('nicTrySend', { name: 'eth0', frames: many }) as Promise<number>,
      b.call('nicReceiveBorrowed', { name: 'eth0', max: 400 }) as Promise<{ frames: number[][]; batches: number }>,
    ]);
    expect(took).toBeGreaterThan(0);
    expect(got.frames.length).toBe(400);
    expect(got.frames).toEqual(many);
    expect(got.batches).toBeGreaterThan(0);
  });

  it(persistent ? 'netfront keeps its pool granted: no grant made or ended per frame' : 'netfront ends each grant after its response: only the posted rx buffers and the rings stay granted', async () => {
    type G = NicInfo & { gnttab: { granted: number; ended: number } };
    const ga = (await a.call('nicInfo', { name: 'eth0' })) as G;
    const outstanding = ga.gnttab.granted - ga.gnttab.ended;
    // 256 rx buffers posted + the tx and rx ring pages (+ 256 tx pool pages when persistent).
    expect(outstanding).toBe(persistent ? 256 + 256 + 2 : 256 + 2);
    if (!persistent) expect(ga.gnttab.granted).toBeGreaterThan(256 + 2 + 100); // a grant per frame sent and per buffer refilled
    else expect(ga.gnttab.granted).toBe(256 + 256 + 2);
  });

  it('netback counted what crossed, through the mode negotiated', async () => {
    const va = await vif(`net-a${tag}/vif${a.domid}.0`);
    expect(va.negotiated).toMatchObject({ persistent, split: true, sg: true });
    expect(va.txPackets).toBeGreaterThanOrEqual(503);
    if (persistent) {
      expect(va.grantCopies).toBe(0);
      expect(va.persistentHits).toBeGreaterThan(0);
    } else {
      expect(va.grantCopies).toBeGreaterThanOrEqual(503);
      expect(va.grantMaps).toBe(0);
    }
  });
});

describe('two queues, and the rate limit', () => {
  it('2-vCPU guests negotiate two queues (queue-N/ keys); frames use both and arrive in full', async () => {
    const [a, b] = await Promise.all([
      rpcGuest(m, 'net-mq-a', { vcpus: 2, vifs: [{}] }),
      rpcGuest(m, 'net-mq-b', { vcpus: 2, vifs: [{}] }),
    ]);
    const [ia, ib] = (await Promise.all([a.call('nicInfo', { name: 'eth0' }), b.call('nicInfo', { name: 'eth0' })])) as NicInfo[];
    expect(ia.features.queues).toBe(2);
    const frames = Array.from({ length: 64 }, (_, i) => frame(ib.mac, ia.mac, 100 + i, i));
    await a.call('nicSend', { name: 'eth0', frames });
    // Two queues may interleave: compare as sets, in full.
    const got = (await b.call('nicReceive', { name: 'eth0', max: 64 })) as number[][];
    expect(got.map((f) => JSON.stringify(f)).sort()).toEqual(frames.map((f) => JSON.stringify(f)).sort());
    const s = (await m.dom0Stats()) as { vifs: Record<string, { queues: number; txPackets: number; negotiated: { queues: number }; perQueue: Array<{ txPackets: number }> }> };
    const va = s.vifs[`net-mq-a/vif${a.domid}.0`];
    expect(va).toMatchObject({ queues: 2, negotiated: { queues: 2 } });
    // Per-queue counters: both queues carried frames (the round robin), and they add up.
    expect(va.perQueue).toHaveLength(2);
    expect(va.perQueue.every((q) => q.txPackets > 0)).toBe(true);
    expect(va.perQueue[0].txPackets + va.perQueue[1].txPackets).toBe(va.txPackets);
    const qa = (await a.call('nicInfo', { name: 'eth0' })) as NicInfo;
    expect(qa.counters.txPackets).toBe(64);
    await Promise.all([a.call('exit', {}), b.call('exit', {})]);
    await Promise.all([a.exit, b.exit]);
  });

  it('rate=bytes per window: netback holds a sender back once a window\'s credit is spent', async () => {
    // 200 KB per 100 ms; 600 KB need at least two more windows after the first (burst) one.
    const a = await rpcGuest(m, 'net-rate-a', { vifs: [{ rate: { bytesPerInterval: 200_000, intervalUs: 100_000 } }] });
    const b = await rpcGuest(m, 'net-rate-b', { vifs: [{}] });
    const [ia, ib] = (await Promise.all([a.call('nicInfo', { name: 'eth0' }), b.call('nicInfo', { name: 'eth0' })])) as NicInfo[];
    const frames = Array.from({ length: 400 }, (_, i) => frame(ib.mac, ia.mac, 1514, i));
    const t0 = performance.now();
    await a.call('nicSend', { name: 'eth0', frames });
    const got = (await b.call('nicReceive', { name: 'eth0', max: 400, timeoutMs: 5000, idleMs: 500 })) as number[][];
    const ms = performance.now() - t0;
    expect(got).toHaveLength(400);
    expect(ms).toBeGreaterThanOrEqual(180);
    const v = await vif(`net-rate-a/vif${a.domid}.0`) as Vif & { txCreditStalls: number };
    expect(v.txCreditStalls).toBeGreaterThan(0);
    await Promise.all([a.call('exit', {}), b.call('exit', {})]);
    await Promise.all([a.exit, b.exit]);
  });
});

describe('after the guests are gone', () => {
  it('dom0 holds no mapping of theirs, and the capture holds every frame that crossed the bridge', async () => {
    await eventually(async () => (await domainInfo(m, 0))?.mappings === 0, 10_000, 'dom0 unmapped everything');
    const s = (await m.dom0Stats()) as { bridges: Record<string, { frames: number; captured: number }> };
    const br = s.bridges.xenbr0;
    expect(br.captured).toBe(br.frames);
    await m.dom0Request({ type: 'capture', path: null }); // closes the file
    const cap = readPcap(pcap);
    expect(cap.linkType).toBe(1);
    expect(cap.records).toHaveLength(br.frames);
    expect(cap.records.some((r) => r.data.length === 65535)).toBe(true);
  });
});
