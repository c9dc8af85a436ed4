// The bench harness (bench/harness.ts, bench/ring.ts): statistics, pairwise ratios,
// the report's JSON and SVG, and a smoke run of `bench ring --quick --baselines-only`
// that must finish in under 20 s with a report of the documented shape. Speed is
// not asserted: only shape and sanity.
import { describe, expect, it, vi } from 'vitest';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  caseKey, chartSeries, invalidMeasurement, markdownRatios, runSchedule, markdownResults, median, meets, pairwiseRatio, pairwiseRatioMedian,
  pairwiseRatios, percentile, ringEntriesFor, roundValues, summarize, svgChart, writeJsonReport,
  type BenchReport, type Case, type CaseOutcome, type CaseParams, type CaseResult, type Measurement, type PvioRingModule,
  type RingCaseConfig,
} from '../bench/harness.ts';
import { benchRing, parseBenchRingArgs } from '../bench/ring.ts';

const ringParams = (over: Partial<CaseParams> = {}): CaseParams => ({
  impl: 'minimal-ring', pattern: 'round-trip', ringPages: 1, ringEntries: 32, inFlight: 32, batch: 8, waitMode: 'adaptive', ...over,
});

const meas = (ops: number, ms: number, rtt: number[] = [], extra: Partial<Measurement> = {}): Measurement => ({
  ops, elapsedNs: ms * 1e6, rttNs: rtt, notifications: 2, wakeups: 1, cpuUs: 100, ...extra,
});

function outcome(params: CaseParams, ms: Array<Measurement | null>, group = 'g'): CaseOutcome {
  return {
    params, key: caseKey(params), group, error: null,
    runs: ms.map((m, round) => ({ round, probeRttNs: 150 + round, measurement: m, ...(m ? {} : { error: 'boom' }) })),
  };
}

describe('statistics', () => {
  it('median takes the middle value, averages the middle two, and ignores non-finite values', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([NaN, 5, Infinity])).toBe(5);
    expect(median([])).toBeNull();
    expect(median(new Float64Array([7, 9]))).toBe(8);
  });

  it('percentile is nearest-rank', () => {
    const v = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(percentile(v, 99)).toBe(99);
    expect(percentile(v, 100)).toBe(100);
    expect(percentile(v, 50)).toBe(50);
    expect(percentile([42], 99)).toBe(42);
    expect(percentile([], 99)).toBeNull();
    expect(() => percentile([1], 0)).toThrow(RangeError);
  });

  it('pairwise ratios pair rounds by index and skip incomplete pairs', () => {
    expect(pairwiseRatios([10, 20, null, 40], [5, 0, 3, 10])).toEqual([2, 4]);
    expect(pairwiseRatioMedian([10, 30, 12], [10, 10, 4])).toBe(3);
    expect(pairwiseRatioMedian([null], [1])).toBeNull();
  });

  it('meets compares with the goal bound, and is null when unmeasured', () => {
    expect(meets(0.6, '>=', 0.5)).toBe(true);
    expect(meets(2.1, '<=', 2)).toBe(false);
    expect(meets(0.05, '<', 0.05)).toBe(false);
    expect(meets(null, '>=', 1)).toBeNull();
  });

  it('ring entries for 1, 4 and 16 pages of 112-byte entries are 32, 128, 512', () => {
    expect([1, 4, 16].map(ringEntriesFor)).toEqual([32, 128, 512]);
  });
});

describe('summarize', () => {
  it('reports the median ops/s over rounds and pools per-op counts and RTT samples', () => {
    const o = outcome(ringParams(), [
      meas(1000, 1, [100, 200], { notifications: 10, wakeups: 4, cpuUs: 2 }),
      meas(3000, 1, [300], { notifications: 20, wakeups: 6, cpuUs: 6 }),
      meas(2000, 1, [400], { notifications: 0, wakeups: 0, cpuUs: 4 }),
    ]);
    const r = summarize(o);
    expect(r.opsPerSec).toBeCloseTo(2e6);
    expect(r.nsPerOp).toBeCloseTo(500);
    expect(r.notificationsPerOp).toBeCloseTo(30 / 6000);
    expect(r.wakeupsPerOp).toBeCloseTo(10 / 6000);
    expect(r.cpuNsPerOp).toBeCloseTo((12 * 1000) / 6000);
    expect(r.p50RttNs).toBe(250);
    expect(r.p99RttNs).toBe(400);
    expect(r.rttSamples).toBe(4);
    expect(r.rounds).toBe(3);
    expect(r.probeRttNs).toBe(151);
  });

  it('gives null where a figure does not apply and keeps a failed round out', () => {
    const o = outcome({ ...ringParams(), impl: 'messageport', ringPages: null, ringEntries: null, batch: null, waitMode: null, pattern: 'one-way' },
      [meas(500, 1, [], { notifications: null, wakeups: null }), null]);
    o.error = 'boom';
    const r = summarize(o);
    expect(r.opsPerSec).toBeCloseTo(5e5);
    expect(r.p50RttNs).toBeNull();
    expect(r.p99RttNs).toBeNull();
    expect(r.notificationsPerOp).toBeNull();
    expect(r.wakeupsPerOp).toBeNull();
    expect(r.rounds).toBe(1);
    expect(r.error).toBe('boom');
  });
});

describe('pairwise ratios between cases', () => {
  const a = outcome(ringParams({ impl: 'pvio' }), [meas(100, 1, [10]), meas(300, 1, [30]), meas(200, 1, [20])]);
  const b = outcome(ringParams(), [meas(200, 1, [5]), meas(200, 1, [10]), meas(100, 1, [10])]);

  it('roundValues gives one value per round', () => {
    expect(roundValues(a, 'opsPerSec', 3).map((x) => Math.round(x!))).toEqual([100_000, 300_000, 200_000]);
    expect(roundValues(a, 'p50RttNs', 4)).toEqual([10, 30, 20, null]);
  });

  it('reports the median of per-round ratios, not the ratio of medians', () => {
    const r = pairwiseRatio({ id: 'x', kind: 'goal', description: 'd', metric: 'opsPerSec', num: a, den: b, rounds: 3, threshold: 0.5, comparison: '>=' });
    // per round: 0.5, 1.5, 2 → median 1.5 (the ratio of medians would be 1.0)
    expect(r.perRound).toEqual([0.5, 1.5, 2]);
    expect(r.value).toBe(1.5);
    expect(r.met).toBe(true);
    expect(r.numerator).toBe(caseKey(a.params));
    const rtt = pairwiseRatio({ id: 'y', kind: 'goal', description: 'd', metric: 'p50RttNs', num: a, den: b, rounds: 3, threshold: 2, comparison: '<=' });
    expect(rtt.value).toBe(2);
    expect(rtt.met).toBe(true);
  });

  it('refuses to pair cases of different groups or a case that did not run', () => {
    const c = { ...b, group: 'other' };
    expect(pairwiseRatio({ id: 'x', kind: 'goal', description: 'd', metric: 'opsPerSec', num: a, den: c, rounds: 3, threshold: 1, comparison: '>=' }).value).toBeNull();
    const missing = pairwiseRatio({ id: 'x', kind: 'goal', description: 'd', metric: 'opsPerSec', num: undefined, den: b, rounds: 3, threshold: 1, comparison: '>=' });
    expect(missing.value).toBeNull();
    expect(missing.met).toBeNull();
    expect(missing.note).toMatch(/not measured/);
  });
});

describe('runSchedule', () => {
  it('interleaves the cases of a pair round by round with a probe before each pair, then closes them', async () => {
    const calls: string[] = [];
    const mk = (name: string, inFlight: number, m: () => Measurement = () => meas(100, 1, [5])): Case => ({
      ...ringParams({ inFlight }),
      run: async () => { calls.push(name); return m(); },
      close: async () => { calls.push(`close ${name}`); },
    });
    const A = mk('A', 1), B = mk('B', 2), C = mk('C', 3);
    let probes = 0;
    const res = await runSchedule([{ label: 'g', pairs: [[A, B], [C]] }], {
      rounds: 2, run: { warmupMs: 0, measureMs: 1, timeoutMs: 100 },
      probe: async () => { calls.push('probe'); return 100 + probes++; },
    });
    expect(calls).toEqual(['probe', 'A', 'B', 'probe', 'C', 'probe', 'A', 'B', 'probe', 'C', 'close A', 'close B', 'close C']);
    expect(res.outcomes.map((o) => o.runs.map((r) => r.probeRttNs))).toEqual([[100, 102], [100, 102], [101, 103]]);
    expect(res.skippedGroups).toEqual([]);
  });

  it('records a failing or invalid case, skips its later rounds and keeps going', async () => {
    let n = 0;
    const bad: Case = { ...ringParams({ inFlight: 1 }), run: async () => { n++; return meas(10, 0); } };
    const good: Case = { ...ringParams({ inFlight: 2 }), run: async () => meas(10, 1) };
    const res = await runSchedule([{ label: 'g', pairs: [[bad, good]] }], {
      rounds: 3, run: { warmupMs: 0, measureMs: 1, timeoutMs: 100 }, probe: async () => null,
    });
    expect(n).toBe(1);
    expect(res.outcomes[0].error).toMatch(/invalid measurement.*elapsedNs=0/);
    expect(res.outcomes[1].runs).toHaveLength(3);
    expect(summarize(res.outcomes[0]).error).toBeDefined();
  });

  it('stops starting groups when the time budget is spent', async () => {
    const c: Case = { ...ringParams(), run: async () => meas(1, 1) };
    const res = await runSchedule([{ label: 'late', pairs: [[c]] }], {
      rounds: 1, run: { warmupMs: 0, measureMs: 1, timeoutMs: 100 }, probe: async () => null,
      budgetMs: 1, startedAt: performance.now() - 10,
    });
    expect(res.skippedGroups).toEqual(['late']);
  });

  it('invalidMeasurement accepts sound counts and names the bad field', () => {
    expect(invalidMeasurement(meas(0, 1))).toBeNull();
    expect(invalidMeasurement(meas(5, 1, [], { notifications: null, wakeups: null, cpuUs: null }))).toBeNull();
    expect(invalidMeasurement(meas(-1, 1))).toMatch(/ops/);
    expect(invalidMeasurement(meas(1, 1, [], { cpuUs: NaN }))).toMatch(/cpuUs/);
  });
});

describe('outputs', () => {
  const rows: CaseResult[] = [
    ...[1, 8, 32].flatMap((f) => [1, 8].filter((b) => b <= f).map((b) => summarize(outcome(ringParams({ inFlight: f, batch: b }), [meas(f * 1000 * b, 1, [100])])))),
    summarize(outcome(ringParams({ ringPages: 4, ringEntries: 128, inFlight: 8, batch: 8 }), [meas(5, 1)])),
    summarize(outcome({ impl: 'messageport', pattern: 'one-way', ringPages: null, ringEntries: null, inFlight: 32, batch: null, waitMode: null }, [meas(400, 1)])),
  ];

  it('chart series take the largest ring and batch = min(8, in flight), one line per impl/pattern/mode', () => {
    const s = chartSeries(rows);
    expect(s.map((x) => x.label)).toEqual(['messageport one-way', 'minimal-ring round-trip adaptive 4p']);
    expect(s[1].points).toEqual([{ x: 8, y: 5000 }]);
    const one = chartSeries(rows.filter((r) => r.ringPages !== 4));
    expect(one.find((x) => x.label.startsWith('minimal'))!.points.map((p) => p.x)).toEqual([1, 8, 32]);
    expect(one.find((x) => x.label.startsWith('minimal'))!.points.map((p) => p.y)).toEqual([1e6, 64e6, 256e6]);
  });

  it('the SVG is one well-formed document with a line and a legend entry per series', () => {
    const s = chartSeries(rows);
    const svg = svgChart([...s, { label: 'a<b & c', points: [{ x: 2, y: 10 }] }], 'title <x>');
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    expect(svg.match(/<polyline /g)).toHaveLength(3);
    expect(svg).toContain('a&lt;b &amp; c');
    expect(svg).toContain('title &lt;x&gt;');
    expect(svg).not.toMatch(/NaN|Infinity/);
    // Every element that opens also closes (self-closing or paired).
    const opens = (svg.match(/<(text|svg)[ >]/g) ?? []).length;
    const closes = (svg.match(/<\/(text|svg)>/g) ?? []).length;
    expect(opens).toBe(closes);
  });

  it('an empty chart is still a valid document', () => {
    const svg = svgChart([], 'empty');
    expect(svg).toContain('</svg>');
    expect(svg).not.toMatch(/NaN|Infinity/);
  });

  it('the Markdown tables have a header, a separator and one row per entry', () => {
    const md = markdownResults(rows).split('\n');
    expect(md[0]).toMatch(/^\| impl \| pattern \|/);
    expect(md[1]).toMatch(/^\|---/);
    expect(md).toHaveLength(rows.length + 2);
    const cols = md[0].split('|').length;
    for (const line of md) expect(line.split('|').length).toBe(cols);
    const rt = markdownRatios([{ id: 'g', kind: 'goal', description: 'd', metric: 'opsPerSec', numerator: null, denominator: null,
      value: null, threshold: 2, comparison: '>=', met: null, perRound: [], note: 'pvio missing' }]);
    expect(rt).toContain('pvio missing');
  });

  it('the JSON report turns non-finite numbers into null', () => {
    const dir = mkdtempSync(join(tmpdir(), 'pvio-bench-'));
    const file = join(dir, 'r.json');
    const report = {
      machine: { cpus: 2 }, config: {}, results: [{ ...rows[0], opsPerSec: Infinity }], ratios: [], idle: [], durationMs: NaN, notes: [],
    } as unknown as BenchReport;
    writeJsonReport(file, report);
    const back = JSON.parse(readFileSync(file, 'utf8'));
    expect(back.results[0].opsPerSec).toBeNull();
    expect(back.durationMs).toBeNull();
    expect(back.machine.cpus).toBe(2);
  });
});

describe('bench ring arguments', () => {
  it('has full-run defaults and short --quick defaults', () => {
    const full = parseBenchRingArgs([]);
    expect([full.rounds, full.warmupMs, full.measureMs, full.quick, full.json]).toEqual([3, 150, 400, false, null]);
    const q = parseBenchRingArgs(['--quick', '--json', 'a.json', '--svg', 'b.svg', '--rounds', '4']);
    expect([q.rounds, q.warmupMs, q.measureMs, q.quick, q.json, q.svg]).toEqual([4, 30, 80, true, 'a.json', 'b.svg']);
  });

  it('rejects unknown options and missing values', async () => {
    expect(() => parseBenchRingArgs(['--frobnicate'])).toThrow(/unknown argument/);
    expect(() => parseBenchRingArgs(['--json'])).toThrow(/needs a value/);
    expect(() => parseBenchRingArgs(['--rounds', '0'])).toThrow(/≥ 1/);
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      expect(await benchRing(['--nope'])).toBe(2);
    } finally {
      err.mockRestore();
    }
  });
});

describe('bench ring --quick, baselines only (smoke)', () => {
  it('finishes in under 20 s and writes a report of the documented shape', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pvio-bench-'));
    const json = join(dir, 'b.json');
    const svg = join(dir, 'b.svg');
    let stdout = '';
    const out = vi.spyOn(process.stdout, 'write').mockImplementation((c: string | Uint8Array) => { stdout += String(c); return true; });
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    const t0 = performance.now();
    let code: number;
    try {
      code = await benchRing(['--quick', '--baselines-only', '--json', json, '--svg', svg]);
    } finally {
      out.mockRestore();
      err.mockRestore();
    }
    const seconds = (performance.now() - t0) / 1000;
    expect(code).toBe(0);
    expect(seconds).toBeLessThan(20);
    expect(stdout).toContain('| impl | pattern |');

    const r = JSON.parse(readFileSync(json, 'utf8'));
    expect(typeof r.machine.cpus).toBe('number');
    expect(r.machine.node).toBe(process.version);
    expect(Array.isArray(r.results)).toBe(true);
    expect(Array.isArray(r.ratios)).toBe(true);
    const numOrNull = (v: unknown) => v === null || (typeof v === 'number' && Number.isFinite(v));
    for (const row of r.results) {
      expect(['pvio', 'minimal-ring', 'messageport', 'ringbuf.js']).toContain(row.impl);
      expect(['one-way', 'round-trip']).toContain(row.pattern);
      for (const k of ['ringPages', 'inFlight', 'batch', 'waitMode', 'opsPerSec', 'nsPerOp', 'p50RttNs', 'p99RttNs',
        'notificationsPerOp', 'wakeupsPerOp', 'cpuNsPerOp']) {
        expect(row, `${row.impl} ${k}`).toHaveProperty(k);
      }
      for (const k of ['ringPages', 'batch', 'opsPerSec', 'nsPerOp', 'p50RttNs', 'p99RttNs', 'notificationsPerOp', 'wakeupsPerOp', 'cpuNsPerOp']) {
        expect(numOrNull(row[k]), `${row.impl} ${k}=${row[k]}`).toBe(true);
      }
      expect(row.waitMode === null || ['poll', 'block', 'adaptive'].includes(row.waitMode)).toBe(true);
      expect(row.error).toBeUndefined();
      // Sanity, not speed.
      expect(row.opsPerSec).toBeGreaterThan(0);
      expect(row.nsPerOp).toBeCloseTo(1e9 / row.opsPerSec, 3);
      expect(row.cpuNsPerOp).toBeGreaterThan(0);
      if (row.pattern === 'round-trip') {
        expect(row.p50RttNs).toBeGreaterThan(0);
        expect(row.p99RttNs).toBeGreaterThanOrEqual(row.p50RttNs);
      } else {
        expect(row.p50RttNs).toBeNull();
      }
      if (row.impl === 'minimal-ring') {
        expect(row.notificationsPerOp).not.toBeNull();
        expect(row.wakeupsPerOp).not.toBeNull();
        if (row.waitMode === 'block') expect(row.wakeupsPerOp).toBeGreaterThan(0);
        if (row.waitMode === 'poll') expect(row.wakeupsPerOp).toBe(0);
      } else {
        expect(row.ringPages).toBeNull();
        expect(row.notificationsPerOp).toBeNull();
      }
    }
    const impls = new Set(r.results.map((x: { impl: string }) => x.impl));
    expect([...impls].sort()).toEqual(['messageport', 'minimal-ring', 'ringbuf.js']);
    const modes = new Set(r.results.filter((x: { impl: string }) => x.impl === 'minimal-ring').map((x: { waitMode: string }) => x.waitMode));
    expect([...modes].sort()).toEqual(['adaptive', 'block', 'poll']);

    const ids = r.ratios.map((x: { id: string }) => x.id);
    for (const id of ['pvio-vs-minimal-throughput/1p', 'pvio-vs-messageport-throughput', 'pvio-rtt-vs-minimal-poll',
      'ringbufjs-rtt-vs-pvio', 'pvio-idle-cpu', 'minimal-vs-messageport-throughput']) expect(ids).toContain(id);
    for (const g of r.ratios.filter((x: { id: string }) => x.id.startsWith('pvio-'))) {
      expect(g.value).toBeNull(); // no pvio case in a baselines-only run
      expect(g.met).toBeNull();
    }
    const ref = r.ratios.find((x: { id: string }) => x.id === 'minimal-vs-messageport-throughput');
    expect(ref.value).toBeGreaterThan(0);
    expect(r.idle.find((x: { impl: string }) => x.impl === 'minimal-ring').coreFraction).toBeGreaterThanOrEqual(0);

    const s = readFileSync(svg, 'utf8');
    expect(s.startsWith('<svg')).toBe(true);
    expect(s).toContain('</svg>');
    expect(s).toContain('<polyline');
  }, 30_000);
});

describe('bench ring with a pvio case plugged in', () => {
  it('runs the pvio factory\'s cases beside their baselines, fills the goals and closes the module', async () => {
    // A stand-in pvio module: the floor ring relabelled as pvio, through the same API bench/pvio-ring.ts implements.
    const { MinimalRingSuite } = await import('../bench/minimal-ring.ts');
    let suite: InstanceType<typeof MinimalRingSuite> | null = null;
    const configs: RingCaseConfig[] = [];
    let closed = 0;
    const fake: PvioRingModule = {
      pvioRingCase: (config) => {
        configs.push(config);
        suite ??= new MinimalRingSuite(config.spinTokens);
        const inner = suite.case(config);
        return { ...inner, impl: 'pvio', run: (opts) => inner.run(opts), close: async () => { closed++; } };
      },
      pvioIdleCpu: (opts) => (suite ??= new MinimalRingSuite(opts.spinTokens)).idleCpu(opts),
      pvioClose: async () => { await suite?.close(); },
    };
    const dir = mkdtempSync(join(tmpdir(), 'pvio-bench-'));
    const json = join(dir, 'p.json');
    const out = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    let code: number;
    try {
      code = await benchRing(['--quick', '--rounds', '1', '--json', json],
        { loadPvio: async () => ({ module: fake, status: 'available', note: 'stand-in' }) });
    } finally {
      out.mockRestore();
      err.mockRestore();
    }
    expect(code).toBe(0);
    expect(configs.map((c) => `${c.ringPages}/${c.inFlight}/${c.batch}/${c.waitMode}`).sort()).toEqual(
      ['1/1/1/adaptive', '1/1/1/block', '1/1/1/poll', '1/32/8/adaptive', '1/32/8/block', '1/32/8/poll']);
    expect(configs.every((c) => c.pattern === 'round-trip' && c.spinTokens instanceof SharedArrayBuffer)).toBe(true);
    expect(closed).toBe(6);
    const r = JSON.parse(readFileSync(json, 'utf8'));
    expect(r.results.filter((x: { impl: string }) => x.impl === 'pvio')).toHaveLength(6);
    for (const id of ['pvio-vs-minimal-throughput/1p', 'pvio-vs-messageport-throughput', 'pvio-rtt-vs-minimal-poll', 'ringbufjs-rtt-vs-pvio',
      'pvio-notifications-at-saturation/1p-b8-block', 'pvio-idle-cpu']) {
      const g = r.ratios.find((x: { id: string }) => x.id === id);
      expect(g, id).toBeDefined();
      expect(g.value, `${id}: ${g.note ?? ''}`).not.toBeNull();
      expect(g.value, id).toBeGreaterThan(0);
      expect(typeof g.met, id).toBe('boolean');
    }
    expect(r.idle.map((x: { impl: string }) => x.impl).sort()).toEqual(['minimal-ring', 'pvio']);
  }, 30_000);
});
