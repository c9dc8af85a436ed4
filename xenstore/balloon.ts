/**
 * The balloon driver, guest side: it moves the domain's memory reservation toward
 * the target the toolstack writes in XenStore, as Linux's `xen-balloon` does.
 *
 * | key (under `/local/domain/<domid>/`) | written by | value |
 * |---|---|---|
 * | `memory/static-max` | toolstack, at creation | the quota, KiB (`memoryMiB × 1024`) |
 * | `memory/target` | toolstack (`Machine.setMemoryTarget`, `pvio mem-set`, as `xl mem-set`) | the reservation wanted, KiB |
 * | `data/balloon/current` | this driver (pvio's extension; Xen defines no key for it) | the reservation reached, KiB, after each adjustment |
 *
 * `memory/` is read-only for the guest (dom0 owns it, as libxl's `roperm`), so the
 * driver reports under `data/`, the directory guests write for the toolstack.
 *
 * When the target drops, the driver takes pages off the free list of the kernel's
 * allocator ({@link GuestMemory}; vCPU 0's — each vCPU has its own) and gives them
 * back with `XENMEM_decrease_reservation`, remembering their pseudo-physical frame
 * numbers (the holes it leaves). When the target rises, it asks for frames at those
 * pfns first with `XENMEM_populate_physmap` (as Linux refills its ballooned pages),
 * then for more with `XENMEM_increase_reservation`, and puts the pages on the free
 * list. The target in pages is `floor(KiB / 4)`, capped at the quota
 * (`XENMEM_maximum_reservation`); the allocator's own refills are capped at it too
 * ({@link GuestMemory.setReservationLimit}), so a guest ballooned down does not grow
 * back by allocating. Only free pages can be given back: a target below what the
 * guest uses stops where the free list runs out, and the driver retries later
 * (1 s, doubling to 32 s, as Linux's `balloon_stats.schedule_delay`). A value that is
 * not a number of KiB is ignored, as Linux's `xenbus_scanf` failure is.
 *
 * pvio guests start small and allocate on demand, so an opted-in driver first grows
 * the reservation to the initial target (the whole quota) — a Xen domain starts with
 * it. The driver is opt-in ({@link Balloon.start}, on vCPU 0): a guest without it
 * keeps its memory whatever the target says, like a Xen guest with no balloon driver.
 *
 * @see linux/drivers/xen/xen-balloon.c, balloon.c; xen/include/public/memory.h;
 *   tools/libs/light/libxl_mem.c (libxl_set_memory_target)
 */
import type { GuestMemory, GuestPage } from '../hypervisor/guest-memory.ts';
import { MEMOP_BATCH } from '../hypervisor/guest-memory.ts';
import type { Unwatch, XenbusClient } from './client.ts';

/** Pages moved per step (one hypercall each way); the driver yields to the event loop between steps. */
export const BALLOON_BATCH = MEMOP_BATCH;
/** First and longest delay (ms) before a stalled adjustment is retried. */
export const BALLOON_RETRY_MS = 1000;
export const BALLOON_MAX_RETRY_MS = 32_000;
/** KiB per page. */
const KIB_PER_PAGE = 4;

/** What the driver needs of the kernel (a {@link Kernel} is one). */
export interface BalloonHost {
  readonly domid: number;
  readonly vcpuId: number;
  readonly memory: GuestMemory;
  /** Read at {@link Balloon.start}, once XenStore is connected. */
  readonly xenbus: XenbusClient;
  onTeardown(fn: () => Promise<void> | void): void;
}

/** The driver's view, for a guest program or a test ({@link Balloon.status}). */
export interface BalloonStatus {
  readonly started: boolean;
  /** The last valid `memory/target` read (KiB), or null before one. */
  readonly targetKiB: number | null;
  /** The target in pages, capped at the quota; null before one. */
  readonly targetPages: number | null;
  /** The domain's reservation after the last step (pages, `XENMEM_current_reservation`). */
  readonly currentPages: number;
  /** The quota (pages, `XENMEM_maximum_reservation`). */
  readonly maxPages: number;
  /** Pfns given back and not repopulated since (Linux's ballooned pages). */
  readonly ballooned: number;
  /** Whether the last adjustment stopped short of the target (no free page left to give, or the hypervisor refused). */
  readonly stalled: boolean;
  /** Whether an adjustment is running. */
  readonly busy: boolean;
}

/** The balloon driver of one domain (`k.balloon`). */
export class Balloon {
  /** Pages given back and taken in, steps taken, targets read, stalls. */
  readonly counters = { pagesOut: 0, pagesIn: 0, steps: 0, targets: 0, stalls: 0 };
  private unwatch: Unwatch | null = null;
  private stopped = false;
  private targetKiB: number | null = null;
  private maxPages = 0;
  private currentPages = 0;
  private stalled = false;
  /** Pfns this driver gave back, ascending. */
  private holes: number[] = [];
  private running: Promise<void> | null = null;
  private again = false;
  private retry: NodeJS.Timeout | null = null;
  private retryMs = BALLOON_RETRY_MS;

  constructor(private readonly host: BalloonHost) {}

  /**
   * Starts the driver: watches `memory/target` (the watch fires once at once, so the
   * current target is applied) and adjusts the reservation on every change.
   * Idempotent. Resolves once the watch is set, not when the target is reached
   * (see {@link status}, {@link settled}).
   * @throws Error on a vCPU other than 0 (it holds the XenStore connection);
   *   XenStoreError when the watch cannot be set.
   */
  async start(): Promise<void> {
    if (this.host.vcpuId !== 0) throw new Error('the balloon driver runs on vCPU 0');
    if (this.unwatch) return;
    this.stopped = false;
    this.maxPages = this.host.memory.maximumReservation();
    this.currentPages = this.host.memory.currentReservation();
    const path = `/local/domain/${this.host.domid}/memory/target`;
    this.unwatch = await this.host.xenbus.watch(path, () => void this.readTarget(path));
    this.host.onTeardown(() => this.stop());
  }

  /**
   * Stops the driver: removes the watch, lets a running step finish, and lifts the
   * allocator's cap. The reservation stays where it is.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.retry) clearTimeout(this.retry);
    this.retry = null;
    const u = this.unwatch;
    this.unwatch = null;
    await u?.().catch(() => undefined);
    await this.running;
    this.host.memory.setReservationLimit(null);
  }

  /** A snapshot of the driver's state. */
  status(): BalloonStatus {
    return {
      started: this.unwatch !== null, targetKiB: this.targetKiB, targetPages: this.targetPages(),
      currentPages: this.currentPages, maxPages: this.maxPages, ballooned: this.holes.length,
      stalled: this.stalled, busy: this.running !== null,
    };
  }

  /** Resolves once no adjustment is running (at once when idle). */
  async settled(): Promise<void> {
    while (this.running) await this.running;
  }

  private targetPages(): number | null {
    return this.targetKiB === null ? null : Math.min(Math.floor(this.targetKiB / KIB_PER_PAGE), this.maxPages);
  }

  private async readTarget(path: string): Promise<void> {
    const v = await this.host.xenbus.readOptional(path).catch(() => undefined);
    if (v === undefined || !/^[0-9]{1,15}$/.test(v.trim()) || this.stopped) return;
    this.targetKiB = Number(v.trim());
    this.counters.targets++;
    this.retryMs = BALLOON_RETRY_MS;
    this.kick();
  }

  /** Runs an adjustment, or asks the running one to start over with the new target. */
  private kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.retry) clearTimeout(this.retry);
    this.retry = null;
    this.running = this.adjust()
      .catch(() => {
        this.stalled = true; // the hypervisor refused or XenStore failed: retried below
      })
      .finally(() => {
        this.running = null;
        if (this.again) {
          this.again = false;
          this.kick();
        } else if (this.stalled && !this.stopped) {
          this.retry = setTimeout(() => {
            this.retry = null;
            this.kick();
          }, this.retryMs);
          this.retry.unref();
          this.retryMs = Math.min(this.retryMs * 2, BALLOON_MAX_RETRY_MS);
        }
      });
  }

  /** Steps toward the target until it is reached, nothing moves, or a new target comes. */
  private async adjust(): Promise<void> {
    const mem = this.host.memory;
    const target = this.targetPages();
    if (target === null) return;
    mem.setReservationLimit(target);
    this.stalled = false;
    for (;;) {
      if (this.again || this.stopped) break;
      const cur = mem.currentReservation();
      this.currentPages = cur;
      if (cur === target) break;
      const moved = cur > target
        ? this.decreaseReservation(Math.min(cur - target, BALLOON_BATCH))
        : this.increaseReservation(Math.min(target - cur, BALLOON_BATCH));
      this.counters.steps++;
      if (moved === 0) {
        this.stalled = true;
        this.counters.stalls++;
        break;
      }
      await new Promise((r) => setImmediate(r));
    }
    this.currentPages = mem.currentReservation();
    if (!this.stalled) this.retryMs = BALLOON_RETRY_MS;
    await this.host.xenbus.write(`/local/domain/${this.host.domid}/data/balloon/current`, String(this.currentPages * KIB_PER_PAGE));
  }

  /**
   * Gives up to `n` free pages back to the hypervisor and remembers their pfns.
   * @returns how many went back.
   */
  private decreaseReservation(n: number): number {
    const mem = this.host.memory;
    const pages = mem.takeFreePages(n);
    if (pages.length === 0) return 0;
    const pfns = mem.mfnsToPfns(pages.map((p) => p.mfn));
    const done = mem.releasePages(pages);
    for (let i = 0; i < done; i++) if (pfns[i] !== null) this.holes.push(pfns[i]!);
    this.holes.sort((a, b) => a - b);
    for (const p of pages.slice(done)) mem.freePage(p); // a peer still maps it: keep it
    this.counters.pagesOut += done;
    return done;
  }

  /**
   * Takes up to `n` pages from the hypervisor onto the free list: at this driver's
   * holes first (populate_physmap, lowest first; holes the allocator has filled since
   * are dropped), then wherever the hypervisor puts them (increase_reservation).
   * @returns how many came.
   */
  private increaseReservation(n: number): number {
    const mem = this.host.memory;
    const got: GuestPage[] = [];
    while (got.length < n && this.holes.length > 0) {
      const want = this.holes.splice(0, n - got.length);
      const mfns = mem.pfnsToMfns(want);
      const free = want.filter((_, i) => mfns[i] === null);
      const pages = mem.populatePages(free);
      got.push(...pages);
      if (pages.length < free.length) { // the quota: keep the rest for later
        this.holes.push(...free.slice(pages.length));
        this.holes.sort((a, b) => a - b);
        break;
      }
    }
    if (got.length < n && this.holes.length === 0) got.push(...mem.obtainPages(n - got.length));
    for (const p of got) mem.freePage(p);
    this.counters.pagesIn += got.length;
    return got.length;
  }
}
