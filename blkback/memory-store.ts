/**
 * `MemoryStore`: an in-memory disk behind the {@link StorageBackend} interface, for
 * tests, benchmarks that must not measure a file system, and prototyping.
 *
 * The disk is one plain (not shared) ArrayBuffer of `sizeBytes` bytes, zero at
 * start, exposed as {@link MemoryStore.data} so a test can seed and inspect it.
 * Discard zeroes the range (`canDiscard` and `discardZeroes` are true for a
 * writable store, granularity 512 bytes); resize copies the disk into a new buffer
 * of the new size.
 *
 * By default every request is answered synchronously inside `submit`. With
 * `asyncDelayMs` (or `reorder`) the store instead answers `STORAGE_PENDING` and
 * completes through the handler, to exercise blkback's asynchronous path:
 * - requests submitted while no completion is scheduled open a **batch** and arm one
 *   timer of `asyncDelayMs` milliseconds; requests submitted before it fires join
 *   that batch;
 * - when the timer fires the batch is executed and completed one request at a time,
 *   in submission order, or in **reverse** submission order with `reorder: true` —
 *   so a test that submits several requests in one turn sees them complete out of
 *   order, deterministically;
 * - the data moves when the request completes, not when it is submitted (as on a
 *   real disk, a read's pages hold nothing useful until completion, and of two
 *   overlapping requests in flight either may land last). Requests the handler
 *   submits during a batch go into the next batch.
 * A request that fails the checks of `checkStorageRequest` is answered -1 (or -2)
 * at once, in both modes.
 */

import { invariant, InvariantError } from '../rings/errors.ts';
import {
  admitStorageRequest, checkResize, checkStorageRequest, iovBytes, newStorageCounters, SECTOR_SIZE,
  STORAGE_ERROR, STORAGE_OKAY, STORAGE_PENDING, StorageError,
  type StorageBackend, type StorageCompletionHandler, type StorageCounters, type StorageRequest,
  type StorageStatus, type StorageSubmitResult,
} from './storage.ts';

/** Options of the {@link MemoryStore} constructor. All optional. */
export interface MemoryStoreOptions {
  /** Refuse writes (answered -1). Default false. */
  readonly readOnly?: boolean;
  /**
   * What the store advertises as `canFlush` (`feature-flush-cache`). Memory is never
   * durable, so the default is false; set it to test blkback's flush path. Flush
   * answers 0 either way.
   */
  readonly canFlush?: boolean;
  /**
   * Milliseconds (≥ 0) from the first request of a batch to the batch's completion.
   * Setting it selects asynchronous mode. Default: synchronous mode (or 0 ms when
   * only `reorder` is set).
   */
  readonly asyncDelayMs?: number;
  /** Complete each batch in reverse submission order. Implies asynchronous mode. */
  readonly reorder?: boolean;
}

/** A request accepted in asynchronous mode, waiting for its batch to complete. */
interface Queued {
  readonly req: StorageRequest;
  /** total bytes of `req.iov` */
  readonly len: number;
}

/** An in-memory disk as a {@link StorageBackend}; see the module comment. */
export class MemoryStore implements StorageBackend {
  /** True when writes are refused (answered -1). */
  readonly readOnly: boolean;
  /** As given in the options (default false); flush answers 0 regardless. */
  readonly canFlush: boolean;
  /** True unless read-only: discard zeroes the range. */
  readonly canDiscard: boolean;
  /** Equal to `canDiscard`: a discarded range reads back as zeroes. */
  readonly discardZeroes: boolean;
  /** 512: any sector range is zeroed exactly. */
  readonly discardGranularity = SECTOR_SIZE;
  /** True when every `submit` returns a final status (no `asyncDelayMs`, no `reorder`). */
  readonly sync: boolean;
  /** Completion delay of a batch in milliseconds (asynchronous mode). */
  readonly asyncDelayMs: number;
  /** True when batches complete in reverse submission order. */
  readonly reorder: boolean;
  /** Requests by op, bytes moved, errors; see `StorageCounters`. */
  readonly counters: StorageCounters = newStorageCounters();

  /** See {@link MemoryStore.data}. */
  #data: Uint8Array;
  #done: StorageCompletionHandler | undefined;
  /** The batch waiting for its timer, in submission order. */
  #queue: Queued[] = [];
  /** Ids submitted and not completed (asynchronous mode), to catch a duplicate id. */
  readonly #inFlight = new Set<number>();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closing = false;
  #closed: Promise<void> | undefined;
  #drained: (() => void) | undefined;

  /**
   * Makes a zero-filled disk of `sizeBytes` bytes.
   * @param sizeBytes size in bytes, a non-negative safe integer (need not be a
   *   multiple of 512; a trailing partial sector is not addressable).
   * @throws {StorageError} (`errno` `'EINVAL'`) for an invalid size or delay; a
   *   RangeError from the engine if the ArrayBuffer cannot be allocated.
   */
  constructor(sizeBytes: number, options: MemoryStoreOptions = {}) {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
      throw new StorageError('(memory)', 'EINVAL', `cannot create memory disk: EINVAL (size ${sizeBytes} is not a byte count)`);
    }
    const delay = options.asyncDelayMs;
    if (delay !== undefined && !(Number.isFinite(delay) && delay >= 0)) {
      throw new StorageError('(memory)', 'EINVAL', `cannot create memory disk: EINVAL (asyncDelayMs ${delay} is not a delay)`);
    }
    this.readOnly = options.readOnly ?? false;
    this.canFlush = options.canFlush ?? false;
    this.canDiscard = !this.readOnly;
    this.discardZeroes = this.canDiscard;
    this.reorder = options.reorder ?? false;
    this.sync = delay === undefined && !this.reorder;
    this.asyncDelayMs = delay ?? 0;
    this.#data = new Uint8Array(new ArrayBuffer(sizeBytes));
  }

  /**
   * The disk's bytes: byte `b` of the disk is `data[b]`. Tests may read and write it
   * directly. A resize replaces the array (take it again afterwards).
   */
  get data(): Uint8Array {
    return this.#data;
  }

  /** Disk size in bytes (`data.byteLength`); the disk exposes `floor(sizeBytes / 512)` sectors. */
  get sizeBytes(): number {
    return this.#data.byteLength;
  }

  /**
   * Replaces the disk by one of `sizeBytes` bytes holding the old bytes that fit
   * (grown space is zero). Queued requests (asynchronous mode) are checked again
   * against the new size when their batch runs.
   * @throws {StorageError} (as a rejection) `EINVAL` for a bad size, `EROFS` when
   *   read-only, `EBADF` after `close()`; a RangeError from the engine if the
   *   buffer cannot be allocated.
   */
  async resize(sizeBytes: number): Promise<void> {
    checkResize('(memory)', sizeBytes, this.readOnly, this.#closing);
    const data = new Uint8Array(new ArrayBuffer(sizeBytes));
    data.set(this.#data.subarray(0, sizeBytes));
    this.#data = data;
  }

  /** Sets the callback for requests answered `STORAGE_PENDING` (asynchronous mode only). */
  setCompletionHandler(done: StorageCompletionHandler): void {
    this.#done = done;
  }

  /**
   * Executes `req` (synchronous mode) or queues it in the current batch (asynchronous
   * mode). Answers -1 for a request that fails `checkStorageRequest`, a write to a
   * read-only store or any submit after `close()`; -2 for an unknown op or a discard
   * to a read-only store.
   * @throws {InvariantError} in asynchronous mode when no completion handler is set
   *   or `req.id` is already in flight (blkback's bugs).
   */
  submit(req: StorageRequest): StorageSubmitResult {
    const check = admitStorageRequest(req, this, this.#closing);
    if (check !== STORAGE_OKAY) return this.#fail(check);
    const len = req.op === 'flush' || req.op === 'discard' ? 0 : iovBytes(req.iov);
    if (this.sync) return this.#execute(req, len);

    invariant(this.#done !== undefined, 'MemoryStore: asynchronous submit before setCompletionHandler');
    if (this.#inFlight.has(req.id)) throw new InvariantError(`MemoryStore: request id ${req.id} is already in flight`);
    this.#inFlight.add(req.id);
    this.#queue.push({ req, len });
    this.#timer ??= setTimeout(() => this.#completeBatch(), this.asyncDelayMs);
    return STORAGE_PENDING;
  }

  /** Counts an error and returns its status. */
  #fail(status: StorageStatus): StorageStatus {
    this.counters.errors++;
    return status;
  }

  /** Moves the data of a checked request and returns its status; never throws. */
  #execute(req: StorageRequest, len: number): StorageStatus {
    try {
      let pos = req.offset;
      if (req.op === 'read') {
        for (const v of req.iov) {
          v.set(this.#data.subarray(pos, pos + v.byteLength));
          pos += v.byteLength;
        }
        this.counters.bytesRead += len;
      } else if (req.op === 'write') {
        for (const v of req.iov) {
          this.#data.set(v, pos);
          pos += v.byteLength;
        }
        this.counters.bytesWritten += len;
      } else if (req.op === 'discard') {
        this.#data.fill(0, pos, pos + req.length!);
        this.counters.bytesDiscarded += req.length!;
      }
      return STORAGE_OKAY;
    } catch {
      return this.#fail(STORAGE_ERROR);
    }
  }

  /** Timer callback: executes and completes the current batch, reversed if `reorder`. */
  #completeBatch(): void {
    const batch = this.#queue;
    this.#queue = [];
    this.#timer = undefined;
    if (this.reorder) batch.reverse();
    // A throwing handler is a bug in the caller; the rest of the batch still
    // completes (so close() cannot hang) and the first exception is rethrown.
    let thrown: { err: unknown } | undefined;
    for (const { req, len } of batch) {
      const status = checkStorageRequest(req, this.sizeBytes, this.readOnly, this.canDiscard) === STORAGE_OKAY
        ? this.#execute(req, len)
        : this.#fail(STORAGE_ERROR);
      this.#inFlight.delete(req.id);
      try {
        this.#done!(req.id, status);
      } catch (err) {
        thrown ??= { err };
      }
    }
    if (this.#inFlight.size === 0 && this.#drained) this.#drained();
    if (thrown) throw thrown.err;
  }

  /** Number of requests answered `STORAGE_PENDING` and not completed yet. */
  get inFlight(): number {
    return this.#inFlight.size;
  }

  /**
   * Refuses new requests (they answer -1) and waits until every queued request has
   * completed through the handler. `data` stays readable. Idempotent: every call
   * returns the same promise.
   */
  close(): Promise<void> {
    if (this.#closed) return this.#closed;
    this.#closing = true;
    this.#closed = this.#inFlight.size === 0
      ? Promise.resolve()
      : new Promise<void>((resolve) => { this.#drained = resolve; });
    return this.#closed;
  }
}
