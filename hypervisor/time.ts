/**
 * Xen's three views of time, and one-shot timers (issue 7, "Time").
 *
 * 1. **System time**: ns since the machine (the hypervisor) booted, from the host's
 *    monotonic clock. The hypervisor publishes it per vCPU in `vcpu_info.time`
 *    ({@link VCPU_TIME_INFO}) as a pair (`system_time`, `tsc_timestamp`) plus a scale,
 *    and a guest extrapolates from the pair with its own TSC, without a hypercall.
 * 2. **Wall-clock time**: `shared_info.wc_sec`/`wc_nsec`/`wc_sec_hi` hold the wall
 *    time (UTC, since the Unix epoch) at system time 0, set when the domain is created;
 *    wall time now = wc + system time.
 * 3. **Virtual time**: per domain, the time its vCPUs spent `running` — it stops while
 *    the domain is paused. Exposed as Xen exposes it, through
 *    `VCPUOP_get_runstate_info` (`time[RUNSTATE_running]`).
 *
 * **pvio's TSC.** JavaScript has no `rdtsc`. pvio defines the guest's TSC as the
 * host's `CLOCK_MONOTONIC` in ns ({@link tscNow}, from `process.hrtime()`), which is
 * one clock for every thread of the process, so a guest reads it itself. It ticks
 * at 1 GHz, hence scale 1.0: `tsc_to_system_mul = 2^31`, `tsc_shift = 1`
 * (`((delta << 1) * 2^31) >> 32 = delta`), and `XEN_PVCLOCK_TSC_STABLE_BIT` is set (all
 * vCPUs see the same counter). It is a double: exact below 2^53 ns (~104 days of host
 * uptime), rounded to the nearest representable value beyond — so extrapolations
 * may then be off by a few ns, and {@link GuestTime.systemNs} clamps to keep each
 * vCPU's readings monotonic. No BigInt anywhere on the read path.
 *
 * **Seqlocks.** `vcpu_time_info.version` and `shared_info.wc_version` are seqlocks:
 * the writer (the hypervisor only) makes the version odd, stores the fields, then
 * makes it even; a reader retries while the version is odd or changed across its
 * read. Every field is stored and loaded through Atomics on 32-bit words (sequentially
 * consistent, so they order the fields against the version as Xen's `smp_wmb`/`smp_rmb`
 * do); u64 fields are two u32 halves.
 *
 * **Timers.** `set_timer_op(timeout)` arms the calling vCPU's one-shot alarm at an
 * absolute system time (ns); 0 cancels it; a time already past fires at once. A fire
 * raises `VIRQ_TIMER` on the port the vCPU bound with `EVTCHNOP_bind_virq`. The
 * alarms of a paused domain wait: they fire when it is unpaused.
 *
 * @see xen/include/public/xen.h (vcpu_time_info, shared_info, VIRQ_TIMER),
 *   xen/include/public/vcpu.h (vcpu_runstate_info), xen/common/timer.c, xen/arch/x86/time.c
 */
import { InvariantError, PvioError } from '../rings/errors.ts';
import {
  HYPERVISOR, RUNSTATE, SET_TIMER_OP_ARGS, SHARED_INFO, VCPUOP, VCPU_INFO, VCPU_OP_ARGS, VCPU_OP_EXTRA_OFFSET,
  VCPU_RUNSTATE_INFO, VCPU_TIME_INFO, VIRQ, XEN_ERRNO, XEN_PVCLOCK, type EvtchnPort,
} from './abi.ts';
import { HypercallPort } from './hypercall.ts';
import type { EventChannels } from '../event-channel/evtchn.ts';

// ---------------------------------------------------------------------------
// The clock and the scale

/** `tsc_to_system_mul` for pvio's 1 GHz TSC (with {@link TSC_SHIFT}: scale 1.0). */
export const TSC_TO_SYSTEM_MUL = 2 ** 31;
/** `tsc_shift` for pvio's 1 GHz TSC (with {@link TSC_TO_SYSTEM_MUL}: scale 1.0). */
export const TSC_SHIFT = 1;
/** `vcpu_time_info.flags` pvio publishes: the TSC is the same counter on every vCPU. */
export const PVIO_CLOCK_FLAGS = XEN_PVCLOCK.tsc_stable;

/**
 * pvio's TSC: the host's monotonic clock (`CLOCK_MONOTONIC`, via `process.hrtime()`)
 * in ns, the same counter in every thread of the process. A double: exact below 2^53.
 */
export function tscNow(): number {
  const t = process.hrtime();
  return t[0] * 1e9 + t[1];
}

/**
 * Converts a TSC delta to ns as Xen's formula does,
 * `((delta << shift) * mul) >> 32`, in floating point (a negative shift shifts right).
 * @param delta TSC ticks (may be negative: a reader racing an update, clamped later).
 * @param mul `tsc_to_system_mul` (u32). @param shift `tsc_shift` (i8).
 * @returns ns (not rounded).
 * @see xen.h vcpu_time_info
 */
export function scaleDelta(delta: number, mul: number, shift: number): number {
  const shifted = shift >= 0 ? delta * 2 ** shift : delta / 2 ** -shift;
  return (shifted * mul) / 2 ** 32;
}

// ---------------------------------------------------------------------------
// vcpu_time_info: word indices into an Int32Array over shared_info

const TWO32 = 2 ** 32;
const VT = VCPU_TIME_INFO.fields;
const VI_WORDS = VCPU_INFO.size >> 2;
const VT_BASE = VCPU_INFO.fields.time.offset >> 2;
const T_VERSION = VT.version.offset >> 2;
const T_TSC = VT.tsc_timestamp.offset >> 2;
const T_SYS = VT.system_time.offset >> 2;
const T_MUL = VT.tsc_to_system_mul.offset >> 2;
/** The word holding `tsc_shift` (byte 0), `flags` (byte 1) and `pad1`. */
const T_SHIFT_FLAGS = VT.tsc_shift.offset >> 2;
if (VT.tsc_shift.offset % 4 !== 0 || VT.flags.offset !== VT.tsc_shift.offset + 1 || VCPU_INFO.fields.time.size !== VCPU_TIME_INFO.size) {
  throw new InvariantError('vcpu_time_info: word accessors do not match the layout');
}
const SI = SHARED_INFO.fields;
const WC_VERSION = SI.wc_version.offset >> 2;
const WC_SEC = SI.wc_sec.offset >> 2;
const WC_NSEC = SI.wc_nsec.offset >> 2;
const WC_SEC_HI = SI.wc_sec_hi.offset >> 2;
/** A seqlock reader gives up after this many retries (the writer never stalls: a pvio bug). */
export const SEQLOCK_MAX_RETRIES = 1 << 20;

/** Stores a non-negative integer (a double, any size below 2^64) as u64 halves at word `i`. */
function storeU64(a: Int32Array, i: number, v: number): void {
  const hi = Math.floor(v / TWO32);
  Atomics.store(a, i, (v - hi * TWO32) | 0);
  Atomics.store(a, i + 1, hi | 0);
}
/** Loads a u64 (two halves at word `i`) as a double (exact below 2^53). */
function loadU64(a: Int32Array, i: number): number {
  return (Atomics.load(a, i + 1) >>> 0) * TWO32 + (Atomics.load(a, i) >>> 0);
}

/** One consistent read of a `vcpu_time_info` (numbers; u64 as doubles). @see xen.h */
export interface VcpuTimeInfo {
  /** The seqlock version the fields were read under (always even). */
  readonly version: number;
  /** pvio TSC ({@link tscNow}, ns) when `systemTime` was sampled. */
  readonly tscTimestamp: number;
  /** System time (ns since the machine booted) at `tscTimestamp`. */
  readonly systemTime: number;
  readonly tscToSystemMul: number;
  readonly tscShift: number;
  readonly flags: number;
  /** How many times the read was retried (the version was odd or changed). */
  readonly retries: number;
}

/**
 * Writes vCPU `vcpu`'s `vcpu_time_info` in `si` (an Int32Array over shared_info) under
 * its seqlock: version made odd, fields stored, version made even. The hypervisor is
 * the only writer (one thread), so there is no writer-writer race.
 * @param tsc pvio TSC at the sample (ns). @param systemNs system time at the same instant (ns).
 */
export function writeVcpuTimeInfo(si: Int32Array, vcpu: number, tsc: number, systemNs: number,
  mul = TSC_TO_SYSTEM_MUL, shift = TSC_SHIFT, flags = PVIO_CLOCK_FLAGS): void {
  const b = vcpu * VI_WORDS + VT_BASE;
  const odd = (Atomics.load(si, b + T_VERSION) + 1) | 1;
  Atomics.store(si, b + T_VERSION, odd); // readers now retry
  storeU64(si, b + T_TSC, tsc);
  storeU64(si, b + T_SYS, systemNs);
  Atomics.store(si, b + T_MUL, mul | 0);
  Atomics.store(si, b + T_SHIFT_FLAGS, (shift & 0xff) | ((flags & 0xff) << 8));
  Atomics.store(si, b + T_VERSION, (odd + 1) | 0); // fields above are visible before this
}

/**
 * Reads vCPU `vcpu`'s `vcpu_time_info` from `si` with the seqlock: retries while the
 * version is odd or changed across the read.
 * @throws InvariantError when the version stays odd for {@link SEQLOCK_MAX_RETRIES} tries
 *   (the hypervisor never leaves it odd: a pvio bug, or garbage the guest wrote itself).
 */
export function readVcpuTimeInfo(si: Int32Array, vcpu: number): VcpuTimeInfo {
  const b = vcpu * VI_WORDS + VT_BASE;
  for (let retries = 0; retries < SEQLOCK_MAX_RETRIES; retries++) {
    const v = Atomics.load(si, b + T_VERSION);
    if ((v & 1) !== 0) continue;
    const tscTimestamp = loadU64(si, b + T_TSC);
    const systemTime = loadU64(si, b + T_SYS);
    const tscToSystemMul = Atomics.load(si, b + T_MUL) >>> 0;
    const sf = Atomics.load(si, b + T_SHIFT_FLAGS);
    if (Atomics.load(si, b + T_VERSION) !== v) continue;
    return { version: v >>> 0, tscTimestamp, systemTime, tscToSystemMul, tscShift: (sf << 24) >> 24, flags: (sf >> 8) & 0xff, retries };
  }
  throw new InvariantError(`vcpu_time_info of vcpu ${vcpu}: version stayed odd`);
}

/** System time (ns) now, extrapolated from one read of `vcpu_time_info` and the TSC `tsc`. @see xen.h */
export function systemTimeAt(t: VcpuTimeInfo, tsc: number): number {
  return t.systemTime + scaleDelta(tsc - t.tscTimestamp, t.tscToSystemMul, t.tscShift);
}

/** Wall-clock time: seconds and ns since the Unix epoch (UTC). */
export interface WallClock {
  /** Seconds (`wc_sec_hi << 32 | wc_sec` for the boot value). */
  readonly sec: number;
  /** 0..999 999 999. */
  readonly nsec: number;
}

/**
 * Writes `shared_info.wc_*` (the wall time at system time 0) under `wc_version`.
 * @param sec seconds since the Unix epoch (< 2^53). @param nsec 0..999 999 999.
 * @see xen.h shared_info (wc_version, wc_sec, wc_nsec, wc_sec_hi)
 */
export function writeWallclock(si: Int32Array, sec: number, nsec: number): void {
  const odd = (Atomics.load(si, WC_VERSION) + 1) | 1;
  Atomics.store(si, WC_VERSION, odd);
  storeU64WcSec(si, sec);
  Atomics.store(si, WC_NSEC, nsec | 0);
  Atomics.store(si, WC_VERSION, (odd + 1) | 0);
}
function storeU64WcSec(si: Int32Array, sec: number): void {
  const hi = Math.floor(sec / TWO32);
  Atomics.store(si, WC_SEC, (sec - hi * TWO32) | 0);
  Atomics.store(si, WC_SEC_HI, hi | 0);
}

/**
 * Reads `shared_info.wc_*` under `wc_version` (retrying while odd or changed).
 * @returns the wall time at system time 0, and the version read under (even).
 * @throws InvariantError when the version stays odd (as {@link readVcpuTimeInfo}).
 */
export function readWallclock(si: Int32Array): WallClock & { version: number } {
  for (let retries = 0; retries < SEQLOCK_MAX_RETRIES; retries++) {
    const v = Atomics.load(si, WC_VERSION);
    if ((v & 1) !== 0) continue;
    const sec = (Atomics.load(si, WC_SEC_HI) >>> 0) * TWO32 + (Atomics.load(si, WC_SEC) >>> 0);
    const nsec = Atomics.load(si, WC_NSEC) >>> 0;
    if (Atomics.load(si, WC_VERSION) !== v) continue;
    return { sec, nsec, version: v >>> 0 };
  }
  throw new InvariantError('shared_info wc_version stayed odd');
}

/** Adds `ns` (≥ 0) to a wall-clock time, carrying into seconds exactly. */
export function addNs(wc: WallClock, ns: number): WallClock {
  const total = wc.nsec + Math.floor(ns);
  const carry = Math.floor(total / 1e9);
  return { sec: wc.sec + carry, nsec: total - carry * 1e9 };
}

// ---------------------------------------------------------------------------
// Runstate accounting (hypervisor side)

/** A vCPU's runstate, as `VCPUOP_get_runstate_info` answers it. @see vcpu.h vcpu_runstate_info */
export interface RunstateInfo {
  /** One of {@link RUNSTATE}. */
  readonly state: number;
  /** System time (ns) the current state was entered. */
  readonly stateEntryTime: number;
  /** ns spent in each state (indexed by {@link RUNSTATE}), the current one up to now. */
  readonly time: readonly [number, number, number, number];
}

/**
 * Accounts one vCPU's time per runstate (Xen's `vcpu_runstate_change`): on each
 * change the time since the last one is added to the state being left.
 */
export class RunstateClock {
  private state: number;
  private entry: number;
  private readonly time = [0, 0, 0, 0];

  /** @param state the initial state. @param nowNs system time (ns) it is entered. */
  constructor(state: number, nowNs: number) {
    this.state = state;
    this.entry = nowNs;
  }

  /** Enters `state` at system time `nowNs` (a no-op when already in it). */
  change(state: number, nowNs: number): void {
    if (state === this.state) return;
    this.time[this.state] += Math.max(0, nowNs - this.entry);
    this.state = state;
    this.entry = nowNs;
  }

  /** The state, its entry time and the time per state at system time `nowNs` (ns). */
  info(nowNs: number): RunstateInfo {
    const t = [...this.time] as [number, number, number, number];
    t[this.state] += Math.max(0, nowNs - this.entry);
    return { state: this.state, stateEntryTime: this.entry, time: t };
  }
}

/** Writes a {@link RunstateInfo} as `struct vcpu_runstate_info` at byte `off` of `dv`. @see vcpu.h */
export function writeRunstateInfo(dv: DataView, off: number, r: RunstateInfo): void {
  const F = VCPU_RUNSTATE_INFO.fields;
  dv.setInt32(off + F.state.offset, r.state, true);
  setU64(dv, off + F.state_entry_time.offset, r.stateEntryTime);
  for (let i = 0; i < 4; i++) setU64(dv, off + F.time.offset + i * 8, r.time[i]);
}
/** Reads `struct vcpu_runstate_info` at byte `off` of `dv` (u64 as doubles). @see vcpu.h */
export function readRunstateInfo(dv: DataView, off: number): RunstateInfo {
  const F = VCPU_RUNSTATE_INFO.fields;
  const u64 = (o: number) => dv.getUint32(o + 4, true) * TWO32 + dv.getUint32(o, true);
  const t = [0, 1, 2, 3].map((i) => u64(off + F.time.offset + i * 8)) as [number, number, number, number];
  return { state: dv.getInt32(off + F.state.offset, true), stateEntryTime: u64(off + F.state_entry_time.offset), time: t };
}
function setU64(dv: DataView, o: number, v: number): void {
  const x = Math.max(0, Math.floor(v));
  const hi = Math.floor(x / TWO32);
  dv.setUint32(o, x - hi * TWO32, true);
  dv.setUint32(o + 4, hi, true);
}

// ---------------------------------------------------------------------------
// The guest's view

/** A time hypercall failed; `errno` is Xen's (`EINVAL`, `ENOENT`, ...). */
export class TimeError extends PvioError {
  constructor(readonly op: string, readonly errno: number) {
    super('PVIO_ERR_TIME', `${op} failed: ${Object.entries(XEN_ERRNO).find(([, v]) => v === errno)?.[0] ?? `errno ${errno}`}`);
  }
}

/** A sleeper of {@link GuestTime.sleepUntil}. */
interface Sleeper {
  readonly deadline: number;
  readonly resolve: () => void;
}

/**
 * The guest kernel's clock and timer (`k.time`), one per vCPU worker. Units: every
 * time is in ns; system times are ns since the machine booted; wall time is
 * {@link WallClock} (s + ns since the Unix epoch).
 *
 * Timers: the vCPU has one hypervisor alarm (`set_timer_op`). This class keeps it
 * armed at the earliest of the {@link setTimer} alarm and the {@link sleepUntil}
 * deadlines, and on each `VIRQ_TIMER` (bound lazily with `EVTCHNOP_bind_virq` on this
 * vCPU at first use) resolves the sleepers that are due, calls the {@link onTimer}
 * listeners, and re-arms. Events go through the event channel, never a JS timer, so a
 * paused domain's alarms wait for the unpause.
 */
export class GuestTime {
  private readonly si: Int32Array;
  private port: EvtchnPort | null = null;
  /** The {@link setTimer} alarm (system ns), 0 for none. */
  private alarm = 0;
  /** The deadline armed in the hypervisor (system ns), 0 for none. */
  private armed = 0;
  private readonly sleepers: Sleeper[] = [];
  private readonly listeners: Array<(systemNs: number) => void> = [];
  private last = 0;
  /**
   * Reads of `vcpu_time_info` and their seqlock retries; readings raised to the
   * previous one (a rounding step back past 2^53 ns of TSC); `set_timer_op` calls;
   * `VIRQ_TIMER` events received.
   */
  readonly counters = { reads: 0, retries: 0, clamped: 0, setTimerOps: 0, timerEvents: 0 };

  constructor(
    private readonly hc: HypercallPort,
    sharedInfo: SharedArrayBuffer,
    /** This worker's vCPU index. */
    readonly vcpuId: number,
    private readonly evtchn: EventChannels,
  ) {
    this.si = new Int32Array(sharedInfo, 0, SHARED_INFO.size >> 2);
  }

  /** One seqlock read of this vCPU's (or `vcpu`'s) `vcpu_time_info`, for inspection and tests. */
  timeInfo(vcpu = this.vcpuId): VcpuTimeInfo {
    return readVcpuTimeInfo(this.si, vcpu);
  }

  /**
   * System time now (ns since the machine booted), from this vCPU's `vcpu_time_info`
   * and pvio's TSC — no hypercall. Monotonic per vCPU.
   * @throws InvariantError when the seqlock stays odd (see {@link readVcpuTimeInfo}).
   */
  systemNs(): number {
    const t = readVcpuTimeInfo(this.si, this.vcpuId);
    const now = systemTimeAt(t, tscNow());
    this.counters.reads++;
    this.counters.retries += t.retries;
    if (now < this.last) {
      this.counters.clamped++;
      return this.last;
    }
    this.last = now;
    return now;
  }

  /** Wall-clock time now: `shared_info.wc_*` + {@link systemNs}. @see xen.h shared_info */
  wallclock(): WallClock {
    const wc = readWallclock(this.si);
    return addNs(wc, this.systemNs());
  }

  /** The wall time at system time 0 (`shared_info.wc_*`, read under `wc_version`). */
  bootWallclock(): WallClock & { version: number } {
    return readWallclock(this.si);
  }

  /**
   * `VCPUOP_get_runstate_info` for vCPU `vcpu` of this domain (this one by default).
   * @throws TimeError (ENOENT for no such vCPU).
   * @see vcpu.h
   */
  runstate(vcpu = this.vcpuId): RunstateInfo {
    const p = this.hc.page;
    const o = HypercallPort.argOffset(0, VCPU_OP_ARGS.size);
    p.setUint32(o + VCPU_OP_ARGS.fields.vcpuid.offset, vcpu, true);
    const { result } = this.hc.call(HYPERVISOR.vcpu_op, VCPUOP.get_runstate_info, 1);
    if (result < 0) throw new TimeError('VCPUOP_get_runstate_info', -result);
    return readRunstateInfo(p, o + VCPU_OP_EXTRA_OFFSET);
  }

  /**
   * This domain's virtual time (ns): the time this vCPU has spent `running`, which in
   * pvio is the time the domain has been unpaused (one hypercall).
   * @throws TimeError as {@link runstate}.
   */
  virtualNs(): number {
    return this.runstate().time[RUNSTATE.running];
  }

  /**
   * The event-channel port `VIRQ_TIMER` of this vCPU is bound to, binding it on first
   * use (`EVTCHNOP_bind_virq`) with this class's handler.
   * @throws EvtchnError when the bind fails (EEXIST if bound elsewhere on this vCPU).
   */
  timerPort(): EvtchnPort {
    if (this.port === null) {
      this.port = this.evtchn.bindVirq(VIRQ.timer, this.vcpuId);
      this.evtchn.on(this.port, () => this.onVirqTimer());
    }
    return this.port;
  }

  /**
   * Sets this vCPU's alarm at system time `deadlineNs` (absolute, ns): `VIRQ_TIMER`
   * fires at or after it and the {@link onTimer} listeners are called; a time already
   * past fires at once; 0 cancels the alarm (sleepers keep theirs). Replaces an
   * earlier alarm.
   * @throws RangeError for a negative or non-integer deadline; TimeError when
   *   `set_timer_op` fails.
   */
  setTimer(deadlineNs: number): void {
    if (!Number.isSafeInteger(deadlineNs) || deadlineNs < 0) throw new RangeError(`bad timer deadline ${deadlineNs}`);
    this.timerPort();
    this.alarm = deadlineNs;
    this.rearm(true);
  }

  /**
   * Calls `fn(systemNs)` on every `VIRQ_TIMER` of this vCPU (after due sleepers are
   * resolved), with the system time at delivery.
   * @returns a function that removes the listener.
   */
  onTimer(fn: (systemNs: number) => void): () => void {
    this.timerPort();
    this.listeners.push(fn);
    return () => {
      const i = this.listeners.indexOf(fn);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  /**
   * Resolves at the first `VIRQ_TIMER` at or after system time `deadlineNs` (absolute,
   * ns); at once when it is already past. Any number may wait; the vCPU's one alarm
   * is armed at the earliest.
   * @throws RangeError for a negative or non-integer deadline; TimeError when
   *   `set_timer_op` fails.
   */
  sleepUntil(deadlineNs: number): Promise<void> {
    if (!Number.isSafeInteger(deadlineNs) || deadlineNs < 0) return Promise.reject(new RangeError(`bad sleep deadline ${deadlineNs}`));
    if (deadlineNs <= this.systemNs()) return Promise.resolve();
    this.timerPort();
    return new Promise<void>((resolve) => {
      let i = this.sleepers.length;
      while (i > 0 && this.sleepers[i - 1].deadline > deadlineNs) i--;
      this.sleepers.splice(i, 0, { deadline: deadlineNs, resolve });
      this.rearm(false);
    });
  }

  /**
   * `set_timer_op(timeoutNs)` itself: arms (or, with 0, cancels) this vCPU's one
   * hypervisor alarm, bypassing this class's bookkeeping. For tests and guests that
   * manage the alarm themselves.
   * @param timeoutNs absolute system time (ns, an integer below 2^64), 0 to cancel.
   * @throws RangeError for a negative or non-integer timeout; TimeError (EINVAL for a
   *   timeout at or past 2^53 ns).
   * @see xen.h __HYPERVISOR_set_timer_op
   */
  setTimerOp(timeoutNs: number): void {
    if (!Number.isInteger(timeoutNs) || timeoutNs < 0 || timeoutNs >= 2 ** 64) throw new RangeError(`bad set_timer_op timeout ${timeoutNs}`);
    const o = HypercallPort.argOffset(0, SET_TIMER_OP_ARGS.size) + SET_TIMER_OP_ARGS.fields.timeout.offset;
    setU64(this.hc.page, o, timeoutNs);
    this.counters.setTimerOps++;
    const { result } = this.hc.call(HYPERVISOR.set_timer_op, 0, 1);
    if (result < 0) throw new TimeError('set_timer_op', -result);
  }

  /** Arms the hypervisor alarm at the earliest wanted deadline (`force`: even if unchanged). */
  private rearm(force: boolean): void {
    let want = this.alarm;
    const s = this.sleepers[0]?.deadline ?? 0;
    if (s !== 0 && (want === 0 || s < want)) want = s;
    if (want === this.armed && !force) return;
    this.armed = want;
    this.setTimerOp(want);
  }

  private onVirqTimer(): void {
    this.counters.timerEvents++;
    const now = this.systemNs();
    if (this.armed !== 0 && this.armed <= now) this.armed = 0; // the one-shot was consumed
    if (this.alarm !== 0 && this.alarm <= now) this.alarm = 0;
    let n = 0;
    while (n < this.sleepers.length && this.sleepers[n].deadline <= now) n++;
    for (const s of this.sleepers.splice(0, n)) s.resolve();
    for (const fn of [...this.listeners]) {
      try {
        fn(now);
      } catch {
        /* a listener's fault is its own */
      }
    }
    this.rearm(false);
  }
}
