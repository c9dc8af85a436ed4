/**
 * The baselines of `pvio bench blk`, in one worker thread (so the main thread stays
 * free to drive pvio's machine and never blocks on a file):
 * - `sync`: `fs.readSync` / `fs.writeSync` in a loop on this one thread — the native
 *   floor; one request at a time whatever the job's in-flight count;
 * - `fh`: `FileHandle.read` / `FileHandle.write` (fs/promises) with `inFlight`
 *   requests outstanding, as a Node user would write it (libuv's thread pool,
 *   `UV_THREADPOOL_SIZE`, default 4, does the system calls).
 *
 * The same job shape as the guest's (bench/guests/blk-guest.ts): block-aligned
 * offsets from the same seeded xorshift32 stream (random) or consecutive blocks
 * (sequential), a time window, then drain. In O_DIRECT mode the file is opened with
 * `O_DIRECT` and data goes through an aligned bounce buffer found with the same
 * probe as blkback's DirectFileStore (`alignedDirectBuffer`), and is copied to or
 * from the caller's (unaligned) buffer, as pvio does. In page-cache mode data goes
 * straight into the caller's buffer.
 *
 * Timing: `sync` takes one `performance.now()` per request (the end of one is the
 * start of the next: the loop does nothing else); `fh` two per request.
 */
import { closeSync, constants, openSync, readSync, writeSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { serve } from './common.ts';
import { alignedDirectBuffer } from '../../blkback/direct-file-store.ts';
import type { BlkJob } from '../guests/blk-guest.ts';
import { xorshift32 } from '../../toolstack/xorshift.ts';

/** What one baseline job returns. */
export interface BaselineResult {
  ops: number;
  bytes: number;
  elapsedMs: number;
  latUs: Float64Array;
}

interface Opened {
  path: string;
  direct: boolean;
  writable: boolean;
  fd: number;
  fh: FileHandle;
  sizeBytes: number;
}

let file: Opened | null = null;

/** The offset stream of a job (the guest's, in bytes). */
function offsets(job: BlkJob, sizeBytes: number): () => number {
  const bs = job.blockSize;
  const blocks = Math.floor(sizeBytes / bs);
  if (blocks < 1) throw new Error(`file of ${sizeBytes} bytes is smaller than one ${bs}-byte block`);
  if (job.pattern === 'randread' || job.pattern === 'randwrite') {
    const next = xorshift32(job.seed);
    return () => (next() % blocks) * bs;
  }
  let seq = (job.seed >>> 0) % blocks;
  return () => {
    const b = seq;
    seq = seq + 1 === blocks ? 0 : seq + 1;
    return b * bs;
  };
}

function writing(job: BlkJob): boolean {
  return job.pattern === 'randwrite' || job.pattern === 'seqwrite';
}

/** Per-slot caller buffers (plain ArrayBuffers); writes carry a pseudo-random pattern. */
function callerBuffers(job: BlkJob, n: number): Uint8Array[] {
  const bufs = Array.from({ length: n }, () => new Uint8Array(job.blockSize));
  if (writing(job)) {
    const r = xorshift32(job.seed ^ 0x5a5a5a5a);
    for (const b of bufs) {
      const u32 = new Uint32Array(b.buffer);
      for (let i = 0; i < u32.length; i++) u32[i] = r();
    }
  }
  return bufs;
}

class Samples {
  buf: Float64Array;
  n = 0;
  constructor(readonly max: number) {
    this.buf = new Float64Array(Math.min(max, 1 << 16));
  }
  push(us: number): void {
    if (this.n >= this.max) return;
    if (this.n === this.buf.length) {
      const g = new Float64Array(Math.min(this.max, this.buf.length * 2));
      g.set(this.buf);
      this.buf = g;
    }
    this.buf[this.n++] = us;
  }
  take(): Float64Array {
    return this.buf.slice(0, this.n);
  }
}

function need(): Opened {
  if (!file) throw new Error('no file open');
  return file;
}

/** `readSync`/`writeSync` in a loop on this thread. */
function syncJob(job: BlkJob): BaselineResult {
  const f = need();
  const bs = job.blockSize;
  const w = writing(job);
  if (w && !f.writable) throw new Error('write job on a read-only file');
  const next = offsets(job, f.sizeBytes);
  const [user] = callerBuffers(job, 1);
  const bounce = f.direct ? alignedDirectBuffer(f.fd, bs) : null;
  const lat = new Samples(job.maxSamples ?? 1 << 20);
  const maxOps = job.maxOps ?? 0;
  const t0 = performance.now();
  const stopAt = t0 + job.ms;
  let prev = t0;
  let ops = 0;
  while (prev < stopAt && (maxOps === 0 || ops < maxOps)) {
    const pos = next();
    let n: number;
    if (bounce) {
      if (w) {
        bounce.set(user);
        n = writeSync(f.fd, bounce, 0, bs, pos);
      } else {
        n = readSync(f.fd, bounce, 0, bs, pos);
        user.set(bounce);
      }
    } else {
      n = w ? writeSync(f.fd, user, 0, bs, pos) : readSync(f.fd, user, 0, bs, pos);
    }
    if (n !== bs) throw new Error(`short ${w ? 'write' : 'read'} at ${pos}: ${n} of ${bs}`);
    const now = performance.now();
    lat.push((now - prev) * 1000);
    prev = now;
    ops++;
  }
  return { ops, bytes: ops * bs, elapsedMs: prev - t0, latUs: lat.take() };
}

/** `FileHandle.read`/`write` with `inFlight` requests outstanding. */
async function fhJob(job: BlkJob): Promise<BaselineResult> {
  const f = need();
  const bs = job.blockSize;
  const w = writing(job);
  if (w && !f.writable) throw new Error('write job on a read-only file');
  const next = offsets(job, f.sizeBytes);
  const users = callerBuffers(job, job.inFlight);
  const arena = f.direct ? alignedDirectBuffer(f.fd, bs * job.inFlight) : null;
  const lat = new Samples(job.maxSamples ?? 1 << 20);
  const maxOps = job.maxOps ?? 0;
  const t0 = performance.now();
  const stopAt = t0 + job.ms;
  let issued = 0;
  let ops = 0;
  let last = t0;
  const lane = async (i: number): Promise<void> => {
    const user = users[i];
    const io = arena ? arena.subarray(i * bs, (i + 1) * bs) : user;
    for (;;) {
      const start = performance.now();
      if (start >= stopAt || (maxOps > 0 && issued >= maxOps)) return;
      issued++;
      const pos = next();
      let n: number;
      if (w) {
        if (arena) io.set(user);
        n = (await f.fh.write(io, 0, bs, pos)).bytesWritten;
      } else {
        n = (await f.fh.read(io, 0, bs, pos)).bytesRead;
        if (arena) user.set(io);
      }
      if (n !== bs) throw new Error(`short ${w ? 'write' : 'read'} at ${pos}: ${n} of ${bs}`);
      last = performance.now();
      lat.push((last - start) * 1000);
      ops++;
    }
  };
  await Promise.all(users.map((_, i) => lane(i)));
  return { ops, bytes: ops * bs, elapsedMs: last - t0, latUs: lat.take() };
}

async function closeFile(): Promise<void> {
  if (!file) return;
  const f = file;
  file = null;
  closeSync(f.fd);
  await f.fh.close();
}

/** Worker entry (hypervisor/worker-bootstrap.mjs). */
export function start(): void {
  serve({
    open: async (req) => {
      await closeFile();
      const path = req.path as string;
      const direct = req.direct === true;
      const writable = req.writable === true;
      const flags = (writable ? constants.O_RDWR : constants.O_RDONLY) | (direct ? constants.O_DIRECT : 0);
      const fd = openSync(path, flags);
      const fh = await open(path, flags);
      const sizeBytes = (await fh.stat()).size;
      file = { path, direct, writable, fd, fh, sizeBytes };
      return { sizeBytes, fd, fhFd: fh.fd };
    },
    sync: (req) => syncJob(req.job as BlkJob),
    fh: (req) => fhJob(req.job as BlkJob),
    close: () => closeFile(),
  });
}
