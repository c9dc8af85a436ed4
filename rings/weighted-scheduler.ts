/**
 * Serving backend rings of several guests with the guests' scheduling weights —
 * blkback's rings (blkback/blkback.ts, `BlkbackScheduler`) and netback's vif queues
 * (netback/netback.ts, `NetbackScheduler`).
 *
 * Xen's backends have no weights: Linux's blkback has a kthread per ring and
 * netback a NAPI instance and a kthread per queue, and dom0's vCPU scheduler shares
 * dom0 between them. pvio's dom0 serves all its rings on one event loop per vCPU, so
 * it applies the scheduler's weights itself — this is pvio's model of "the backends'
 * round-robin applied with the credit scheduler's weights": the weight that
 * `XEN_DOMCTL_scheduler_op` sets for a guest (`xl sched-credit -w`,
 * `Machine.setSchedParams`) is also the share of dom0's service its rings get when
 * several guests have work waiting.
 *
 * How. While every guest has the default weight ({@link CSCHED_DEFAULT_WEIGHT}),
 * service is a plain round-robin over rings: each ring with work gets one serve of
 * {@link WeightedRingSchedulerOptions.plainBudget} units per round (by default
 * {@link WeightedRingSchedulerOptions.maxBatch}), then the event loop turns. Once one
 * guest's weight differs, rounds are deficit round-robin (Shreedhar & Varghese) over
 * guests instead of rings:
 * - a round's top quantum `Q` is `maxBatch` × the most rings any waiting guest has
 *   queued (so a lone guest, or the heaviest one, is served as much per round as the
 *   plain round-robin would);
 * - each waiting guest's deficit grows by `Q × weight / (largest waiting weight)`
 *   (at most to `Q`), and its queued rings are served in turn, each serve taking at
 *   most `min(maxBatch, deficit)` units, the units taken being subtracted;
 * - a guest left with no ring waiting drops its deficit (nothing is banked while idle).
 * The unit of service is the backend's: for blkback one request taken off a ring,
 * whatever its size; for netback one packet, a tx packet taken off the guest's tx ring
 * or a queued frame written into its rx buffers, whatever its size. Over a window in
 * which both guests keep work waiting, a guest of weight 512 is thus served about
 * twice the units of one of weight 256. Service stays work-conserving: a guest alone
 * with work waiting gets every round. The credit scheduler's `cap` is not applied
 * here (it caps hypervisor service time, see hypervisor/sched-credit.ts).
 *
 * @see xen/common/sched/credit.c (weights), Linux drivers/block/xen-blkback (one kthread
 *   per ring), drivers/net/xen-netback/interface.c (NAPI and a kthread per queue)
 */
/** The credit scheduler's default weight (`CSCHED_DEFAULT_WEIGHT`); hypervisor/abi.ts re-exports it. @see xen/common/sched/credit.c */
export const CSCHED_DEFAULT_WEIGHT = 256;

/** A ring served in bounded passes, with the domain whose weight it is served with. */
export interface WeightedServable {
  /** The frontend's domain. */
  readonly frontDomid: number;
  /**
   * Units of service taken so far (a running count: blkback's requests, netback's
   * packets), which weighted rounds subtract from the guest's deficit.
   */
  readonly counters: { readonly requests: number };
  /**
   * Serves at most `budget` units (≥ 1; in plain rounds
   * {@link WeightedRingSchedulerOptions.plainBudget}, which may be Infinity).
   * @returns true when more work is waiting (serve again).
   */
  serve(budget: number): boolean;
}

/** Options of {@link WeightedRingScheduler}. */
export interface WeightedRingSchedulerOptions {
  /** Most units taken from one ring in one serve of a weighted round (blkback's `MAX_BATCH`, netback's `TX_BATCH`). */
  readonly maxBatch: number;
  /**
   * The budget of each serve in plain rounds (all weights default); default
   * {@link maxBatch}. netback passes Infinity: its pass then is the one it makes
   * without weights (its own tx batch, every queued frame the rx buffers take).
   */
  readonly plainBudget?: number;
}

/** A guest's queue in weighted rounds. */
interface DomQueue<T> {
  readonly domid: number;
  /** Its rings with work, in turn order. */
  readonly rings: T[];
  /** Units it may still take (deficit round-robin). */
  deficit: number;
  /** Whether it is in the active list. */
  active: boolean;
}

/**
 * Serves a backend domain's rings — plain round-robin while every guest has the
 * default weight, weighted deficit round-robin between guests once one does not
 * (see the module comment). Call {@link kick} from a ring's event handler.
 */
export class WeightedRingScheduler<T extends WeightedServable> {
  /** Weights that are not the default, by domid. */
  private readonly weights = new Map<number, number>();
  /** Plain mode: rings with work, in turn order. */
  private readonly queue: T[] = [];
  private readonly queued = new Set<T>();
  /** Weighted mode: guests with rings waiting, in turn order. */
  private active: Array<DomQueue<T>> = [];
  private readonly doms = new Map<number, DomQueue<T>>();
  private weighted = false;
  private scheduled = false;
  /** Counters: rounds run, and weighted rounds among them. */
  readonly counters = { rounds: 0, weightedRounds: 0 };
  private readonly runBound = (): void => this.run();
  /** The budget of a serve in plain rounds. */
  private readonly plainBudget: number;

  constructor(private readonly opts: WeightedRingSchedulerOptions) {
    this.plainBudget = opts.plainBudget ?? opts.maxBatch;
  }

  /**
   * Sets the weight guest `domid`'s rings are served with (1..65535, the credit
   * scheduler's; {@link CSCHED_DEFAULT_WEIGHT} when never set). Takes effect from the
   * next round. @throws RangeError for a weight that is not an integer 1..65535.
   */
  setWeight(domid: number, weight: number): void {
    if (!Number.isInteger(weight) || weight < 1 || weight > 0xffff) throw new RangeError(`weight ${weight} is not 1..65535`);
    if (weight === CSCHED_DEFAULT_WEIGHT) this.weights.delete(domid);
    else this.weights.set(domid, weight);
    this.setMode(this.weights.size > 0);
  }

  /** The weight guest `domid`'s rings are served with. */
  weightOf(domid: number): number {
    return this.weights.get(domid) ?? CSCHED_DEFAULT_WEIGHT;
  }

  /** Forgets guest `domid` (its domain is gone): its weight and queue. */
  forgetDomain(domid: number): void {
    this.weights.delete(domid);
    const d = this.doms.get(domid);
    if (d && !d.active) this.doms.delete(domid);
    this.setMode(this.weights.size > 0);
  }

  /** Whether rounds are weighted now (some guest's weight is not the default). */
  isWeighted(): boolean {
    return this.weighted;
  }

  /** Marks `ring` as having work (called from its event handler). */
  kick(ring: T): void {
    if (!this.queued.has(ring)) {
      this.queued.add(ring);
      if (this.weighted) this.enqueue(ring);
      else this.queue.push(ring);
    }
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(this.runBound);
    }
  }

  private dom(domid: number): DomQueue<T> {
    let d = this.doms.get(domid);
    if (!d) this.doms.set(domid, (d = { domid, rings: [], deficit: 0, active: false }));
    return d;
  }

  /** Weighted mode: appends `ring` to its guest's queue (the guest to the active list). */
  private enqueue(ring: T): void {
    const d = this.dom(ring.frontDomid);
    d.rings.push(ring);
    if (!d.active) {
      d.active = true;
      d.deficit = 0;
      this.active.push(d);
    }
  }

  /** Moves the waiting rings between the plain queue and the guests' queues. */
  private setMode(weighted: boolean): void {
    if (weighted === this.weighted) return;
    this.weighted = weighted;
    if (weighted) {
      for (const r of this.queue.splice(0)) this.enqueue(r);
    } else {
      for (const d of this.active) {
        this.queue.push(...d.rings.splice(0));
        d.active = false;
      }
      this.active = [];
      this.doms.clear();
    }
  }

  private run(): void {
    this.scheduled = false;
    this.counters.rounds++;
    const more = this.weighted ? this.weightedRound() : this.plainRound();
    if (more && !this.scheduled) {
      // More work: continue after the event loop had a turn (timers, other events).
      this.scheduled = true;
      setImmediate(this.runBound);
    }
  }

  /** One round of the plain round-robin: every ring with work once. @returns whether work is left. */
  private plainRound(): boolean {
    const n = this.queue.length;
    for (let i = 0; i < n; i++) {
      const r = this.queue.shift()!;
      this.queued.delete(r);
      if (r.serve(this.plainBudget)) {
        this.queued.add(r);
        this.queue.push(r);
      }
    }
    return this.queue.length > 0;
  }

  /** One weighted round: every guest with work gets its quantum. @returns whether work is left. */
  private weightedRound(): boolean {
    this.counters.weightedRounds++;
    const batch = this.opts.maxBatch;
    let maxW = 0;
    let maxRings = 1;
    for (const d of this.active) {
      maxW = Math.max(maxW, this.weightOf(d.domid));
      maxRings = Math.max(maxRings, d.rings.length);
    }
    const top = batch * maxRings;
    const n = this.active.length;
    for (let i = 0; i < n; i++) {
      const d = this.active.shift()!;
      const quantum = (top * this.weightOf(d.domid)) / maxW;
      d.deficit = Math.min(d.deficit + quantum, top);
      // Bounded: a ring that reports work but takes none cannot spin here.
      let serves = 2 * d.rings.length + Math.ceil(top / batch);
      while (d.deficit >= 1 && d.rings.length > 0 && serves-- > 0) {
        const r = d.rings.shift()!;
        this.queued.delete(r);
        const before = r.counters.requests;
        const again = r.serve(Math.min(batch, Math.floor(d.deficit)));
        d.deficit -= r.counters.requests - before;
        if (again) {
          this.queued.add(r);
          d.rings.push(r);
        }
      }
      if (d.rings.length > 0) this.active.push(d);
      else {
        d.active = false;
        d.deficit = 0;
        if (!this.weights.has(d.domid)) this.doms.delete(d.domid);
      }
    }
    return this.active.length > 0;
  }
}
