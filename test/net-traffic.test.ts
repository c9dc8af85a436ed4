// Real traffic through the bridge, checked by tshark: example guests
// (toolstack/guests/net-peer.ts) ARP-resolve each other, exchange ICMP echo and
// stream UDP datagrams — one sender with full checksums, one with partial checksums
// (NETTXF_csum_blank) towards a receiver whose vif has no checksum offload, so the
// bridge completes them. In the capture, tshark decodes every frame, and the counts
// of good IP, ICMP and UDP checksums equal the frames sent.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine } from '../toolstack/machine.ts';
import type { NetPeerArgs, NetPeerResult } from '../toolstack/guests/net-peer.ts';
import { tshark, GOOD } from './fixtures/tshark.ts';

const PEER = new URL('../toolstack/guests/net-peer.ts', import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), 'pvio-traffic-'));
const pcap = join(dir, 'xenbr0.pcap');
const UDP_EACH = 100;
const PINGS = 4;

let m: Machine;
beforeAll(async () => {
  m = await Machine.boot({ pcap });
});
afterAll(async () => {
  await m?.shutdown();
  rmSync(dir, { recursive: true, force: true });
});

describe('ARP, ICMP echo and UDP between example guests, captured on the bridge', () => {
  it('every datagram arrives intact, and tshark finds every checksum good', async () => {
    const guest = (name: string, args: NetPeerArgs, csumOffload = true) =>
      m.createGuest({ name, memoryMiB: 32, vcpus: 1, kernel: PEER, args, vifs: [{ csumOffload }] });
    // B counts; A sends with full checksums; C with partial ones. B's vif takes no partial checksums.
    const b = await guest('peer-b', { ip: '10.0.0.2', expectUdp: 2 * UDP_EACH, runMs: 20_000 }, false);
    const [a, c] = await Promise.all([
      guest('peer-a', { ip: '10.0.0.1', peer: '10.0.0.2', pings: PINGS, udp: UDP_EACH, udpBytes: 700 }),
      guest('peer-c', { ip: '10.0.0.3', peer: '10.0.0.2', pings: PINGS, udp: UDP_EACH, udpBytes: 333, partialChecksums: true }),
    ]);
    const [ea, eb, ec] = await Promise.all([a.exit, b.exit, c.exit]);
    const [ra, rb, rc] = [ea, eb, ec].map((e) => e.value as NetPeerResult);
    for (const r of [ra, rc]) expect(r).toMatchObject({ pingsSent: PINGS, pingsAnswered: PINGS, udpSent: UDP_EACH });
    expect(rb).toMatchObject({ udpReceived: 2 * UDP_EACH, udpBadChecksums: 0, udpBadPayloads: 0, echoRequestsAnswered: 2 * PINGS });
    expect(rb.arpRequestsAnswered).toBeGreaterThanOrEqual(2);

    const s = (await m.dom0Stats()) as { bridges: Record<string, { frames: number; captured: number; checksumsCompleted: number }> };
    const br = s.bridges.xenbr0;
    expect(br.checksumsCompleted).toBe(UDP_EACH); // C's partial checksums, completed once each (B and the capture share the copy)
    await m.dom0Request({ type: 'capture', path: null });

    const rows = tshark(pcap);
    expect(rows).toHaveLength(br.frames);
    // By the checksum fields present, not the protocol column (tshark names some UDP ports' protocols).
    const udp = rows.filter((r) => r.udp !== '');
    const icmp = rows.filter((r) => r.icmp !== '');
    const arp = rows.filter((r) => r.protocol === 'ARP');
    expect(udp).toHaveLength(2 * UDP_EACH);
    expect(icmp).toHaveLength(2 * 2 * PINGS);
    expect(arp.length).toBeGreaterThanOrEqual(4); // at least a request and a reply per sender
    expect(rows.length).toBe(udp.length + icmp.length + arp.length); // nothing undecoded
    expect(udp.filter((r) => r.ip === GOOD && r.udp === GOOD)).toHaveLength(2 * UDP_EACH);
    expect(icmp.filter((r) => r.ip === GOOD && r.icmp === GOOD)).toHaveLength(2 * 2 * PINGS);
  });
});
