// Conformance with Xen's own headers (Debian's libxen-dev), compiled by gcc:
// (a) every field of pvio's layout tables against offsetof/sizeof on x86_64, plus
//     the constants pvio copies and __RING_SIZE for 1..16-page rings;
// (b) the blkif x86_32 ABI tables (and the netif tables, which serve both ABIs)
//     against gcc -m32;
// (c) pvio's FrontRing/BackRing and blkif codec against io/ring.h's macros, byte for
//     byte and decision for decision, from index 0 and across the 2^32 wrap.
// Missing gcc or headers FAIL these tests, naming what is missing and the command
// that installs it (`bash scripts/setup-debian.sh libxen-dev gcc`); they never skip.
import { afterAll, describe, expect, it } from 'vitest';
import type { Layout } from '../rings/layout.ts';
import { BackRing, FrontRing, ringSize, SRING_HEADER, SRING_RING_OFFSET } from '../rings/ring.ts';
import * as blkif from '../rings/blkif.ts';
import {
  BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_REQUEST, BLKIF_REQUEST_DISCARD, BLKIF_REQUEST_INDIRECT,
  BLKIF_REQUEST_SEGMENT, BLKIF_RESPONSE, BLKIF_RING_ENTRY_SIZE, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR,
  BLKIF_RSP_OKAY, blkifAbi, readBlkifRequest, readBlkifResponse, writeBlkifRequest, writeBlkifResponse,
  type BlkifRequest,
} from '../rings/blkif.ts';
import * as netif from '../rings/netif.ts';
import {
  NETIF_EXTRA_INFO, NETIF_EXTRA_INFO_GSO, NETIF_EXTRA_INFO_HASH, NETIF_EXTRA_INFO_MCAST, NETIF_RX_REQUEST,
  NETIF_RX_RESPONSE, NETIF_RX_RING_ENTRY_SIZE, NETIF_TX_REQUEST, NETIF_TX_RESPONSE, NETIF_TX_RING_ENTRY_SIZE,
} from '../rings/netif.ts';
import * as xsRing from '../rings/xenstore-ring.ts';
import { XENSTORE_DOMAIN_INTERFACE } from '../rings/xenstore-ring.ts';
import { XENCONS_INTERFACE } from '../rings/console-ring.ts';
import {
  XENSTORE_ABS_PATH_MAX, XENSTORE_PAYLOAD_MAX, XENSTORE_REL_PATH_MAX, XSD_SOCKMSG, XsdSockmsgType,
} from '../xenstore/wire.ts';
import { GRANT_ENTRY_V1, SHARED_INFO, VCPU_INFO } from '../hypervisor/abi.ts';
import {
  buildToolchain, disposeToolchain, runRingScript, type CValues, type Toolchain,
} from './conformance/toolchain.ts';

// ---------------------------------------------------------------------------
// The C side, built once (lazily, so that a missing toolchain fails each test with its message)

let built: Toolchain | Error | undefined;
function toolchain(): Toolchain {
  if (built === undefined) {
    try {
      built = buildToolchain();
    } catch (e) {
      built = e instanceof Error ? e : new Error(String(e));
    }
  }
  if (built instanceof Error) throw built;
  return built;
}

/** How many values each part compared, printed at the end. */
const compared: Record<string, number> = {};
afterAll(() => {
  if (built !== undefined && !(built instanceof Error)) {
    console.info(`conformance (${built.gccVersion}): ${Object.entries(compared).map(([k, n]) => `${k} ${n}`).join(', ')}`);
    disposeToolchain(built);
  }
});

// ---------------------------------------------------------------------------
// (a), (b) layout tables, field by field

/**
 * How one pvio field maps to C:
 * - a string: the C member (the key used in layouts.c; a nested member's path is
 *   spelled with `_`, e.g. `u_gso_size` for `u.gso.size`);
 * - `{ member, appended }`: a member that Xen's headers append after Debian 12's
 *   4.17. When the installed header lacks it, pvio's field must start exactly at
 *   C's sizeof (so every older field keeps its place) and pvio's size includes it.
 */
type FieldMap = string | { member: string; appended: string };

interface TableCheck {
  /** pvio's table. */
  table: Layout;
  /** The C struct tag (`struct <tag>`). */
  c: string;
  /** Key of the C value pvio's `size` must equal; default `<tag>__sizeof`. */
  sizeKey?: string;
  /** pvio field -> C member: one entry per pvio field, no more and no fewer. */
  fields: Record<string, FieldMap>;
  /**
   * Members of the C struct (as printed by layouts.c) that no pvio field of any
   * table mirrors, each with the reason. `appended` ones, when the installed header
   * has them, must start at pvio's size, and C's sizeof is then pvio's size plus theirs.
   */
  cOnly?: Record<string, { why: string; appended?: boolean }>;
}

// The mappings, written out. pvio keeps Xen's member names, so most are name to
// the same name; the netif_extra_info views flatten the union's paths.

const SRING_FIELDS = {
  req_prod: 'req_prod', req_event: 'req_event', rsp_prod: 'rsp_prod', rsp_event: 'rsp_event', pvt: 'pvt', __pad: '__pad',
};
/** The header is what precedes `ring[]` (C's sizeof includes one entry, `ring[1]`). */
const sringCheck = (tag: string): TableCheck => ({
  table: SRING_HEADER, c: tag, sizeKey: `${tag}__ring__off`, fields: SRING_FIELDS,
  cOnly: { ring: { why: 'ring[] is the entries, not the header: its offset is SRING_HEADER.size and its element size the entry stride, both checked in "ring geometry"' } },
});

const BLKIF_REQUEST_FIELDS = {
  operation: 'operation', nr_segments: 'nr_segments', handle: 'handle', id: 'id', sector_number: 'sector_number', seg: 'seg',
};
const BLKIF_SEGMENT_FIELDS = { gref: 'gref', first_sect: 'first_sect', last_sect: 'last_sect' };
const BLKIF_DISCARD_FIELDS = {
  operation: 'operation', flag: 'flag', handle: 'handle', id: 'id', sector_number: 'sector_number', nr_sectors: 'nr_sectors',
};
const BLKIF_INDIRECT_FIELDS = {
  operation: 'operation', indirect_op: 'indirect_op', nr_segments: 'nr_segments', id: 'id',
  sector_number: 'sector_number', handle: 'handle', indirect_grefs: 'indirect_grefs',
};
const BLKIF_RESPONSE_FIELDS = { id: 'id', operation: 'operation', status: 'status' };

/** blkif tables of one ABI (x86_64 and x86_32 share the mappings, not the offsets). */
function blkifChecks(abi: blkif.BlkifAbi): TableCheck[] {
  return [
    { table: abi.request, c: 'blkif_request', fields: BLKIF_REQUEST_FIELDS },
    { table: abi.segment, c: 'blkif_request_segment', fields: BLKIF_SEGMENT_FIELDS },
    { table: abi.discard, c: 'blkif_request_discard', fields: BLKIF_DISCARD_FIELDS },
    { table: abi.indirect, c: 'blkif_request_indirect', fields: BLKIF_INDIRECT_FIELDS },
    { table: abi.response, c: 'blkif_response', fields: BLKIF_RESPONSE_FIELDS },
  ];
}

/** netif tables: the same on x86_64 and i386 (checked against both). */
const NETIF_CHECKS: TableCheck[] = [
  {
    table: NETIF_TX_REQUEST, c: 'netif_tx_request',
    fields: { gref: 'gref', offset: 'offset', flags: 'flags', id: 'id', size: 'size' },
  },
  { table: NETIF_TX_RESPONSE, c: 'netif_tx_response', fields: { id: 'id', status: 'status' } },
  {
    table: NETIF_RX_REQUEST, c: 'netif_rx_request', fields: { id: 'id', gref: 'gref' },
    cOnly: { pad: { why: 'padding (u16 @2); pvio tables list meaningful fields only, as for blkif' } },
  },
  {
    table: NETIF_RX_RESPONSE, c: 'netif_rx_response',
    fields: { id: 'id', offset: 'offset', flags: 'flags', status: 'status' },
  },
  { table: NETIF_EXTRA_INFO, c: 'netif_extra_info', fields: { type: 'type', flags: 'flags', u: 'u' } },
  {
    table: NETIF_EXTRA_INFO_GSO, c: 'netif_extra_info', fields: {
      type: 'type', flags: 'flags', gso_size: 'u_gso_size', gso_type: 'u_gso_type', gso_pad: 'u_gso_pad',
      gso_features: 'u_gso_features',
    },
  },
  { table: NETIF_EXTRA_INFO_MCAST, c: 'netif_extra_info', fields: { type: 'type', flags: 'flags', mcast_addr: 'u_mcast_addr' } },
  {
    table: NETIF_EXTRA_INFO_HASH, c: 'netif_extra_info', fields: {
      type: 'type', flags: 'flags', hash_type: 'u_hash_type', hash_algorithm: 'u_hash_algorithm', hash_value: 'u_hash_value',
    },
  },
];

const X86_64_CHECKS: TableCheck[] = [
  sringCheck('blkif_sring'), sringCheck('netif_tx_sring'), sringCheck('netif_rx_sring'),
  // blkifAbi('x86_64-abi') hands out the exported tables (BLKIF_REQUEST...): see the test below.
  ...blkifChecks(blkifAbi('x86_64-abi')),
  ...NETIF_CHECKS,
  { table: GRANT_ENTRY_V1, c: 'grant_entry_v1', fields: { flags: 'flags', domid: 'domid', frame: 'frame' } },
  { table: XSD_SOCKMSG, c: 'xsd_sockmsg', fields: { type: 'type', req_id: 'req_id', tx_id: 'tx_id', len: 'len' } },
  {
    table: XENSTORE_DOMAIN_INTERFACE, c: 'xenstore_domain_interface', fields: {
      req: 'req', rsp: 'rsp', req_cons: 'req_cons', req_prod: 'req_prod', rsp_cons: 'rsp_cons', rsp_prod: 'rsp_prod',
      server_features: 'server_features', connection: 'connection', error: 'error',
      evtchn_port: {
        member: 'evtchn_port',
        appended: 'xs_wire.h gained `uint32_t evtchn_port` after `error` after Xen 4.17 (for dom0less ' +
          'guests); pvio follows the newer header, and the page bytes 2076..2079 are unused in 4.17',
      },
    },
  },
  {
    table: XENCONS_INTERFACE, c: 'xencons_interface', fields: {
      in: 'in', out: 'out', in_cons: 'in_cons', in_prod: 'in_prod', out_cons: 'out_cons', out_prod: 'out_prod',
    },
    cOnly: {
      connection: {
        appended: true,
        why: 'console.h gained `connection` after out_prod in Xen 4.21; pvio\'s table is 4.17\'s 3088-byte ' +
          'struct and pvio does not use the flag',
      },
    },
  },
  {
    table: VCPU_INFO, c: 'vcpu_info', fields: {
      evtchn_upcall_pending: 'evtchn_upcall_pending', evtchn_upcall_mask: 'evtchn_upcall_mask',
      evtchn_pending_sel: 'evtchn_pending_sel', arch: 'arch', time: 'time',
    },
  },
  {
    table: SHARED_INFO, c: 'shared_info', fields: {
      vcpu_info: 'vcpu_info', evtchn_pending: 'evtchn_pending', evtchn_mask: 'evtchn_mask', wc_version: 'wc_version',
      wc_sec: 'wc_sec', wc_nsec: 'wc_nsec', wc_sec_hi: 'wc_sec_hi', arch: 'arch',
    },
  },
];

const I386_CHECKS: TableCheck[] = [
  sringCheck('blkif_sring'), sringCheck('netif_tx_sring'), sringCheck('netif_rx_sring'),
  ...blkifChecks(blkifAbi('x86_32-abi')),
  ...NETIF_CHECKS,
];

/**
 * Compares one table with C. Returns the mismatches (empty when all agree) and
 * the number of values compared.
 */
function checkTable(check: TableCheck, c: CValues, abi: string): { errors: string[]; count: number } {
  const { table } = check;
  const errors: string[] = [];
  let count = 0;
  const label = `${abi} ${table.name} vs struct ${check.c}`;
  const get = (key: string): number | undefined => (Object.hasOwn(c, key) ? c[key] : undefined);
  const need = (key: string): number => {
    const v = get(key);
    if (v === undefined) throw new Error(`${label}: layouts.c printed no ${key}`);
    return v;
  };
  const cSize = need(check.sizeKey ?? `${check.c}__sizeof`);

  const mapped = Object.keys(check.fields).sort();
  const fields = Object.keys(table.fields).sort();
  if (mapped.join() !== fields.join()) {
    errors.push(`${label}: the test's mapping lists [${mapped.join(', ')}] but the table has [${fields.join(', ')}] ` +
      '— map every pvio field to its C member in conformance.test.ts');
  }

  let expectedCSize = table.size;
  for (const [name, spec] of Object.entries(table.fields)) {
    const map = check.fields[name];
    if (map === undefined) continue;
    const member = typeof map === 'string' ? map : map.member;
    const off = get(`${check.c}__${member}__off`);
    const size = get(`${check.c}__${member}__size`);
    if (off === undefined || size === undefined) {
      if (typeof map !== 'string') {
        // A member newer than these headers: it must sit right after C's last byte.
        count += 1;
        if (spec.offset !== cSize) errors.push(`${label}: ${name} (${map.appended}) is @${spec.offset}, not at sizeof ${cSize}`);
        expectedCSize -= spec.size;
        continue;
      }
      errors.push(`${label}: ${name} has no C counterpart (layouts.c printed no offset/size for member ${member})`);
      continue;
    }
    count += 2;
    if (spec.offset !== off) errors.push(`${label}: ${name} is @${spec.offset}, C ${member} is @${off}`);
    if (spec.size !== size) errors.push(`${label}: ${name} is ${spec.size} bytes, C ${member} is ${size}`);
  }
  for (const [member, { why, appended }] of Object.entries(check.cOnly ?? {})) {
    const off = get(`${check.c}__${member}__off`);
    const size = get(`${check.c}__${member}__size`);
    if (!appended || off === undefined || size === undefined) continue;
    count += 1;
    if (off !== table.size) errors.push(`${label}: C-only ${member} (${why}) is @${off}, not after pvio's ${table.size} bytes`);
    expectedCSize += size;
  }
  count += 1;
  if (cSize !== expectedCSize) {
    errors.push(`${label}: pvio size ${table.size} (C equivalent ${expectedCSize}), C ${check.sizeKey ?? 'sizeof'} ${cSize}`);
  }
  return { errors, count };
}

/**
 * The other direction: every member layouts.c printed for a struct that a table
 * mirrors is mirrored by some pvio field, or listed in `cOnly` with its reason.
 */
function uncoveredCMembers(checks: TableCheck[], c: CValues, abi: string): string[] {
  const covered = new Map<string, Set<string>>();
  for (const check of checks) {
    const set = covered.get(check.c) ?? new Set<string>();
    for (const map of Object.values(check.fields)) set.add(typeof map === 'string' ? map : map.member);
    for (const member of Object.keys(check.cOnly ?? {})) set.add(member);
    covered.set(check.c, set);
  }
  const errors: string[] = [];
  for (const [tag, set] of covered) {
    for (const key of Object.keys(c)) {
      if (!key.startsWith(`${tag}__`) || !key.endsWith('__off')) continue;
      const member = key.slice(tag.length + 2, -'__off'.length);
      if (!set.has(member)) errors.push(`${abi} struct ${tag}: member ${member} has no pvio field and no reason in cOnly`);
    }
  }
  return errors;
}

function checkTables(checks: TableCheck[], c: CValues, abi: string, part: string): void {
  const errors: string[] = uncoveredCMembers(checks, c, abi);
  let count = 0;
  for (const check of checks) {
    const r = checkTable(check, c, abi);
    errors.push(...r.errors);
    count += r.count;
  }
  compared[part] = (compared[part] ?? 0) + count;
  expect(errors).toEqual([]);
}

/** `{C key: pvio value}` comparisons; returns the mismatches. */
function checkValues(pairs: Array<[string, number]>, c: CValues, abi: string, part: string): void {
  const errors: string[] = [];
  for (const [key, value] of pairs) {
    if (!Object.hasOwn(c, key)) throw new Error(`${abi}: layouts.c printed no ${key}`);
    if (c[key] !== value) errors.push(`${abi} ${key}: pvio ${value}, C ${c[key]}`);
  }
  compared[part] = (compared[part] ?? 0) + pairs.length;
  expect(errors).toEqual([]);
}

const RING_PAGES = [1, 2, 4, 8, 16] as const;

describe('(a) layout tables vs Xen headers, x86_64 (gcc offsetof/sizeof)', () => {
  it('every field of every table: sring header, blkif, netif, grant_entry_v1, xsd_sockmsg, xenstore and console pages, vcpu_info, shared_info', () => {
    checkTables(X86_64_CHECKS, toolchain().native, 'x86_64', 'x86_64 fields');
  });

  it('blkifAbi(\'x86_64-abi\') uses the exported x86_64 tables (so checking one checks both)', () => {
    const abi = blkifAbi('x86_64-abi');
    expect(abi.request).toBe(BLKIF_REQUEST);
    expect(abi.segment).toBe(BLKIF_REQUEST_SEGMENT);
    expect(abi.discard).toBe(BLKIF_REQUEST_DISCARD);
    expect(abi.indirect).toBe(BLKIF_REQUEST_INDIRECT);
    expect(abi.response).toBe(BLKIF_RESPONSE);
  });

  it('ring entry strides equal sizeof the sring_entry unions', () => {
    const c = toolchain().native;
    checkValues([
      ['blkif_sring_entry__sizeof', BLKIF_RING_ENTRY_SIZE],
      ['blkif_sring__ring__size', BLKIF_RING_ENTRY_SIZE],
      ['blkif_sring_entry__sizeof', blkifAbi('x86_64-abi').entrySize],
      ['netif_tx_sring_entry__sizeof', NETIF_TX_RING_ENTRY_SIZE],
      ['netif_rx_sring_entry__sizeof', NETIF_RX_RING_ENTRY_SIZE],
      ['blkif_sring__ring__off', SRING_RING_OFFSET],
    ], c, 'x86_64', 'x86_64 ring geometry');
  });

  it('ringSize() equals __RING_SIZE and __CONST_RING_SIZE: blkif 1, 2, 4, 8, 16 pages; netif tx/rx one page', () => {
    const c = toolchain().native;
    const pairs: Array<[string, number]> = [];
    for (const p of RING_PAGES) {
      const n = ringSize(p * 4096, BLKIF_RING_ENTRY_SIZE);
      pairs.push([`ring__blkif__${p}`, n], [`rt_ring__blkif__${p}`, n]);
    }
    pairs.push(
      ['ring__netif_tx__1', ringSize(4096, NETIF_TX_RING_ENTRY_SIZE)], ['rt_ring__netif_tx__1', ringSize(4096, NETIF_TX_RING_ENTRY_SIZE)],
      ['ring__netif_rx__1', ringSize(4096, NETIF_RX_RING_ENTRY_SIZE)], ['rt_ring__netif_rx__1', ringSize(4096, NETIF_RX_RING_ENTRY_SIZE)],
    );
    checkValues(pairs, c, 'x86_64', 'x86_64 ring geometry');
    expect(pairs.map(([k, v]) => `${k}=${v}`)).toContain('ring__blkif__16=512');
  });

  it('constants pvio copies: blkif, netif, XenStore', () => {
    const c = toolchain().native;
    const named = (mod: Record<string, unknown>, names: string[]): Array<[string, number]> =>
      names.map((n) => {
        const v = mod[n];
        if (typeof v !== 'number') throw new Error(`pvio exports no numeric ${n}`);
        return [`const__${n}`, v];
      });
    const pairs: Array<[string, number]> = [
      ...named(blkif, [
        'BLKIF_OP_READ', 'BLKIF_OP_WRITE', 'BLKIF_OP_WRITE_BARRIER', 'BLKIF_OP_FLUSH_DISKCACHE', 'BLKIF_OP_RESERVED_1',
        'BLKIF_OP_DISCARD', 'BLKIF_OP_INDIRECT', 'BLKIF_RSP_OKAY', 'BLKIF_RSP_ERROR', 'BLKIF_RSP_EOPNOTSUPP',
        'BLKIF_MAX_SEGMENTS_PER_REQUEST', 'BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST', 'BLKIF_DISCARD_SECURE',
        'VDISK_CDROM', 'VDISK_REMOVABLE', 'VDISK_READONLY',
      ]),
      ...named(netif, [
        'NETTXF_csum_blank', 'NETTXF_data_validated', 'NETTXF_more_data', 'NETTXF_extra_info',
        'NETRXF_data_validated', 'NETRXF_csum_blank', 'NETRXF_more_data', 'NETRXF_extra_info', 'NETRXF_gso_prefix',
        'XEN_NETIF_EXTRA_TYPE_NONE', 'XEN_NETIF_EXTRA_TYPE_GSO', 'XEN_NETIF_EXTRA_TYPE_MCAST_ADD',
        'XEN_NETIF_EXTRA_TYPE_MCAST_DEL', 'XEN_NETIF_EXTRA_TYPE_HASH', 'XEN_NETIF_EXTRA_TYPE_MAX',
        'XEN_NETIF_EXTRA_FLAG_MORE', 'XEN_NETIF_GSO_TYPE_NONE', 'XEN_NETIF_GSO_TYPE_TCPV4', 'XEN_NETIF_GSO_TYPE_TCPV6',
        'NETIF_RSP_DROPPED', 'NETIF_RSP_ERROR', 'NETIF_RSP_OKAY', 'NETIF_RSP_NULL', 'XEN_NETIF_NR_SLOTS_MIN',
        'XEN_NETIF_MAX_TX_SIZE',
      ]),
      ...named(xsRing, [
        'XENSTORE_RING_SIZE', 'XENSTORE_SERVER_FEATURE_RECONNECTION', 'XENSTORE_SERVER_FEATURE_ERROR',
        'XENSTORE_CONNECTED', 'XENSTORE_RECONNECT', 'XENSTORE_ERROR_NONE', 'XENSTORE_ERROR_COMM',
        'XENSTORE_ERROR_RINGIDX', 'XENSTORE_ERROR_PROTO',
      ]),
      ['const__XENSTORE_PAYLOAD_MAX', XENSTORE_PAYLOAD_MAX],
      ['const__XENSTORE_ABS_PATH_MAX', XENSTORE_ABS_PATH_MAX],
      ['const__XENSTORE_REL_PATH_MAX', XENSTORE_REL_PATH_MAX],
    ];
    // Newer than Debian 12's 4.17 headers: compared when the installed header has them.
    const newer: Array<[string, number]> = [
      ['const__XENSTORE_SERVER_FEATURE_WATCHDEPTH', xsRing.XENSTORE_SERVER_FEATURE_WATCHDEPTH],
      ['const__XENSTORE_SERVER_FEATURE_DOMID_ANY', xsRing.XENSTORE_SERVER_FEATURE_DOMID_ANY],
    ];
    // enum xsd_sockmsg_type: GET_FEATURE..SET_QUOTA (23..26) came after 4.17; layouts.c names only 4.17's.
    const xsAfter417 = new Set(['GET_FEATURE', 'SET_FEATURE', 'GET_QUOTA', 'SET_QUOTA']);
    for (const [name, value] of Object.entries(XsdSockmsgType)) {
      if (xsAfter417.has(name)) continue;
      pairs.push([`const__XS_${name}`, value]);
    }
    checkValues([...pairs, ...newer.filter(([k]) => Object.hasOwn(c, k))], c, 'x86_64', 'constants');
  });
});

describe('(b) the 32-bit ABI: gcc -m32 -ffreestanding -S', () => {
  it('blkif x86_32 tables (request 108, id @4; response 12; discard; indirect), netif tables, sring header', () => {
    const c = toolchain().i386;
    // Spot values first, so a failure here reads plainly.
    expect(c.blkif_request__sizeof).toBe(108);
    expect(c.blkif_request__id__off).toBe(4);
    expect(c.blkif_response__sizeof).toBe(12);
    checkTables(I386_CHECKS, c, 'i386', 'i386 fields');
  });

  it('x86_32 entry stride 108 and ring sizes for 1..16 pages', () => {
    const c = toolchain().i386;
    const abi = blkifAbi('x86_32-abi');
    const pairs: Array<[string, number]> = [
      ['blkif_sring_entry__sizeof', abi.entrySize],
      ['netif_tx_sring_entry__sizeof', NETIF_TX_RING_ENTRY_SIZE],
      ['netif_rx_sring_entry__sizeof', NETIF_RX_RING_ENTRY_SIZE],
      ['ring__netif_tx__1', ringSize(4096, NETIF_TX_RING_ENTRY_SIZE)],
      ['ring__netif_rx__1', ringSize(4096, NETIF_RX_RING_ENTRY_SIZE)],
    ];
    for (const p of RING_PAGES) pairs.push([`ring__blkif__${p}`, ringSize(p * 4096, abi.entrySize)]);
    checkValues(pairs, c, 'i386', 'i386 ring geometry');
  });
});

// ---------------------------------------------------------------------------
// (c) byte level: the same script through io/ring.h (C) and FrontRing/BackRing (pvio)

const PAGE = 4096;
const ENTRY = BLKIF_RING_ENTRY_SIZE;

/** Request number n: the same formulas as request_fields() in ring-script.c. */
function requestFields(n: number): BlkifRequest {
  const nr = n % 12;
  return {
    operation: n & 1 ? BLKIF_OP_WRITE : BLKIF_OP_READ,
    nrSegments: nr,
    handle: (Math.imul(n, 0x9e37) + 0x51) & 0xffff,
    id: n * 0x1_0000_0007 + 0x1_2345_6789,
    sectorNumber: 0xab_cdef_0123_45 + n * 8,
    segments: Array.from({ length: nr }, (_, i) => ({
      gref: (0x8000_0000 + n * 16 + i) >>> 0, firstSect: i % 8, lastSect: (i + n) % 8,
    })),
  };
}

/** Status of response number m, as response_status() in ring-script.c. */
const responseStatus = (m: number): number => [BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP][m % 3];

/** The extent's bytes before initialisation, as in ring-script.c. */
function pattern(bytes: number): Uint8Array {
  const u8 = new Uint8Array(new SharedArrayBuffer(bytes));
  for (let i = 0; i < bytes; i++) u8[i] = (i * 7 + 3) & 0xff;
  return u8;
}

/** Runs a script (see ring-script.c) through pvio; the same output lines as the C program. */
function runPvio(script: readonly string[]): { lines: string[]; bytes: Uint8Array } {
  const pages = Number(/^pages (\d+)$/.exec(script[0])?.[1]);
  const start = Number(/^start (\d+)$/.exec(script[1])?.[1]);
  const mem = pattern(pages * PAGE);
  const front = FrontRing.init(mem, ENTRY, start);
  const back = BackRing.attach(mem, ENTRY, start);
  const hdr = new Int32Array(mem.buffer, mem.byteOffset, SRING_RING_OFFSET / 4);
  const REQ_EVENT = SRING_HEADER.fields.req_event.offset / 4;
  const RSP_EVENT = SRING_HEADER.fields.rsp_event.offset / 4;
  const copy = new Uint8Array(ENTRY);
  const copyView = new DataView(copy.buffer);
  const pending: Array<{ id: number; operation: number }> = [];
  const lines: string[] = [];
  let nreq = 0;
  let nrsp = 0;
  for (const line of script.slice(2)) {
    const [cmd, arg] = line.split(' ');
    const k = Number(arg);
    switch (cmd) {
      case 'push':
        for (let i = 0; i < k; i++) writeBlkifRequest(front.view, front.produceRequest(), requestFields(nreq++));
        lines.push(`push ${front.pushRequestsAndCheckNotify() ? 1 : 0}`);
        break;
      case 'reqevent': // as a backend would
        Atomics.store(hdr, REQ_EVENT, (start + k) | 0);
        break;
      case 'rspevent': // as a frontend would
        Atomics.store(hdr, RSP_EVENT, (start + k) | 0);
        break;
      case 'consume': {
        const avail = back.unconsumedRequests();
        for (let i = 0; i < k; i++) {
          back.consumeRequest(copy);
          const req = readBlkifRequest(copyView, 0);
          pending.push({ id: req.id, operation: req.operation });
        }
        lines.push(`consume ${avail}`);
        break;
      }
      case 'respond':
        for (let i = 0; i < k; i++) {
          const req = pending.shift();
          if (req === undefined) throw new Error('script responds to more requests than consumed');
          writeBlkifResponse(back.view, back.produceResponse(), { ...req, status: responseStatus(nrsp++) });
        }
        lines.push(`respond ${back.pushResponsesAndCheckNotify() ? 1 : 0}`);
        break;
      case 'take': {
        const avail = front.unconsumedResponses();
        const ids: number[] = [];
        for (let i = 0; i < k; i++) {
          front.consumeResponse(copy);
          ids.push(readBlkifResponse(copyView, 0).id);
        }
        lines.push(`take ${avail}${ids.map((id) => ` ${id}`).join('')}`);
        break;
      }
      case 'finalreq':
        lines.push(`finalreq ${back.finalCheckForRequests() ? 1 : 0}`);
        break;
      case 'finalrsp':
        lines.push(`finalrsp ${front.finalCheckForResponses() ? 1 : 0}`);
        break;
      default:
        throw new Error(`unknown script line ${line}`);
    }
  }
  lines.push(`indices ${front.reqProdPvt} ${front.rspCons} ${back.reqCons} ${back.rspProdPvt}`);
  return { lines, bytes: new Uint8Array(mem) };
}

/** Deterministic PRNG (mulberry32). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A random but legal script: a model of both ends (counts relative to the start)
 * keeps every step within what io/ring.h allows (no push into a full ring, no
 * consume beyond the unconsumed requests, one response per consumed request...).
 */
function randomScript(pages: number, start: number, seed: number, steps: number): { script: string[]; pushed: number } {
  const rand = prng(seed);
  const size = ringSize(pages * PAGE, ENTRY);
  const upTo = (max: number): number => (max === 0 ? 0 : rand() < 0.25 ? max : Math.floor(rand() * (Math.min(max, 9) + 1)));
  const near = (base: number): number => (base + Math.floor(rand() * (size + 6)) - 3) >>> 0;
  let prodPvt = 0; // == req_prod: every push publishes
  let rspCons = 0;
  let reqCons = 0;
  let rspProdPvt = 0; // == rsp_prod
  const script = [`pages ${pages}`, `start ${start}`];
  for (let i = 0; i < steps; i++) {
    const r = rand();
    let k: number;
    if (r < 0.3) {
      k = upTo(size - (prodPvt - rspCons));
      prodPvt += k;
      script.push(`push ${k}`);
    } else if (r < 0.5) {
      k = upTo(Math.min(prodPvt - reqCons, size - (reqCons - rspProdPvt)));
      reqCons += k;
      script.push(`consume ${k}`);
    } else if (r < 0.7) {
      k = upTo(reqCons - rspProdPvt);
      rspProdPvt += k;
      script.push(`respond ${k}`);
    } else if (r < 0.85) {
      k = upTo(rspProdPvt - rspCons);
      rspCons += k;
      script.push(`take ${k}`);
    } else if (r < 0.89) {
      script.push(`reqevent ${near(prodPvt)}`);
    } else if (r < 0.93) {
      script.push(`rspevent ${near(rspProdPvt)}`);
    } else if (r < 0.965) {
      script.push('finalreq');
    } else {
      script.push('finalrsp');
    }
  }
  return { script, pushed: prodPvt };
}

/** Where byte `off` of a blkif ring extent is, for a mismatch message. */
function whereIs(off: number, pages: number): string {
  if (off < SRING_RING_OFFSET) {
    const f = Object.entries(SRING_HEADER.fields).find(([, s]) => off >= s.offset && off < s.offset + s.size);
    return `header ${f?.[0] ?? '?'} (byte ${off})`;
  }
  const size = ringSize(pages * PAGE, ENTRY);
  const slot = Math.floor((off - SRING_RING_OFFSET) / ENTRY);
  if (slot >= size) return `unused tail of the extent (byte ${off})`;
  return `ring[${slot}] byte ${(off - SRING_RING_OFFSET) % ENTRY} (extent byte ${off})`;
}

/** Runs `script` through both implementations and requires identical decisions and bytes. */
function expectSameAsC(name: string, script: readonly string[]): string[] {
  const c = runRingScript(toolchain(), name, script);
  const js = runPvio(script);
  expect(js.lines).toEqual(c.lines);
  expect(js.bytes.length).toBe(c.bytes.length);
  const pages = js.bytes.length / PAGE;
  const diffs: string[] = [];
  for (let i = 0; i < js.bytes.length && diffs.length < 8; i++) {
    if (js.bytes[i] !== c.bytes[i]) diffs.push(`${whereIs(i, pages)}: pvio 0x${js.bytes[i].toString(16)}, C 0x${c.bytes[i].toString(16)}`);
  }
  expect(diffs, `${name}: ring bytes differ from io/ring.h's`).toEqual([]);
  compared['ring bytes'] = (compared['ring bytes'] ?? 0) + js.bytes.length;
  compared['ring decisions'] = (compared['ring decisions'] ?? 0) + c.lines.length;
  return c.lines;
}

describe('(c) byte level: FrontRing/BackRing + blkif codec vs io/ring.h macros', () => {
  it('a hand-checked script across the 2^32 wrap: notify and final-check decisions as the header defines them', () => {
    const S = 0xffff_fffe;
    const lines = expectSameAsC('handwritten', [
      'pages 1', `start ${S}`,
      'push 1', // req_event S+1 in (S, S+1]: notify
      'push 2', // S+1 not in (S+1, S+3]: no notify
      'finalreq', // 3 unconsumed: work, req_event untouched
      'consume 3',
      'respond 1', // rsp_event S+1 in (S, S+1]: notify
      'respond 2', // no notify
      'finalreq', // nothing left: arms req_event = S+4, then no work
      'push 1', // S+4 in (S+3, S+4]: notify
      'take 3',
      'finalrsp', // arms rsp_event = S+4, no work
      'reqevent 10',
      'push 5', // S+10 not in (S+4, S+9]
      'push 1', // S+10 in (S+9, S+10]: notify
    ]);
    const id = (n: number): number => requestFields(n).id;
    expect(lines).toEqual([
      'push 1', 'push 0', 'finalreq 1', 'consume 3', 'respond 1', 'respond 0', 'finalreq 0', 'push 1',
      `take 3 ${id(0)} ${id(1)} ${id(2)}`, 'finalrsp 0', 'push 0', 'push 1',
      `indices ${(S + 10) >>> 0} ${(S + 3) >>> 0} ${(S + 3) >>> 0} ${(S + 3) >>> 0}`,
    ]);
  });

  const cases: Array<{ pages: number; start: number; seed: number; steps: number }> = [
    { pages: 1, start: 0, seed: 1, steps: 400 },
    { pages: 1, start: 0xffff_fff0, seed: 2, steps: 400 },
    { pages: 2, start: 0x7fff_fff0, seed: 3, steps: 400 }, // crosses the i32 sign bit
    { pages: 4, start: 0, seed: 4, steps: 500 },
    { pages: 4, start: 0xffff_fff0, seed: 5, steps: 500 },
    { pages: 16, start: 0xffff_ff00, seed: 6, steps: 600 },
  ];
  for (const { pages, start, seed, steps } of cases) {
    const hex = `0x${start.toString(16)}`;
    it(`${pages} page(s) from index ${hex}: ${steps} random steps, identical bytes and decisions`, () => {
      const { script, pushed } = randomScript(pages, start, seed, steps);
      const size = ringSize(pages * PAGE, ENTRY);
      // The script must go round the ring's slots more than twice, and (from near 2^32) across the index wrap.
      expect(pushed).toBeGreaterThan(2 * size);
      if (start !== 0) expect(start + pushed).toBeGreaterThan(start >= 0x8000_0000 ? 2 ** 32 : 0x8000_0000);
      const lines = expectSameAsC(`random-${pages}-${hex}`, script);
      // Both kinds of notify decision occurred (the scripts are not trivially all-notify or all-quiet).
      expect(lines.some((l) => / 1$/.test(l) && /^(push|respond)/.test(l))).toBe(true);
      expect(lines.some((l) => / 0$/.test(l) && /^(push|respond)/.test(l))).toBe(true);
    });
  }
});
