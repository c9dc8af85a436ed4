/**
 * What the two file stores share (`RawFileStore`, `DirectFileStore`): the
 * {@link StorageBackend} surface — admission of each request, synchronous or
 * asynchronous dispatch, discard by punching holes, resize by `ftruncate`,
 * completion by id, and a close that drains what is in flight — around the two
 * things a subclass does its own way: moving data (`submitSync` / `submitAsync`) and
 * closing its descriptors.
 *
 * Units: bytes throughout (blkback multiplies blkif's 512-byte sectors out).
 */
import { ftruncateSync } from 'node:fs';
import { invariant, InvariantError } from '../rings/errors.ts';
import { probePunchHole, zeroFileRange } from './file-io.ts';
import {
  admitStorageRequest, checkResize, iovBytes, newStorageCounters, STORAGE_ERROR, STORAGE_OKAY, StorageError,
  type StorageBackend, type StorageCompletionHandler, type StorageCounters, type StorageRequest,
  type StorageStatus, type StorageSubmitResult,
} from './storage.ts';

/** How a file store was opened. */
export interface FileStoreSetup {
  readonly path: string;
  /** The descriptor for discard (`fallocate`/zeroing) and resize (`ftruncate`). */
  readonly metaFd: number;
  /** File size in bytes at open. */
  readonly sizeBytes: number;
  /** The file system's block size (`fstat`'s `blksize`): the discard granularity. */
  readonly blockSize: number;
  readonly readOnly: boolean;
  /** Completion mode: true answers inside `submit`; false through the handler. */
  readonly sync: boolean;
  /** False never discards (`canDiscard` false). */
  readonly discard: boolean;
}

/** The shared part of a file-backed {@link StorageBackend}. */
export abstract class FileStoreBase implements StorageBackend {
  /** True when opened read-only: writes answer -1. */
  readonly readOnly: boolean;
  /** True for a writable store: flush is `fdatasync`, which makes completed writes durable. */
  readonly canFlush: boolean;
  /** True when discards punch holes (writable, addon loaded, file system can). */
  readonly canDiscard: boolean;
  /** Equal to `canDiscard`: punched ranges read back as zeroes. */
  readonly discardZeroes: boolean;
  /** The file system's block size in bytes (typically 4096). */
  readonly discardGranularity: number;
  /** True in synchronous mode (every `submit` returns a final status). */
  readonly sync: boolean;
  /** The file this store was opened on (for messages). */
  readonly path: string;
  /** Requests by op, bytes moved, errors; see `StorageCounters`. */
  readonly counters: StorageCounters = newStorageCounters();
  /** The descriptor for discard and resize; -1 once closed. */
  protected metaFd: number;
  /** Set by `close()`: later submits answer -1. */
  protected closing = false;
  /** Ids of requests answered `STORAGE_PENDING` and not yet completed (async mode). */
  protected readonly inFlightIds = new Set<number>();
  protected done: StorageCompletionHandler | undefined;
  #sizeBytes: number;
  #closed: Promise<void> | undefined;
  #drained: (() => void) | undefined;

  protected constructor(s: FileStoreSetup) {
    this.path = s.path;
    this.metaFd = s.metaFd;
    this.#sizeBytes = s.sizeBytes;
    this.readOnly = s.readOnly;
    this.canFlush = !s.readOnly;
    this.canDiscard = !s.readOnly && s.discard && probePunchHole(s.metaFd, s.sizeBytes, s.blockSize);
    this.discardZeroes = this.canDiscard;
    this.discardGranularity = s.blockSize;
    this.sync = s.sync;
  }

  /** Size in bytes, taken at open and changed by {@link resize}; the disk exposes `floor(sizeBytes / 512)` sectors. */
  get sizeBytes(): number {
    return this.#sizeBytes;
  }

  /** Sets the callback for requests answered `STORAGE_PENDING` (asynchronous mode only). */
  setCompletionHandler(done: StorageCompletionHandler): void {
    this.done = done;
  }

  /**
   * Executes `req` (synchronous mode) or starts it (asynchronous mode). Answers -1
   * for a request that fails `checkStorageRequest`, a write to a read-only store, an
   * I/O error, or any submit after `close()`; -2 for an unknown op or a discard
   * when `canDiscard` is false. A zero-length read or write, a flush of a read-only
   * store, and every discard answer at once in both modes.
   * @throws {InvariantError} in asynchronous mode when no completion handler is set
   *   or `req.id` is already in flight (blkback's bugs).
   */
  submit(req: StorageRequest): StorageSubmitResult {
    const check = admitStorageRequest(req, this, this.closing);
    if (check !== STORAGE_OKAY) return this.fail(check);
    if (req.op === 'discard') return this.#discard(req.offset, req.length!);
    const len = req.op === 'flush' ? 0 : iovBytes(req.iov);
    if (req.op !== 'flush' && len === 0) return STORAGE_OKAY;
    if (req.op === 'flush' && this.readOnly) return STORAGE_OKAY;
    if (this.sync) return this.submitSync(req, len);
    invariant(this.done !== undefined, `${this.constructor.name}: asynchronous submit before setCompletionHandler`);
    if (this.inFlightIds.has(req.id)) throw new InvariantError(`${this.constructor.name}: request id ${req.id} is already in flight`);
    return this.submitAsync(req, len);
  }

  /** A read, write or flush of `len` bytes (0 for flush), answered at once. Never throws for I/O. */
  protected abstract submitSync(req: StorageRequest, len: number): StorageStatus;
  /** The same, started; completes through {@link complete}. Never throws for I/O. */
  protected abstract submitAsync(req: StorageRequest, len: number): StorageSubmitResult;
  /** Closes the descriptors (after every request in flight has completed). @throws the system error */
  protected abstract closeFiles(): void;

  /** Punches `[offset, offset + length)` out of the file (zeroing partial blocks). */
  #discard(offset: number, length: number): StorageStatus {
    try {
      zeroFileRange(this.metaFd, offset, length, this.discardGranularity);
    } catch {
      return this.fail();
    }
    this.counters.bytesDiscarded += length;
    return STORAGE_OKAY;
  }

  /**
   * Sets the file's length to `sizeBytes` with `ftruncate` (growing adds a sparse
   * tail that reads as zeroes; shrinking drops the tail). Requests already in flight
   * are not re-checked: a read past the new end reads zeroes.
   * @throws {StorageError} (as a rejection) `EINVAL` for a bad size, `EROFS` when
   *   read-only, `EBADF` after `close()`, or the system error of `ftruncate`.
   */
  async resize(sizeBytes: number): Promise<void> {
    checkResize(this.path, sizeBytes, this.readOnly, this.closing);
    try {
      ftruncateSync(this.metaFd, sizeBytes);
    } catch (err) {
      throw StorageError.fromSystemError('resize', this.path, err);
    }
    this.#sizeBytes = sizeBytes;
  }

  /** Counts an error and returns its status (-1 by default). */
  protected fail(status: StorageStatus = STORAGE_ERROR): StorageStatus {
    this.counters.errors++;
    return status;
  }

  /** Finishes an asynchronous request: counts, calls the handler, wakes `close()` when drained. */
  protected complete(id: number, status: StorageStatus): void {
    this.inFlightIds.delete(id);
    if (status !== STORAGE_OKAY) this.counters.errors++;
    try {
      this.done!(id, status);
    } finally {
      if (this.inFlightIds.size === 0 && this.#drained) this.#drained();
    }
  }

  /** Number of requests answered `STORAGE_PENDING` and not completed yet. */
  get inFlight(): number {
    return this.inFlightIds.size;
  }

  /**
   * Refuses new requests (they answer -1), waits until every in-flight request has
   * completed through the handler, then closes the file. Idempotent: every call
   * returns the same promise.
   * @throws {StorageError} (as a rejection) if closing a descriptor fails.
   */
  close(): Promise<void> {
    if (this.#closed) return this.#closed;
    this.closing = true;
    const drained = this.inFlightIds.size === 0 ? Promise.resolve() : new Promise<void>((resolve) => { this.#drained = resolve; });
    this.#closed = drained.then(() => {
      try {
        this.closeFiles();
      } catch (err) {
        throw StorageError.fromSystemError('close', this.path, err);
      }
    });
    return this.#closed;
  }
}
