/**
 * The generic half of `pvio bench ring`: what a benchmark case is, how cases are
 * scheduled (interleaved rounds with a cross-core probe before each pair), the
 * statistics (median, p99, medians of pairwise ratios), and the three outputs
 * (a Markdown table, a JSON report, an SVG chart).
 *
 * Nothing in here knows about a particular implementation. Each implementation
 * (pvio's own ring in `bench/pvio-ring.ts`, the hand-written floor ring in
 * `bench/minimal-ring.ts`, MessagePort, ringbuf.js) supplies {@link Case} objects;
 * `bench/ring.ts` builds the sweep, runs it with {@link runSchedule} and writes the
 * report.
 *
 * Units, everywhere in this directory: durations in **ns** unless a name ends in
 * `Ms` (milliseconds) or `Us` (microseconds); rates in **operations per second**.
 * One operation ("op") is one request that got its response (round trip), or one
 * message delivered (one way).
 *
 * Threads. The main thread only coordinates: it never spins. A worker may spin
 * only while it holds one of the process-wide spin tokens (`hypervisor/spin.ts`),
 * over the single buffer the bench creates with `SpinTokens.createBuffer(2)` and
 * hands to every case, so at most two threads spin at any time on this 2-core box.
 */
import { Worker, type Transferable } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import os from 'node:os';
import { TimeoutError } from '../rings/errors.ts';
import { ringSize } from '../rings/ring.ts';
import { BLKIF_REQUEST, BLKIF_RESPONSE, BLKIF_RING_ENTRY_SIZE } from '../rings/blkif.ts';
import { SpinTokens } from '../hypervisor/spin.ts';

// ---------------------------------------------------------------------------
// Vocabulary

/** The implementations the bench compares. */
export type Impl = 'pvio' | 'minimal-ring' | 'messageport' | 'ringbuf.js';
/** `round-trip`: every request gets a response. `one-way`: messages only flow forward. */
export type Pattern = 'one-way' | 'round-trip';
/**
 * How an idle end waits. `poll`: spins for the whole run (holding a spin token).
 * `block`: arms the event index and sleeps in `Atomics.wait` at once.
 * `adaptive`: spins up to ~2000 loads (~10 µs, only with a spin token), then blocks.
 */
export type WaitMode = 'poll' | 'block' | 'adaptive';

/** Every wait mode, in the order the bench runs them. */
export const WAIT_MODES: readonly WaitMode[] = Object.freeze(['poll', 'block', 'adaptive']);
/** Bytes of one request on the wire/ring: `sizeof(struct blkif_request)` (x86_64), 112. */
export const REQUEST_BYTES = BLKIF_REQUEST.size;
/** Bytes of one response: `sizeof(struct blkif_response)`, 16. */
export const RESPONSE_BYTES = BLKIF_RESPONSE.size;
/** Bytes per ring page (one grant). */
export const PAGE_BYTES = 4096;
/**
 * RTT sampling stride: a request whose sequence number is a multiple of this gets a
 * timestamp (two `performance.now()` calls, ~53 ns each), so timing adds < 2 ns/op.
 */
export const RTT_SAMPLE_EVERY = 64;
/** At most this many RTT samples are kept per run (the rest are dropped). */
export const MAX_RTT_SAMPLES = 1 << 18;
/** Spin tokens the bench creates: one per core of this 2-core machine. */
export const BENCH_SPIN_TOKENS = 2;

/**
 * Entries of a blkif ring of `pages` 4 KiB pages: 1 → 32, 4 → 128, 16 → 512.
 * @see rings/ring.ts ringSize
 */
export function ringEntriesFor(pages: number): number {
  return ringSize(pages * PAGE_BYTES, BLKIF_RING_ENTRY_SIZE);
}

/** What identifies a case in the table, the JSON and the ratios. */
export interface CaseParams {
  readonly impl: Impl;
  readonly pattern: Pattern;
  /** Shared ring size in 4 KiB pages; null where there is no Xen-style ring (MessagePort, ringbuf.js). */
  readonly ringPages: number | null;
  /** Ring entries ({@link ringEntriesFor}); null where there is no Xen-style ring. */
  readonly ringEntries: number | null;
  /** Most requests (or, one way, undelivered messages) outstanding at once. */
  readonly inFlight: number;
  /** Requests written per producer-index publish (`req_prod` store); null where it does not apply. */
  readonly batch: number | null;
  /** Wait mode of both ends; null where the implementation has only one (MessagePort, ringbuf.js busy-poll). */
  readonly waitMode: WaitMode | null;
}

/** Timing asked of one {@link Case.run}. */
export interface RunOptions {
  /** Traffic before the measured window, ms (not counted). */
  readonly warmupMs: number;
  /** Length of the measured window, ms. */
  readonly measureMs: number;
  /**
   * Hard limit for the whole run, ms: by then `run` must have settled (rejected if
   * need be) and no thread of the case may still be spinning or waiting.
   */
  readonly timeoutMs: number;
}

/**
 * Raw counts of one measured window, as a case reports them. The harness derives
 * every figure of the table from these; a case never computes rates itself.
 */
export interface Measurement {
  /** Operations completed in the window: responses consumed (round trip) or messages consumed (one way). */
  readonly ops: number;
  /** Length of the window as the driving thread measured it, ns. */
  readonly elapsedNs: number;
  /**
   * Round-trip times of the sampled requests completed in the window, ns: request
   * produced → its response consumed, timed on the same thread. Empty one way.
   */
  readonly rttNs: ArrayLike<number>;
  /**
   * Event-channel notifications sent by both ends in the window (each
   * `Atomics.notify` a push asked for by the event-index rule); null where the
   * implementation has no notifications.
   */
  readonly notifications: number | null;
  /** Returns from `Atomics.wait` by a notification ('ok'), both ends, in the window; null where it does not apply. */
  readonly wakeups: number | null;
  /** Process-wide CPU time (`process.cpuUsage()` user + system delta) over the window, µs; null if not measured. */
  readonly cpuUs: number | null;
}

/**
 * One benchmark case: an implementation at one configuration. The harness calls
 * {@link run} once per round (rounds of different cases interleave: A B A B ...),
 * then {@link close} once after the last round of its group.
 *
 * Contract for implementers:
 * - `run` may start workers on its first call and reuse them in later rounds; it
 *   resolves once every thread of the case is idle again (blocked or parked, not
 *   spinning, spin tokens released).
 * - Every thread that spins holds a spin token from the buffer it was given
 *   (`new SpinTokens(spinTokens)`); the main thread never spins.
 * - `run` settles within `opts.timeoutMs`, rejecting on a stuck peer; every wait
 *   in a worker has a deadline.
 * - `close` terminates the case's workers; it must not throw.
 */
export interface Case extends CaseParams {
  /** Runs warm-up + one measured window and returns its raw counts; rejects on failure or past `opts.timeoutMs`. */
  run(opts: RunOptions): Promise<Measurement>;
  /** Terminates the case's own workers (called once, after the last round of its group). Never throws. */
  close?(): Promise<void>;
}

/**
 * What `bench/ring.ts` hands to a Xen-style ring case factory (pvio's
 * `pvioRingCase`). The `pattern` is always `round-trip` in the sweep.
 */
export interface RingCaseConfig {
  readonly pattern: Pattern;
  /** Ring size in 4 KiB pages: 1, 4 or 16 (32, 128, 512 entries of 112 bytes). */
  readonly ringPages: number;
  /** Requests outstanding (1..entries). */
  readonly inFlight: number;
  /** Requests per `req_prod` publish; the backend also publishes responses every `batch` (1..inFlight). */
  readonly batch: number;
  readonly waitMode: WaitMode;
  /** The process-wide spin-token buffer (`SpinTokens.createBuffer(2)`); pass it to every worker. */
  readonly spinTokens: SharedArrayBuffer;
}

/** A factory of ring cases, e.g. `pvioRingCase` from `bench/pvio-ring.ts`. */
export type RingCaseFactory = (config: RingCaseConfig) => Case;

/** Options of an idle-CPU probe. */
export interface IdleCpuOptions {
  /** Ring size in pages of the ring pair under test. */
  readonly ringPages: number;
  /** How long the pair sits with no traffic while CPU time is measured, ms (1000 in the full run). */
  readonly idleMs: number;
  /** Hard limit for the whole probe, ms. */
  readonly timeoutMs: number;
  /** The process-wide spin-token buffer. */
  readonly spinTokens: SharedArrayBuffer;
}

/** Result of an idle-CPU probe: a connected ring pair in adaptive mode with no traffic. */
export interface IdleCpuMeasurement {
  /** Length of the idle window, ms. */
  readonly idleMs: number;
  /** Process-wide CPU time (`process.cpuUsage()` delta) over the idle window, µs. */
  readonly cpuUs: number;
  /** `cpuUs / (idleMs * 1000)`: fraction of one core used while idle (goal: < 0.05). */
  readonly coreFraction: number;
  /** Wake-ups by notification during the idle window (timer slices not counted); null if unknown. */
  readonly wakeups: number | null;
}

/** An idle-CPU probe, e.g. `pvioIdleCpu` from `bench/pvio-ring.ts`. */
export type IdleCpuProbe = (opts: IdleCpuOptions) => Promise<IdleCpuMeasurement>;

/**
 * What `bench/ring.ts` expects `bench/pvio-ring.ts` to export. It is imported
 * dynamically, in one place (`loadPvioModule` in `bench/ring.ts`), so the bench
 * still runs the baselines while the file does not exist.
 */
export interface PvioRingModule {
  /** Builds one pvio ring case (round trip over pvio's FrontRing/BackRing and event channels). */
  readonly pvioRingCase: RingCaseFactory;
  /** Measures an idle pvio ring pair in adaptive mode (the "idle < 5% of a core" goal). */
  readonly pvioIdleCpu?: IdleCpuProbe;
  /**
   * Terminates whatever the module shares between cases (e.g. a worker pool reused by
   * every `pvioRingCase`); called once, after the last case and the idle probe, even
   * on failure. Never throws.
   */
  readonly pvioClose?: () => Promise<void>;
}

/** Stable key of a case: `impl|pattern|pages|inFlight|batch|waitMode` (`-` for null). */
export function caseKey(p: CaseParams): string {
  const n = (v: number | string | null) => (v === null ? '-' : String(v));
  return `${p.impl}|${p.pattern}|p${n(p.ringPages)}|f${p.inFlight}|b${n(p.batch)}|${n(p.waitMode)}`;
}

/** Copies the identifying fields of a case (drops methods). */
export function paramsOf(p: CaseParams): CaseParams {
  return {
    impl: p.impl, pattern: p.pattern, ringPages: p.ringPages, ringEntries: p.ringEntries,
    inFlight: p.inFlight, batch: p.batch, waitMode: p.waitMode,
  };
}

// ---------------------------------------------------------------------------
// Statistics

function finite(values: ArrayLike<number>): number[] {
  const out: number[] = [];
  for (let i = 0; i < values.length; i++) if (Number.isFinite(values[i])) out.push(values[i]);
  return out;
}

/** Median of the finite values (mean of the middle two for an even count); null when there are none. */
export function median(values: ArrayLike<number>): number | null {
  const v = finite(values).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/**
 * Nearest-rank percentile of the finite values: the smallest value with at least
 * `p`% of the values at or below it. `percentile(x, 50)` is the lower median.
 * @param p in (0, 100].
 * @returns null when there are no finite values.
 */
export function percentile(values: ArrayLike<number>, p: number): number | null {
  if (!(p > 0 && p <= 100)) throw new RangeError(`percentile: p=${p} is not in (0, 100]`);
  const v = finite(values).sort((a, b) => a - b);
  if (v.length === 0) return null;
  return v[Math.min(v.length, Math.ceil((p / 100) * v.length)) - 1];
}

/**
 * Ratios `num[i] / den[i]` of the pairs where both are finite numbers and `den[i]` is
 * neither 0 nor null (one pair = the two cases' runs in the same round).
 */
export function pairwiseRatios(num: ReadonlyArray<number | null>, den: ReadonlyArray<number | null>): number[] {
  const out: number[] = [];
  for (let i = 0; i < Math.min(num.length, den.length); i++) {
    const a = num[i];
    const b = den[i];
    if (a !== null && b !== null && Number.isFinite(a) && Number.isFinite(b) && b !== 0) out.push(a / b);
  }
  return out;
}

/** Median of {@link pairwiseRatios}: the ratio the bench reports. null when no pair is complete. */
export function pairwiseRatioMedian(num: ReadonlyArray<number | null>, den: ReadonlyArray<number | null>): number | null {
  return median(pairwiseRatios(num, den));
}

/** Operations per second of one measurement; null when nothing was timed. */
export function opsPerSecOf(m: Measurement): number | null {
  return m.elapsedNs > 0 ? m.ops / (m.elapsedNs / 1e9) : null;
}

// ---------------------------------------------------------------------------
// Scheduling

/**
 * Cases that run together. A round runs every pair in order, and before each pair
 * a cross-core probe; rounds repeat, so the cases of a pair interleave A B A B ...
 * and a ratio between two cases of one group is the median of per-round ratios.
 */
export interface CaseGroup {
  readonly label: string;
  /** Each inner array runs back to back after one probe (usually [pvio, its baseline]). */
  readonly pairs: ReadonlyArray<ReadonlyArray<Case>>;
}

/** One round of one case. */
export interface RoundRun {
  /** Round number, from 0. Runs of one group with the same round form a pair. */
  readonly round: number;
  /** Median cross-core RTT of the probe run just before this case's pair, ns; null if the probe failed. */
  readonly probeRttNs: number | null;
  /** The raw counts; null when the run failed. */
  readonly measurement: Measurement | null;
  /** Why the run failed, when it did. */
  readonly error?: string;
}

/** Every round of one case. */
export interface CaseOutcome {
  readonly params: CaseParams;
  readonly key: string;
  readonly group: string;
  readonly runs: RoundRun[];
  /** First failure; later rounds of a failed case are skipped. */
  error: string | null;
}

/** How {@link runSchedule} runs. */
export interface ScheduleOptions {
  /** Rounds per group (≥ 1; 3 gives a meaningful median of pairwise ratios). */
  readonly rounds: number;
  readonly run: RunOptions;
  /** Cross-core probe: median RTT in ns, or null when it could not run. */
  readonly probe: () => Promise<number | null>;
  /** Called after every run (e.g. a spin-token audit). */
  readonly afterRun?: (c: Case, error: string | null) => Promise<void> | void;
  /** Progress lines (to stderr). */
  readonly log?: (line: string) => void;
  /** Stop starting new groups once this many ms have passed since `startedAt`. */
  readonly budgetMs?: number;
  /** `performance.now()` at the start of the whole bench (for the budget). */
  readonly startedAt?: number;
}

/** What {@link runSchedule} returns. */
export interface ScheduleResult {
  /** Outcomes in the order the cases first ran. */
  readonly outcomes: CaseOutcome[];
  /** Labels of groups not run because the time budget ran out. */
  readonly skippedGroups: string[];
}

function errorText(e: unknown): string {
  return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
}

/** Why a measurement cannot be used (a bug in its case), or null when it is sound. */
export function invalidMeasurement(m: Measurement): string | null {
  if (!m || typeof m !== 'object') return 'not an object';
  if (!(Number.isFinite(m.elapsedNs) && m.elapsedNs > 0)) return `elapsedNs=${m.elapsedNs}`;
  if (!(Number.isFinite(m.ops) && m.ops >= 0)) return `ops=${m.ops}`;
  if (!m.rttNs || typeof m.rttNs.length !== 'number') return 'rttNs is not an array';
  for (const k of ['notifications', 'wakeups', 'cpuUs'] as const) {
    const v = m[k];
    if (v !== null && !(Number.isFinite(v) && v >= 0)) return `${k}=${v}`;
  }
  return null;
}

/**
 * Runs the groups: for each group, `rounds` rounds of (probe, pair cases...) for
 * each pair; then closes the group's cases. A case whose run throws is recorded
 * with the error and skipped in later rounds; the sweep goes on.
 */
export async function runSchedule(groups: readonly CaseGroup[], opts: ScheduleOptions): Promise<ScheduleResult> {
  const outcomes: CaseOutcome[] = [];
  const byCase = new Map<Case, CaseOutcome>();
  const skippedGroups: string[] = [];
  const log = opts.log ?? (() => {});
  const t0 = opts.startedAt ?? performance.now();
  for (let gi = 0; gi < groups.length; gi++) {
    const g = groups[gi];
    if (opts.budgetMs !== undefined && performance.now() - t0 > opts.budgetMs) {
      skippedGroups.push(g.label);
      continue;
    }
    for (const pair of g.pairs) {
      for (const c of pair) {
        if (byCase.has(c)) continue;
        const o: CaseOutcome = { params: paramsOf(c), key: caseKey(c), group: g.label, runs: [], error: null };
        byCase.set(c, o);
        outcomes.push(o);
      }
    }
    for (let round = 0; round < opts.rounds; round++) {
      for (const pair of g.pairs) {
        const live = pair.filter((c) => byCase.get(c)!.error === null);
        if (live.length === 0) continue;
        const probeRttNs = await opts.probe().catch(() => null);
        for (const c of live) {
          const o = byCase.get(c)!;
          let err: string | null = null;
          try {
            const measurement = await c.run(opts.run);
            const bad = invalidMeasurement(measurement);
            if (bad) throw new Error(`invalid measurement from the case: ${bad}`);
            o.runs.push({ round, probeRttNs, measurement });
            const r = opsPerSecOf(measurement);
            log(`[${gi + 1}/${groups.length} r${round + 1}] ${describeCase(c)}: ${r === null ? '-' : formatRate(r)} ops/s` +
              ` (probe ${probeRttNs === null ? '-' : formatNs(probeRttNs)})`);
          } catch (e) {
            err = errorText(e);
            o.runs.push({ round, probeRttNs, measurement: null, error: err });
            o.error = err;
            log(`[${gi + 1}/${groups.length} r${round + 1}] ${describeCase(c)}: FAILED ${err}`);
          }
          await opts.afterRun?.(c, err);
        }
      }
    }
    for (const pair of g.pairs) {
      for (const c of pair) await c.close?.().catch(() => {});
    }
  }
  return { outcomes, skippedGroups };
}

/** One-line description of a case, e.g. `minimal-ring round-trip 1p f32 b8 adaptive`. */
export function describeCase(p: CaseParams): string {
  return [p.impl, p.pattern, p.ringPages === null ? null : `${p.ringPages}p`, `f${p.inFlight}`,
    p.batch === null ? null : `b${p.batch}`, p.waitMode].filter((x) => x !== null).join(' ');
}

// ---------------------------------------------------------------------------
// Results

/** One row of the report: a case's figures over all its rounds (the JSON `results[]` entry). */
export interface CaseResult extends CaseParams {
  /** Median over rounds of ops / window, ops/s. */
  readonly opsPerSec: number | null;
  /** `1e9 / opsPerSec`, ns per op. */
  readonly nsPerOp: number | null;
  /** Median RTT of all sampled requests of all rounds, ns (null one way). */
  readonly p50RttNs: number | null;
  /** 99th percentile (nearest rank) of the same samples, ns. */
  readonly p99RttNs: number | null;
  /** Notifications / ops, all rounds pooled. */
  readonly notificationsPerOp: number | null;
  /** Wake-ups by notification / ops, all rounds pooled. */
  readonly wakeupsPerOp: number | null;
  /** Process CPU ns / ops, all rounds pooled. */
  readonly cpuNsPerOp: number | null;
  /** Rounds that produced a measurement. */
  readonly rounds: number;
  /** Median of the probes run before this case's pairs, ns (≈0.1–0.2 µs or ≈1 µs: the machine's regime). */
  readonly probeRttNs: number | null;
  /** Number of RTT samples behind p50/p99. */
  readonly rttSamples: number;
  /** Failure text, when a round failed. */
  readonly error?: string;
}

/** Reduces a case's rounds to its report row. */
export function summarize(o: CaseOutcome): CaseResult {
  const ms = o.runs.map((r) => r.measurement).filter((m): m is Measurement => m !== null);
  const rates = ms.map(opsPerSecOf).filter((r): r is number => r !== null);
  const opsPerSec = median(rates);
  const samples: number[] = [];
  for (const m of ms) for (let i = 0; i < m.rttNs.length; i++) samples.push(m.rttNs[i]);
  const ops = ms.reduce((s, m) => s + m.ops, 0);
  const per = (pick: (m: Measurement) => number | null): number | null => {
    if (ms.length === 0 || ops === 0) return null;
    let sum = 0;
    for (const m of ms) {
      const v = pick(m);
      if (v === null) return null;
      sum += v;
    }
    return sum / ops;
  };
  const cpu = per((m) => m.cpuUs);
  return {
    ...o.params,
    opsPerSec,
    nsPerOp: opsPerSec && opsPerSec > 0 ? 1e9 / opsPerSec : null,
    p50RttNs: median(samples),
    p99RttNs: percentile(samples, 99),
    notificationsPerOp: per((m) => m.notifications),
    wakeupsPerOp: per((m) => m.wakeups),
    cpuNsPerOp: cpu === null ? null : cpu * 1000,
    rounds: ms.length,
    probeRttNs: median(o.runs.map((r) => r.probeRttNs).filter((x): x is number => x !== null)),
    rttSamples: samples.length,
    ...(o.error ? { error: o.error } : {}),
  };
}

/** A per-round figure of a case: ops/s or the round's median RTT (ns). */
export type RoundMetric = 'opsPerSec' | 'p50RttNs';

/**
 * The per-round values of a metric, indexed by round (null where the round failed
 * or the metric does not apply), for {@link pairwiseRatios}.
 */
export function roundValues(o: CaseOutcome, metric: RoundMetric, rounds: number): Array<number | null> {
  const out: Array<number | null> = new Array(rounds).fill(null);
  for (const r of o.runs) {
    if (!r.measurement || r.round >= rounds) continue;
    out[r.round] = metric === 'opsPerSec' ? opsPerSecOf(r.measurement) : median(r.measurement.rttNs);
  }
  return out;
}

/** One entry of the report's `ratios` section: a goal (met or not) or a reference comparison. */
export interface RatioResult {
  /** Stable id, e.g. `pvio-vs-minimal-throughput/p1`. */
  readonly id: string;
  /** `goal`: one of the issue's targets. `reference`: context among baselines. */
  readonly kind: 'goal' | 'reference';
  /** The target in words. */
  readonly description: string;
  /** What is divided (`opsPerSec`, `p50RttNs`) or measured (`notificationsPerOp`, `idleCoreFraction`). */
  readonly metric: string;
  /** Case key of the numerator (or the case measured); null where none. */
  readonly numerator: string | null;
  /** Case key of the denominator; null for an absolute figure. */
  readonly denominator: string | null;
  /** Median of pairwise ratios, or the absolute figure; null when not measured. */
  readonly value: number | null;
  /** The goal's bound. */
  readonly threshold: number | null;
  readonly comparison: '>=' | '<=' | '<' | null;
  /** Whether `value comparison threshold` holds; null when not measured or no threshold. */
  readonly met: boolean | null;
  /** The pairwise ratios behind `value` (one per complete round). */
  readonly perRound: number[];
  /** Why a value is missing, or a caveat. */
  readonly note?: string;
}

/** Whether `value cmp threshold` holds; null when either is missing. */
export function meets(value: number | null, cmp: RatioResult['comparison'], threshold: number | null): boolean | null {
  if (value === null || threshold === null || cmp === null) return null;
  if (cmp === '>=') return value >= threshold;
  if (cmp === '<=') return value <= threshold;
  return value < threshold;
}

/**
 * A pairwise ratio between two cases of the same group: median over rounds of
 * `metric(num) / metric(den)`.
 */
export function pairwiseRatio(spec: {
  id: string; kind: RatioResult['kind']; description: string; metric: RoundMetric;
  num: CaseOutcome | undefined; den: CaseOutcome | undefined; rounds: number;
  threshold: number | null; comparison: RatioResult['comparison'];
}): RatioResult {
  const base = {
    id: spec.id, kind: spec.kind, description: spec.description, metric: spec.metric,
    numerator: spec.num?.key ?? null, denominator: spec.den?.key ?? null,
    threshold: spec.threshold, comparison: spec.comparison,
  };
  if (!spec.num || !spec.den) {
    return { ...base, value: null, met: null, perRound: [], note: `not measured: ${!spec.num ? 'numerator' : 'denominator'} case did not run` };
  }
  if (spec.num.group !== spec.den.group) {
    return { ...base, value: null, met: null, perRound: [], note: 'cases are in different groups: no pairwise ratio' };
  }
  const perRound = pairwiseRatios(roundValues(spec.num, spec.metric, spec.rounds), roundValues(spec.den, spec.metric, spec.rounds));
  const value = median(perRound);
  return { ...base, value, met: meets(value, spec.comparison, spec.threshold), perRound,
    ...(value === null ? { note: 'no complete pair of rounds' } : {}) };
}

// ---------------------------------------------------------------------------
// Machine and report

/** The machine the figures come from (the JSON `machine` section). */
export interface MachineInfo {
  /** Logical CPUs (`os.availableParallelism()`). */
  readonly cpus: number;
  readonly cpuModel: string;
  /** `process.version`, e.g. `v20.20.2`. */
  readonly node: string;
  readonly v8: string;
  readonly platform: string;
  readonly arch: string;
  /** `os.release()`. */
  readonly kernel: string;
  readonly totalMemGiB: number;
  /** 1/5/15-minute load averages when the bench started (the VM is shared). */
  readonly loadavg: number[];
  /** ISO time the bench started. */
  readonly startedAt: string;
}

/** Describes this machine. */
export function machineInfo(): MachineInfo {
  const cpus = os.cpus();
  return {
    cpus: os.availableParallelism(),
    cpuModel: cpus[0]?.model?.trim() ?? 'unknown',
    node: process.version,
    v8: process.versions.v8,
    platform: process.platform,
    arch: process.arch,
    kernel: os.release(),
    totalMemGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    loadavg: os.loadavg().map((x) => Math.round(x * 100) / 100),
    startedAt: new Date().toISOString(),
  };
}

/** The idle-CPU figure of one implementation (the JSON `idle[]` entry). */
export interface IdleResult extends Partial<IdleCpuMeasurement> {
  readonly impl: Impl;
  readonly ringPages: number;
  readonly waitMode: WaitMode;
  readonly error?: string;
}

/** The whole JSON report written by `--json FILE`. */
export interface BenchReport {
  readonly machine: MachineInfo;
  /** How the sweep ran: durations (ms), rounds, spin tokens, what was swept, the pvio case's status. */
  readonly config: Record<string, unknown>;
  readonly results: CaseResult[];
  readonly ratios: RatioResult[];
  readonly idle: IdleResult[];
  /** Wall-clock duration of the whole bench, ms. */
  readonly durationMs: number;
  readonly notes: string[];
}

/** Writes a benchmark's report as pretty JSON (non-finite numbers become null). */
export function writeJsonReport(file: string, report: unknown): void {
  writeFileSync(file, JSON.stringify(report, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n');
}

// ---------------------------------------------------------------------------
// Formatting

/**
 * A number for a table: `12.3 M`, `456 k`, `789`, `1.23`, `1.23e-4` (`digits`
 * significant digits, default 3); `–` for null, undefined or not finite.
 */
export function formatSig(x: number | null | undefined, digits = 3): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return '–';
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a >= 1e6) return `${(x / 1e6).toPrecision(digits)} M`;
  if (a >= 1e4) return `${(x / 1e3).toPrecision(digits)} k`;
  if (a >= 100) return x.toFixed(0);
  if (a >= 0.001) return x.toPrecision(digits);
  return x.toExponential(2);
}

/** `12.3 M`, `456 k`, `789` (3 significant digits). */
export function formatRate(x: number | null): string {
  if (x === null || !Number.isFinite(x)) return '–';
  if (x >= 1e6) return `${(x / 1e6).toPrecision(3)} M`;
  if (x >= 1e3) return `${(x / 1e3).toPrecision(3)} k`;
  return x.toPrecision(3);
}

/** A duration given in ns, printed as `189 ns`, `7.3 µs`, `63.1 ms`. */
export function formatNs(ns: number | null): string {
  if (ns === null || !Number.isFinite(ns)) return '–';
  if (ns >= 1e6) return `${(ns / 1e6).toPrecision(3)} ms`;
  if (ns >= 1e3) return `${(ns / 1e3).toPrecision(3)} µs`;
  return `${ns.toPrecision(3)} ns`;
}

function formatRatio(x: number | null): string {
  if (x === null || !Number.isFinite(x)) return '–';
  if (x === 0) return '0';
  return Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 0.001 ? x.toPrecision(3) : x.toExponential(2);
}

/** A count of ns as a rounded integer with thousands separators, e.g. `60,400`. */
function formatInt(x: number | null): string {
  return x === null || !Number.isFinite(x) ? '–' : Math.round(x).toLocaleString('en-US');
}

function cell(v: string | number | null): string {
  return v === null ? '–' : String(v);
}

/** The results as a Markdown table (one row per case). */
export function markdownResults(rows: readonly CaseResult[]): string {
  const head = ['impl', 'pattern', 'pages', 'entries', 'in flight', 'batch', 'wait', 'ops/s', 'ns/op',
    'p50 RTT', 'p99 RTT', 'notif/op', 'wake/op', 'CPU ns/op', 'probe'];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of rows) {
    lines.push(`| ${[r.impl, r.pattern, cell(r.ringPages), cell(r.ringEntries), r.inFlight, cell(r.batch), cell(r.waitMode),
      r.error && r.opsPerSec === null ? `failed: ${r.error.replace(/\|/g, '/')}` : formatRate(r.opsPerSec),
      r.nsPerOp !== null && r.nsPerOp < 100 ? r.nsPerOp.toFixed(1) : formatInt(r.nsPerOp), formatNs(r.p50RttNs), formatNs(r.p99RttNs),
      formatRatio(r.notificationsPerOp), formatRatio(r.wakeupsPerOp),
      formatInt(r.cpuNsPerOp), formatNs(r.probeRttNs)].join(' | ')} |`);
  }
  return lines.join('\n');
}

/** The ratios as a Markdown table: goal, value, bound, met. */
export function markdownRatios(ratios: readonly RatioResult[]): string {
  const lines = ['| kind | id | target | value | bound | met |', '|---|---|---|---|---|---|'];
  for (const r of ratios) {
    const met = r.met === null ? (r.note ? `– (${r.note})` : '–') : r.met ? 'yes' : '**no**';
    lines.push(`| ${r.kind} | ${r.id} | ${r.description} | ${formatRatio(r.value)} | ${r.comparison ?? ''} ${formatRatio(r.threshold)} | ${met} |`);
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------------------
// SVG chart (hand-written: no chart library renders SVG without a DOM and stays small)

/** One line of the chart. */
export interface ChartSeries {
  readonly label: string;
  /** Points (inFlight, ops/s), in increasing inFlight. */
  readonly points: ReadonlyArray<{ x: number; y: number }>;
  readonly dashed?: boolean;
}

/**
 * Picks the chart's lines from the results: for each (impl, pattern, waitMode), the
 * largest ring measured (so in-flight spans up to a full ring) and, per in-flight
 * value, batch = min(8, inFlight); MessagePort and ringbuf.js one line per pattern.
 * Baselines are dashed, pvio solid.
 */
export function chartSeries(rows: readonly CaseResult[]): ChartSeries[] {
  const byLine = new Map<string, CaseResult[]>();
  for (const r of rows) {
    if (r.opsPerSec === null || r.opsPerSec <= 0) continue;
    const k = `${r.impl}|${r.pattern}|${r.waitMode ?? ''}`;
    if (!byLine.has(k)) byLine.set(k, []);
    byLine.get(k)!.push(r);
  }
  const out: ChartSeries[] = [];
  for (const [, rs] of byLine) {
    const pages = Math.max(...rs.map((r) => r.ringPages ?? 0));
    const pts = new Map<number, number>();
    for (const r of rs) {
      if ((r.ringPages ?? 0) !== pages) continue;
      if (r.batch !== null && r.ringPages !== null && r.batch !== Math.min(8, r.inFlight)) continue;
      pts.set(r.inFlight, Math.max(pts.get(r.inFlight) ?? 0, r.opsPerSec!));
    }
    if (pts.size === 0) continue;
    const r0 = rs[0];
    const label = [r0.impl, r0.pattern, r0.waitMode, pages > 0 ? `${pages}p` : null].filter(Boolean).join(' ');
    out.push({ label, dashed: r0.impl !== 'pvio', points: [...pts].sort((a, b) => a[0] - b[0]).map(([x, y]) => ({ x, y })) });
  }
  return out.sort((a, b) => a.label.localeCompare(b.label));
}

/** `1`, `10`, `100`, `1k` ... `100M`, `1G` for 10^e. */
function decadeLabel(e: number): string {
  const units = ['', 'k', 'M', 'G', 'T'];
  const u = Math.min(units.length - 1, Math.max(0, Math.floor(e / 3)));
  return `${10 ** (e - 3 * u)}${units[u]}`;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/**
 * A line chart of throughput (ops/s, log scale) against requests in flight (log2
 * scale), one line per series, legend on the right. Returns the SVG document.
 * @param subtitle an optional second line under the title (e.g. how series were picked).
 */
export function svgChart(series: readonly ChartSeries[], title: string, subtitle = ''): string {
  const W = 960, H = 540, L = 80, R = 300, T = 50, B = 60;
  const xs = [...new Set(series.flatMap((s) => s.points.map((p) => p.x)))].sort((a, b) => a - b);
  const ys = series.flatMap((s) => s.points.map((p) => p.y));
  const x0 = Math.log2(xs[0] ?? 1), x1 = Math.max(x0 + 1, Math.log2(xs[xs.length - 1] ?? 2));
  const y0 = Math.floor(Math.log10(Math.min(...ys, 1e4))), y1 = Math.max(y0 + 1, Math.ceil(Math.log10(Math.max(...ys, 1e5))));
  const px = (x: number) => L + ((Math.log2(x) - x0) / (x1 - x0)) * (W - L - R);
  const py = (y: number) => H - B - ((Math.log10(y) - y0) / (y1 - y0)) * (H - T - B);
  const colors = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf', '#000000', '#aec7e8'];
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${L}" y="${T - 26}" font-size="16">${esc(title)}</text>`,
    ...(subtitle ? [`<text x="${L}" y="${T - 8}" fill="#555">${esc(subtitle)}</text>`] : []),
  ];
  for (let e = y0; e <= y1; e++) {
    const y = py(10 ** e);
    out.push(`<line x1="${L}" y1="${y}" x2="${W - R}" y2="${y}" stroke="#ddd"/>`,
      `<text x="${L - 8}" y="${y + 4}" text-anchor="end">${decadeLabel(e)}</text>`);
  }
  for (const x of xs) {
    const X = px(x);
    out.push(`<line x1="${X}" y1="${T}" x2="${X}" y2="${H - B}" stroke="#eee"/>`,
      `<text x="${X}" y="${H - B + 18}" text-anchor="middle">${x}</text>`);
  }
  out.push(`<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#333"/>`,
    `<text x="${(L + W - R) / 2}" y="${H - 15}" text-anchor="middle">requests in flight</text>`,
    `<text transform="translate(18 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">operations per second</text>`);
  series.forEach((s, i) => {
    const c = colors[i % colors.length];
    const pts = s.points.map((p) => `${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join(' ');
    out.push(`<polyline points="${pts}" fill="none" stroke="${c}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
    for (const p of s.points) out.push(`<circle cx="${px(p.x).toFixed(1)}" cy="${py(p.y).toFixed(1)}" r="3" fill="${c}"/>`);
    const ly = T + 10 + i * 18;
    out.push(`<line x1="${W - R + 15}" y1="${ly}" x2="${W - R + 45}" y2="${ly}" stroke="${c}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`,
      `<text x="${W - R + 52}" y="${ly + 4}">${esc(s.label)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

// ---------------------------------------------------------------------------
// Workers

/** Path of the `.mjs` bootstrap that registers tsx and runs a `.ts` entry's `start(workerData)`. */
export const WORKER_BOOTSTRAP = fileURLToPath(new URL('../hypervisor/worker-bootstrap.mjs', import.meta.url));

/** A reply from a bench worker (see `bench/workers/common.ts`). */
interface WorkerReply {
  kind: 'ready' | 'reply';
  seq?: number;
  ok?: boolean;
  value?: unknown;
  error?: string;
}

/**
 * A worker running a bench entry (a `.ts` file exporting `start(workerData)` that
 * calls `serve()` from `bench/workers/common.ts`), with request/reply calls that
 * each have a deadline. Usable by any case, pvio's included.
 */
export class BenchWorker {
  readonly #worker: Worker;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  #seq = 0;
  #dead: string | null = null;

  private constructor(worker: Worker) {
    this.#worker = worker;
    worker.on('message', (m: WorkerReply) => {
      if (m.kind !== 'reply' || m.seq === undefined) return;
      const p = this.#pending.get(m.seq);
      if (!p) return;
      this.#pending.delete(m.seq);
      clearTimeout(p.timer);
      if (m.ok) p.resolve(m.value);
      else p.reject(new Error(m.error ?? 'worker call failed'));
    });
    const fail = (why: string) => {
      this.#dead ??= why;
      for (const [, p] of this.#pending) {
        clearTimeout(p.timer);
        p.reject(new Error(why));
      }
      this.#pending.clear();
    };
    worker.on('error', (e) => fail(`worker error: ${e?.message ?? e}`));
    worker.on('exit', (code) => fail(`worker exited (${code})`));
  }

  /**
   * Starts a worker on `entry` and waits for its `ready` message.
   * @param entry file URL of the `.ts` entry.
   * @param data extra workerData (e.g. `{ spinTokens }`).
   * @throws TimeoutError when it is not ready within `timeoutMs`.
   */
  static spawn(entry: URL, name: string, data: Record<string, unknown>, timeoutMs = 20_000): Promise<BenchWorker> {
    const worker = new Worker(WORKER_BOOTSTRAP, { workerData: { ...data, entry: entry.href }, name });
    worker.unref();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        void worker.terminate();
        reject(new TimeoutError(`bench worker ${name} not ready after ${timeoutMs} ms`));
      }, timeoutMs);
      const onMsg = (m: WorkerReply) => {
        if (m.kind !== 'ready') return;
        clearTimeout(timer);
        worker.off('message', onMsg);
        worker.off('error', onErr);
        resolve(new BenchWorker(worker));
      };
      const onErr = (e: Error) => {
        clearTimeout(timer);
        reject(e);
      };
      worker.on('message', onMsg);
      worker.once('error', onErr);
    });
  }

  /** Why the worker is gone, or null while it runs. */
  get dead(): string | null {
    return this.#dead;
  }

  /**
   * Sends `{ op, ...args }` and resolves with the handler's return value.
   * @throws TimeoutError after `timeoutMs`; Error when the handler threw or the worker died.
   */
  call<T>(op: string, args: Record<string, unknown>, timeoutMs: number, transfer: Transferable[] = []): Promise<T> {
    if (this.#dead) return Promise.reject(new Error(this.#dead));
    const seq = ++this.#seq;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(seq);
        reject(new TimeoutError(`bench worker call ${op} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(seq, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.#worker.postMessage({ seq, op, ...args }, transfer);
    });
  }

  /** Terminates the worker (also interrupts a synchronous loop or a wait). Never throws. */
  async terminate(): Promise<void> {
    this.#dead ??= 'terminated';
    await this.#worker.terminate().catch(() => {});
  }
}

/**
 * Returns leaked spin tokens: when no bench thread runs, every token must be free;
 * a case whose worker was terminated mid-spin may have taken one with it. Live
 * threads may hold a token for a few microseconds (pvio's hypervisor and dom0 spin
 * briefly after serving), so this first waits up to `graceMs` for the tokens to
 * come back by themselves: returning a token that is only borrowed would mint an
 * extra one, and a third spinner on two cores slows everything ~15x.
 * @returns how many tokens were returned (0 normally).
 */
export async function restoreSpinTokens(buffer: SharedArrayBuffer, total: number, graceMs = 200): Promise<number> {
  const t = new SpinTokens(buffer);
  const deadline = Date.now() + graceMs;
  while (t.available() < total && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1));
  let n = 0;
  while (t.available() < total) {
    t.release();
    n++;
  }
  return n;
}

/**
 * The start every `pvio bench NAME` shares: parses `argv` with `parse`; a bad
 * argument is one line (`pvio bench NAME: …`) and the usage on stderr, `--help` the
 * usage on stdout.
 * @returns the options, or the exit code to return at once (2 after a bad argument, 0 after --help).
 */
export function benchOptionsOrExit<T extends { help: boolean }>(argv: string[], parse: (argv: string[]) => T, usage: string, name: string): T | number {
  let o: T;
  try {
    o = parse(argv);
  } catch (e) {
    process.stderr.write(`pvio bench ${name}: ${(e as Error).message}\n${usage}\n`);
    return 2;
  }
  if (o.help) {
    process.stdout.write(`${usage}\n`);
    return 0;
  }
  return o;
}

/** One option of a benchmark's command line (see {@link parseBenchArgs}). */
export type BenchOption = { kind: 'flag' } | { kind: 'string' } | { kind: 'number'; min: number; integer?: boolean };

/**
 * Parses a benchmark's arguments (those after `pvio bench NAME`) on `node:util`
 * `parseArgs`: `--name VALUE` or `--name=VALUE` for strings and numbers, bare
 * `--name` for flags, `--help` / `-h` always. Numbers are checked against `min`
 * (and floored when `integer`).
 * @returns the values given, by option name (absent options are left out), and `help`.
 * @throws Error naming the argument: `unknown argument X`, `--x needs a value`,
 *   `--x: V is not a number ≥ MIN`.
 */
export function parseBenchArgs(argv: readonly string[], spec: Readonly<Record<string, BenchOption>>): {
  values: Record<string, string | number | boolean>; help: boolean;
} {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = { help: { type: 'boolean', short: 'h' } };
  for (const [name, o] of Object.entries(spec)) options[name] = { type: o.kind === 'flag' ? 'boolean' : 'string' };
  const { tokens } = parseArgs({ args: [...argv], options, strict: false, allowPositionals: true, tokens: true });
  const values: Record<string, string | number | boolean> = {};
  let help = false;
  for (const t of tokens) {
    if (t.kind === 'positional') throw new Error(`unknown argument ${t.value}`);
    if (t.kind !== 'option') continue;
    if (t.name === 'help') {
      help = true;
      continue;
    }
    const o = spec[t.name];
    if (!o) throw new Error(`unknown argument ${t.rawName}`);
    if (o.kind === 'flag') {
      values[t.name] = true;
      continue;
    }
    const v = t.value;
    if (v === undefined || v === '' || (t.inlineValue !== true && v.startsWith('--'))) throw new Error(`${t.rawName} needs a value`);
    if (o.kind === 'string') {
      values[t.name] = v;
      continue;
    }
    const n = Number(v);
    if (!Number.isFinite(n) || n < o.min) throw new Error(`${t.rawName}: ${v} is not a number ≥ ${o.min}`);
    values[t.name] = o.integer ? Math.floor(n) : n;
  }
  return { values, help };
}
