/**
 * An example guest for the virtual network: a tiny IPv4 host on `eth0`. It answers
 * ARP requests for its address and ICMP echo requests, and counts UDP datagrams
 * sent to its port (checking their checksums). Given a peer, it ARP-resolves it,
 * pings it and sends it a stream of UDP datagrams — optionally with partial
 * checksums (`NETTXF_csum_blank`), which the bridge or the receiving frontend completes.
 *
 * Arguments (`GuestSpec.args`), {@link NetPeerArgs}; the result, {@link NetPeerResult}.
 */
import type { Kernel } from '../../hypervisor/kernel.ts';
import type { Netfront } from '../../netfront/xenbus.ts';
import {
  ARPOP_REQUEST, ETH_P_ARP, ETH_P_IP, ICMP_ECHO, ICMP_ECHOREPLY, IPPROTO_ICMP, IPPROTO_UDP,
  buildArpReply, buildArpRequest, buildIcmpEchoReply, buildIcmpEchoRequest, buildUdpFrame, decodeEthHeader,
  decodeIpv4Header, formatMac, makePartialChecksum, parseArp, parseIcmpEcho, parseMac, parseUdp, verifyChecksums, type MacAddress,
} from '../../netfront/frame.ts';

/** What the guest is told to do. */
export interface NetPeerArgs {
  /** This host's IPv4 address, dotted quad. */
  readonly ip: string;
  /** A peer to resolve, ping and send UDP to; none: only answer. */
  readonly peer?: string;
  /** ICMP echo requests to send the peer (default 4). */
  readonly pings?: number;
  /** UDP datagrams to send the peer (default 0), of `udpBytes` payload bytes (default 512), to port `udpPort`. */
  readonly udp?: number;
  readonly udpBytes?: number;
  /** The UDP port this host counts datagrams on and sends to (default 9000). */
  readonly udpPort?: number;
  /** Send UDP with partial checksums (NETTXF_csum_blank). */
  readonly partialChecksums?: boolean;
  /** Stop after receiving this many UDP datagrams (default: never, only `runMs`). */
  readonly expectUdp?: number;
  /** Longest time to run, ms (default 10000). */
  readonly runMs?: number;
}

/** What the guest reports. */
export interface NetPeerResult {
  readonly mac: string;
  readonly peerMac: string | null;
  readonly arpRequestsAnswered: number;
  readonly pingsSent: number;
  readonly pingsAnswered: number;
  readonly echoRequestsAnswered: number;
  readonly udpSent: number;
  readonly udpReceived: number;
  /** UDP datagrams received whose IP or UDP checksum was wrong. */
  readonly udpBadChecksums: number;
  /** Bytes of UDP payload received whose content was not the pattern sent. */
  readonly udpBadPayloads: number;
}

/** The payload byte at `i` of datagram `seq`: a pattern the receiver checks. */
const pattern = (seq: number, i: number) => (seq * 7 + i) & 0xff;

export default async function main(k: Kernel): Promise<NetPeerResult> {
  const a = k.args as NetPeerArgs;
  const nic = k.devices.get('eth0') as Netfront | undefined;
  if (!nic) throw new Error('no eth0: give the guest a vif');
  const mac = parseMac(nic.mac);
  const port = a.udpPort ?? 9000;
  const deadline = performance.now() + (a.runMs ?? 10_000);
  const arp = new Map<string, MacAddress>();
  const echoReplies = new Set<number>();
  const r = { arpRequestsAnswered: 0, echoRequestsAnswered: 0, udpReceived: 0, udpBadChecksums: 0, udpBadPayloads: 0 };
  let stopRx = false;

  /** The receive loop: answers ARP and echo requests, learns ARP replies, counts UDP. */
  const rx = (async () => {
    while (!stopRx && performance.now() < deadline) {
      const f = await nic.receive(50);
      if (!f) continue;
      const eth = decodeEthHeader(f);
      if (eth.ethertype === ETH_P_ARP) {
        const p = parseArp(f);
        arp.set(p.spa, p.sha);
        if (p.op === ARPOP_REQUEST && p.tpa === a.ip) {
          await nic.send(buildArpReply({ sha: mac, spa: a.ip, tha: p.sha, tpa: p.spa }));
          r.arpRequestsAnswered++;
        }
      } else if (eth.ethertype === ETH_P_IP) {
        const ip = decodeIpv4Header(f);
        if (ip.dst !== a.ip) continue;
        if (ip.protocol === IPPROTO_ICMP) {
          const e = parseIcmpEcho(f);
          if (e.type === ICMP_ECHO) {
            await nic.send(buildIcmpEchoReply({ srcMac: mac, dstMac: eth.src, src: a.ip, dst: ip.src, identifier: e.identifier, sequence: e.sequence, payload: e.payload }));
            r.echoRequestsAnswered++;
          } else if (e.type === ICMP_ECHOREPLY) {
            echoReplies.add(e.sequence);
          }
        } else if (ip.protocol === IPPROTO_UDP) {
          const u = parseUdp(f);
          if (u.dstPort !== port) continue;
          r.udpReceived++;
          if (!verifyChecksums(f).ok) r.udpBadChecksums++;
          const seq = u.srcPort;
          for (let i = 0; i < u.payload.length; i++) if (u.payload[i] !== pattern(seq, i)) r.udpBadPayloads++;
          if (a.expectUdp !== undefined && r.udpReceived >= a.expectUdp) stopRx = true;
        }
      }
    }
  })();

  let peerMac: MacAddress | null = null;
  let pingsSent = 0;
  let udpSent = 0;
  if (a.peer) {
    // ARP: ask until answered (the peer's guest may still be starting).
    while (!arp.has(a.peer) && performance.now() < deadline) {
      await nic.send(buildArpRequest({ sha: mac, spa: a.ip, tpa: a.peer }));
      const until = performance.now() + 200;
      while (!arp.has(a.peer) && performance.now() < until) await new Promise((res) => setTimeout(res, 5));
    }
    peerMac = arp.get(a.peer) ?? null;
    if (peerMac) {
      for (let seq = 1; seq <= (a.pings ?? 4); seq++) {
        await nic.send(buildIcmpEchoRequest({ srcMac: mac, dstMac: peerMac, src: a.ip, dst: a.peer, identifier: 0x7076, sequence: seq, payload: new Uint8Array(56).fill(seq) }));
        pingsSent++;
        const until = performance.now() + 1000;
        while (!echoReplies.has(seq) && performance.now() < until) await new Promise((res) => setTimeout(res, 1));
      }
      const bytes = a.udpBytes ?? 512;
      for (let seq = 0; seq < (a.udp ?? 0); seq++) {
        const payload = new Uint8Array(bytes);
        for (let i = 0; i < bytes; i++) payload[i] = pattern(seq & 0xffff, i);
        const f = buildUdpFrame({ srcMac: mac, dstMac: peerMac, src: a.ip, dst: a.peer, srcPort: seq & 0xffff, dstPort: port, payload, id: seq & 0xffff });
        if (a.partialChecksums) makePartialChecksum(f);
        await nic.send(f, { csumBlank: a.partialChecksums === true });
        udpSent++;
      }
    }
  }
  if (a.expectUdp === undefined && a.peer) stopRx = true;
  await rx;
  return { mac: nic.mac, peerMac: peerMac ? formatMac(peerMac) : null, pingsSent, pingsAnswered: echoReplies.size, udpSent, ...r };
}
