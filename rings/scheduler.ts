/** Something served in bounded passes: `serve()` returns true when work is left. */
export interface Servable {
  serve(): boolean;
}

/**
 * Serves a domain's backend rings (blkback's, netback's) round-robin with a bounded
 * batch per ring per pass, as Linux's backends give each ring a thread that yields:
 * a ring with work left goes to the back of the queue, and after a full round the
 * event loop gets a turn (timers, other events) before the next.
 */
export class RingScheduler<T extends Servable> {
  private readonly queue: T[] = [];
  private readonly queued = new Set<T>();
  private scheduled = false;
  /** {@link run}, bound once (no closure per kick). */
  private readonly runBound = (): void => this.run();

  /** Marks `ring` as having work (called from its event handler). */
  kick(ring: T): void {
    if (!this.queued.has(ring)) {
      this.queued.add(ring);
      this.queue.push(ring);
    }
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(this.runBound);
    }
  }

  private run(): void {
    this.scheduled = false;
    const n = this.queue.length;
    for (let i = 0; i < n; i++) {
      const r = this.queue.shift()!;
      this.queued.delete(r);
      if (r.serve()) {
        this.queued.add(r);
        this.queue.push(r);
      }
    }
    if (this.queue.length > 0 && !this.scheduled) {
      // More work: continue after the event loop had a turn (timers, other events).
      this.scheduled = true;
      setImmediate(this.runBound);
    }
  }
}
