/**
 * A test guest for time (hypervisor/time.ts): serves operations on its toolstack
 * control port that read the three clocks through `k.time` and arm, cancel and await
 * its one-shot timer, recording every `VIRQ_TIMER` it receives. All times are system
 * ns (since the machine booted) unless named otherwise. Ops that make no hypercall
 * (`now`, `fires`) answer while the domain is paused.
 */
import type { Kernel } from '../../hypervisor/kernel.ts';
import { EVTCHNSTAT, VIRQ, type EvtchnPort } from '../../hypervisor/abi.ts';
import { systemTimeAt, tscNow } from '../../hypervisor/time.ts';
import { serveCalls } from '../../toolstack/guest-calls.ts';

type Args = Record<string, any>;

/** A recorded timer event: system time at delivery. */
interface Fire {
  readonly at: number;
}

/** What an op that catches an error answers: its message (it names Xen's errno). */
function failure(e: unknown): string {
  return (e as Error)?.message ?? String(e);
}

export default function main(k: Kernel): Promise<unknown> {
  let finish!: (v: unknown) => void;
  const done = new Promise<unknown>((res) => (finish = res));
  const fires: Fire[] = [];
  k.time.onTimer((at) => fires.push({ at }));
  const port = k.time.timerPort();

  serveCalls(k.control!, {
    /** System time now (no hypercall). */
    now: () => k.time.systemNs(),
    /** The VIRQ_TIMER port and its EVTCHNOP_status. */
    timerPort: () => ({ port, status: k.evtchn.status(port), virqStatus: EVTCHNSTAT.virq }),
    /**
     * `n` rounds of: a hypercall (the hypervisor re-samples this vCPU's time info when
     * it serves one), then one seqlock read of vcpu_time_info.
     */
    timeInfos: (a: Args) => {
      const out = [];
      for (let i = 0; i < (a.n ?? 20); i++) {
        k.time.runstate();
        out.push(k.time.timeInfo());
      }
      return out;
    },
    /**
     * `reads` readings of system time computed straight from vcpu_time_info and the
     * TSC (without GuestTime's clamp), a hypercall every `every` reads; counts steps
     * back of more than `toleranceNs`.
     */
    monotonic: (a: Args) => {
      let last = -Infinity;
      let back = 0;
      let worst = 0;
      const first = systemTimeAt(k.time.timeInfo(), tscNow());
      for (let i = 0; i < a.reads; i++) {
        if (i % a.every === 0) k.time.runstate();
        const t = systemTimeAt(k.time.timeInfo(), tscNow());
        if (t < last - a.toleranceNs) back++;
        worst = Math.max(worst, last - t);
        last = t;
      }
      return { first, last, back, worst, clamped: k.time.counters.clamped };
    },
    wallclock: () => ({ now: k.time.wallclock(), boot: k.time.bootWallclock() }),
    virtualNs: () => k.time.virtualNs(),
    runstate: (a: Args) => k.time.runstate(a.vcpu ?? 0),
    runstateOf: (a: Args) => {
      try {
        return k.time.runstate(a.vcpu);
      } catch (e) {
        return failure(e);
      }
    },
    /** Arms the alarm `inMs` ms from now (negative: in the past). @returns the deadline and when it was armed. */
    arm: (a: Args) => {
      const armedAt = k.time.systemNs();
      const deadline = Math.max(1, Math.round(armedAt + a.inMs * 1e6));
      k.time.setTimer(deadline);
      return { armedAt, deadline };
    },
    /** Cancels the alarm (setTimer(0) → set_timer_op(0)). */
    cancel: () => k.time.setTimer(0),
    /** The timer events received so far (no hypercall). */
    fires: () => fires,
    /** Sleeps until `ms` ms from now for each of `ms[]` at once. @returns each deadline and when it woke. */
    sleepMany: async (a: Args) => {
      const t0 = k.time.systemNs();
      return Promise.all((a.ms as number[]).map(async (ms) => {
        const deadline = Math.round(t0 + ms * 1e6);
        await k.time.sleepUntil(deadline);
        return { deadline, woke: k.time.systemNs() };
      }));
    },
    /** The errors of misuses: a timeout ≥ 2^53, a second VIRQ_TIMER bind, a VIRQ pvio does not raise, moving the VIRQ port. */
    misuse: () => {
      const r: Record<string, string> = {};
      try { k.time.setTimerOp(2 ** 53); r.bigTimeout = 'ok'; } catch (e) { r.bigTimeout = failure(e); }
      try { k.evtchn.bindVirq(VIRQ.timer); r.rebind = 'ok'; } catch (e) { r.rebind = failure(e); }
      try { k.evtchn.bindVirq(VIRQ.debug); r.debug = 'ok'; } catch (e) { r.debug = failure(e); }
      try { k.evtchn.bindVcpu(port as EvtchnPort, 0); r.bindVcpu = 'ok'; } catch (e) { r.bindVcpu = failure(e); }
      return r;
    },
    counters: () => ({ ...k.time.counters }),
    exit: (a: Args) => finish(a.value ?? null),
  });
  return done;
}
