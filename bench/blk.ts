/**
 * `pvio bench blk`: pvio's virtual disk (a guest's blkfront → blkif rings → dom0's
 * blkback → a file) against Node's own file I/O and against the NBD path, on the
 * same file, in one process run. See bench/README.md, section `pvio bench blk`.
 *
 * Cells (pattern, block size, requests in flight): 4 KiB random read and write at 1,
 * 8 and 32 in flight; 64 KiB sequential at 8 in flight (512 KiB outstanding, enough
 * to keep a 16-page ring and the store busy); 1 MiB sequential at 4 in flight (one
 * indirect request per op, 4 MiB outstanding: more adds latency, not bandwidth, on
 * 2 cores). Each in two file modes: **page cache** (the file is written and read
 * once first, so it is resident) and **O_DIRECT** (pvio with the disk spec's
 * `direct=1`, blkback's DirectFileStore; the baselines open the file O_DIRECT;
 * both through aligned bounce buffers, labelled `odirect-bounce`).
 *
 * Implementations (rows' `impl`):
 * - `pvio`: a guest (bench/guests/blk-guest.ts) runs an fio-like job on its xvda;
 *   variants (each a guest with its own disk spec on the same file): `default`
 *   (persistent grants, indirect descriptors, 16-page rings, queues = min(vCPUs, 4)
 *   = 1), `persistent-off`, `indirect-off`, `ring-1page`, `queues-1` / `queues-2`
 *   (2 guest vCPUs; dom0 has 2 vCPUs, so queue 1 is served by dom0's vCPU 1),
 *   `odirect-bounce` (direct=1, the store answers synchronously) and
 *   `odirect-bounce-async` (direct=1 with the store's asynchronous mode, libuv);
 * - `readSync`: `fs.readSync`/`fs.writeSync` in one thread (a worker,
 *   bench/workers/blk-baseline-worker.ts) — the native floor, one request at a time;
 * - `FileHandle`: `FileHandle.read`/`write` at the cell's in-flight count (same worker);
 * - `fio-nbd-pvio`, `fio-nbd-qemu-nbd`: fio's nbd engine against `pvio up --disk FILE
 *   --nbd-socket` and against qemu-nbd (bench/blk-nbd.ts), 4 KiB random read and
 *   write at 32 in flight.
 *
 * Scheduling: a group is one cell with its members (the pvio variants measured on
 * it, readSync, FileHandle). A round runs every member once — warm-up job, then the
 * measured job — so members interleave A B C A B C ...; 7 rounds. Ratios are
 * medians of the per-round ratios (harness.pairwiseRatioMedian). Read groups use
 * read-only guests, alive together; a write member gets the one writable guest
 * (the previous writable guest is shut down first), so only one guest ever has the
 * file open writable.
 *
 * Threads: at most two spin (the bench's spin-token buffer, 2 tokens, is handed to
 * the machine); the baselines never spin; the main thread only coordinates.
 */
import { mkdirSync, mkdtempSync, openSync, closeSync, readSync, writeSync, fsyncSync, realpathSync, rmSync, writeFileSync, readdirSync, readlinkSync, readFileSync, constants } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { SpinTokens } from '../hypervisor/spin.ts';
import { Machine, type GuestHandle } from '../toolstack/machine.ts';
import { parseDiskSpec } from '../toolstack/config.ts';
import {
  BENCH_SPIN_TOKENS, benchOptionsOrExit, BenchWorker, formatSig, machineInfo, meets, median, pairwiseRatioMedian, pairwiseRatios, percentile,
  parseBenchArgs, restoreSpinTokens, svgChart, type ChartSeries, type MachineInfo, type RatioResult, writeJsonReport } from './harness.ts';
import { NbdSuite, type NbdImpl } from './blk-nbd.ts';
import type { BlkJob, BlkJobResult, BlkPattern } from './guests/blk-guest.ts';
import type { BaselineResult } from './workers/blk-baseline-worker.ts';
import { xorshift32 } from '../toolstack/xorshift.ts';

/** Usage text of `pvio bench blk`. */
export const BENCH_BLK_USAGE = `usage: pvio bench blk [--json FILE] [--svg FILE] [--quick] [--rounds N] [--warmup MS] [--measure MS]
                      [--file PATH] [--size-mib N] [--budget S] [--no-odirect] [--no-nbd] [--only TEXT]`;

const GUEST = fileURLToPath(new URL('./guests/blk-guest.ts', import.meta.url));
const BASELINE_WORKER = new URL('./workers/blk-baseline-worker.ts', import.meta.url);

// ---------------------------------------------------------------------------
// Vocabulary

/** Rows' `impl`. */
export type BlkImpl = 'pvio' | 'readSync' | 'FileHandle' | NbdImpl;
/** Where the data lives: the page cache, or O_DIRECT through aligned bounce buffers. */
export type FileMode = 'page-cache' | 'o-direct';

/** One cell: what every member of a group runs. */
export interface Cell {
  readonly mode: FileMode;
  readonly pattern: BlkPattern;
  /** Bytes per request. */
  readonly blockSize: number;
  /** Requests outstanding (readSync: always one at a time). */
  readonly inFlight: number;
}

/** A pvio variant: a guest with its own disk spec on the same file. */
interface Variant {
  readonly name: string;
  /** Disk-spec keys put before the target (`persistent=0,` ...). */
  readonly spec: string;
  readonly vcpus: number;
  /** The store completes through libuv (GuestSpec.asyncStore). */
  readonly asyncStore?: boolean;
  /** Served by DirectFileStore (`direct=1`, or a store module while direct=1 is not wired). */
  readonly direct?: boolean;
  readonly description: string;
}

const V = {
  default: { name: 'default', spec: '', vcpus: 1, description: 'persistent grants, indirect (256 segments), 16-page rings, queues = min(vCPUs, 4) = 1' },
  persistentOff: { name: 'persistent-off', spec: 'persistent=0,', vcpus: 1, description: 'persistent=0: grants mapped and unmapped per request' },
  indirectOff: { name: 'indirect-off', spec: 'max-indirect-segments=0,', vcpus: 1, description: 'max-indirect-segments=0: at most 11 pages per blkif request' },
  ring1: { name: 'ring-1page', spec: 'max-ring-page-order=0,', vcpus: 1, description: 'max-ring-page-order=0: one-page rings (32 entries) instead of 16 pages (512)' },
  queues1: { name: 'queues-1', spec: 'max-queues=1,', vcpus: 2, description: '2 vCPUs, max-queues=1' },
  queues2: { name: 'queues-2', spec: 'max-queues=2,', vcpus: 2, description: '2 vCPUs, max-queues=2: two rings and event channels, queue 1 served by dom0\'s vCPU 1' },
  odirect: { name: 'odirect-bounce', spec: 'direct=1,', vcpus: 1, direct: true, description: 'direct=1: DirectFileStore, O_DIRECT through an aligned bounce pool, synchronous store' },
  odirectAsync: { name: 'odirect-bounce-async', spec: 'direct=1,', vcpus: 1, asyncStore: true, direct: true, description: 'direct=1 with the store\'s asynchronous mode (libuv thread pool)' },
} satisfies Record<string, Variant>;
const VARIANTS: Variant[] = Object.values(V);

/** A member of a group: an implementation and its variant. */
interface Member {
  readonly impl: BlkImpl;
  readonly variant: string;
}

/** Cases that interleave, round by round. */
interface Group {
  readonly label: string;
  /** `machine`: pvio's machine and the baseline worker; `nbd`: the spawned servers. */
  readonly phase: 'page-cache' | 'nbd' | 'o-direct';
  readonly cell: Cell;
  readonly members: readonly Member[];
}

/** One measured window of one member. */
interface Run {
  readonly round: number;
  readonly ops: number;
  readonly bytes: number;
  readonly elapsedMs: number;
  readonly latUs: Float64Array;
  /** Hypercalls (all domains) over the job; null where not applicable. */
  readonly hypercalls: number | null;
  /** Event-channel notifications, frontend + backend, over the job; null where not applicable. */
  readonly notifications: number | null;
  /** pvio's detailed counter deltas. */
  readonly counters: Record<string, number> | null;
  /** fio's own percentiles (its samples are not returned). */
  readonly p50Us?: number | null;
  readonly p99Us?: number | null;
}

/** Every round of one member in one group. */
interface Outcome {
  readonly member: Member;
  readonly group: Group;
  readonly runs: Run[];
  error: string | null;
  skipped: string | null;
}

/** One row of the report (JSON `rows[]`). */
export interface BlkRow {
  readonly impl: BlkImpl;
  readonly variant: string;
  readonly pattern: BlkPattern;
  readonly blockSize: number;
  readonly inFlight: number;
  /** Median over rounds of ops / window. */
  readonly iops: number | null;
  /** Median over rounds of bytes / window, MB/s (10^6 B/s). */
  readonly mbPerSec: number | null;
  /** Per-request latency percentiles over all rounds' samples (fio: medians of fio's per-round percentiles), µs. */
  readonly p50LatencyUs: number | null;
  readonly p99LatencyUs: number | null;
  /** Hypercalls by every domain (hypervisor's count) per op, all rounds pooled; null for baselines. */
  readonly hypercallsPerOp: number | null;
  /** Notifications (blkfront → blkback + blkback → blkfront) per op; null for baselines. */
  readonly notificationsPerOp: number | null;
  readonly fileMode: FileMode;
  readonly group: string;
  readonly rounds: number;
  /** Median of per-round IOPS ratios against the readSync / FileHandle member of the same group. */
  readonly ratioVsReadSync: number | null;
  readonly ratioVsFileHandle: number | null;
  /** pvio only: counter deltas per op (blkif requests, grant maps, persistent hits, ...). */
  readonly perOp?: Record<string, number>;
  readonly latencySamples: number;
  readonly error?: string;
}

/** The JSON report. */
export interface BlkReport {
  readonly machine: MachineInfo;
  readonly config: Record<string, unknown>;
  readonly rows: BlkRow[];
  readonly ratios: RatioResult[];
  /** Members that did not run, and why. */
  readonly skipped: Array<{ group: string; impl: BlkImpl; variant: string; reason: string }>;
  readonly durationMs: number;
  readonly notes: string[];
}

// ---------------------------------------------------------------------------
// Options

/** Parsed options of `bench blk`. */
export interface BenchBlkOptions {
  json: string | null;
  svg: string | null;
  quick: boolean;
  rounds: number;
  warmupMs: number;
  measureMs: number;
  file: string | null;
  sizeMiB: number;
  budgetS: number;
  odirect: boolean;
  nbd: boolean;
  /** Run only the groups whose label contains this text (e.g. `o-direct randwrite`); null: all. */
  only: string | null;
  help: boolean;
}

/** Parses the arguments after `bench blk`. @throws Error naming the bad argument. */
export function parseBenchBlkArgs(argv: readonly string[]): BenchBlkOptions {
  const { values: v, help } = parseBenchArgs(argv, {
    json: { kind: 'string' }, svg: { kind: 'string' }, quick: { kind: 'flag' },
    rounds: { kind: 'number', min: 1, integer: true }, warmup: { kind: 'number', min: 0 }, measure: { kind: 'number', min: 1 },
    file: { kind: 'string' }, 'size-mib': { kind: 'number', min: 2, integer: true }, budget: { kind: 'number', min: 1 },
    'no-odirect': { kind: 'flag' }, 'no-nbd': { kind: 'flag' }, only: { kind: 'string' },
  });
  const o: BenchBlkOptions = {
    json: (v.json as string) ?? null, svg: (v.svg as string) ?? null, quick: v.quick === true,
    rounds: (v.rounds as number) ?? NaN, warmupMs: (v.warmup as number) ?? NaN, measureMs: (v.measure as number) ?? NaN,
    file: (v.file as string) ?? null, sizeMiB: (v['size-mib'] as number) ?? NaN, budgetS: (v.budget as number) ?? NaN,
    odirect: v['no-odirect'] !== true, nbd: v['no-nbd'] !== true, only: (v.only as string) ?? null, help,
  };
  if (Number.isNaN(o.rounds)) o.rounds = o.quick ? 2 : 7;
  if (Number.isNaN(o.warmupMs)) o.warmupMs = o.quick ? 40 : 150;
  if (Number.isNaN(o.measureMs)) o.measureMs = o.quick ? 100 : 300;
  if (Number.isNaN(o.sizeMiB)) o.sizeMiB = o.quick ? 32 : 256;
  if (Number.isNaN(o.budgetS)) o.budgetS = o.quick ? 60 : 480;
  return o;
}

// ---------------------------------------------------------------------------
// The plan

const KiB = 1024;
const MiB = 1024 * 1024;
const cell = (mode: FileMode, pattern: BlkPattern, blockSize: number, inFlight: number): Cell => ({ mode, pattern, blockSize, inFlight });
const pvioM = (v: Variant): Member => ({ impl: 'pvio', variant: v.name });
const baselines = (mode: FileMode): Member[] => {
  const variant = mode === 'page-cache' ? 'page-cache' : 'odirect-bounce';
  return [{ impl: 'readSync', variant }, { impl: 'FileHandle', variant }];
};
const bsLabel = (bs: number) => (bs >= MiB ? `${bs / MiB}M` : `${bs / KiB}K`);
const cellLabel = (c: Cell) => `${c.mode} ${c.pattern} ${bsLabel(c.blockSize)} QD${c.inFlight}`;

function group(phase: Group['phase'], c: Cell, variants: Variant[], withBaselines = true): Group {
  return { label: cellLabel(c), phase, cell: c, members: [...variants.map(pvioM), ...(withBaselines ? baselines(c.mode) : [])] };
}

/** The groups of a run, in the order they run (goal groups first within a phase). */
function buildPlan(o: BenchBlkOptions): Group[] {
  const pc: FileMode = 'page-cache';
  const od: FileMode = 'o-direct';
  const nbdGroups = (patterns: BlkPattern[]): Group[] => patterns.map((p) => ({
    label: `nbd ${p} 4K QD32`, phase: 'nbd' as const, cell: cell(pc, p, 4 * KiB, 32),
    members: [{ impl: 'fio-nbd-pvio' as const, variant: 'page-cache' }, { impl: 'fio-nbd-qemu-nbd' as const, variant: 'page-cache' }],
  }));
  const out: Group[] = [];
  if (o.quick) {
    out.push(group('page-cache', cell(pc, 'randread', 4 * KiB, 32), [V.default, V.persistentOff]));
    out.push(group('page-cache', cell(pc, 'seqread', MiB, 4), [V.default]));
    out.push(group('page-cache', cell(pc, 'randwrite', 4 * KiB, 8), [V.default]));
    if (o.nbd) out.push(...nbdGroups(['randread']));
    if (o.odirect) out.push(group('o-direct', cell(od, 'randread', 4 * KiB, 8), [V.odirect, V.odirectAsync]));
    return out;
  }
  // Page cache: reads (read-only guests, all alive), then writes (one writable guest at a time).
  out.push(group('page-cache', cell(pc, 'randread', 4 * KiB, 32), [V.default, V.persistentOff, V.ring1, V.queues1, V.queues2]));
  out.push(group('page-cache', cell(pc, 'seqread', MiB, 4), [V.default, V.persistentOff, V.indirectOff, V.ring1, V.queues1, V.queues2]));
  out.push(group('page-cache', cell(pc, 'randread', 4 * KiB, 1), [V.default, V.persistentOff]));
  out.push(group('page-cache', cell(pc, 'randread', 4 * KiB, 8), [V.default, V.persistentOff]));
  out.push(group('page-cache', cell(pc, 'seqread', 64 * KiB, 8), [V.default, V.persistentOff, V.indirectOff]));
  out.push(group('page-cache', cell(pc, 'randwrite', 4 * KiB, 1), [V.default]));
  out.push(group('page-cache', cell(pc, 'randwrite', 4 * KiB, 8), [V.default]));
  out.push(group('page-cache', cell(pc, 'randwrite', 4 * KiB, 32), [V.default, V.persistentOff, V.ring1, V.queues2]));
  out.push(group('page-cache', cell(pc, 'seqwrite', 64 * KiB, 8), [V.default, V.indirectOff]));
  out.push(group('page-cache', cell(pc, 'seqwrite', MiB, 4), [V.default, V.persistentOff, V.indirectOff]));
  if (o.nbd) out.push(...nbdGroups(['randread', 'randwrite']));
  if (o.odirect) {
    for (const p of ['randread', 'randwrite'] as const) {
      for (const qd of [1, 8, 32]) out.push(group('o-direct', cell(od, p, 4 * KiB, qd), qd === 1 ? [V.odirect] : [V.odirect, V.odirectAsync]));
    }
    for (const p of ['seqread', 'seqwrite'] as const) {
      out.push(group('o-direct', cell(od, p, 64 * KiB, 8), [V.odirect, V.odirectAsync]));
      out.push(group('o-direct', cell(od, p, MiB, 4), [V.odirect, V.odirectAsync]));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// The test file

/** Writes `bytes` of pseudo-random data to `path` (1 MiB at a time), fsyncs, and reads it back once so it is in the page cache. */
function prepareFile(path: string, bytes: number): void {
  mkdirSync(dirname(path), { recursive: true });
  const fd = openSync(path, 'w');
  try {
    const chunk = Buffer.allocUnsafe(MiB);
    const u32 = new Uint32Array(chunk.buffer, chunk.byteOffset, MiB / 4);
    const next = xorshift32(0x12345678);
    for (let off = 0; off < bytes; off += MiB) {
      for (let i = 0; i < u32.length; i++) u32[i] = next();
      writeSync(fd, chunk, 0, Math.min(MiB, bytes - off), off);
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  warmFile(path, bytes);
}

/** Reads the whole file once (buffered), so it is resident in the page cache. */
function warmFile(path: string, bytes: number): void {
  const fd = openSync(path, 'r');
  try {
    const chunk = Buffer.allocUnsafe(MiB);
    for (let off = 0; off < bytes; off += MiB) readSync(fd, chunk, 0, MiB, off);
  } finally {
    closeSync(fd);
  }
}

/** Descriptors of this process open on `path` with O_DIRECT (from /proc/self/fdinfo). */
function directDescriptors(path: string): Set<number> {
  const out = new Set<number>();
  let fds: string[];
  try {
    fds = readdirSync('/proc/self/fd');
  } catch {
    return out;
  }
  for (const fd of fds) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) !== path) continue;
      const m = /^flags:\s+([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
      if (m && (parseInt(m[1], 8) & constants.O_DIRECT) !== 0) out.add(Number(fd));
    } catch {
      /* closed meanwhile */
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// pvio: the machine and its guests

interface Guest {
  readonly handle: GuestHandle;
  readonly name: string;
  readonly variant: Variant;
  readonly writable: boolean;
}

/** Sum of a hypervisor snapshot's hypercall counts. */
function hypercallTotal(s: Record<string, unknown>): number {
  let n = 0;
  for (const v of Object.values((s.hypercalls ?? {}) as Record<string, number>)) n += v;
  return n;
}

type BackendCounters = Record<string, number>;
const BACKEND_KEYS = ['requests', 'indirect', 'grantMaps', 'mapHypercalls', 'grantUnmaps', 'unmapHypercalls', 'persistentHits', 'persistentEvictions', 'notifications', 'passes', 'errors'];

/** A pvio machine with the bench's guests: read-only ones kept, and at most one writable. */
class PvioDriver {
  private m: Machine | null = null;
  private readonly ro = new Map<string, Guest>();
  private rw: Guest | null = null;
  private n = 0;
  /** Why a variant cannot run (e.g. direct=1 did not reach blkback); checked once per variant and access. */
  private readonly unusable = new Map<string, string>();
  /** Baseline descriptors, excluded from the O_DIRECT check. */
  excludeFds = new Set<number>();

  /**
   * @param negotiated filled with what each variant negotiated (from its guest's `info`).
   */
  constructor(private readonly file: string, private readonly tokens: SharedArrayBuffer, private readonly log: (s: string) => void,
    private readonly timeoutMs: number, private readonly negotiated: Record<string, unknown>) {}

  async boot(): Promise<void> {
    this.m = await Machine.boot({
      spinTokenBuffer: this.tokens,
      // Two dom0 vCPUs: queue 1 of a two-queue disk runs on its own thread (single-queue disks stay on vCPU 0).
      dom0Vcpus: 2,
      onConsole: (domain, line) => this.log(`[${domain}] ${line}`),
    });
  }

  private machine(): Machine {
    if (!this.m) throw new Error('machine not booted');
    return this.m;
  }

  /** Guests created so far that have not run a job yet (their first job also warms their JIT up). */
  private readonly cold = new Set<Guest>();

  /** Creates a guest with `keys` on the file and waits for its disk; null (guest stopped) when `mustBeDirect` and no O_DIRECT descriptor appeared. */
  private async create(v: Variant, writable: boolean, keys: string, mustBeDirect: boolean): Promise<Guest | null> {
    const name = `blk${++this.n}-${v.name}-${writable ? 'w' : 'r'}`;
    const before = mustBeDirect ? directDescriptors(this.file) : null;
    const handle = await this.machine().createGuest({
      name, memoryMiB: 128, vcpus: v.vcpus, kernel: GUEST,
      disks: [parseDiskSpec(`${keys}${this.file},xvda,${writable ? 'w' : 'r'}`, process.cwd())],
      ...(v.asyncStore ? { asyncStore: true } : {}),
    });
    const g: Guest = { handle, name, variant: v, writable };
    const info = (await handle.call('info', undefined, this.timeoutMs)) as { features: Record<string, unknown>; vcpus: number };
    this.negotiated[`${v.name} (${writable ? 'w' : 'r'})`] = { vcpus: info.vcpus, diskSpecKeys: keys.replace(/,$/, ''), ...info.features };
    if (before) {
      const fresh = [...directDescriptors(this.file)].filter((fd) => !before.has(fd) && !this.excludeFds.has(fd));
      if (fresh.length === 0) {
        await this.stop(g);
        return null;
      }
    }
    return g;
  }

  /** The guest to run `v` with: a read-only one (kept), or the one writable guest (replacing another variant's). */
  async guest(v: Variant, writable: boolean): Promise<Guest> {
    const key = `${v.name}|${writable ? 'w' : 'r'}`;
    const bad = this.unusable.get(key);
    if (bad) throw new SkipError(bad);
    if (!writable) {
      const g = this.ro.get(v.name);
      if (g) return g;
    } else if (this.rw?.variant.name === v.name) {
      return this.rw;
    } else {
      await this.closeWritable();
    }
    // A direct variant is checked: after attaching, a new O_DIRECT descriptor must be open on the file.
    const g = await this.create(v, writable, v.spec, v.direct === true);
    if (!g) {
      const why = 'skipped: direct=1 did not open the file with O_DIRECT in blkback';
      this.unusable.set(key, why);
      throw new SkipError(why);
    }
    if (writable) this.rw = g;
    else this.ro.set(v.name, g);
    this.cold.add(g);
    return g;
  }

  private async stop(g: Guest): Promise<void> {
    this.cold.delete(g);
    await g.handle.call('exit', undefined, this.timeoutMs).catch(() => undefined);
    let timer: NodeJS.Timeout | undefined;
    const done = await Promise.race([g.handle.exit.then(() => true), new Promise<boolean>((r) => { timer = setTimeout(() => r(false), 20_000); })]);
    clearTimeout(timer);
    if (!done) await this.m?.destroy(g.handle.domid).catch(() => undefined);
    // dom0 releases the guest's disks (closes its store) after the domain is gone:
    // wait for that, so the next guest never has the file open alongside it (and an
    // O_DIRECT descriptor number it reuses is not mistaken for an old one).
    const deadline = Date.now() + 10_000;
    while (this.m && Date.now() < deadline) {
      const st = await this.m.dom0Stats().catch(() => null);
      if (!st || !(st.guests as Array<{ domid: number }>).some((x) => x.domid === g.handle.domid)) break;
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  async closeWritable(): Promise<void> {
    if (!this.rw) return;
    const g = this.rw;
    this.rw = null;
    await this.stop(g);
  }

  async closeReadOnly(): Promise<void> {
    const gs = [...this.ro.values()];
    this.ro.clear();
    await Promise.all(gs.map((g) => this.stop(g)));
  }

  /**
   * One window: a warm-up job, then the measured job with counters read around it.
   * A guest's first window warms up for `coldWarmupMs` instead (a new worker's JIT
   * is cold; write groups with several variants start a new guest every round).
   */
  async run(v: Variant, c: Cell, round: number, warmupMs: number, measureMs: number, seeds: [number, number], coldWarmupMs: number): Promise<Run> {
    const writable = c.pattern === 'randwrite' || c.pattern === 'seqwrite';
    const g = await this.guest(v, writable);
    const m = this.machine();
    const job = (ms: number, seed: number): BlkJob => ({ pattern: c.pattern, blockSize: c.blockSize, inFlight: c.inFlight, ms, seed, maxSamples: 1 << 18 });
    const warm = this.cold.delete(g) ? Math.max(warmupMs, coldWarmupMs) : warmupMs;
    const timeout = warm + measureMs + this.timeoutMs;
    if (warm > 0) {
      const w = (await g.handle.call('job', job(warm, seeds[0]), timeout)) as BlkJobResult;
      if (w.error) throw new Error(`warm-up: ${w.error}`);
    }
    const key = `${g.name}/xvda`;
    const [h0, d0] = await Promise.all([m.hypervisorStats(), m.dom0Stats()]);
    const r = (await g.handle.call('job', job(measureMs, seeds[1]), timeout)) as BlkJobResult;
    const [h1, d1] = await Promise.all([m.hypervisorStats(), m.dom0Stats()]);
    if (r.error) throw new Error(r.error);
    const b0 = ((d0.disks as Record<string, BackendCounters>)[key]) ?? {};
    const b1 = ((d1.disks as Record<string, BackendCounters>)[key]) ?? {};
    const be: Record<string, number> = {};
    for (const k of BACKEND_KEYS) be[k] = (b1[k] ?? 0) - (b0[k] ?? 0);
    const guestHypercalls = Object.values(r.hypercalls).reduce((a, b) => a + b, 0);
    return {
      round, ops: r.ops, bytes: r.bytes, elapsedMs: r.elapsedMs, latUs: r.latUs,
      hypercalls: hypercallTotal(h1) - hypercallTotal(h0),
      notifications: r.notifications + be.notifications,
      counters: {
        blkifRequests: r.requests, indirectRequests: r.indirectRequests, frontendNotifications: r.notifications,
        backendNotifications: be.notifications, guestHypercalls, grantsIssued: r.grantsIssued,
        grantMaps: be.grantMaps, mapHypercalls: be.mapHypercalls, grantUnmaps: be.grantUnmaps, unmapHypercalls: be.unmapHypercalls,
        persistentHits: be.persistentHits, persistentEvictions: be.persistentEvictions, backendPasses: be.passes,
        guestUpcalls: r.upcalls, guestWakeups: r.wakeups,
      },
    };
  }

  async shutdown(): Promise<void> {
    const m = this.m;
    if (!m) return;
    await this.closeWritable().catch(() => undefined);
    await this.closeReadOnly().catch(() => undefined);
    this.m = null;
    await m.shutdown();
  }
}

/** A member that cannot run in this setup (not a failure of the run). */
class SkipError extends Error {}

// ---------------------------------------------------------------------------
// Baselines

class Baselines {
  private w: BenchWorker | null = null;
  private opened: FileMode | null = null;

  constructor(private readonly file: string, private readonly timeoutMs: number) {}

  /** Opens the file in `mode` (O_RDWR, plus O_DIRECT for o-direct). @returns the worker's descriptors. */
  async open(mode: FileMode): Promise<number[]> {
    this.w ??= await BenchWorker.spawn(BASELINE_WORKER, 'blk-baselines', {});
    const r = (await this.w.call('open', { path: this.file, direct: mode === 'o-direct', writable: true }, this.timeoutMs)) as { fd: number; fhFd: number };
    this.opened = mode;
    return [r.fd, r.fhFd];
  }

  async run(impl: 'readSync' | 'FileHandle', c: Cell, round: number, warmupMs: number, measureMs: number, seeds: [number, number]): Promise<Run> {
    if (!this.w || this.opened !== c.mode) await this.open(c.mode);
    const op = impl === 'readSync' ? 'sync' : 'fh';
    const job = (ms: number, seed: number): BlkJob => ({ pattern: c.pattern, blockSize: c.blockSize, inFlight: c.inFlight, ms, seed, maxSamples: 1 << 18 });
    const timeout = warmupMs + measureMs + this.timeoutMs;
    if (warmupMs > 0) await this.w!.call(op, { job: job(warmupMs, seeds[0]) }, timeout);
    const r = (await this.w!.call(op, { job: job(measureMs, seeds[1]) }, timeout)) as BaselineResult;
    return { round, ops: r.ops, bytes: r.bytes, elapsedMs: r.elapsedMs, latUs: r.latUs, hypercalls: null, notifications: null, counters: null };
  }

  async close(): Promise<void> {
    if (!this.w) return;
    await this.w.call('close', {}, 10_000).catch(() => undefined);
    await this.w.terminate();
    this.w = null;
  }
}

// ---------------------------------------------------------------------------
// Summaries

const iopsOf = (r: Run) => (r.elapsedMs > 0 ? r.ops / (r.elapsedMs / 1000) : null);
const mbOf = (r: Run) => (r.elapsedMs > 0 ? r.bytes / 1e6 / (r.elapsedMs / 1000) : null);

/** Per-round IOPS of an outcome, indexed by round. */
function roundIops(o: Outcome, rounds: number): Array<number | null> {
  const out: Array<number | null> = new Array(rounds).fill(null);
  for (const r of o.runs) if (r.round < rounds) out[r.round] = iopsOf(r);
  return out;
}

function summarize(o: Outcome, all: readonly Outcome[], rounds: number): BlkRow {
  const c = o.group.cell;
  const rates = o.runs.map(iopsOf).filter((x): x is number => x !== null);
  const mbs = o.runs.map(mbOf).filter((x): x is number => x !== null);
  let samples: number[] = [];
  for (const r of o.runs) for (let i = 0; i < r.latUs.length; i++) samples.push(r.latUs[i]);
  let p50 = percentile(samples, 50);
  let p99 = percentile(samples, 99);
  if (samples.length === 0 && o.runs.some((r) => r.p50Us !== undefined)) {
    p50 = median(o.runs.map((r) => r.p50Us ?? NaN));
    p99 = median(o.runs.map((r) => r.p99Us ?? NaN));
  }
  const nSamples = samples.length;
  samples = [];
  const ops = o.runs.reduce((s, r) => s + r.ops, 0);
  const per = (pick: (r: Run) => number | null): number | null => {
    if (o.runs.length === 0 || ops === 0) return null;
    let sum = 0;
    for (const r of o.runs) {
      const v = pick(r);
      if (v === null) return null;
      sum += v;
    }
    return sum / ops;
  };
  let perOp: Record<string, number> | undefined;
  if (o.runs.length > 0 && o.runs.every((r) => r.counters)) {
    perOp = {};
    for (const k of Object.keys(o.runs[0].counters!)) perOp[k] = o.runs.reduce((s, r) => s + (r.counters![k] ?? 0), 0) / Math.max(1, ops);
  }
  const peer = (impl: BlkImpl) => all.find((x) => x.group === o.group && x.member.impl === impl && x !== o);
  const vs = (impl: BlkImpl): number | null => {
    const p = peer(impl);
    return p ? pairwiseRatioMedian(roundIops(o, rounds), roundIops(p, rounds)) : null;
  };
  return {
    impl: o.member.impl, variant: o.member.variant, pattern: c.pattern, blockSize: c.blockSize, inFlight: c.inFlight,
    iops: median(rates), mbPerSec: median(mbs), p50LatencyUs: p50, p99LatencyUs: p99,
    hypercallsPerOp: per((r) => r.hypercalls), notificationsPerOp: per((r) => r.notifications),
    fileMode: c.mode, group: o.group.label, rounds: o.runs.length,
    ratioVsReadSync: o.member.impl === 'readSync' ? null : vs('readSync'),
    ratioVsFileHandle: o.member.impl === 'FileHandle' ? null : vs('FileHandle'),
    ...(perOp ? { perOp } : {}), latencySamples: nSamples,
    ...(o.error ? { error: o.error } : {}),
  };
}

/** The issue's goals and the variant comparisons. */
function computeRatios(outcomes: readonly Outcome[], rounds: number, plannedLabels: Set<string>): RatioResult[] {
  const find = (label: string, impl: BlkImpl, variant?: string) =>
    outcomes.find((o) => o.group.label === label && o.member.impl === impl && (variant === undefined || o.member.variant === variant) && o.runs.length > 0);
  const out: RatioResult[] = [];
  const add = (spec: {
    id: string; kind: 'goal' | 'reference'; description: string; label: string;
    num: [BlkImpl, string?]; den: [BlkImpl, string?]; threshold: number | null; comparison: RatioResult['comparison'];
  }) => {
    const num = find(spec.label, ...spec.num);
    const den = find(spec.label, ...spec.den);
    const keyOf = (m: [BlkImpl, string?]) => `${spec.label} | ${m[0]}${m[1] ? ` ${m[1]}` : ''}`;
    const base = {
      id: spec.id, kind: spec.kind, description: spec.description, metric: 'iops',
      numerator: keyOf(spec.num), denominator: keyOf(spec.den), threshold: spec.threshold, comparison: spec.comparison,
    };
    if (!num || !den) {
      const why = !plannedLabels.has(spec.label) ? 'not measured in this run (group not in the plan)'
        : `not measured: ${!num ? keyOf(spec.num) : keyOf(spec.den)} did not run`;
      out.push({ ...base, value: null, met: null, perRound: [], note: why });
      return;
    }
    const perRound = pairwiseRatios(roundIops(num, rounds), roundIops(den, rounds));
    const value = median(perRound);
    out.push({ ...base, value, met: meets(value, spec.comparison, spec.threshold), perRound, ...(value === null ? { note: 'no complete pair of rounds' } : {}) });
  };
  const rr32 = 'page-cache randread 4K QD32';
  const sr1m = 'page-cache seqread 1M QD4';
  add({ id: 'pvio-vs-readSync/4k-randread-qd32', kind: 'goal', label: rr32, num: ['pvio', 'default'], den: ['readSync'], threshold: 0.5, comparison: '>=',
    description: '4 KiB random read, 32 in flight, page cache: pvio IOPS ≥ 0.5× readSync in one thread' });
  add({ id: 'pvio-vs-FileHandle/4k-randread-qd32', kind: 'goal', label: rr32, num: ['pvio', 'default'], den: ['FileHandle'], threshold: 3, comparison: '>=',
    description: '4 KiB random read, 32 in flight, page cache: pvio IOPS ≥ 3× FileHandle.read at 32 in flight' });
  add({ id: 'pvio-vs-readSync/1m-seqread', kind: 'goal', label: sr1m, num: ['pvio', 'default'], den: ['readSync'], threshold: 0.5, comparison: '>=',
    description: '1 MiB sequential read, persistent grants + indirect descriptors (4 in flight), page cache: bandwidth ≥ 0.5× readSync' });
  add({ id: 'persistent-on-vs-off/4k-randread-qd32', kind: 'goal', label: rr32, num: ['pvio', 'default'], den: ['pvio', 'persistent-off'], threshold: 3, comparison: '>=',
    description: '4 KiB random read, 32 in flight: persistent grants ≥ 3× the IOPS of per-request grant maps' });
  add({ id: 'fio-nbd-pvio-vs-qemu-nbd/4k-randread-qd32', kind: 'goal', label: 'nbd randread 4K QD32', num: ['fio-nbd-pvio'], den: ['fio-nbd-qemu-nbd'], threshold: 0.5, comparison: '>=',
    description: 'fio (nbd engine), 4 KiB random read, 32 in flight: pvio\'s NBD export ≥ 0.5× qemu-nbd on the same file (1.0 is the aim)' });
  add({ id: 'fio-nbd-pvio-vs-qemu-nbd/4k-randwrite-qd32', kind: 'goal', label: 'nbd randwrite 4K QD32', num: ['fio-nbd-pvio'], den: ['fio-nbd-qemu-nbd'], threshold: 0.5, comparison: '>=',
    description: 'fio (nbd engine), 4 KiB random write, 32 in flight: pvio\'s NBD export ≥ 0.5× qemu-nbd (1.0 is the aim)' });
  // Variant comparisons (reference).
  for (const qd of [1, 8]) {
    add({ id: `persistent-on-vs-off/4k-randread-qd${qd}`, kind: 'reference', label: `page-cache randread 4K QD${qd}`, num: ['pvio', 'default'], den: ['pvio', 'persistent-off'], threshold: null, comparison: null,
      description: `4 KiB random read, ${qd} in flight: persistent grants on / off` });
  }
  const refs: Array<[string, string, string, string, string]> = [
    ['persistent-on-vs-off/64k-seqread', 'page-cache seqread 64K QD8', 'default', 'persistent-off', '64 KiB sequential read: persistent grants on / off'],
    ['persistent-on-vs-off/1m-seqread', sr1m, 'default', 'persistent-off', '1 MiB sequential read: persistent grants on / off'],
    ['persistent-on-vs-off/4k-randwrite-qd32', 'page-cache randwrite 4K QD32', 'default', 'persistent-off', '4 KiB random write, 32 in flight: persistent grants on / off'],
    ['persistent-on-vs-off/1m-seqwrite', 'page-cache seqwrite 1M QD4', 'default', 'persistent-off', '1 MiB sequential write: persistent grants on / off'],
    ['indirect-on-vs-off/64k-seqread', 'page-cache seqread 64K QD8', 'default', 'indirect-off', '64 KiB sequential read: indirect descriptors on / off'],
    ['indirect-on-vs-off/1m-seqread', sr1m, 'default', 'indirect-off', '1 MiB sequential read: indirect descriptors on / off'],
    ['indirect-on-vs-off/64k-seqwrite', 'page-cache seqwrite 64K QD8', 'default', 'indirect-off', '64 KiB sequential write: indirect descriptors on / off'],
    ['indirect-on-vs-off/1m-seqwrite', 'page-cache seqwrite 1M QD4', 'default', 'indirect-off', '1 MiB sequential write: indirect descriptors on / off'],
    ['ring-16-vs-1-page/4k-randread-qd32', rr32, 'default', 'ring-1page', '4 KiB random read, 32 in flight: 16-page rings / 1-page rings'],
    ['ring-16-vs-1-page/1m-seqread', sr1m, 'default', 'ring-1page', '1 MiB sequential read: 16-page rings / 1-page rings'],
    ['ring-16-vs-1-page/4k-randwrite-qd32', 'page-cache randwrite 4K QD32', 'default', 'ring-1page', '4 KiB random write, 32 in flight: 16-page rings / 1-page rings'],
    ['queues-2-vs-1/4k-randread-qd32', rr32, 'queues-2', 'queues-1', '4 KiB random read, 32 in flight, 2 vCPUs: 2 queues / 1 queue'],
    ['queues-2-vs-1/1m-seqread', sr1m, 'queues-2', 'queues-1', '1 MiB sequential read, 2 vCPUs: 2 queues / 1 queue'],
    ['odirect-async-vs-sync/4k-randread-qd32', 'o-direct randread 4K QD32', 'odirect-bounce-async', 'odirect-bounce', 'O_DIRECT 4 KiB random read, 32 in flight: asynchronous / synchronous DirectFileStore'],
  ];
  for (const [id, label, a, b, description] of refs) {
    add({ id, kind: 'reference', label, num: ['pvio', a], den: ['pvio', b], threshold: null, comparison: null, description });
  }
  for (const v of ['odirect-bounce', 'odirect-bounce-async']) {
    for (const base of ['readSync', 'FileHandle'] as const) {
      add({ id: `pvio-${v}-vs-${base}/4k-randread-qd32`, kind: 'reference', label: 'o-direct randread 4K QD32', num: ['pvio', v], den: [base], threshold: null, comparison: null,
        description: `O_DIRECT 4 KiB random read, 32 in flight: pvio ${v} / ${base} (O_DIRECT, aligned bounce)` });
    }
  }
  add({ id: 'FileHandle-vs-readSync/4k-randread-qd32', kind: 'reference', label: rr32, num: ['FileHandle'], den: ['readSync'], threshold: null, comparison: null,
    description: '4 KiB random read, page cache: FileHandle.read at 32 in flight / readSync' });
  return out;
}

// ---------------------------------------------------------------------------
// Formatting

const fmt = formatSig;

/** The rows as a Markdown table. */
export function markdownRows(rows: readonly BlkRow[]): string {
  const head = ['impl', 'variant', 'mode', 'pattern', 'bs', 'QD', 'IOPS', 'MB/s', 'p50 µs', 'p99 µs', 'hc/op', 'notif/op', 'vs readSync', 'vs FileHandle'];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of rows) {
    lines.push(`| ${[r.impl, r.variant, r.fileMode, r.pattern, bsLabel(r.blockSize), r.inFlight,
      r.error && r.iops === null ? `failed: ${r.error.replace(/\|/g, '/')}` : fmt(r.iops), fmt(r.mbPerSec), fmt(r.p50LatencyUs), fmt(r.p99LatencyUs),
      fmt(r.hypercallsPerOp), fmt(r.notificationsPerOp), fmt(r.ratioVsReadSync), fmt(r.ratioVsFileHandle)].join(' | ')} |`);
  }
  return lines.join('\n');
}

function markdownRatioTable(ratios: readonly RatioResult[]): string {
  const lines = ['| kind | id | target | value | bound | met | per round |', '|---|---|---|---|---|---|---|'];
  for (const r of ratios) {
    const met = r.met === null ? (r.note ? `– (${r.note})` : '–') : r.met ? 'yes' : '**no**';
    lines.push(`| ${r.kind} | ${r.id} | ${r.description} | ${fmt(r.value)} | ${r.comparison ?? ''} ${fmt(r.threshold)} | ${met} | ${r.perRound.map((x) => fmt(x)).join(' ')} |`);
  }
  return lines.join('\n');
}

/**
 * Chart lines: 4 KiB random rows measured at more than one in-flight count (page
 * cache: reads and writes; O_DIRECT: reads), IOPS against requests in flight; pvio
 * solid, the rest dashed. Single-cell variants and the NBD rows are in the table
 * (a run with no line of two points, `--quick`, charts single points).
 */
function chartSeries(rows: readonly BlkRow[]): ChartSeries[] {
  const lines = new Map<string, { dashed: boolean; pts: Map<number, number> }>();
  for (const r of rows) {
    if (r.blockSize !== 4 * KiB || r.iops === null || r.iops <= 0) continue;
    if (r.pattern !== 'randread' && !(r.pattern === 'randwrite' && r.fileMode === 'page-cache')) continue;
    const label = r.impl === 'pvio' ? `pvio ${r.variant} ${r.pattern}` : `${r.impl} ${r.pattern}${r.fileMode === 'o-direct' ? ' O_DIRECT' : ''}`;
    let l = lines.get(label);
    if (!l) lines.set(label, l = { dashed: r.impl !== 'pvio', pts: new Map() });
    l.pts.set(r.inFlight, Math.max(l.pts.get(r.inFlight) ?? 0, r.iops));
  }
  const multi = [...lines].filter(([, l]) => l.pts.size > 1);
  return (multi.length > 0 ? multi : [...lines]) // a quick run has one point per line
    .map(([label, l]) => ({ label, dashed: l.dashed, points: [...l.pts].sort((a, b) => a[0] - b[0]).map(([x, y]) => ({ x, y })) }))
    .sort((a, b) => Number(a.dashed) - Number(b.dashed) || a.label.localeCompare(b.label));
}

/** Skipped members grouped by reason, one Markdown line each. */
function skippedLines(skipped: BlkReport['skipped']): string[] {
  const byReason = new Map<string, string[]>();
  for (const s of skipped) {
    if (!byReason.has(s.reason)) byReason.set(s.reason, []);
    byReason.get(s.reason)!.push(`${s.impl} ${s.variant} (${s.group})`);
  }
  return [...byReason].map(([reason, who]) => `- ${who.join(', ')}: ${reason}`);
}

// ---------------------------------------------------------------------------
// The run

/**
 * Runs `bench blk` with the arguments after `bench blk`; prints the Markdown tables
 * on stdout and progress on stderr.
 * @returns the exit code: 0; 1 when a member failed or an output could not be
 *   written; 2 for bad arguments. Skipped members (a missing tool, direct=1 not
 *   wired) do not fail the run.
 */
export async function benchBlk(argv: string[]): Promise<number> {
  const o = benchOptionsOrExit(argv, parseBenchBlkArgs, BENCH_BLK_USAGE, 'blk');
  if (typeof o === 'number') return o;
  const t0 = performance.now();
  const log = (line: string) => process.stderr.write(`bench blk: ${line}\n`);
  const machine = machineInfo();
  const notes: string[] = [];
  const note = (s: string) => {
    notes.push(s);
    log(s);
  };
  const ownDir = o.file ? null : mkdtempSync(join(tmpdir(), 'pvio-bench-blk-'));
  const file0 = resolve(o.file ?? join(ownDir!, 'disk.img'));
  const sizeBytes = o.sizeMiB * MiB;
  log(`writing ${o.sizeMiB} MiB to ${file0} and reading it once (page cache)`);
  prepareFile(file0, sizeBytes);
  const file = realpathSync(file0);
  const tokens = SpinTokens.createBuffer(BENCH_SPIN_TOKENS);
  const timeoutMs = 30_000;
  const plan = buildPlan(o).filter((g) => o.only === null || g.label.includes(o.only));
  const plannedLabels = new Set(plan.map((g) => g.label));
  const outcomes: Outcome[] = [];
  const skippedGroups: string[] = [];
  let pvio: PvioDriver | null = null;
  const pvioNegotiated: Record<string, unknown> = {};
  const base = new Baselines(file, timeoutMs);
  let nbd: NbdSuite | null = null;
  let exit = 0;
  log(`${plan.length} groups, ${o.rounds} rounds, ${o.warmupMs} ms warm-up + ${o.measureMs} ms measured per window`);

  try {
    let phase: Group['phase'] | null = null;
    let nbdSkip: string | null = null;
    for (let gi = 0; gi < plan.length; gi++) {
      const g = plan[gi];
      if (performance.now() - t0 > o.budgetS * 1000) {
        skippedGroups.push(g.label);
        continue;
      }
      // Phase changes: the machine runs the page-cache and O_DIRECT phases; the NBD
      // phase runs with no machine in this process (its servers are other processes).
      if (g.phase !== phase) {
        if (pvio && g.phase !== phase) {
          await pvio.shutdown();
          pvio = null;
          const back = await restoreSpinTokens(tokens, BENCH_SPIN_TOKENS);
          if (back > 0) note(`${back} spin token(s) were not returned by the ${phase} phase; returned`);
        }
        if (g.phase === 'o-direct') {
          // Everything written so far reaches the file before O_DIRECT reads it.
          const fd = openSync(file, 'r+');
          fsyncSync(fd);
          closeSync(fd);
        }
        if (g.phase === 'nbd') {
          await base.close();
          nbd = new NbdSuite(file, ownDir ?? dirname(file), log);
          nbdSkip = await nbd.start();
          if (nbdSkip) note(`NBD rows ${nbdSkip}`);
        } else {
          if (nbd) {
            await nbd.close();
            nbd = null;
          }
          pvio = new PvioDriver(file, tokens, log, timeoutMs, pvioNegotiated);
          await pvio.boot();
          const fds = await base.open(g.phase);
          pvio.excludeFds = new Set(fds);
        }
        phase = g.phase;
      }
      const outs = g.members.map((member): Outcome => ({ member, group: g, runs: [], error: null, skipped: null }));
      outcomes.push(...outs);
      if (g.phase === 'nbd' && nbdSkip) {
        for (const x of outs) x.skipped = nbdSkip;
        continue;
      }
      // A write group with several pvio variants swaps the writable guest each round;
      // a read group keeps one read-only guest per variant.
      for (let round = 0; round < o.rounds; round++) {
        for (const x of outs) {
          if (x.error || x.skipped) continue;
          const seeds: [number, number] = [(gi * 7919 + round * 104_729 + 15_485_863) >>> 0, (gi * 7919 + round * 104_729 + 1) >>> 0];
          const what = `${x.member.impl} ${x.member.variant} ${cellLabel(g.cell)}`;
          try {
            let run: Run;
            if (x.member.impl === 'pvio') {
              const v = VARIANTS.find((y) => y.name === x.member.variant)!;
              run = await pvio!.run(v, g.cell, round, o.warmupMs, o.measureMs, seeds, o.quick ? 150 : 400);
            } else if (x.member.impl === 'readSync' || x.member.impl === 'FileHandle') {
              run = await base.run(x.member.impl, g.cell, round, o.warmupMs, o.measureMs, seeds);
            } else {
              const f = await nbd!.run(x.member.impl, {
                pattern: g.cell.pattern, blockSize: g.cell.blockSize, inFlight: g.cell.inFlight,
                warmupMs: Math.max(200, o.warmupMs), measureMs: Math.max(300, 3 * o.measureMs), seed: seeds[1] || 1, sizeBytes,
              });
              if (f.error) throw new Error(`fio reported error ${f.error}`);
              run = { round, ops: f.ops, bytes: f.bytes, elapsedMs: f.elapsedMs, latUs: new Float64Array(0), hypercalls: null, notifications: null, counters: null, p50Us: f.p50LatencyUs, p99Us: f.p99LatencyUs };
            }
            if (!(run.elapsedMs > 0 && run.ops > 0)) throw new Error(`empty window (ops=${run.ops}, elapsed=${run.elapsedMs} ms)`);
            x.runs.push(run);
            const iops = iopsOf(run)!;
            log(`[${gi + 1}/${plan.length} r${round + 1} +${((performance.now() - t0) / 1000).toFixed(0)}s] ${what}: ${fmt(iops)} IOPS, ${fmt(mbOf(run))} MB/s` +
              (run.latUs.length > 0 ? `, p50 ${fmt(percentile(run.latUs, 50))} µs` : ''));
          } catch (e) {
            if (e instanceof SkipError) {
              x.skipped = e.message;
              log(`[${gi + 1}/${plan.length}] ${what}: ${e.message}`);
            } else {
              x.error = (e as Error)?.message ?? String(e);
              log(`[${gi + 1}/${plan.length} r${round + 1}] ${what}: FAILED ${x.error}`);
            }
          }
        }
      }
    }
  } finally {
    await pvio?.shutdown().catch((e) => note(`machine shutdown: ${(e as Error).message}`));
    await base.close();
    await nbd?.close();
  }
  if (skippedGroups.length > 0) note(`time budget (${o.budgetS} s) ran out: skipped ${skippedGroups.join(', ')}`);

  const measured = outcomes.filter((x) => x.runs.length > 0 || x.error);
  const rows = measured.map((x) => summarize(x, outcomes, o.rounds));
  if (rows.some((r) => r.error)) exit = 1;
  const skipped = outcomes.filter((x) => x.skipped && x.runs.length === 0)
    .map((x) => ({ group: x.group.label, impl: x.member.impl, variant: x.member.variant, reason: x.skipped! }));
  const ratios = computeRatios(outcomes, o.rounds, plannedLabels);
  const durationMs = performance.now() - t0;
  const report: BlkReport = {
    machine,
    config: {
      command: 'pvio bench blk', argv, quick: o.quick, rounds: o.rounds, warmupMs: o.warmupMs, measureMs: o.measureMs,
      budgetS: o.budgetS, file, fileBytes: sizeBytes, groups: plan.map((g) => ({ label: g.label, members: g.members.map((m) => `${m.impl} ${m.variant}`) })),
      variants: Object.fromEntries(VARIANTS.map((v) => [v.name, { diskSpecKeys: v.spec.replace(/,$/, '') || '(none)', vcpus: v.vcpus, asyncStore: v.asyncStore ?? false, description: v.description }])),
      negotiated: pvioNegotiated,
      baselines: {
        readSync: 'fs.readSync/fs.writeSync in a loop in one worker thread (bench/workers/blk-baseline-worker.ts), one request at a time',
        FileHandle: 'FileHandle.read/write (fs/promises) with the cell\'s in-flight count outstanding, same worker; libuv thread pool',
        oDirect: 'O_DIRECT baselines read/write through an aligned bounce buffer (alignedDirectBuffer) and copy to/from the caller\'s buffer',
        uvThreadpoolSize: process.env.UV_THREADPOOL_SIZE ?? '4 (default)',
      },
      nbd: { pvio: 'node toolstack/bin/pvio.mjs up --disk FILE --nbd-socket SOCK', qemu: 'qemu-nbd -f raw --cache=writeback --aio=threads -t -e 8 -k SOCK FILE',
        fio: 'fio --ioengine=nbd --uri=nbd+unix:///?socket=SOCK --time_based --ramp_time --runtime --lat_percentiles=1', windowMs: { warmup: Math.max(200, o.warmupMs), measure: Math.max(300, 3 * o.measureMs) } },
      spinTokens: BENCH_SPIN_TOKENS,
      units: { iops: 'completed requests per second', mbPerSec: '10^6 bytes per second', latency: 'µs, issue → completion, per request' },
    },
    rows, ratios, skipped, durationMs, notes,
  };

  const out = [
    '## pvio bench blk', '',
    `${machine.cpus} CPUs (${machine.cpuModel}), Node ${machine.node}, ${machine.platform} ${machine.kernel}, loadavg ${machine.loadavg.join(' ')}. ` +
    `File ${file} (${o.sizeMiB} MiB). ${o.rounds} rounds of ${o.warmupMs} ms warm-up + ${o.measureMs} ms measured per member; ` +
    'ratios are medians of per-round ratios within a group. hc/op: hypercalls of all domains per op; notif/op: blkfront + blkback notifications per op.', '',
    markdownRows(rows), '', '### Goals and comparisons', '', markdownRatioTable(ratios), '',
    ...skippedLines(skipped),
    ...notes.map((n) => `- note: ${n}`),
    `- duration: ${(durationMs / 1000).toFixed(1)} s`, '',
  ];
  process.stdout.write(out.join('\n'));
  try {
    if (o.json) writeJsonReport(o.json, report);
    if (o.svg) {
      writeFileSync(o.svg, svgChart(chartSeries(rows), `pvio bench blk: 4 KiB random I/O, IOPS vs requests in flight (Node ${machine.node}, ${machine.cpus} CPUs)`,
        'solid: pvio variants; dashed: readSync (one at a time) and FileHandle; page cache unless marked O_DIRECT; the other rows are in the table'));
    }
  } catch (e) {
    process.stderr.write(`pvio bench blk: cannot write output: ${(e as Error).message}\n`);
    exit = 1;
  }
  if (ownDir) rmSync(ownDir, { recursive: true, force: true });
  return exit;
}

// `npx tsx bench/blk.ts [options]` runs it directly.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  benchBlk(process.argv.slice(2)).then((code) => { process.exitCode = code; });
}
