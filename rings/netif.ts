/**
 * netif ring entries (`xen/include/public/io/netif.h`): constants and layout
 * tables of the transmit and receive rings of the virtual network device.
 *
 * A vif has two rings, each a shared ring of its own (`rings/ring.ts`):
 * - **tx** (`DEFINE_RING_TYPES(netif_tx, ...)`): the frontend posts packets to
 *   send, one {@link NETIF_TX_REQUEST} per slot (a granted page, offset, size), and
 *   the backend answers each slot with a {@link NETIF_TX_RESPONSE}. 12-byte
 *   entries, 256 per page.
 * - **rx** (`DEFINE_RING_TYPES(netif_rx, ...)`): the frontend posts empty buffers
 *   ({@link NETIF_RX_REQUEST}), the backend fills them and answers with a
 *   {@link NETIF_RX_RESPONSE} **in the slot of the request that gave the buffer**.
 *   8-byte entries, 256 per page.
 *
 * Extra-info segments ({@link NETIF_EXTRA_INFO}: GSO, multicast, hash) occupy a
 * whole slot after the first slot of a packet, on tx (`NETTXF_extra_info`) and on
 * rx (`NETRXF_extra_info`), overlaying the request or response there; a tx extra
 * slot is answered with `status = NETIF_RSP_NULL`.
 *
 * The layouts are the same on x86_64 and i386 (no u64 field), so there is one
 * table per struct; the conformance test checks them against gcc for both.
 * The control ring (`xen_netif_ctrl_request`/`_response`) is not modelled yet.
 *
 * @see io/netif.h
 */
import { defineLayout, field } from './layout.ts';
import { invariant } from './errors.ts';

// ---------------------------------------------------------------------------
// Constants (io/netif.h)

/**
 * Slots per packet that every backend must accept (the first slot plus
 * follow-on slots; extra-info slots not counted). Linux netback drops a longer
 * packet and disables a vif that sends more than `fatal_skb_slots`.
 * @see io/netif.h `XEN_NETIF_NR_SLOTS_MIN`
 */
export const XEN_NETIF_NR_SLOTS_MIN = 18;
/** Largest packet a tx request chain may describe (the first slot's `size`). @see io/netif.h */
export const XEN_NETIF_MAX_TX_SIZE = 0xffff;

/** tx flag: the protocol checksum field is blank (checksum offload). @see io/netif.h `NETTXF_csum_blank` */
export const NETTXF_csum_blank = 1 << 0;
/** tx flag: the packet's checksum has been validated. @see io/netif.h `NETTXF_data_validated` */
export const NETTXF_data_validated = 1 << 1;
/** tx flag: the packet continues in the next slot. @see io/netif.h `NETTXF_more_data` */
export const NETTXF_more_data = 1 << 2;
/** tx flag: an extra-info slot follows this one. @see io/netif.h `NETTXF_extra_info` */
export const NETTXF_extra_info = 1 << 3;

/** rx flag: the packet's checksum has been validated (bit 0: swapped with tx). @see io/netif.h `NETRXF_data_validated` */
export const NETRXF_data_validated = 1 << 0;
/** rx flag: the protocol checksum field is blank (bit 1: swapped with tx). @see io/netif.h `NETRXF_csum_blank` */
export const NETRXF_csum_blank = 1 << 1;
/** rx flag: the packet continues in the next slot. @see io/netif.h `NETRXF_more_data` */
export const NETRXF_more_data = 1 << 2;
/** rx flag: an extra-info slot follows this one. @see io/netif.h `NETRXF_extra_info` */
export const NETRXF_extra_info = 1 << 3;
/** rx flag (deprecated): a GSO prefix slot precedes the packet. @see io/netif.h `NETRXF_gso_prefix` */
export const NETRXF_gso_prefix = 1 << 4;

/** Extra-info type 0: never used, invalid. @see io/netif.h */
export const XEN_NETIF_EXTRA_TYPE_NONE = 0;
/** Extra-info type: GSO parameters (`u.gso`, {@link NETIF_EXTRA_INFO_GSO}). @see io/netif.h */
export const XEN_NETIF_EXTRA_TYPE_GSO = 1;
/** Extra-info type: add a multicast address (`u.mcast`, tx only). @see io/netif.h */
export const XEN_NETIF_EXTRA_TYPE_MCAST_ADD = 2;
/** Extra-info type: remove a multicast address (`u.mcast`, tx only). @see io/netif.h */
export const XEN_NETIF_EXTRA_TYPE_MCAST_DEL = 3;
/** Extra-info type: the packet's hash (`u.hash`). @see io/netif.h */
export const XEN_NETIF_EXTRA_TYPE_HASH = 4;
/** One past the last extra-info type. @see io/netif.h */
export const XEN_NETIF_EXTRA_TYPE_MAX = 5;
/** Extra-info flag: another extra-info slot follows. @see io/netif.h `XEN_NETIF_EXTRA_FLAG_MORE` */
export const XEN_NETIF_EXTRA_FLAG_MORE = 1 << 0;

/** GSO type: none. @see io/netif.h */
export const XEN_NETIF_GSO_TYPE_NONE = 0;
/** GSO type: TCP over IPv4 (`feature-gso-tcpv4`). @see io/netif.h */
export const XEN_NETIF_GSO_TYPE_TCPV4 = 1;
/** GSO type: TCP over IPv6 (`feature-gso-tcpv6`). @see io/netif.h */
export const XEN_NETIF_GSO_TYPE_TCPV6 = 2;

/** Response status: the packet was dropped. @see io/netif.h */
export const NETIF_RSP_DROPPED = -2;
/** Response status: error (e.g. a bad tx slot; Linux netback errors every slot of the packet). @see io/netif.h */
export const NETIF_RSP_ERROR = -1;
/** Response status: success (tx). On rx a status >= 0 is the fragment's length. @see io/netif.h */
export const NETIF_RSP_OKAY = 0;
/** Response status of the slot that held an extra-info segment (tx). @see io/netif.h */
export const NETIF_RSP_NULL = 1;

// ---------------------------------------------------------------------------
// Layout tables

/**
 * A tx request: one slot of a packet to send.
 * ```c
 * struct netif_tx_request {
 *     grant_ref_t gref;     // u32 @0, page holding this slot's data
 *     uint16_t    offset;   // u16 @4, offset in the page (offset + size <= 4096)
 *     uint16_t    flags;    // u16 @6, NETTXF_*
 *     uint16_t    id;       // u16 @8, echoed in the response
 *     uint16_t    size;     // u16 @10, first slot: the whole packet; others: this fragment
 * };                        // sizeof 12
 * ```
 * @see io/netif.h
 */
export const NETIF_TX_REQUEST = defineLayout('netif_tx_request', 'io/netif.h', 12, {
  gref: field(0, 'u32', 'front'),
  offset: field(4, 'u16', 'front'),
  flags: field(6, 'u16', 'front'),
  id: field(8, 'u16', 'front'),
  size: field(10, 'u16', 'front'),
});

/**
 * A tx response: one per tx request slot (extra-info slots included).
 * ```c
 * struct netif_tx_response {
 *     uint16_t id;      // u16 @0, the request's id
 *     int16_t  status;  // i16 @2, NETIF_RSP_*
 * };                    // sizeof 4
 * ```
 * @see io/netif.h
 */
export const NETIF_TX_RESPONSE = defineLayout('netif_tx_response', 'io/netif.h', 4, {
  id: field(0, 'u16', 'back'),
  status: field(2, 'i16', 'back'),
});

/**
 * An rx request: one empty page the backend may fill.
 * ```c
 * struct netif_rx_request {
 *     uint16_t    id;    // u16 @0, echoed in the response
 *     uint16_t    pad;   // 2 bytes padding
 *     grant_ref_t gref;  // u32 @4, the granted (writable) page
 * };                     // sizeof 8
 * ```
 * @see io/netif.h
 */
export const NETIF_RX_REQUEST = defineLayout('netif_rx_request', 'io/netif.h', 8, {
  id: field(0, 'u16', 'front'),
  gref: field(4, 'u32', 'front'),
});

/**
 * An rx response: one filled buffer, written in the slot of the request that
 * provided it.
 * ```c
 * struct netif_rx_response {
 *     uint16_t id;      // u16 @0, the request's id
 *     uint16_t offset;  // u16 @2, data offset in the page
 *     uint16_t flags;   // u16 @4, NETRXF_*
 *     int16_t  status;  // i16 @6, < 0: NETIF_RSP_*; >= 0: bytes in this slot
 * };                    // sizeof 8
 * ```
 * @see io/netif.h
 */
export const NETIF_RX_RESPONSE = defineLayout('netif_rx_response', 'io/netif.h', 8, {
  id: field(0, 'u16', 'back'),
  offset: field(2, 'u16', 'back'),
  flags: field(4, 'u16', 'back'),
  status: field(6, 'i16', 'back'),
});

/**
 * An extra-info segment, occupying a whole tx or rx slot. `u` is the union of
 * the per-type payloads; decode it with {@link NETIF_EXTRA_INFO_GSO},
 * {@link NETIF_EXTRA_INFO_MCAST} or {@link NETIF_EXTRA_INFO_HASH} according to
 * `type`. Written by the frontend on tx and by the backend on rx.
 * ```c
 * struct netif_extra_info {
 *     uint8_t type;   // u8 @0, XEN_NETIF_EXTRA_TYPE_*
 *     uint8_t flags;  // u8 @1, XEN_NETIF_EXTRA_FLAG_*
 *     union {
 *         struct { uint16_t size; uint8_t type; uint8_t pad; uint16_t features; } gso;
 *         struct { uint8_t addr[6]; } mcast;
 *         struct { uint8_t type; uint8_t algorithm; uint8_t value[4]; } hash;
 *         uint16_t pad[3];
 *     } u;            // @2, 6 bytes
 * };                  // sizeof 8
 * ```
 * @see io/netif.h
 */
export const NETIF_EXTRA_INFO = defineLayout('netif_extra_info', 'io/netif.h', 8, {
  type: field(0, 'u8', 'either'),
  flags: field(1, 'u8', 'either'),
  u: field(2, 'bytes', 'either', 6),
});

/**
 * {@link NETIF_EXTRA_INFO} seen as a GSO segment (`type = XEN_NETIF_EXTRA_TYPE_GSO`):
 * `u.gso.size` u16 @2 (MSS), `u.gso.type` u8 @4 (`XEN_NETIF_GSO_TYPE_*`),
 * `u.gso.pad` u8 @5, `u.gso.features` u16 @6 (none defined; zero).
 * @see io/netif.h `struct netif_extra_info` `u.gso`
 */
export const NETIF_EXTRA_INFO_GSO = defineLayout('netif_extra_info (u.gso)', 'io/netif.h', 8, {
  type: field(0, 'u8', 'either'),
  flags: field(1, 'u8', 'either'),
  gso_size: field(2, 'u16', 'either'),
  gso_type: field(4, 'u8', 'either'),
  gso_pad: field(5, 'u8', 'either'),
  gso_features: field(6, 'u16', 'either'),
});

/**
 * {@link NETIF_EXTRA_INFO} seen as a multicast segment (`MCAST_ADD`/`MCAST_DEL`,
 * tx only): `u.mcast.addr[6]` @2, the Ethernet address.
 * @see io/netif.h `struct netif_extra_info` `u.mcast`
 */
export const NETIF_EXTRA_INFO_MCAST = defineLayout('netif_extra_info (u.mcast)', 'io/netif.h', 8, {
  type: field(0, 'u8', 'front'),
  flags: field(1, 'u8', 'front'),
  mcast_addr: field(2, 'bytes', 'front', 6),
});

/**
 * {@link NETIF_EXTRA_INFO} seen as a hash segment (`type = XEN_NETIF_EXTRA_TYPE_HASH`):
 * `u.hash.type` u8 @2 (`_XEN_NETIF_CTRL_HASH_TYPE_*`), `u.hash.algorithm` u8 @3,
 * `u.hash.value[4]` @4 (the hash, little-endian).
 * @see io/netif.h `struct netif_extra_info` `u.hash`
 */
export const NETIF_EXTRA_INFO_HASH = defineLayout('netif_extra_info (u.hash)', 'io/netif.h', 8, {
  type: field(0, 'u8', 'either'),
  flags: field(1, 'u8', 'either'),
  hash_type: field(2, 'u8', 'either'),
  hash_algorithm: field(3, 'u8', 'either'),
  hash_value: field(4, 'bytes', 'either', 4),
});

/**
 * tx ring entry stride: `union netif_tx_sring_entry` = max(sizeof request,
 * sizeof response) = 12 bytes (256 entries in one page).
 */
export const NETIF_TX_RING_ENTRY_SIZE = Math.max(NETIF_TX_REQUEST.size, NETIF_TX_RESPONSE.size);
/**
 * rx ring entry stride: `union netif_rx_sring_entry` = max(sizeof request,
 * sizeof response) = 8 bytes (256 entries in one page).
 */
export const NETIF_RX_RING_ENTRY_SIZE = Math.max(NETIF_RX_REQUEST.size, NETIF_RX_RESPONSE.size);

// An extra-info segment overlays a request or response slot, so it must fit in both rings' entries.
invariant(NETIF_EXTRA_INFO.size <= NETIF_TX_RING_ENTRY_SIZE && NETIF_EXTRA_INFO.size <= NETIF_RX_RING_ENTRY_SIZE,
  'netif_extra_info does not fit in a ring entry');
for (const view of [NETIF_EXTRA_INFO_GSO, NETIF_EXTRA_INFO_MCAST, NETIF_EXTRA_INFO_HASH]) {
  invariant(view.size === NETIF_EXTRA_INFO.size
    && view.fields.type.offset === NETIF_EXTRA_INFO.fields.type.offset
    && view.fields.flags.offset === NETIF_EXTRA_INFO.fields.flags.offset,
  `${view.name}: type/flags/size differ from netif_extra_info`);
}
