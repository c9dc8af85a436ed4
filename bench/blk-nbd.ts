/**
 * The NBD rows of `pvio bench blk`: fio's nbd engine (libnbd) against pvio's NBD
 * export and against `qemu-nbd` serving the same file, each a separate process:
 *
 * - **fio-nbd-pvio**: `node toolstack/bin/pvio.mjs up --disk FILE --nbd-socket SOCK`
 *   (the NBD guest, toolstack/guests/nbd.ts: every byte goes fio → socket → guest →
 *   blkfront → ring → blkback → the file), ready once it prints its listening line
 *   (`nbd: serving xvda ... on unix:SOCK`); stopped with SIGTERM (a clean stop);
 * - **fio-nbd-qemu-nbd**: `qemu-nbd -f raw --cache=writeback --aio=threads -t -e 8
 *   -k SOCK FILE` (the page cache, like pvio's raw-file store), ready once its socket
 *   accepts a connection.
 *
 * Both listen on Unix sockets, so neither pays TCP and no port can clash. A round
 * runs one fio job against each server in turn (interleaved, as the other rows); a
 * job is `--ioengine=nbd --rw=PATTERN --bs=BS --iodepth=N --time_based
 * --ramp_time=WARMUP --runtime=MEASURE --lat_percentiles=1 --output-format=json`,
 * and its IOPS, bandwidth and latency percentiles (submission → completion) come
 * from fio's JSON. Both servers stay up for all rounds; they are idle while the
 * other is measured.
 *
 * Everything here spawns processes; when a tool is missing or the export does not
 * come up, {@link NbdSuite.start} says why and the rows are skipped.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { existsSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BlkPattern } from './guests/blk-guest.ts';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
const PVIO_BIN = join(ROOT, 'toolstack', 'bin', 'pvio.mjs');
const NBD_GUEST = join(ROOT, 'toolstack', 'guests', 'nbd.ts');

/** The two NBD servers. */
export type NbdImpl = 'fio-nbd-pvio' | 'fio-nbd-qemu-nbd';

/** One fio job's figures. */
export interface FioResult {
  ops: number;
  bytes: number;
  elapsedMs: number;
  iops: number;
  p50LatencyUs: number | null;
  p99LatencyUs: number | null;
  /** fio's job error code (0 = none). */
  error: number;
}

/** One fio job. */
export interface FioJob {
  readonly pattern: BlkPattern;
  readonly blockSize: number;
  readonly inFlight: number;
  readonly warmupMs: number;
  readonly measureMs: number;
  readonly seed: number;
  /** Bytes of the file fio may address. */
  readonly sizeBytes: number;
}

/** Whether `cmd --version` runs. */
function hasTool(cmd: string): boolean {
  const r = spawnSync(cmd, ['--version'], { stdio: 'ignore', timeout: 10_000 });
  return r.status === 0;
}

/** Resolves once a Unix socket accepts a connection, or rejects after `ms`. */
async function waitForSocket(path: string, ms: number, alive: () => string | null): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const dead = alive();
    if (dead) throw new Error(dead);
    if (existsSync(path)) {
      const ok = await new Promise<boolean>((res) => {
        const s = connect(path, () => {
          s.destroy();
          res(true);
        });
        s.on('error', () => res(false));
      });
      if (ok) return;
    }
    if (Date.now() > deadline) throw new Error(`${path} did not accept a connection within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Waits for a child to exit, up to `ms`; then SIGKILL. */
function stopChild(child: ChildProcess, signal: NodeJS.Signals, ms: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((res) => {
    const t = setTimeout(() => {
      child.kill('SIGKILL');
    }, ms);
    child.once('exit', () => {
      clearTimeout(t);
      res();
    });
    child.kill(signal);
  });
}

/** The two servers, started once for all NBD rows. */
export class NbdSuite {
  private pvio: ChildProcess | null = null;
  private qemu: ChildProcess | null = null;
  private pvioOut = '';
  private qemuOut = '';
  readonly pvioSocket: string;
  readonly qemuSocket: string;

  constructor(private readonly file: string, dir: string, private readonly log: (s: string) => void) {
    this.pvioSocket = join(dir, 'pvio-nbd.sock');
    this.qemuSocket = join(dir, 'qemu-nbd.sock');
  }

  /**
   * Starts both servers.
   * @returns null when both listen, else why the rows must be skipped (`skipped: ...`).
   */
  async start(timeoutMs = 30_000): Promise<string | null> {
    const missing = ['fio', 'qemu-nbd'].filter((t) => !hasTool(t));
    if (missing.length > 0) return `skipped: ${missing.join(', ')} not installed (bash scripts/setup-debian.sh qemu-utils libnbd-bin fio)`;
    if (!existsSync(NBD_GUEST)) return 'skipped: pvio\'s NBD export is not there yet (toolstack/guests/nbd.ts missing)';
    for (const s of [this.pvioSocket, this.qemuSocket]) rmSync(s, { force: true });

    // pvio's export: its own process, like any user's `pvio up`.
    this.pvio = spawn(process.execPath, [PVIO_BIN, 'up', '--disk', this.file, '--nbd-socket', this.pvioSocket], {
      cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'],
    });
    const listening = new Promise<string | null>((res) => {
      const t = setTimeout(() => res(`skipped: pvio's NBD export printed no listening line within ${timeoutMs} ms`), timeoutMs);
      const onData = (b: Buffer) => {
        this.pvioOut += b.toString();
        if (/nbd: serving xvda .* on /.test(this.pvioOut)) {
          clearTimeout(t);
          res(null);
        }
      };
      this.pvio!.stdout!.on('data', onData);
      this.pvio!.stderr!.on('data', (b: Buffer) => { this.pvioOut += b.toString(); });
      this.pvio!.once('exit', (code) => {
        clearTimeout(t);
        res(`skipped: \`pvio up --disk FILE --nbd-socket SOCK\` exited (${code}) before listening: ${this.pvioOut.trim().split('\n').slice(-3).join(' / ')}`);
      });
    });
    const why = await listening;
    if (why) {
      await this.close();
      return why;
    }
    this.log(`pvio NBD export up: ${this.pvioOut.trim().split('\n').filter((l) => l.includes('nbd: serving')).join('')}`);

    this.qemu = spawn('qemu-nbd', ['-f', 'raw', '--cache=writeback', '--aio=threads', '-t', '-e', '8', '-k', this.qemuSocket, this.file], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.qemu.stdout!.on('data', (b: Buffer) => { this.qemuOut += b.toString(); });
    this.qemu.stderr!.on('data', (b: Buffer) => { this.qemuOut += b.toString(); });
    try {
      await waitForSocket(this.qemuSocket, timeoutMs, () => (this.qemu!.exitCode !== null ? `qemu-nbd exited (${this.qemu!.exitCode}): ${this.qemuOut.trim()}` : null));
    } catch (e) {
      await this.close();
      return `skipped: qemu-nbd did not come up: ${(e as Error).message}`;
    }
    this.log(`qemu-nbd up on ${this.qemuSocket}`);
    return null;
  }

  /** Runs one fio job against `impl`'s server. @throws Error when fio fails or its output cannot be read. */
  async run(impl: NbdImpl, job: FioJob): Promise<FioResult> {
    const sock = impl === 'fio-nbd-pvio' ? this.pvioSocket : this.qemuSocket;
    const dead = impl === 'fio-nbd-pvio' ? this.pvio : this.qemu;
    if (!dead || dead.exitCode !== null) throw new Error(`${impl}: the server is not running`);
    const args = [
      '--name=pvio-bench-blk', '--ioengine=nbd', `--uri=nbd+unix:///?socket=${sock}`, `--rw=${job.pattern}`,
      `--bs=${job.blockSize}`, `--iodepth=${job.inFlight}`, `--size=${job.sizeBytes}`, '--time_based',
      `--ramp_time=${Math.max(1, Math.round(job.warmupMs))}ms`, `--runtime=${Math.max(1, Math.round(job.measureMs))}ms`,
      '--lat_percentiles=1', `--randseed=${job.seed}`, '--output-format=json',
    ];
    const out = await new Promise<string>((res, rej) => {
      const p = spawn('fio', args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      const t = setTimeout(() => p.kill('SIGKILL'), job.warmupMs + job.measureMs + 30_000);
      p.stdout.on('data', (b: Buffer) => { stdout += b.toString(); });
      p.stderr.on('data', (b: Buffer) => { stderr += b.toString(); });
      p.once('error', (e) => {
        clearTimeout(t);
        rej(e);
      });
      p.once('exit', (code, sig) => {
        clearTimeout(t);
        if (code === 0) res(stdout);
        else rej(new Error(`fio exited ${code ?? sig}: ${(stderr || stdout).trim().split('\n').slice(-3).join(' / ')}`));
      });
    });
    // fio prints "fio: connected to NBD server" before its JSON.
    const start = out.indexOf('{');
    if (start < 0) throw new Error(`fio printed no JSON: ${out.slice(0, 200)}`);
    const j = JSON.parse(out.slice(start)) as { jobs: Array<Record<string, unknown>> };
    const job0 = j.jobs[0] as { error: number; job_runtime: number; read: FioDir; write: FioDir };
    const dir = job.pattern === 'randread' || job.pattern === 'seqread' ? job0.read : job0.write;
    const pct = dir.lat_ns?.percentile ?? dir.clat_ns?.percentile ?? {};
    const us = (k: string) => (typeof pct[k] === 'number' ? pct[k] / 1000 : null);
    return {
      ops: dir.total_ios, bytes: dir.io_bytes, elapsedMs: job0.job_runtime, iops: dir.iops,
      p50LatencyUs: us('50.000000'), p99LatencyUs: us('99.000000'), error: job0.error,
    };
  }

  /** What the pvio export process printed (for the report's notes). */
  get pvioOutput(): string {
    return this.pvioOut;
  }

  /** Stops both servers (pvio cleanly with SIGTERM; qemu-nbd with SIGTERM). Never throws. */
  async close(): Promise<void> {
    const stops: Promise<void>[] = [];
    if (this.pvio) stops.push(stopChild(this.pvio, 'SIGTERM', 30_000));
    if (this.qemu) stops.push(stopChild(this.qemu, 'SIGTERM', 10_000));
    await Promise.all(stops).catch(() => undefined);
    this.pvio = null;
    this.qemu = null;
    for (const s of [this.pvioSocket, this.qemuSocket]) rmSync(s, { force: true });
  }
}

/** The part of fio's JSON per direction that is read here. */
interface FioDir {
  io_bytes: number;
  total_ios: number;
  iops: number;
  lat_ns?: { percentile?: Record<string, number> };
  clat_ns?: { percentile?: Record<string, number> };
}
