/**
 * `DirectFileStore`: a raw disk image opened with `O_DIRECT`, behind the
 * {@link StorageBackend} interface (the disk spec's `direct=1`).
 *
 * `O_DIRECT` bypasses the page cache, which is what a storage experiment wants when
 * it must measure the device rather than memory. It needs buffers whose address is
 * aligned to the device's DMA alignment (512 bytes here), and offsets and lengths
 * aligned to its logical block size. The frontend's granted pages are
 * SharedArrayBuffers that JavaScript cannot align (node-facts.md, "Files": an
 * `O_DIRECT` read into one fails with EINVAL), so data goes through an aligned
 * **bounce arena**: one plain ArrayBuffer, allocated once, one page larger than
 * needed. JavaScript cannot ask for an aligned ArrayBuffer nor read an address, so
 * the aligned start is found empirically: `O_DIRECT` reads of 4 KiB at byte 0 of the
 * file into the arena at offsets 0, 8, 16, ... until one stops failing with EINVAL
 * (V8 backing stores are at least 8-byte aligned; a large one typically starts at
 * 16 mod 4096, so stepping by 512 from 0 would never succeed). The backing store of
 * an ArrayBuffer never moves, so the offset found stays good. The logical block size
 * (512 or 4096) is probed the same way: a 512-byte read at byte 512. Reads of a
 * hole or past end of file skip the kernel's alignment check, so the probe can be
 * fooled by an image whose first page is a hole (an empty file is detected and
 * probed again at the first I/O): in synchronous mode a transfer that still fails
 * with EINVAL moves the arena to the next candidate offset and is retried — the
 * transfer itself is then the probe; in asynchronous mode it answers -1.
 *
 * A read is one `pread` into the arena, then a copy into the request's page views;
 * a write copies the views into the arena, then one `pwrite` (a copy costs
 * ~0.3 µs per 4 KiB, machine-baselines.md §4, against ~85 µs for the device). A
 * request longer than a bounce slot ({@link DirectFileStoreOptions.slotBytes},
 * 1 MiB) goes in slot-sized chunks. A request not aligned to the logical block size
 * is widened to whole blocks: a read reads the blocks and copies the middle; a write
 * reads the blocks, patches them and writes them back (read-modify-write; in
 * asynchronous mode it runs alone, so two such writes into one block cannot race).
 * A short read means end of file (the file shrank): the rest reads as zeroes.
 *
 * Two completion modes, as `RawFileStore`:
 * - **synchronous** (default): `fs.readSync` / `fs.writeSync` inside `submit`; one
 *   bounce slot. Every request waits for the device on blkback's thread, so the
 *   device sees one request at a time;
 * - **asynchronous** (`sync: false`): `fs.read` / `fs.write` on libuv's thread pool,
 *   {@link DirectFileStoreOptions.bounceSlots} slots (32), one per request in flight;
 *   more requests wait in FIFO order for a slot. Completions may come out of order.
 *
 * Metadata goes through a second, buffered descriptor on the same file: flush is
 * `fdatasync` (O_DIRECT alone does not flush the device cache or metadata, so a
 * writable store advertises `canFlush`), discard punches holes
 * (`FALLOC_FL_PUNCH_HOLE`, file-io.ts; partial blocks are zeroed through the
 * buffered descriptor — the kernel writes back and invalidates cached pages before
 * later direct I/O on the range, so the two descriptors stay coherent), resize is
 * `ftruncate`.
 *
 * @see open(2) "O_DIRECT" (alignment), machine-baselines.md §5 (O_DIRECT figures)
 */

import {
  closeSync, constants, fdatasync, fdatasyncSync, fstatSync, ftruncateSync, openSync, read, readSync, write, writeSync,
} from 'node:fs';
import { sliceIov } from './file-io.ts';
import { FileStoreBase } from './file-store-base.ts';
import {
  SECTOR_SIZE, STORAGE_ERROR, STORAGE_OKAY, STORAGE_PENDING, StorageError,
  type StorageRequest, type StorageStatus, type StorageSubmitResult,
} from './storage.ts';

/** Bytes of a page: the most alignment probing will need, and the slot granule. */
const PAGE = 4096;
/** Step of the alignment probe: V8's ArrayBuffer backing stores are at least 8-byte aligned. */
const PROBE_STEP = 8;
/** Largest logical block size considered (4Kn devices). */
const MAX_BLOCK = 4096;
/** Default bytes of one bounce slot: one 256-segment indirect request. */
export const DIRECT_SLOT_BYTES = 1 << 20;
/** Default number of bounce slots in asynchronous mode. */
export const DIRECT_BOUNCE_SLOTS = 32;

/** Options of {@link DirectFileStore.open}. */
export interface DirectFileStoreOptions {
  /** Open `O_RDONLY` and refuse writes (answered -1); otherwise `O_RDWR`. */
  readonly readOnly: boolean;
  /** `true` (default): answer every request inside `submit`; `false`: through libuv and the completion handler. */
  readonly sync?: boolean;
  /** `false` never discards (`canDiscard` false). Default: discard when holes can be punched. */
  readonly discard?: boolean;
  /** Bounce slots, i.e. requests in flight at once (asynchronous mode; 1 in synchronous mode). Default 32. */
  readonly bounceSlots?: number;
  /** Bytes per bounce slot, a multiple of 4096 (the largest single `pread`/`pwrite`). Default 1 MiB. */
  readonly slotBytes?: number;
  /**
   * Logical block size to assume instead of probing it (512 or 4096), e.g. to test
   * the read-modify-write path on a 512-byte device.
   */
  readonly blockSize?: 512 | 4096;
}

/** How the store found its alignment, and how much it bounced (for reports and tests). */
export interface DirectFileStoreStats {
  /** Offset of the aligned arena start inside its ArrayBuffer (bytes); null until probed. */
  alignedOffset: number | null;
  /** `O_DIRECT` reads the alignment probe issued (EINVAL ones included). */
  probes: number;
  /** Logical block size in use (512 or 4096). */
  blockSize: number;
  /** Bytes copied arena → pages (reads) and pages → arena (writes). */
  bounceBytesIn: number;
  bounceBytesOut: number;
  /** Requests widened to whole logical blocks (reads) or read-modify-written (writes). */
  widened: number;
  /** Requests that waited for a bounce slot (asynchronous mode). */
  slotWaits: number;
}

/**
 * Finds where O_DIRECT transfers may start in `buffer` (a plain ArrayBuffer at
 * least one page long), empirically: reads one page at byte 0 of `fd` (opened with
 * O_DIRECT) into `buffer` at offsets 0, 8, 16, ... below 4096 until one is not
 * refused with EINVAL. Stepping by 8, not 512: a large V8 backing store typically
 * starts 16 bytes past a page boundary, so no multiple of 512 from 0 is aligned.
 * Also used by `pvio bench blk`'s O_DIRECT baselines.
 * @param counts when given, `counts.probes` grows by the reads issued.
 * @returns the offset; null when the read returned no data (an empty file answers
 *   without checking alignment: inconclusive); -1 when no offset works.
 * @throws the `fs` error of a probe that failed otherwise than with EINVAL.
 */
export function probeDirectAlignment(fd: number, buffer: ArrayBuffer, counts?: { probes: number }): number | null {
  const whole = new Uint8Array(buffer);
  const len = Math.min(PAGE, whole.byteLength - PAGE);
  if (len <= 0) throw new RangeError('probeDirectAlignment: the buffer must be longer than one page');
  for (let off = 0; off < PAGE; off += PROBE_STEP) {
    if (counts) counts.probes++;
    let got: number;
    try {
      got = readSync(fd, whole, off, len, 0);
    } catch (err) {
      if ((err as { code?: string }).code === 'EINVAL') continue;
      throw err;
    }
    return got === 0 ? null : off;
  }
  return -1;
}

/**
 * A view of `bytes` bytes inside a fresh ArrayBuffer, placed where O_DIRECT accepts
 * it (see {@link probeDirectAlignment}); `fd` must be open with O_DIRECT on a file
 * with data at byte 0.
 * @throws Error when no alignment can be found.
 */
export function alignedDirectBuffer(fd: number, bytes: number): Uint8Array {
  const buffer = new ArrayBuffer(bytes + 2 * PAGE);
  const off = probeDirectAlignment(fd, buffer);
  if (off === null || off < 0) throw new Error(`no O_DIRECT alignment found (${off === null ? 'empty file' : 'every offset refused'})`);
  return new Uint8Array(buffer, off, bytes);
}

/** A request in asynchronous mode, from submit to completion. */
interface Job {
  readonly req: StorageRequest;
  readonly len: number;
  /** Bytes finished so far. */
  done: number;
  /** Slot index while running. */
  slot: number;
  /** A read-modify-write: runs with nothing else in flight. */
  readonly exclusive: boolean;
}

/** A raw image opened with O_DIRECT, bouncing through an aligned arena; see the module comment. */
export class DirectFileStore extends FileStoreBase {
  readonly stats: DirectFileStoreStats;

  /** The O_DIRECT descriptor (data); -1 once closed. */
  #fd: number;
  readonly #slotBytes: number;
  readonly #slots: number;
  /** Bytes of one slot in the arena: slotBytes plus a block on each side for widening. */
  readonly #slotStride: number;
  /** The arena's ArrayBuffer (slots × stride + one page for alignment). */
  readonly #arenaBuffer: ArrayBuffer;
  /** The aligned arena: a view from the probed offset; null until probed. */
  #arena: Uint8Array | null = null;
  #blockSize: number;
  readonly #blockSizeGiven: boolean;
  /** Arena moves since the last successful transfer ({@link DirectFileStore.#realign}). */
  #realigns = 0;
  readonly #freeSlots: number[] = [];
  readonly #waiting: Job[] = [];
  #running = 0;
  #exclusiveRunning = false;

  private constructor(path: string, fd: number, meta: number, sizeBytes: number, blksize: number, o: DirectFileStoreOptions) {
    // The buffered descriptor does fdatasync, discard and resize.
    super({ path, metaFd: meta, sizeBytes, blockSize: blksize, readOnly: o.readOnly, sync: o.sync ?? true, discard: o.discard !== false });
    this.#fd = fd;
    this.#slotBytes = o.slotBytes ?? DIRECT_SLOT_BYTES;
    this.#slots = this.sync ? 1 : Math.max(1, o.bounceSlots ?? DIRECT_BOUNCE_SLOTS);
    this.#slotStride = this.#slotBytes + 2 * MAX_BLOCK;
    this.#arenaBuffer = new ArrayBuffer(this.#slots * this.#slotStride + PAGE);
    for (let i = this.#slots - 1; i >= 0; i--) this.#freeSlots.push(i);
    this.#blockSize = o.blockSize ?? SECTOR_SIZE;
    this.#blockSizeGiven = o.blockSize !== undefined;
    this.stats = { alignedOffset: null, probes: 0, blockSize: this.#blockSize, bounceBytesIn: 0, bounceBytesOut: 0, widened: 0, slotWaits: 0 };
  }

  /**
   * Opens the image at `path` with `O_DIRECT` (`O_RDONLY` or `O_RDWR`; the file must
   * exist) plus a buffered descriptor for metadata, and probes the arena's alignment
   * (unless the file is empty: then at the first I/O).
   * @throws {StorageError} when the file cannot be opened (`EINVAL` when the file
   *   system refuses `O_DIRECT`, e.g. tmpfs), is not a regular file, or no offset of
   *   the arena satisfies `O_DIRECT`.
   */
  static open(path: string, options: DirectFileStoreOptions): DirectFileStore {
    const slotBytes = options.slotBytes ?? DIRECT_SLOT_BYTES;
    if (!Number.isSafeInteger(slotBytes) || slotBytes <= 0 || slotBytes % PAGE !== 0) {
      throw new StorageError(path, 'EINVAL', `cannot open ${path}: EINVAL (slotBytes ${slotBytes} is not a positive multiple of ${PAGE})`);
    }
    const access = options.readOnly ? constants.O_RDONLY : constants.O_RDWR;
    let fd: number;
    try {
      fd = openSync(path, access | constants.O_DIRECT);
    } catch (err) {
      throw StorageError.fromSystemError('open (O_DIRECT)', path, err);
    }
    let meta = -1;
    try {
      meta = openSync(path, access);
      const st = fstatSync(fd);
      if (st.isDirectory()) throw new StorageError(path, 'EISDIR', `cannot open ${path}: EISDIR (is a directory)`);
      if (!st.isFile()) throw new StorageError(path, undefined, `cannot open ${path}: not a regular file`);
      const store = new DirectFileStore(path, fd, meta, st.size, st.blksize, options);
      if (st.size > 0) store.#probe();
      return store;
    } catch (err) {
      closeSync(fd);
      if (meta >= 0) closeSync(meta);
      throw err instanceof StorageError ? err : StorageError.fromSystemError('open', path, err);
    }
  }

  // ---- alignment ------------------------------------------------------------------

  /**
   * Finds the arena's aligned start: O_DIRECT reads of one page at byte 0 into the
   * arena at offsets 0, 8, 16 ... until one is not refused with EINVAL; then the
   * logical block size (a 512-byte read at byte 512: EINVAL means 4096).
   * @throws {StorageError} on another error, or when no offset works.
   */
  #probe(): void {
    let off: number | null;
    try {
      off = probeDirectAlignment(this.#fd, this.#arenaBuffer, this.stats);
    } catch (err) {
      throw StorageError.fromSystemError('probe O_DIRECT alignment of', this.path, err);
    }
    if (off === null) return; // the file is empty: try again at the first I/O
    if (off >= 0) this.#setArena(off);
    if (!this.#arena) {
      throw new StorageError(this.path, 'EINVAL', `cannot open ${this.path}: EINVAL (no offset of the bounce buffer satisfies O_DIRECT)`);
    }
    if (!this.#blockSizeGiven && this.sizeBytes >= 2 * SECTOR_SIZE) {
      this.stats.probes++;
      try {
        readSync(this.#fd, this.#arena, 0, SECTOR_SIZE, SECTOR_SIZE);
        this.#blockSize = SECTOR_SIZE;
      } catch (err) {
        if ((err as { code?: string }).code !== 'EINVAL') throw StorageError.fromSystemError('probe the block size of', this.path, err);
        this.#blockSize = MAX_BLOCK;
      }
      this.stats.blockSize = this.#blockSize;
    }
  }

  /** Puts the aligned arena at byte `off` of its buffer. */
  #setArena(off: number): void {
    this.#arena = new Uint8Array(this.#arenaBuffer, off, this.#slots * this.#slotStride);
    this.stats.alignedOffset = off;
  }

  /**
   * After an EINVAL from a data transfer (synchronous mode): the probe was fooled (a
   * hole reads back without the alignment check), so moves the arena to the next
   * candidate offset for a retry of the same transfer, which is then the probe.
   * @returns false once every candidate has been tried since the last success.
   */
  #realign(): boolean {
    if (++this.#realigns >= PAGE / PROBE_STEP) return false;
    this.stats.probes++;
    this.#setArena(((this.stats.alignedOffset ?? 0) + PROBE_STEP) % PAGE);
    return true;
  }

  /** The aligned arena, probing first if the file was empty at open. @throws StorageError */
  #ready(): void {
    if (!this.#arena) this.#probe();
    if (!this.#arena) throw new StorageError(this.path, 'EINVAL', `${this.path}: O_DIRECT alignment not known yet (nothing to read)`);
  }

  /** The block-aligned range `[a, a + wlen)` that covers `[pos, pos + n)`. */
  #widen(pos: number, n: number): { a: number; wlen: number; wide: boolean } {
    const b = this.#blockSize;
    const a = Math.floor(pos / b) * b;
    const e = Math.ceil((pos + n) / b) * b;
    return { a, wlen: e - a, wide: a !== pos || e !== pos + n };
  }

  /** Whether a request must be widened (any chunk not aligned to the logical block size). */
  #needsWidening(req: StorageRequest, len: number): boolean {
    return req.offset % this.#blockSize !== 0 || len % this.#blockSize !== 0;
  }

  // ---- copies between the arena and the page views -----------------------------------

  /** Copies `n` bytes from `arena[at...]` into the views `iov` starting `skip` bytes into the vector. */
  #scatter(arena: Uint8Array, at: number, iov: readonly Uint8Array[], skip: number, n: number): void {
    this.stats.bounceBytesIn += n;
    for (const v of sliceIov(iov, skip, n)) {
      v.set(arena.subarray(at, at + v.byteLength));
      at += v.byteLength;
    }
  }

  /** Copies `n` bytes of the vector `iov`, from `skip` bytes in, into `arena[at...]`. */
  #gather(arena: Uint8Array, at: number, iov: readonly Uint8Array[], skip: number, n: number): void {
    this.stats.bounceBytesOut += n;
    for (const v of sliceIov(iov, skip, n)) {
      arena.set(v, at);
      at += v.byteLength;
    }
  }

  /** After a widened write past the size (a size that is not a block multiple), cuts the file back. */
  #trimTail(end: number): void {
    if (end > this.sizeBytes) ftruncateSync(this.metaFd, this.sizeBytes);
  }

  // ---- synchronous mode -------------------------------------------------------------

  protected submitSync(req: StorageRequest, len: number): StorageStatus {
    try {
      if (req.op === 'flush') {
        fdatasyncSync(this.metaFd);
        return STORAGE_OKAY;
      }
      this.#ready();
      if (this.#needsWidening(req, len)) this.stats.widened++;
      for (let done = 0; done < len;) {
        const n = Math.min(len - done, this.#slotBytes);
        for (;;) {
          try {
            if (req.op === 'read') this.#readChunkSync(this.#arena!, req.iov, done, req.offset + done, n);
            else this.#writeChunkSync(this.#arena!, req.iov, done, req.offset + done, n);
            this.#realigns = 0;
            break;
          } catch (err) {
            if ((err as { code?: string }).code === 'EINVAL' && this.#realign()) continue;
            throw err;
          }
        }
        done += n;
      }
      if (req.op === 'read') this.counters.bytesRead += len;
      else this.counters.bytesWritten += len;
      return STORAGE_OKAY;
    } catch {
      return this.fail();
    }
  }

  /** Reads the blocks covering `[pos, pos + n)` into slot 0 and copies `n` bytes to the vector at `skip`. */
  #readChunkSync(arena: Uint8Array, iov: readonly Uint8Array[], skip: number, pos: number, n: number): void {
    const { a, wlen } = this.#widen(pos, n);
    const got = readSync(this.#fd, arena, 0, wlen, a);
    if (got < wlen) arena.fill(0, got, wlen); // end of file: the rest reads as zeroes
    this.#scatter(arena, pos - a, iov, skip, n);
  }

  /** Writes `n` bytes of the vector from `skip` at `pos` through slot 0 (read-modify-write when unaligned). */
  #writeChunkSync(arena: Uint8Array, iov: readonly Uint8Array[], skip: number, pos: number, n: number): void {
    const { a, wlen, wide } = this.#widen(pos, n);
    if (wide) {
      const got = readSync(this.#fd, arena, 0, wlen, a);
      if (got < wlen) arena.fill(0, got, wlen);
    }
    this.#gather(arena, pos - a, iov, skip, n);
    for (let w = 0; w < wlen;) {
      const k = writeSync(this.#fd, arena, w, wlen - w, a + w);
      if (k <= 0 || (k < wlen - w && k % this.#blockSize !== 0)) throw new Error(`O_DIRECT write made no aligned progress (${k})`);
      w += k;
    }
    if (wide) this.#trimTail(a + wlen);
  }

  // ---- asynchronous mode ------------------------------------------------------------

  protected submitAsync(req: StorageRequest, len: number): StorageSubmitResult {
    if (req.op === 'flush') {
      const { id } = req;
      try {
        fdatasync(this.metaFd, (err) => this.complete(id, err ? STORAGE_ERROR : STORAGE_OKAY));
      } catch {
        return this.fail();
      }
      this.inFlightIds.add(id);
      return STORAGE_PENDING;
    }
    try {
      this.#ready();
    } catch {
      return this.fail();
    }
    const exclusive = req.op === 'write' && this.#needsWidening(req, len);
    if (this.#needsWidening(req, len)) this.stats.widened++;
    this.inFlightIds.add(req.id);
    const job: Job = { req, len, done: 0, slot: -1, exclusive };
    if (this.#waiting.length > 0 || !this.#canStart(job)) {
      this.stats.slotWaits++;
      this.#waiting.push(job);
    } else {
      this.#start(job);
    }
    return STORAGE_PENDING;
  }

  /** Whether `job` may start now: a free slot, no exclusive job running, and nothing running for an exclusive one. */
  #canStart(job: Job): boolean {
    if (this.#exclusiveRunning || this.#freeSlots.length === 0) return false;
    return !job.exclusive || this.#running === 0;
  }

  /** Starts waiting jobs in FIFO order while they can start. */
  #pump(): void {
    while (this.#waiting.length > 0 && this.#canStart(this.#waiting[0])) this.#start(this.#waiting.shift()!);
  }

  #start(job: Job): void {
    job.slot = this.#freeSlots.pop()!;
    this.#running++;
    if (job.exclusive) this.#exclusiveRunning = true;
    this.#step(job);
  }

  /** Issues the next chunk of `job`, or finishes it. Never throws: failures complete the job with -1. */
  #step(job: Job): void {
    if (job.done >= job.len) {
      if (job.req.op === 'read') this.counters.bytesRead += job.len;
      else this.counters.bytesWritten += job.len;
      this.#finish(job, STORAGE_OKAY);
      return;
    }
    const arena = this.#arena!;
    const base = job.slot * this.#slotStride;
    const n = Math.min(job.len - job.done, this.#slotBytes);
    const pos = job.req.offset + job.done;
    const { a, wlen, wide } = this.#widen(pos, n);
    const fail = () => this.#finish(job, STORAGE_ERROR);
    const fillTail = (got: number) => {
      if (got < wlen) arena.fill(0, base + got, base + wlen);
    };
    const doWrite = () => {
      this.#gather(arena, base + pos - a, job.req.iov, job.done, n);
      this.#writeFrom(base, wlen, a, 0, (ok) => {
        if (!ok) return fail();
        try {
          if (wide) this.#trimTail(a + wlen);
        } catch {
          return fail();
        }
        job.done += n;
        this.#step(job);
      });
    };
    try {
      if (job.req.op === 'read') {
        read(this.#fd, arena, base, wlen, a, (err, got) => {
          if (err) return fail();
          fillTail(got);
          this.#scatter(arena, base + pos - a, job.req.iov, job.done, n);
          job.done += n;
          this.#step(job);
        });
      } else if (wide) {
        read(this.#fd, arena, base, wlen, a, (err, got) => {
          if (err) return fail();
          fillTail(got);
          doWrite();
        });
      } else {
        doWrite();
      }
    } catch {
      // Argument validation inside node:fs threw synchronously.
      queueMicrotask(fail);
    }
  }

  /** Writes `arena[base + w, base + wlen)` at `a + w`, continuing aligned short writes. */
  #writeFrom(base: number, wlen: number, a: number, w: number, cb: (ok: boolean) => void): void {
    try {
      write(this.#fd, this.#arena!, base + w, wlen - w, a + w, (err, k) => {
        if (err || k <= 0 || (k < wlen - w && k % this.#blockSize !== 0)) return cb(false);
        if (w + k >= wlen) return cb(true);
        this.#writeFrom(base, wlen, a, w + k, cb);
      });
    } catch {
      queueMicrotask(() => cb(false));
    }
  }

  /** Frees the job's slot, completes it, and starts what was waiting. */
  #finish(job: Job, status: StorageStatus): void {
    this.#freeSlots.push(job.slot);
    this.#running--;
    if (job.exclusive) this.#exclusiveRunning = false;
    try {
      this.complete(job.req.id, status);
    } finally {
      this.#pump();
    }
  }

  protected closeFiles(): void {
    const fds = [this.#fd, this.metaFd];
    this.#fd = -1;
    this.metaFd = -1;
    let first: unknown;
    for (const fd of fds) {
      try {
        closeSync(fd);
      } catch (err) {
        first ??= err;
      }
    }
    if (first !== undefined) throw first;
  }
}
