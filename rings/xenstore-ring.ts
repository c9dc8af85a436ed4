/**
 * The XenStore ring page: `struct xenstore_domain_interface` from `io/xs_wire.h`,
 * one 4 KiB page per domain (grant ref 1 is reserved for it), holding two byte
 * rings — requests from the guest to xenstored, responses and watch events back —
 * and a small control block.
 *
 * ```c
 * #define XENSTORE_RING_SIZE 1024
 * typedef uint32_t XENSTORE_RING_IDX;
 * struct xenstore_domain_interface {
 *     char req[XENSTORE_RING_SIZE];   // Requests to xenstore daemon.
 *     char rsp[XENSTORE_RING_SIZE];   // Replies and async watch events.
 *     XENSTORE_RING_IDX req_cons, req_prod;
 *     XENSTORE_RING_IDX rsp_cons, rsp_prod;
 *     uint32_t server_features;       // Bitmap of features supported by the server
 *     uint32_t connection;
 *     uint32_t error;
 *     uint32_t evtchn_port;
 * };
 * ```
 *
 * Messages (`xsd_sockmsg` + payload, up to 16 + 4096 bytes) are larger than a
 * ring, so both sides stream them; either side signals the event channel after
 * every index update. See `xenstore/client.ts` and `xenstore/wire.ts`.
 *
 * @see io/xs_wire.h, docs/misc/xenstore-ring.txt
 */
import { ByteRingConsumer, ByteRingProducer, byteRingSpec, type ByteRingSpec } from './byte-ring.ts';
import { defineLayout, field } from './layout.ts';
import { invariant } from './errors.ts';

/** `XENSTORE_RING_SIZE`: bytes in each of `req` and `rsp`. */
export const XENSTORE_RING_SIZE = 1024;

/**
 * `struct xenstore_domain_interface` (io/xs_wire.h), 2080 bytes at the start of
 * the XenStore page. `front` is the guest (xenbus), `back` is xenstored (dom0).
 */
export const XENSTORE_DOMAIN_INTERFACE = defineLayout('xenstore_domain_interface', 'io/xs_wire.h', 2080, {
  req: field(0, 'bytes', 'front', XENSTORE_RING_SIZE),
  rsp: field(1024, 'bytes', 'back', XENSTORE_RING_SIZE),
  req_cons: field(2048, 'u32', 'back'),
  req_prod: field(2052, 'u32', 'front'),
  rsp_cons: field(2056, 'u32', 'front'),
  rsp_prod: field(2060, 'u32', 'back'),
  /** Bitmap of `XENSTORE_SERVER_FEATURE_*`, written by xenstored. */
  server_features: field(2064, 'u32', 'back'),
  /** `XENSTORE_CONNECTED` / `XENSTORE_RECONNECT`: guest requests, server acknowledges. */
  connection: field(2068, 'u32', 'either'),
  /** `XENSTORE_ERROR_*`, written by xenstored when it gives up on the ring. */
  error: field(2072, 'u32', 'back'),
  /** Event channel port, written by the toolstack (dom0) for dom0less guests. */
  evtchn_port: field(2076, 'u32', 'back'),
});

/** `XENSTORE_SERVER_FEATURE_RECONNECTION`: the server supports `connection`. */
export const XENSTORE_SERVER_FEATURE_RECONNECTION = 1;
/** `XENSTORE_SERVER_FEATURE_ERROR`: the server reports errors in `error`. */
export const XENSTORE_SERVER_FEATURE_ERROR = 2;
/** `XENSTORE_SERVER_FEATURE_WATCHDEPTH`: watches may carry a depth. */
export const XENSTORE_SERVER_FEATURE_WATCHDEPTH = 4;
/** `XENSTORE_SERVER_FEATURE_DOMID_ANY`: the server understands DOMID_ANY perms. */
export const XENSTORE_SERVER_FEATURE_DOMID_ANY = 8;

/** `XENSTORE_CONNECTED`: the `connection` field's normal state. */
export const XENSTORE_CONNECTED = 0;
/** `XENSTORE_RECONNECT`: the guest asks the server to reset the rings. */
export const XENSTORE_RECONNECT = 1;

/** `XENSTORE_ERROR_NONE`: the `error` field when all is well. */
export const XENSTORE_ERROR_NONE = 0;
/** `XENSTORE_ERROR_COMM`: communication problem. */
export const XENSTORE_ERROR_COMM = 1;
/** `XENSTORE_ERROR_RINGIDX`: an impossible ring index. */
export const XENSTORE_ERROR_RINGIDX = 2;
/** `XENSTORE_ERROR_PROTO`: a protocol violation (e.g. payload over 4096 bytes). */
export const XENSTORE_ERROR_PROTO = 3;

/** Where the request ring (guest → xenstored) lives in the page. */
export const XENSTORE_REQ_RING: ByteRingSpec = byteRingSpec(XENSTORE_DOMAIN_INTERFACE, 'req', 'req_cons', 'req_prod');
/** Where the response ring (xenstored → guest) lives in the page. */
export const XENSTORE_RSP_RING: ByteRingSpec = byteRingSpec(XENSTORE_DOMAIN_INTERFACE, 'rsp', 'rsp_cons', 'rsp_prod');

/** The guest's (xenbus) ends: it writes requests and reads responses. */
export interface XenstoreGuestEnds {
  readonly req: ByteRingProducer;
  readonly rsp: ByteRingConsumer;
}

/** xenstored's ends: it reads requests and writes responses and watch events. */
export interface XenstoreDaemonEnds {
  readonly req: ByteRingConsumer;
  readonly rsp: ByteRingProducer;
}

function checkPage(page: Uint8Array): void {
  invariant(page.byteLength >= XENSTORE_DOMAIN_INTERFACE.size,
    `xenstore page is ${page.byteLength} bytes, needs ${XENSTORE_DOMAIN_INTERFACE.size}`);
}

/**
 * The guest's byte rings over its XenStore page (normally 4096 bytes). Indices
 * are taken from the page as they are (not reset to 0).
 * @throws InvariantError when the page is smaller than the interface.
 */
export function xenstoreGuestEnds(page: Uint8Array): XenstoreGuestEnds {
  checkPage(page);
  return { req: new ByteRingProducer(page, XENSTORE_REQ_RING), rsp: new ByteRingConsumer(page, XENSTORE_RSP_RING) };
}

/**
 * xenstored's byte rings over a guest's XenStore page (normally 4096 bytes).
 * @throws InvariantError when the page is smaller than the interface.
 */
export function xenstoreDaemonEnds(page: Uint8Array): XenstoreDaemonEnds {
  checkPage(page);
  return { req: new ByteRingConsumer(page, XENSTORE_REQ_RING), rsp: new ByteRingProducer(page, XENSTORE_RSP_RING) };
}

/**
 * A one-element Atomics view of a u32 control field of the page
 * (`server_features`, `connection`, `error`, `evtchn_port`).
 * @throws InvariantError when the page is too small or misaligned.
 */
export function xenstoreControlWord(
  page: Uint8Array,
  name: 'server_features' | 'connection' | 'error' | 'evtchn_port',
): Uint32Array {
  checkPage(page);
  const off = XENSTORE_DOMAIN_INTERFACE.fields[name].offset;
  invariant(((page.byteOffset + off) & 3) === 0, 'xenstore page is not 4-byte aligned');
  return new Uint32Array(page.buffer, page.byteOffset + off, 1);
}
