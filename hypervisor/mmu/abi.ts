/**
 * The constants of Xen's x86 PV MMU and CPU interface that the model serves.
 *
 * @see xen/include/public/xen.h (hypercall numbers, MMU_*, MMUEXT_*, UVMF_*),
 *   xen/include/public/callback.h (CALLBACKTYPE_*), xen/include/public/arch-x86/xen.h
 *   (struct trap_info), Intel SDM vol. 3A §6.3.1 (exception vectors)
 */

/**
 * The hypercall numbers, errno values and `DOMID_XEN` are hypervisor/abi.ts's
 * (`HYPERVISOR`, `HYPERCALL_NAME`, `XEN_ERRNO`, `DOMID_XEN`); this file adds the MMU's
 * own constants.
 */

/** `ptr & 3` of an mmu_update request. @see xen.h */
export const MMU = Object.freeze({ NORMAL_PT_UPDATE: 0, MACHPHYS_UPDATE: 1, PT_UPDATE_PRESERVE_AD: 2 } as const);

/** `mmuext_op.cmd`. @see xen.h */
export const MMUEXT = Object.freeze({
  PIN_L1_TABLE: 0, PIN_L2_TABLE: 1, PIN_L3_TABLE: 2, PIN_L4_TABLE: 3, UNPIN_TABLE: 4,
  NEW_BASEPTR: 5, TLB_FLUSH_LOCAL: 6, INVLPG_LOCAL: 7, TLB_FLUSH_MULTI: 8, INVLPG_MULTI: 9,
  TLB_FLUSH_ALL: 10, INVLPG_ALL: 11,
} as const);

/** `update_va_mapping` flags: what to flush after the update. @see xen.h */
export const UVMF = Object.freeze({ NONE: 0, TLB_FLUSH: 1, INVLPG: 2, FLUSH_TYPE_MASK: 3, LOCAL: 0, ALL: 4 } as const);

/** Callback types of `set_callbacks`/`CALLBACKOP_register`. @see callback.h */
export const CALLBACKTYPE = Object.freeze({ event: 0, failsafe: 1, syscall: 2 } as const);

/** Exception vectors the model raises. @see Intel SDM vol. 3A §6.3.1 */
export const VECTOR = Object.freeze({ GP: 13, PF: 14 } as const);
