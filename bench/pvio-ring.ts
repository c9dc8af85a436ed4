/**
 * pvio's case in `pvio bench ring`: the blkif ring between two real domains — a
 * frontend that initialises and grants the ring (one extent of 1, 4 or 16 pages)
 * and allocates the event channel, a backend that maps it and binds the channel —
 * with pvio's FrontRing/BackRing, blkif codec (each request copied out once, each
 * response written whole), event channels (pair pages and wake words) and waits
 * (poll / block / adaptive, spinning only with a spin token). The hypervisor and
 * dom0 run too (they set the pair up), sharing the bench's two spin tokens.
 *
 * One machine serves every pvio case of a run; pairs are kept per ring size and
 * reused by every case of that size (see bench/pvio-pair.ts).
 */
import { Machine } from '../toolstack/machine.ts';
import { PvioRingPair } from './pvio-pair.ts';
import type { Case, IdleCpuMeasurement, IdleCpuOptions, Measurement, RingCaseConfig, RunOptions } from './harness.ts';
import { ringEntriesFor } from './harness.ts';

let machine: Promise<Machine> | null = null;
const pairs = new Map<number, Promise<PvioRingPair>>();

function getMachine(spinTokens: SharedArrayBuffer): Promise<Machine> {
  machine ??= Machine.boot({ spinTokenBuffer: spinTokens });
  return machine;
}

function getPair(pages: number, spinTokens: SharedArrayBuffer): Promise<PvioRingPair> {
  let p = pairs.get(pages);
  if (!p) {
    p = getMachine(spinTokens).then(async (m) => {
      const pair = await PvioRingPair.open(m, Math.log2(pages), 0, `-${pages}p`);
      // JIT warm-up of both loops before the first measured case, as the baselines'
      // long-lived workers get over their runs: a compile pause longer than a peer's
      // spin turns into a sleep and would be charged to the first case measured.
      await pair.run({ mode: 'poll', depth: 8, batch: 4, count: 300_000 }, 'poll');
      await pair.run({ mode: 'adaptive', depth: 1, batch: 1, count: 50_000 }, 'adaptive', 60_000, 1);
      return pair;
    });
    pairs.set(pages, p);
  }
  return p;
}

/**
 * Builds one pvio ring case (round trip). Both ends use `waitMode`; the frontend
 * publishes `batch` requests per `req_prod` store and the backend publishes its
 * responses every `batch` (and at the end of each pass).
 */
export function pvioRingCase(config: RingCaseConfig): Case {
  return {
    impl: 'pvio',
    pattern: 'round-trip',
    ringPages: config.ringPages,
    ringEntries: ringEntriesFor(config.ringPages),
    inFlight: config.inFlight,
    batch: config.batch,
    waitMode: config.waitMode,
    async run(opts: RunOptions): Promise<Measurement> {
      const pair = await getPair(config.ringPages, config.spinTokens);
      const r = await pair.run(
        { mode: config.waitMode, depth: config.inFlight, batch: config.batch, warmupMs: opts.warmupMs, measureMs: opts.measureMs },
        config.waitMode, opts.timeoutMs, config.batch,
      );
      if (r.front.errors || r.back.seqErrors) throw new Error(`pvio ring: ${r.front.errors + r.back.seqErrors} sequence errors`);
      const back = PvioRingPair.backendWindow(r.back, r.front.firstSeq, r.front.lastSeq);
      return {
        ops: r.front.ops,
        elapsedNs: r.front.elapsedNs,
        rttNs: r.front.rttNs,
        notifications: r.front.notifications + back.notifications,
        wakeups: r.front.wakeups + back.wakeups,
        cpuUs: r.front.cpuUs,
      };
    },
  };
}

/**
 * A connected pvio ring pair in adaptive mode with no traffic: process-wide CPU
 * time over `idleMs` (hypervisor, dom0, both guests and the main thread included).
 */
export async function pvioIdleCpu(opts: IdleCpuOptions): Promise<IdleCpuMeasurement> {
  const pair = await getPair(opts.ringPages, opts.spinTokens);
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const sides = await pair.idle(opts.idleMs);
  const c = process.cpuUsage(c0);
  const ms = performance.now() - t0;
  const cpuUs = c.user + c.system;
  return { idleMs: ms, cpuUs, coreFraction: cpuUs / (ms * 1000), wakeups: sides.reduce((n, s) => n + s.wakeups, 0) };
}

/** Ends every pair and the machine. Never throws. */
export async function pvioClose(): Promise<void> {
  try {
    for (const p of pairs.values()) await (await p).close().catch(() => undefined);
    pairs.clear();
    if (machine) await (await machine).shutdown();
  } catch {
    /* best effort */
  } finally {
    machine = null;
  }
}
