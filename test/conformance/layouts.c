/*
 * sizeof/offsetof of every Xen struct pvio mirrors, and the constants it copies,
 * taken from Xen's own public headers (Debian's libxen-dev) by the compiler.
 * test/conformance.test.ts compares them field by field with pvio's layout tables.
 *
 * One list of values (LAYOUT_VALUES below), built two ways:
 *  - natively, then run: prints one JSON object {"key": value, ...} on stdout;
 *  - with -DLAYOUT_ASM (used with `gcc -m32 -ffreestanding -S`, compile only, so no
 *    32-bit libc is needed): each value becomes a global `const int c_<key> = value;`
 *    and the test reads the `.long N` after the label `c_<key>:` in the assembly.
 *
 * Keys:
 *   <tag>__<member>__off / __size   offsetof / sizeof of a member of struct <tag>
 *                                   (a nested member's path is spelled with `_`)
 *   <tag>__sizeof                   sizeof(struct <tag>) (or of union <tag>)
 *   const__<NAME>                   the value of the header's macro/enum NAME
 *   ring__<name>__<pages>           __CONST_RING_SIZE(<name>, pages * 4096)
 *   rt_ring__<name>__<pages>        __RING_SIZE(sring pointer, pages * 4096) (native only)
 *
 * Optional members, present only in newer headers than Debian 12's 4.17, are
 * compiled in when the test's probe found them: -DHAVE_XS_EVTCHN_PORT
 * (xenstore_domain_interface.evtchn_port), -DHAVE_XENCONS_CONNECTION
 * (xencons_interface.connection).
 */
#include <stddef.h>
#include <stdint.h>

/* The current interface (what a new guest builds against), not the legacy default. */
#define __XEN_INTERFACE_VERSION__ __XEN_LATEST_INTERFACE_VERSION__
#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>
#include <xen/io/xs_wire.h>
#include <xen/io/console.h>

#define PAGE 4096

/* offsetof and sizeof of one member; P is the member path as a key (for nested members). */
#define FP(V, tag, P, member) \
    V(tag##__##P##__off, offsetof(struct tag, member)) \
    V(tag##__##P##__size, sizeof(((struct tag *)0)->member))
#define F(V, tag, member) FP(V, tag, member, member)
#define S(V, tag) V(tag##__sizeof, sizeof(struct tag))
#define U(V, tag) V(tag##__sizeof, sizeof(union tag))
#define C(V, name) V(const__##name, (name))
#define R(V, name, pages) V(ring__##name##__##pages, __CONST_RING_SIZE(name, (pages) * PAGE))

#define SRING(V, tag) \
    S(V, tag) F(V, tag, req_prod) F(V, tag, req_event) F(V, tag, rsp_prod) F(V, tag, rsp_event) \
    F(V, tag, pvt) F(V, tag, __pad) F(V, tag, ring)

#ifdef HAVE_XS_EVTCHN_PORT
#define XS_EVTCHN_PORT(V) F(V, xenstore_domain_interface, evtchn_port)
#else
#define XS_EVTCHN_PORT(V)
#endif
#ifdef HAVE_XENCONS_CONNECTION
#define XENCONS_CONNECTION(V) F(V, xencons_interface, connection)
#else
#define XENCONS_CONNECTION(V)
#endif
/* Feature bits newer than 4.17 are macros, so plain #ifdef finds them. */
#ifdef XENSTORE_SERVER_FEATURE_WATCHDEPTH
#define XS_WATCHDEPTH(V) C(V, XENSTORE_SERVER_FEATURE_WATCHDEPTH)
#else
#define XS_WATCHDEPTH(V)
#endif
#ifdef XENSTORE_SERVER_FEATURE_DOMID_ANY
#define XS_DOMID_ANY(V) C(V, XENSTORE_SERVER_FEATURE_DOMID_ANY)
#else
#define XS_DOMID_ANY(V)
#endif
/* shared_info.wc_sec_hi is a member on x86_64 only (in arch on i386). */
#ifdef __x86_64__
#define WC_SEC_HI(V) F(V, shared_info, wc_sec_hi)
#else
#define WC_SEC_HI(V)
#endif

#define LAYOUT_VALUES(V) \
    /* io/ring.h: the shared ring header, as DEFINE_RING_TYPES lays it out */ \
    SRING(V, blkif_sring) SRING(V, netif_tx_sring) SRING(V, netif_rx_sring) \
    \
    /* io/blkif.h */ \
    S(V, blkif_request) F(V, blkif_request, operation) F(V, blkif_request, nr_segments) \
    F(V, blkif_request, handle) F(V, blkif_request, id) F(V, blkif_request, sector_number) \
    F(V, blkif_request, seg) \
    S(V, blkif_request_segment) F(V, blkif_request_segment, gref) \
    F(V, blkif_request_segment, first_sect) F(V, blkif_request_segment, last_sect) \
    S(V, blkif_request_discard) F(V, blkif_request_discard, operation) F(V, blkif_request_discard, flag) \
    F(V, blkif_request_discard, handle) F(V, blkif_request_discard, id) \
    F(V, blkif_request_discard, sector_number) F(V, blkif_request_discard, nr_sectors) \
    S(V, blkif_request_indirect) F(V, blkif_request_indirect, operation) \
    F(V, blkif_request_indirect, indirect_op) F(V, blkif_request_indirect, nr_segments) \
    F(V, blkif_request_indirect, id) F(V, blkif_request_indirect, sector_number) \
    F(V, blkif_request_indirect, handle) F(V, blkif_request_indirect, indirect_grefs) \
    S(V, blkif_response) F(V, blkif_response, id) F(V, blkif_response, operation) \
    F(V, blkif_response, status) \
    U(V, blkif_sring_entry) \
    R(V, blkif, 1) R(V, blkif, 2) R(V, blkif, 4) R(V, blkif, 8) R(V, blkif, 16) \
    C(V, BLKIF_OP_READ) C(V, BLKIF_OP_WRITE) C(V, BLKIF_OP_WRITE_BARRIER) \
    C(V, BLKIF_OP_FLUSH_DISKCACHE) C(V, BLKIF_OP_RESERVED_1) C(V, BLKIF_OP_DISCARD) \
    C(V, BLKIF_OP_INDIRECT) C(V, BLKIF_RSP_OKAY) C(V, BLKIF_RSP_ERROR) C(V, BLKIF_RSP_EOPNOTSUPP) \
    C(V, BLKIF_MAX_SEGMENTS_PER_REQUEST) C(V, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST) \
    C(V, BLKIF_DISCARD_SECURE) C(V, VDISK_CDROM) C(V, VDISK_REMOVABLE) C(V, VDISK_READONLY) \
    \
    /* io/netif.h */ \
    S(V, netif_tx_request) F(V, netif_tx_request, gref) F(V, netif_tx_request, offset) \
    F(V, netif_tx_request, flags) F(V, netif_tx_request, id) F(V, netif_tx_request, size) \
    S(V, netif_tx_response) F(V, netif_tx_response, id) F(V, netif_tx_response, status) \
    S(V, netif_rx_request) F(V, netif_rx_request, id) F(V, netif_rx_request, pad) \
    F(V, netif_rx_request, gref) \
    S(V, netif_rx_response) F(V, netif_rx_response, id) F(V, netif_rx_response, offset) \
    F(V, netif_rx_response, flags) F(V, netif_rx_response, status) \
    S(V, netif_extra_info) F(V, netif_extra_info, type) F(V, netif_extra_info, flags) \
    F(V, netif_extra_info, u) \
    FP(V, netif_extra_info, u_gso_size, u.gso.size) FP(V, netif_extra_info, u_gso_type, u.gso.type) \
    FP(V, netif_extra_info, u_gso_pad, u.gso.pad) FP(V, netif_extra_info, u_gso_features, u.gso.features) \
    FP(V, netif_extra_info, u_mcast_addr, u.mcast.addr) \
    FP(V, netif_extra_info, u_hash_type, u.hash.type) \
    FP(V, netif_extra_info, u_hash_algorithm, u.hash.algorithm) \
    FP(V, netif_extra_info, u_hash_value, u.hash.value) \
    U(V, netif_tx_sring_entry) U(V, netif_rx_sring_entry) \
    R(V, netif_tx, 1) R(V, netif_rx, 1) \
    C(V, NETTXF_csum_blank) C(V, NETTXF_data_validated) C(V, NETTXF_more_data) C(V, NETTXF_extra_info) \
    C(V, NETRXF_data_validated) C(V, NETRXF_csum_blank) C(V, NETRXF_more_data) C(V, NETRXF_extra_info) \
    C(V, NETRXF_gso_prefix) \
    C(V, XEN_NETIF_EXTRA_TYPE_NONE) C(V, XEN_NETIF_EXTRA_TYPE_GSO) C(V, XEN_NETIF_EXTRA_TYPE_MCAST_ADD) \
    C(V, XEN_NETIF_EXTRA_TYPE_MCAST_DEL) C(V, XEN_NETIF_EXTRA_TYPE_HASH) C(V, XEN_NETIF_EXTRA_TYPE_MAX) \
    C(V, XEN_NETIF_EXTRA_FLAG_MORE) \
    C(V, XEN_NETIF_GSO_TYPE_NONE) C(V, XEN_NETIF_GSO_TYPE_TCPV4) C(V, XEN_NETIF_GSO_TYPE_TCPV6) \
    C(V, NETIF_RSP_DROPPED) C(V, NETIF_RSP_ERROR) C(V, NETIF_RSP_OKAY) C(V, NETIF_RSP_NULL) \
    C(V, XEN_NETIF_NR_SLOTS_MIN) C(V, XEN_NETIF_MAX_TX_SIZE) \
    \
    /* grant_table.h */ \
    S(V, grant_entry_v1) F(V, grant_entry_v1, flags) F(V, grant_entry_v1, domid) \
    F(V, grant_entry_v1, frame) \
    \
    /* io/xs_wire.h */ \
    S(V, xsd_sockmsg) F(V, xsd_sockmsg, type) F(V, xsd_sockmsg, req_id) F(V, xsd_sockmsg, tx_id) \
    F(V, xsd_sockmsg, len) \
    S(V, xenstore_domain_interface) F(V, xenstore_domain_interface, req) \
    F(V, xenstore_domain_interface, rsp) F(V, xenstore_domain_interface, req_cons) \
    F(V, xenstore_domain_interface, req_prod) F(V, xenstore_domain_interface, rsp_cons) \
    F(V, xenstore_domain_interface, rsp_prod) F(V, xenstore_domain_interface, server_features) \
    F(V, xenstore_domain_interface, connection) F(V, xenstore_domain_interface, error) \
    XS_EVTCHN_PORT(V) \
    C(V, XENSTORE_RING_SIZE) C(V, XENSTORE_PAYLOAD_MAX) C(V, XENSTORE_ABS_PATH_MAX) \
    C(V, XENSTORE_REL_PATH_MAX) C(V, XENSTORE_SERVER_FEATURE_RECONNECTION) \
    C(V, XENSTORE_SERVER_FEATURE_ERROR) XS_WATCHDEPTH(V) XS_DOMID_ANY(V) \
    C(V, XENSTORE_CONNECTED) C(V, XENSTORE_RECONNECT) C(V, XENSTORE_ERROR_NONE) \
    C(V, XENSTORE_ERROR_COMM) C(V, XENSTORE_ERROR_RINGIDX) C(V, XENSTORE_ERROR_PROTO) \
    C(V, XS_CONTROL) C(V, XS_DIRECTORY) C(V, XS_READ) C(V, XS_GET_PERMS) C(V, XS_WATCH) \
    C(V, XS_UNWATCH) C(V, XS_TRANSACTION_START) C(V, XS_TRANSACTION_END) C(V, XS_INTRODUCE) \
    C(V, XS_RELEASE) C(V, XS_GET_DOMAIN_PATH) C(V, XS_WRITE) C(V, XS_MKDIR) C(V, XS_RM) \
    C(V, XS_SET_PERMS) C(V, XS_WATCH_EVENT) C(V, XS_ERROR) C(V, XS_IS_DOMAIN_INTRODUCED) \
    C(V, XS_RESUME) C(V, XS_SET_TARGET) C(V, XS_RESET_WATCHES) C(V, XS_DIRECTORY_PART) \
    C(V, XS_INVALID) \
    \
    /* io/console.h */ \
    S(V, xencons_interface) F(V, xencons_interface, in) F(V, xencons_interface, out) \
    F(V, xencons_interface, in_cons) F(V, xencons_interface, in_prod) \
    F(V, xencons_interface, out_cons) F(V, xencons_interface, out_prod) \
    XENCONS_CONNECTION(V) \
    \
    /* xen.h: the 2-level event channel state */ \
    S(V, vcpu_info) F(V, vcpu_info, evtchn_upcall_pending) F(V, vcpu_info, evtchn_upcall_mask) \
    F(V, vcpu_info, evtchn_pending_sel) F(V, vcpu_info, arch) F(V, vcpu_info, time) \
    S(V, shared_info) F(V, shared_info, vcpu_info) F(V, shared_info, evtchn_pending) \
    F(V, shared_info, evtchn_mask) F(V, shared_info, wc_version) F(V, shared_info, wc_sec) \
    F(V, shared_info, wc_nsec) WC_SEC_HI(V) F(V, shared_info, arch)

#ifdef LAYOUT_ASM

#define AS_GLOBAL(key, value) const int c_##key = (int)(value);
LAYOUT_VALUES(AS_GLOBAL)

#else /* run natively: print JSON */

#include <stdio.h>

static int first = 1;

static void put(const char *key, long long value)
{
    printf("%s\n  \"%s\": %lld", first ? "{" : ",", key, value);
    first = 0;
}

/* __RING_SIZE takes a pointer to a real shared ring (it subtracts addresses). */
static _Alignas(PAGE) unsigned char page[16 * PAGE];

#define RT_RING(name, pages) \
    put("rt_ring__" #name "__" #pages, __RING_SIZE((struct name##_sring *)page, (pages) * PAGE));

int main(void)
{
#define AS_PUT(key, value) put(#key, (long long)(value));
    LAYOUT_VALUES(AS_PUT)
    RT_RING(blkif, 1) RT_RING(blkif, 2) RT_RING(blkif, 4) RT_RING(blkif, 8) RT_RING(blkif, 16)
    RT_RING(netif_tx, 1) RT_RING(netif_rx, 1)
    printf("\n}\n");
    return 0;
}

#endif
