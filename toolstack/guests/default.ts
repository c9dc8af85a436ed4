/**
 * The default guest of `pvio up` (the main job): it reads all of `xvda` through
 * blkfront and prints its SHA-256, then writes pseudo-random data to the scratch
 * disk `xvdb` with WRITE + FLUSH_DISKCACHE, reads it back and verifies it, and
 * prints throughput (MB/s = 10^6 bytes/s), IOPS (blkif requests per second),
 * requests in flight and the counters that explain them.
 *
 * Arguments (from the toolstack): `{ writeMiB?: number }` — MiB written to xvdb.
 */
import { createHash } from 'node:crypto';
import type { Kernel } from '../../hypervisor/kernel.ts';
import type { Blkfront } from '../../blkfront/xenbus.ts';
import { xorshift32 } from '../xorshift.ts';

/** What the default guest reports to the toolstack. */
export interface DefaultGuestResult {
  xvda?: { sectors: number; sha256: string; seconds: number; mbps: number; iops: number; maxInFlight: number };
  xvdb?: { bytes: number; verified: boolean; writeMbps: number; writeIops: number; readMbps: number; readIops: number; maxInFlight: number };
  frontend: { requests: number; notifications: number; notificationsPerRequest: number; responsesPerEvent: number };
  hypercalls: Record<string, number>;
}

/** Sectors per read chunk (4 MiB); two chunks are in flight at once. */
const CHUNK_SECTORS = 8192; // 4 MiB

function mb(bytes: number, s: number): number {
  return bytes / 1e6 / s;
}

/** xorshift32 stream: deterministic pseudo-random bytes for the scratch test. */
function fillRandom(buf: Uint8Array, seed: number): void {
  const u32 = new Uint32Array(buf.buffer, buf.byteOffset, buf.length >> 2);
  const next = xorshift32(seed);
  for (let i = 0; i < u32.length; i++) u32[i] = next();
}

async function hashDisk(k: Kernel, d: Blkfront): Promise<DefaultGuestResult['xvda']> {
  const h = createHash('sha256');
  const t0 = performance.now();
  const req0 = d.counters.requests;
  const read = (s: number) => d.read(s, Math.min(CHUNK_SECTORS, d.sectors - s));
  let next: Promise<Uint8Array> | null = d.sectors > 0 ? read(0) : null;
  for (let s = 0; s < d.sectors; s += CHUNK_SECTORS) {
    const cur = await next!;
    next = s + CHUNK_SECTORS < d.sectors ? read(s + CHUNK_SECTORS) : null; // keep the ring busy while we hash
    h.update(cur);
  }
  const seconds = (performance.now() - t0) / 1000;
  const sha256 = h.digest('hex');
  const bytes = d.sectors * 512;
  const reqs = d.counters.requests - req0;
  k.console.log(`xvda sha256 ${sha256}`);
  k.console.log(`xvda read: ${(bytes / 1048576).toFixed(1)} MiB in ${seconds.toFixed(2)} s = ${mb(bytes, seconds).toFixed(1)} MB/s, ` +
    `${Math.round(reqs / seconds)} IOPS (${reqs} requests of up to ${d.features.maxSegments * 4} KiB), up to ${d.counters.maxInFlight} in flight`);
  return { sectors: d.sectors, sha256, seconds, mbps: mb(bytes, seconds), iops: reqs / seconds, maxInFlight: d.counters.maxInFlight };
}

async function scratchTest(k: Kernel, d: Blkfront, writeMiB: number): Promise<DefaultGuestResult['xvdb']> {
  const bytes = Math.min(writeMiB * 1048576, d.sectors * 512);
  const data = new Uint8Array(bytes);
  fillRandom(data, (Date.now() ^ k.domid) >>> 0);
  const r0 = d.counters.requests;
  let t0 = performance.now();
  await d.write(0, data);
  await d.flush();
  const writeS = (performance.now() - t0) / 1000;
  const writeReqs = d.counters.requests - r0;
  t0 = performance.now();
  const back = await d.read(0, bytes / 512);
  const readS = (performance.now() - t0) / 1000;
  const readReqs = d.counters.requests - r0 - writeReqs;
  let verified = back.length === data.length;
  for (let i = 0; verified && i < data.length; i++) if (back[i] !== data[i]) verified = false;
  k.console.log(`xvdb: wrote ${(bytes / 1048576).toFixed(1)} MiB + flush in ${writeS.toFixed(2)} s = ${mb(bytes, writeS).toFixed(1)} MB/s, ` +
    `${Math.round(writeReqs / writeS)} IOPS; read back in ${readS.toFixed(2)} s = ${mb(bytes, readS).toFixed(1)} MB/s, ` +
    `${Math.round(readReqs / readS)} IOPS; ${verified ? 'verified' : 'MISMATCH'}`);
  return { bytes, verified, writeMbps: mb(bytes, writeS), writeIops: writeReqs / writeS, readMbps: mb(bytes, readS), readIops: readReqs / readS, maxInFlight: d.counters.maxInFlight };
}

/** The default guest's main. */
export default async function main(k: Kernel): Promise<DefaultGuestResult> {
  const args = (k.args ?? {}) as { writeMiB?: number };
  const xvda = k.devices.get('xvda') as Blkfront | undefined;
  const xvdb = k.devices.get('xvdb') as Blkfront | undefined;
  const out: DefaultGuestResult = { frontend: { requests: 0, notifications: 0, notificationsPerRequest: 0, responsesPerEvent: 0 }, hypercalls: {} };
  for (const d of [xvda, xvdb]) {
    if (!d) continue;
    const f = d.features;
    k.console.log(`${d.name}: ${d.sectors} sectors (${(d.sizeBytes / 1048576).toFixed(1)} MiB), ${d.readOnly ? 'read-only' : 'writable'}; ` +
      `${f.queues} queue(s) of ${f.ringPages}-page rings, ${f.maxSegments} segments per request, ` +
      `persistent grants ${f.persistent ? 'on' : 'off'}, flush ${f.flush ? 'on' : 'off'}, discard ${f.discard ? 'on' : 'off'}`);
  }
  if (xvda) out.xvda = await hashDisk(k, xvda);
  if (xvdb) out.xvdb = await scratchTest(k, xvdb, args.writeMiB ?? 16);
  let requests = 0;
  let notifications = 0;
  for (const d of [xvda, xvdb]) {
    if (!d) continue;
    requests += d.counters.requests;
    notifications += d.counters.notifications;
  }
  out.frontend = {
    requests, notifications, notificationsPerRequest: requests ? notifications / requests : 0,
    responsesPerEvent: k.evtchn.counters.dispatched ? requests / k.evtchn.counters.dispatched : 0,
  };
  out.hypercalls = { ...k.hypercall.counters.calls };
  k.console.log(`frontend: ${requests} requests, ${notifications} notifications to blkback ` +
    `(${out.frontend.notificationsPerRequest.toFixed(3)} per request), ${k.evtchn.counters.dispatched} events received; ` +
    `guest hypercalls ${JSON.stringify(out.hypercalls)}`);
  return out;
}
