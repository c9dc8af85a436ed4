/**
 * Errors shared by every layer of pvio.
 *
 * Two kinds of failure are kept apart, as Linux's drivers keep them apart:
 * - a *peer* broke the protocol (garbage in shared memory, an impossible index,
 *   a response for a request never sent): {@link ProtocolError}. The device that
 *   saw it is disabled; nothing else is affected.
 * - pvio itself broke an invariant: {@link invariant} throws {@link InvariantError}
 *   (Linux's `BUG_ON`).
 *
 * Every error class has a stable machine-readable `code` string (as undici's
 * `UND_ERR_*`), and where Xen has a numeric code (`GNTST_*`, `BLKIF_RSP_*`,
 * XenStore errno names) the error carries it too.
 */

/** Base class of every pvio error. `code` is stable across releases. */
export class PvioError extends Error {
  /** Stable machine-readable code, e.g. `PVIO_ERR_PROTOCOL`. */
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/**
 * A peer wrote something into shared memory that the protocol does not allow
 * (producer overflow, out-of-range id, impossible segment count...). The caller
 * disables the device it was serving; it never loops or throws into the domain.
 */
export class ProtocolError extends PvioError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('PVIO_ERR_PROTOCOL', message, options);
  }
}

/** pvio's own invariant was broken: a bug in pvio, never a peer's fault. */
export class InvariantError extends PvioError {
  constructor(message: string) {
    super('PVIO_ERR_INVARIANT', message);
  }
}

/** A wait on a peer passed its deadline. */
export class TimeoutError extends PvioError {
  constructor(message: string) {
    super('PVIO_ERR_TIMEOUT', message);
  }
}

/**
 * Throws {@link InvariantError} when `cond` is false (Linux `BUG_ON(!cond)`).
 * Use only for pvio's own bugs, never for what a peer wrote.
 *
 * The message is an argument, so a template literal is built on every call even
 * when the check passes (a number-to-string conversion costs tens of ns): on a
 * per-request path write `if (!cond) throw new InvariantError(...)` instead.
 */
export function invariant(cond: unknown, message: string): asserts cond {
  if (!cond) throw new InvariantError(message);
}
