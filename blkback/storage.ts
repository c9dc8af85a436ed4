/**
 * The storage-backend interface: blkback's view of a disk.
 *
 * blkback copies a `blkif_request` out of its ring, validates it, maps the
 * segments' grants (or finds them in its persistent cache) and then hands the store
 * one {@link StorageRequest}: an operation, a byte offset and an I/O vector of views
 * into the mapped pages. Each view is a `Uint8Array` over part of one 4096-byte,
 * SharedArrayBuffer-backed page (`first_sect..last_sect` of a segment), so a store
 * reads or writes the frontend's pages directly — with `readv`/`writev` for a file —
 * and never copies through a bounce buffer of its own.
 *
 * A discard carries no vector: it names a byte range (`offset`, `length`) whose
 * contents the guest no longer needs (`BLKIF_OP_DISCARD`, sent only when the
 * backend advertised `feature-discard`, which blkback does only for a store whose
 * {@link StorageBackend.canDiscard} is true).
 *
 * A store answers in one of two ways (DESIGN.md, "Layers": a synchronous fast path
 * and asynchronous completion by request id):
 * - **synchronously**: {@link StorageBackend.submit} returns the blkif status
 *   (`BLKIF_RSP_OKAY` 0, `BLKIF_RSP_ERROR` -1, `BLKIF_RSP_EOPNOTSUPP` -2) and the
 *   request is finished when it returns; blkback writes the response at once;
 * - **asynchronously**: `submit` returns {@link STORAGE_PENDING} and later calls the
 *   completion handler with the request's `id` and its status. Completions may come
 *   in any order (a store may answer late and out of order), exactly as a Linux
 *   block device may complete bios out of order; blkback keeps the request's state
 *   (grants mapped, blkif `id` and `operation`) until then. The handler is never
 *   called from inside `submit`.
 *
 * Units: every offset and length in this interface is in **bytes**. blkif speaks in
 * 512-byte sectors (`sector_number`, `first_sect`, `last_sect`, `sectors` — always
 * 512-byte units, whatever `sector-size` says; xen-pv-abi.md §2.3); blkback
 * multiplies by {@link SECTOR_SIZE} before calling the store. A store of
 * `sizeBytes` bytes exposes `floor(sizeBytes / 512)` sectors; a trailing partial
 * sector is not addressable.
 *
 * Errors: I/O failures never throw out of `submit`; they are answered with -1 and
 * counted. Only pvio's own bugs (a pending request without a completion handler, a
 * duplicate in-flight id) throw, through `invariant()`. Opening, creating or
 * resizing a store throws (or rejects with) {@link StorageError}.
 *
 * Stores in this folder: `RawFileStore` (raw-file-store.ts), `MemoryStore`
 * (memory-store.ts), `CowStore` (cow-store.ts, a copy-on-write overlay over a
 * read-only base image); the experiment wrappers `ErrorStore`, `LatencyStore` and
 * `TraceStore` (store-wrappers.ts); and `openStore` (open-store.ts), which builds a
 * disk's store from its {@link StoreSpec}, a user's own {@link StoreModule} included.
 *
 * @see xen/include/public/io/blkif.h (`BLKIF_OP_*`, `BLKIF_RSP_*`, `feature-discard`)
 */

import { getSystemErrorMap } from 'node:util';
import { PvioError } from '../rings/errors.ts';

/** Bytes per blkif sector. blkif sector numbers and counts are always in these units. */
export const SECTOR_SIZE = 512;

/**
 * What a request asks of the store:
 * - `'read'`: fill the I/O vector from the disk (`BLKIF_OP_READ`);
 * - `'write'`: copy the I/O vector to the disk (`BLKIF_OP_WRITE`);
 * - `'flush'`: make every write that has *completed* before this request durable
 *   (`BLKIF_OP_FLUSH_DISKCACHE`; blkback also maps a dataless `WRITE_BARRIER` here
 *   after draining its in-flight writes);
 * - `'discard'`: the guest no longer needs the bytes `[offset, offset + length)`
 *   (`BLKIF_OP_DISCARD`). The store may free their space; when its
 *   {@link StorageBackend.discardZeroes} is true, later reads of the range return
 *   zeroes. A store that cannot discard answers -2 (`BLKIF_RSP_EOPNOTSUPP`).
 *
 * @see io/blkif.h `BLKIF_OP_DISCARD`; Linux blkback's `dispatch_discard_io`
 *   (`xen_blkbk_discard` in older kernels), which calls `blkdev_issue_discard`
 */
export type StorageOp = 'read' | 'write' | 'flush' | 'discard';

/** One request handed from blkback to a store. */
export interface StorageRequest {
  /**
   * blkback's id for this request, echoed in the completion; unique among in-flight
   * requests of one store. Not the frontend's blkif `id` (which a hostile frontend
   * may repeat): blkback keeps the mapping.
   */
  readonly id: number;
  /** The operation; see {@link StorageOp}. */
  readonly op: StorageOp;
  /** Byte offset into the disk, a multiple of 512 ({@link SECTOR_SIZE}); 0 for flush. */
  readonly offset: number;
  /**
   * I/O vector: views into mapped pages (SharedArrayBuffer-backed), in disk order.
   * Their total length in bytes is a multiple of 512; empty for flush and discard.
   * A read fills every byte of every view; a write stores every byte.
   */
  readonly iov: readonly Uint8Array[];
  /**
   * Discard only: bytes to discard from `offset`, a multiple of 512 (blkif's
   * `nr_sectors` × 512); the range lies inside the disk. Ignored by other ops.
   */
  readonly length?: number;
}

/** `BLKIF_RSP_OKAY`: the request succeeded. */
export const STORAGE_OKAY = 0;
/** `BLKIF_RSP_ERROR`: the request failed (I/O error, out of range, read-only store...). */
export const STORAGE_ERROR = -1;
/** `BLKIF_RSP_EOPNOTSUPP`: the store does not implement this operation. */
export const STORAGE_EOPNOTSUPP = -2;

/**
 * Status as blkif answers it: 0 = `BLKIF_RSP_OKAY`, -1 = `BLKIF_RSP_ERROR`,
 * -2 = `BLKIF_RSP_EOPNOTSUPP`. blkback copies it into `blkif_response.status` (i16).
 */
export type StorageStatus = 0 | -1 | -2;

/**
 * Returned by {@link StorageBackend.submit} when the request will be answered later,
 * through the completion handler. Positive, so it can never be mistaken for a blkif
 * status (all of which are ≤ 0).
 */
export const STORAGE_PENDING = 1;

/** What {@link StorageBackend.submit} returns: a final status, or {@link STORAGE_PENDING}. */
export type StorageSubmitResult = StorageStatus | typeof STORAGE_PENDING;

/**
 * The completion callback for requests answered {@link STORAGE_PENDING}: `id` is the
 * request's {@link StorageRequest.id}, `status` its final blkif status. It must not
 * throw (an exception escapes into the store's I/O callback); it may call `submit`.
 */
export type StorageCompletionHandler = (id: number, status: StorageStatus) => void;

/**
 * Counters a store keeps for benchmarks and tests. Every field only grows.
 * - `reads`, `writes`, `flushes`, `discards`: requests submitted, by op (counted at
 *   submit, so a request that fails still counts);
 * - `bytesRead`, `bytesWritten`, `bytesDiscarded`: bytes of *successful* reads,
 *   writes and discards (zero-filled bytes of a read past end of file count as read);
 * - `errors`: requests answered -1 or -2.
 */
export interface StorageCounters {
  reads: number;
  writes: number;
  flushes: number;
  discards: number;
  /** bytes, not sectors */
  bytesRead: number;
  /** bytes, not sectors */
  bytesWritten: number;
  /** bytes, not sectors */
  bytesDiscarded: number;
  errors: number;
}

/** A fresh, all-zero {@link StorageCounters}. */
export function newStorageCounters(): StorageCounters {
  return { reads: 0, writes: 0, flushes: 0, discards: 0, bytesRead: 0, bytesWritten: 0, bytesDiscarded: 0, errors: 0 };
}

/** Counts a submitted request by its op (`reads`, `writes`, `flushes`, `discards`); unknown ops are not counted. */
export function countStorageSubmit(counters: StorageCounters, op: StorageOp): void {
  if (op === 'read') counters.reads++;
  else if (op === 'write') counters.writes++;
  else if (op === 'flush') counters.flushes++;
  else if (op === 'discard') counters.discards++;
}

/**
 * Counts a request's final status: on 0 its bytes (`bytesRead`, `bytesWritten` or
 * `bytesDiscarded`, see {@link storageRequestBytes}), otherwise one error.
 */
export function countStorageCompletion(counters: StorageCounters, req: StorageRequest, status: StorageStatus): void {
  if (status !== STORAGE_OKAY) counters.errors++;
  else if (req.op === 'read') counters.bytesRead += iovBytes(req.iov);
  else if (req.op === 'write') counters.bytesWritten += iovBytes(req.iov);
  else if (req.op === 'discard') counters.bytesDiscarded += req.length ?? 0;
}

/**
 * A disk as blkback sees it. Implementations: see the module comment.
 */
export interface StorageBackend {
  /**
   * Size in bytes. The disk exposes `floor(sizeBytes / 512)` sectors (the blkif
   * `sectors` key); requests must lie inside `[0, floor(sizeBytes/512) * 512)`.
   * Changes only through {@link StorageBackend.resize}.
   */
  readonly sizeBytes: number;
  /** True when writes are refused (answered -1); blkback advertises `mode = "r"` and `VDISK_READONLY`. */
  readonly readOnly: boolean;
  /** True when flush makes earlier completed writes durable (advertised as `feature-flush-cache`). */
  readonly canFlush: boolean;
  /**
   * True when the store executes discards (advertised as `feature-discard`); false
   * for a read-only store. When false, a discard answers -2 (`BLKIF_RSP_EOPNOTSUPP`).
   */
  readonly canDiscard: boolean;
  /**
   * True when a read of a discarded range returns zeroes (punched holes, the memory
   * store); what a frontend may rely on to turn a write of zeroes into a discard.
   * Only meaningful when `canDiscard`.
   */
  readonly discardZeroes: boolean;
  /**
   * Bytes, a multiple of 512: the unit in which the store frees space
   * (`discard-granularity`; Linux: the queue's `discard_granularity`). Discards of
   * any 512-byte multiple are accepted; the parts of a range that do not cover
   * whole units are zeroed rather than freed.
   */
  readonly discardGranularity: number;
  /**
   * Changes the disk's size to `sizeBytes` bytes (grow or shrink; grown space reads
   * as zeroes, shrunk space is lost). blkback then re-announces `sectors`
   * (Linux blkback's `xen_vbd_resize`).
   * @throws {StorageError} (as a rejection): `errno` `'EINVAL'` for a size that is
   *   not a non-negative safe integer, `'EROFS'` on a read-only store, `'EBADF'`
   *   after `close()`, or the system error of a failed operation.
   */
  resize(sizeBytes: number): Promise<void>;
  /**
   * Sets the callback for requests answered {@link STORAGE_PENDING}. Called once by
   * blkback before any submit; a later call replaces the handler.
   */
  setCompletionHandler(done: StorageCompletionHandler): void;
  /**
   * Executes or queues `req`. Returns its status when done synchronously, or
   * {@link STORAGE_PENDING} when it will call the completion handler later (possibly
   * out of order, never from inside this call). Never throws for I/O errors or bad
   * requests (answers -1: out of range, unaligned, write to a read-only store,
   * submitted after close; -2: unknown op, or a discard when `canDiscard` is false).
   * Throws `InvariantError` only for
   * blkback's own bugs (an id already in flight; pending without a handler).
   */
  submit(req: StorageRequest): StorageSubmitResult;
  /**
   * Waits for pending requests (their completions are still delivered), then closes
   * files. Idempotent: later calls return the same promise. Submits after close
   * answer -1.
   */
  close(): Promise<void>;
  /** Counters: requests by op, bytes read, written and discarded, errors. See {@link StorageCounters}. */
  readonly counters: StorageCounters;
}

/** Total length in bytes of an I/O vector. */
export function iovBytes(iov: readonly Uint8Array[]): number {
  let n = 0;
  for (const v of iov) n += v.byteLength;
  return n;
}

/**
 * Bytes a request covers on the disk: the I/O vector's length for read and write,
 * `length` for discard, 0 for flush. Assumes a request that passed
 * {@link checkStorageRequest}.
 */
export function storageRequestBytes(req: StorageRequest): number {
  return req.op === 'discard' ? req.length ?? 0 : iovBytes(req.iov);
}

/**
 * The admission step every store's `submit` starts with: counts the request by op
 * in `store.counters`, refuses it after `close()` (-1), then applies
 * {@link checkStorageRequest} with the store's size, `readOnly` and `canDiscard`.
 * @returns 0 when the request may proceed, else the status to answer.
 */
export function admitStorageRequest(
  req: StorageRequest,
  store: Pick<StorageBackend, 'counters' | 'sizeBytes' | 'readOnly' | 'canDiscard'>,
  closing: boolean,
): StorageStatus {
  countStorageSubmit(store.counters, req.op);
  if (closing) return STORAGE_ERROR;
  return checkStorageRequest(req, store.sizeBytes, store.readOnly, store.canDiscard);
}

/**
 * Checks a request against a disk of `sizeBytes` bytes before any I/O, so every store
 * refuses the same things the same way. Returns 0 if the request may proceed, -1
 * if it must be answered `BLKIF_RSP_ERROR` (bad id, offset not a non-negative
 * multiple of 512, length not a multiple of 512, range past the last whole sector,
 * a flush that carries data, a discard that carries data or no `length`, a write to
 * a read-only store) or -2 for an unknown op or a discard when `canDiscard` is false
 * (Linux blkback answers `BLKIF_RSP_EOPNOTSUPP` when `blkdev_issue_discard` returns
 * -EOPNOTSUPP). Never throws.
 */
export function checkStorageRequest(
  req: StorageRequest, sizeBytes: number, readOnly: boolean, canDiscard = false,
): StorageStatus {
  if (!Number.isSafeInteger(req.id)) return STORAGE_ERROR;
  if (!Array.isArray(req.iov)) return STORAGE_ERROR;
  if (req.op === 'flush') return req.iov.length === 0 ? STORAGE_OKAY : STORAGE_ERROR;
  if (req.op === 'discard' ? !canDiscard : req.op !== 'read' && req.op !== 'write') return STORAGE_EOPNOTSUPP;
  if (req.op !== 'read' && readOnly) return STORAGE_ERROR;
  const { offset } = req;
  if (!Number.isSafeInteger(offset) || offset < 0 || offset % SECTOR_SIZE !== 0) return STORAGE_ERROR;
  let len: number;
  if (req.op === 'discard') {
    if (req.iov.length !== 0 || !Number.isSafeInteger(req.length)) return STORAGE_ERROR;
    len = req.length!;
  } else {
    for (const v of req.iov) if (!(v instanceof Uint8Array)) return STORAGE_ERROR;
    len = iovBytes(req.iov);
  }
  if (len < 0 || len % SECTOR_SIZE !== 0) return STORAGE_ERROR;
  const limit = Math.floor(sizeBytes / SECTOR_SIZE) * SECTOR_SIZE;
  if (offset > limit || len > limit - offset) return STORAGE_ERROR;
  return STORAGE_OKAY;
}

/**
 * The checks every store's `resize` starts with.
 * @throws {StorageError} `errno` `'EINVAL'` when `sizeBytes` is not a non-negative
 *   safe integer, `'EROFS'` when the store is read-only, `'EBADF'` when it is
 *   closed (or closing); `path` names the store.
 */
export function checkResize(path: string, sizeBytes: number, readOnly: boolean, closed: boolean): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
    throw new StorageError(path, 'EINVAL', `cannot resize ${path}: EINVAL (size ${sizeBytes} is not a byte count)`);
  }
  if (readOnly) throw new StorageError(path, 'EROFS', `cannot resize ${path}: EROFS (read-only store)`);
  if (closed) throw new StorageError(path, 'EBADF', `cannot resize ${path}: EBADF (the store is closed)`);
}

/**
 * Opening, creating or sizing a store failed. `code` is always `PVIO_ERR_STORAGE`;
 * `path` names the file and `errno` the system error name (`'ENOENT'`, `'EACCES'`,
 * `'EISDIR'`, `'EINVAL'`...) when there is one. The message reads like
 * `cannot open /x/y: ENOENT (no such file or directory)`.
 */
export class StorageError extends PvioError {
  /** The file the failed operation was on. */
  readonly path: string;
  /** System error name, e.g. `'ENOENT'`; undefined when the failure had none. */
  readonly errno: string | undefined;
  /** `message` is the whole message; prefer {@link StorageError.fromSystemError} for `fs` failures. */
  constructor(path: string, errno: string | undefined, message: string, options?: { cause?: unknown }) {
    super('PVIO_ERR_STORAGE', message, options);
    this.path = path;
    this.errno = errno;
  }

  /**
   * Wraps a Node `fs` error raised while doing `action` (`'open'`, `'create'`...) on
   * `path`: `cannot <action> <path>: <ERRNO> (<description>)`. The original error is
   * kept as `cause`.
   */
  static fromSystemError(action: string, path: string, err: unknown): StorageError {
    const e = err as { code?: unknown; errno?: unknown; message?: unknown };
    const name = typeof e?.code === 'string' ? e.code : undefined;
    let description: string | undefined;
    if (typeof e?.errno === 'number') description = getSystemErrorMap().get(e.errno)?.[1];
    let what: string;
    if (name !== undefined) what = description !== undefined ? `${name} (${description})` : name;
    else what = typeof e?.message === 'string' ? e.message : String(err);
    return new StorageError(path, name, `cannot ${action} ${path}: ${what}`, { cause: err });
  }
}

/**
 * Which store serves a disk, and the experiment wrappers around it, as the machine
 * config names them (disk spec keys `store=`, `base=`, `module=`, `latency-us=`,
 * `error-rate=`, `error-seed=`, `trace=`; see `toolstack/config.ts`).
 */
export interface StoreSpec {
  /**
   * - `'raw'` (default): the disk's target file, byte for byte;
   * - `'cow'`: copy-on-write; the target file is the overlay, written to, over the
   *   read-only image `base`;
   * - `'module'`: a user's store, the default export of the module `module`.
   */
  type: 'raw' | 'cow' | 'module';
  /** `'cow'`: absolute path of the read-only base image. */
  base?: string;
  /** `'module'`: absolute path of the module whose default export opens the store; see {@link StoreModule}. */
  module?: string;
  /**
   * `'raw'`: open the file with `O_DIRECT` and move data through an aligned bounce
   * pool (granted frames are not aligned as O_DIRECT needs); bypasses the page cache.
   */
  direct?: boolean;
  /** Latency wrapper: every request completes this many µs late (asynchronously). */
  latencyUs?: number;
  /** Error wrapper: fraction 0..1 of read/write requests answered `BLKIF_RSP_ERROR`. */
  errorRate?: number;
  /** Error wrapper: seed of its deterministic pseudo-random choice (default 1). */
  errorSeed?: number;
  /** Trace wrapper: absolute path of a JSON-lines file, one line per request. */
  trace?: string;
}

/** What a user's store module's factory receives: the disk's target path and mode, as in the machine config. */
export interface StoreModuleOptions {
  /** The disk's target (absolute path), for the module to interpret as it likes. */
  readonly path: string;
  /** True when the disk is read-only: the store must then report `readOnly` true and refuse writes. */
  readonly readOnly: boolean;
}

/**
 * The default export of a user's store module (`store=module`, `module=PATH`): a
 * function that opens the disk's store, e.g.
 * `export default ({ path, readOnly }) => RawFileStore.open(path, { readOnly })`.
 * It may return the store or a promise of it, and may throw (any error is
 * reported as a {@link StorageError} naming the module). `openStore` (open-store.ts)
 * imports the module, calls this once per disk, and puts the configured wrappers
 * around what it returns. The store is used from blkback's domain (a worker
 * thread), so the module must be importable there (`.ts` works through tsx).
 */
export type StoreModule = (opts: StoreModuleOptions) => StorageBackend | Promise<StorageBackend>;
