/**
 * The credit scheduler's per-domain parameters — `weight` and `cap`, set by the
 * toolstack with `XEN_DOMCTL_scheduler_op` — and how the hypervisor's hypercall
 * service loop applies them (hypervisor.ts, `serviceOnce`).
 *
 * In Xen they share physical CPUs between vCPUs. pvio's vCPUs are worker threads that
 * the host's kernel schedules, so pvio applies them where it does the scheduling: to
 * the hypervisor's own work (serving hypercalls, below) and to dom0's backends'
 * round-robin between guests (blkback's and netback's: rings/weighted-scheduler.ts).
 *
 * The service loop scans every vCPU's hypercall page once per pass. While every
 * domain has Xen's defaults (weight {@link CSCHED_DEFAULT_WEIGHT}, no cap) it serves
 * every pending call of the pass, as before. Otherwise {@link CreditScheduler.choose}
 * decides, per pass:
 * - **cap** (non-work-conserving, as Xen's): a capped domain may use `cap`% of the
 *   hypervisor thread's time, accounted per {@link SCHED_CAP_PERIOD_MS} ms period: its
 *   calls are timed (wall clock, each charged at most {@link SCHED_CHARGE_MAX_MS}), and
 *   once its budget for the period is spent (a longer call runs into debt, carried to
 *   the next period) its calls wait for the next period even when nothing else is
 *   pending;
 * - **weight** (work-conserving): when calls of several domains are pending in one
 *   pass, each such domain earns `P × weight / (largest weight among them)` credit,
 *   where `P` is the most calls any of them has pending in the pass, and keeps at most
 *   `P`; one call is served per 1 credit, the others stay pending — so the heaviest
 *   domain has all its pending calls served, and one of half its weight half as many
 *   (one every other pass when it has one pending). A domain's vCPUs share its
 *   credit. A domain alone with calls pending is served at once: weights matter only
 *   against others' calls, as in Xen, so with synchronous callers, whose next call
 *   comes only after the last was answered, the total served stays near equal unless
 *   the hypervisor is the bottleneck; the counters show the contended passes.
 *
 * Counters per domain: calls served in contended passes, calls left pending for weight
 * and for the cap (per pass), service time charged to a cap.
 *
 * @see xen/include/public/domctl.h (xen_domctl_sched_credit), xen/common/sched/credit.c
 *   (csched_dom_cntl, weights and caps), xen/common/sched/credit2.c (cap range check)
 */
import { CSCHED_DEFAULT_WEIGHT, XEN_ERRNO, type XenDomctlSchedCredit } from './abi.ts';

/** Largest weight (`xen_domctl_sched_credit.weight` is a u16). */
export const CSCHED_MAX_WEIGHT = 0xffff;
/** Cap per vCPU at its largest: 100% of one CPU. A domain's cap is at most this × its vCPUs. */
export const CSCHED_CAP_PER_VCPU = 100;
/** `putinfo`'s "leave the weight as it is". */
export const SCHED_WEIGHT_UNCHANGED = 0;
/** `putinfo`'s "leave the cap as it is" (`(uint16_t)~0U`). */
export const SCHED_CAP_UNCHANGED = 0xffff;
/** The accounting period of caps, ms (Xen's credit scheduler accounts every 10 ms tick). */
export const SCHED_CAP_PERIOD_MS = 10;
/**
 * Most time charged for one call, ms. A call's work is bounded (at most
 * `MAX_OPS_PER_SLICE` entries), so a longer wall-clock time is the host descheduling
 * the hypervisor thread, which is not the domain's doing.
 */
export const SCHED_CHARGE_MAX_MS = 1;

/** One domain's scheduling state. */
interface SchedDom {
  weight: number;
  /** Percent of one CPU; 0 = none. */
  cap: number;
  /** Weight credit, in calls. */
  credit: number;
  /** Cap budget left in this period, ms (negative: debt). */
  budgetMs: number;
  /** Pass marker (no allocation per pass). */
  mark: number;
  /** Its calls pending in the current pass. */
  pending: number;
  contendedServed: number;
  deferred: number;
  capDeferred: number;
  cappedServiceMs: number;
}

/** A domain's scheduling counters ({@link CreditScheduler.snapshot}). */
export interface DomainSchedStats {
  readonly domid: number;
  readonly weight: number;
  /** Percent of one CPU; 0 = none. */
  readonly cap: number;
  /** Calls served in passes where calls of several domains were pending. */
  readonly contendedServed: number;
  /** Calls left pending in such a pass because the domain's weight credit was spent (a call left in two passes counts twice). */
  readonly deferred: number;
  /** Calls left pending in a pass because the domain's cap budget was spent (per pass, as `deferred`). */
  readonly capDeferred: number;
  /** Hypervisor time charged to its cap, ms (its calls' time while it had one). */
  readonly cappedServiceMs: number;
}

/**
 * The credit scheduler's parameters and its decisions for the hypercall service
 * loop (see the module comment). Pure bookkeeping: no workers, no clock of its own
 * (callers pass `performance.now()`), so it can be tested on its own.
 */
export class CreditScheduler {
  private readonly doms = new Map<number, SchedDom>();
  /** Domains whose parameters are not the defaults. */
  private nonDefault = 0;
  /** Domains with a cap. */
  private capped = 0;
  private pass = 0;
  private periodEnd = 0;
  /** Whether the last {@link choose} left a call pending for a cap. */
  private parked = false;

  /** Whether some domain's parameters are not the defaults (the service loop then asks {@link choose}). */
  get active(): boolean {
    return this.nonDefault > 0;
  }

  /** Whether some domain has a cap (the service loop then times the calls it serves). */
  get hasCaps(): boolean {
    return this.capped > 0;
  }

  /** Domain `domid`'s parameters (the defaults for a domain never set). */
  params(domid: number): XenDomctlSchedCredit {
    const d = this.doms.get(domid);
    return { weight: d?.weight ?? CSCHED_DEFAULT_WEIGHT, cap: d?.cap ?? 0 };
  }

  /**
   * `XEN_DOMCTL_SCHEDOP_putinfo` for a domain of `nrVcpus` vCPUs: weight 0 and cap
   * 0xffff leave that parameter unchanged; nothing changes unless both are valid.
   * @returns 0, or -EINVAL when `weight` is not an integer 0..65535 or `cap` not an
   *   integer 0..100 × `nrVcpus` (or 0xffff).
   */
  put(domid: number, nrVcpus: number, p: XenDomctlSchedCredit): number {
    const { weight, cap } = p;
    if (!Number.isInteger(weight) || weight < 0 || weight > CSCHED_MAX_WEIGHT) return -XEN_ERRNO.EINVAL;
    if (!Number.isInteger(cap) || cap < 0 || (cap !== SCHED_CAP_UNCHANGED && cap > CSCHED_CAP_PER_VCPU * nrVcpus)) return -XEN_ERRNO.EINVAL;
    const d = this.dom(domid);
    this.count(d, -1);
    if (weight !== SCHED_WEIGHT_UNCHANGED) d.weight = weight;
    if (cap !== SCHED_CAP_UNCHANGED) {
      if (cap !== d.cap) d.budgetMs = (cap * SCHED_CAP_PERIOD_MS) / 100;
      d.cap = cap;
    }
    this.count(d, +1);
    return 0;
  }

  /** Forgets a destroyed domain. */
  forget(domid: number): void {
    const d = this.doms.get(domid);
    if (!d) return;
    this.count(d, -1);
    this.doms.delete(domid);
  }

  private count(d: SchedDom, by: 1 | -1): void {
    if (d.weight !== CSCHED_DEFAULT_WEIGHT || d.cap !== 0) this.nonDefault += by;
    if (d.cap !== 0) this.capped += by;
  }

  private dom(domid: number): SchedDom {
    let d = this.doms.get(domid);
    if (!d) {
      d = {
        weight: CSCHED_DEFAULT_WEIGHT, cap: 0, credit: 0, budgetMs: 0, mark: 0, pending: 0,
        contendedServed: 0, deferred: 0, capDeferred: 0, cappedServiceMs: 0,
      };
      this.doms.set(domid, d);
    }
    return d;
  }

  /**
   * Decides which of one pass's pending calls to serve now (the others stay pending
   * for a later pass).
   * @param domids the domain of each pending call, `n` of them, in scan order
   * @param serve out: `serve[i]` true to serve call i in this pass
   * @param now `performance.now()` (ms); only read while some domain has a cap
   * @returns how many calls to serve
   */
  choose(domids: ArrayLike<number>, n: number, serve: boolean[], now: number): number {
    if (this.capped > 0 && now >= this.periodEnd) this.refill(now);
    this.parked = false;
    // Caps first: a domain over its budget is not runnable in this pass.
    let first = -1;
    let several = false;
    let runnable = 0;
    const caps = this.capped > 0;
    for (let i = 0; i < n; i++) {
      const id = domids[i];
      const d = caps ? this.doms.get(id) : undefined;
      if (d !== undefined && d.cap !== 0 && d.budgetMs <= 0) {
        serve[i] = false;
        d.capDeferred++;
        this.parked = true;
        continue;
      }
      serve[i] = true;
      runnable++;
      if (first < 0) first = id;
      else if (id !== first) several = true;
    }
    if (!several) return runnable;
    // Several domains pending: weight credit decides.
    const markW = ++this.pass;
    let maxW = 0;
    let most = 0;
    for (let i = 0; i < n; i++) {
      if (!serve[i]) continue;
      const d = this.dom(domids[i]);
      if (d.mark !== markW) {
        d.mark = markW;
        d.pending = 0;
        if (d.weight > maxW) maxW = d.weight;
      }
      if (++d.pending > most) most = d.pending;
    }
    const markC = ++this.pass;
    let chosen = 0;
    for (let i = 0; i < n; i++) {
      if (!serve[i]) continue;
      const d = this.doms.get(domids[i])!;
      if (d.mark !== markC) {
        d.mark = markC;
        d.credit = Math.min(d.credit + (most * d.weight) / maxW, most);
      }
      // 1e-9: weight ratios that are not exact in binary still reach 1.
      if (d.credit >= 1 - 1e-9) {
        d.credit -= 1;
        d.contendedServed++;
        chosen++;
      } else {
        serve[i] = false;
        d.deferred++;
      }
    }
    return chosen;
  }

  /**
   * Charges `ms` of hypervisor time (at most {@link SCHED_CHARGE_MAX_MS}) to domain
   * `domid`'s cap budget; a no-op for an uncapped domain.
   */
  charge(domid: number, ms: number): void {
    const d = this.doms.get(domid);
    if (d === undefined || d.cap === 0) return;
    const c = Math.min(ms, SCHED_CHARGE_MAX_MS);
    d.budgetMs -= c;
    d.cappedServiceMs += c;
  }

  /**
   * How long the service loop may sleep with nothing to serve: until the next cap
   * period when the last pass left a capped domain's call waiting, else `maxMs`.
   */
  idleWaitMs(now: number, maxMs: number): number {
    if (!this.parked) return maxMs;
    return Math.min(maxMs, Math.max(0.1, this.periodEnd - now));
  }

  /** A new cap period: every capped domain's budget grows by its share of one (debt is paid first). */
  private refill(now: number): void {
    const periods = this.periodEnd === 0 ? 1 : Math.floor((now - this.periodEnd) / SCHED_CAP_PERIOD_MS) + 1;
    this.periodEnd = (this.periodEnd === 0 ? now : this.periodEnd) + periods * SCHED_CAP_PERIOD_MS;
    for (const d of this.doms.values()) {
      if (d.cap === 0) continue;
      const full = (d.cap * SCHED_CAP_PERIOD_MS) / 100;
      d.budgetMs = Math.min(d.budgetMs + periods * full, full);
    }
  }

  /** Every domain's parameters and counters (those the scheduler has seen). */
  snapshot(): DomainSchedStats[] {
    return [...this.doms].map(([domid, d]) => ({
      domid, weight: d.weight, cap: d.cap, contendedServed: d.contendedServed, deferred: d.deferred,
      capDeferred: d.capDeferred, cappedServiceMs: d.cappedServiceMs,
    }));
  }
}
