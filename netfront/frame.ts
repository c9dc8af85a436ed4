/**
 * A small codec for the Ethernet frames that cross pvio's virtual network (the
 * netif rings carry whole Ethernet II frames): Ethernet, ARP, IPv4, ICMP echo, UDP,
 * and the Internet checksum, including Linux's partial checksums
 * (`CHECKSUM_PARTIAL`, Xen's `NETTXF_csum_blank`). It serves examples, tests and the
 * bridge; it is not a network stack.
 *
 * Conventions, for every function here:
 * - A *frame* is a `Uint8Array` holding one Ethernet II frame from its destination
 *   MAC on (no preamble, no FCS). Builders do not pad to the 60-byte Ethernet
 *   minimum (Xen's rings do not either). Lengths and offsets are in bytes.
 * - Header fields are big-endian (network order), read and written through
 *   `DataView` — unlike the netif ring slots, which are little-endian.
 * - Byte offsets live only in the layout tables below ({@link ETH_HEADER},
 *   {@link ARP_PACKET}, {@link IPV4_HEADER}, {@link ICMP_ECHO_HEADER},
 *   {@link UDP_HEADER}, {@link TCP_HEADER}), each checked at load by `defineLayout`.
 * - A MAC address is a 6-byte `Uint8Array` ({@link MacAddress}). An IPv4 address is
 *   a dotted-quad string (`"10.0.0.1"`) in every builder option and parse result;
 *   inside, and from {@link parseIpv4}, it is a u32 number whose most significant
 *   byte is the first octet (`10.0.0.1` is `0x0a000001`), written with `setUint32`.
 * - Malformed or truncated frame bytes make the parsers throw {@link FrameError};
 *   a bad argument from the caller (an unparsable address string, a port above
 *   65535, a payload too big for IPv4) throws `RangeError`.
 *   {@link verifyChecksums}, {@link completeChecksum} and
 *   {@link makePartialChecksum} never throw on frame contents: they report.
 *
 * @see RFC 1071 (checksum), RFC 894 (Ethernet II), RFC 826 (ARP), RFC 791 (IPv4),
 *   RFC 792 (ICMP), RFC 768 (UDP), RFC 793 (TCP)
 */
import { PvioError } from '../rings/errors.ts';
import { defineLayout, field } from '../rings/layout.ts';

/**
 * Frame bytes that cannot be parsed as asked: too short for the header they should
 * hold, a wrong ethertype, version or protocol, an impossible length field.
 * `code` is `PVIO_ERR_FRAME`.
 */
export class FrameError extends PvioError {
  constructor(message: string) {
    super('PVIO_ERR_FRAME', message);
  }
}

// ---------------------------------------------------------------------------
// Layout tables (big-endian on the wire)

/**
 * The Ethernet II header.
 * ```c
 * struct ethhdr {
 *     unsigned char h_dest[6];    // @0
 *     unsigned char h_source[6];  // @6
 *     __be16        h_proto;      // @12, ETH_P_*
 * };                              // sizeof 14
 * ```
 * @see RFC 894, linux/if_ether.h
 */
export const ETH_HEADER = defineLayout('ethhdr', 'RFC 894, linux/if_ether.h', 14, {
  dst: field(0, 'bytes', 'either', 6),
  src: field(6, 'bytes', 'either', 6),
  ethertype: field(12, 'u16', 'either'),
});

/**
 * An ARP packet for Ethernet hardware and IPv4 protocol addresses.
 * ```c
 * struct ether_arp {
 *     __be16 ar_hrd;       // @0, ARPHRD_ETHER (1)
 *     __be16 ar_pro;       // @2, ETH_P_IP (0x0800)
 *     __u8   ar_hln;       // @4, 6
 *     __u8   ar_pln;       // @5, 4
 *     __be16 ar_op;        // @6, ARPOP_*
 *     __u8   arp_sha[6];   // @8, sender hardware address
 *     __u8   arp_spa[4];   // @14, sender protocol address
 *     __u8   arp_tha[6];   // @18, target hardware address
 *     __u8   arp_tpa[4];   // @24, target protocol address
 * };                       // sizeof 28
 * ```
 * @see RFC 826, netinet/if_ether.h
 */
export const ARP_PACKET = defineLayout('ether_arp', 'RFC 826, netinet/if_ether.h', 28, {
  hrd: field(0, 'u16', 'either'),
  pro: field(2, 'u16', 'either'),
  hln: field(4, 'u8', 'either'),
  pln: field(5, 'u8', 'either'),
  op: field(6, 'u16', 'either'),
  sha: field(8, 'bytes', 'either', 6),
  spa: field(14, 'u32', 'either'),
  tha: field(18, 'bytes', 'either', 6),
  tpa: field(24, 'u32', 'either'),
});

/**
 * The IPv4 header without options (options, when IHL > 5, follow at 20).
 * ```c
 * struct iphdr {
 *     __u8   version:4, ihl:4;  // @0, version 4; ihl in 32-bit words (>= 5)
 *     __u8   tos;               // @1
 *     __be16 tot_len;           // @2, header + payload bytes
 *     __be16 id;                // @4
 *     __be16 frag_off;          // @6, IP_DF | IP_MF | offset in 8-byte units
 *     __u8   ttl;               // @8
 *     __u8   protocol;          // @9, IPPROTO_*
 *     __sum16 check;            // @10, header checksum
 *     __be32 saddr;             // @12
 *     __be32 daddr;             // @16
 * };                            // sizeof 20
 * ```
 * @see RFC 791 §3.1, linux/ip.h
 */
export const IPV4_HEADER = defineLayout('iphdr', 'RFC 791, linux/ip.h', 20, {
  versionIhl: field(0, 'u8', 'either'),
  tos: field(1, 'u8', 'either'),
  totLen: field(2, 'u16', 'either'),
  id: field(4, 'u16', 'either'),
  fragOff: field(6, 'u16', 'either'),
  ttl: field(8, 'u8', 'either'),
  protocol: field(9, 'u8', 'either'),
  check: field(10, 'u16', 'either'),
  saddr: field(12, 'u32', 'either'),
  daddr: field(16, 'u32', 'either'),
});

/**
 * The ICMP header as echo request/reply use it (other types share type, code and
 * checksum; the checksum covers the whole ICMP message, no pseudo-header).
 * ```c
 * struct icmphdr {
 *     __u8    type;      // @0, ICMP_ECHO (8) / ICMP_ECHOREPLY (0)
 *     __u8    code;      // @1, 0
 *     __sum16 checksum;  // @2
 *     __be16  id;        // @4, un.echo.id
 *     __be16  sequence;  // @6, un.echo.sequence
 * };                     // sizeof 8
 * ```
 * @see RFC 792, linux/icmp.h
 */
export const ICMP_ECHO_HEADER = defineLayout('icmphdr', 'RFC 792, linux/icmp.h', 8, {
  type: field(0, 'u8', 'either'),
  code: field(1, 'u8', 'either'),
  checksum: field(2, 'u16', 'either'),
  id: field(4, 'u16', 'either'),
  sequence: field(6, 'u16', 'either'),
});

/**
 * The UDP header.
 * ```c
 * struct udphdr {
 *     __be16  source;  // @0
 *     __be16  dest;    // @2
 *     __be16  len;     // @4, header + payload bytes
 *     __sum16 check;   // @6, over pseudo-header + datagram; 0 = none (IPv4)
 * };                   // sizeof 8
 * ```
 * @see RFC 768, linux/udp.h
 */
export const UDP_HEADER = defineLayout('udphdr', 'RFC 768, linux/udp.h', 8, {
  source: field(0, 'u16', 'either'),
  dest: field(2, 'u16', 'either'),
  len: field(4, 'u16', 'either'),
  check: field(6, 'u16', 'either'),
});

/**
 * The TCP header without options (only `check` is used here).
 * ```c
 * struct tcphdr {
 *     __be16  source;   // @0
 *     __be16  dest;     // @2
 *     __be32  seq;      // @4
 *     __be32  ack_seq;  // @8
 *     __be16  doff:4, res1:4, flags:8;  // @12
 *     __be16  window;   // @14
 *     __sum16 check;    // @16, over pseudo-header + segment
 *     __be16  urg_ptr;  // @18
 * };                    // sizeof 20
 * ```
 * @see RFC 793 §3.1, linux/tcp.h
 */
export const TCP_HEADER = defineLayout('tcphdr', 'RFC 793, linux/tcp.h', 20, {
  source: field(0, 'u16', 'either'),
  dest: field(2, 'u16', 'either'),
  seq: field(4, 'u32', 'either'),
  ackSeq: field(8, 'u32', 'either'),
  doffFlags: field(12, 'u16', 'either'),
  window: field(14, 'u16', 'either'),
  check: field(16, 'u16', 'either'),
  urgPtr: field(18, 'u16', 'either'),
});

const ETH = ETH_HEADER.fields;
const ARP = ARP_PACKET.fields;
const IP = IPV4_HEADER.fields;
const ICMP = ICMP_ECHO_HEADER.fields;
const UDP = UDP_HEADER.fields;
const TCP = TCP_HEADER.fields;

// ---------------------------------------------------------------------------
// Constants

/** Bytes of an Ethernet II header (2 MACs + ethertype). @see linux/if_ether.h `ETH_HLEN` */
export const ETH_HLEN = ETH_HEADER.size;
/** Bytes of a MAC address. @see linux/if_ether.h `ETH_ALEN` */
export const ETH_ALEN = 6;
/** Ethertype of IPv4. @see linux/if_ether.h `ETH_P_IP` */
export const ETH_P_IP = 0x0800;
/** Ethertype of ARP. @see linux/if_ether.h `ETH_P_ARP` */
export const ETH_P_ARP = 0x0806;
/** Ethertype of IPv6 (recognised, not decoded). @see linux/if_ether.h `ETH_P_IPV6` */
export const ETH_P_IPV6 = 0x86dd;

/** ARP hardware type of Ethernet. @see RFC 826, linux/if_arp.h `ARPHRD_ETHER` */
export const ARPHRD_ETHER = 1;
/** ARP opcode: request ("who has tpa? tell spa"). @see RFC 826, linux/if_arp.h `ARPOP_REQUEST` */
export const ARPOP_REQUEST = 1;
/** ARP opcode: reply ("spa is at sha"). @see RFC 826, linux/if_arp.h `ARPOP_REPLY` */
export const ARPOP_REPLY = 2;

/** Bytes of an IPv4 header without options (IHL 5). @see RFC 791 */
export const IPV4_HLEN = IPV4_HEADER.size;
/** Largest IPv4 datagram (`tot_len` is a u16), header included, in bytes. @see RFC 791 */
export const IPV4_MAX_LEN = 0xffff;
/** IPv4 protocol number of ICMP. @see RFC 790, linux/in.h `IPPROTO_ICMP` */
export const IPPROTO_ICMP = 1;
/** IPv4 protocol number of TCP. @see RFC 790, linux/in.h `IPPROTO_TCP` */
export const IPPROTO_TCP = 6;
/** IPv4 protocol number of UDP. @see RFC 790, linux/in.h `IPPROTO_UDP` */
export const IPPROTO_UDP = 17;
/** `frag_off` bit: don't fragment. @see RFC 791, net/ip.h `IP_DF` */
export const IP_DF = 0x4000;
/** `frag_off` bit: more fragments follow. @see RFC 791, net/ip.h `IP_MF` */
export const IP_MF = 0x2000;
/** `frag_off` mask of the fragment offset (in 8-byte units). @see RFC 791, net/ip.h `IP_OFFSET` */
export const IP_OFFSET = 0x1fff;

/** ICMP type of an echo reply. @see RFC 792, linux/icmp.h `ICMP_ECHOREPLY` */
export const ICMP_ECHOREPLY = 0;
/** ICMP type of an echo request. @see RFC 792, linux/icmp.h `ICMP_ECHO` */
export const ICMP_ECHO = 8;
/** Bytes of an ICMP echo header (the smallest ICMP message checked here). @see RFC 792 */
export const ICMP_HLEN = ICMP_ECHO_HEADER.size;
/** Bytes of a UDP header. @see RFC 768 */
export const UDP_HLEN = UDP_HEADER.size;
/** Bytes of a TCP header without options. @see RFC 793 */
export const TCP_HLEN = TCP_HEADER.size;

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function checkUint(name: string, v: number, max: number): number {
  if (!Number.isInteger(v) || v < 0 || v > max) throw new RangeError(`${name} ${v} is not an integer in 0..${max}`);
  return v;
}

// ---------------------------------------------------------------------------
// The Internet checksum (RFC 1071)

/** Sum of the big-endian 16-bit words of `b[start..end)`, a final odd byte padded with zero; not folded. */
function sumWords(b: Uint8Array, start: number, end: number, initial: number): number {
  let s = initial;
  let i = start;
  for (; i + 1 < end; i += 2) s += (b[i] << 8) | b[i + 1];
  if (i < end) s += b[i] << 8;
  return s;
}

/** Folds a non-negative sum to 16 bits with end-around carry (never 0 unless the sum is 0). */
function fold(s: number): number {
  while (s > 0xffff) s = (s % 0x10000) + Math.floor(s / 0x10000);
  return s;
}

/**
 * The ones'-complement sum of `bytes` as big-endian 16-bit words (a final odd byte
 * is the high byte of a zero-padded word), plus `initial`, folded to 16 bits and
 * NOT complemented: the value to carry from one piece of a checksummed range to the
 * next, or to leave in a partial checksum field.
 * @param initial a previous folded or unfolded sum (non-negative), default 0.
 * @returns u16; 0 only when every word and `initial` are 0.
 * @see RFC 1071 §2 (the RFC's example 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2)
 */
export function onesComplementSum(bytes: Uint8Array, initial = 0): number {
  return fold(sumWords(bytes, 0, bytes.length, initial));
}

/**
 * The Internet checksum of `bytes`: the complement of {@link onesComplementSum}
 * (`~sum & 0xffff`), ready to store big-endian in a checksum field that was zero
 * while summing. Summing a range that includes a correct checksum gives 0.
 * @param initial a non-complemented partial sum to start from, e.g.
 *   {@link ipv4PseudoHeaderSum} for UDP/TCP; default 0.
 * @returns u16.
 * @see RFC 1071
 */
export function internetChecksum(bytes: Uint8Array, initial = 0): number {
  return ~onesComplementSum(bytes, initial) & 0xffff;
}

/**
 * The folded, non-complemented sum of the IPv4 pseudo-header that UDP and TCP
 * checksums cover: source and destination address, zero byte, protocol, and the L4
 * length. This is what Linux leaves in the L4 checksum field of a
 * `CHECKSUM_PARTIAL` packet.
 * @param src source address as a u32 (see {@link parseIpv4}).
 * @param dst destination address as a u32.
 * @param protocol `IPPROTO_*`, 0..255.
 * @param length L4 header + payload, in bytes, 0..65535.
 * @returns u16 (never 0 for a non-zero protocol or length).
 * @see RFC 768 (pseudo-header), RFC 793 §3.1
 */
export function ipv4PseudoHeaderSum(src: number, dst: number, protocol: number, length: number): number {
  return fold((src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + (protocol & 0xff) + (length & 0xffff));
}

// ---------------------------------------------------------------------------
// Addresses

/** A MAC address: exactly {@link ETH_ALEN} (6) bytes, in wire order. */
export type MacAddress = Uint8Array;

/** ff:ff:ff:ff:ff:ff, the Ethernet broadcast address. Shared: never write into it (a typed array cannot be frozen). */
export const BROADCAST_MAC: MacAddress = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;

/**
 * Parses `"00:16:3e:01:02:03"` (six colon-separated hex pairs, either case).
 * @returns a new 6-byte {@link MacAddress}.
 * @throws RangeError for any other string.
 */
export function parseMac(s: string): MacAddress {
  if (!MAC_RE.test(s)) throw new RangeError(`not a MAC address: ${JSON.stringify(s)}`);
  return Uint8Array.from(s.split(':'), (h) => parseInt(h, 16));
}

/**
 * Formats a MAC as six lower-case, colon-separated hex pairs.
 * @throws RangeError unless `mac` has exactly 6 bytes.
 */
export function formatMac(mac: MacAddress): string {
  checkMac('mac', mac);
  return Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join(':');
}

function checkMac(name: string, mac: MacAddress): MacAddress {
  if (!(mac instanceof Uint8Array) || mac.length !== ETH_ALEN) throw new RangeError(`${name} is not a 6-byte MAC address`);
  return mac;
}

const IPV4_RE = /^(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})\.(0|[1-9]\d{0,2})$/;

/**
 * Parses a dotted-quad IPv4 address (`"10.0.0.1"`; no leading zeros, each part
 * 0..255) into a u32 whose most significant byte is the first octet.
 * @throws RangeError for any other string.
 * @see RFC 791 §2.3
 */
export function parseIpv4(s: string): number {
  const m = IPV4_RE.exec(s);
  const parts = m ? m.slice(1).map(Number) : [];
  if (parts.length !== 4 || parts.some((p) => p > 255)) throw new RangeError(`not an IPv4 address: ${JSON.stringify(s)}`);
  return ((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]) >>> 0;
}

/**
 * Formats a u32 IPv4 address (most significant byte first) as a dotted quad.
 * @throws RangeError unless `addr` is an integer in 0..0xffffffff.
 */
export function formatIpv4(addr: number): string {
  checkUint('IPv4 address', addr, 0xffffffff);
  return [addr >>> 24, (addr >>> 16) & 0xff, (addr >>> 8) & 0xff, addr & 0xff].join('.');
}

// ---------------------------------------------------------------------------
// Ethernet II

/** A decoded Ethernet II header. MACs are 6-byte copies; `ethertype` is a u16 (`ETH_P_*`). */
export interface EthHeader {
  dst: MacAddress;
  src: MacAddress;
  ethertype: number;
}

/**
 * Writes an Ethernet II header at the start of `into` (big-endian ethertype).
 * @param into at least {@link ETH_HLEN} bytes; default a new 14-byte array.
 * @returns `into`.
 * @throws RangeError for a MAC that is not 6 bytes, an ethertype above 0xffff, or
 *   `into` shorter than 14 bytes.
 * @see RFC 894
 */
export function encodeEthHeader(h: EthHeader, into: Uint8Array = new Uint8Array(ETH_HLEN)): Uint8Array {
  if (into.length < ETH_HLEN) throw new RangeError(`an Ethernet header needs ${ETH_HLEN} bytes, have ${into.length}`);
  into.set(checkMac('dst', h.dst), ETH.dst.offset);
  into.set(checkMac('src', h.src), ETH.src.offset);
  view(into).setUint16(ETH.ethertype.offset, checkUint('ethertype', h.ethertype, 0xffff));
  return into;
}

/**
 * Reads the Ethernet II header of `frame`.
 * @returns destination and source MAC (copies) and the ethertype.
 * @throws FrameError when `frame` is shorter than {@link ETH_HLEN} (14) bytes.
 * @see RFC 894
 */
export function decodeEthHeader(frame: Uint8Array): EthHeader {
  if (frame.length < ETH_HLEN) throw new FrameError(`frame of ${frame.length} bytes is shorter than an Ethernet header (${ETH_HLEN})`);
  return {
    dst: frame.slice(ETH.dst.offset, ETH.dst.offset + ETH_ALEN),
    src: frame.slice(ETH.src.offset, ETH.src.offset + ETH_ALEN),
    ethertype: view(frame).getUint16(ETH.ethertype.offset),
  };
}

// ---------------------------------------------------------------------------
// ARP (Ethernet / IPv4)

/** Bytes of an Ethernet/IPv4 ARP packet. @see RFC 826 */
export const ARP_LEN = ARP_PACKET.size;

/** A decoded ARP packet (Ethernet/IPv4): MACs as 6-byte copies, protocol addresses as dotted quads. */
export interface ArpPacket {
  /** {@link ARPOP_REQUEST} or {@link ARPOP_REPLY} (other u16 values parse too). */
  op: number;
  /** Sender hardware address. */
  sha: MacAddress;
  /** Sender protocol address. */
  spa: string;
  /** Target hardware address (zero in a request). */
  tha: MacAddress;
  /** Target protocol address. */
  tpa: string;
}

/** Builds an ARP frame: Ethernet header to `dstMac` from `p.sha`, then the 28-byte packet. */
function buildArp(p: ArpPacket, dstMac: MacAddress): Uint8Array {
  const frame = new Uint8Array(ETH_HLEN + ARP_LEN);
  encodeEthHeader({ dst: dstMac, src: p.sha, ethertype: ETH_P_ARP }, frame);
  const dv = view(frame);
  const at = ETH_HLEN;
  dv.setUint16(at + ARP.hrd.offset, ARPHRD_ETHER);
  dv.setUint16(at + ARP.pro.offset, ETH_P_IP);
  dv.setUint8(at + ARP.hln.offset, ETH_ALEN);
  dv.setUint8(at + ARP.pln.offset, 4);
  dv.setUint16(at + ARP.op.offset, checkUint('op', p.op, 0xffff));
  frame.set(checkMac('sha', p.sha), at + ARP.sha.offset);
  dv.setUint32(at + ARP.spa.offset, parseIpv4(p.spa));
  frame.set(checkMac('tha', p.tha), at + ARP.tha.offset);
  dv.setUint32(at + ARP.tpa.offset, parseIpv4(p.tpa));
  return frame;
}

/**
 * Builds a 42-byte ARP request frame, "who has `tpa`? tell `spa`", broadcast from
 * `sha` with a zero target hardware address.
 * @throws RangeError for a malformed MAC or IPv4 address.
 * @see RFC 826
 */
export function buildArpRequest(o: { sha: MacAddress; spa: string; tpa: string }): Uint8Array {
  return buildArp({ op: ARPOP_REQUEST, sha: o.sha, spa: o.spa, tha: new Uint8Array(ETH_ALEN), tpa: o.tpa }, BROADCAST_MAC);
}

/**
 * Builds a 42-byte ARP reply frame, "`spa` is at `sha`", sent from `sha` to `tha`.
 * @throws RangeError for a malformed MAC or IPv4 address.
 * @see RFC 826
 */
export function buildArpReply(o: { sha: MacAddress; spa: string; tha: MacAddress; tpa: string }): Uint8Array {
  return buildArp({ op: ARPOP_REPLY, sha: o.sha, spa: o.spa, tha: o.tha, tpa: o.tpa }, o.tha);
}

/**
 * Parses the ARP packet of an Ethernet frame (trailing padding ignored).
 * @throws FrameError when the ethertype is not {@link ETH_P_ARP}, the frame is
 *   shorter than 42 bytes, or the packet is not Ethernet (hrd 1, hln 6) / IPv4
 *   (pro 0x0800, pln 4).
 * @see RFC 826
 */
export function parseArp(frame: Uint8Array): ArpPacket {
  const eth = decodeEthHeader(frame);
  if (eth.ethertype !== ETH_P_ARP) throw new FrameError(`ethertype 0x${eth.ethertype.toString(16)} is not ARP`);
  if (frame.length < ETH_HLEN + ARP_LEN) throw new FrameError(`ARP frame of ${frame.length} bytes is truncated (needs ${ETH_HLEN + ARP_LEN})`);
  const dv = view(frame);
  const at = ETH_HLEN;
  const hrd = dv.getUint16(at + ARP.hrd.offset);
  const pro = dv.getUint16(at + ARP.pro.offset);
  if (hrd !== ARPHRD_ETHER || pro !== ETH_P_IP || frame[at + ARP.hln.offset] !== ETH_ALEN || frame[at + ARP.pln.offset] !== 4) {
    throw new FrameError(`ARP packet is not Ethernet/IPv4 (hrd ${hrd}, pro 0x${pro.toString(16)})`);
  }
  return {
    op: dv.getUint16(at + ARP.op.offset),
    sha: frame.slice(at + ARP.sha.offset, at + ARP.sha.offset + ETH_ALEN),
    spa: formatIpv4(dv.getUint32(at + ARP.spa.offset)),
    tha: frame.slice(at + ARP.tha.offset, at + ARP.tha.offset + ETH_ALEN),
    tpa: formatIpv4(dv.getUint32(at + ARP.tpa.offset)),
  };
}

// ---------------------------------------------------------------------------
// IPv4

/** A decoded IPv4 header. Lengths and the fragment offset are in bytes. */
export interface Ipv4Header {
  /** IHL × 4: 20..60 bytes (options, if any, are not decoded). */
  headerLength: number;
  /** Type of service byte (DSCP + ECN). */
  tos: number;
  /** `tot_len`: header + payload bytes. */
  totalLength: number;
  /** Identification (u16). */
  id: number;
  /** `IP_DF` is set. */
  dontFragment: boolean;
  /** `IP_MF` is set. */
  moreFragments: boolean;
  /** Fragment offset in bytes (the wire's 8-byte units × 8). */
  fragmentOffset: number;
  /** Time to live (u8). */
  ttl: number;
  /** `IPPROTO_*`. */
  protocol: number;
  /** The header checksum as found (not verified; see {@link verifyChecksums}). */
  checksum: number;
  /** Source address, dotted quad. */
  src: string;
  /** Destination address, dotted quad. */
  dst: string;
}

/** Where the IPv4 datagram of a frame lies, as the checksum functions need it. */
interface Ipv4Location {
  dv: DataView;
  /** Header length in bytes (IHL × 4). */
  hlen: number;
  /** Offset of the L4 header in the frame; L4 bytes are `totLen - hlen`. */
  l4: number;
  l4Len: number;
  protocol: number;
  fragment: boolean;
  saddr: number;
  daddr: number;
}

/**
 * Locates the IPv4 datagram in an Ethernet frame, or says why it cannot: not IPv4,
 * version not 4, IHL below 5, or the header or `tot_len` past the frame's end.
 * Bytes after `tot_len` (Ethernet padding) are ignored.
 */
function locateIpv4(frame: Uint8Array): Ipv4Location | string {
  if (frame.length < ETH_HLEN + IPV4_HLEN) return `frame of ${frame.length} bytes is too short for Ethernet + IPv4 (${ETH_HLEN + IPV4_HLEN})`;
  const dv = view(frame);
  const ethertype = dv.getUint16(ETH.ethertype.offset);
  if (ethertype !== ETH_P_IP) return `ethertype 0x${ethertype.toString(16)} is not IPv4`;
  const at = ETH_HLEN;
  const vihl = dv.getUint8(at + IP.versionIhl.offset);
  const hlen = (vihl & 0x0f) * 4;
  if (vihl >> 4 !== 4) return `IP version ${vihl >> 4} is not 4`;
  if (hlen < IPV4_HLEN) return `IHL ${hlen / 4} is below 5`;
  const totLen = dv.getUint16(at + IP.totLen.offset);
  if (totLen < hlen) return `tot_len ${totLen} is shorter than the header (${hlen})`;
  if (at + totLen > frame.length) return `tot_len ${totLen} runs past the frame (${frame.length - at} bytes after Ethernet)`;
  const fragOff = dv.getUint16(at + IP.fragOff.offset);
  return {
    dv, hlen, l4: at + hlen, l4Len: totLen - hlen,
    protocol: dv.getUint8(at + IP.protocol.offset),
    fragment: (fragOff & (IP_MF | IP_OFFSET)) !== 0,
    saddr: dv.getUint32(at + IP.saddr.offset),
    daddr: dv.getUint32(at + IP.daddr.offset),
  };
}

function locateOrThrow(frame: Uint8Array): Ipv4Location {
  const loc = locateIpv4(frame);
  if (typeof loc === 'string') throw new FrameError(loc);
  return loc;
}

/**
 * Decodes the IPv4 header of an Ethernet frame (IHL > 5 accepted; options skipped).
 * @throws FrameError when the ethertype is not {@link ETH_P_IP}, the version is not
 *   4, IHL < 5, or the header or `tot_len` runs past the frame.
 * @see RFC 791 §3.1
 */
export function decodeIpv4Header(frame: Uint8Array): Ipv4Header {
  const { dv, hlen, saddr, daddr } = locateOrThrow(frame);
  const at = ETH_HLEN;
  const fragOff = dv.getUint16(at + IP.fragOff.offset);
  return {
    headerLength: hlen,
    tos: dv.getUint8(at + IP.tos.offset),
    totalLength: dv.getUint16(at + IP.totLen.offset),
    id: dv.getUint16(at + IP.id.offset),
    dontFragment: (fragOff & IP_DF) !== 0,
    moreFragments: (fragOff & IP_MF) !== 0,
    fragmentOffset: (fragOff & IP_OFFSET) * 8,
    ttl: dv.getUint8(at + IP.ttl.offset),
    protocol: dv.getUint8(at + IP.protocol.offset),
    checksum: dv.getUint16(at + IP.check.offset),
    src: formatIpv4(saddr),
    dst: formatIpv4(daddr),
  };
}

/** Addressing and IPv4 header fields shared by the IPv4 builders. */
export interface Ipv4FrameOptions {
  /** Ethernet source and destination (6 bytes each). */
  srcMac: MacAddress;
  dstMac: MacAddress;
  /** IPv4 source and destination, dotted quads. */
  src: string;
  dst: string;
  /** Default 64. */
  ttl?: number;
  /** Identification, default 0. */
  id?: number;
  /** Type of service, default 0. */
  tos?: number;
  /** Sets `IP_DF`; default true. */
  dontFragment?: boolean;
}

/**
 * Allocates a frame of Ethernet + a 20-byte IPv4 header + `l4Len` zero bytes, with
 * both headers written (header checksum included). The caller fills the L4 part.
 */
function ipv4Frame(o: Ipv4FrameOptions, protocol: number, l4Len: number): Uint8Array {
  if (IPV4_HLEN + l4Len > IPV4_MAX_LEN) throw new RangeError(`IPv4 payload of ${l4Len} bytes exceeds ${IPV4_MAX_LEN - IPV4_HLEN}`);
  const frame = new Uint8Array(ETH_HLEN + IPV4_HLEN + l4Len);
  encodeEthHeader({ dst: o.dstMac, src: o.srcMac, ethertype: ETH_P_IP }, frame);
  const dv = view(frame);
  const at = ETH_HLEN;
  dv.setUint8(at + IP.versionIhl.offset, (4 << 4) | (IPV4_HLEN / 4));
  dv.setUint8(at + IP.tos.offset, checkUint('tos', o.tos ?? 0, 0xff));
  dv.setUint16(at + IP.totLen.offset, IPV4_HLEN + l4Len);
  dv.setUint16(at + IP.id.offset, checkUint('id', o.id ?? 0, 0xffff));
  dv.setUint16(at + IP.fragOff.offset, (o.dontFragment ?? true) ? IP_DF : 0);
  dv.setUint8(at + IP.ttl.offset, checkUint('ttl', o.ttl ?? 64, 0xff));
  dv.setUint8(at + IP.protocol.offset, checkUint('protocol', protocol, 0xff));
  dv.setUint32(at + IP.saddr.offset, parseIpv4(o.src));
  dv.setUint32(at + IP.daddr.offset, parseIpv4(o.dst));
  dv.setUint16(at + IP.check.offset, internetChecksum(frame.subarray(at, at + IPV4_HLEN)));
  return frame;
}

/**
 * Builds an Ethernet frame holding one IPv4 datagram (no options, not fragmented)
 * whose payload is `payload` as given: the L4 checksum, if any, is the caller's
 * (or {@link completeChecksum}'s) business. The header checksum is computed.
 * @param o.protocol `IPPROTO_*`, 0..255.
 * @returns a new frame of 34 + `payload.length` bytes.
 * @throws RangeError for malformed addresses, out-of-range fields, or a payload
 *   over 65515 bytes.
 * @see RFC 791
 */
export function buildIpv4Frame(o: Ipv4FrameOptions & { protocol: number; payload: Uint8Array }): Uint8Array {
  const frame = ipv4Frame(o, o.protocol, o.payload.length);
  frame.set(o.payload, ETH_HLEN + IPV4_HLEN);
  return frame;
}

// ---------------------------------------------------------------------------
// L4 checksums

/** The checksummed L4 range of a located datagram, or null when too short for its protocol's header. */
function l4Range(loc: Ipv4Location): { checkAt: number; len: number; pseudo: number } | null {
  switch (loc.protocol) {
    case IPPROTO_UDP: {
      if (loc.l4Len < UDP_HLEN) return null;
      const len = loc.dv.getUint16(loc.l4 + UDP.len.offset);
      if (len < UDP_HLEN || len > loc.l4Len) return null;
      return { checkAt: loc.l4 + UDP.check.offset, len, pseudo: ipv4PseudoHeaderSum(loc.saddr, loc.daddr, IPPROTO_UDP, len) };
    }
    case IPPROTO_TCP:
      if (loc.l4Len < TCP_HLEN) return null;
      return { checkAt: loc.l4 + TCP.check.offset, len: loc.l4Len, pseudo: ipv4PseudoHeaderSum(loc.saddr, loc.daddr, IPPROTO_TCP, loc.l4Len) };
    case IPPROTO_ICMP:
      if (loc.l4Len < ICMP_HLEN) return null;
      return { checkAt: loc.l4 + ICMP.checksum.offset, len: loc.l4Len, pseudo: 0 };
    default:
      return null;
  }
}

/**
 * Writes the complete L4 checksum of a located UDP/TCP/ICMP datagram: zero the
 * field, sum pseudo-header (UDP/TCP) + header + payload, store the complement;
 * a UDP result of 0 is sent as 0xffff (RFC 768). False when the range is unusable.
 */
function writeL4Checksum(f: Uint8Array, loc: Ipv4Location): boolean {
  const r = l4Range(loc);
  if (!r) return false;
  loc.dv.setUint16(r.checkAt, 0);
  let c = ~fold(sumWords(f, loc.l4, loc.l4 + r.len, r.pseudo)) & 0xffff;
  if (c === 0 && loc.protocol === IPPROTO_UDP) c = 0xffff;
  loc.dv.setUint16(r.checkAt, c);
  return true;
}

/**
 * Completes the L4 checksum of an IPv4 UDP, TCP or ICMP frame in place, from
 * scratch (whatever the field held — partial sum, zero or garbage — is ignored):
 * what Linux's `skb_checksum_help` does before a `CHECKSUM_PARTIAL` packet goes to
 * a device without checksum offload, and what pvio's bridge does before a
 * `NETTXF_csum_blank` frame leaves for a port that did not negotiate offload. The
 * UDP range is the UDP `len` field; TCP and ICMP cover `tot_len` − IHL × 4 bytes.
 * @returns true when the frame was recognised and its checksum field written (the
 *   value may equal what was there); false, frame untouched, for a frame it does not
 *   handle: not IPv4, a fragment (MF set or offset ≠ 0), another protocol, or
 *   truncated/malformed headers.
 * @see RFC 1071, RFC 768, RFC 793, RFC 792; Linux net/core/dev.c `skb_checksum_help`
 */
export function completeChecksum(frame: Uint8Array): boolean {
  const loc = locateIpv4(frame);
  if (typeof loc === 'string' || loc.fragment) return false;
  return writeL4Checksum(frame, loc);
}

/**
 * Turns the complete checksum of an IPv4 UDP or TCP frame into a partial one, in
 * place: the L4 checksum field then holds the folded, NON-complemented IPv4
 * pseudo-header sum, which is what Linux leaves there for `CHECKSUM_PARTIAL`
 * (`csum_start` = the L4 header, `csum_offset` = the field) and what a Xen
 * frontend sends with `NETTXF_csum_blank`. {@link completeChecksum} undoes it.
 * ICMP has no pseudo-header and is left alone.
 * @returns true when the field was written; false, frame untouched, for frames
 *   {@link completeChecksum} would not handle and for ICMP.
 * @see Linux include/net/udp.h `udp_set_csum`, net/ipv4/tcp_ipv4.c `__tcp_v4_send_check`
 */
export function makePartialChecksum(frame: Uint8Array): boolean {
  const loc = locateIpv4(frame);
  if (typeof loc === 'string' || loc.fragment || loc.protocol === IPPROTO_ICMP) return false;
  const r = l4Range(loc);
  if (!r) return false;
  loc.dv.setUint16(r.checkAt, r.pseudo);
  return true;
}

/**
 * Outcome of one checksum check: `good`, `bad`, `absent` (a UDP checksum of 0:
 * none was computed, RFC 768), or `unchecked` (not applicable, or the bytes are too
 * malformed or truncated to check).
 */
export type ChecksumStatus = 'good' | 'bad' | 'absent' | 'unchecked';

/** What {@link verifyChecksums} found in a frame. */
export interface ChecksumReport {
  /** The IPv4 header checksum; `unchecked` for a non-IPv4 or malformed frame. */
  ipv4: ChecksumStatus;
  /** The IPv4 `protocol` when the header could be read, else null. */
  protocol: number | null;
  /** The ICMP/UDP/TCP checksum; `unchecked` for other protocols, fragments and truncated headers. */
  l4: ChecksumStatus;
  /** Neither check is `bad`. */
  ok: boolean;
  /** Why `ipv4` or `l4` is `unchecked`, when it is. */
  reason?: string;
}

function report(ipv4: ChecksumStatus, protocol: number | null, l4: ChecksumStatus, reason?: string): ChecksumReport {
  const r: ChecksumReport = { ipv4, protocol, l4, ok: ipv4 !== 'bad' && l4 !== 'bad' };
  if (reason !== undefined) r.reason = reason;
  return r;
}

/** Checks a located datagram's L4 checksum: the sum over everything, its field included, folds to 0xffff. */
function verifyL4(f: Uint8Array, loc: Ipv4Location): ChecksumStatus {
  const r = l4Range(loc);
  if (!r) return 'unchecked';
  if (loc.protocol === IPPROTO_UDP && loc.dv.getUint16(r.checkAt) === 0) return 'absent';
  return fold(sumWords(f, loc.l4, loc.l4 + r.len, r.pseudo)) === 0xffff ? 'good' : 'bad';
}

/**
 * Checks the checksums of an Ethernet frame: the IPv4 header checksum, and the
 * ICMP, UDP (pseudo-header; 0 = `absent`) or TCP (pseudo-header) checksum. A
 * checksum is good when the ones'-complement sum of its range, the checksum field
 * included, is 0xffff. Partial checksums (see {@link makePartialChecksum}) are
 * reported `bad`. Never throws on frame contents.
 * @see RFC 1071, RFC 791, RFC 792, RFC 768, RFC 793
 */
export function verifyChecksums(frame: Uint8Array): ChecksumReport {
  const loc = locateIpv4(frame);
  if (typeof loc === 'string') return report('unchecked', null, 'unchecked', loc);
  const header = fold(sumWords(frame, ETH_HLEN, ETH_HLEN + loc.hlen, 0)) === 0xffff ? 'good' : 'bad';
  if (loc.fragment) return report(header, loc.protocol, 'unchecked', 'fragment');
  const l4 = verifyL4(frame, loc);
  return report(header, loc.protocol, l4, l4 === 'unchecked' ? `protocol ${loc.protocol} not checked or header truncated` : undefined);
}

// ---------------------------------------------------------------------------
// ICMP echo

/** Options of an ICMP echo request or reply. */
export interface IcmpEchoOptions extends Ipv4FrameOptions {
  /** u16, echoed by the reply. */
  identifier: number;
  /** u16, echoed by the reply. */
  sequence: number;
  /** Data after the 8-byte header, echoed by the reply; default empty. */
  payload?: Uint8Array;
}

/** A decoded ICMP echo request or reply. */
export interface IcmpEcho {
  ip: Ipv4Header;
  /** {@link ICMP_ECHO} or {@link ICMP_ECHOREPLY}. */
  type: number;
  code: number;
  /** As found (see {@link verifyChecksums}). */
  checksum: number;
  identifier: number;
  sequence: number;
  /** A copy of the data after the header. */
  payload: Uint8Array;
}

function buildIcmpEcho(type: number, o: IcmpEchoOptions): Uint8Array {
  const payload = o.payload ?? new Uint8Array(0);
  const frame = ipv4Frame(o, IPPROTO_ICMP, ICMP_HLEN + payload.length);
  const dv = view(frame);
  const at = ETH_HLEN + IPV4_HLEN;
  dv.setUint8(at + ICMP.type.offset, type);
  dv.setUint8(at + ICMP.code.offset, 0);
  dv.setUint16(at + ICMP.id.offset, checkUint('identifier', o.identifier, 0xffff));
  dv.setUint16(at + ICMP.sequence.offset, checkUint('sequence', o.sequence, 0xffff));
  frame.set(payload, at + ICMP_HLEN);
  dv.setUint16(at + ICMP.checksum.offset, internetChecksum(frame.subarray(at)));
  return frame;
}

/**
 * Builds an ICMP echo request frame (type 8, code 0) with its checksum.
 * @throws RangeError for malformed addresses or out-of-range fields.
 * @see RFC 792 (Echo or Echo Reply Message)
 */
export function buildIcmpEchoRequest(o: IcmpEchoOptions): Uint8Array {
  return buildIcmpEcho(ICMP_ECHO, o);
}

/**
 * Builds an ICMP echo reply frame (type 0, code 0) with its checksum.
 * @throws RangeError for malformed addresses or out-of-range fields.
 * @see RFC 792 (Echo or Echo Reply Message)
 */
export function buildIcmpEchoReply(o: IcmpEchoOptions): Uint8Array {
  return buildIcmpEcho(ICMP_ECHOREPLY, o);
}

/**
 * Parses an ICMP echo request or reply frame (checksums not verified).
 * @throws FrameError when the frame is not IPv4 (see {@link decodeIpv4Header}),
 *   not ICMP, a fragment, shorter than the 8-byte echo header, or of another ICMP type.
 * @see RFC 792
 */
export function parseIcmpEcho(frame: Uint8Array): IcmpEcho {
  const ip = decodeIpv4Header(frame);
  const { dv, l4, l4Len, protocol, fragment } = locateOrThrow(frame);
  if (protocol !== IPPROTO_ICMP) throw new FrameError(`IPv4 protocol ${protocol} is not ICMP`);
  if (fragment) throw new FrameError('ICMP message is fragmented');
  if (l4Len < ICMP_HLEN) throw new FrameError(`ICMP message of ${l4Len} bytes is shorter than an echo header (${ICMP_HLEN})`);
  const type = dv.getUint8(l4 + ICMP.type.offset);
  if (type !== ICMP_ECHO && type !== ICMP_ECHOREPLY) throw new FrameError(`ICMP type ${type} is not an echo request or reply`);
  return {
    ip, type,
    code: dv.getUint8(l4 + ICMP.code.offset),
    checksum: dv.getUint16(l4 + ICMP.checksum.offset),
    identifier: dv.getUint16(l4 + ICMP.id.offset),
    sequence: dv.getUint16(l4 + ICMP.sequence.offset),
    payload: frame.slice(l4 + ICMP_HLEN, l4 + l4Len),
  };
}

// ---------------------------------------------------------------------------
// UDP

/** Options of a UDP datagram. */
export interface UdpOptions extends Ipv4FrameOptions {
  /** u16 ports. */
  srcPort: number;
  dstPort: number;
  /** Data after the 8-byte header. */
  payload: Uint8Array;
  /** Compute the checksum (default true); false sends 0, "no checksum". */
  checksum?: boolean;
}

/** A decoded UDP datagram. */
export interface UdpDatagram {
  ip: Ipv4Header;
  srcPort: number;
  dstPort: number;
  /** The UDP `len` field: header + payload bytes. */
  length: number;
  /** As found; 0 = none (see {@link verifyChecksums}). */
  checksum: number;
  /** A copy of the `length` − 8 data bytes. */
  payload: Uint8Array;
}

/**
 * Builds a UDP/IPv4 frame. The checksum covers the IPv4 pseudo-header, the UDP
 * header and the payload; a computed 0 is sent as 0xffff.
 * @throws RangeError for malformed addresses, out-of-range ports or fields, or a
 *   payload over 65507 bytes.
 * @see RFC 768
 */
export function buildUdpFrame(o: UdpOptions): Uint8Array {
  const len = UDP_HLEN + o.payload.length;
  const frame = ipv4Frame(o, IPPROTO_UDP, len);
  const dv = view(frame);
  const at = ETH_HLEN + IPV4_HLEN;
  dv.setUint16(at + UDP.source.offset, checkUint('srcPort', o.srcPort, 0xffff));
  dv.setUint16(at + UDP.dest.offset, checkUint('dstPort', o.dstPort, 0xffff));
  dv.setUint16(at + UDP.len.offset, len);
  frame.set(o.payload, at + UDP_HLEN);
  if (o.checksum ?? true) completeChecksum(frame);
  return frame;
}

/**
 * Parses a UDP/IPv4 frame (checksums not verified).
 * @throws FrameError when the frame is not IPv4 (see {@link decodeIpv4Header}),
 *   not UDP, a fragment, or its UDP `len` is below 8 or past the IPv4 payload.
 * @see RFC 768
 */
export function parseUdp(frame: Uint8Array): UdpDatagram {
  const ip = decodeIpv4Header(frame);
  const { dv, l4, l4Len, protocol, fragment } = locateOrThrow(frame);
  if (protocol !== IPPROTO_UDP) throw new FrameError(`IPv4 protocol ${protocol} is not UDP`);
  if (fragment) throw new FrameError('UDP datagram is fragmented');
  if (l4Len < UDP_HLEN) throw new FrameError(`UDP datagram of ${l4Len} bytes is shorter than its header (${UDP_HLEN})`);
  const length = dv.getUint16(l4 + UDP.len.offset);
  if (length < UDP_HLEN || length > l4Len) throw new FrameError(`UDP len ${length} is outside ${UDP_HLEN}..${l4Len}`);
  return {
    ip,
    srcPort: dv.getUint16(l4 + UDP.source.offset),
    dstPort: dv.getUint16(l4 + UDP.dest.offset),
    length,
    checksum: dv.getUint16(l4 + UDP.check.offset),
    payload: frame.slice(l4 + UDP_HLEN, l4 + length),
  };
}
