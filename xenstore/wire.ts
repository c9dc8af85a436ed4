/**
 * The XenStore wire protocol (`io/xs_wire.h`, `docs/misc/xenstore.txt`): every
 * request, reply and watch event is a 16-byte `xsd_sockmsg` header followed by
 * `len` payload bytes, `len <= XENSTORE_PAYLOAD_MAX` (4096).
 *
 * ```c
 * struct xsd_sockmsg {
 *     uint32_t type;   // XS_??? (enum xsd_sockmsg_type)
 *     uint32_t req_id; // Request identifier, echoed in daemon's response.
 *     uint32_t tx_id;  // Transaction id (0 if not related to a transaction).
 *     uint32_t len;    // Length of data following this.
 *     // Generally followed by nul-terminated string(s).
 * };
 * ```
 *
 * Payloads are NUL-separated strings, except that a WRITE's value and a READ
 * reply's value are raw bytes with no terminator. Errors are replies of type
 * `XS_ERROR` whose payload is the errno *name* (`"ENOENT\0"`).
 *
 * Messages are bigger than the 1024-byte ring, so they arrive in pieces:
 * {@link MessageDecoder} reassembles them from any split. A header announcing
 * more than 4096 payload bytes is a protocol violation that kills the
 * connection (xenstored's `handle_input` → `bad_client`).
 *
 * @see io/xs_wire.h, docs/misc/xenstore.txt
 */
import { invariant, ProtocolError } from '../rings/errors.ts';
import { defineLayout, field } from '../rings/layout.ts';

/**
 * `struct xsd_sockmsg` (io/xs_wire.h), 16 bytes, little-endian. Both sides write
 * headers (requests from the client, replies and events from xenstored).
 */
export const XSD_SOCKMSG = defineLayout('xsd_sockmsg', 'io/xs_wire.h', 16, {
  type: field(0, 'u32', 'either'),
  req_id: field(4, 'u32', 'either'),
  tx_id: field(8, 'u32', 'either'),
  len: field(12, 'u32', 'either'),
});

const HDR_SIZE = XSD_SOCKMSG.size;
const OFF_TYPE = XSD_SOCKMSG.fields.type.offset;
const OFF_REQ_ID = XSD_SOCKMSG.fields.req_id.offset;
const OFF_TX_ID = XSD_SOCKMSG.fields.tx_id.offset;
const OFF_LEN = XSD_SOCKMSG.fields.len.offset;

/**
 * `enum xsd_sockmsg_type` (io/xs_wire.h), Xen's numbers. 20 was `XS_RESTRICT`
 * (removed); `CONTROL` was once `XS_DEBUG`.
 */
export const XsdSockmsgType = Object.freeze({
  CONTROL: 0,
  DIRECTORY: 1,
  READ: 2,
  GET_PERMS: 3,
  WATCH: 4,
  UNWATCH: 5,
  TRANSACTION_START: 6,
  TRANSACTION_END: 7,
  INTRODUCE: 8,
  RELEASE: 9,
  GET_DOMAIN_PATH: 10,
  WRITE: 11,
  MKDIR: 12,
  RM: 13,
  SET_PERMS: 14,
  WATCH_EVENT: 15,
  ERROR: 16,
  IS_DOMAIN_INTRODUCED: 17,
  RESUME: 18,
  SET_TARGET: 19,
  RESET_WATCHES: 21,
  DIRECTORY_PART: 22,
  GET_FEATURE: 23,
  SET_FEATURE: 24,
  GET_QUOTA: 25,
  SET_QUOTA: 26,
  /** `XS_INVALID`: guaranteed to remain an invalid type. */
  INVALID: 0xffff,
} as const);

/** A numeric `xsd_sockmsg_type` value (any u32 may arrive from a peer). */
export type XsdSockmsgTypeValue = number;

const TYPE_NAMES = new Map<number, string>(Object.entries(XsdSockmsgType).map(([k, v]) => [v, k]));

/** `XS_<NAME>` for a message type, or `XS_<number>` for an unknown one (for logs). */
export function xsTypeName(type: number): string {
  return `XS_${TYPE_NAMES.get(type) ?? String(type)}`;
}

/** `XENSTORE_PAYLOAD_MAX`: the most payload bytes one message may carry. */
export const XENSTORE_PAYLOAD_MAX = 4096;
/** `XENSTORE_ABS_PATH_MAX`: the longest absolute path, in bytes. */
export const XENSTORE_ABS_PATH_MAX = 3072;
/** `XENSTORE_REL_PATH_MAX`: the longest relative path, in bytes. */
export const XENSTORE_REL_PATH_MAX = 2048;

/**
 * `xsd_errors[]` (io/xs_wire.h): the errno names xenstored may put in an
 * `XS_ERROR` reply, with Linux's numbers, in the header's order.
 */
export const XSD_ERRORS = Object.freeze([
  { errnum: 22, name: 'EINVAL' },
  { errnum: 13, name: 'EACCES' },
  { errnum: 17, name: 'EEXIST' },
  { errnum: 21, name: 'EISDIR' },
  { errnum: 2, name: 'ENOENT' },
  { errnum: 12, name: 'ENOMEM' },
  { errnum: 28, name: 'ENOSPC' },
  { errnum: 5, name: 'EIO' },
  { errnum: 39, name: 'ENOTEMPTY' },
  { errnum: 38, name: 'ENOSYS' },
  { errnum: 30, name: 'EROFS' },
  { errnum: 16, name: 'EBUSY' },
  { errnum: 11, name: 'EAGAIN' },
  { errnum: 106, name: 'EISCONN' },
  { errnum: 7, name: 'E2BIG' },
  { errnum: 1, name: 'EPERM' },
] as const);

/** One of the errno names in {@link XSD_ERRORS}. */
export type XsErrno = (typeof XSD_ERRORS)[number]['name'];

const ERRNO_NAMES: ReadonlySet<string> = new Set(XSD_ERRORS.map((e) => e.name));

/** True when `name` is one of the errno names of {@link XSD_ERRORS}. */
export function isXsErrno(name: string): name is XsErrno {
  return ERRNO_NAMES.has(name);
}

/** One decoded (or to-be-encoded) message: header fields and payload bytes. */
export interface XsMessage {
  /** `xsd_sockmsg_type` value. */
  readonly type: number;
  /** Request id (u32), echoed by xenstored; 0 in watch events. */
  readonly reqId: number;
  /** Transaction id (u32), 0 outside a transaction. */
  readonly txId: number;
  /** Payload bytes, at most {@link XENSTORE_PAYLOAD_MAX}. */
  readonly payload: Uint8Array;
}

function isU32(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= 0xffff_ffff;
}

/**
 * Encodes one message: 16-byte header (little-endian) followed by the payload.
 *
 * @returns a fresh buffer of `16 + payload.length` bytes.
 * @throws InvariantError when a header field is not a u32 or the payload is over
 *   {@link XENSTORE_PAYLOAD_MAX} (callers check sizes first and answer `E2BIG`).
 */
export function encodeMessage(msg: XsMessage): Uint8Array {
  const { type, reqId, txId, payload } = msg;
  invariant(isU32(type) && isU32(reqId) && isU32(txId), 'xsd_sockmsg field is not a u32');
  invariant(payload.byteLength <= XENSTORE_PAYLOAD_MAX, `xenstore payload of ${payload.byteLength} bytes is over ${XENSTORE_PAYLOAD_MAX}`);
  const out = new Uint8Array(HDR_SIZE + payload.byteLength);
  const dv = new DataView(out.buffer);
  dv.setUint32(OFF_TYPE, type, true);
  dv.setUint32(OFF_REQ_ID, reqId, true);
  dv.setUint32(OFF_TX_ID, txId, true);
  dv.setUint32(OFF_LEN, payload.byteLength, true);
  out.set(payload, HDR_SIZE);
  return out;
}

/**
 * Streaming decoder: feed it bytes in pieces of any size (as they come off a
 * ring) and it returns each message once complete. It copies everything it
 * keeps, so the caller may pass views of shared memory.
 *
 * After a protocol violation the decoder is dead: every later `push` throws the
 * same error (the connection is killed, as in xenstored).
 */
export class MessageDecoder {
  private readonly header = new Uint8Array(HDR_SIZE);
  private headerFill = 0;
  private pending: { type: number; reqId: number; txId: number; payload: Uint8Array } | undefined;
  private payloadFill = 0;
  private failure: ProtocolError | undefined;

  /** True when a message has started but is not complete yet. */
  get partial(): boolean {
    return this.headerFill > 0 || this.pending !== undefined;
  }

  /** The error that killed this decoder, if any. */
  get error(): ProtocolError | undefined {
    return this.failure;
  }

  /**
   * Consumes `bytes` and returns the messages they complete (possibly none, in
   * arrival order).
   * @throws ProtocolError when a header announces more than 4096 payload bytes,
   *   or on any call after that.
   */
  push(bytes: Uint8Array): XsMessage[] {
    if (this.failure) throw this.failure;
    const out: XsMessage[] = [];
    let pos = 0;
    while (pos < bytes.byteLength) {
      if (this.pending === undefined) {
        const n = Math.min(HDR_SIZE - this.headerFill, bytes.byteLength - pos);
        this.header.set(bytes.subarray(pos, pos + n), this.headerFill);
        this.headerFill += n;
        pos += n;
        if (this.headerFill < HDR_SIZE) break;
        this.headerFill = 0;
        const dv = new DataView(this.header.buffer);
        const len = dv.getUint32(OFF_LEN, true);
        if (len > XENSTORE_PAYLOAD_MAX) {
          this.failure = new ProtocolError(`xsd_sockmsg len ${len} is over XENSTORE_PAYLOAD_MAX (${XENSTORE_PAYLOAD_MAX})`);
          throw this.failure;
        }
        this.pending = {
          type: dv.getUint32(OFF_TYPE, true),
          reqId: dv.getUint32(OFF_REQ_ID, true),
          txId: dv.getUint32(OFF_TX_ID, true),
          payload: new Uint8Array(len),
        };
        this.payloadFill = 0;
      }
      const msg = this.pending;
      const n = Math.min(msg.payload.byteLength - this.payloadFill, bytes.byteLength - pos);
      msg.payload.set(bytes.subarray(pos, pos + n), this.payloadFill);
      this.payloadFill += n;
      pos += n;
      if (this.payloadFill === msg.payload.byteLength) {
        out.push(msg);
        this.pending = undefined;
      }
    }
    return out;
  }
}

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8');

/** UTF-8 bytes of `s` (XenStore strings and values are bytes on the wire). */
export function utf8(s: string): Uint8Array {
  return utf8Encoder.encode(s);
}

/** Decodes UTF-8 bytes (invalid sequences become U+FFFD; never throws). */
export function fromUtf8(bytes: Uint8Array): string {
  return utf8Decoder.decode(bytes);
}

/**
 * Builds a payload of NUL-terminated strings: `("a", "b")` → `a\0b\0`, the form
 * of WATCH (`path\0token\0`), SET_PERMS, INTRODUCE and most replies.
 */
export function nulTerminated(...parts: string[]): Uint8Array {
  const encoded = parts.map(utf8);
  const out = new Uint8Array(encoded.reduce((n, b) => n + b.byteLength + 1, 0));
  let pos = 0;
  for (const b of encoded) {
    out.set(b, pos);
    pos += b.byteLength + 1; // the NUL is already 0
  }
  return out;
}

/**
 * Builds a WRITE payload: `path\0` followed by the raw value, which is *not*
 * NUL-terminated.
 */
export function writePayload(path: string, value: Uint8Array | string): Uint8Array {
  const p = utf8(path);
  const v = typeof value === 'string' ? utf8(value) : value;
  const out = new Uint8Array(p.byteLength + 1 + v.byteLength);
  out.set(p, 0);
  out.set(v, p.byteLength + 1);
  return out;
}

/**
 * Splits a NUL-separated payload into strings. A final NUL terminates the last
 * string rather than starting an empty one: `a\0b\0` and `a\0b` both give
 * `["a", "b"]`, and an empty payload gives `[]`.
 */
export function splitNul(payload: Uint8Array): string[] {
  const out: string[] = [];
  let start = 0;
  for (let i = 0; i < payload.byteLength; i++) {
    if (payload[i] === 0) {
      out.push(fromUtf8(payload.subarray(start, i)));
      start = i + 1;
    }
  }
  if (start < payload.byteLength) out.push(fromUtf8(payload.subarray(start)));
  return out;
}

/**
 * Splits a payload at its first NUL: `path\0value` → `[path, value bytes]`
 * (the WRITE form; the value is a copy). Returns `undefined` when there is no NUL.
 */
export function splitFirstNul(payload: Uint8Array): [string, Uint8Array] | undefined {
  const i = payload.indexOf(0);
  if (i < 0) return undefined;
  return [fromUtf8(payload.subarray(0, i)), payload.slice(i + 1)];
}
