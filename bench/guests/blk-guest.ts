/**
 * The guest of `pvio bench blk`: an fio-like job loop on its disk `xvda`, driven
 * through the toolstack control port (`GuestHandle.call(op, args)`, as
 * test/guests/rpc.ts), so one guest runs many jobs.
 *
 * Operations:
 * - `info` → the disk's size, mode and negotiated features;
 * - `job` ({@link BlkJob}) → {@link BlkJobResult}: keeps `inFlight` requests of
 *   `blockSize` bytes outstanding for `ms` milliseconds (or `maxOps` requests), then
 *   stops issuing and waits for the last ones. Random patterns take block-aligned
 *   offsets from a seeded xorshift32 stream; sequential ones take consecutive blocks
 *   (wrapping at the end of the disk), each new request the next block. Every
 *   request is timed with `performance.now()` (issue → completion, µs);
 * - `exit` → the guest's main returns (the domain closes its disk and powers off).
 *
 * Buffers are plain (not shared) ArrayBuffers, one per request slot, allocated per
 * job: blkfront copies them into its granted pages (persistent pool or fresh grants).
 * Writes carry a fixed pseudo-random pattern.
 */
import type { Kernel } from '../../hypervisor/kernel.ts';
import type { Blkfront } from '../../blkfront/xenbus.ts';
import { xorshift32 } from '../../toolstack/xorshift.ts';

/** I/O pattern, fio's names. */
export type BlkPattern = 'randread' | 'randwrite' | 'seqread' | 'seqwrite';

/** One job. */
export interface BlkJob {
  readonly pattern: BlkPattern;
  /** Bytes per request, a multiple of the disk's sector size. */
  readonly blockSize: number;
  /** Requests kept outstanding. */
  readonly inFlight: number;
  /** Issue new requests for this long (ms). */
  readonly ms: number;
  /** Stop issuing after this many requests (0 = no limit). */
  readonly maxOps?: number;
  /** Seed of the offset stream (random patterns) or first block (sequential). */
  readonly seed: number;
  /** Most latency samples returned (default 1 << 20); later requests are not timed. */
  readonly maxSamples?: number;
}

/** Counters of one job (deltas over the job). */
export interface BlkJobResult {
  /** Requests completed (all of them: the job counts no warm-up). */
  ops: number;
  bytes: number;
  /** First issue → last completion, ms. */
  elapsedMs: number;
  /** Per-request latency, µs (the first `maxSamples` requests). */
  latUs: Float64Array;
  /** blkfront: blkif requests put on the rings (an op over `maxSegments` pages is several). */
  requests: number;
  indirectRequests: number;
  /** blkfront: notifications sent to blkback. */
  notifications: number;
  /** blkfront: grants issued (fresh per-request grants, or persistent pages added to the pool). */
  grantsIssued: number;
  /** Hypercalls this vCPU issued (vCPU 0, where the job runs), by name. */
  hypercalls: Record<string, number>;
  /** Event-channel upcalls the guest took (responses arrive through them). */
  upcalls: number;
  /** The idle loop's wake-ups of vCPU 0. */
  wakeups: number;
  /** Requests that failed (BlkError); the job stops at the first. */
  errors: number;
  error?: string;
}

function hypercallDelta(after: Record<string, number>, before: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(after)) if (v - (before[k] ?? 0) > 0) out[k] = v - (before[k] ?? 0);
  return out;
}

/** Runs one job on `d`. */
export async function runJob(k: Kernel, d: Blkfront, job: BlkJob): Promise<BlkJobResult> {
  const bs = job.blockSize;
  if (!(bs > 0 && bs % d.sectorSize === 0)) throw new Error(`blockSize ${bs} is not a multiple of the sector size ${d.sectorSize}`);
  const blocks = Math.floor(d.sizeBytes / bs);
  if (blocks < 1) throw new Error(`disk of ${d.sizeBytes} bytes is smaller than one ${bs}-byte block`);
  const writing = job.pattern === 'randwrite' || job.pattern === 'seqwrite';
  if (writing && d.readOnly) throw new Error('write job on a read-only disk');
  const random = job.pattern === 'randread' || job.pattern === 'randwrite';
  const next = xorshift32(job.seed);
  let seq = (job.seed >>> 0) % blocks;
  const nextSector = (): number => {
    let b: number;
    if (random) b = next() % blocks;
    else {
      b = seq;
      seq = seq + 1 === blocks ? 0 : seq + 1;
    }
    return (b * bs) / 512;
  };
  const bufs = Array.from({ length: job.inFlight }, () => new Uint8Array(bs));
  if (writing) {
    const r = xorshift32(job.seed ^ 0x5a5a5a5a);
    for (const b of bufs) {
      const u32 = new Uint32Array(b.buffer);
      for (let i = 0; i < u32.length; i++) u32[i] = r();
    }
  }
  const maxSamples = job.maxSamples ?? 1 << 20;
  const lat = new Float64Array(Math.min(maxSamples, 1 << 16));
  let latBuf = lat;
  let nLat = 0;
  const record = (us: number) => {
    if (nLat >= maxSamples) return;
    if (nLat === latBuf.length) {
      const grown = new Float64Array(Math.min(maxSamples, latBuf.length * 2));
      grown.set(latBuf);
      latBuf = grown;
    }
    latBuf[nLat++] = us;
  };

  const c0 = { ...d.counters };
  const h0 = { ...k.hypercall.counters.calls };
  const e0 = k.evtchn.counters.dispatched;
  const w0 = k.counters.wakeups;
  const t0 = performance.now();
  const stopAt = t0 + job.ms;
  const maxOps = job.maxOps ?? 0;
  let issued = 0;
  let ops = 0;
  let errors = 0;
  let error: string | undefined;
  let last = t0;
  const lane = async (buf: Uint8Array): Promise<void> => {
    while (error === undefined) {
      const now = performance.now();
      if (now >= stopAt || (maxOps > 0 && issued >= maxOps)) return;
      issued++;
      const sector = nextSector();
      try {
        if (writing) await d.write(sector, buf);
        else await d.readInto(sector, buf);
      } catch (e) {
        errors++;
        error = (e as Error).message;
        return;
      }
      last = performance.now();
      record((last - now) * 1000);
      ops++;
    }
  };
  await Promise.all(bufs.map(lane));
  const c1 = d.counters;
  return {
    ops, bytes: ops * bs, elapsedMs: last - t0, latUs: latBuf.slice(0, nLat),
    requests: c1.requests - c0.requests, indirectRequests: c1.indirectRequests - c0.indirectRequests,
    notifications: c1.notifications - c0.notifications, grantsIssued: c1.grantsIssued - c0.grantsIssued,
    hypercalls: hypercallDelta(k.hypercall.counters.calls, h0),
    upcalls: k.evtchn.counters.dispatched - e0, wakeups: k.counters.wakeups - w0,
    errors, ...(error !== undefined ? { error } : {}),
  };
}

/** The guest's main: serves `info`, `job` and `exit` until `exit`. */
export default function main(k: Kernel): Promise<unknown> {
  const ctl = k.control!;
  let finish!: (v: unknown) => void;
  const done = new Promise<unknown>((r) => (finish = r));
  const disk = (): Blkfront => {
    const d = k.devices.get('xvda') as Blkfront | undefined;
    if (!d) throw new Error('no xvda');
    return d;
  };
  const ops: Record<string, (a: Record<string, unknown>) => unknown> = {
    info: () => {
      const d = disk();
      return { sizeBytes: d.sizeBytes, sectorSize: d.sectorSize, readOnly: d.readOnly, features: { ...d.features }, vcpus: k.nrVcpus };
    },
    job: (a) => runJob(k, disk(), a as unknown as BlkJob),
    exit: () => void setImmediate(() => finish(null)),
  };
  ctl.on('message', (m: { type?: string; id?: number; op?: string; args?: Record<string, unknown> }) => {
    if (m?.type !== 'call') return;
    void (async () => {
      try {
        const f = ops[m.op ?? ''];
        if (!f) throw new Error(`unknown op ${m.op}`);
        const value = await f(m.args ?? {});
        const transfer = value && typeof value === 'object' && (value as BlkJobResult).latUs instanceof Float64Array
          ? [(value as BlkJobResult).latUs.buffer as ArrayBuffer] : [];
        ctl.postMessage({ type: 'reply', id: m.id, ok: true, value }, transfer);
      } catch (e) {
        ctl.postMessage({ type: 'reply', id: m.id, ok: false, error: (e as Error).message });
      }
    })();
  });
  return done;
}
