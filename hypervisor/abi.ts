/**
 * The hypervisor ABI as pvio implements it: Xen's hypercall and sub-op numbers,
 * flags, status codes and argument structs (x86_64 layouts), plus the few layouts
 * that are pvio's own (the hypercall page header, event pair pages).
 *
 * Argument structs are written by a guest into its vCPU's hypercall page as an
 * array (the batched `count` form) and copied once by the hypervisor before it
 * validates them (DESIGN.md, decision 2). Where Xen passes a guest handle
 * (`XEN_GUEST_HANDLE`) pvio places the array inline after the struct instead —
 * a documented divergence, since JS has no guest virtual addresses here.
 *
 * @see xen/include/public/xen.h, grant_table.h, event_channel.h, memory.h, sched.h, vcpu.h
 */
import { defineLayout, field } from '../rings/layout.ts';

/** A domain id (u16). `DOMID_SELF` names the caller. @see xen.h domid_t */
export type DomId = number & { readonly __brand: 'DomId' };
/** A grant reference: index into the granting domain's grant table. @see grant_table.h grant_ref_t */
export type GrantRef = number & { readonly __brand: 'GrantRef' };
/** An event-channel port number, local to one domain. @see event_channel.h evtchn_port_t */
export type EvtchnPort = number & { readonly __brand: 'EvtchnPort' };
/** A machine frame number: the identity of one 4 KiB frame in the frame table. */
export type Mfn = number & { readonly __brand: 'Mfn' };
/** A grant-map handle returned by `GNTTABOP_map_grant_ref` (u32). */
export type GrantHandle = number & { readonly __brand: 'GrantHandle' };

/** Brands a number read from an untyped source (XenStore, a test) as a {@link DomId}; no check. */
export const asDomId = (n: number): DomId => n as DomId;
/** Brands a number as a {@link GrantRef}; no check (the hypervisor validates refs). */
export const asGrantRef = (n: number): GrantRef => n as GrantRef;
/** Brands a number as an {@link EvtchnPort}; no check (the hypervisor validates ports). */
export const asPort = (n: number): EvtchnPort => n as EvtchnPort;
/** Brands a number as an {@link Mfn}; no check. */
export const asMfn = (n: number): Mfn => n as Mfn;

/** Bytes per page (`XEN_PAGE_SIZE`), whatever the host's page size. */
export const PAGE_SIZE = 4096;
/** log2 of {@link PAGE_SIZE} (`XEN_PAGE_SHIFT`). */
export const PAGE_SHIFT = 12;
/** `DOMID_SELF` (xen.h). */
export const DOMID_SELF = 0x7ff0 as DomId;
/** `DOMID_XEN` (xen.h): owner of hypervisor frames (event pair and wake pages). */
export const DOMID_XEN = 0x7ff2 as DomId;
/** dom0, the control domain (runs xenstored, the console daemon and blkback). */
export const DOMID_0 = 0 as DomId;

/** Hypercall numbers. @see xen.h `__HYPERVISOR_*` */
export const HYPERVISOR = Object.freeze({
  set_trap_table: 0,
  mmu_update: 1,
  set_callbacks: 4,
  memory_op: 12,
  multicall: 13,
  update_va_mapping: 14,
  set_timer_op: 15,
  xen_version: 17,
  grant_table_op: 20,
  vcpu_op: 24,
  mmuext_op: 26,
  sched_op: 29,
  event_channel_op: 32,
} as const);
/** One of the hypercall numbers pvio serves (the MMU ones through the CPU/MMU model, hypervisor/mmu/). */
export type HypercallNr = (typeof HYPERVISOR)[keyof typeof HYPERVISOR];
/** Reverse map for counters: number → name. */
export const HYPERCALL_NAME: Readonly<Record<number, string>> = Object.freeze(
  Object.fromEntries(Object.entries(HYPERVISOR).map(([k, v]) => [v, k])),
);

/** `GNTTABOP_*` sub-ops. @see grant_table.h */
export const GNTTABOP = Object.freeze({
  map_grant_ref: 0, unmap_grant_ref: 1, setup_table: 2, dump_table: 3, transfer: 4,
  copy: 5, query_size: 6,
} as const);
/** `EVTCHNOP_*` sub-ops. @see event_channel.h */
export const EVTCHNOP = Object.freeze({
  bind_interdomain: 0, bind_virq: 1, bind_pirq: 2, close: 3, send: 4, status: 5,
  alloc_unbound: 6, bind_ipi: 7, bind_vcpu: 8, unmask: 9,
} as const);
/**
 * `XENMEM_*` sub-ops pvio serves. Xen's numbers, plus two P2M/M2P reads:
 * - `translate_gpfn_list` (8): Xen 3.x's P2M read for auto-translated guests (removed
 *   from memory.h after 4.0, the number left reserved as `REMOVED`). pvio revives it
 *   with its old semantics because pvio's hypervisor, not the guest, keeps the P2M
 *   (as Xen does for a translated guest): GPFNs in, MFNs out, `INVALID_MFN` for a hole.
 * - `pvio_machphys_lookup` (63, pvio's own, the last number Xen's `MEMOP_CMD_MASK`
 *   allows): the M2P read. A Xen PV guest reads `machine_to_phys_mapping` directly,
 *   a read-only table at the virtual address `XENMEM_machphys_mapping` names; JS cannot
 *   make a shared buffer read-only, so pvio answers lookups by hypercall instead.
 *   MFNs in, pseudo-physical frame numbers out, `INVALID_M2P_ENTRY` for a frame the
 *   named domain does not own as RAM (Xen's global table would show another domain's
 *   pfn; pvio does not tell one guest another's layout).
 * @see memory.h
 */
export const XENMEM = Object.freeze({
  increase_reservation: 0, decrease_reservation: 1, current_reservation: 3, maximum_reservation: 4,
  populate_physmap: 6, translate_gpfn_list: 8, pvio_machphys_lookup: 63,
} as const);
/**
 * One u32 half of `INVALID_MFN` / `INVALID_M2P_ENTRY` (`~0UL`): a P2M hole, or a frame
 * with no pseudo-physical number, is written as a u64 whose two halves are both this.
 * @see xen/include/xen/mm.h (INVALID_MFN), xen/arch/x86/include/asm/mm.h (INVALID_M2P_ENTRY)
 */
export const INVALID_FRAME_U32 = 0xffff_ffff;
/** Largest extent order memory_op accepts (2^4 = 16 pages; Xen's domU default `memop-max-order` is 9). */
export const MAX_EXTENT_ORDER = 4;
/** `SCHEDOP_*` sub-ops. @see sched.h */
export const SCHEDOP = Object.freeze({ yield: 0, block: 1, shutdown: 2 } as const);
/**
 * `VCPUOP_*` sub-ops of `vcpu_op`. pvio serves `get_runstate_info` only (the others
 * answer ENOSYS). @see vcpu.h
 */
export const VCPUOP = Object.freeze({
  initialise: 0, up: 1, down: 2, is_up: 3, get_runstate_info: 4, register_runstate_memory_area: 5,
  set_periodic_timer: 6, stop_periodic_timer: 7, set_singleshot_timer: 8, stop_singleshot_timer: 9,
} as const);
/**
 * `RUNSTATE_*`: what a vCPU is doing (`vcpu_runstate_info.state`, and the index of
 * `time[]`). In pvio a vCPU is `running` while its domain is unpaused (busy or idle
 * in its event loop alike: the hypervisor cannot see a worker idle) and `offline`
 * while it is paused, before its first unpause and once it is dying — Xen's state
 * for "paused by the administrator". `runnable` and `blocked` are never entered.
 * @see vcpu.h
 */
export const RUNSTATE = Object.freeze({ running: 0, runnable: 1, blocked: 2, offline: 3 } as const);
/** Virtual IRQs (`VIRQ_*`). pvio raises `timer` (per vCPU) only. @see xen.h */
export const VIRQ = Object.freeze({ timer: 0, debug: 1 } as const);
/** Number of VIRQs (`NR_VIRQS`). @see xen.h */
export const NR_VIRQS = 24;
/** `vcpu_time_info.flags` bits (`XEN_PVCLOCK_*`). @see xen.h */
export const XEN_PVCLOCK = Object.freeze({ tsc_stable: 1 << 0, guest_stopped: 1 << 1 } as const);
/** `SHUTDOWN_*` reasons. @see sched.h */
export const SHUTDOWN = Object.freeze({ poweroff: 0, reboot: 1, suspend: 2, crash: 3 } as const);

/**
 * `XEN_DOMCTL_*` commands the toolstack sends the hypervisor. pvio's toolstack runs
 * on the main thread and sends them as messages (hypervisor/main.ts), not through a
 * `__HYPERVISOR_domctl` hypercall. @see domctl.h
 */
export const XEN_DOMCTL = Object.freeze({ scheduler_op: 16 } as const);
/** `XEN_SCHEDULER_*` ids: pvio implements the credit scheduler's per-domain parameters. @see domctl.h */
export const XEN_SCHEDULER = Object.freeze({ credit: 5 } as const);
/** `XEN_DOMCTL_SCHEDOP_*`: set or get a domain's parameters. @see domctl.h */
export const XEN_DOMCTL_SCHEDOP = Object.freeze({ putinfo: 0, getinfo: 1 } as const);
/** The credit scheduler's default weight (`CSCHED_DEFAULT_WEIGHT`), defined with the backends' weighted scheduler. @see xen/common/sched/credit.c */
export { CSCHED_DEFAULT_WEIGHT } from '../rings/weighted-scheduler.ts';
/**
 * `struct xen_domctl_sched_credit { uint16_t weight; uint16_t cap; }`: `weight` 1..65535
 * (a domain's share relative to the others'), `cap` in percent of one CPU (0 = none,
 * at most 100 × vCPUs). In `putinfo`, weight 0 and cap 0xffff leave that field as it is.
 * @see domctl.h
 */
export interface XenDomctlSchedCredit {
  weight: number;
  cap: number;
}
/**
 * `struct xen_domctl_scheduler_op { uint32_t sched_id; uint32_t cmd; union { ... credit; } u; }`
 * (the credit member only). `getinfo` fills `u.credit`. @see domctl.h
 */
export interface XenDomctlSchedulerOp {
  sched_id: number;
  cmd: number;
  u: { credit: XenDomctlSchedCredit };
}

/** Grant-entry flags (`GTF_*`). `reading`/`writing` are written only by Xen. @see grant_table.h */
export const GTF = Object.freeze({
  invalid: 0, permit_access: 1, accept_transfer: 2, transitive: 3, type_mask: 3,
  readonly: 1 << 2, reading: 1 << 3, writing: 1 << 4,
} as const);
/** `GNTMAP_*` map flags. @see grant_table.h */
export const GNTMAP = Object.freeze({ device_map: 1, host_map: 2, readonly: 4 } as const);
/** `GNTCOPY_*` copy flags: which side of a copy names a grant ref. @see grant_table.h */
export const GNTCOPY = Object.freeze({ source_gref: 1, dest_gref: 2 } as const);
/** Grant status codes (`GNTST_*`, i16). @see grant_table.h */
export const GNTST = Object.freeze({
  okay: 0, general_error: -1, bad_domain: -2, bad_gntref: -3, bad_handle: -4,
  bad_virt_addr: -5, bad_dev_addr: -6, no_device_space: -7, permission_denied: -8,
  bad_page: -9, bad_copy_arg: -10, address_too_big: -11, eagain: -12, no_space: -13,
} as const);
/** Refs 0..7 are reserved (`GNTTAB_NR_RESERVED_ENTRIES`): 0 console, 1 xenstore. */
export const GNTTAB_NR_RESERVED_ENTRIES = 8;
/** Grant ref the domain builder reserves for the console page (`GNTTAB_RESERVED_CONSOLE`). */
export const GNTTAB_RESERVED_CONSOLE = 0 as GrantRef;
/** Grant ref the domain builder reserves for the XenStore page (`GNTTAB_RESERVED_XENSTORE`). */
export const GNTTAB_RESERVED_XENSTORE = 1 as GrantRef;
/** v1 entries per 4 KiB grant-table frame. */
export const GRANT_ENTRIES_PER_FRAME = PAGE_SIZE / 8;

/** Event-channel status values (`EVTCHNSTAT_*`). @see event_channel.h */
export const EVTCHNSTAT = Object.freeze({ closed: 0, unbound: 1, interdomain: 2, pirq: 3, virq: 4, ipi: 5 } as const);
/** 2-level ABI channel count on x86_64 (64 × 64). */
export const NR_EVENT_CHANNELS = 4096;

/** Errno values Xen returns from hypercalls (negated). @see xen/include/public/errno.h */
export const XEN_ERRNO = Object.freeze({
  EPERM: 1, ENOENT: 2, ESRCH: 3, EINTR: 4, EIO: 5, E2BIG: 7, EAGAIN: 11, ENOMEM: 12,
  EACCES: 13, EFAULT: 14, EBUSY: 16, EEXIST: 17, EINVAL: 22, ENOSPC: 28, ENOSYS: 38,
} as const);

// ---------------------------------------------------------------------------
// Argument structs (x86_64)

/** `struct grant_entry_v1 { uint16_t flags; domid_t domid; uint32_t frame; }` @see grant_table.h */
export const GRANT_ENTRY_V1 = defineLayout('grant_entry_v1', 'grant_table.h', 8, {
  flags: field(0, 'u16', 'either'), // GST sets type/readonly; XEN sets reading/writing
  domid: field(2, 'u16', 'guest'),
  frame: field(4, 'u32', 'guest'),
});

/**
 * `struct gnttab_map_grant_ref { u64 host_addr; u32 flags; grant_ref_t ref; domid_t dom;
 *  int16_t status; grant_handle_t handle; u64 dev_bus_addr; }` — pvio answers the mapped
 * frame's MFN in `dev_bus_addr` (as `mfn << 12`), from which the guest finds its view.
 * @see grant_table.h
 */
export const GNTTAB_MAP_GRANT_REF = defineLayout('gnttab_map_grant_ref', 'grant_table.h', 32, {
  host_addr: field(0, 'u64', 'guest'),
  flags: field(8, 'u32', 'guest'),
  ref: field(12, 'u32', 'guest'),
  dom: field(16, 'u16', 'guest'),
  status: field(18, 'i16', 'xen'),
  handle: field(20, 'u32', 'xen'),
  dev_bus_addr: field(24, 'u64', 'xen'),
});

/** `struct gnttab_unmap_grant_ref { u64 host_addr; u64 dev_bus_addr; grant_handle_t handle; int16_t status; }` @see grant_table.h */
export const GNTTAB_UNMAP_GRANT_REF = defineLayout('gnttab_unmap_grant_ref', 'grant_table.h', 24, {
  host_addr: field(0, 'u64', 'guest'),
  dev_bus_addr: field(8, 'u64', 'guest'),
  handle: field(16, 'u32', 'guest'),
  status: field(20, 'i16', 'xen'),
});

/**
 * `struct gnttab_copy { struct { union { grant_ref_t ref; xen_pfn_t gmfn; } u; domid_t domid;
 *  uint16_t offset; } source, dest; uint16_t len; uint16_t flags; int16_t status; }` (x86_64: 40 B).
 * `gmfn` is the caller's own MFN (pvio guests are PV: their frame numbers are machine frames).
 * @see grant_table.h
 */
export const GNTTAB_COPY = defineLayout('gnttab_copy', 'grant_table.h', 40, {
  source_u: field(0, 'u64', 'guest'),
  source_domid: field(8, 'u16', 'guest'),
  source_offset: field(10, 'u16', 'guest'),
  dest_u: field(16, 'u64', 'guest'),
  dest_domid: field(24, 'u16', 'guest'),
  dest_offset: field(26, 'u16', 'guest'),
  len: field(32, 'u16', 'guest'),
  flags: field(34, 'u16', 'guest'),
  status: field(36, 'i16', 'xen'),
});

/** `struct gnttab_query_size { domid_t dom; u32 nr_frames; u32 max_nr_frames; int16_t status; }` @see grant_table.h */
export const GNTTAB_QUERY_SIZE = defineLayout('gnttab_query_size', 'grant_table.h', 16, {
  dom: field(0, 'u16', 'guest'),
  nr_frames: field(4, 'u32', 'xen'),
  max_nr_frames: field(8, 'u32', 'xen'),
  status: field(12, 'i16', 'xen'),
});

/** `struct evtchn_alloc_unbound { domid_t dom, remote_dom; evtchn_port_t port; }` @see event_channel.h */
export const EVTCHN_ALLOC_UNBOUND = defineLayout('evtchn_alloc_unbound', 'event_channel.h', 8, {
  dom: field(0, 'u16', 'guest'),
  remote_dom: field(2, 'u16', 'guest'),
  port: field(4, 'u32', 'xen'),
});
/** `struct evtchn_bind_interdomain { domid_t remote_dom; evtchn_port_t remote_port, local_port; }` @see event_channel.h */
export const EVTCHN_BIND_INTERDOMAIN = defineLayout('evtchn_bind_interdomain', 'event_channel.h', 12, {
  remote_dom: field(0, 'u16', 'guest'),
  remote_port: field(4, 'u32', 'guest'),
  local_port: field(8, 'u32', 'xen'),
});
/** `struct evtchn_bind_vcpu { evtchn_port_t port; uint32_t vcpu; }` @see event_channel.h */
export const EVTCHN_BIND_VCPU = defineLayout('evtchn_bind_vcpu', 'event_channel.h', 8, {
  port: field(0, 'u32', 'guest'),
  vcpu: field(4, 'u32', 'guest'),
});
/** `struct evtchn_bind_virq { uint32_t virq; uint32_t vcpu; evtchn_port_t port; }` @see event_channel.h */
export const EVTCHN_BIND_VIRQ = defineLayout('evtchn_bind_virq', 'event_channel.h', 12, {
  virq: field(0, 'u32', 'guest'),
  vcpu: field(4, 'u32', 'guest'),
  port: field(8, 'u32', 'xen'),
});
/** `struct evtchn_close { evtchn_port_t port; }` (also `evtchn_send`, `evtchn_unmask`). @see event_channel.h */
export const EVTCHN_PORT_ARG = defineLayout('evtchn_close', 'event_channel.h', 4, {
  port: field(0, 'u32', 'guest'),
});
/**
 * `struct evtchn_status { domid_t dom; evtchn_port_t port; u32 status; u32 vcpu;
 *  union { ... interdomain { domid_t dom; evtchn_port_t port; } } u; }` @see event_channel.h
 */
export const EVTCHN_STATUS = defineLayout('evtchn_status', 'event_channel.h', 24, {
  dom: field(0, 'u16', 'guest'),
  port: field(4, 'u32', 'guest'),
  status: field(8, 'u32', 'xen'),
  vcpu: field(12, 'u32', 'xen'),
  remote_dom: field(16, 'u16', 'xen'),
  remote_port: field(20, 'u32', 'xen'),
});

/**
 * `struct xen_memory_reservation { XEN_GUEST_HANDLE(xen_pfn_t) extent_start; u64 nr_extents;
 *  u32 extent_order; u32 mem_flags; domid_t domid; }` (32 B). pvio: the extent list
 * (`nr_extents` u64 frame numbers) follows the struct inline: for increase_reservation
 * MFN bases out; for decrease_reservation MFN bases in (a PV guest's GMFN is its MFN);
 * for populate_physmap GPFN bases in, overwritten with the MFN bases allocated (Xen's
 * PV behaviour).
 * @see memory.h
 */
export const XEN_MEMORY_RESERVATION = defineLayout('xen_memory_reservation', 'memory.h', 32, {
  extent_start: field(0, 'u64', 'guest'),
  nr_extents: field(8, 'u64', 'guest'),
  extent_order: field(16, 'u32', 'guest'),
  mem_flags: field(20, 'u32', 'guest'),
  domid: field(24, 'u16', 'guest'),
});
/**
 * `struct xen_memory_domain { domid_t domid; }`: the argument of
 * `XENMEM_current_reservation` / `XENMEM_maximum_reservation` (answer: pages).
 * @see memory.h
 */
export const XEN_MEMORY_DOMAIN = defineLayout('xen_memory_domain', 'memory.h', 2, {
  domid: field(0, 'u16', 'guest'),
});
/**
 * `struct xen_translate_gpfn_list { domid_t domid; xen_ulong_t nr_gpfns;
 *  XEN_GUEST_HANDLE(xen_pfn_t) gpfn_list; XEN_GUEST_HANDLE(xen_pfn_t) mfn_list; }`
 * (x86_64, 32 B; Xen 3.x memory.h). pvio: the `nr_gpfns` u64 list follows the struct
 * inline and is translated in place (Xen allowed `mfn_list == gpfn_list`); the handles
 * are ignored. Also the argument of pvio's `XENMEM_pvio_machphys_lookup`, whose list
 * holds MFNs in and pseudo-physical frame numbers out.
 * @see memory.h (Xen 3.4, XENMEM_translate_gpfn_list)
 */
export const XEN_TRANSLATE_GPFN_LIST = defineLayout('xen_translate_gpfn_list', 'memory.h', 32, {
  domid: field(0, 'u16', 'guest'),
  nr_gpfns: field(8, 'u64', 'guest'),
  gpfn_list: field(16, 'u64', 'guest'),
  mfn_list: field(24, 'u64', 'guest'),
});
/**
 * The `u.virq` member of {@link EVTCHN_STATUS}'s union (`struct evtchn_status`, whose
 * `u` starts at 16): answered for a port with `status = EVTCHNSTAT_virq`.
 * @see event_channel.h
 */
export const EVTCHN_STATUS_VIRQ = defineLayout('evtchn_status.u.virq', 'event_channel.h', 24, {
  virq: field(16, 'u32', 'xen'),
});
/**
 * The argument of `set_timer_op`: Xen passes `uint64_t timeout` (absolute system time,
 * ns; 0 cancels) in a register; pvio writes it at the start of the argument area.
 * @see xen.h __HYPERVISOR_set_timer_op
 */
export const SET_TIMER_OP_ARGS = defineLayout('pvio_set_timer_op', 'pvio', 8, {
  timeout: field(0, 'u64', 'guest'),
});
/**
 * The arguments of `vcpu_op(cmd, vcpuid, extra_args)`: Xen passes `vcpuid` in a
 * register and `extra_args` as a guest pointer; pvio writes `vcpuid` here and the
 * `extra_args` struct inline after it, at {@link VCPU_OP_EXTRA_OFFSET}.
 * @see vcpu.h
 */
export const VCPU_OP_ARGS = defineLayout('pvio_vcpu_op', 'pvio', 8, {
  vcpuid: field(0, 'u32', 'guest'),
});
/** Offset of `vcpu_op`'s `extra_args` struct in the argument area (bytes). */
export const VCPU_OP_EXTRA_OFFSET = VCPU_OP_ARGS.size;
/**
 * `struct vcpu_runstate_info { int state; uint64_t state_entry_time; uint64_t time[4]; }`
 * (48 B): the state (`RUNSTATE_*`), the system time (ns) it was entered, and the ns
 * spent in each state, the current one included. Answered by `VCPUOP_get_runstate_info`.
 * @see vcpu.h
 */
export const VCPU_RUNSTATE_INFO = defineLayout('vcpu_runstate_info', 'vcpu.h', 48, {
  state: field(0, 'i32', 'xen'),
  state_entry_time: field(8, 'u64', 'xen'),
  time: field(16, 'bytes', 'xen', 32),
});
/** `struct sched_shutdown { unsigned int reason; }` @see sched.h */
export const SCHED_SHUTDOWN = defineLayout('sched_shutdown', 'sched.h', 4, {
  reason: field(0, 'u32', 'guest'),
});

// ---------------------------------------------------------------------------
// shared_info (2-level event ABI, x86_64). Private to its domain in pvio: only the
// domain's own vCPUs and the hypervisor write it (DESIGN.md, decision 3).

/** `struct vcpu_info` head (64 B each, 32 of them at offset 0 of shared_info). @see xen.h */
export const VCPU_INFO = defineLayout('vcpu_info', 'xen.h', 64, {
  evtchn_upcall_pending: field(0, 'u8', 'either'),
  evtchn_upcall_mask: field(1, 'u8', 'guest'),
  evtchn_pending_sel: field(8, 'u64', 'either'),
  arch: field(16, 'bytes', 'xen', 16),
  time: field(32, 'bytes', 'xen', 32),
});
/**
 * `struct vcpu_time_info` (32 B, at `vcpu_info.time`): the hypervisor's system time
 * (ns since the machine booted) and the guest TSC value it was sampled at, with the
 * scale from TSC ticks to ns. Current system time =
 * `system_time + ((((tsc - tsc_timestamp) << tsc_shift) * tsc_to_system_mul) >> 32)`.
 * Written only by the hypervisor under the `version` seqlock: odd while an update is
 * in progress, even otherwise; a reader retries while it is odd or changed across
 * its read. pvio's TSC is defined in hypervisor/time.ts (`tscNow`).
 * @see xen.h
 */
export const VCPU_TIME_INFO = defineLayout('vcpu_time_info', 'xen.h', 32, {
  version: field(0, 'u32', 'xen'),
  pad0: field(4, 'u32', 'xen'),
  tsc_timestamp: field(8, 'u64', 'xen'),
  system_time: field(16, 'u64', 'xen'),
  tsc_to_system_mul: field(24, 'u32', 'xen'),
  tsc_shift: field(28, 'i8', 'xen'),
  flags: field(29, 'u8', 'xen'),
  pad1: field(30, 'bytes', 'xen', 2),
});
/** `struct shared_info` (x86_64, 3136 B). @see xen.h */
export const SHARED_INFO = defineLayout('shared_info', 'xen.h', 3136, {
  vcpu_info: field(0, 'bytes', 'either', 64 * 32),
  evtchn_pending: field(2048, 'bytes', 'either', 512),
  evtchn_mask: field(2560, 'bytes', 'guest', 512),
  wc_version: field(3072, 'u32', 'xen'),
  wc_sec: field(3076, 'u32', 'xen'),
  wc_nsec: field(3080, 'u32', 'xen'),
  wc_sec_hi: field(3084, 'u32', 'xen'),
  arch: field(3088, 'bytes', 'xen', 48),
});
/** `vcpu_info` slots in shared_info, hence the most vCPUs a domain may have (`XEN_LEGACY_MAX_VCPUS`). */
export const MAX_VIRT_CPUS = 32;

// ---------------------------------------------------------------------------
// pvio's own pages

/**
 * Header of a vCPU's hypercall page (pvio's own; the rest of the page, from
 * `args`, holds Xen's argument structs as an array). The guest writes `op`,
 * `cmd`, `count`, `start`, `seq`, then stores `state = PENDING`; the hypervisor
 * answers `result`, `progress`, `preempted`, then stores `state = DONE`.
 */
export const HYPERCALL_PAGE = defineLayout('pvio_hypercall_page', 'pvio', 4096, {
  state: field(0, 'i32', 'either'),
  op: field(4, 'u32', 'guest'),
  cmd: field(8, 'u32', 'guest'),
  count: field(12, 'u32', 'guest'),
  start: field(16, 'u32', 'guest'),
  seq: field(20, 'u32', 'guest'),
  result: field(24, 'i32', 'xen'),
  progress: field(28, 'u32', 'xen'),
  preempted: field(32, 'u32', 'xen'),
  pushSeq: field(36, 'u32', 'xen'), // bumped when the hypervisor posts unsolicited handles
  paused: field(40, 'u32', 'xen'), // 1 while the domain is paused
  posted: field(44, 'u32', 'xen'), // 1 when this call's answer posted handles on the vCPU's port
  args: field(64, 'bytes', 'guest', 4096 - 64),
});
/** `state` values of {@link HYPERCALL_PAGE}. */
export const HC_STATE = Object.freeze({ IDLE: 0, PENDING: 1, DONE: 2 } as const);
/** Byte offset of the argument array in a hypercall page. */
export const HC_ARGS_OFFSET = HYPERCALL_PAGE.fields.args.offset;
/** Bytes available for argument structs in one call. */
export const HC_ARGS_BYTES = HYPERCALL_PAGE.fields.args.size;

/**
 * An event pair page: one per (receiver, sender) domain pair, shared by those two
 * only. The sender sets bit `port` of `pending` (receiver's port numbering), then
 * bit `port >> 5` of `sel`, then bumps the receiver vCPU's wake word. The receiver
 * swaps `sel` and the words it names with 0 and folds the bits into its private
 * shared_info. Anything else a sender writes here costs a spurious wake-up at most.
 */
export const EVTCHN_PAIR_PAGE = defineLayout('pvio_evtchn_pair', 'pvio', 640, {
  pending: field(0, 'bytes', 'either', NR_EVENT_CHANNELS / 8),
  sel: field(512, 'bytes', 'either', NR_EVENT_CHANNELS / 32 / 8),
});
/** The wake page of a vCPU: one stateless i32 that any bound sender bumps and notifies. */
export const WAKE_PAGE = defineLayout('pvio_wake', 'pvio', 64, {
  wake: field(0, 'i32', 'either'),
});
