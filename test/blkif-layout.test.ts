// blkif layout tables (io/blkif.h, offsets from gcc for x86_64 and i386) and the
// entry codec: round trips, byte positions, XSA-216 zeroing, u64 >= 2^53 refusal.
import { describe, expect, it } from 'vitest';
import {
  BLKIF_DISCARD_SECURE, BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST,
  BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
  BLKIF_OP_WRITE_BARRIER, BLKIF_REQUEST, BLKIF_REQUEST_DISCARD, BLKIF_REQUEST_INDIRECT,
  BLKIF_REQUEST_SEGMENT, BLKIF_RESPONSE, BLKIF_RING_ENTRY_SIZE, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR,
  BLKIF_RSP_OKAY, BLKIF_X86_32_REQUEST, BLKIF_X86_32_RESPONSE, BLKIF_X86_32_RING_ENTRY_SIZE,
  blkifAbi, peekBlkifOperation, readBlkifDiscardRequest, readBlkifIndirectRequest, readBlkifRequest,
  readBlkifResponse, readBlkifSegment, SECTOR_SIZE, VDISK_CDROM, VDISK_READONLY, VDISK_REMOVABLE,
  writeBlkifDiscardRequest, writeBlkifIndirectRequest, writeBlkifRequest, writeBlkifResponse,
  writeBlkifSegment, type BlkifProtocol, type BlkifRequest,
} from '../rings/blkif.ts';
import { ringSize } from '../rings/ring.ts';
import { InvariantError, ProtocolError } from '../rings/errors.ts';
import type { Layout } from '../rings/layout.ts';

/** `{name: [offset, size]}` of a layout, for comparing with the C struct. */
function shape(l: Layout): Record<string, [number, number]> {
  return Object.fromEntries(Object.entries(l.fields).map(([k, f]) => [k, [f.offset, f.size]]));
}

function sampleRequest(n = 3): BlkifRequest {
  return {
    operation: BLKIF_OP_WRITE, nrSegments: n, handle: 0xbeef, id: 2 ** 53 - 1, sectorNumber: 0x1_2345_6789,
    segments: Array.from({ length: n }, (_, i) => ({ gref: 0xfedc_ba98 - i, firstSect: i % 8, lastSect: 7 })),
  };
}

describe('constants (io/blkif.h)', () => {
  it('have Xen\'s values', () => {
    expect([BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_DISCARD, BLKIF_OP_INDIRECT])
      .toEqual([0, 1, 2, 3, 5, 6]);
    expect([BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP]).toEqual([0, -1, -2]);
    expect(BLKIF_MAX_SEGMENTS_PER_REQUEST).toBe(11);
    expect(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST).toBe(8);
    expect([VDISK_CDROM, VDISK_REMOVABLE, VDISK_READONLY]).toEqual([1, 2, 4]);
    expect(SECTOR_SIZE).toBe(512);
    expect(BLKIF_RING_ENTRY_SIZE).toBe(112);
    expect(BLKIF_X86_32_RING_ENTRY_SIZE).toBe(108);
  });
  it('give 32 entries per page on both ABIs', () => {
    expect(ringSize(4096, BLKIF_RING_ENTRY_SIZE)).toBe(32);
    expect(ringSize(4096, BLKIF_X86_32_RING_ENTRY_SIZE)).toBe(32);
  });
});

describe('layout tables, x86_64 ABI', () => {
  it('blkif_request: op@0 nr@1 handle@2 id@8 sector@16 seg@24, sizeof 112', () => {
    expect(BLKIF_REQUEST.size).toBe(112);
    expect(shape(BLKIF_REQUEST)).toEqual({
      operation: [0, 1], nr_segments: [1, 1], handle: [2, 2], id: [8, 8], sector_number: [16, 8], seg: [24, 88],
    });
  });
  it('blkif_request_segment: gref@0 first_sect@4 last_sect@5, sizeof 8', () => {
    expect(BLKIF_REQUEST_SEGMENT.size).toBe(8);
    expect(shape(BLKIF_REQUEST_SEGMENT)).toEqual({ gref: [0, 4], first_sect: [4, 1], last_sect: [5, 1] });
  });
  it('blkif_request_discard: sizeof 32', () => {
    expect(BLKIF_REQUEST_DISCARD.size).toBe(32);
    expect(shape(BLKIF_REQUEST_DISCARD)).toEqual({
      operation: [0, 1], flag: [1, 1], handle: [2, 2], id: [8, 8], sector_number: [16, 8], nr_sectors: [24, 8],
    });
  });
  it('blkif_request_indirect: nr_segments u16@2, handle@24, grefs@28, sizeof 64', () => {
    expect(BLKIF_REQUEST_INDIRECT.size).toBe(64);
    expect(shape(BLKIF_REQUEST_INDIRECT)).toEqual({
      operation: [0, 1], indirect_op: [1, 1], nr_segments: [2, 2], id: [8, 8], sector_number: [16, 8],
      handle: [24, 2], indirect_grefs: [28, 32],
    });
  });
  it('blkif_response: id@0 operation@8 status i16@10, sizeof 16', () => {
    expect(BLKIF_RESPONSE.size).toBe(16);
    expect(shape(BLKIF_RESPONSE)).toEqual({ id: [0, 8], operation: [8, 1], status: [10, 2] });
    expect(BLKIF_RESPONSE.fields.status.type).toBe('i16');
  });
  it('records who writes each field', () => {
    expect(Object.values(BLKIF_REQUEST.fields).every((f) => f.writer === 'front')).toBe(true);
    expect(Object.values(BLKIF_RESPONSE.fields).every((f) => f.writer === 'back')).toBe(true);
  });
});

describe('layout tables, x86_32 ABI', () => {
  it('blkif_request: id@4 sector@12 seg@20, sizeof 108; response sizeof 12', () => {
    expect(BLKIF_X86_32_REQUEST.size).toBe(108);
    expect(shape(BLKIF_X86_32_REQUEST)).toEqual({
      operation: [0, 1], nr_segments: [1, 1], handle: [2, 2], id: [4, 8], sector_number: [12, 8], seg: [20, 88],
    });
    expect(BLKIF_X86_32_RESPONSE.size).toBe(12);
    expect(shape(BLKIF_X86_32_RESPONSE)).toEqual({ id: [0, 8], operation: [8, 1], status: [10, 2] });
  });
  it('blkifAbi picks the table set by protocol', () => {
    const a64 = blkifAbi('x86_64-abi');
    const a32 = blkifAbi('x86_32-abi');
    expect([a64.protocol, a64.entrySize, a64.request.size, a64.response.size]).toEqual(['x86_64-abi', 112, 112, 16]);
    expect([a32.protocol, a32.entrySize, a32.request.size, a32.response.size]).toEqual(['x86_32-abi', 108, 108, 12]);
    expect([a32.discard.size, a32.indirect.size]).toEqual([28, 64]);
    expect(shape(a32.discard)).toMatchObject({ id: [4, 8], sector_number: [12, 8], nr_sectors: [20, 8] });
    expect(shape(a32.indirect)).toMatchObject({ id: [4, 8], sector_number: [12, 8], handle: [20, 2], indirect_grefs: [24, 32] });
    expect(a64.segment).toBe(BLKIF_REQUEST_SEGMENT);
    expect(a32.segment).toBe(BLKIF_REQUEST_SEGMENT);
    expect(() => blkifAbi('arm-abi' as BlkifProtocol)).toThrow(ProtocolError);
  });
});

describe('request codec', () => {
  it('round-trips and puts each field at its table offset', () => {
    const dv = new DataView(new ArrayBuffer(256));
    const req = sampleRequest(BLKIF_MAX_SEGMENTS_PER_REQUEST);
    writeBlkifRequest(dv, 112, req);
    expect(readBlkifRequest(dv, 112)).toEqual(req);
    expect(peekBlkifOperation(dv, 112)).toBe(BLKIF_OP_WRITE);
    expect(dv.getUint8(112 + 0)).toBe(BLKIF_OP_WRITE);
    expect(dv.getUint8(112 + 1)).toBe(11);
    expect(dv.getUint16(112 + 2, true)).toBe(0xbeef);
    expect(dv.getUint32(112 + 4, true)).toBe(0); // padding
    expect(dv.getUint32(112 + 8, true)).toBe(0xffff_ffff);
    expect(dv.getUint32(112 + 12, true)).toBe(0x1f_ffff);
    expect(dv.getUint32(112 + 16, true)).toBe(0x2345_6789);
    expect(dv.getUint32(112 + 20, true)).toBe(1);
    expect(dv.getUint32(112 + 24, true)).toBe(0xfedc_ba98);
    expect(dv.getUint8(112 + 24 + 8 + 4)).toBe(1); // seg[1].first_sect
    expect(dv.getUint8(112 + 24 + 10 * 8 + 5)).toBe(7); // seg[10].last_sect
  });
  it('zeroes the entry before writing (no stale bytes in padding or unused segments)', () => {
    const dv = new DataView(new ArrayBuffer(112));
    for (let i = 0; i < 112; i++) dv.setUint8(i, 0xcc);
    writeBlkifRequest(dv, 0, { ...sampleRequest(0), operation: BLKIF_OP_FLUSH_DISKCACHE });
    for (let i = 4; i < 8; i++) expect(dv.getUint8(i)).toBe(0);
    for (let i = 24; i < 112; i++) expect(dv.getUint8(i)).toBe(0);
  });
  it('reuses the into object and its segments', () => {
    const dv = new DataView(new ArrayBuffer(112));
    writeBlkifRequest(dv, 0, sampleRequest(5));
    const into = readBlkifRequest(dv, 0);
    const seg0 = into.segments[0];
    writeBlkifRequest(dv, 0, sampleRequest(2));
    const again = readBlkifRequest(dv, 0, into);
    expect(again).toBe(into);
    expect(again.segments).toHaveLength(2);
    expect(again.segments[0]).toBe(seg0);
    expect(again).toEqual(sampleRequest(2));
  });
  it('decodes at most 11 segments of a bogus nr_segments and reports the raw count', () => {
    const dv = new DataView(new ArrayBuffer(112));
    writeBlkifRequest(dv, 0, sampleRequest(11));
    dv.setUint8(BLKIF_REQUEST.fields.nr_segments.offset, 200);
    const r = readBlkifRequest(dv, 0);
    expect(r.nrSegments).toBe(200);
    expect(r.segments).toHaveLength(11);
  });
  it('refuses a peer\'s id or sector_number at or above 2^53 (ProtocolError)', () => {
    const dv = new DataView(new ArrayBuffer(112));
    writeBlkifRequest(dv, 0, sampleRequest(1));
    dv.setUint32(BLKIF_REQUEST.fields.id.offset + 4, 0x20_0000, true);
    expect(() => readBlkifRequest(dv, 0)).toThrow(ProtocolError);
    writeBlkifRequest(dv, 0, sampleRequest(1));
    dv.setUint32(BLKIF_REQUEST.fields.sector_number.offset + 4, 0xffff_ffff, true);
    expect(() => readBlkifRequest(dv, 0)).toThrow(ProtocolError);
  });
  it('refuses its own out-of-range fields (InvariantError)', () => {
    const dv = new DataView(new ArrayBuffer(112));
    expect(() => writeBlkifRequest(dv, 0, sampleRequest(12))).toThrow(InvariantError);
    expect(() => writeBlkifRequest(dv, 0, { ...sampleRequest(3), segments: [] })).toThrow(InvariantError);
    expect(() => writeBlkifRequest(dv, 0, { ...sampleRequest(1), id: 2 ** 53 })).toThrow(InvariantError);
    expect(() => writeBlkifRequest(dv, 0, { ...sampleRequest(1), handle: 0x1_0000 })).toThrow(InvariantError);
    expect(() => writeBlkifRequest(dv, 0, { ...sampleRequest(1), operation: 256 })).toThrow(InvariantError);
  });
  it('round-trips on the x86_32 ABI, with id at 4 and seg at 20', () => {
    const abi = blkifAbi('x86_32-abi');
    const dv = new DataView(new ArrayBuffer(108 * 2));
    const req = sampleRequest(11);
    abi.writeRequest(dv, 108, req);
    expect(abi.readRequest(dv, 108)).toEqual(req);
    expect(dv.getUint32(108 + 4, true)).toBe(0xffff_ffff);
    expect(dv.getUint32(108 + 20, true)).toBe(0xfedc_ba98);
    expect(dv.getUint8(108 + 20 + 10 * 8 + 5)).toBe(7); // last byte used: 105 < 108
  });
});

describe('discard, indirect and segment codecs', () => {
  it('discard round-trips on both ABIs', () => {
    const req = { operation: BLKIF_OP_DISCARD, flag: BLKIF_DISCARD_SECURE, handle: 3, id: 9, sectorNumber: 2 ** 40, nrSectors: 2048 };
    const dv = new DataView(new ArrayBuffer(112));
    writeBlkifDiscardRequest(dv, 0, req);
    expect(readBlkifDiscardRequest(dv, 0)).toEqual(req);
    expect(dv.getUint32(BLKIF_REQUEST_DISCARD.fields.nr_sectors.offset, true)).toBe(2048);
    const a32 = blkifAbi('x86_32-abi');
    a32.writeDiscardRequest(dv, 0, req);
    expect(a32.readDiscardRequest(dv, 0)).toEqual(req);
    expect(dv.getUint32(20, true)).toBe(2048);
  });
  it('indirect round-trips, decoding ceil(nr_segments / 512) grefs', () => {
    const req = {
      operation: BLKIF_OP_INDIRECT, indirectOp: BLKIF_OP_READ, nrSegments: 1025, handle: 0x51, id: 7,
      sectorNumber: 1000, indirectGrefs: [11, 12, 13],
    };
    const dv = new DataView(new ArrayBuffer(112));
    writeBlkifIndirectRequest(dv, 0, req);
    expect(readBlkifIndirectRequest(dv, 0)).toEqual(req);
    expect(dv.getUint16(2, true)).toBe(1025);
    expect(dv.getUint16(24, true)).toBe(0x51);
    expect(dv.getUint32(28 + 8, true)).toBe(13);
    expect(() => writeBlkifIndirectRequest(dv, 0, { ...req, indirectGrefs: new Array(9).fill(1) })).toThrow(InvariantError);
    const a32 = blkifAbi('x86_32-abi');
    a32.writeIndirectRequest(dv, 0, req);
    expect(a32.readIndirectRequest(dv, 0)).toEqual(req);
    expect(dv.getUint32(24 + 8, true)).toBe(13);
  });
  it('segments round-trip at 8-byte strides (indirect pages)', () => {
    const dv = new DataView(new ArrayBuffer(4096));
    writeBlkifSegment(dv, 511 * 8, { gref: 0xabcdef, firstSect: 2, lastSect: 5 });
    expect(readBlkifSegment(dv, 511 * 8)).toEqual({ gref: 0xabcdef, firstSect: 2, lastSect: 5 });
  });
});

describe('response codec', () => {
  it('round-trips, with status as i16', () => {
    const dv = new DataView(new ArrayBuffer(32));
    for (const status of [BLKIF_RSP_OKAY, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP]) {
      const rsp = { id: 0x1_0000_0001, operation: BLKIF_OP_READ, status };
      writeBlkifResponse(dv, 16, rsp);
      expect(readBlkifResponse(dv, 16)).toEqual(rsp);
    }
    expect(dv.getInt16(16 + 10, true)).toBe(-2);
    const into = { id: 0, operation: 0, status: 0 };
    expect(readBlkifResponse(dv, 16, into)).toBe(into);
  });
  it('zeroes all padding (bytes 9 and 12..15) and nothing outside its 16 bytes (XSA-216)', () => {
    const buf = new Uint8Array(48).fill(0xee);
    const dv = new DataView(buf.buffer);
    writeBlkifResponse(dv, 16, { id: 5, operation: BLKIF_OP_WRITE, status: BLKIF_RSP_OKAY });
    expect([...buf.subarray(16, 32)]).toEqual([5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    expect(buf.subarray(0, 16).every((b) => b === 0xee)).toBe(true);
    expect(buf.subarray(32).every((b) => b === 0xee)).toBe(true);
  });
  it('x86_32: zeroes exactly 12 bytes', () => {
    const buf = new Uint8Array(16).fill(0xee);
    blkifAbi('x86_32-abi').writeResponse(new DataView(buf.buffer), 0, { id: 1, operation: 0, status: -1 });
    expect([...buf]).toEqual([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xee, 0xee, 0xee, 0xee]);
  });
  it('refuses a peer\'s id at or above 2^53 and its own out-of-range fields', () => {
    const dv = new DataView(new ArrayBuffer(16));
    writeBlkifResponse(dv, 0, { id: 1, operation: 0, status: 0 });
    dv.setUint32(4, 0x0020_0000, true);
    expect(() => readBlkifResponse(dv, 0)).toThrow(ProtocolError);
    expect(() => writeBlkifResponse(dv, 0, { id: -1, operation: 0, status: 0 })).toThrow(InvariantError);
    expect(() => writeBlkifResponse(dv, 0, { id: 1, operation: 0, status: 0x8000 })).toThrow(InvariantError);
  });
});
