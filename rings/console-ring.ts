/**
 * The PV console page: `struct xencons_interface` from `io/console.h`, one 4 KiB
 * page per domain (grant ref 0 is reserved for it; start info carries
 * `console_mfn` and `console_evtchn`). Two byte rings: `out` carries what the
 * guest prints to dom0's console daemon, `in` carries keystrokes to the guest.
 *
 * ```c
 * typedef uint32_t XENCONS_RING_IDX;
 * #define MASK_XENCONS_IDX(idx, ring) ((idx) & (sizeof(ring)-1))
 * struct xencons_interface {
 *     char in[1024];
 *     char out[2048];
 *     XENCONS_RING_IDX in_cons, in_prod;
 *     XENCONS_RING_IDX out_cons, out_prod;
 * };
 * ```
 *
 * The table is the 3088-byte struct of Xen 4.17's header (§11 of
 * reference/xen-pv-abi.md). Later headers append a `connection` flag after
 * `out_prod`; pvio does not use it.
 *
 * @see io/console.h
 */
import { ByteRingConsumer, ByteRingProducer, byteRingSpec, type ByteRingSpec } from './byte-ring.ts';
import { defineLayout, field } from './layout.ts';
import { invariant } from './errors.ts';

/** Bytes in the `in` ring (dom0 → guest). */
export const XENCONS_IN_SIZE = 1024;
/** Bytes in the `out` ring (guest → dom0). */
export const XENCONS_OUT_SIZE = 2048;

/**
 * `struct xencons_interface` (io/console.h), 3088 bytes. `front` is the guest,
 * `back` is dom0's console daemon.
 */
export const XENCONS_INTERFACE = defineLayout('xencons_interface', 'io/console.h', 3088, {
  in: field(0, 'bytes', 'back', XENCONS_IN_SIZE),
  out: field(1024, 'bytes', 'front', XENCONS_OUT_SIZE),
  in_cons: field(3072, 'u32', 'front'),
  in_prod: field(3076, 'u32', 'back'),
  out_cons: field(3080, 'u32', 'back'),
  out_prod: field(3084, 'u32', 'front'),
});

/** Where the `in` ring (dom0 → guest) lives in the page. */
export const XENCONS_IN_RING: ByteRingSpec = byteRingSpec(XENCONS_INTERFACE, 'in', 'in_cons', 'in_prod');
/** Where the `out` ring (guest → dom0) lives in the page. */
export const XENCONS_OUT_RING: ByteRingSpec = byteRingSpec(XENCONS_INTERFACE, 'out', 'out_cons', 'out_prod');

/** The guest's ends: it writes `out` (its output) and reads `in` (its input). */
export interface ConsoleGuestEnds {
  readonly out: ByteRingProducer;
  readonly in: ByteRingConsumer;
}

/** dom0's (console daemon's) ends: it reads `out` and writes `in`. */
export interface ConsoleDom0Ends {
  readonly out: ByteRingConsumer;
  readonly in: ByteRingProducer;
}

function checkPage(page: Uint8Array): void {
  invariant(page.byteLength >= XENCONS_INTERFACE.size,
    `console page is ${page.byteLength} bytes, needs ${XENCONS_INTERFACE.size}`);
}

/**
 * The guest's byte rings over its console page (normally 4096 bytes).
 * @throws InvariantError when the page is smaller than the interface.
 */
export function consoleGuestEnds(page: Uint8Array): ConsoleGuestEnds {
  checkPage(page);
  return { out: new ByteRingProducer(page, XENCONS_OUT_RING), in: new ByteRingConsumer(page, XENCONS_IN_RING) };
}

/**
 * dom0's byte rings over a guest's console page (normally 4096 bytes).
 * @throws InvariantError when the page is smaller than the interface.
 */
export function consoleDom0Ends(page: Uint8Array): ConsoleDom0Ends {
  checkPage(page);
  return { out: new ByteRingConsumer(page, XENCONS_OUT_RING), in: new ByteRingProducer(page, XENCONS_IN_RING) };
}
