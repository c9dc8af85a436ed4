// Xen's three views of time and one-shot timers (hypervisor/time.ts):
// (a) without workers: the layouts against xen.h/vcpu.h/event_channel.h offsets,
//     Xen's scale formula, the seqlock writer/reader, wall-clock arithmetic and
//     runstate accounting;
// (b) the seqlock under a real race: a worker writes vcpu_time_info flat out while
//     this thread reads it, and no read may mix two updates;
// (c) in a machine (test/guests/clock.ts): system time is monotonic, matches the
//     hypervisor's and tracks the host clock; the hypervisor's time-info pairs are
//     consistent; the wall clock is Date.now(); set_timer_op alarms fire no earlier
//     than their deadline and soon after it, as VIRQ_TIMER on the bound port, are
//     cancelled by 0 and fire at once when past; virtual time and alarms stop while
//     the domain is paused.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Worker } from 'node:worker_threads';
import {
  EVTCHN_BIND_VIRQ, EVTCHN_STATUS_VIRQ, EVTCHNSTAT, HYPERVISOR, RUNSTATE, SHARED_INFO, VCPUOP, VCPU_INFO,
  VCPU_RUNSTATE_INFO, VCPU_TIME_INFO, VIRQ,
} from '../hypervisor/abi.ts';
import {
  RunstateClock, SEQLOCK_MAX_RETRIES, TSC_SHIFT, TSC_TO_SYSTEM_MUL, addNs, readRunstateInfo, readVcpuTimeInfo,
  readWallclock, scaleDelta, systemTimeAt, tscNow, writeRunstateInfo, writeVcpuTimeInfo, writeWallclock,
  type VcpuTimeInfo,
} from '../hypervisor/time.ts';
import { WORKER_BOOTSTRAP } from '../hypervisor/hypervisor.ts';
import { InvariantError } from '../rings/errors.ts';
import { Machine, type GuestHandle } from '../toolstack/machine.ts';
import { SEQLOCK_WRITER_BASE } from './guests/seqlock-writer.ts';
import { eventually, guestPath } from './helpers.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const newSharedInfo = () => new Int32Array(new SharedArrayBuffer(SHARED_INFO.size));

describe('time layouts and arithmetic (no workers)', () => {
  it('vcpu_time_info, vcpu_runstate_info, evtchn_bind_virq sit where xen.h, vcpu.h and event_channel.h put them', () => {
    // offsetof/sizeof on x86_64 (gcc, Xen 4.17 headers).
    const f = VCPU_TIME_INFO.fields;
    expect([VCPU_TIME_INFO.size, f.version.offset, f.tsc_timestamp.offset, f.system_time.offset,
      f.tsc_to_system_mul.offset, f.tsc_shift.offset, f.flags.offset, f.pad1.offset]).toEqual([32, 0, 8, 16, 24, 28, 29, 30]);
    expect(VCPU_INFO.fields.time).toMatchObject({ offset: 32, size: VCPU_TIME_INFO.size });
    const r = VCPU_RUNSTATE_INFO.fields;
    expect([VCPU_RUNSTATE_INFO.size, r.state.offset, r.state_entry_time.offset, r.time.offset, r.time.size]).toEqual([48, 0, 8, 16, 32]);
    const b = EVTCHN_BIND_VIRQ.fields;
    expect([EVTCHN_BIND_VIRQ.size, b.virq.offset, b.vcpu.offset, b.port.offset]).toEqual([12, 0, 4, 8]);
    expect(EVTCHN_STATUS_VIRQ.fields.virq.offset).toBe(16);
    expect([HYPERVISOR.set_timer_op, HYPERVISOR.vcpu_op, VCPUOP.get_runstate_info, VIRQ.timer, EVTCHNSTAT.virq]).toEqual([15, 24, 4, 0, 4]);
    expect(RUNSTATE).toEqual({ running: 0, runnable: 1, blocked: 2, offline: 3 });
  });

  it('Xen\'s scale formula: pvio\'s mul/shift is 1.0, and other scales and negative shifts work', () => {
    expect(scaleDelta(123_456_789, TSC_TO_SYSTEM_MUL, TSC_SHIFT)).toBe(123_456_789);
    expect(scaleDelta(1000, 2 ** 31, 0)).toBe(500); // 0.5 ns per tick
    expect(scaleDelta(1000, 2 ** 31, -1)).toBe(250);
    expect(scaleDelta(1000, 3 * 2 ** 30, 2)).toBe(3000); // 0.75 × 4
    const t: VcpuTimeInfo = { version: 2, tscTimestamp: 5_000, systemTime: 100, tscToSystemMul: 2 ** 31, tscShift: 1, flags: 1, retries: 0 };
    expect(systemTimeAt(t, 5_250)).toBe(350);
  });

  it('the seqlock writer leaves the version even and bumped by 2; the reader returns what was written', () => {
    const si = newSharedInfo();
    writeVcpuTimeInfo(si, 3, 2 ** 40 + 17, 2 ** 33 + 5);
    const a = readVcpuTimeInfo(si, 3);
    expect(a).toMatchObject({ version: 2, tscTimestamp: 2 ** 40 + 17, systemTime: 2 ** 33 + 5, tscToSystemMul: TSC_TO_SYSTEM_MUL, tscShift: TSC_SHIFT, flags: 1, retries: 0 });
    writeVcpuTimeInfo(si, 3, 9, 8, 2 ** 32 - 1, -3, 0);
    expect(readVcpuTimeInfo(si, 3)).toMatchObject({ version: 4, tscTimestamp: 9, systemTime: 8, tscToSystemMul: 2 ** 32 - 1, tscShift: -3, flags: 0 });
    // Other vCPUs' slots are untouched.
    expect(readVcpuTimeInfo(si, 2)).toMatchObject({ version: 0, tscTimestamp: 0, systemTime: 0 });
  });

  it('a reader never returns while the version is odd: it gives up with an InvariantError', () => {
    const si = newSharedInfo();
    writeVcpuTimeInfo(si, 0, 1, 1);
    const vWord = (VCPU_INFO.fields.time.offset + VCPU_TIME_INFO.fields.version.offset) >> 2;
    Atomics.store(si, vWord, 5); // an update "in progress" forever
    expect(SEQLOCK_MAX_RETRIES).toBeGreaterThan(1000);
    expect(() => readVcpuTimeInfo(si, 0)).toThrow(InvariantError);
    Atomics.store(si, (SHARED_INFO.fields.wc_version.offset) >> 2, 1);
    expect(() => readWallclock(si)).toThrow(InvariantError);
  });

  it('the wall clock round-trips through wc_sec/wc_sec_hi/wc_nsec, and adding ns carries exactly', () => {
    const si = newSharedInfo();
    writeWallclock(si, 2 ** 32 + 7, 999_999_999);
    expect(readWallclock(si)).toEqual({ sec: 2 ** 32 + 7, nsec: 999_999_999, version: 2 });
    expect(addNs({ sec: 10, nsec: 999_999_999 }, 1)).toEqual({ sec: 11, nsec: 0 });
    expect(addNs({ sec: 10, nsec: 500 }, 3_000_000_100)).toEqual({ sec: 13, nsec: 600 });
  });

  it('runstate time accrues to the state being left, the current one up to now', () => {
    const c = new RunstateClock(RUNSTATE.offline, 100);
    c.change(RUNSTATE.running, 1_100);
    c.change(RUNSTATE.running, 1_500); // no change
    c.change(RUNSTATE.offline, 3_100);
    c.change(RUNSTATE.running, 4_000);
    const i = c.info(4_500);
    expect(i).toEqual({ state: RUNSTATE.running, stateEntryTime: 4_000, time: [2_000 + 500, 0, 0, 1_000 + 900] });
    const dv = new DataView(new ArrayBuffer(64));
    writeRunstateInfo(dv, 8, { state: 3, stateEntryTime: 2 ** 40, time: [1, 2 ** 35, 3, 4] });
    expect(readRunstateInfo(dv, 8)).toEqual({ state: 3, stateEntryTime: 2 ** 40, time: [1, 2 ** 35, 3, 4] });
  });

  it('pvio\'s TSC is the host\'s monotonic clock in ns (the clock under performance.now)', () => {
    const p0 = performance.now();
    const t0 = tscNow();
    const spin = performance.now() + 20;
    while (performance.now() < spin) { /* 20 ms */ }
    const t1 = tscNow();
    const p1 = performance.now();
    expect(t1 - t0).toBeGreaterThanOrEqual(20e6 - 1e5);
    expect(t1 - t0).toBeLessThanOrEqual((p1 - p0) * 1e6 + 1e5);
  });
});

describe('the vcpu_time_info seqlock under a real race', () => {
  it('a reader racing a writer thread sees only whole updates, always under an even version', async () => {
    const sib = new SharedArrayBuffer(SHARED_INFO.size);
    const control = new SharedArrayBuffer(8);
    const ctl = new Int32Array(control);
    const si = new Int32Array(sib);
    const w = new Worker(WORKER_BOOTSTRAP, {
      workerData: { entry: new URL('./guests/seqlock-writer.ts', import.meta.url).href, sharedInfo: sib, control },
    });
    const exited = new Promise<void>((r) => w.once('exit', () => r()));
    try {
      await eventually(() => Atomics.load(ctl, 1) > 1000, 10_000, 'the writer to start');
      let reads = 0;
      let retries = 0;
      let torn = 0;
      let odd = 0;
      const seen = new Set<number>();
      const deadline = performance.now() + 5_000;
      // Read until the race was exercised (a retry, many distinct updates) or 5 s pass.
      while (performance.now() < deadline && (retries === 0 || seen.size < 5000 || reads < 200_000)) {
        const t = readVcpuTimeInfo(si, 0);
        reads++;
        retries += t.retries;
        if (t.version % 2 !== 0) odd++;
        const n = t.tscTimestamp - SEQLOCK_WRITER_BASE;
        if (t.systemTime !== 3 * n || t.tscToSystemMul !== n || t.tscShift !== n % 64) torn++;
        seen.add(n);
      }
      expect(odd).toBe(0);
      expect(torn).toBe(0);
      expect(seen.size).toBeGreaterThan(100); // the reads did overlap the updates
      expect(retries).toBeGreaterThan(0); // and some met an update in progress
      console.info(`seqlock race: ${reads} reads, ${seen.size} distinct updates, ${retries} retries, 0 torn`);
    } finally {
      Atomics.store(ctl, 0, 1);
      await Promise.race([exited, sleep(5_000)]);
      await w.terminate();
    }
  });
});

describe('time in a machine', () => {
  let m: Machine;
  let g: GuestHandle;
  type Fire = { at: number };
  const stats = async () => (await m.hypervisorStats()) as { systemNs: number; timerFires: number; timerFiresUnbound: number };
  const fires = async () => (await g.call('fires')) as Fire[];
  /** The guest's timer events, once there are more than `before` (5 s deadline). */
  const moreFires = async (before: number, what: string): Promise<Fire[]> => {
    let got: Fire[] = [];
    await eventually(async () => (got = await fires()).length > before, 5_000, what);
    return got;
  };

  beforeAll(async () => {
    m = await Machine.boot({ onConsole: () => {} });
    g = await m.createGuest({ name: 'clock', memoryMiB: 16, vcpus: 1, kernel: guestPath('clock.ts') });
  });
  afterAll(async () => {
    await m?.shutdown();
  });

  it('system time is monotonic, is the hypervisor\'s, and tracks the host clock', async () => {
    // Monotonic across hypervisor refreshes (the raw extrapolation, not the clamp).
    const mono = (await g.call('monotonic', { reads: 200_000, every: 1000, toleranceNs: 8 })) as { first: number; last: number; back: number; worst: number };
    expect(mono.back).toBe(0);
    expect(mono.last).toBeGreaterThan(mono.first);
    // The guest's extrapolation brackets the hypervisor's own reading.
    const g0 = (await g.call('now')) as number;
    const h = (await stats()).systemNs;
    const g1 = (await g.call('now')) as number;
    expect(g0).toBeLessThanOrEqual(h);
    expect(h).toBeLessThanOrEqual(g1);
    // Over 200 ms its advance lies between the host-clock bounds of the two calls.
    const a0 = performance.now();
    const s0 = (await g.call('now')) as number;
    const b0 = performance.now();
    await sleep(200);
    const a1 = performance.now();
    const s1 = (await g.call('now')) as number;
    const b1 = performance.now();
    const dMs = (s1 - s0) / 1e6;
    expect(dMs).toBeGreaterThanOrEqual(a1 - b0 - 0.5);
    expect(dMs).toBeLessThanOrEqual(b1 - a0 + 0.5);
  });

  it('vcpu_time_info is read under an even version, and every refresh publishes a consistent pair', async () => {
    const infos = (await g.call('timeInfos', { n: 30 })) as VcpuTimeInfo[];
    expect(infos).toHaveLength(30);
    const base = infos[0].tscTimestamp - infos[0].systemTime; // the TSC at system time 0
    for (let i = 0; i < infos.length; i++) {
      const t = infos[i];
      expect(t.version % 2).toBe(0);
      expect(Math.abs(t.tscTimestamp - t.systemTime - base)).toBeLessThanOrEqual(16); // one sample per pair
      expect([t.tscToSystemMul, t.tscShift, t.flags]).toEqual([TSC_TO_SYSTEM_MUL, TSC_SHIFT, 1]);
      if (i > 0) {
        expect(t.version).toBeGreaterThan(infos[i - 1].version); // each hypercall re-sampled it
        expect(t.systemTime).toBeGreaterThan(infos[i - 1].systemTime);
      }
    }
  });

  it('the wall clock is Date.now()', async () => {
    const d0 = Date.now();
    const { now, boot } = (await g.call('wallclock')) as { now: { sec: number; nsec: number }; boot: { sec: number; nsec: number; version: number } };
    const d1 = Date.now();
    const ms = now.sec * 1000 + now.nsec / 1e6;
    expect(ms).toBeGreaterThanOrEqual(d0 - 50);
    expect(ms).toBeLessThanOrEqual(d1 + 50);
    expect(boot.version % 2).toBe(0);
    expect(boot.version).toBeGreaterThan(0);
    // The boot value is the wall time at system time 0: now − system time.
    const sys = (await stats()).systemNs;
    const bootMs = boot.sec * 1000 + boot.nsec / 1e6;
    expect(Math.abs(bootMs + sys / 1e6 - Date.now())).toBeLessThan(100);
  });

  it('VIRQ_TIMER is bound to a port whose status says so; misuses get Xen\'s errors', async () => {
    const { port, status } = (await g.call('timerPort')) as { port: number; status: { status: number; vcpu: number; virq: number } };
    expect(port).toBeGreaterThan(0);
    expect(status).toMatchObject({ status: EVTCHNSTAT.virq, vcpu: 0, virq: VIRQ.timer });
    const r = (await g.call('misuse')) as Record<string, string>;
    expect(r.bigTimeout).toMatch(/set_timer_op failed: EINVAL/);
    expect(r.rebind).toMatch(/bind_virq failed: EEXIST/);
    expect(r.debug).toMatch(/bind_virq failed: EINVAL/);
    expect(r.bindVcpu).toMatch(/bind_vcpu failed: EINVAL/);
    expect(await g.call('runstateOf', { vcpu: 5 })).toMatch(/get_runstate_info failed: ENOENT/);
  });

  it('an alarm fires as VIRQ_TIMER no earlier than its deadline and within 250 ms after it', async () => {
    const before = (await fires()).length;
    const s0 = await stats();
    const { deadline } = (await g.call('arm', { inMs: 60 })) as { deadline: number };
    const got = await moreFires(before, 'the alarm');
    expect(got).toHaveLength(before + 1);
    const at = got[before].at;
    expect(at).toBeGreaterThanOrEqual(deadline);
    expect(at - deadline).toBeLessThan(250e6);
    const s1 = await stats();
    expect(s1.timerFires).toBe(s0.timerFires + 1);
    expect(s1.timerFiresUnbound).toBe(s0.timerFiresUnbound); // it went to the bound port
    // Several sleepers share the one alarm and each wakes no earlier than its deadline, in order.
    const woke = (await g.call('sleepMany', { ms: [40, 10, 25] })) as Array<{ deadline: number; woke: number }>;
    for (const w of woke) {
      expect(w.woke).toBeGreaterThanOrEqual(w.deadline);
      expect(w.woke - w.deadline).toBeLessThan(250e6);
    }
    expect(woke[1].woke).toBeLessThanOrEqual(woke[2].woke);
    expect(woke[2].woke).toBeLessThanOrEqual(woke[0].woke);
  });

  it('a cancelled alarm (set_timer_op 0) does not fire', async () => {
    const before = (await fires()).length;
    const s0 = await stats();
    await g.call('arm', { inMs: 100 });
    await g.call('cancel');
    await sleep(400);
    expect((await fires()).length).toBe(before);
    expect((await stats()).timerFires).toBe(s0.timerFires);
  });

  it('a deadline already past fires at once', async () => {
    const before = (await fires()).length;
    const { armedAt } = (await g.call('arm', { inMs: -5 })) as { armedAt: number };
    const got = await moreFires(before, 'the past alarm');
    expect(got[before].at - armedAt).toBeLessThan(50e6);
  });

  it('virtual time stops while the domain is paused, and an alarm due meanwhile fires only after the unpause', async () => {
    const v0 = (await g.call('virtualNs')) as number;
    const t0 = performance.now();
    const rs = (await g.call('runstate')) as { state: number; time: number[] };
    expect(rs.state).toBe(RUNSTATE.running);
    const before = (await fires()).length;
    const { deadline } = (await g.call('arm', { inMs: 100 })) as { deadline: number };
    await m.pause(g.domid);
    const paused = await stats();
    const domA = (await m.domains()).find((d) => d.domid === g.domid)!;
    await sleep(320);
    // The deadline has passed, but nothing fired: not in the hypervisor, not in the guest.
    const during = await stats();
    expect(during.systemNs).toBeGreaterThan(deadline);
    expect(during.timerFires).toBe(paused.timerFires);
    expect((await fires()).length).toBe(before);
    const domB = (await m.domains()).find((d) => d.domid === g.domid)!;
    const sBeforeUnpause = (await g.call('now')) as number; // no hypercall: answers while paused
    await m.unpause(g.domid);
    const got = await moreFires(before, 'the alarm after the unpause');
    expect(got[before].at).toBeGreaterThanOrEqual(sBeforeUnpause);
    expect((await stats()).timerFires).toBe(paused.timerFires + 1);
    const v1 = (await g.call('virtualNs')) as number;
    const t1 = performance.now();
    const wallMs = t1 - t0;
    const virtMs = (v1 - v0) / 1e6;
    expect(virtMs).toBeGreaterThan(0);
    expect(wallMs - virtMs).toBeGreaterThanOrEqual(250);
    // The toolstack sees the same: while paused, the domain's virtual time stood still.
    expect([domA.state, domB.state]).toEqual(['paused', 'paused']);
    expect(domB.virtualNs).toBe(domA.virtualNs);
    const later = (await m.domains()).find((d) => d.domid === g.domid)!;
    expect(later.virtualNs).toBeGreaterThan(domB.virtualNs);
    const rs1 = (await g.call('runstate')) as { state: number; time: number[] };
    expect(rs1.time[RUNSTATE.offline]).toBeGreaterThanOrEqual(rs.time[RUNSTATE.offline] + 300e6);
  });
});
