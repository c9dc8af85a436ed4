// netback/pcap.ts: the savefile's exact header bytes, write → read round trips
// (bytes, lengths, timestamps, truncation to the snaplen), the 64 KiB batching, and
// an independent check by tshark: it must decode every frame netfront/frame.ts
// builds with the expected protocol and agree on which checksums are good.
import { afterAll, describe, expect, it } from 'vitest';
import { tshark, GOOD, BAD } from './fixtures/tshark.ts';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  LINKTYPE_ETHERNET, PCAP_FLUSH_BYTES, PCAP_GLOBAL_HEADER, PCAP_RECORD_HEADER, PCAP_SNAPLEN, PcapError, PcapWriter,
  readPcap,
} from '../netback/pcap.ts';
import {
  IPPROTO_TCP, TCP_HEADER, buildArpReply, buildArpRequest, buildIcmpEchoReply, buildIcmpEchoRequest, buildIpv4Frame,
  buildUdpFrame, completeChecksum, makePartialChecksum, parseMac, verifyChecksums, type Ipv4FrameOptions,
} from '../netfront/frame.ts';

const dir = mkdtempSync(join(tmpdir(), 'pvio-pcap-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const hex = (s: string) => Uint8Array.from(s.replace(/\s+/g, '').match(/../g)!, (h) => parseInt(h, 16));
const frameOf = (len: number, seed: number) => Uint8Array.from({ length: len }, (_, i) => (seed + i * 7) & 0xff);

describe('PcapWriter / readPcap', () => {
  it('writes the classic global header: a1b2c3d4 little-endian, 2.4, zone 0, sigfigs 0, snaplen 65535, Ethernet', () => {
    const path = join(dir, 'empty.pcap');
    PcapWriter.open(path).close();
    expect(new Uint8Array(readFileSync(path))).toEqual(hex('d4c3b2a1 0200 0400 00000000 00000000 ffff0000 01000000'));
    expect(readPcap(path)).toEqual({ linkType: LINKTYPE_ETHERNET, snaplen: PCAP_SNAPLEN, records: [] });
  });

  it('reads back exactly the bytes, lengths and microsecond timestamps written', () => {
    const path = join(dir, 'roundtrip.pcap');
    const w = PcapWriter.open(path);
    const frames = [frameOf(14, 1), frameOf(60, 2), frameOf(1514, 3), frameOf(9000, 4), new Uint8Array(0)];
    const times = [0, 999_999, 1_000_000, 1_700_000_123_456, 4_294_967_295_999_999];
    frames.forEach((f, i) => w.write(f, times[i]));
    w.close();
    expect(w.counters).toMatchObject({ frames: 5, bytes: 14 + 60 + 1514 + 9000, truncated: 0 });
    const cap = readPcap(path);
    expect(cap.linkType).toBe(LINKTYPE_ETHERNET);
    expect(cap.records.map((r) => r.timeUs)).toEqual(times);
    expect(cap.records.map((r) => r.data)).toEqual(frames);
    expect(cap.records.map((r) => r.origLen)).toEqual(frames.map((f) => f.length));
    const size = PCAP_GLOBAL_HEADER.size + frames.reduce((n, f) => n + PCAP_RECORD_HEADER.size + f.length, 0);
    expect(statSync(path).size).toBe(size);
  });

  it('truncates a frame to the 65535-byte snaplen and keeps its original length', () => {
    const path = join(dir, 'snaplen.pcap');
    const w = PcapWriter.open(path);
    const big = frameOf(70_000, 9);
    w.write(big, 1);
    w.write(frameOf(PCAP_SNAPLEN, 3), 2);
    w.close();
    expect(w.counters).toMatchObject({ frames: 2, truncated: 1 });
    const [r0, r1] = readPcap(path).records;
    expect(r0.origLen).toBe(70_000);
    expect(r0.data).toEqual(big.subarray(0, PCAP_SNAPLEN));
    expect(r1.data).toHaveLength(PCAP_SNAPLEN);
  });

  it('batches records: nothing reaches the file until more than 64 KiB are pending, the rest at close', () => {
    const path = join(dir, 'batch.pcap');
    const w = PcapWriter.open(path);
    expect(statSync(path).size).toBe(PCAP_GLOBAL_HEADER.size);
    const rec = PCAP_RECORD_HEADER.size + 1000;
    const perFlush = Math.floor(PCAP_FLUSH_BYTES / rec) + 1;
    for (let i = 0; i < perFlush - 1; i++) w.write(frameOf(1000, i), i);
    expect(statSync(path).size).toBe(PCAP_GLOBAL_HEADER.size);
    w.write(frameOf(1000, 0), 0);
    expect(statSync(path).size).toBe(PCAP_GLOBAL_HEADER.size + perFlush * rec);
    w.write(frameOf(10, 0), 0);
    w.close();
    expect(statSync(path).size).toBe(PCAP_GLOBAL_HEADER.size + perFlush * rec + PCAP_RECORD_HEADER.size + 10);
    expect(w.counters.flushes).toBe(3); // header, the batch, close
    expect(readPcap(path).records).toHaveLength(perFlush + 1);
  });

  it('defaults timestamps to wall-clock microseconds', () => {
    const path = join(dir, 'clock.pcap');
    const w = PcapWriter.open(path);
    const before = Date.now() * 1000;
    w.write(frameOf(20, 0));
    w.write(frameOf(20, 1));
    const after = Date.now() * 1000;
    w.close();
    const [a, b] = readPcap(path).records.map((r) => r.timeUs);
    // performance.timeOrigin and Date.now() may disagree by a few ms: allow one second.
    expect(a).toBeGreaterThan(before - 1e6);
    expect(b).toBeLessThan(after + 1e6);
    expect(b).toBeGreaterThanOrEqual(a);
  });

  it('refuses writes after close and bad timestamps; close is idempotent', () => {
    const w = PcapWriter.open(join(dir, 'closed.pcap'));
    expect(() => w.write(frameOf(20, 0), -1)).toThrow(RangeError);
    expect(() => w.write(frameOf(20, 0), 1.5)).toThrow(RangeError);
    expect(() => w.write(frameOf(20, 0), 2 ** 32 * 1e6)).toThrow(RangeError);
    w.close();
    w.close();
    expect(() => w.write(frameOf(20, 0), 0)).toThrow(PcapError);
  });

  it('readPcap reads big-endian and nanosecond files, and refuses garbage and truncated records', () => {
    const be = join(dir, 'be.pcap');
    writeFileSync(be, hex('a1b23c4d 0002 0004 00000000 00000000 0000ffff 00000001  00000002 000f4240 00000003 00000004  aabbcc'));
    expect(readPcap(be)).toEqual({ linkType: 1, snaplen: 65535, records: [{ timeUs: 2_001_000, origLen: 4, data: hex('aabbcc') }] });
    const junk = join(dir, 'junk.pcap');
    writeFileSync(junk, hex('0a0d0d0a' + '00'.repeat(36))); // a pcapng section header: not this format
    expect(() => readPcap(junk)).toThrow(PcapError);
    const path = join(dir, 'short.pcap');
    const w = PcapWriter.open(path);
    w.write(frameOf(100, 0), 0);
    w.close();
    writeFileSync(path, readFileSync(path).subarray(0, PCAP_GLOBAL_HEADER.size + PCAP_RECORD_HEADER.size + 99));
    expect(() => readPcap(path)).toThrow(/runs past the end/);
  });
});

// ---------------------------------------------------------------------------
// tshark, an independent decoder

describe('tshark reads what PcapWriter and frame.ts produce', () => {
  it('decodes ARP, ICMP echo, UDP and TCP frames, and agrees on every checksum (the broken one bad)', () => {
    const a = parseMac('00:16:3e:00:00:01');
    const b = parseMac('00:16:3e:00:00:02');
    const ab: Ipv4FrameOptions = { srcMac: a, dstMac: b, src: '10.0.0.1', dst: '10.0.0.2' };
    const ba: Ipv4FrameOptions = { srcMac: b, dstMac: a, src: '10.0.0.2', dst: '10.0.0.1' };
    const ping = new TextEncoder().encode('pvio ping payload 0123456789abcdef');
    const expected: Array<{ frame: Uint8Array; protocol: string; l4: 'udp' | 'icmp' | 'tcp' | null; good: boolean }> = [];
    const add = (frame: Uint8Array, protocol: string, l4: 'udp' | 'icmp' | 'tcp' | null, good = true) => expected.push({ frame, protocol, l4, good });

    add(buildArpRequest({ sha: a, spa: '10.0.0.1', tpa: '10.0.0.2' }), 'ARP', null);
    add(buildArpReply({ sha: b, spa: '10.0.0.2', tha: a, tpa: '10.0.0.1' }), 'ARP', null);
    add(buildIcmpEchoRequest({ ...ab, identifier: 0x4242, sequence: 1, payload: ping }), 'ICMP', 'icmp');
    add(buildIcmpEchoReply({ ...ba, identifier: 0x4242, sequence: 1, payload: ping }), 'ICMP', 'icmp');
    const N = 40;
    for (let i = 0; i < N; i++) {
      const payload = Uint8Array.from({ length: i * 13 + (i % 2) }, (_, j) => (i * 31 + j) & 0xff); // odd and even lengths
      add(buildUdpFrame({ ...(i % 2 ? ab : ba), id: i, srcPort: 40000 + i, dstPort: 50000, payload }), 'UDP', 'udp');
    }
    const partial = buildUdpFrame({ ...ab, srcPort: 40100, dstPort: 50000, payload: ping });
    makePartialChecksum(partial);
    completeChecksum(partial);
    add(partial, 'UDP', 'udp');
    const syn = new Uint8Array(TCP_HEADER.size);
    const dv = new DataView(syn.buffer);
    dv.setUint16(TCP_HEADER.fields.source.offset, 40200);
    dv.setUint16(TCP_HEADER.fields.dest.offset, 50001);
    dv.setUint16(TCP_HEADER.fields.doffFlags.offset, (5 << 12) | 0x02); // SYN
    dv.setUint16(TCP_HEADER.fields.window.offset, 0xffff);
    const tcp = buildIpv4Frame({ ...ab, protocol: IPPROTO_TCP, payload: syn });
    completeChecksum(tcp);
    add(tcp, 'TCP', 'tcp');
    const broken = buildUdpFrame({ ...ab, srcPort: 40300, dstPort: 50000, payload: ping });
    broken[broken.length - 1] ^= 0x01;
    expect(verifyChecksums(broken)).toMatchObject({ ipv4: 'good', l4: 'bad' });
    add(broken, 'UDP', 'udp', false);

    const path = join(dir, 'tshark.pcap');
    const w = PcapWriter.open(path);
    expected.forEach((e, i) => w.write(e.frame, 1_700_000_000_000_000 + i * 1000));
    w.close();

    const rows = tshark(path);
    expect(rows).toHaveLength(expected.length);
    expect(rows.map((r) => r.protocol)).toEqual(expected.map((e) => e.protocol));
    const ipv4 = expected.filter((e) => e.l4 !== null).length;
    expect(rows.filter((r) => r.ip === GOOD)).toHaveLength(ipv4);
    for (const l4 of ['udp', 'icmp', 'tcp'] as const) {
      const built = expected.filter((e) => e.l4 === l4);
      expect(rows.filter((r) => r[l4] === GOOD), `${l4} checksums good`).toHaveLength(built.filter((e) => e.good).length);
      expect(rows.filter((r) => r[l4] === BAD), `${l4} checksums bad`).toHaveLength(built.filter((e) => !e.good).length);
    }
    expect(rows[rows.length - 1]).toMatchObject({ protocol: 'UDP', ip: GOOD, udp: BAD });
  });
});
