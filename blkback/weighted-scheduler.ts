/**
 * Serving backend rings of several guests with the guests' scheduling weights.
 *
 * Xen's blkback has no weights: each ring has a kthread, and dom0's vCPU scheduler
 * shares dom0 between them. pvio's dom0 serves all its rings on one event loop per
 * vCPU, so it applies the scheduler's weights itself — this is pvio's model of "the
 * backends' round-robin applied with the credit scheduler's weights": the weight
 * that `XEN_DOMCTL_scheduler_op` sets for a guest (`xl sched-credit -w`,
 * `Machine.setSchedParams`) is also the share of dom0's request service its rings
 * get when several guests have requests waiting.
 *
 * How. While every guest has the default weight ({@link CSCHED_DEFAULT_WEIGHT}),
 * service is the plain round-robin of `rings/scheduler.ts`: each ring with work gets
 * at most {@link WeightedRingSchedulerOptions.maxBatch} requests per round, then the
 * event loop turns. Once one guest's weight differs, rounds are deficit round-robin
 * (Shreedhar & Varghese) over guests instead of rings:
 * - a round's top quantum `Q` is `maxBatch` × the most rings any waiting guest has
 *   queued (so a lone guest, or the heaviest one, is served as much per round as the
 *   plain round-robin would);
 * - each waiting guest's deficit grows by `Q × weight / (largest waiting weight)`
 *   (at most to `Q`), and its queued rings are served in turn, each serve taking at
 *   most `min(maxBatch, deficit)` requests, the requests taken being subtracted;
 * - a guest left with no ring waiting drops its deficit (nothing is banked while idle).
 * The unit of service is one request taken off a ring, whatever its size. Over a
 * window in which both guests keep requests waiting, a guest of weight 512 is thus
 * served about twice the requests of one of weight 256. Service stays work-conserving:
 * a guest alone with requests waiting gets every round. The credit scheduler's `cap`
 * is not applied here (it caps hypervisor service time, see hypervisor/sched-credit.ts).
 *
 * @see xen/common/sched/credit.c (weights), Linux drivers/block/xen-blkback (one kthread per ring)
 */
import { CSCHED_DEFAULT_WEIGHT } from '../hypervisor/abi.ts';

/** A ring served in bounded passes, with the domain whose weight it is served with. */
export interface WeightedServable {
  /** The frontend's domain. */
  readonly frontDomid: number;
  /** Requests taken off the ring so far (a running count; the unit of service). */
  readonly counters: { readonly requests: number };
  /**
   * Serves at most `budget` requests (≥ 1).
   * @returns true when more requests are waiting (serve again).
   */
  serve(budget: number): boolean;
}

/** Options of {@link WeightedRingScheduler}. */
export interface WeightedRingSchedulerOptions {
  /** Most requests taken from one ring in one serve (blkback's `MAX_BATCH`). */
  readonly maxBatch: number;
}

/** A guest's queue in weighted rounds. */
interface DomQueue<T> {
  readonly domid: number;
  /** Its rings with work, in turn order. */
  readonly rings: T[];
  /** Requests it may still take (deficit round-robin). */
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

  constructor(private readonly opts: WeightedRingSchedulerOptions) {}

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
      if (r.serve(this.opts.maxBatch)) {
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
