/**
 * `pvio bench mmu`: the Xen paper's arguments about the CPU and MMU as numbers. The
 * same guest kernel workloads (hypervisor/mmu/workloads.ts), written once against
 * the model's vCPU, run in four modes — PV with batched updates, PV with one update
 * per hypercall, shadow paging, trap-and-emulate — and each run reports hypervisor
 * entries (by reason), validated PTEs, traps, TLB flushes, modelled cycles and the
 * measured time of the model doing the work.
 *
 * Rounds are interleaved (every mode of a workload once per round, in a rotated
 * order); counts are the same in every round (the model is deterministic: checked),
 * times are medians with their spread, and time ratios are medians of per-round
 * ratios.
 *
 * What the wall time is: by default each run is a guest domain whose vCPU (a worker
 * thread) runs the workload while the model's hypervisor runs in the hypervisor
 * thread, so every entry is a real synchronous hypercall through the vCPU's hypercall
 * page (hypervisor/mmu/host.ts, hosted.ts); the time is measured in the guest. Each
 * run is also made in this thread, where it must count exactly the same. With
 * `--one-thread` only the latter runs, and the time is the model's own work, an entry
 * being a function call. The modelled cycles carry a published cost per entry (see
 * hypervisor/mmu/accounting.ts).
 *
 * See bench/README.md, section `pvio bench mmu`.
 */
import { writeFileSync } from 'node:fs';
import { COST_SOURCES, parseCosts, type CostModel } from '../hypervisor/mmu/accounting.ts';
import { BATCH, KERNEL_MODES, type KernelMode } from '../hypervisor/mmu/guest-kernel.ts';
import { DEFAULT_SIZES, WORKLOADS, framesFor, runWorkload, type WorkloadName, type WorkloadResult, type WorkloadSizes } from '../hypervisor/mmu/workloads.ts';
import { Machine } from '../toolstack/machine.ts';
import { fileURLToPath } from 'node:url';

const MMU_GUEST = fileURLToPath(new URL('./guests/mmu-guest.ts', import.meta.url));
import { benchOptionsOrExit, formatSig, machineInfo, median, pairwiseRatioMedian, parseBenchArgs, writeJsonReport } from './harness.ts';

/** Usage text of `pvio bench mmu`. */
export const BENCH_MMU_USAGE = `usage: pvio bench mmu [--json FILE] [--svg FILE] [--rounds N] [--quick] [--one-thread]
                      [--mappings N] [--switches N] [--syscalls N] [--costs NAME=CYCLES,...]
  Runs the CPU/MMU model's workloads (address-space, process-switch, syscall) in four
  modes (pv-batched, pv-single, shadow, trap-emulate) and reports hypervisor entries,
  validated PTEs, traps, TLB flushes, modelled cycles and measured time per mode.
  --rounds N      interleaved rounds (default 5; --quick: 2)
  --one-thread    run the model in this thread only (every entry a function call);
                  by default each run is a guest domain and the model's hypervisor runs
                  in the hypervisor thread (every entry a real hypercall)
  --quick         small sizes (1024 mappings, 200 switches, 10000 system calls)
  --mappings N    address-space: user mappings built and touched (default ${DEFAULT_SIZES['address-space'].n})
  --switches N    process-switch: base-pointer changes (default ${DEFAULT_SIZES['process-switch'].n}, over 8 processes of 32 pages)
  --syscalls N    syscall: system calls (default ${DEFAULT_SIZES.syscall.n})
  --costs LIST    cycles per event, e.g. entry=1500,tlbMiss=40 (names: entry, validatePte, tlbFlush, tlbMiss, syscall, emulate)
  --json FILE     write rows, ratios and the configuration as JSON
  --svg FILE      write a chart of entries, modelled cycles and time per mode`;

/** Options of `pvio bench mmu`. */
export interface BenchMmuOptions {
  json?: string;
  svg?: string;
  rounds: number;
  sizes: Record<WorkloadName, WorkloadSizes>;
  costs: CostModel;
  quick: boolean;
  oneThread: boolean;
  help: boolean;
}

/**
 * Parses the arguments after `pvio bench mmu`.
 * @throws Error naming a bad argument.
 */
export function parseBenchMmuArgs(argv: readonly string[]): BenchMmuOptions {
  const { values, help } = parseBenchArgs(argv, {
    json: { kind: 'string' }, svg: { kind: 'string' }, rounds: { kind: 'number', min: 1, integer: true }, quick: { kind: 'flag' },
    mappings: { kind: 'number', min: 1, integer: true }, switches: { kind: 'number', min: 1, integer: true },
    syscalls: { kind: 'number', min: 1, integer: true }, costs: { kind: 'string' }, 'one-thread': { kind: 'flag' },
  });
  const quick = values.quick === true;
  const sizes: Record<WorkloadName, WorkloadSizes> = {
    'address-space': { n: (values.mappings as number | undefined) ?? (quick ? 1024 : DEFAULT_SIZES['address-space'].n) },
    'process-switch': { ...DEFAULT_SIZES['process-switch'], n: (values.switches as number | undefined) ?? (quick ? 200 : DEFAULT_SIZES['process-switch'].n) },
    syscall: { n: (values.syscalls as number | undefined) ?? (quick ? 10_000 : DEFAULT_SIZES.syscall.n) },
  };
  const costs = parseCosts(typeof values.costs === 'string' ? values.costs.split(',').filter(Boolean) : []);
  return {
    json: values.json as string | undefined, svg: values.svg as string | undefined,
    rounds: (values.rounds as number | undefined) ?? (quick ? 2 : 5), sizes, costs, quick, oneThread: values['one-thread'] === true, help,
  };
}

/**
 * One row of the report: a (mode, workload) pair over all rounds — the counts of one
 * run (the same in every round), `wallNs` the median time over the rounds.
 */
export interface MmuRow extends Omit<WorkloadResult, 'guestView'> {
  readonly wallNsMin: number;
  readonly wallNsMax: number;
  /** When the runs were hosted: the median time of the same runs in one thread (the model's own work), ns. */
  readonly oneThreadWallNs?: number;
}

/** A measured ratio next to what the Xen paper's mechanism predicts. */
export interface MmuRatio {
  readonly id: string;
  readonly description: string;
  readonly measured: number | null;
  /** What the mechanism predicts, as a number when it gives one. */
  readonly predicted: string;
  readonly goal?: string;
  readonly met?: boolean | null;
}

const pct = (a: number, b: number) => (b === 0 ? (a === 0 ? 1 : Infinity) : a / b);

/** The ratios the report states (entries, cycles, time), from the rows and the per-round times. */
function computeRatios(rows: readonly MmuRow[], times: Map<string, number[]>, oneThread: boolean): MmuRatio[] {
  const entryCost = oneThread ? 'an entry is a function call here' : 'an entry is a real hypercall to the hypervisor thread';
  const row = (w: WorkloadName, m: KernelMode) => rows.find((r) => r.workload === w && r.mode === m)!;
  const wall = (w: WorkloadName, a: KernelMode, b: KernelMode) => pairwiseRatioMedian(times.get(`${w}|${a}`)!, times.get(`${w}|${b}`)!);
  const as = (m: KernelMode) => row('address-space', m);
  const n = as('pv-batched').sizes.n;
  // What the mechanisms predict for n mappings: PV batched, one entry per BATCH updates
  // (n leaf updates plus a few table links) and the process's pin and switch; PV single,
  // one per update; shadow, one hidden fault per page when the kernel zeroes it through
  // its direct map and one when the user touches it.
  const perUpdate = n + 2 * Math.ceil(n / 512) + 8;
  const batches = Math.ceil(perUpdate / BATCH) + 2;
  const hidden = 2 * n;
  const out: MmuRatio[] = [];
  const shadowOverBatched = pct(as('shadow').hypervisorEntries, as('pv-batched').hypervisorEntries);
  out.push({
    id: 'address-space/entries/shadow-vs-pv-batched', description: `address space of ${n} mappings: hypervisor entries, shadow paging / PV batched`,
    measured: shadowOverBatched,
    predicted: `≈ ${formatSig(hidden / batches)}: ≈ ${hidden} hidden faults (two per page) against ≈ ${batches} entries (one per ${BATCH} updates, as Linux batches them; §3.3.3)`,
    goal: '≥ 10', met: shadowOverBatched >= 10,
  });
  out.push({
    id: 'address-space/entries/pv-single-vs-pv-batched', description: `address space of ${n} mappings: hypervisor entries, PV one update per hypercall / PV batched`,
    measured: pct(as('pv-single').hypervisorEntries, as('pv-batched').hypervisorEntries),
    predicted: `≈ ${formatSig(perUpdate / batches)}: ≈ ${perUpdate} updates one by one against ≈ ${batches} batches`,
  });
  out.push({
    id: 'address-space/entries/shadow-vs-pv-single', description: `address space of ${n} mappings: hypervisor entries, shadow / PV single`,
    measured: pct(as('shadow').hypervisorEntries, as('pv-single').hypervisorEntries),
    predicted: `≈ ${formatSig(hidden / perUpdate)}: two hidden faults per page against one hypercall per update`,
  });
  out.push({
    id: 'address-space/cycles/shadow-vs-pv-batched', description: 'address space: modelled cycles, shadow / PV batched',
    measured: pct(as('shadow').modelledCycles, as('pv-batched').modelledCycles), predicted: 'entries dominate: well above 1',
  });
  out.push({
    id: 'address-space/time/shadow-vs-pv-batched', description: 'address space: measured time, shadow / PV batched (median of per-round ratios)',
    measured: wall('address-space', 'shadow', 'pv-batched'), predicted: `> 1 when an entry costs more than queueing an update (${entryCost})`,
  });
  const ps = (m: KernelMode) => row('process-switch', m);
  out.push({
    id: 'process-switch/entries/trap-emulate-vs-pv-batched', description: 'process switch: hypervisor entries, trap-and-emulate / PV batched',
    measured: pct(ps('trap-emulate').hypervisorEntries, ps('pv-batched').hypervisorEntries),
    predicted: '3: mov cr3, cli and sti each trap, against one mmuext_op (virtual cli/sti are a store to the upcall mask, §2.1.2)',
  });
  out.push({
    id: 'process-switch/entries-per-switch/pv-batched', description: 'process switch: hypervisor entries per switch, PV batched',
    measured: ps('pv-batched').hypervisorEntries / ps('pv-batched').sizes.n, predicted: '1 (NEW_BASEPTR)',
  });
  const sc = (m: KernelMode) => row('syscall', m);
  out.push({
    id: 'syscall/entries-per-call/pv-batched', description: 'system call: hypervisor entries per call with the fast handler (PV)',
    measured: sc('pv-batched').hypervisorEntries / sc('pv-batched').sizes.n, predicted: '0: the validated fast handler is reached without ring 0 (§2.1.2)',
  });
  out.push({
    id: 'syscall/entries-per-call/trap-emulate', description: 'system call: hypervisor entries per call through the hypervisor (trap-and-emulate)',
    measured: sc('trap-emulate').hypervisorEntries / sc('trap-emulate').sizes.n, predicted: '1',
  });
  out.push({
    id: 'syscall/cycles/trap-emulate-vs-pv-batched', description: 'system call: modelled cycles, trap-and-emulate / PV',
    measured: pct(sc('trap-emulate').modelledCycles, sc('pv-batched').modelledCycles), predicted: '(entry + syscall) / syscall',
  });
  out.push({
    id: 'syscall/time/trap-emulate-vs-pv-batched', description: 'system call: measured time, trap-and-emulate / PV (median of per-round ratios)',
    measured: wall('syscall', 'trap-emulate', 'pv-batched'), predicted: oneThread ? '≈ 1 here: an entry is a function call' : '> 1: each call is a hypercall round trip (a few µs to tens of µs here), the fast handler a function call',
  });
  return out;
}

/** A vega-lite chart: entries, modelled cycles and time per mode, one panel each, bars by workload. */
async function chart(rows: readonly MmuRow[], title: string): Promise<string> {
  const vega = await import('vega');
  const { compile } = await import('vega-lite');
  const values = rows.flatMap((r) => [
    { workload: r.workload, mode: r.mode, metric: 'hypervisor entries', value: r.hypervisorEntries },
    { workload: r.workload, mode: r.mode, metric: 'modelled Mcycles', value: r.modelledCycles / 1e6 },
    { workload: r.workload, mode: r.mode, metric: 'measured ms (median)', value: r.wallNs / 1e6 },
  ]);
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title, data: { values },
    facet: { column: { field: 'metric', type: 'nominal', title: null, sort: ['hypervisor entries', 'modelled Mcycles', 'measured ms (median)'] } },
    resolve: { scale: { y: 'independent' } },
    spec: {
      width: 260, height: 260, mark: { type: 'bar', tooltip: true },
      encoding: {
        x: { field: 'workload', type: 'nominal', title: null, sort: [...WORKLOADS] },
        xOffset: { field: 'mode', type: 'nominal', sort: [...KERNEL_MODES] },
        y: { field: 'value', type: 'quantitative', title: null, scale: { type: 'symlog' } },
        color: { field: 'mode', type: 'nominal', sort: [...KERNEL_MODES], title: 'mode' },
      },
    },
    config: { font: 'sans-serif' },
  };
  const view = new vega.View(vega.parse(compile(spec as never).spec), { renderer: 'none' });
  return view.toSVG();
}

/** Runs `pvio bench mmu` with the arguments after `mmu`. @returns the exit code. */
export async function benchMmu(argv: string[]): Promise<number> {
  const parsed = benchOptionsOrExit(argv, parseBenchMmuArgs, BENCH_MMU_USAGE, 'mmu');
  if (typeof parsed === 'number') return parsed;
  const o = parsed;
  const t0 = performance.now();
  const machine = machineInfo();
  const results = new Map<string, WorkloadResult[]>();
  const log = (s: string) => process.stderr.write(`${s}\n`);
  const machine_ = o.oneThread ? null : await Machine.boot({ onConsole: () => {} });
  let runs = 0;
  /** One run: in a guest domain against the hypervisor thread, or in this thread. */
  const run = async (mode: KernelMode, w: WorkloadName): Promise<WorkloadResult> => {
    if (!machine_) return runWorkload(mode, w, o.sizes[w], o.costs);
    const memoryMiB = Math.ceil((framesFor(w, o.sizes[w]) * 4096) / 2 ** 20) + 16;
    const g = await machine_.createGuest({ name: `mmu-${++runs}`, memoryMiB, vcpus: 1, kernel: MMU_GUEST, args: { mode, workload: w, sizes: o.sizes[w] } });
    const exit = await g.exit;
    if (exit.error !== undefined || !exit.value) throw new Error(`${w} ${mode} in a guest: ${exit.error ?? 'no result'}`);
    const r = (exit.value as { result: WorkloadResult }).result;
    // The same run in one thread counts exactly the same (the model is deterministic).
    const local = runWorkload(mode, w, o.sizes[w], o.costs);
    if (local.hypervisorEntries !== r.hypervisorEntries || local.validatedPtes !== r.validatedPtes || local.tlbFlushes !== r.tlbFlushes) {
      throw new Error(`${w} ${mode}: the hosted run counted ${r.hypervisorEntries} entries, one thread ${local.hypervisorEntries}`);
    }
    return { ...r, modelledCycles: local.modelledCycles, oneThreadWallNs: local.wallNs } as WorkloadResult;
  };
  try {
  for (let round = 0; round < o.rounds; round++) {
    for (const w of WORKLOADS) {
      for (let i = 0; i < KERNEL_MODES.length; i++) {
        const m = KERNEL_MODES[(i + round) % KERNEL_MODES.length];
        const r = await run(m, w);
        const key = `${w}|${m}`;
        if (!results.has(key)) results.set(key, []);
        results.get(key)!.push(r);
        log(`[r${round + 1}/${o.rounds}] ${w} ${m}: ${r.hypervisorEntries} entries, ${(r.wallNs / 1e6).toFixed(1)} ms`);
      }
    }
  }
  } finally {
    await machine_?.shutdown();
  }
  // The model is deterministic: every round counts the same; the guest sees the same in every mode.
  const notes: string[] = [];
  for (const [key, rs] of results) {
    for (const r of rs.slice(1)) if (r.hypervisorEntries !== rs[0].hypervisorEntries || r.validatedPtes !== rs[0].validatedPtes) throw new Error(`${key}: counts differ between rounds`);
  }
  for (const w of WORKLOADS) {
    const views = KERNEL_MODES.map((m) => JSON.stringify(results.get(`${w}|${m}`)![0].guestView));
    if (new Set(views).size !== 1) throw new Error(`${w}: the guest saw different memory or faults in different modes`);
  }
  const times = new Map([...results].map(([k, rs]) => [k, rs.map((r) => r.wallNs)]));
  const rows: MmuRow[] = [];
  for (const w of WORKLOADS) {
    for (const m of KERNEL_MODES) {
      const rs = results.get(`${w}|${m}`)!;
      const r = rs[0];
      const ts = rs.map((x) => x.wallNs);
      rows.push({
        mode: m, workload: w, sizes: r.sizes, hypervisorEntries: r.hypervisorEntries, validatedPtes: r.validatedPtes, traps: r.traps,
        tlbFlushes: r.tlbFlushes, tlbMisses: r.tlbMisses, modelledCycles: r.modelledCycles, wallNs: median(ts)!, wallNsMin: Math.min(...ts),
        wallNsMax: Math.max(...ts), entries: r.entries, fastSyscalls: r.fastSyscalls, emulations: r.emulations,
        ...(o.oneThread ? {} : { oneThreadWallNs: median(rs.map((x) => (x as WorkloadResult & { oneThreadWallNs: number }).oneThreadWallNs))! }),
      });
    }
  }
  const ratios = computeRatios(rows, times, o.oneThread);
  const durationMs = performance.now() - t0;
  const fmtN = (x: number) => x.toLocaleString('en-US');
  const table = [
    '| workload | mode | hypervisor entries | by reason | validated PTEs | traps | TLB flushes | TLB misses | modelled cycles | time, median (min–max) |',
    '|---|---|---:|---|---:|---:|---:|---:|---:|---:|',
    ...rows.map((r) => `| ${r.workload} | ${r.mode} | ${fmtN(r.hypervisorEntries)} | ${Object.entries(r.entries).map(([k, v]) => `${k} ${fmtN(v)}`).join(', ') || '–'} | ${fmtN(r.validatedPtes)} | ${fmtN(r.traps)} | ${fmtN(r.tlbFlushes)} | ${fmtN(r.tlbMisses)} | ${fmtN(Math.round(r.modelledCycles))} | ${(r.wallNs / 1e6).toFixed(2)} ms (${(r.wallNsMin / 1e6).toFixed(2)}–${(r.wallNsMax / 1e6).toFixed(2)}) |`),
  ];
  const ratioTable = [
    '| ratio | measured | the mechanism predicts | goal | met |', '|---|---:|---|---|---|',
    ...ratios.map((x) => `| ${x.description} | ${x.measured === null ? '–' : formatSig(x.measured)} | ${x.predicted} | ${x.goal ?? ''} | ${x.met === undefined ? '' : x.met ? 'yes' : '**no**'} |`),
  ];
  const sizes = `address-space ${o.sizes['address-space'].n} mappings; process-switch ${o.sizes['process-switch'].n} switches over ${o.sizes['process-switch'].procs} processes of ${o.sizes['process-switch'].pages} pages; syscall ${o.sizes.syscall.n} calls`;
  process.stdout.write([
    '## pvio bench mmu', '',
    `${machine.cpus} CPUs (${machine.cpuModel}), Node ${machine.node}. ${o.rounds} rounds, modes interleaved. ${sizes}. ` +
    `Counts are the same in every round and equal to a run in one thread; ${o.oneThread ? 'times are the model\'s own work in this thread' : 'times are measured in the guest, every entry a hypercall to the hypervisor thread'} (medians).`, '',
    ...table, '', '### Ratios, measured and predicted', '', ...ratioTable, '',
    `- costs (cycles): ${Object.entries(o.costs).map(([k, v]) => `${k} ${v}`).join(', ')}; entry from ${COST_SOURCES.entry}; the others are pvio's assumptions`,
    ...notes.map((n) => `- note: ${n}`),
    `- duration: ${(durationMs / 1000).toFixed(1)} s`, '',
  ].join('\n'));
  const report = {
    machine,
    config: {
      command: 'pvio bench mmu', argv, rounds: o.rounds, sizes: o.sizes, costs: o.costs, costSources: COST_SOURCES, batch: BATCH,
      modes: {
        'pv-batched': 'direct paging; PTE updates queued and issued as one multicall/mmu_update per 32 (Linux\'s MC_BATCH/MC_ARGS); mmuext_op for base pointer and invlpg; virtual cli/sti (upcall mask); fast syscall handler',
        'pv-single': 'direct paging; one hypercall per update; otherwise as pv-batched',
        shadow: 'shadow paging (guest tables hold pfns, written with plain stores; writes to shadowed tables trapped and emulated; shadow filled lazily on hidden faults); mmuext_op for base pointer and invlpg; virtual cli/sti; fast syscall handler',
        'trap-emulate': 'shadow paging; mov cr3, invlpg, cli, sti trapped and emulated; system calls bounced through the hypervisor',
      },
      host: o.oneThread ? 'one-thread' : 'hypervisor-thread',
      wallNs: o.oneThread ? 'the model\'s own work in this thread, ns; an entry is a function call here'
        : 'measured in the guest domain\'s vCPU worker, ns; every entry a synchronous hypercall to the hypervisor thread',
      units: { modelledCycles: 'cycles', wallNs: 'ns' },
    },
    rows, ratios, durationMs, notes,
  };
  if (o.json) writeJsonReport(o.json, report);
  if (o.svg) writeFileSync(o.svg, await chart(rows, `pvio bench mmu: ${sizes} (Node ${machine.node})`));
  return 0;
}
