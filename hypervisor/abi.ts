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
 * @see xen/include/public/xen.h, grant_table.h, event_channel.h, memory.h, sched.h
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
  memory_op: 12,
  multicall: 13,
  xen_version: 17,
  grant_table_op: 20,
  vcpu_op: 24,
  sched_op: 29,
  event_channel_op: 32,
} as const);
/** One of the hypercall numbers pvio serves. */
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
/** `XENMEM_*` sub-ops. @see memory.h */
export const XENMEM = Object.freeze({ increase_reservation: 0, decrease_reservation: 1 } as const);
/** `SCHEDOP_*` sub-ops. @see sched.h */
export const SCHEDOP = Object.freeze({ yield: 0, block: 1, shutdown: 2 } as const);
/** `SHUTDOWN_*` reasons. @see sched.h */
export const SHUTDOWN = Object.freeze({ poweroff: 0, reboot: 1, suspend: 2, crash: 3 } as const);

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
 * (`nr_extents` u64 MFNs: out for increase, in for decrease) follows the struct inline.
 * @see memory.h
 */
export const XEN_MEMORY_RESERVATION = defineLayout('xen_memory_reservation', 'memory.h', 32, {
  extent_start: field(0, 'u64', 'guest'),
  nr_extents: field(8, 'u64', 'guest'),
  extent_order: field(16, 'u32', 'guest'),
  mem_flags: field(20, 'u32', 'guest'),
  domid: field(24, 'u16', 'guest'),
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
