/**
 * `pvio bench ring`: pvio's blkif-sized ring against its baselines, on this
 * machine, in one process run.
 *
 * Sweep: ring pages (1, 4, 16 → 32, 128, 512 entries) × requests in flight (1, 8,
 * 32, a full ring) × requests per publish (1, 8, a full ring; never more than in
 * flight) × wait mode (poll, block, adaptive). Every ring config runs pvio's case
 * (`bench/pvio-ring.ts`, when present) and the hand-written floor ring
 * (`bench/minimal-ring.ts`) interleaved; MessagePort (`bench/messageport.ts`) and
 * ringbuf.js (`bench/ringbufjs.ts`) run once per in-flight value, one way and round
 * trip, and sit in the same groups as the configs the goals compare them with.
 * A cross-core probe (`bench/probe.ts`) runs before each pair. See bench/README.md.
 *
 * Options: `--json FILE`, `--svg FILE`, `--quick` (a short sweep, for tests),
 * `--baselines-only` (do not load pvio's case), `--rounds N`, `--warmup MS`,
 * `--measure MS`, `--budget S` (stop starting groups after S seconds), `--help`.
 *
 * The pvio case is imported in one place, {@link loadPvioModule}.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { SpinTokens, DEFAULT_SPIN_ITERATIONS } from '../hypervisor/spin.ts';
import {
  BENCH_SPIN_TOKENS, benchOptionsOrExit, MAX_RTT_SAMPLES, REQUEST_BYTES, RESPONSE_BYTES, RTT_SAMPLE_EVERY, WAIT_MODES,
  caseKey, chartSeries, describeCase, machineInfo, markdownRatios, markdownResults, meets, pairwiseRatio,
  parseBenchArgs, restoreSpinTokens, ringEntriesFor, runSchedule, summarize, svgChart, writeJsonReport,
  type BenchReport, type Case, type CaseGroup, type CaseOutcome, type CaseResult, type IdleResult,
  type PvioRingModule, type RatioResult, type RingCaseConfig, type WaitMode,
} from './harness.ts';
import { MinimalRingSuite } from './minimal-ring.ts';
import { MessagePortSuite } from './messageport.ts';
import { RingbufSuite } from './ringbufjs.ts';
import { CrossCoreProbe } from './probe.ts';
import { WAIT_SLICE_MS } from './workers/common.ts';

/** Usage text of `pvio bench ring`. */
export const BENCH_RING_USAGE = `usage: pvio bench ring [--json FILE] [--svg FILE] [--quick] [--baselines-only]
                       [--rounds N] [--warmup MS] [--measure MS] [--budget S]`;

/** Parsed options of `bench ring`. */
export interface BenchRingOptions {
  json: string | null;
  svg: string | null;
  quick: boolean;
  baselinesOnly: boolean;
  /** Rounds per group (default 3; 2 with --quick). */
  rounds: number;
  /** Warm-up per run, ms (default 150; 30 with --quick). */
  warmupMs: number;
  /** Measured window per run, ms (default 400; 80 with --quick). */
  measureMs: number;
  /** No new group starts after this many seconds (default 480; 60 with --quick). */
  budgetS: number;
  help: boolean;
}

/**
 * Parses the arguments after `bench ring`.
 * @throws Error naming the bad argument.
 */
export function parseBenchRingArgs(argv: readonly string[]): BenchRingOptions {
  const { values: v, help } = parseBenchArgs(argv, {
    json: { kind: 'string' }, svg: { kind: 'string' }, quick: { kind: 'flag' }, 'baselines-only': { kind: 'flag' },
    rounds: { kind: 'number', min: 1, integer: true }, warmup: { kind: 'number', min: 0 },
    measure: { kind: 'number', min: 1 }, budget: { kind: 'number', min: 1 },
  });
  const o: BenchRingOptions = {
    json: (v.json as string) ?? null, svg: (v.svg as string) ?? null, quick: v.quick === true, baselinesOnly: v['baselines-only'] === true,
    rounds: (v.rounds as number) ?? NaN, warmupMs: (v.warmup as number) ?? NaN, measureMs: (v.measure as number) ?? NaN,
    budgetS: (v.budget as number) ?? NaN, help,
  };
  if (Number.isNaN(o.rounds)) o.rounds = o.quick ? 2 : 3;
  if (Number.isNaN(o.warmupMs)) o.warmupMs = o.quick ? 30 : 150;
  if (Number.isNaN(o.measureMs)) o.measureMs = o.quick ? 80 : 400;
  if (Number.isNaN(o.budgetS)) o.budgetS = o.quick ? 60 : 480;
  return o;
}

/** The pvio case module, or why it is not there. */
export interface PvioLoad {
  readonly module: PvioRingModule | null;
  /** `available`, `missing` (no file: baselines only) or `failed` (the file did not load). */
  readonly status: 'available' | 'missing' | 'failed';
  readonly note: string;
}

/**
 * Imports `bench/pvio-ring.ts` — the only place the bench refers to pvio's case.
 * Dynamic, so the bench (and `tsc`) work while the file does not exist yet.
 */
export async function loadPvioModule(): Promise<PvioLoad> {
  const url = new URL('./pvio-ring.ts', import.meta.url);
  if (!existsSync(fileURLToPath(url))) {
    return { module: null, status: 'missing', note: 'bench/pvio-ring.ts does not exist yet: baselines only' };
  }
  try {
    const m = (await import(url.href)) as Partial<PvioRingModule>;
    if (typeof m.pvioRingCase !== 'function') {
      return { module: null, status: 'failed', note: 'bench/pvio-ring.ts does not export pvioRingCase(config): Case' };
    }
    return { module: m as PvioRingModule, status: 'available', note: m.pvioIdleCpu ? 'pvio case loaded' : 'pvio case loaded (no pvioIdleCpu export)' };
  } catch (e) {
    return { module: null, status: 'failed', note: `bench/pvio-ring.ts failed to load: ${(e as Error)?.message ?? e}` };
  }
}

/** One ring configuration of the sweep. */
interface RingPoint {
  ringPages: number;
  inFlight: number;
  batch: number;
}

/** Ring configs: in flight ∈ {1, 8, 32, full}, batch ∈ {1, 8, full} with batch ≤ in flight. */
function ringPoints(pages: readonly number[]): RingPoint[] {
  const out: RingPoint[] = [];
  for (const p of pages) {
    const n = ringEntriesFor(p);
    for (const f of [...new Set([1, 8, 32, n])].filter((x) => x <= n)) {
      for (const b of [...new Set([1, 8, n])].filter((x) => x <= f)) out.push({ ringPages: p, inFlight: f, batch: b });
    }
  }
  return out;
}

/** The goal configurations: where RTT and throughput goals compare pvio with baselines. */
const RTT_POINT: RingPoint = { ringPages: 1, inFlight: 1, batch: 1 };
const TPUT_POINT: RingPoint = { ringPages: 1, inFlight: 32, batch: 8 };
const same = (a: RingPoint, b: RingPoint) => a.ringPages === b.ringPages && a.inFlight === b.inFlight && a.batch === b.batch;

/** A case that only fails, standing in for a pvio case the factory refused to build. */
function failedCase(params: Omit<Case, 'run' | 'close'>, why: string): Case {
  return { ...params, run: () => Promise.reject(new Error(why)) };
}

/** Everything the bench runs, built once. */
interface Plan {
  groups: CaseGroup[];
  ringPages: number[];
  points: RingPoint[];
  baselineInFlight: number[];
}

function buildPlan(o: BenchRingOptions, tokens: SharedArrayBuffer, pvio: PvioRingModule | null,
  minimal: MinimalRingSuite, mp: MessagePortSuite, rb: RingbufSuite): Plan {
  const ringPages = o.quick ? [1] : [1, 4, 16];
  const points = o.quick ? [RTT_POINT, TPUT_POINT] : ringPoints(ringPages);
  const baselineInFlight = o.quick ? [1, 32] : [...new Set([1, 8, 32, ...ringPages.map(ringEntriesFor)])].sort((a, b) => a - b);
  const pvioCase = (pt: RingPoint, waitMode: WaitMode): Case => {
    const cfg: RingCaseConfig = { pattern: 'round-trip', ...pt, waitMode, spinTokens: tokens };
    try {
      return pvio!.pvioRingCase(cfg);
    } catch (e) {
      return failedCase({ impl: 'pvio', pattern: 'round-trip', ...pt, ringEntries: ringEntriesFor(pt.ringPages), waitMode },
        `pvioRingCase refused the config: ${(e as Error)?.message ?? e}`);
    }
  };
  const ringGroup = (pt: RingPoint): CaseGroup => ({
    label: `ring ${pt.ringPages}p f${pt.inFlight} b${pt.batch}`,
    pairs: WAIT_MODES.map((mode) => [...(pvio ? [pvioCase(pt, mode)] : []), minimal.case({ ...pt, waitMode: mode })]),
  });
  const groups: CaseGroup[] = [];
  // The goal groups first, so they are measured even if the budget runs out.
  const rtt = ringGroup(RTT_POINT);
  groups.push({ label: rtt.label, pairs: [...rtt.pairs, [rb.case('round-trip', 1)], [mp.case('round-trip', 1)]] });
  const tput = ringGroup(TPUT_POINT);
  groups.push({ label: tput.label, pairs: [...tput.pairs, [mp.case('one-way', 32)], [rb.case('one-way', 32)]] });
  for (const pt of points) if (!same(pt, RTT_POINT) && !same(pt, TPUT_POINT)) groups.push(ringGroup(pt));
  const inGoalGroups = new Set(['messageport|round-trip|1', 'ringbuf.js|round-trip|1', 'messageport|one-way|32', 'ringbuf.js|one-way|32']);
  for (const f of baselineInFlight) {
    const pairs: Case[][] = [];
    for (const pattern of ['one-way', 'round-trip'] as const) {
      if (!inGoalGroups.has(`messageport|${pattern}|${f}`)) pairs.push([mp.case(pattern, f)]);
      if (!inGoalGroups.has(`ringbuf.js|${pattern}|${f}`)) pairs.push([rb.case(pattern, f)]);
    }
    if (pairs.length > 0) groups.push({ label: `baselines f${f}`, pairs });
  }
  return { groups, ringPages, points, baselineInFlight };
}

function keyOf(impl: Case['impl'], pattern: Case['pattern'], pt: { ringPages: number | null; inFlight: number; batch: number | null }, waitMode: WaitMode | null): string {
  return caseKey({ impl, pattern, ringPages: pt.ringPages, ringEntries: null, inFlight: pt.inFlight, batch: pt.batch, waitMode });
}

/** The issue's goals (met or not) and a few reference ratios among the baselines. */
function computeRatios(outcomes: readonly CaseOutcome[], results: readonly CaseResult[], rounds: number,
  ringPages: readonly number[], points: readonly RingPoint[], idle: readonly IdleResult[], pvioNote: string | null): RatioResult[] {
  const byKey = new Map(outcomes.map((o) => [o.key, o]));
  const rowByKey = new Map(results.map((r) => [caseKey(r), r]));
  const ring = (impl: 'pvio' | 'minimal-ring', pt: RingPoint, mode: WaitMode) => byKey.get(keyOf(impl, 'round-trip', pt, mode));
  const base = (impl: 'messageport' | 'ringbuf.js', pattern: 'one-way' | 'round-trip', f: number) =>
    byKey.get(keyOf(impl, pattern, { ringPages: null, inFlight: f, batch: impl === 'ringbuf.js' ? 1 : null }, null));
  const out: RatioResult[] = [];
  const push = (r: RatioResult, involvesPvio: boolean) => {
    out.push(involvesPvio && pvioNote && r.value === null ? { ...r, note: pvioNote } : r);
  };

  for (const p of ringPages) {
    const pt = { ...TPUT_POINT, ringPages: p };
    push(pairwiseRatio({
      id: `pvio-vs-minimal-throughput/${p}p`, kind: 'goal', metric: 'opsPerSec', rounds,
      description: `pvio ${p}p, 32 in flight, 8 per publish, adaptive: throughput ≥ 0.5× the minimal ring (same config)`,
      num: ring('pvio', pt, 'adaptive'), den: ring('minimal-ring', pt, 'adaptive'), threshold: 0.5, comparison: '>=',
    }), true);
  }
  push(pairwiseRatio({
    id: 'pvio-vs-messageport-throughput', kind: 'goal', metric: 'opsPerSec', rounds,
    description: 'pvio 1p, 32 in flight, 8 per publish, adaptive: requests/s ≥ 20× MessagePort one-way msgs/s (32 in flight)',
    num: ring('pvio', TPUT_POINT, 'adaptive'), den: base('messageport', 'one-way', 32), threshold: 20, comparison: '>=',
  }), true);
  push(pairwiseRatio({
    id: 'pvio-rtt-vs-minimal-poll', kind: 'goal', metric: 'p50RttNs', rounds,
    description: 'pvio round trip, 1 in flight, adaptive: median RTT ≤ 2× the minimal polled ring\'s',
    num: ring('pvio', RTT_POINT, 'adaptive'), den: ring('minimal-ring', RTT_POINT, 'poll'), threshold: 2, comparison: '<=',
  }), true);
  push(pairwiseRatio({
    id: 'ringbufjs-rtt-vs-pvio', kind: 'goal', metric: 'p50RttNs', rounds,
    description: 'pvio round trip, 1 in flight, adaptive: median RTT ≥ 2× better than ringbuf.js as two rings (ratio ringbuf.js / pvio)',
    num: base('ringbuf.js', 'round-trip', 1), den: ring('pvio', RTT_POINT, 'adaptive'), threshold: 2, comparison: '>=',
  }), true);

  // Saturation: a full ring in flight, block and adaptive: notifications per request ≤ 2 / entries.
  for (const impl of ['pvio', 'minimal-ring'] as const) {
    for (const pt of points) {
      const n = ringEntriesFor(pt.ringPages);
      if (pt.inFlight !== n) continue;
      for (const mode of ['block', 'adaptive'] as const) {
        const key = keyOf(impl, 'round-trip', pt, mode);
        const row = rowByKey.get(key);
        if (!row && impl === 'minimal-ring') continue;
        const value = row?.notificationsPerOp ?? null;
        push({
          id: `${impl === 'pvio' ? 'pvio' : 'minimal'}-notifications-at-saturation/${pt.ringPages}p-b${pt.batch}-${mode}`,
          kind: impl === 'pvio' ? 'goal' : 'reference', metric: 'notificationsPerOp',
          description: `${impl} ${pt.ringPages}p, ${n} in flight (full ring), ${pt.batch} per publish, ${mode}: notifications per request ≤ 2/${n}`,
          numerator: key, denominator: null, value, threshold: 2 / n, comparison: '<=', met: meets(value, '<=', 2 / n), perRound: [],
          ...(value === null ? { note: row?.error ?? 'not measured' } : {}),
        }, impl === 'pvio');
      }
    }
  }

  for (const impl of ['pvio', 'minimal-ring'] as const) {
    const r = idle.find((x) => x.impl === impl);
    const value = r?.coreFraction ?? null;
    push({
      id: `${impl === 'pvio' ? 'pvio' : 'minimal'}-idle-cpu`, kind: impl === 'pvio' ? 'goal' : 'reference', metric: 'idleCoreFraction',
      description: `${impl} ring pair, adaptive, no traffic for ${r?.idleMs ? Math.round(r.idleMs) : 1000} ms: process CPU < 5% of a core`,
      numerator: null, denominator: null, value, threshold: 0.05, comparison: '<', met: meets(value, '<', 0.05), perRound: [],
      ...(value === null ? { note: r?.error ?? 'not measured' } : {}),
    }, impl === 'pvio');
  }

  out.push(pairwiseRatio({
    id: 'minimal-vs-messageport-throughput', kind: 'reference', metric: 'opsPerSec', rounds,
    description: 'minimal ring 1p, 32 in flight, 8 per publish, adaptive vs MessagePort one-way (32 in flight)',
    num: ring('minimal-ring', TPUT_POINT, 'adaptive'), den: base('messageport', 'one-way', 32), threshold: null, comparison: null,
  }));
  out.push(pairwiseRatio({
    id: 'ringbufjs-rtt-vs-minimal-poll', kind: 'reference', metric: 'p50RttNs', rounds,
    description: 'ringbuf.js round trip (two rings, 1 in flight) median RTT / minimal polled ring\'s',
    num: base('ringbuf.js', 'round-trip', 1), den: ring('minimal-ring', RTT_POINT, 'poll'), threshold: null, comparison: null,
  }));
  out.push(pairwiseRatio({
    id: 'minimal-adaptive-rtt-vs-poll', kind: 'reference', metric: 'p50RttNs', rounds,
    description: 'minimal ring round trip, 1 in flight: adaptive median RTT / polled',
    num: ring('minimal-ring', RTT_POINT, 'adaptive'), den: ring('minimal-ring', RTT_POINT, 'poll'), threshold: null, comparison: null,
  }));
  return out;
}

/** Results in reading order: ring cases by pages, in flight, batch, wait mode (pvio first), then the baselines. */
function sortResults(rows: CaseResult[]): CaseResult[] {
  const mode = (m: WaitMode | null) => (m === null ? -1 : WAIT_MODES.indexOf(m));
  const implOrder = ['pvio', 'minimal-ring', 'messageport', 'ringbuf.js'];
  return rows.slice().sort((a, b) =>
    Number(a.ringPages === null) - Number(b.ringPages === null)
    || (a.ringPages ?? 0) - (b.ringPages ?? 0)
    || (a.ringPages === null ? implOrder.indexOf(a.impl) - implOrder.indexOf(b.impl) || a.pattern.localeCompare(b.pattern) : 0)
    || a.inFlight - b.inFlight || (a.batch ?? 0) - (b.batch ?? 0) || mode(a.waitMode) - mode(b.waitMode)
    || implOrder.indexOf(a.impl) - implOrder.indexOf(b.impl));
}

/** Seams for tests: where the pvio case comes from (default {@link loadPvioModule}). */
export interface BenchRingDeps {
  readonly loadPvio?: () => Promise<PvioLoad>;
}

/**
 * Runs `bench ring` with the arguments after `bench ring`; prints the Markdown
 * tables on stdout and progress on stderr.
 * @param deps test seams; leave out in production.
 * @returns the exit code: 0, 1 when a case failed, an output could not be
 *   written or the pvio case failed to load, 2 for bad arguments.
 */
export async function benchRing(argv: string[], deps: BenchRingDeps = {}): Promise<number> {
  const o = benchOptionsOrExit(argv, parseBenchRingArgs, BENCH_RING_USAGE, 'ring');
  if (typeof o === 'number') return o;
  const t0 = performance.now();
  const log = (line: string) => process.stderr.write(`bench ring: ${line}\n`);
  const machine = machineInfo();
  const tokens = SpinTokens.createBuffer(BENCH_SPIN_TOKENS);
  const notes: string[] = [];
  const pvioLoad: PvioLoad = o.baselinesOnly
    ? { module: null, status: 'missing', note: '--baselines-only: pvio case not loaded' }
    : await (deps.loadPvio ?? loadPvioModule)();
  log(pvioLoad.note);
  notes.push(pvioLoad.note);
  let exit = pvioLoad.status === 'failed' ? 1 : 0;

  const minimal = new MinimalRingSuite(tokens);
  const mp = new MessagePortSuite();
  const rb = new RingbufSuite(tokens);
  const probe = new CrossCoreProbe(tokens);
  try {
    await Promise.all([minimal.start(), mp.start(), rb.start(), probe.start()]);
    const plan = buildPlan(o, tokens, pvioLoad.module, minimal, mp, rb);
    const run = { warmupMs: o.warmupMs, measureMs: o.measureMs, timeoutMs: o.warmupMs + o.measureMs + 10_000 };
    log(`${plan.groups.length} groups, ${o.rounds} rounds, ${o.warmupMs} ms warm-up + ${o.measureMs} ms measured per run`);
    const sched = await runSchedule(plan.groups, {
      rounds: o.rounds, run, probe: () => probe.measure(), log, budgetMs: o.budgetS * 1000, startedAt: t0,
      afterRun: async (c) => {
        const n = await restoreSpinTokens(tokens, BENCH_SPIN_TOKENS);
        if (n > 0) {
          const msg = `${describeCase(c)} left ${n} spin token(s) taken; returned`;
          log(msg);
          notes.push(msg);
        }
      },
    });
    if (sched.skippedGroups.length > 0) {
      const msg = `time budget (${o.budgetS} s) ran out: skipped ${sched.skippedGroups.join(', ')}`;
      log(msg);
      notes.push(msg);
    }

    const idleMs = o.quick ? 200 : 1000;
    const idle: IdleResult[] = [];
    const idleOpts = { ringPages: 1, idleMs, timeoutMs: idleMs + 10_000, spinTokens: tokens };
    const idleRun = async (impl: 'minimal-ring' | 'pvio', f: () => Promise<IdleResult>) => {
      try {
        idle.push(await f());
      } catch (e) {
        idle.push({ impl, ringPages: 1, waitMode: 'adaptive', error: (e as Error)?.message ?? String(e) });
      }
      await restoreSpinTokens(tokens, BENCH_SPIN_TOKENS);
    };
    await idleRun('minimal-ring', async () => ({ impl: 'minimal-ring', ringPages: 1, waitMode: 'adaptive', ...(await minimal.idleCpu(idleOpts)) }));
    const pvioIdle = pvioLoad.module?.pvioIdleCpu;
    if (pvioIdle) await idleRun('pvio', async () => ({ impl: 'pvio', ringPages: 1, waitMode: 'adaptive', ...(await pvioIdle(idleOpts)) }));
    for (const r of idle) log(`idle ${r.impl}: ${r.error ?? `${(100 * (r.coreFraction ?? 0)).toFixed(2)}% of a core`}`);

    const results = sortResults(sched.outcomes.map(summarize));
    const pvioNote = pvioLoad.status === 'available' ? null : pvioLoad.note;
    const ratios = computeRatios(sched.outcomes, results, o.rounds, plan.ringPages, plan.points, idle, pvioNote);
    if (results.some((r) => r.error)) exit = 1;
    const durationMs = performance.now() - t0;
    const report: BenchReport = {
      machine,
      config: {
        command: 'pvio bench ring', argv, quick: o.quick, rounds: o.rounds, warmupMs: o.warmupMs, measureMs: o.measureMs,
        idleMs, budgetS: o.budgetS, requestBytes: REQUEST_BYTES, responseBytes: RESPONSE_BYTES,
        ringPages: plan.ringPages, ringEntries: plan.ringPages.map(ringEntriesFor), waitModes: WAIT_MODES,
        baselineInFlight: plan.baselineInFlight, spinTokens: BENCH_SPIN_TOKENS, spinIterations: DEFAULT_SPIN_ITERATIONS,
        waitSliceMs: WAIT_SLICE_MS, rttSampleEvery: RTT_SAMPLE_EVERY, maxRttSamplesPerRun: MAX_RTT_SAMPLES,
        pvio: { status: pvioLoad.status, note: pvioLoad.note },
      },
      results, ratios, idle, durationMs, notes,
    };

    const out: string[] = [
      `## pvio bench ring`, '',
      `${machine.cpus} CPUs (${machine.cpuModel}), Node ${machine.node}, ${machine.platform} ${machine.kernel}, loadavg ${machine.loadavg.join(' ')}. ` +
      `${o.rounds} rounds of ${o.warmupMs} ms warm-up + ${o.measureMs} ms measured; ratios are medians of per-round ratios. ` +
      `Requests ${REQUEST_BYTES} B, responses ${RESPONSE_BYTES} B. pvio: ${pvioLoad.note}.`, '',
      markdownResults(results), '', '### Goals and reference ratios', '', markdownRatios(ratios), '',
      ...idle.map((r) => `- idle ${r.impl} (${r.ringPages}p, adaptive): ${r.error ?? `${(100 * (r.coreFraction ?? 0)).toFixed(2)}% of a core over ${Math.round(r.idleMs ?? 0)} ms`}`),
      ...notes.map((n) => `- note: ${n}`),
      `- duration: ${(durationMs / 1000).toFixed(1)} s`, '',
    ];
    process.stdout.write(out.join('\n'));
    try {
      if (o.json) writeJsonReport(o.json, report);
      if (o.svg) {
        writeFileSync(o.svg, svgChart(chartSeries(results), `pvio bench ring: throughput vs requests in flight (Node ${machine.node}, ${machine.cpus} CPUs)`,
          'ring cases: largest ring measured, batch = min(8, in flight); dashed = baselines; 112-byte requests, 16-byte responses'));
      }
    } catch (e) {
      process.stderr.write(`pvio bench ring: cannot write output: ${(e as Error).message}\n`);
      exit = 1;
    }
    return exit;
  } finally {
    await Promise.all([minimal.close(), mp.close(), rb.close(), probe.close(), pvioLoad.module?.pvioClose?.().catch(() => {})]);
  }
}

// `npx tsx bench/ring.ts [options]` runs it directly.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  benchRing(process.argv.slice(2)).then((code) => { process.exitCode = code; });
}
