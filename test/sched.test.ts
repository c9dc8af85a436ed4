// Per-domain scheduling parameters (the credit scheduler's weight and cap), set from
// the toolstack and applied to the hypervisor's hypercall service and to dom0's
// blkback between guests:
// - the decision functions on their own: the credit scheduler's choice per pass
//   (2:1 for weights 512:256 when both domains have calls pending, work-conserving
//   when one is alone, caps park a domain until its next period) and blkback's
//   weighted round-robin over fake rings;
// - on a running machine: the parameters' round trip and range errors (EINVAL, ESRCH)
//   through Machine and through `pvio sched-credit` (one line, non-zero status);
// - two guests reading their own disks flat out from one dom0 whose store costs CPU
//   per request (so dom0 is the bottleneck, the only case where weights can show):
//   equal weights → equal requests served within 1.3×; 512 vs 256 → 1.5× to 2.7×,
//   either way round;
// - two guests hammering hypercalls: with 512:256, the calls served while both had
//   one pending are ≈2:1, and a cap of 1% keeps a domain's calls to 1% of the
//   hypervisor's time (10 ms/s; uncapped they take far more).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { CSCHED_DEFAULT_WEIGHT, XEN_ERRNO } from '../hypervisor/abi.ts';
import { CreditScheduler, SCHED_CAP_PERIOD_MS, SCHED_CAP_UNCHANGED, SCHED_WEIGHT_UNCHANGED } from '../hypervisor/sched-credit.ts';
import { WeightedRingScheduler, type WeightedServable } from '../rings/weighted-scheduler.ts';
import { DomctlError, Machine, type GuestHandle } from '../toolstack/machine.ts';
import { ControlServer } from '../toolstack/control.ts';
import { machineHandlers } from '../toolstack/control-ops.ts';
import { parseDiskSpec } from '../toolstack/config.ts';
import { checkWeightedShares, shareRatio, shareWindow, guestPath, randomImage } from './helpers.ts';

// ---------------------------------------------------------------------------
// The hypervisor's decision, on its own

/** Runs `passes` passes of `choose` over the pending domids; @returns calls served per domid. */
function runPasses(s: CreditScheduler, pending: number[], passes: number): Map<number, number> {
  const served = new Map<number, number>();
  const pick: boolean[] = [];
  for (let p = 0; p < passes; p++) {
    s.choose(pending, pending.length, pick, 0);
    pending.forEach((d, i) => {
      if (pick[i]) served.set(d, (served.get(d) ?? 0) + 1);
    });
  }
  return served;
}

describe('credit scheduler: parameters and the choice of each pass', () => {
  it('putinfo/getinfo: defaults, unchanged markers, range errors change nothing', () => {
    const s = new CreditScheduler();
    expect(s.params(1)).toEqual({ weight: CSCHED_DEFAULT_WEIGHT, cap: 0 });
    expect(s.active).toBe(false);
    expect(s.put(1, 2, { weight: 512, cap: SCHED_CAP_UNCHANGED })).toBe(0);
    expect(s.params(1)).toEqual({ weight: 512, cap: 0 });
    expect(s.active).toBe(true);
    expect(s.put(1, 2, { weight: SCHED_WEIGHT_UNCHANGED, cap: 200 })).toBe(0);
    expect(s.params(1)).toEqual({ weight: 512, cap: 200 });
    for (const bad of [{ weight: 65536, cap: 0 }, { weight: -1, cap: 0 }, { weight: 1.5, cap: 0 }, { weight: 300, cap: 201 }, { weight: 300, cap: -1 }]) {
      expect(s.put(1, 2, bad), JSON.stringify(bad)).toBe(-XEN_ERRNO.EINVAL);
      expect(s.params(1)).toEqual({ weight: 512, cap: 200 });
    }
    expect(s.put(1, 2, { weight: CSCHED_DEFAULT_WEIGHT, cap: 0 })).toBe(0);
    expect(s.active).toBe(false);
    s.put(1, 2, { weight: 9, cap: 0 });
    s.forget(1);
    expect(s.active).toBe(false);
    expect(s.params(1)).toEqual({ weight: CSCHED_DEFAULT_WEIGHT, cap: 0 });
  });

  it('weights 512:256 with one call each pending: 2:1, the heavier never deferred', () => {
    const s = new CreditScheduler();
    s.put(1, 1, { weight: 512, cap: 0 });
    const served = runPasses(s, [1, 2], 300);
    expect(served.get(1)).toBe(300);
    expect(served.get(2)).toBe(150);
    const st = s.snapshot();
    expect(st.find((d) => d.domid === 1)).toMatchObject({ contendedServed: 300, deferred: 0 });
    expect(st.find((d) => d.domid === 2)).toMatchObject({ contendedServed: 150, deferred: 150 });
  });

  it('weights 3:1 with two calls each pending: the heavier has both served each pass, the lighter a third as many', () => {
    const s = new CreditScheduler();
    s.put(1, 2, { weight: 768, cap: 0 });
    const served = runPasses(s, [1, 2, 1, 2], 300);
    expect(served.get(1)).toBe(600);
    expect(served.get(2)).toBe(200);
  });

  it('is work-conserving: a domain alone with calls pending is served every pass, and banks nothing', () => {
    const s = new CreditScheduler();
    s.put(1, 1, { weight: 65535, cap: 0 });
    s.put(2, 1, { weight: 1, cap: 0 });
    expect(runPasses(s, [2, 2], 50).get(2)).toBe(100);
    // Back in contention, the light domain gets about its 1/65535 share, not a burst.
    const served = runPasses(s, [1, 2], 1000);
    expect(served.get(1)).toBe(1000);
    expect(served.get(2) ?? 0).toBeLessThanOrEqual(1);
  });

  it('a cap parks its domain once its budget for the period is spent, until the next period', () => {
    const s = new CreditScheduler();
    s.put(1, 1, { weight: SCHED_WEIGHT_UNCHANGED, cap: 10 }); // 1 ms per 10 ms period
    expect(s.hasCaps).toBe(true);
    const pick: boolean[] = [];
    const t0 = 1000;
    expect(s.choose([1], 1, pick, t0)).toBe(1);
    s.charge(1, 0.6);
    expect(s.choose([1], 1, pick, t0 + 1)).toBe(1);
    s.charge(1, 0.9); // 1.5 ms used: 0.5 ms of debt
    expect(s.choose([1, 2], 2, pick, t0 + 2)).toBe(1);
    expect(pick).toEqual([false, true]); // the other domain is served; the capped one waits
    expect(s.idleWaitMs(t0 + 2, 1000)).toBeCloseTo(SCHED_CAP_PERIOD_MS - 2, 5);
    // Next period: 1 ms more, minus the 0.5 ms of debt.
    expect(s.choose([1], 1, pick, t0 + SCHED_CAP_PERIOD_MS)).toBe(1);
    s.charge(1, 0.5);
    expect(s.choose([1], 1, pick, t0 + SCHED_CAP_PERIOD_MS + 1)).toBe(0);
    expect(s.snapshot()[0]).toMatchObject({ domid: 1, cap: 10, capDeferred: 2 });
    expect(s.snapshot()[0].cappedServiceMs).toBeCloseTo(2, 5);
  });
});

// ---------------------------------------------------------------------------
// blkback's weighted round-robin, over fake rings

/** A ring that always has `backlog` requests waiting (it is refilled as it is served). */
class FakeRing implements WeightedServable {
  readonly counters = { requests: 0 };
  constructor(readonly frontDomid: number, public backlog = Infinity) {}
  serve(budget: number): boolean {
    const n = Math.min(budget, this.backlog);
    this.counters.requests += n;
    this.backlog -= n;
    return this.backlog > 0;
  }
}

/** Lets the scheduler run `rounds` rounds (each round ends in a setImmediate). */
async function rounds(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
}

describe('blkback: weighted round-robin between guests', () => {
  it('defaults: plain round-robin, up to maxBatch per ring per round', async () => {
    const s = new WeightedRingScheduler<FakeRing>({ maxBatch: 32 });
    const a = new FakeRing(1, 100);
    const b = new FakeRing(2, 100);
    s.kick(a);
    s.kick(b);
    await Promise.resolve();
    expect([a.counters.requests, b.counters.requests]).toEqual([32, 32]);
    await rounds(5);
    expect([a.counters.requests, b.counters.requests]).toEqual([100, 100]);
    expect(s.counters.weightedRounds).toBe(0);
  });

  it('512:256: twice the requests per round while both are backlogged; a lone guest gets every round', async () => {
    const s = new WeightedRingScheduler<FakeRing>({ maxBatch: 32 });
    s.setWeight(1, 512);
    expect(s.isWeighted()).toBe(true);
    const a = new FakeRing(1);
    const b = new FakeRing(2);
    s.kick(a);
    s.kick(b);
    await rounds(50);
    expect(a.counters.requests / b.counters.requests).toBeCloseTo(2, 1);
    // The heavy guest goes idle: the light one is served in full.
    a.backlog = 0;
    const b0 = b.counters.requests;
    const r0 = s.counters.rounds;
    await rounds(20);
    expect((b.counters.requests - b0) / (s.counters.rounds - r0)).toBeGreaterThan(30);
    b.backlog = 0;
    await rounds(2);
  });

  it('a guest\'s rings share its weight; rings queued before a weight change keep being served', async () => {
    const s = new WeightedRingScheduler<FakeRing>({ maxBatch: 32 });
    const a1 = new FakeRing(1);
    const a2 = new FakeRing(1);
    const b = new FakeRing(2);
    for (const r of [a1, a2, b]) s.kick(r);
    await Promise.resolve(); // one plain round: 32 each
    s.setWeight(2, 512); // b's guest now weighs twice a's, whose two rings share a's share
    const before = [a1, a2, b].map((r) => r.counters.requests);
    await rounds(40);
    const [da1, da2, db] = [a1, a2, b].map((r, i) => r.counters.requests - before[i]);
    expect(da1 / da2).toBeGreaterThan(0.8);
    expect(da1 / da2).toBeLessThan(1.25);
    expect(db / (da1 + da2)).toBeCloseTo(2, 1);
    s.setWeight(2, CSCHED_DEFAULT_WEIGHT); // back to plain round-robin, the rings still queued
    expect(s.isWeighted()).toBe(false);
    const mid = [a1, a2, b].map((r) => r.counters.requests);
    await rounds(3);
    const plain = [a1, a2, b].map((r, i) => r.counters.requests - mid[i]);
    expect(plain[0]).toBeGreaterThan(0);
    expect(plain[0] % 32).toBe(0);
    expect(plain).toEqual([plain[0], plain[0], plain[0]]);
    for (const r of [a1, a2, b]) r.backlog = 0;
    await rounds(2);
  });
});

// ---------------------------------------------------------------------------
// A running machine

const PVIO = fileURLToPath(new URL('../toolstack/bin/pvio.mjs', import.meta.url));
const BUSY_STORE = fileURLToPath(new URL('./fixtures/busy-store.ts', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'pvio-sched-'));
const runtime = join(dir, 'run');
const savedRuntime = process.env.XDG_RUNTIME_DIR;
let m: Machine;
let control: ControlServer;

beforeAll(async () => {
  m = await Machine.boot({ onConsole: () => {} });
  process.env.XDG_RUNTIME_DIR = runtime; // the control socket goes here, not in the user's directory
  control = await ControlServer.listen('sched', machineHandlers(m, () => {}));
}, 60_000);
afterAll(async () => {
  await control?.close();
  await m?.shutdown();
  if (savedRuntime === undefined) delete process.env.XDG_RUNTIME_DIR;
  else process.env.XDG_RUNTIME_DIR = savedRuntime;
  rmSync(dir, { recursive: true, force: true });
});

/** Runs `pvio ARGS --machine sched` with a deadline. */
function pvio(args: string[], timeoutMs = 30_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [PVIO, ...args, '--machine', 'sched'], { env: { ...process.env, XDG_RUNTIME_DIR: runtime }, timeout: timeoutMs },
      (e, stdout, stderr) => resolve({ code: e ? (typeof e.code === 'number' ? e.code : 1) : 0, stdout, stderr }));
  });
}

/** The DomctlError `p` rejects with. */
async function domctlError(p: Promise<unknown>): Promise<DomctlError> {
  const e = await p.then(() => null, (x: unknown) => x);
  expect(e).toBeInstanceOf(DomctlError);
  return e as DomctlError;
}

describe('scheduling parameters set from the toolstack', () => {
  it('Machine: set/get round trip; out-of-range values are EINVAL and change nothing; no domain is ESRCH', async () => {
    const g = await m.createGuest({ name: 'params', memoryMiB: 16, vcpus: 2, kernel: guestPath('forever.ts') });
    try {
      expect(await m.getSchedParams(g.domid)).toEqual({ weight: 256, cap: 0 });
      expect(await m.getSchedParams(0)).toEqual({ weight: 256, cap: 0 });
      expect(await m.setSchedParams(g.domid, { weight: 512 })).toEqual({ weight: 512, cap: 0 });
      expect(await m.setSchedParams(g.domid, { cap: 150 })).toEqual({ weight: 512, cap: 150 });
      expect(await m.setSchedParams(g.domid, {})).toEqual({ weight: 512, cap: 150 });
      for (const bad of [{ weight: 0 }, { weight: 65536 }, { weight: 2.5 }, { weight: -3 }, { cap: 201 }, { cap: -1 }, { cap: 65535 }]) {
        const e = await domctlError(m.setSchedParams(g.domid, bad));
        expect(e.errno, JSON.stringify(bad)).toBe(XEN_ERRNO.EINVAL);
        expect(e.code).toBe('PVIO_ERR_DOMCTL');
        expect(e.message).toMatch(/out of range.*\(EINVAL\)$/);
      }
      expect((await domctlError(m.setSchedParams(g.domid, { cap: 201 }))).message).toBe(`cap 201 is out of range for dom${g.domid}: 0 to 200 (100 × its 2 vCPUs) (EINVAL)`);
      expect(await m.getSchedParams(g.domid)).toEqual({ weight: 512, cap: 150 });
      expect((await domctlError(m.getSchedParams(999))).errno).toBe(XEN_ERRNO.ESRCH);
      expect((await domctlError(m.setSchedParams(999, { weight: 5 }))).errno).toBe(XEN_ERRNO.ESRCH);
    } finally {
      await m.destroy(g.domid);
      await g.exit;
    }
  });

  it('pvio sched-credit: lists, sets, and refuses bad input with one line and a non-zero status', async () => {
    const g = await m.createGuest({ name: 'cli', memoryMiB: 16, vcpus: 1, kernel: guestPath('forever.ts') });
    try {
      const all = await pvio(['sched-credit']);
      expect(all.code, all.stderr).toBe(0);
      const lines = all.stdout.trim().split('\n');
      expect(lines[0]).toMatch(/^Name\s+ID\s+Weight\s+Cap$/);
      expect(lines).toContainEqual(expect.stringMatching(/^Domain-0\s+0\s+256\s+0$/));
      expect(lines).toContainEqual(expect.stringMatching(new RegExp(`^cli\\s+${g.domid}\\s+256\\s+0$`)));

      const set = await pvio(['sched-credit', 'cli', '-w', '300', '--cap', '20']);
      expect(set.code, set.stderr).toBe(0);
      expect(set.stdout).toBe('');
      expect(await m.getSchedParams(g.domid)).toEqual({ weight: 300, cap: 20 });
      const one = await pvio(['sched-credit', 'cli']);
      expect(one.stdout.trim().split('\n')[1]).toMatch(new RegExp(`^cli\\s+${g.domid}\\s+300\\s+20$`));

      const cases: Array<[string[], number, RegExp]> = [
        [['sched-credit', 'cli', '-w', '70000'], 1, /^pvio: weight 70000 is out of range: 1 to 65535 \(EINVAL\)\n$/],
        [['sched-credit', 'cli', '-w', '0'], 1, /^pvio: weight 0 is out of range: 1 to 65535 \(EINVAL\)\n$/],
        [['sched-credit', 'cli', '-c', '101'], 1, new RegExp(`^pvio: cap 101 is out of range for dom${g.domid}: 0 to 100 \\(100 × its 1 vCPU\\) \\(EINVAL\\)\\n$`)],
        [['sched-credit', 'cli', '-w', 'lots'], 2, /^pvio: option '--weight' needs a whole number, got 'lots'\n$/],
        [['sched-credit', '-w', '300'], 2, /^pvio: option '--weight' needs the domain's NAME\n$/],
        [['sched-credit', 'nosuch'], 1, /^pvio: no domain named 'nosuch'\n$/],
        [['list', '-w', '300'], 2, /^pvio: option '--weight' does not apply to 'list'\n$/],
      ];
      for (const [args, code, msg] of cases) {
        const r = await pvio(args);
        expect(r.code, args.join(' ')).toBe(code);
        expect(r.stderr, args.join(' ')).toMatch(msg);
        expect(r.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
      }
      expect(await m.getSchedParams(g.domid)).toEqual({ weight: 300, cap: 20 });
    } finally {
      await m.destroy(g.domid);
      await g.exit;
    }
  }, 60_000);
});

describe('dom0 serves guests\' disks by their weights', () => {
  it('two guests reading flat out: equal weights ≈ equal service; 512 vs 256 ≈ 2:1, either way round', async () => {
    const guests: GuestHandle[] = [];
    try {
      for (const name of ['ra', 'rb']) {
        const img = randomImage(dir, `${name}.img`, 4 << 20);
        // Every request costs dom0 60 µs of CPU: dom0, not the guests, is the bottleneck.
        const disk = parseDiskSpec(`store=module,module=${BUSY_STORE},${img.path},xvda,r`, dir);
        guests.push(await m.createGuest({ name, memoryMiB: 32, vcpus: 1, kernel: guestPath('sched-reader.ts'), disks: [disk] }));
      }
      const [a, b] = guests;
      // 256 readers of 4 KiB each: a guest keeps requests waiting for many rounds, so a few ms
      // in which the host does not run its thread leave its ring backlogged.
      for (const g of guests) await g.call('start', { parallel: 256, sectors: 8 });
      const served = async (): Promise<[number, number]> => {
        const s = (await m.dom0Stats()) as { disks: Record<string, { requests: number }> };
        return [s.disks['ra/xvda'].requests, s.disks['rb/xvda'].requests];
      };
      /** Requests dom0 served each guest over one second, after a settling time. */
      const window = shareWindow(served);
      const ratio = shareRatio;

      const equal = await window();
      expect(Math.min(...equal), `served ${equal}`).toBeGreaterThan(200);
      expect(ratio(equal), `default weights: served ${equal}`).toBeGreaterThan(1 / 1.3);
      expect(ratio(equal), `default weights: served ${equal}`).toBeLessThan(1.3);

      await checkWeightedShares(m, a.domid, b.domid, window, 100);
      const s = (await m.dom0Stats()) as { blkbackSched: { weighted: boolean; weightedRounds: number } };
      expect(s.blkbackSched.weighted).toBe(true);
      expect(s.blkbackSched.weightedRounds).toBeGreaterThan(0);
      for (const g of guests) expect(((await g.call('count')) as { errors: number }).errors).toBe(0);
    } finally {
      for (const g of guests) {
        await g.call('exit').catch(() => undefined);
        await g.exit;
      }
    }
  }, 60_000);
});

describe('the hypervisor serves hypercalls by weight and cap', () => {
  it('two domains hammering: 512:256 → ≈2:1 of the calls served while both were pending; a 1% cap holds', async () => {
    const guests: GuestHandle[] = [];
    try {
      for (const name of ['ha', 'hb']) guests.push(await m.createGuest({ name, memoryMiB: 16, vcpus: 1, kernel: guestPath('hypercall-hammer.ts') }));
      const [a] = guests;
      await m.setSchedParams(a.domid, { weight: 512 });
      for (const g of guests) await g.call('start');
      const snap = async () => {
        const [doms, st] = await Promise.all([m.domains(), m.schedStats()]);
        return guests.map((g) => ({ calls: doms.find((d) => d.domid === g.domid)!.hypercalls, ...st.find((d) => d.domid === g.domid)! }));
      };
      await sleep(300);
      const s0 = await snap();
      await sleep(1000);
      const s1 = await snap();
      const contended = s1.map((x, i) => x.contendedServed - s0[i].contendedServed);
      expect(Math.min(...contended), `contended ${contended}`).toBeGreaterThan(50);
      expect(contended[0] / contended[1], `contended ${contended}`).toBeGreaterThan(1.7);
      expect(contended[0] / contended[1], `contended ${contended}`).toBeLessThan(2.3);
      expect(s1[0].deferred - s0[0].deferred).toBe(0); // the heavier domain never waited for weight
      expect(s1[1].deferred - s0[1].deferred).toBeGreaterThan(0);

      // Caps: the time a's calls take the hypervisor, uncapped (cap 100: timed, never reached
      // by one vCPU's calls) and capped to 1% of one CPU (0.1 ms per 10 ms period).
      const capWindow = async () => {
        await sleep(300);
        const c0 = await snap();
        const t0 = performance.now();
        await sleep(1000);
        const c1 = await snap();
        const secs = (performance.now() - t0) / 1000;
        return {
          msPerSec: (c1[0].cappedServiceMs - c0[0].cappedServiceMs) / secs,
          calls: c1.map((x, i) => x.calls - c0[i].calls),
          capDeferred: c1[0].capDeferred - c0[0].capDeferred,
        };
      };
      await m.setSchedParams(a.domid, { weight: 256, cap: 100 });
      const base = await capWindow();
      await m.setSchedParams(a.domid, { cap: 1 });
      const capped = await capWindow();
      const what = `uncapped ${JSON.stringify(base)}, capped ${JSON.stringify(capped)}`;
      expect(capped.capDeferred, what).toBeGreaterThan(0);
      // 1% is 10 ms/s; the window may also see the budget it started with and one call of debt.
      expect(capped.msPerSec, what).toBeLessThan(10 + 5);
      expect(base.msPerSec, what).toBeGreaterThan(2 * capped.msPerSec);
      expect(capped.calls[0], what).toBeGreaterThan(0);
      expect(capped.calls[0] / capped.calls[1], what).toBeLessThan(0.75);
      await m.setSchedParams(a.domid, { cap: 0 });
      expect(await m.getSchedParams(a.domid)).toEqual({ weight: 256, cap: 0 });
      // Uncapped again: its calls flow.
      const u0 = await snap();
      await sleep(500);
      const u1 = await snap();
      expect(u1[0].calls - u0[0].calls).toBeGreaterThan(0);
      expect(u1[0].capDeferred - u0[0].capDeferred).toBe(0);
    } finally {
      for (const g of guests) {
        await g.call('exit').catch(() => undefined);
        await g.exit;
      }
    }
  }, 60_000);
});
