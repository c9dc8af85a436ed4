/**
 * blkif ring entries (`xen/include/public/io/blkif.h`): constants, layout tables
 * for the x86_64 ABI (pvio's native one) and the x86_32 ABI, and a codec that
 * reads and writes entries through a DataView at a byte offset.
 *
 * The frontend's XenStore `protocol` key picks the ABI ({@link blkifAbi}); the two
 * differ only in the alignment of u64 fields (`id`, `sector_number`,
 * `nr_sectors`), hence in the offsets after byte 4 and in the entry size (112 vs
 * 108 bytes; 32 entries per page either way). Segments and the response's
 * leading fields have the same offsets in both.
 *
 * Hot-path rules: offsets come from the layout tables into module-level
 * constants at load (never a bare number, never a lookup by name per access);
 * u64 values are two u32 halves through {@link readU64}/{@link writeU64}, so a
 * peer's value at or above 2^53 raises {@link ProtocolError} on read. The read
 * functions decode a private copy of the slot (see `BackRing.copyRequest`) and
 * accept an `into` object to reuse; they do not validate semantics (operation,
 * segment bounds) — the driver does that on the decoded copy.
 *
 * @see io/blkif.h
 */
import { defineLayout, field, readU64, writeU64, type Layout } from './layout.ts';
import { invariant, InvariantError, ProtocolError } from './errors.ts';

// ---------------------------------------------------------------------------
// Constants (io/blkif.h, io/protocols.h)

/** Read sectors into the segments' pages. @see io/blkif.h */
export const BLKIF_OP_READ = 0;
/** Write the segments' pages to sectors. @see io/blkif.h */
export const BLKIF_OP_WRITE = 1;
/** Ordered write: earlier writes complete first, later ones wait (`feature-barrier`). @see io/blkif.h */
export const BLKIF_OP_WRITE_BARRIER = 2;
/** Flush the disk's write cache; may carry no segment (`feature-flush-cache`). @see io/blkif.h */
export const BLKIF_OP_FLUSH_DISKCACHE = 3;
/** Device-specific (SLES); pvio never sends it. @see io/blkif.h */
export const BLKIF_OP_RESERVED_1 = 4;
/** Discard a sector range; entry is a {@link BLKIF_REQUEST_DISCARD} (`feature-discard`). @see io/blkif.h */
export const BLKIF_OP_DISCARD = 5;
/** Segments live in indirect pages; entry is a {@link BLKIF_REQUEST_INDIRECT}. @see io/blkif.h */
export const BLKIF_OP_INDIRECT = 6;

/** Response status: success. @see io/blkif.h */
export const BLKIF_RSP_OKAY = 0;
/** Response status: the operation failed. @see io/blkif.h */
export const BLKIF_RSP_ERROR = -1;
/** Response status: the backend does not support the operation. @see io/blkif.h */
export const BLKIF_RSP_EOPNOTSUPP = -2;

/** Segments in one direct request (44 KiB). @see io/blkif.h */
export const BLKIF_MAX_SEGMENTS_PER_REQUEST = 11;
/** Indirect pages one indirect request may name. @see io/blkif.h */
export const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = 8;
/** Segment descriptors per 4 KiB indirect page (4096 / 8); Linux `SEGS_PER_INDIRECT_FRAME`. */
export const BLKIF_SEGS_PER_INDIRECT_FRAME = 512;
/** Discard `flag` bit: secure erase (honoured only with `discard-secure=1`). @see io/blkif.h */
export const BLKIF_DISCARD_SECURE = 0x1;

/** `info` key bit: the device is a CD-ROM. @see io/blkif.h */
export const VDISK_CDROM = 0x1;
/** `info` key bit: the medium is removable. @see io/blkif.h */
export const VDISK_REMOVABLE = 0x2;
/** `info` key bit: the device is read-only. @see io/blkif.h */
export const VDISK_READONLY = 0x4;

/**
 * Bytes per sector in every blkif field (`sector_number`, `first_sect`,
 * `last_sect`, `nr_sectors`, the `sectors` key), whatever `sector-size` says.
 */
export const SECTOR_SIZE = 512;
/** Last valid `first_sect`/`last_sect` inside one 4 KiB grant (4096 / 512 - 1). */
export const BLKIF_LAST_SECT_MAX = 4096 / SECTOR_SIZE - 1;

/** `protocol` value for the 32-bit x86 ABI. @see io/protocols.h `XEN_IO_PROTO_ABI_X86_32` */
export const XEN_IO_PROTO_ABI_X86_32 = 'x86_32-abi';
/** `protocol` value for the 64-bit x86 ABI (pvio's native ABI). @see io/protocols.h `XEN_IO_PROTO_ABI_X86_64` */
export const XEN_IO_PROTO_ABI_X86_64 = 'x86_64-abi';
/** The ABIs pvio speaks. */
export type BlkifProtocol = typeof XEN_IO_PROTO_ABI_X86_32 | typeof XEN_IO_PROTO_ABI_X86_64;

// ---------------------------------------------------------------------------
// Layout tables, x86_64 ABI

/**
 * One data segment: a granted page and an inclusive sector range in it.
 * Same on every ABI.
 * ```c
 * struct blkif_request_segment {
 *     grant_ref_t gref;        // u32 @0
 *     uint8_t     first_sect;  // u8 @4, 0..7
 *     uint8_t     last_sect;   // u8 @5, first_sect..7
 * };                           // 2 bytes padding, sizeof 8
 * ```
 * @see io/blkif.h
 */
export const BLKIF_REQUEST_SEGMENT = defineLayout('blkif_request_segment', 'io/blkif.h', 8, {
  gref: field(0, 'u32', 'front'),
  first_sect: field(4, 'u8', 'front'),
  last_sect: field(5, 'u8', 'front'),
});

/**
 * A read/write/barrier/flush request, x86_64 ABI.
 * ```c
 * struct blkif_request {
 *     uint8_t        operation;    // u8 @0, BLKIF_OP_*
 *     uint8_t        nr_segments;  // u8 @1, 0..11
 *     blkif_vdev_t   handle;       // u16 @2
 *                                  // 4 bytes padding
 *     uint64_t       id;           // u64 @8, echoed in the response
 *     blkif_sector_t sector_number;// u64 @16, 512-byte units
 *     struct blkif_request_segment seg[BLKIF_MAX_SEGMENTS_PER_REQUEST]; // @24, 11 x 8
 * };                               // sizeof 112
 * ```
 * @see io/blkif.h
 */
export const BLKIF_REQUEST = defineLayout('blkif_request', 'io/blkif.h', 112, {
  operation: field(0, 'u8', 'front'),
  nr_segments: field(1, 'u8', 'front'),
  handle: field(2, 'u16', 'front'),
  id: field(8, 'u64', 'front'),
  sector_number: field(16, 'u64', 'front'),
  seg: field(24, 'bytes', 'front', BLKIF_MAX_SEGMENTS_PER_REQUEST * BLKIF_REQUEST_SEGMENT.size),
});

/**
 * A discard request (operation = BLKIF_OP_DISCARD), x86_64 ABI.
 * ```c
 * struct blkif_request_discard {
 *     uint8_t        operation;    // u8 @0
 *     uint8_t        flag;         // u8 @1, BLKIF_DISCARD_SECURE
 *     blkif_vdev_t   handle;       // u16 @2
 *     uint64_t       id;           // u64 @8
 *     blkif_sector_t sector_number;// u64 @16
 *     uint64_t       nr_sectors;   // u64 @24
 * };                               // sizeof 32
 * ```
 * @see io/blkif.h
 */
export const BLKIF_REQUEST_DISCARD = defineLayout('blkif_request_discard', 'io/blkif.h', 32, {
  operation: field(0, 'u8', 'front'),
  flag: field(1, 'u8', 'front'),
  handle: field(2, 'u16', 'front'),
  id: field(8, 'u64', 'front'),
  sector_number: field(16, 'u64', 'front'),
  nr_sectors: field(24, 'u64', 'front'),
});

/**
 * An indirect request (operation = BLKIF_OP_INDIRECT), x86_64 ABI: the segments
 * are in up to 8 granted pages of 512 descriptors each.
 * ```c
 * struct blkif_request_indirect {
 *     uint8_t        operation;    // u8 @0, BLKIF_OP_INDIRECT
 *     uint8_t        indirect_op;  // u8 @1, BLKIF_OP_READ or _WRITE
 *     uint16_t       nr_segments;  // u16 @2 (not u8)
 *     uint64_t       id;           // u64 @8
 *     blkif_sector_t sector_number;// u64 @16
 *     blkif_vdev_t   handle;       // u16 @24
 *     grant_ref_t    indirect_grefs[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST]; // @28, 8 x u32
 * };                               // 4 bytes padding, sizeof 64
 * ```
 * @see io/blkif.h
 */
export const BLKIF_REQUEST_INDIRECT = defineLayout('blkif_request_indirect', 'io/blkif.h', 64, {
  operation: field(0, 'u8', 'front'),
  indirect_op: field(1, 'u8', 'front'),
  nr_segments: field(2, 'u16', 'front'),
  id: field(8, 'u64', 'front'),
  sector_number: field(16, 'u64', 'front'),
  handle: field(24, 'u16', 'front'),
  indirect_grefs: field(28, 'bytes', 'front', BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * 4),
});

/**
 * A response, x86_64 ABI. Padding bytes 9 and 12..15 must be zero (XSA-216).
 * ```c
 * struct blkif_response {
 *     uint64_t id;         // u64 @0, copied from the request
 *     uint8_t  operation;  // u8 @8, copied from the request (inner op for INDIRECT)
 *                          // 1 byte padding
 *     int16_t  status;     // i16 @10, BLKIF_RSP_*
 * };                       // 4 bytes padding, sizeof 16
 * ```
 * @see io/blkif.h
 */
export const BLKIF_RESPONSE = defineLayout('blkif_response', 'io/blkif.h', 16, {
  id: field(0, 'u64', 'back'),
  operation: field(8, 'u8', 'back'),
  status: field(10, 'i16', 'back'),
});

/** Ring entry stride on the x86_64 ABI: max(sizeof request, sizeof response) = 112 bytes. */
export const BLKIF_RING_ENTRY_SIZE = Math.max(BLKIF_REQUEST.size, BLKIF_RESPONSE.size);

// ---------------------------------------------------------------------------
// Layout tables, x86_32 ABI (u64 aligned to 4)

/**
 * {@link BLKIF_REQUEST} on the x86_32 ABI: no padding after `handle`.
 * operation u8@0, nr_segments u8@1, handle u16@2, id u64@4, sector_number u64@12,
 * seg[11]@20; sizeof 108.
 * @see io/blkif.h, `struct blkif_x86_32_request` in Xen's blkif compat code
 */
export const BLKIF_X86_32_REQUEST = defineLayout('blkif_x86_32_request', 'io/blkif.h', 108, {
  operation: field(0, 'u8', 'front'),
  nr_segments: field(1, 'u8', 'front'),
  handle: field(2, 'u16', 'front'),
  id: field(4, 'u64', 'front'),
  sector_number: field(12, 'u64', 'front'),
  seg: field(20, 'bytes', 'front', BLKIF_MAX_SEGMENTS_PER_REQUEST * BLKIF_REQUEST_SEGMENT.size),
});

/**
 * {@link BLKIF_REQUEST_DISCARD} on the x86_32 ABI: id u64@4, sector_number u64@12,
 * nr_sectors u64@20; sizeof 28.
 * @see io/blkif.h
 */
export const BLKIF_X86_32_REQUEST_DISCARD = defineLayout('blkif_x86_32_request_discard', 'io/blkif.h', 28, {
  operation: field(0, 'u8', 'front'),
  flag: field(1, 'u8', 'front'),
  handle: field(2, 'u16', 'front'),
  id: field(4, 'u64', 'front'),
  sector_number: field(12, 'u64', 'front'),
  nr_sectors: field(20, 'u64', 'front'),
});

/**
 * {@link BLKIF_REQUEST_INDIRECT} on the x86_32 ABI: id u64@4, sector_number u64@12,
 * handle u16@20, indirect_grefs@24, then `uint64_t pad` to 64 bytes.
 * @see io/blkif.h
 */
export const BLKIF_X86_32_REQUEST_INDIRECT = defineLayout('blkif_x86_32_request_indirect', 'io/blkif.h', 64, {
  operation: field(0, 'u8', 'front'),
  indirect_op: field(1, 'u8', 'front'),
  nr_segments: field(2, 'u16', 'front'),
  id: field(4, 'u64', 'front'),
  sector_number: field(12, 'u64', 'front'),
  handle: field(20, 'u16', 'front'),
  indirect_grefs: field(24, 'bytes', 'front', BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * 4),
});

/**
 * {@link BLKIF_RESPONSE} on the x86_32 ABI: same offsets, no tail padding;
 * sizeof 12.
 * @see io/blkif.h
 */
export const BLKIF_X86_32_RESPONSE = defineLayout('blkif_x86_32_response', 'io/blkif.h', 12, {
  id: field(0, 'u64', 'back'),
  operation: field(8, 'u8', 'back'),
  status: field(10, 'i16', 'back'),
});

/** Ring entry stride on the x86_32 ABI: 108 bytes. */
export const BLKIF_X86_32_RING_ENTRY_SIZE = Math.max(BLKIF_X86_32_REQUEST.size, BLKIF_X86_32_RESPONSE.size);

// ---------------------------------------------------------------------------
// Decoded shapes

/** One decoded {@link BLKIF_REQUEST_SEGMENT}. Sectors are 512-byte units inside the page. */
export interface BlkifSegment {
  gref: number;
  firstSect: number;
  lastSect: number;
}

/** A decoded read/write/barrier/flush request ({@link BLKIF_REQUEST}). */
export interface BlkifRequest {
  /** BLKIF_OP_* (u8). */
  operation: number;
  /** Segment count as written (u8); up to 11 are decoded into `segments`. */
  nrSegments: number;
  /** Virtual device handle (u16). */
  handle: number;
  /** Opaque request id, echoed in the response; below 2^53. */
  id: number;
  /** First sector, 512-byte units; below 2^53. */
  sectorNumber: number;
  /** The first min(nrSegments, 11) segments. */
  segments: BlkifSegment[];
}

/** A decoded discard request ({@link BLKIF_REQUEST_DISCARD}). */
export interface BlkifDiscardRequest {
  /** BLKIF_OP_DISCARD. */
  operation: number;
  /** BLKIF_DISCARD_SECURE or 0. */
  flag: number;
  handle: number;
  id: number;
  /** First sector, 512-byte units. */
  sectorNumber: number;
  /** Sector count, 512-byte units. */
  nrSectors: number;
}

/** A decoded indirect request ({@link BLKIF_REQUEST_INDIRECT}). */
export interface BlkifIndirectRequest {
  /** BLKIF_OP_INDIRECT. */
  operation: number;
  /** The inner operation: BLKIF_OP_READ or BLKIF_OP_WRITE. */
  indirectOp: number;
  /** Segment count (u16), across the indirect pages. */
  nrSegments: number;
  handle: number;
  id: number;
  sectorNumber: number;
  /**
   * Grants of the indirect pages. On read: the first
   * min(ceil(nrSegments / 512), 8) entries. On write: 0..8 entries, the rest zero.
   */
  indirectGrefs: number[];
}

/** A decoded response ({@link BLKIF_RESPONSE}). */
export interface BlkifResponse {
  /** The request's id. */
  id: number;
  /** The request's operation (the inner one for INDIRECT). */
  operation: number;
  /** BLKIF_RSP_* (i16). */
  status: number;
}

// ---------------------------------------------------------------------------
// Offsets, from the tables, once at load

/** Byte offsets of one ABI's entries, read from its layout tables at module load. */
interface BlkifOffsets {
  readonly reqSize: number;
  readonly reqOperation: number;
  readonly reqNrSegments: number;
  readonly reqHandle: number;
  readonly reqId: number;
  readonly reqSector: number;
  readonly reqSeg: number;
  readonly discSize: number;
  readonly discOperation: number;
  readonly discFlag: number;
  readonly discHandle: number;
  readonly discId: number;
  readonly discSector: number;
  readonly discNrSectors: number;
  readonly indSize: number;
  readonly indOperation: number;
  readonly indIndirectOp: number;
  readonly indNrSegments: number;
  readonly indId: number;
  readonly indSector: number;
  readonly indHandle: number;
  readonly indGrefs: number;
  readonly rspSize: number;
  readonly rspId: number;
  readonly rspOperation: number;
  readonly rspStatus: number;
}

type RequestLayout = typeof BLKIF_REQUEST;
type DiscardLayout = typeof BLKIF_REQUEST_DISCARD;
type IndirectLayout = typeof BLKIF_REQUEST_INDIRECT;
type ResponseLayout = typeof BLKIF_RESPONSE;

function offsetsOf(req: RequestLayout, disc: DiscardLayout, ind: IndirectLayout, rsp: ResponseLayout): BlkifOffsets {
  // Entries are zeroed a u32 at a time.
  invariant(req.size % 4 === 0 && disc.size % 4 === 0 && ind.size % 4 === 0 && rsp.size % 4 === 0,
    `${req.name}: entry sizes must be multiples of 4`);
  return Object.freeze({
    reqSize: req.size,
    reqOperation: req.fields.operation.offset,
    reqNrSegments: req.fields.nr_segments.offset,
    reqHandle: req.fields.handle.offset,
    reqId: req.fields.id.offset,
    reqSector: req.fields.sector_number.offset,
    reqSeg: req.fields.seg.offset,
    discSize: disc.size,
    discOperation: disc.fields.operation.offset,
    discFlag: disc.fields.flag.offset,
    discHandle: disc.fields.handle.offset,
    discId: disc.fields.id.offset,
    discSector: disc.fields.sector_number.offset,
    discNrSectors: disc.fields.nr_sectors.offset,
    indSize: ind.size,
    indOperation: ind.fields.operation.offset,
    indIndirectOp: ind.fields.indirect_op.offset,
    indNrSegments: ind.fields.nr_segments.offset,
    indId: ind.fields.id.offset,
    indSector: ind.fields.sector_number.offset,
    indHandle: ind.fields.handle.offset,
    indGrefs: ind.fields.indirect_grefs.offset,
    rspSize: rsp.size,
    rspId: rsp.fields.id.offset,
    rspOperation: rsp.fields.operation.offset,
    rspStatus: rsp.fields.status.offset,
  });
}

const X86_64 = offsetsOf(BLKIF_REQUEST, BLKIF_REQUEST_DISCARD, BLKIF_REQUEST_INDIRECT, BLKIF_RESPONSE);
const X86_32 = offsetsOf(BLKIF_X86_32_REQUEST, BLKIF_X86_32_REQUEST_DISCARD, BLKIF_X86_32_REQUEST_INDIRECT, BLKIF_X86_32_RESPONSE);

const SEG_SIZE = BLKIF_REQUEST_SEGMENT.size;
const SEG_GREF = BLKIF_REQUEST_SEGMENT.fields.gref.offset;
const SEG_FIRST_SECT = BLKIF_REQUEST_SEGMENT.fields.first_sect.offset;
const SEG_LAST_SECT = BLKIF_REQUEST_SEGMENT.fields.last_sect.offset;
const GREF_SIZE = 4;
invariant(BLKIF_REQUEST.fields.seg.size === BLKIF_MAX_SEGMENTS_PER_REQUEST * SEG_SIZE, 'blkif_request.seg: not 11 segments');
invariant(BLKIF_REQUEST_INDIRECT.fields.indirect_grefs.size === BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * GREF_SIZE,
  'blkif_request_indirect.indirect_grefs: not 8 grant refs');
invariant(BLKIF_SEGS_PER_INDIRECT_FRAME * SEG_SIZE === 4096, 'blkif: an indirect page is not 512 segments');
// The operation byte is at 0 in every request layout of every ABI (the union's discriminant).
const REQ_OPERATION = BLKIF_REQUEST.fields.operation.offset;
invariant(
  [X86_64, X86_32].every((o) => o.reqOperation === REQ_OPERATION && o.discOperation === REQ_OPERATION
    && o.indOperation === REQ_OPERATION),
  'blkif: operation is not at the same offset in every request layout');

// ---------------------------------------------------------------------------
// Codec (generic over the ABI offsets)

function zero(dv: DataView, off: number, size: number): void {
  for (let i = 0; i < size; i += 4) dv.setUint32(off + i, 0, true);
}

function checkU8(v: number, what: string): void {
  if (!(v >= 0 && v <= 0xff && (v | 0) === v)) throw new InvariantError(`blkif: ${what} ${v} is not a u8`);
}

function checkU16(v: number, what: string): void {
  if (!(v >= 0 && v <= 0xffff && (v | 0) === v)) throw new InvariantError(`blkif: ${what} ${v} is not a u16`);
}

function checkU32(v: number, what: string): void {
  if (!(v >= 0 && v <= 0xffff_ffff && Math.floor(v) === v)) throw new InvariantError(`blkif: ${what} ${v} is not a u32`);
}

function writeSegment(dv: DataView, off: number, seg: BlkifSegment): void {
  checkU32(seg.gref, 'gref');
  checkU8(seg.firstSect, 'first_sect');
  checkU8(seg.lastSect, 'last_sect');
  dv.setUint32(off + SEG_GREF, seg.gref, true);
  dv.setUint8(off + SEG_FIRST_SECT, seg.firstSect);
  dv.setUint8(off + SEG_LAST_SECT, seg.lastSect);
}

function readSegment(dv: DataView, off: number, into: BlkifSegment): BlkifSegment {
  into.gref = dv.getUint32(off + SEG_GREF, true);
  into.firstSect = dv.getUint8(off + SEG_FIRST_SECT);
  into.lastSect = dv.getUint8(off + SEG_LAST_SECT);
  return into;
}

function writeRequestAt(o: BlkifOffsets, dv: DataView, off: number, req: BlkifRequest): void {
  const n = req.nrSegments;
  if (!(n >= 0 && n <= BLKIF_MAX_SEGMENTS_PER_REQUEST && (n | 0) === n) || req.segments.length < n) {
    throw new InvariantError(`blkif: nrSegments ${n} is not 0..11 or exceeds segments.length ${req.segments.length}`);
  }
  checkU8(req.operation, 'operation');
  checkU16(req.handle, 'handle');
  zero(dv, off, o.reqSize);
  dv.setUint8(off + o.reqOperation, req.operation);
  dv.setUint8(off + o.reqNrSegments, n);
  dv.setUint16(off + o.reqHandle, req.handle, true);
  writeU64(dv, off + o.reqId, req.id);
  writeU64(dv, off + o.reqSector, req.sectorNumber);
  const segs = req.segments;
  for (let i = 0, s = off + o.reqSeg; i < n; i++, s += SEG_SIZE) writeSegment(dv, s, segs[i]);
}

function readRequestAt(o: BlkifOffsets, dv: DataView, off: number, into?: BlkifRequest): BlkifRequest {
  const r = into ?? { operation: 0, nrSegments: 0, handle: 0, id: 0, sectorNumber: 0, segments: [] };
  r.operation = dv.getUint8(off + o.reqOperation);
  r.nrSegments = dv.getUint8(off + o.reqNrSegments);
  r.handle = dv.getUint16(off + o.reqHandle, true);
  r.id = readU64(dv, off + o.reqId);
  r.sectorNumber = readU64(dv, off + o.reqSector);
  const n = r.nrSegments < BLKIF_MAX_SEGMENTS_PER_REQUEST ? r.nrSegments : BLKIF_MAX_SEGMENTS_PER_REQUEST;
  const segs = r.segments;
  for (let i = 0, s = off + o.reqSeg; i < n; i++, s += SEG_SIZE) {
    const seg = segs[i];
    if (seg === undefined) segs.push(readSegment(dv, s, { gref: 0, firstSect: 0, lastSect: 0 }));
    else readSegment(dv, s, seg);
  }
  if (segs.length > n) segs.length = n;
  return r;
}

function writeDiscardAt(o: BlkifOffsets, dv: DataView, off: number, req: BlkifDiscardRequest): void {
  checkU8(req.operation, 'operation');
  checkU8(req.flag, 'flag');
  checkU16(req.handle, 'handle');
  zero(dv, off, o.discSize);
  dv.setUint8(off + o.discOperation, req.operation);
  dv.setUint8(off + o.discFlag, req.flag);
  dv.setUint16(off + o.discHandle, req.handle, true);
  writeU64(dv, off + o.discId, req.id);
  writeU64(dv, off + o.discSector, req.sectorNumber);
  writeU64(dv, off + o.discNrSectors, req.nrSectors);
}

function readDiscardAt(o: BlkifOffsets, dv: DataView, off: number, into?: BlkifDiscardRequest): BlkifDiscardRequest {
  const r = into ?? { operation: 0, flag: 0, handle: 0, id: 0, sectorNumber: 0, nrSectors: 0 };
  r.operation = dv.getUint8(off + o.discOperation);
  r.flag = dv.getUint8(off + o.discFlag);
  r.handle = dv.getUint16(off + o.discHandle, true);
  r.id = readU64(dv, off + o.discId);
  r.sectorNumber = readU64(dv, off + o.discSector);
  r.nrSectors = readU64(dv, off + o.discNrSectors);
  return r;
}

function writeIndirectAt(o: BlkifOffsets, dv: DataView, off: number, req: BlkifIndirectRequest): void {
  const grefs = req.indirectGrefs;
  if (grefs.length > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST) {
    throw new InvariantError(`blkif: ${grefs.length} indirect grefs, at most ${BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST}`);
  }
  checkU8(req.operation, 'operation');
  checkU8(req.indirectOp, 'indirect_op');
  checkU16(req.nrSegments, 'nr_segments');
  checkU16(req.handle, 'handle');
  zero(dv, off, o.indSize);
  dv.setUint8(off + o.indOperation, req.operation);
  dv.setUint8(off + o.indIndirectOp, req.indirectOp);
  dv.setUint16(off + o.indNrSegments, req.nrSegments, true);
  writeU64(dv, off + o.indId, req.id);
  writeU64(dv, off + o.indSector, req.sectorNumber);
  dv.setUint16(off + o.indHandle, req.handle, true);
  for (let i = 0; i < grefs.length; i++) {
    checkU32(grefs[i], 'indirect gref');
    dv.setUint32(off + o.indGrefs + i * GREF_SIZE, grefs[i], true);
  }
}

function readIndirectAt(o: BlkifOffsets, dv: DataView, off: number, into?: BlkifIndirectRequest): BlkifIndirectRequest {
  const r = into ?? { operation: 0, indirectOp: 0, nrSegments: 0, handle: 0, id: 0, sectorNumber: 0, indirectGrefs: [] };
  r.operation = dv.getUint8(off + o.indOperation);
  r.indirectOp = dv.getUint8(off + o.indIndirectOp);
  r.nrSegments = dv.getUint16(off + o.indNrSegments, true);
  r.id = readU64(dv, off + o.indId);
  r.sectorNumber = readU64(dv, off + o.indSector);
  r.handle = dv.getUint16(off + o.indHandle, true);
  const pages = Math.min(Math.ceil(r.nrSegments / BLKIF_SEGS_PER_INDIRECT_FRAME), BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
  const grefs = r.indirectGrefs;
  for (let i = 0; i < pages; i++) grefs[i] = dv.getUint32(off + o.indGrefs + i * GREF_SIZE, true);
  if (grefs.length > pages) grefs.length = pages;
  return r;
}

function writeResponseAt(o: BlkifOffsets, dv: DataView, off: number, rsp: BlkifResponse): void {
  checkU8(rsp.operation, 'operation');
  if (!(rsp.status >= -0x8000 && rsp.status <= 0x7fff && (rsp.status | 0) === rsp.status)) {
    throw new InvariantError(`blkif: status ${rsp.status} is not an i16`);
  }
  // XSA-216: no stale byte may survive in the padding, so the whole entry is zeroed first.
  zero(dv, off, o.rspSize);
  writeU64(dv, off + o.rspId, rsp.id);
  dv.setUint8(off + o.rspOperation, rsp.operation);
  dv.setInt16(off + o.rspStatus, rsp.status, true);
}

function readResponseAt(o: BlkifOffsets, dv: DataView, off: number, into?: BlkifResponse): BlkifResponse {
  const r = into ?? { id: 0, operation: 0, status: 0 };
  r.id = readU64(dv, off + o.rspId);
  r.operation = dv.getUint8(off + o.rspOperation);
  r.status = dv.getInt16(off + o.rspStatus, true);
  return r;
}

// ---------------------------------------------------------------------------
// Public codec, x86_64 ABI

/**
 * Reads the operation byte of a request entry (every request layout has it at
 * byte 0), to choose the layout to decode with. Read it from a private copy.
 */
export function peekBlkifOperation(dv: DataView, off: number): number {
  return dv.getUint8(off + REQ_OPERATION);
}

/**
 * Writes a {@link BLKIF_REQUEST} (x86_64) at byte `off` of `dv`: zeroes the 112
 * bytes, then writes the fields and the first `nrSegments` segments.
 * @throws InvariantError when a field is out of range (nrSegments > 11 or more
 *   than `segments.length`, id/sector not below 2^53...): a frontend bug.
 * @see io/blkif.h `struct blkif_request`
 */
export function writeBlkifRequest(dv: DataView, off: number, req: BlkifRequest): void {
  writeRequestAt(X86_64, dv, off, req);
}

/**
 * Reads a {@link BLKIF_REQUEST} (x86_64) at byte `off` of `dv` into `into` (reused,
 * its segment objects too) or a new object. Decodes min(nr_segments, 11)
 * segments; no semantic validation. For DISCARD/INDIRECT entries use
 * {@link readBlkifDiscardRequest}/{@link readBlkifIndirectRequest}.
 * @throws ProtocolError when `id` or `sector_number` is 2^53 or above.
 * @see io/blkif.h `struct blkif_request`
 */
export function readBlkifRequest(dv: DataView, off: number, into?: BlkifRequest): BlkifRequest {
  return readRequestAt(X86_64, dv, off, into);
}

/**
 * Writes a {@link BLKIF_REQUEST_DISCARD} (x86_64) at `off`, zeroing its 32
 * bytes first.
 * @throws InvariantError when a field is out of range.
 * @see io/blkif.h `struct blkif_request_discard`
 */
export function writeBlkifDiscardRequest(dv: DataView, off: number, req: BlkifDiscardRequest): void {
  writeDiscardAt(X86_64, dv, off, req);
}

/**
 * Reads a {@link BLKIF_REQUEST_DISCARD} (x86_64) at `off`.
 * @throws ProtocolError when a u64 field is 2^53 or above.
 * @see io/blkif.h `struct blkif_request_discard`
 */
export function readBlkifDiscardRequest(dv: DataView, off: number, into?: BlkifDiscardRequest): BlkifDiscardRequest {
  return readDiscardAt(X86_64, dv, off, into);
}

/**
 * Writes a {@link BLKIF_REQUEST_INDIRECT} (x86_64) at `off`, zeroing its 64 bytes
 * first.
 * @throws InvariantError when a field is out of range or more than 8 grefs are given.
 * @see io/blkif.h `struct blkif_request_indirect`
 */
export function writeBlkifIndirectRequest(dv: DataView, off: number, req: BlkifIndirectRequest): void {
  writeIndirectAt(X86_64, dv, off, req);
}

/**
 * Reads a {@link BLKIF_REQUEST_INDIRECT} (x86_64) at `off`; decodes
 * min(ceil(nr_segments / 512), 8) indirect grefs.
 * @throws ProtocolError when a u64 field is 2^53 or above.
 * @see io/blkif.h `struct blkif_request_indirect`
 */
export function readBlkifIndirectRequest(dv: DataView, off: number, into?: BlkifIndirectRequest): BlkifIndirectRequest {
  return readIndirectAt(X86_64, dv, off, into);
}

/**
 * Writes one {@link BLKIF_REQUEST_SEGMENT} at `off` (in an indirect page, entry
 * `i` is at `i * 8`). Its two padding bytes are left as they are.
 * @throws InvariantError when a field is out of range.
 */
export function writeBlkifSegment(dv: DataView, off: number, seg: BlkifSegment): void {
  writeSegment(dv, off, seg);
}

/** Reads one {@link BLKIF_REQUEST_SEGMENT} at `off` into `into` or a new object. */
export function readBlkifSegment(dv: DataView, off: number, into?: BlkifSegment): BlkifSegment {
  return readSegment(dv, off, into ?? { gref: 0, firstSect: 0, lastSect: 0 });
}

/**
 * Writes a {@link BLKIF_RESPONSE} (x86_64) at `off`. Zeroes the whole 16-byte
 * entry first, so padding bytes 9 and 12..15 never carry stale data (XSA-216).
 * @throws InvariantError when `id` is not below 2^53, operation not a u8 or
 *   status not an i16 (a backend bug).
 * @see io/blkif.h `struct blkif_response`
 */
export function writeBlkifResponse(dv: DataView, off: number, rsp: BlkifResponse): void {
  writeResponseAt(X86_64, dv, off, rsp);
}

/**
 * Reads a {@link BLKIF_RESPONSE} (x86_64) at `off` into `into` or a new object.
 * @throws ProtocolError when `id` is 2^53 or above.
 * @see io/blkif.h `struct blkif_response`
 */
export function readBlkifResponse(dv: DataView, off: number, into?: BlkifResponse): BlkifResponse {
  return readResponseAt(X86_64, dv, off, into);
}

// ---------------------------------------------------------------------------
// ABI selection

/** The layout tables and codec of one blkif ABI. */
export interface BlkifAbi {
  readonly protocol: BlkifProtocol;
  /** Ring entry stride in bytes (112 or 108). */
  readonly entrySize: number;
  readonly request: Layout<'operation' | 'nr_segments' | 'handle' | 'id' | 'sector_number' | 'seg'>;
  readonly segment: typeof BLKIF_REQUEST_SEGMENT;
  readonly discard: Layout<'operation' | 'flag' | 'handle' | 'id' | 'sector_number' | 'nr_sectors'>;
  readonly indirect: Layout<'operation' | 'indirect_op' | 'nr_segments' | 'id' | 'sector_number' | 'handle' | 'indirect_grefs'>;
  readonly response: Layout<'id' | 'operation' | 'status'>;
  writeRequest(dv: DataView, off: number, req: BlkifRequest): void;
  readRequest(dv: DataView, off: number, into?: BlkifRequest): BlkifRequest;
  writeDiscardRequest(dv: DataView, off: number, req: BlkifDiscardRequest): void;
  readDiscardRequest(dv: DataView, off: number, into?: BlkifDiscardRequest): BlkifDiscardRequest;
  writeIndirectRequest(dv: DataView, off: number, req: BlkifIndirectRequest): void;
  readIndirectRequest(dv: DataView, off: number, into?: BlkifIndirectRequest): BlkifIndirectRequest;
  writeResponse(dv: DataView, off: number, rsp: BlkifResponse): void;
  readResponse(dv: DataView, off: number, into?: BlkifResponse): BlkifResponse;
}

function makeAbi(
  protocol: BlkifProtocol, o: BlkifOffsets,
  request: BlkifAbi['request'], discard: BlkifAbi['discard'], indirect: BlkifAbi['indirect'], response: BlkifAbi['response'],
): BlkifAbi {
  return Object.freeze({
    protocol,
    entrySize: Math.max(request.size, response.size),
    request, segment: BLKIF_REQUEST_SEGMENT, discard, indirect, response,
    writeRequest: (dv: DataView, off: number, req: BlkifRequest) => writeRequestAt(o, dv, off, req),
    readRequest: (dv: DataView, off: number, into?: BlkifRequest) => readRequestAt(o, dv, off, into),
    writeDiscardRequest: (dv: DataView, off: number, req: BlkifDiscardRequest) => writeDiscardAt(o, dv, off, req),
    readDiscardRequest: (dv: DataView, off: number, into?: BlkifDiscardRequest) => readDiscardAt(o, dv, off, into),
    writeIndirectRequest: (dv: DataView, off: number, req: BlkifIndirectRequest) => writeIndirectAt(o, dv, off, req),
    readIndirectRequest: (dv: DataView, off: number, into?: BlkifIndirectRequest) => readIndirectAt(o, dv, off, into),
    writeResponse: (dv: DataView, off: number, rsp: BlkifResponse) => writeResponseAt(o, dv, off, rsp),
    readResponse: (dv: DataView, off: number, into?: BlkifResponse) => readResponseAt(o, dv, off, into),
  });
}

const ABI_X86_64 = makeAbi(XEN_IO_PROTO_ABI_X86_64, X86_64,
  BLKIF_REQUEST, BLKIF_REQUEST_DISCARD, BLKIF_REQUEST_INDIRECT, BLKIF_RESPONSE);
const ABI_X86_32 = makeAbi(XEN_IO_PROTO_ABI_X86_32, X86_32,
  BLKIF_X86_32_REQUEST, BLKIF_X86_32_REQUEST_DISCARD, BLKIF_X86_32_REQUEST_INDIRECT, BLKIF_X86_32_RESPONSE);

/**
 * The layout tables and codec for the ABI named by the frontend's `protocol`
 * XenStore key (`x86_64-abi` is pvio's native ABI).
 * @throws ProtocolError for any other value (the key comes from the frontend).
 * @see io/protocols.h, io/blkif.h (`protocol` key)
 */
export function blkifAbi(protocol: BlkifProtocol): BlkifAbi {
  if (protocol === XEN_IO_PROTO_ABI_X86_64) return ABI_X86_64;
  if (protocol === XEN_IO_PROTO_ABI_X86_32) return ABI_X86_32;
  throw new ProtocolError(`blkif: unsupported protocol ${JSON.stringify(protocol)}`);
}
