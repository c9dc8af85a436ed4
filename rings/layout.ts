/**
 * Layout tables: each Xen struct that crosses shared memory is one frozen table of
 * `{offset, size, type, writer}` (STYLE.md, "a layout is data"). The table is the
 * only place a byte offset is written down; hot paths read `Layout.fields.x.offset`
 * once into a constant at module load, never a lookup by name per access.
 *
 * {@link defineLayout} asserts at load that every field fits inside the struct,
 * that its size matches its type, and that no two fields overlap. The conformance
 * test (issue 3) compares these tables with `offsetof`/`sizeof` from Xen's headers.
 *
 * Slot payloads are read through DataView, little-endian (x86 and Arm are LE).
 * u64 fields are two u32 halves: {@link readU64} refuses values at or above 2^53,
 * so no BigInt is ever needed on the data path.
 */
import { invariant, InvariantError, ProtocolError } from './errors.ts';

/** Scalar or opaque byte-array field types. */
export type FieldType = 'u8' | 'u16' | 'u32' | 'i8' | 'i16' | 'i32' | 'u64' | 'bytes';

/**
 * Who writes a shared field, after Xen's `[XEN]`/`[GST]` annotations:
 * `front` / `back` (split-driver ends), `xen` (the hypervisor), `guest` (the owning
 * guest), `either`, or `private` for fields that never leave one side.
 */
export type FieldWriter = 'front' | 'back' | 'xen' | 'guest' | 'either' | 'private';

/** One field: byte offset and size inside the struct, its type and its writer. */
export interface FieldSpec {
  readonly offset: number;
  readonly size: number;
  readonly type: FieldType;
  readonly writer: FieldWriter;
}

/** A struct layout: its C name, the Xen header it mirrors, size in bytes, fields. */
export interface Layout<F extends string = string> {
  /** C struct name, e.g. `blkif_request`. */
  readonly name: string;
  /** Xen header the struct comes from, e.g. `io/blkif.h`. */
  readonly header: string;
  /** `sizeof` in bytes (including trailing padding). */
  readonly size: number;
  readonly fields: Readonly<Record<F, FieldSpec>>;
}

const TYPE_SIZE: Record<Exclude<FieldType, 'bytes'>, number> = {
  u8: 1, i8: 1, u16: 2, i16: 2, u32: 4, i32: 4, u64: 8,
};

/**
 * Builds and freezes a layout table, checking at load that each field fits in
 * `size` bytes, that scalar sizes match their type, and that fields do not overlap
 * (union members are separate layouts).
 *
 * @throws InvariantError when the table is inconsistent (a pvio bug).
 */
export function defineLayout<F extends string>(
  name: string,
  header: string,
  size: number,
  fields: Record<F, FieldSpec>,
): Layout<F> {
  const spans: Array<[number, number, string]> = [];
  for (const [fname, f] of Object.entries(fields) as Array<[string, FieldSpec]>) {
    invariant(Number.isInteger(f.offset) && f.offset >= 0, `${name}.${fname}: bad offset`);
    invariant(f.offset + f.size <= size, `${name}.${fname}: ends past sizeof (${size})`);
    if (f.type !== 'bytes') {
      invariant(f.size === TYPE_SIZE[f.type], `${name}.${fname}: size ${f.size} is not ${f.type}`);
    }
    spans.push([f.offset, f.offset + f.size, fname]);
    Object.freeze(f);
  }
  spans.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < spans.length; i++) {
    invariant(spans[i][0] >= spans[i - 1][1], `${name}: ${spans[i - 1][2]} overlaps ${spans[i][2]}`);
  }
  return Object.freeze({ name, header, size, fields: Object.freeze(fields) });
}

/** Shorthand for a field spec. */
export function field(offset: number, type: FieldType, writer: FieldWriter, size?: number): FieldSpec {
  return { offset, type, writer, size: size ?? TYPE_SIZE[type as Exclude<FieldType, 'bytes'>] };
}

const TWO32 = 0x1_0000_0000;

/**
 * Reads a little-endian u64 as two u32 halves.
 * @throws ProtocolError when the value is 2^53 or above (a peer's garbage; no
 *   legitimate sector or id in pvio reaches it).
 */
export function readU64(dv: DataView, offset: number): number {
  const lo = dv.getUint32(offset, true);
  const hi = dv.getUint32(offset + 4, true);
  if (hi >= 0x20_0000) throw new ProtocolError(`u64 at ${offset} is >= 2^53`);
  return hi * TWO32 + lo;
}

/**
 * Writes a non-negative integer below 2^53 as a little-endian u64.
 * @throws InvariantError for a value out of that range (a pvio bug).
 */
export function writeU64(dv: DataView, offset: number, value: number): void {
  if (!(Number.isSafeInteger(value) && value >= 0)) throw new InvariantError(`writeU64: ${value} is not a u53`);
  dv.setUint32(offset, value >>> 0, true);
  dv.setUint32(offset + 4, Math.floor(value / TWO32), true);
}
