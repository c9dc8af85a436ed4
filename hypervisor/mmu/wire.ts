/**
 * The CPU/MMU model's calls in a vCPU's hypercall page, when the model's hypervisor
 * runs in the hypervisor thread (hypervisor/mmu/host.ts) and the vCPU in the domain's
 * worker (hypervisor/mmu/hosted.ts).
 *
 * Xen's own hypercalls keep their numbers and argument structs (x86-64, little-endian,
 * a u64 as two u32 halves):
 * - `mmu_update` (1): `count` × `struct mmu_update { u64 ptr; u64 val; }` (16 bytes);
 * - `update_va_mapping` (14): `{ u64 va; u64 val; u64 flags; }` (count 1; Xen passes
 *   these in registers);
 * - `mmuext_op` (26): `count` × `struct mmuext_op { u32 cmd; u32 pad; u64 arg1; u64 arg2; }`
 *   (24 bytes; arg1 is the MFN or the linear address);
 * - `multicall` (13): `count` entries, each `{ u32 op; u32 count; }` then that call's
 *   structs as above. Xen's `multicall_entry` carries guest pointers, which pvio's
 *   hypercall page has no use for; this is pvio's encoding of the same batch.
 *
 * The model's other entries are what the hardware would raise, not hypercalls; they
 * use pvio's hypercall number {@link HYPERVISOR_PVIO_MMU} with a command:
 * `SETUP { u32 paging }`, `PAGE_FAULT { u64 va; u32 access; u32 errorCode; u32 len; u8 data[len] }`,
 * `PRIVILEGED { u32 insn; u32 pad; u64 arg }`, `TRAP { u32 kind }`, `ENTER { u32 nr }`.
 *
 * Every answer starts with a {@link REPLY} block at the start of the argument area
 * (written after the arguments were read): the effect on the vCPU (base pointer, the
 * table the hardware walks, TLB flushes and single-entry invalidations) and the
 * accounting of the entry (its reasons, validated PTEs, emulations), so the vCPU's
 * counters equal those of a model run in one thread.
 *
 * @see xen/include/public/xen.h (struct mmu_update, struct mmuext_op)
 */

/** pvio's hypercall number for the model's non-hypercall entries (outside Xen's range). */
export const HYPERVISOR_PVIO_MMU = 0x80;

/** Commands of {@link HYPERVISOR_PVIO_MMU}. */
export const PVIO_MMU = Object.freeze({ SETUP: 0, PAGE_FAULT: 1, PRIVILEGED: 2, TRAP: 3, ENTER: 4, STATS: 5 } as const);

/** Multicall entry header: op and count, 8 bytes. */
export const MC_HEADER_BYTES = 8;
/** Bytes of one mmu_update request. */
export const MMU_UPDATE_BYTES = 16;
/** Bytes of one mmuext_op. */
export const MMUEXT_OP_BYTES = 24;
/** Bytes of update_va_mapping's arguments. */
export const UVM_BYTES = 24;

/** The privileged instructions, by number. */
export const INSNS = ['write_cr3', 'invlpg', 'cli', 'sti', 'hlt'] as const;

/** Every reason an entry can be counted under, by number (the reply names them by index). */
export const REASONS = [
  'hypercall:mmu_update', 'hypercall:mmuext_op', 'hypercall:update_va_mapping', 'hypercall:multicall',
  'hypercall:set_trap_table', 'hypercall:set_callbacks', 'hypercall:xen_version',
  'trap:write_cr3', 'trap:invlpg', 'trap:cli', 'trap:sti', 'trap:hlt', 'trap:gp', 'trap:syscall',
  'fault:page', 'shadow:write', 'shadow:fill', 'shadow:dirty',
] as const;

/**
 * The answer block, as u32 word indexes from the start of the argument area.
 * `INVLPG` VAs follow at {@link REPLY_VA_WORD} (lo, hi pairs); multicall results
 * (i32) at {@link REPLY_RESULT_WORD}.
 */
export const REPLY = Object.freeze({
  DONE: 0, OUTCOME: 1, REFLECT: 2, CR3_LO: 3, CR3_HI: 4, HWCR3_LO: 5, HWCR3_HI: 6, FLUSHES: 7, INVLPGS: 8,
  VALIDATED: 9, EMULATIONS: 10, NREASONS: 11, REASON0: 12,
} as const);
/** At most this many reasons in one answer (one entry has one reason; a SETUP none). */
export const MAX_REASONS = 4;
/** Where multicall results start (u32 word index). */
export const REPLY_RESULT_WORD = 16;
/** Where invalidated VAs start (u32 word index). */
export const REPLY_VA_WORD = 160;
/** At most this many single-entry invalidations in one answer; more become a full flush. */
export const MAX_REPLY_VAS = Math.floor((4032 / 4 - REPLY_VA_WORD) / 2);

/** `OUTCOME` of a PAGE_FAULT answer. */
export const OUTCOME = Object.freeze({ RETRY: 0, EMULATED: 1, REFLECT: 2 } as const);

/** Writes a JS number below 2^53 as two u32 halves at byte `off`. */
export function setU64(dv: DataView, off: number, v: number): void {
  dv.setUint32(off, v % 2 ** 32, true);
  dv.setUint32(off + 4, Math.floor(v / 2 ** 32), true);
}

/** Reads two u32 halves at byte `off` as a JS number (exact below 2^53). */
export function getU64(dv: DataView, off: number): number {
  return dv.getUint32(off, true) + dv.getUint32(off + 4, true) * 2 ** 32;
}
