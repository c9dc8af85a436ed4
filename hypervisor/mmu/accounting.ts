/**
 * Accounting of the CPU/MMU model: every entry into the hypervisor counted by
 * reason, with the work done inside (validated PTEs, TLB flushes and entries
 * dropped), and a cost per event that turns the counts into modelled cycles.
 *
 * Reasons are strings of the form `kind:name`:
 * - `hypercall:mmu_update`, `hypercall:mmuext_op`, … — a hypercall (one entry each;
 *   a multicall is one entry however many calls it carries);
 * - `trap:write_cr3`, `trap:invlpg`, `trap:cli`, … — a privileged instruction of a
 *   ring-1 kernel, trapped and emulated (trap-and-emulate mode);
 * - `trap:syscall` — a ring-3 `syscall` bounced through the hypervisor (no fast handler);
 * - `trap:gp` — a general-protection fault the hypervisor reflects to the guest kernel;
 * - `fault:page` — a page fault the hypervisor reflects to the guest kernel;
 * - `shadow:write` — a guest write to one of its page tables, trapped, emulated and
 *   propagated into the shadow (shadow paging);
 * - `shadow:fill` — a hidden fault: the guest's tables map the address but the shadow
 *   does not yet (filled lazily, as Xen's shadow code does);
 * - `shadow:dirty` — a write to a clean page, trapped to set D in the guest's PTE.
 *
 * @see xen/arch/x86/traps.c, xen/arch/x86/mm/shadow/multi.c (the entries they count)
 */

/** A cost table: cycles per event, each default with its source. */
export interface CostModel {
  /** One entry into the hypervisor and the return (a world switch), cycles. */
  readonly entry: number;
  /** Validating one page-table entry (Xen's get_page_from_lNe and its checks), cycles. */
  readonly validatePte: number;
  /** One full TLB flush, counting the refills it causes later only through `tlbMiss`. */
  readonly tlbFlush: number;
  /** One TLB miss: a 4-level page walk, cycles. */
  readonly tlbMiss: number;
  /** A system call that stays in the guest (ring 3 → ring 1 fast path and back), cycles. */
  readonly syscall: number;
  /** Emulating one trapped instruction or write (decode + emulate), on top of `entry`. */
  readonly emulate: number;
}

/**
 * The default costs, and where each comes from.
 * - `entry` 2000: the direct cost of one exit to the hypervisor and back, measured on a
 *   Xeon X5570 (KVM, EPT): "The direct cost on its own is high: 2,000 cycles" —
 *   Landau, Ben-Yehuda, Gordon, "SplitX: Split Guest/Hypervisor Execution on
 *   Multi-Core", WIOV 2011, §1/Table 1. Used for hypercalls, traps and faults alike.
 * - The others are pvio's assumptions, not published figures; they are set small
 *   beside `entry` so that entries dominate the model as the Xen paper argues
 *   (Barham et al., "Xen and the Art of Virtualization", SOSP 2003, §3.3.3) and can
 *   be changed with `--cost name=cycles`: `validatePte` 50, `tlbFlush` 100,
 *   `tlbMiss` 30 (a page walk hitting the caches), `syscall` 100, `emulate` 500.
 */
export const DEFAULT_COSTS: CostModel = Object.freeze({
  entry: 2000,
  validatePte: 50,
  tlbFlush: 100,
  tlbMiss: 30,
  syscall: 100,
  emulate: 500,
});

/** Which of {@link DEFAULT_COSTS} come from a published figure. */
export const COST_SOURCES: Readonly<Record<keyof CostModel, string>> = Object.freeze({
  entry: 'Landau et al., SplitX, WIOV 2011: direct cost of an exit, 2,000 cycles (Xeon X5570)',
  validatePte: 'pvio assumption',
  tlbFlush: 'pvio assumption',
  tlbMiss: 'pvio assumption',
  syscall: 'pvio assumption',
  emulate: 'pvio assumption',
});

/** The counters of one vCPU, domain or run. */
export class Accounting {
  /** Entries into the hypervisor, by reason (`hypercall:mmu_update`, `shadow:write`, …). */
  readonly entries = new Map<string, number>();
  /** Page-table entries validated. */
  validatedPtes = 0;
  /** Full TLB flushes. */
  tlbFlushes = 0;
  /** Single TLB entries dropped (invlpg). */
  tlbInvlpgs = 0;
  /** TLB misses (page walks). */
  tlbMisses = 0;
  /** Traps (trap:*, shadow:* entries), a subset of the entries. */
  traps = 0;
  /** Instructions or writes the hypervisor emulated. */
  emulations = 0;
  /** System calls served in the guest without entering the hypervisor. */
  fastSyscalls = 0;

  /** Counts one entry into the hypervisor for `reason`. */
  enter(reason: string): void {
    this.entries.set(reason, (this.entries.get(reason) ?? 0) + 1);
    if (!reason.startsWith('hypercall:')) this.traps++;
  }

  /** All entries into the hypervisor. */
  get hypervisorEntries(): number {
    let n = 0;
    for (const v of this.entries.values()) n += v;
    return n;
  }

  /** The model's cycles for what was counted, under `costs`. */
  modelledCycles(costs: CostModel = DEFAULT_COSTS): number {
    return this.hypervisorEntries * costs.entry + this.validatedPtes * costs.validatePte +
      this.tlbFlushes * costs.tlbFlush + this.tlbMisses * costs.tlbMiss +
      this.fastSyscalls * costs.syscall + this.emulations * costs.emulate;
  }

  /** Adds `o`'s counts into this one. */
  add(o: Accounting): void {
    for (const [k, v] of o.entries) this.entries.set(k, (this.entries.get(k) ?? 0) + v);
    this.validatedPtes += o.validatedPtes;
    this.tlbFlushes += o.tlbFlushes;
    this.tlbInvlpgs += o.tlbInvlpgs;
    this.tlbMisses += o.tlbMisses;
    this.traps += o.traps;
    this.emulations += o.emulations;
    this.fastSyscalls += o.fastSyscalls;
  }

  /** A copy of these counts. */
  clone(): Accounting {
    const c = new Accounting();
    c.add(this);
    return c;
  }

  /** Zeroes every count. */
  reset(): void {
    this.entries.clear();
    this.validatedPtes = this.tlbFlushes = this.tlbInvlpgs = this.tlbMisses = this.traps = this.emulations = this.fastSyscalls = 0;
  }

  /** A plain-object copy (for JSON). */
  toJSON(): Record<string, unknown> {
    return {
      hypervisorEntries: this.hypervisorEntries, entries: Object.fromEntries([...this.entries].sort()),
      validatedPtes: this.validatedPtes, tlbFlushes: this.tlbFlushes, tlbInvlpgs: this.tlbInvlpgs,
      tlbMisses: this.tlbMisses, traps: this.traps, emulations: this.emulations, fastSyscalls: this.fastSyscalls,
    };
  }
}

/**
 * Parses `name=cycles` overrides (e.g. from `--cost entry=1500`) onto the defaults.
 * @throws Error naming the bad item (unknown name, not a non-negative number).
 */
export function parseCosts(items: readonly string[]): CostModel {
  const c: Record<string, number> = { ...DEFAULT_COSTS };
  for (const it of items) {
    const m = /^([a-zA-Z]+)=(\d+(?:\.\d+)?)$/.exec(it);
    if (!m || !(m[1] in DEFAULT_COSTS)) throw new Error(`bad cost '${it}': expected NAME=CYCLES with NAME one of ${Object.keys(DEFAULT_COSTS).join(', ')}`);
    c[m[1]] = Number(m[2]);
  }
  return c as unknown as CostModel;
}
