/**
 * `RawFileStore`: a raw disk image in a regular file, behind the
 * {@link StorageBackend} interface.
 *
 * Byte `b` of the disk is byte `b` of the file. The disk exposes
 * `floor(fileSize / 512)` sectors, with the size taken from `fstat` when the file is
 * opened. I/O goes straight between the file and the frontend's mapped pages:
 * `readv`/`writev` accept SharedArrayBuffer-backed views (node-facts.md, "Files"),
 * so a request is one system call in the common case, with no bounce buffer.
 *
 * Two modes, chosen at open:
 * - **synchronous** (default): `submit` runs `fs.readvSync` / `fs.writevSync` /
 *   `fs.fdatasyncSync` and returns the status. From the page cache that costs about
 *   a microsecond per 4 KiB, far less than a cross-thread wake-up, so it is the
 *   fast path for blkback's domain;
 * - **asynchronous** (`sync: false`): the same through `fs.readv` / `fs.writev` /
 *   `fs.fdatasync` on libuv's thread pool; `submit` returns `STORAGE_PENDING` and the
 *   completion handler is called by request id when the call finishes — in whatever
 *   order the pool finishes them.
 *
 * Short transfers are continued until the vector is done. A read that reaches end
 * of file — possible only if the file shrank after open, since requests are bounded
 * by the size seen at open — fills the rest of the vector with zeroes. A write that
 * makes no progress is an error (never a loop). Every I/O error answers -1
 * (`BLKIF_RSP_ERROR`) and counts in `counters.errors`; nothing throws out of `submit`
 * for I/O.
 *
 * No `O_DIRECT`: SharedArrayBuffers are not aligned as it needs (node-facts.md), so
 * durability comes from `fdatasync` on flush, which is why a writable store
 * advertises `canFlush`.
 *
 * Discard punches holes (`fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`
 * through the `pvio-punch-hole` addon, file-io.ts): the file's blocks inside the
 * range are freed and read back as zeroes, and the partial blocks at the range's
 * ends (the file system's block size, `fstat`'s `blksize`, is the discard
 * granularity) are overwritten with zeroes — so `discardZeroes` holds, as for a
 * Linux block device that zeroes discarded blocks. A writable store advertises
 * `canDiscard` only when a probe punch past end of file succeeded at open (the
 * addon loaded and the file system punches holes); otherwise discards answer -2.
 * A discard is always answered synchronously (it is a metadata operation), in
 * both modes.
 *
 * Resize is `ftruncate`: growing adds a sparse tail that reads as zeroes.
 */

import {
  closeSync, fdatasync, fdatasyncSync, fstatSync, ftruncateSync, mkdirSync, openSync, readv, writev,
} from 'node:fs';
import { dirname } from 'node:path';
import { advanceIov, readFullySync, writeFullySync, zeroIov } from './file-io.ts';
import { FileStoreBase } from './file-store-base.ts';
import {
  STORAGE_ERROR, STORAGE_OKAY, STORAGE_PENDING, StorageError,
  type StorageRequest, type StorageStatus, type StorageSubmitResult,
} from './storage.ts';

/** Options of {@link RawFileStore.open}. */
export interface RawFileStoreOptions {
  /** Open with `'r'` and refuse writes (answered -1); otherwise open with `'r+'`. */
  readonly readOnly: boolean;
  /**
   * Completion mode, not `O_SYNC`: `true` (default) answers every request inside
   * `submit`; `false` answers `STORAGE_PENDING` and completes through the handler.
   */
  readonly sync?: boolean;
  /**
   * `false` never discards (`canDiscard` false, discards answer -2), e.g. to compare
   * with a disk that cannot. Default: discard when holes can be punched.
   */
  readonly discard?: boolean;
}

/**
 * A raw disk image file as a {@link StorageBackend}. Create with
 * {@link RawFileStore.open}; make a scratch image with {@link RawFileStore.createSparse}.
 */
export class RawFileStore extends FileStoreBase {
  /** The file descriptor (data, flush, discard and resize); -1 once closed. */
  #fd: number;

  private constructor(path: string, fd: number, sizeBytes: number, blockSize: number, options: RawFileStoreOptions) {
    super({ path, metaFd: fd, sizeBytes, blockSize, readOnly: options.readOnly, sync: options.sync ?? true, discard: options.discard !== false });
    this.#fd = fd;
  }

  /**
   * Opens the image at `path` with `fs.openSync` (`'r'` when `readOnly`, else `'r+'`;
   * the file must exist) and takes its size and block size from `fstat`.
   * @throws {StorageError} (`code` `PVIO_ERR_STORAGE`) when the path cannot be opened,
   *   e.g. `cannot open /x/y: ENOENT (no such file or directory)`, or is not a regular
   *   file (`EISDIR` for a directory).
   */
  static open(path: string, options: RawFileStoreOptions): RawFileStore {
    let fd: number;
    try {
      fd = openSync(path, options.readOnly ? 'r' : 'r+');
    } catch (err) {
      throw StorageError.fromSystemError('open', path, err);
    }
    try {
      const st = fstatSync(fd);
      if (st.isDirectory()) throw new StorageError(path, 'EISDIR', `cannot open ${path}: EISDIR (is a directory)`);
      if (!st.isFile()) throw new StorageError(path, undefined, `cannot open ${path}: not a regular file`);
      return new RawFileStore(path, fd, st.size, st.blksize, options);
    } catch (err) {
      closeSync(fd);
      throw err instanceof StorageError ? err : StorageError.fromSystemError('stat', path, err);
    }
  }

  /**
   * Creates a sparse image of `sizeBytes` bytes at `path` for a scratch disk: makes
   * the parent directories (`mkdir -p`), creates the file — **discarding any existing
   * contents** — and sets its length with `ftruncate`, so no blocks are allocated
   * until written. Reads of unwritten sectors return zeroes. Open it afterwards with
   * {@link RawFileStore.open}.
   * @param sizeBytes size in bytes (a non-negative safe integer; sectors exposed are
   *   `floor(sizeBytes / 512)`).
   * @throws {StorageError} when `sizeBytes` is invalid (`errno` `'EINVAL'`) or the
   *   directory or file cannot be created.
   */
  static createSparse(path: string, sizeBytes: number): void {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
      throw new StorageError(path, 'EINVAL', `cannot create ${path}: EINVAL (size ${sizeBytes} is not a byte count)`);
    }
    let fd: number;
    try {
      mkdirSync(dirname(path), { recursive: true });
      fd = openSync(path, 'w');
    } catch (err) {
      throw StorageError.fromSystemError('create', path, err);
    }
    try {
      ftruncateSync(fd, sizeBytes);
    } catch (err) {
      throw StorageError.fromSystemError('truncate', path, err);
    } finally {
      closeSync(fd);
    }
  }

  // ---- synchronous mode -------------------------------------------------------------

  protected submitSync(req: StorageRequest, len: number): StorageStatus {
    try {
      if (req.op === 'read') {
        readFullySync(this.#fd, req.iov, req.offset, len);
        this.counters.bytesRead += len;
      } else if (req.op === 'write') {
        writeFullySync(this.#fd, req.iov, req.offset, len);
        this.counters.bytesWritten += len;
      } else {
        fdatasyncSync(this.#fd);
      }
      return STORAGE_OKAY;
    } catch {
      return this.fail();
    }
  }

  // ---- asynchronous mode ------------------------------------------------------------

  protected submitAsync(req: StorageRequest, len: number): StorageSubmitResult {
    const { id } = req;
    this.inFlightIds.add(id);
    try {
      // The first call is issued here so that a synchronous throw (argument
      // validation inside node:fs) is answered -1 by submit, never by the handler.
      if (req.op === 'read') this.#readStep(id, req.offset, req.iov, len, len);
      else if (req.op === 'write') this.#writeStep(id, req.offset, req.iov, len, len);
      else fdatasync(this.#fd, (err) => this.complete(id, err ? STORAGE_ERROR : STORAGE_OKAY));
    } catch {
      this.inFlightIds.delete(id);
      return this.fail();
    }
    return STORAGE_PENDING;
  }

  /** Issues one `readv` for the `left` bytes still wanted; continues or completes in its callback. */
  #readStep(id: number, pos: number, rest: readonly Uint8Array[], left: number, len: number): void {
    readv(this.#fd, rest, pos, (err, n) => {
      if (err) return this.complete(id, STORAGE_ERROR);
      if (n === 0) zeroIov(rest);
      else if (n < left) {
        try {
          this.#readStep(id, pos + n, advanceIov(rest, n), left - n, len);
        } catch {
          this.complete(id, STORAGE_ERROR);
        }
        return;
      }
      this.counters.bytesRead += len;
      this.complete(id, STORAGE_OKAY);
    });
  }

  /** Issues one `writev` for the `left` bytes still to write; continues or completes in its callback. */
  #writeStep(id: number, pos: number, rest: readonly Uint8Array[], left: number, len: number): void {
    writev(this.#fd, rest, pos, (err, n) => {
      if (err || n === 0) return this.complete(id, STORAGE_ERROR);
      if (n < left) {
        try {
          this.#writeStep(id, pos + n, advanceIov(rest, n), left - n, len);
        } catch {
          this.complete(id, STORAGE_ERROR);
        }
        return;
      }
      this.counters.bytesWritten += len;
      this.complete(id, STORAGE_OKAY);
    });
  }

  protected closeFiles(): void {
    const fd = this.#fd;
    this.#fd = -1;
    this.metaFd = -1;
    closeSync(fd);
  }
}
