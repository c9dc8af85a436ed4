// netif layout tables and constants (io/netif.h): the values in reference/xen-pv-abi.md
// §3.1, ring geometry, and the union views of netif_extra_info. The same tables are
// compared with gcc's offsetof/sizeof, x86_64 and i386, in conformance.test.ts.
import { describe, expect, it } from 'vitest';
import {
  NETIF_EXTRA_INFO, NETIF_EXTRA_INFO_GSO, NETIF_EXTRA_INFO_HASH, NETIF_EXTRA_INFO_MCAST,
  NETIF_RSP_DROPPED, NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETIF_RX_REQUEST,
  NETIF_RX_RESPONSE, NETIF_RX_RING_ENTRY_SIZE, NETIF_TX_REQUEST, NETIF_TX_RESPONSE,
  NETIF_TX_RING_ENTRY_SIZE, NETRXF_csum_blank, NETRXF_data_validated, NETRXF_extra_info,
  NETRXF_gso_prefix, NETRXF_more_data, NETTXF_csum_blank, NETTXF_data_validated, NETTXF_extra_info,
  NETTXF_more_data, XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_TYPE_HASH,
  XEN_NETIF_EXTRA_TYPE_MAX, XEN_NETIF_EXTRA_TYPE_MCAST_ADD, XEN_NETIF_EXTRA_TYPE_MCAST_DEL,
  XEN_NETIF_EXTRA_TYPE_NONE, XEN_NETIF_GSO_TYPE_NONE, XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6,
  XEN_NETIF_MAX_TX_SIZE, XEN_NETIF_NR_SLOTS_MIN,
} from '../rings/netif.ts';
import { ringSize } from '../rings/ring.ts';
import type { Layout } from '../rings/layout.ts';

/** `{name: [offset, size]}` of a layout. */
function shape(l: Layout): Record<string, [number, number]> {
  return Object.fromEntries(Object.entries(l.fields).map(([k, f]) => [k, [f.offset, f.size]]));
}

describe('netif layout tables', () => {
  it('netif_tx_request: gref@0 offset@4 flags@6 id@8 size@10, sizeof 12', () => {
    expect(NETIF_TX_REQUEST.size).toBe(12);
    expect(shape(NETIF_TX_REQUEST)).toEqual({ gref: [0, 4], offset: [4, 2], flags: [6, 2], id: [8, 2], size: [10, 2] });
  });
  it('netif_tx_response: id@0 status(i16)@2, sizeof 4', () => {
    expect(NETIF_TX_RESPONSE.size).toBe(4);
    expect(shape(NETIF_TX_RESPONSE)).toEqual({ id: [0, 2], status: [2, 2] });
    expect(NETIF_TX_RESPONSE.fields.status.type).toBe('i16');
  });
  it('netif_rx_request: id@0 gref@4 (pad at 2), sizeof 8', () => {
    expect(NETIF_RX_REQUEST.size).toBe(8);
    expect(shape(NETIF_RX_REQUEST)).toEqual({ id: [0, 2], gref: [4, 4] });
  });
  it('netif_rx_response: id@0 offset@2 flags@4 status(i16)@6, sizeof 8', () => {
    expect(NETIF_RX_RESPONSE.size).toBe(8);
    expect(shape(NETIF_RX_RESPONSE)).toEqual({ id: [0, 2], offset: [2, 2], flags: [4, 2], status: [6, 2] });
    expect(NETIF_RX_RESPONSE.fields.status.type).toBe('i16');
  });
  it('netif_extra_info: type@0 flags@1 u@2 (6 bytes), and its gso/mcast/hash views', () => {
    expect(NETIF_EXTRA_INFO.size).toBe(8);
    expect(shape(NETIF_EXTRA_INFO)).toEqual({ type: [0, 1], flags: [1, 1], u: [2, 6] });
    expect(shape(NETIF_EXTRA_INFO_GSO)).toEqual({
      type: [0, 1], flags: [1, 1], gso_size: [2, 2], gso_type: [4, 1], gso_pad: [5, 1], gso_features: [6, 2],
    });
    expect(shape(NETIF_EXTRA_INFO_MCAST)).toEqual({ type: [0, 1], flags: [1, 1], mcast_addr: [2, 6] });
    expect(shape(NETIF_EXTRA_INFO_HASH)).toEqual({
      type: [0, 1], flags: [1, 1], hash_type: [2, 1], hash_algorithm: [3, 1], hash_value: [4, 4],
    });
  });
  it('tables are frozen', () => {
    expect(Object.isFrozen(NETIF_TX_REQUEST)).toBe(true);
    expect(Object.isFrozen(NETIF_TX_REQUEST.fields.gref)).toBe(true);
  });
});

describe('netif ring geometry', () => {
  it('entries are 12 bytes (tx) and 8 bytes (rx): 256 of each in one page', () => {
    expect(NETIF_TX_RING_ENTRY_SIZE).toBe(12);
    expect(NETIF_RX_RING_ENTRY_SIZE).toBe(8);
    expect(ringSize(4096, NETIF_TX_RING_ENTRY_SIZE)).toBe(256);
    expect(ringSize(4096, NETIF_RX_RING_ENTRY_SIZE)).toBe(256);
  });
  it('an extra-info segment fits in a slot of either ring', () => {
    expect(NETIF_EXTRA_INFO.size).toBeLessThanOrEqual(NETIF_RX_RING_ENTRY_SIZE);
    expect(NETIF_EXTRA_INFO.size).toBeLessThanOrEqual(NETIF_TX_RING_ENTRY_SIZE);
  });
  it('a maximal packet (18 slots) fits in the tx ring about 14 times', () => {
    expect(Math.floor(ringSize(4096, NETIF_TX_RING_ENTRY_SIZE) / XEN_NETIF_NR_SLOTS_MIN)).toBe(14);
  });
});

describe('netif constants', () => {
  it('tx and rx flags (bits 0 and 1 swapped between them)', () => {
    expect([NETTXF_csum_blank, NETTXF_data_validated, NETTXF_more_data, NETTXF_extra_info]).toEqual([1, 2, 4, 8]);
    expect([NETRXF_data_validated, NETRXF_csum_blank, NETRXF_more_data, NETRXF_extra_info, NETRXF_gso_prefix])
      .toEqual([1, 2, 4, 8, 16]);
  });
  it('extra-info types and flags, GSO types', () => {
    expect([XEN_NETIF_EXTRA_TYPE_NONE, XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
      XEN_NETIF_EXTRA_TYPE_MCAST_DEL, XEN_NETIF_EXTRA_TYPE_HASH, XEN_NETIF_EXTRA_TYPE_MAX]).toEqual([0, 1, 2, 3, 4, 5]);
    expect(XEN_NETIF_EXTRA_FLAG_MORE).toBe(1);
    expect([XEN_NETIF_GSO_TYPE_NONE, XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6]).toEqual([0, 1, 2]);
  });
  it('response status, slot and size limits', () => {
    expect([NETIF_RSP_DROPPED, NETIF_RSP_ERROR, NETIF_RSP_OKAY, NETIF_RSP_NULL]).toEqual([-2, -1, 0, 1]);
    expect(XEN_NETIF_NR_SLOTS_MIN).toBe(18);
    expect(XEN_NETIF_MAX_TX_SIZE).toBe(0xffff);
  });
});
