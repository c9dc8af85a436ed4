// netfront/frame.ts: the Internet checksum against RFC 1071's example and a
// hand-checked IPv4 header, ARP/ICMP/UDP round trips, partial checksums, and
// properties: built frames verify, any single-byte corruption is caught, partial →
// complete restores the frame byte for byte, and garbage never throws past a
// FrameError.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  ARPOP_REPLY, ARPOP_REQUEST, ARP_PACKET, BROADCAST_MAC, ETH_HEADER, ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, FrameError, ICMP_ECHO,
  ICMP_ECHOREPLY, ICMP_ECHO_HEADER, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_HEADER, IPV4_HLEN, IP_MF, TCP_HEADER, UDP_HEADER,
  buildArpReply, buildArpRequest, buildIcmpEchoReply, buildIcmpEchoRequest, buildIpv4Frame, buildUdpFrame,
  completeChecksum, decodeEthHeader, decodeIpv4Header, encodeEthHeader, formatIpv4, formatMac, internetChecksum,
  ipv4PseudoHeaderSum, makePartialChecksum, onesComplementSum, parseArp, parseIcmpEcho, parseIpv4, parseMac,
  parseUdp, verifyChecksums, type Ipv4FrameOptions,
} from '../netfront/frame.ts';

const IP = IPV4_HEADER.fields;
const UDP = UDP_HEADER.fields;
const TCP = TCP_HEADER.fields;
const ICMP = ICMP_ECHO_HEADER.fields;
/** Offset of the L4 header in a frame built here (no IP options). */
const L4 = ETH_HLEN + IPV4_HLEN;

const macA = parseMac('00:16:3e:01:02:03');
const macB = parseMac('00:16:3e:0a:0b:0c');
const ip: Ipv4FrameOptions = { srcMac: macA, dstMac: macB, src: '10.0.0.1', dst: '10.0.0.2' };
const hex = (s: string) => Uint8Array.from(s.replace(/\s+/g, '').match(/../g)!, (h) => parseInt(h, 16));
const u16At = (f: Uint8Array, at: number) => new DataView(f.buffer, f.byteOffset).getUint16(at);
const setU16At = (f: Uint8Array, at: number, v: number) => new DataView(f.buffer, f.byteOffset).setUint16(at, v);

/** Recomputes the IPv4 header checksum of a frame after a test edited the header. */
function fixHeaderChecksum(f: Uint8Array): void {
  const hlen = (f[ETH_HLEN + IP.versionIhl.offset] & 0x0f) * 4;
  setU16At(f, ETH_HLEN + IP.check.offset, 0);
  setU16At(f, ETH_HLEN + IP.check.offset, internetChecksum(f.subarray(ETH_HLEN, ETH_HLEN + hlen)));
}

/** A TCP segment (a SYN to port 80 with `payload`) whose checksum field holds garbage until completed. */
function tcpFrame(o: Ipv4FrameOptions, payload: Uint8Array, garbage = 0x1234): Uint8Array {
  const seg = new Uint8Array(TCP_HEADER.size + payload.length);
  const dv = new DataView(seg.buffer);
  dv.setUint16(TCP.source.offset, 40000);
  dv.setUint16(TCP.dest.offset, 80);
  dv.setUint32(TCP.seq.offset, 0x01020304);
  dv.setUint16(TCP.doffFlags.offset, (5 << 12) | 0x02); // doff 5, SYN
  dv.setUint16(TCP.window.offset, 0xffff);
  dv.setUint16(TCP.check.offset, garbage);
  seg.set(payload, TCP_HEADER.size);
  return buildIpv4Frame({ ...o, protocol: IPPROTO_TCP, payload: seg });
}

describe('the Internet checksum (RFC 1071)', () => {
  it('RFC 1071 §3 example: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2, checksum 0x220d', () => {
    const b = hex('0001 f203 f4f5 f6f7');
    expect(onesComplementSum(b)).toBe(0xddf2);
    expect(internetChecksum(b)).toBe(0x220d);
  });
  it('an odd final byte is the high byte of a zero-padded word; initial is added before folding', () => {
    expect(onesComplementSum(hex('01'))).toBe(0x0100);
    expect(onesComplementSum(hex('ffff'), 0x0001)).toBe(0x0001); // 0xffff + 1 = 0x10000 → fold → 1
    expect(internetChecksum(new Uint8Array(0))).toBe(0xffff);
  });
  it('the hand-checked IPv4 header 4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7 has checksum 0xb861', () => {
    const h = hex('4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7');
    expect(internetChecksum(h)).toBe(0xb861);
    h.set([0xb8, 0x61], IP.check.offset);
    expect(onesComplementSum(h)).toBe(0xffff);
    expect(internetChecksum(h)).toBe(0);
  });
  it('buildIpv4Frame writes exactly that header for the same fields', () => {
    const f = buildIpv4Frame({ srcMac: macA, dstMac: macB, src: '192.168.0.1', dst: '192.168.0.199', protocol: IPPROTO_UDP, payload: new Uint8Array(0x73 - 20) });
    expect(f.subarray(ETH_HLEN, L4)).toEqual(hex('4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7'));
  });
  it('the pseudo-header sum of 192.168.0.1 → 192.168.0.199, UDP, 95 bytes is 0x8289 (folded, not complemented)', () => {
    expect(ipv4PseudoHeaderSum(parseIpv4('192.168.0.1'), parseIpv4('192.168.0.199'), IPPROTO_UDP, 0x5f)).toBe(0x8289);
  });
});

describe('addresses', () => {
  it('parseMac/formatMac round trip; broadcast is ff:ff:ff:ff:ff:ff', () => {
    expect(Array.from(macA)).toEqual([0x00, 0x16, 0x3e, 0x01, 0x02, 0x03]);
    expect(formatMac(parseMac('00:16:3E:0A:0B:0C'))).toBe('00:16:3e:0a:0b:0c');
    expect(formatMac(BROADCAST_MAC)).toBe('ff:ff:ff:ff:ff:ff');
  });
  it('malformed MACs are RangeErrors', () => {
    for (const s of ['00:16:3e:01:02', '00:16:3e:01:02:03:04', '00-16-3e-01-02-03', 'zz:16:3e:01:02:03', '']) {
      expect(() => parseMac(s)).toThrow(RangeError);
    }
    expect(() => formatMac(new Uint8Array(5))).toThrow(RangeError);
  });
  it('IPv4 addresses are u32s, most significant byte first', () => {
    expect(parseIpv4('10.0.0.1')).toBe(0x0a000001);
    expect(parseIpv4('255.255.255.255')).toBe(0xffffffff);
    expect(formatIpv4(0xc0a800c7)).toBe('192.168.0.199');
    expect(formatIpv4(parseIpv4('0.0.0.0'))).toBe('0.0.0.0');
  });
  it('malformed IPv4 addresses are RangeErrors', () => {
    for (const s of ['256.0.0.1', '01.2.3.4', '1.2.3', '1.2.3.4.5', '1.2.3.x', ' 1.2.3.4']) {
      expect(() => parseIpv4(s)).toThrow(RangeError);
    }
    expect(() => formatIpv4(2 ** 32)).toThrow(RangeError);
    expect(() => formatIpv4(-1)).toThrow(RangeError);
  });
});

describe('Ethernet II', () => {
  it('encodes dst, src, big-endian ethertype and decodes them back', () => {
    const h = encodeEthHeader({ dst: BROADCAST_MAC, src: macA, ethertype: ETH_P_IPV6 });
    expect(h).toEqual(hex('ffffffffffff 00163e010203 86dd'));
    expect(decodeEthHeader(h)).toEqual({ dst: BROADCAST_MAC, src: macA, ethertype: ETH_P_IPV6 });
  });
  it('a frame shorter than 14 bytes is a FrameError; a short MAC a RangeError', () => {
    expect(() => decodeEthHeader(new Uint8Array(13))).toThrow(FrameError);
    expect(() => encodeEthHeader({ dst: new Uint8Array(5), src: macA, ethertype: ETH_P_IP })).toThrow(RangeError);
  });
});

describe('ARP (RFC 826)', () => {
  it('a request is broadcast, Ethernet/IPv4, op 1, with a zero target MAC', () => {
    const f = buildArpRequest({ sha: macA, spa: '10.0.0.1', tpa: '10.0.0.2' });
    expect(f).toHaveLength(42);
    expect(decodeEthHeader(f)).toEqual({ dst: BROADCAST_MAC, src: macA, ethertype: ETH_P_ARP });
    expect(f.subarray(ETH_HLEN)).toEqual(hex('0001 0800 06 04 0001 00163e010203 0a000001 000000000000 0a000002'));
    expect(parseArp(f)).toEqual({ op: ARPOP_REQUEST, sha: macA, spa: '10.0.0.1', tha: new Uint8Array(6), tpa: '10.0.0.2' });
  });
  it('a reply goes to the asker and round-trips', () => {
    const f = buildArpReply({ sha: macB, spa: '10.0.0.2', tha: macA, tpa: '10.0.0.1' });
    expect(decodeEthHeader(f)).toEqual({ dst: macA, src: macB, ethertype: ETH_P_ARP });
    expect(parseArp(f)).toEqual({ op: ARPOP_REPLY, sha: macB, spa: '10.0.0.2', tha: macA, tpa: '10.0.0.1' });
  });
  it('non-ARP, truncated and non-Ethernet/IPv4 packets are FrameErrors', () => {
    const f = buildArpRequest({ sha: macA, spa: '10.0.0.1', tpa: '10.0.0.2' });
    expect(() => parseArp(f.subarray(0, 41))).toThrow(FrameError);
    expect(() => parseArp(buildUdpFrame({ ...ip, srcPort: 1, dstPort: 2, payload: new Uint8Array(30) }))).toThrow(FrameError);
    const ipv6 = f.slice();
    ipv6[ETH_HLEN + ARP_PACKET.fields.pln.offset] = 16;
    expect(() => parseArp(ipv6)).toThrow(FrameError);
  });
});

describe('IPv4 (RFC 791)', () => {
  it('decodes the header fields, lengths in bytes', () => {
    const f = buildIpv4Frame({ ...ip, protocol: 253, payload: new Uint8Array(10), ttl: 9, id: 0xbeef, tos: 0x10 });
    expect(decodeIpv4Header(f)).toEqual({
      headerLength: 20, tos: 0x10, totalLength: 30, id: 0xbeef, dontFragment: true, moreFragments: false,
      fragmentOffset: 0, ttl: 9, protocol: 253, checksum: u16At(f, ETH_HLEN + IP.check.offset), src: '10.0.0.1', dst: '10.0.0.2',
    });
    expect(verifyChecksums(f)).toEqual({ ipv4: 'good', protocol: 253, l4: 'unchecked', ok: true, reason: expect.any(String) });
  });
  it('accepts IHL > 5 on parse: options are skipped and checksummed with the header', () => {
    const plain = buildUdpFrame({ ...ip, srcPort: 5000, dstPort: 6000, payload: hex('0102030405') });
    const f = new Uint8Array(plain.length + 4);
    f.set(plain.subarray(0, L4));
    f.set(hex('01010100'), L4); // NOP NOP NOP EOL
    f.set(plain.subarray(L4), L4 + 4);
    f[ETH_HLEN + IP.versionIhl.offset] = 0x46;
    setU16At(f, ETH_HLEN + IP.totLen.offset, u16At(plain, ETH_HLEN + IP.totLen.offset) + 4);
    fixHeaderChecksum(f);
    expect(decodeIpv4Header(f).headerLength).toBe(24);
    expect(verifyChecksums(f)).toMatchObject({ ipv4: 'good', l4: 'good' });
    expect(parseUdp(f).payload).toEqual(hex('0102030405'));
  });
  it('rejects non-IPv4, bad version, IHL < 5 and tot_len past the frame with FrameError', () => {
    const f = buildUdpFrame({ ...ip, srcPort: 1, dstPort: 2, payload: new Uint8Array(4) });
    const edit = (fn: (g: Uint8Array) => void) => { const g = f.slice(); fn(g); return g; };
    expect(() => decodeIpv4Header(buildArpRequest({ sha: macA, spa: '10.0.0.1', tpa: '10.0.0.2' }))).toThrow(FrameError);
    expect(() => decodeIpv4Header(edit((g) => { g[ETH_HLEN] = 0x65; }))).toThrow(/version 6/);
    expect(() => decodeIpv4Header(edit((g) => { g[ETH_HLEN] = 0x44; }))).toThrow(/IHL 4/);
    expect(() => decodeIpv4Header(f.subarray(0, f.length - 1))).toThrow(/tot_len/);
    expect(() => decodeIpv4Header(f.subarray(0, L4 - 1))).toThrow(FrameError);
  });
  it('builders refuse out-of-range fields and oversized payloads with RangeError', () => {
    expect(() => buildUdpFrame({ ...ip, srcPort: 65536, dstPort: 1, payload: new Uint8Array(0) })).toThrow(RangeError);
    expect(() => buildUdpFrame({ ...ip, ttl: 256, srcPort: 1, dstPort: 1, payload: new Uint8Array(0) })).toThrow(RangeError);
    expect(() => buildUdpFrame({ ...ip, src: '10.0.0', srcPort: 1, dstPort: 1, payload: new Uint8Array(0) })).toThrow(RangeError);
    expect(() => buildUdpFrame({ ...ip, srcPort: 1, dstPort: 1, payload: new Uint8Array(65508) })).toThrow(RangeError);
    expect(buildUdpFrame({ ...ip, srcPort: 1, dstPort: 1, payload: new Uint8Array(65507) })).toHaveLength(ETH_HLEN + 65535);
  });
});

describe('ICMP echo (RFC 792)', () => {
  it('request and reply round-trip with good checksums', () => {
    const payload = new TextEncoder().encode('abcdefghijklmnopqrstuvwabcdefghi');
    const req = buildIcmpEchoRequest({ ...ip, identifier: 0x1234, sequence: 7, payload });
    const rep = buildIcmpEchoReply({ ...ip, src: ip.dst, dst: ip.src, srcMac: macB, dstMac: macA, identifier: 0x1234, sequence: 7, payload });
    expect(parseIcmpEcho(req)).toMatchObject({ type: ICMP_ECHO, code: 0, identifier: 0x1234, sequence: 7, payload });
    expect(parseIcmpEcho(rep)).toMatchObject({ type: ICMP_ECHOREPLY, code: 0, identifier: 0x1234, sequence: 7, payload });
    expect(parseIcmpEcho(rep).ip).toMatchObject({ src: '10.0.0.2', dst: '10.0.0.1', protocol: IPPROTO_ICMP });
    for (const f of [req, rep]) expect(verifyChecksums(f)).toEqual({ ipv4: 'good', protocol: IPPROTO_ICMP, l4: 'good', ok: true });
    // Request and reply differ only in type (8 vs 0): the checksums differ by exactly 0x0800.
    expect((((parseIcmpEcho(rep).checksum - parseIcmpEcho(req).checksum) % 0xffff) + 0xffff) % 0xffff).toBe(0x0800);
  });
  it('parseIcmpEcho refuses UDP, other ICMP types and truncated messages', () => {
    expect(() => parseIcmpEcho(buildUdpFrame({ ...ip, srcPort: 1, dstPort: 2, payload: new Uint8Array(0) }))).toThrow(/not ICMP/);
    const unreach = buildIcmpEchoRequest({ ...ip, identifier: 1, sequence: 1 });
    unreach[L4 + ICMP.type.offset] = 3;
    expect(() => parseIcmpEcho(unreach)).toThrow(/type 3/);
    const short = buildIpv4Frame({ ...ip, protocol: IPPROTO_ICMP, payload: new Uint8Array(4) });
    expect(() => parseIcmpEcho(short)).toThrow(FrameError);
  });
});

describe('UDP (RFC 768)', () => {
  it('10.0.0.1:1 → 10.0.0.2:2 with no data has the hand-computed checksum 0xebd8', () => {
    // pseudo 0a00+0001+0a00+0002+0011+0008 = 0x141c; header 0001+0002+0008 = 0x000b; ~0x1427 = 0xebd8
    const f = buildUdpFrame({ ...ip, srcPort: 1, dstPort: 2, payload: new Uint8Array(0) });
    expect(parseUdp(f)).toMatchObject({ srcPort: 1, dstPort: 2, length: 8, checksum: 0xebd8 });
  });
  it('round-trips ports and payload (odd length); checksum: false sends 0 = absent', () => {
    const payload = hex('68656c6c6f21ff');
    const f = buildUdpFrame({ ...ip, srcPort: 40000, dstPort: 53, payload });
    expect(parseUdp(f)).toMatchObject({ srcPort: 40000, dstPort: 53, length: 15, payload, ip: { src: '10.0.0.1', protocol: IPPROTO_UDP } });
    expect(verifyChecksums(f)).toEqual({ ipv4: 'good', protocol: IPPROTO_UDP, l4: 'good', ok: true });
    const none = buildUdpFrame({ ...ip, srcPort: 40000, dstPort: 53, payload, checksum: false });
    expect(parseUdp(none).checksum).toBe(0);
    expect(verifyChecksums(none)).toMatchObject({ l4: 'absent', ok: true });
  });
  it('a computed checksum of 0 is transmitted as 0xffff, and verifies', () => {
    const f = buildUdpFrame({ ...ip, srcPort: 1, dstPort: 2, payload: new Uint8Array(2), checksum: false });
    // Choose the 2 payload bytes so that the whole sum folds to 0xffff: the checksum is then ~0xffff = 0.
    const s = onesComplementSum(f.subarray(L4), ipv4PseudoHeaderSum(parseIpv4(ip.src), parseIpv4(ip.dst), IPPROTO_UDP, 10));
    setU16At(f, L4 + UDP_HEADER.size, 0xffff - s);
    expect(completeChecksum(f)).toBe(true);
    expect(parseUdp(f).checksum).toBe(0xffff);
    expect(verifyChecksums(f).l4).toBe('good');
  });
  it('ignores Ethernet padding after tot_len', () => {
    const f = buildUdpFrame({ ...ip, srcPort: 1, dstPort: 2, payload: hex('01') });
    const padded = new Uint8Array(60);
    padded.set(f);
    expect(verifyChecksums(padded)).toMatchObject({ ipv4: 'good', l4: 'good' });
    expect(parseUdp(padded).payload).toEqual(hex('01'));
    expect(completeChecksum(padded)).toBe(true);
    expect(padded.subarray(0, f.length)).toEqual(f);
  });
  it('parseUdp refuses a len field below 8 or past the IPv4 payload', () => {
    const f = buildUdpFrame({ ...ip, srcPort: 1, dstPort: 2, payload: new Uint8Array(4) });
    setU16At(f, L4 + UDP.len.offset, 13);
    expect(() => parseUdp(f)).toThrow(/UDP len 13/);
    setU16At(f, L4 + UDP.len.offset, 7);
    expect(() => parseUdp(f)).toThrow(FrameError);
  });
});

describe('partial checksums (CHECKSUM_PARTIAL, NETTXF_csum_blank)', () => {
  it('makePartialChecksum leaves the folded, non-complemented pseudo-header sum in the UDP field', () => {
    const f = buildUdpFrame({ ...ip, srcPort: 1, dstPort: 2, payload: new Uint8Array(0) });
    const orig = f.slice();
    expect(makePartialChecksum(f)).toBe(true);
    expect(u16At(f, L4 + UDP.check.offset)).toBe(0x141c);
    expect(verifyChecksums(f)).toMatchObject({ ipv4: 'good', l4: 'bad', ok: false });
    expect(completeChecksum(f)).toBe(true);
    expect(f).toEqual(orig);
  });
  it('TCP: completeChecksum fills any garbage field; makePartial/complete round-trips', () => {
    const f = tcpFrame(ip, hex('0102030405'));
    expect(verifyChecksums(f)).toMatchObject({ protocol: IPPROTO_TCP, l4: 'bad' });
    expect(completeChecksum(f)).toBe(true);
    expect(verifyChecksums(f)).toEqual({ ipv4: 'good', protocol: IPPROTO_TCP, l4: 'good', ok: true });
    const orig = f.slice();
    expect(makePartialChecksum(f)).toBe(true);
    expect(u16At(f, L4 + TCP.check.offset)).toBe(ipv4PseudoHeaderSum(parseIpv4(ip.src), parseIpv4(ip.dst), IPPROTO_TCP, 25));
    expect(completeChecksum(f)).toBe(true);
    expect(f).toEqual(orig);
  });
  it('ICMP: makePartial declines, completeChecksum recomputes', () => {
    const f = buildIcmpEchoRequest({ ...ip, identifier: 1, sequence: 2, payload: hex('aabbcc') });
    const orig = f.slice();
    expect(makePartialChecksum(f)).toBe(false);
    expect(f).toEqual(orig);
    f[L4 + ICMP.checksum.offset] ^= 0x5a;
    expect(completeChecksum(f)).toBe(true);
    expect(f).toEqual(orig);
  });
  it('frames not handled are left untouched and reported false: ARP, fragments, truncated, other protocols', () => {
    const arp = buildArpRequest({ sha: macA, spa: '10.0.0.1', tpa: '10.0.0.2' });
    const mf = buildUdpFrame({ ...ip, srcPort: 1, dstPort: 2, payload: new Uint8Array(8) });
    setU16At(mf, ETH_HLEN + IP.fragOff.offset, IP_MF);
    fixHeaderChecksum(mf);
    const later = buildUdpFrame({ ...ip, srcPort: 1, dstPort: 2, payload: new Uint8Array(8) });
    setU16At(later, ETH_HLEN + IP.fragOff.offset, 1); // offset 8 bytes
    fixHeaderChecksum(later);
    const full = buildUdpFrame({ ...ip, srcPort: 1, dstPort: 2, payload: new Uint8Array(8) });
    const truncated = full.slice(0, full.length - 1);
    const shortTcp = buildIpv4Frame({ ...ip, protocol: IPPROTO_TCP, payload: new Uint8Array(19) });
    const gre = buildIpv4Frame({ ...ip, protocol: 47, payload: new Uint8Array(8) });
    for (const f of [arp, mf, later, truncated, shortTcp, gre]) {
      const before = f.slice();
      expect(completeChecksum(f)).toBe(false);
      expect(makePartialChecksum(f)).toBe(false);
      expect(f).toEqual(before);
    }
    expect(verifyChecksums(arp)).toMatchObject({ ipv4: 'unchecked', l4: 'unchecked', protocol: null, ok: true });
    expect(verifyChecksums(mf)).toMatchObject({ ipv4: 'good', l4: 'unchecked', reason: 'fragment' });
    expect(verifyChecksums(later)).toMatchObject({ ipv4: 'good', l4: 'unchecked', reason: 'fragment' });
    expect(verifyChecksums(truncated)).toMatchObject({ ipv4: 'unchecked', l4: 'unchecked' });
  });
});

// ---------------------------------------------------------------------------
// Properties

type Kind = 'udp' | 'tcp' | 'icmp-request' | 'icmp-reply';
interface Spec { kind: Kind; opts: Ipv4FrameOptions; a: number; b: number; payload: Uint8Array }

const macArb = fc.uint8Array({ minLength: 6, maxLength: 6 });
const specArb: fc.Arbitrary<Spec> = fc.record({
  kind: fc.constantFrom<Kind>('udp', 'tcp', 'icmp-request', 'icmp-reply'),
  opts: fc.record({
    srcMac: macArb, dstMac: macArb,
    src: fc.nat({ max: 0xffffffff }).map(formatIpv4), dst: fc.nat({ max: 0xffffffff }).map(formatIpv4),
    ttl: fc.nat({ max: 255 }), id: fc.nat({ max: 0xffff }), tos: fc.nat({ max: 255 }), dontFragment: fc.boolean(),
  }),
  a: fc.nat({ max: 0xffff }),
  b: fc.nat({ max: 0xffff }),
  payload: fc.uint8Array({ maxLength: 300 }),
});

function build(s: Spec): Uint8Array {
  switch (s.kind) {
    case 'udp': return buildUdpFrame({ ...s.opts, srcPort: s.a, dstPort: s.b, payload: s.payload });
    case 'icmp-request': return buildIcmpEchoRequest({ ...s.opts, identifier: s.a, sequence: s.b, payload: s.payload });
    case 'icmp-reply': return buildIcmpEchoReply({ ...s.opts, identifier: s.a, sequence: s.b, payload: s.payload });
    case 'tcp': {
      const f = tcpFrame(s.opts, s.payload, s.a);
      completeChecksum(f);
      return f;
    }
  }
}

describe('properties', () => {
  it('every built frame verifies: IPv4 header and L4 checksums good', () => {
    fc.assert(fc.property(specArb, (s) => {
      expect(verifyChecksums(build(s))).toMatchObject({ ipv4: 'good', l4: 'good', ok: true });
    }));
  });

  // A single byte xor'd with m (1..255) moves one 16-bit word by ±m or ±m·256, never a
  // multiple of 0xffff, so the ones'-complement sum always changes: these cannot flake.
  // Two kinds of byte are left out because they move the checksummed range itself (the
  // sum then covers other bytes and could match by chance): the IHL nibble and UDP `len`.
  it('flipping any byte of the IPv4 header (IHL nibble aside) makes the header check fail', () => {
    fc.assert(fc.property(specArb, fc.nat({ max: IPV4_HLEN - 1 }), fc.integer({ min: 1, max: 255 }), (s, i, m) => {
      const f = build(s);
      f[ETH_HLEN + i] ^= i === IP.versionIhl.offset ? (m & 0xf0) || 0x10 : m;
      expect(verifyChecksums(f).ipv4).not.toBe('good');
    }));
  });
  it('flipping any byte of the L4 part (UDP len aside) makes the L4 check fail, the header still good', () => {
    fc.assert(fc.property(specArb, fc.nat(), fc.integer({ min: 1, max: 255 }), (s, r, m) => {
      const f = build(s);
      const n = f.length - L4;
      let i = r % n;
      if (s.kind === 'udp' && (i === UDP.len.offset || i === UDP.len.offset + 1)) i = UDP.check.offset;
      f[L4 + i] ^= m;
      const rep = verifyChecksums(f);
      expect(rep.ipv4).toBe('good');
      expect(rep.l4).not.toBe('good');
    }));
  });
  it('flipping bit 0 of a payload byte (even or odd position) changes the completed checksum', () => {
    fc.assert(fc.property(specArb.filter((s) => s.payload.length > 0), fc.nat(), (s, r) => {
      const f = build(s);
      const at = f.length - s.payload.length + (r % s.payload.length);
      const before = verifyChecksums(f);
      const checkAt = checkOffset(s.kind);
      const sum = u16At(f, checkAt);
      f[at] ^= 0x01;
      expect(completeChecksum(f)).toBe(true);
      expect(u16At(f, checkAt)).not.toBe(sum);
      expect(before.l4).toBe('good');
      expect(verifyChecksums(f).l4).toBe('good');
    }));
  });
  it('makePartialChecksum then completeChecksum restores the exact frame', () => {
    fc.assert(fc.property(specArb, (s) => {
      const orig = build(s);
      const f = orig.slice();
      expect(makePartialChecksum(f)).toBe(s.kind === 'udp' || s.kind === 'tcp');
      expect(completeChecksum(f)).toBe(true);
      expect(f).toEqual(orig);
    }));
  });
  it('completeChecksum ignores whatever the checksum field held', () => {
    fc.assert(fc.property(specArb, fc.nat({ max: 0xffff }), (s, garbage) => {
      const orig = build(s);
      const f = orig.slice();
      setU16At(f, checkOffset(s.kind), garbage);
      expect(completeChecksum(f)).toBe(true);
      expect(f).toEqual(orig);
    }));
  });
  it('parsers round-trip what the builders wrote', () => {
    fc.assert(fc.property(specArb, (s) => {
      const f = build(s);
      const ipHdr = decodeIpv4Header(f);
      expect(ipHdr).toMatchObject({ src: s.opts.src, dst: s.opts.dst, ttl: s.opts.ttl, id: s.opts.id, tos: s.opts.tos, dontFragment: s.opts.dontFragment });
      if (s.kind === 'udp') expect(parseUdp(f)).toMatchObject({ srcPort: s.a, dstPort: s.b, payload: s.payload });
      if (s.kind.startsWith('icmp')) expect(parseIcmpEcho(f)).toMatchObject({ identifier: s.a, sequence: s.b, payload: s.payload });
    }));
  });
  it('garbage never throws from the checksum functions, and parsers throw only FrameError', () => {
    // Half the cases look like IPv4 (ethertype 0x0800, version 4) so the deeper paths run.
    const garbage = fc.tuple(fc.uint8Array({ maxLength: 120 }), fc.boolean()).map(([b, ipv4]) => {
      if (ipv4 && b.length > ETH_HLEN) {
        new DataView(b.buffer).setUint16(ETH_HEADER.fields.ethertype.offset, ETH_P_IP);
        b[ETH_HLEN + IP.versionIhl.offset] = 0x40 | (b[ETH_HLEN + IP.versionIhl.offset] & 0x0f);
      }
      return b;
    });
    fc.assert(fc.property(garbage, (b) => {
      verifyChecksums(b);
      completeChecksum(b.slice());
      makePartialChecksum(b.slice());
      for (const parse of [parseArp, parseUdp, parseIcmpEcho, decodeIpv4Header, decodeEthHeader]) {
        try {
          parse(b);
        } catch (e) {
          expect(e).toBeInstanceOf(FrameError);
        }
      }
    }), { numRuns: 500 });
  });
});

/** Offset in a built frame of the L4 checksum field of `kind`. */
function checkOffset(kind: Kind): number {
  if (kind === 'udp') return L4 + UDP.check.offset;
  if (kind === 'tcp') return L4 + TCP.check.offset;
  return L4 + ICMP.checksum.offset;
}
