/**
 * `CowStore`: a copy-on-write disk — a read-only base image under a writable
 * overlay file — behind the {@link StorageBackend} interface (qcow2's backing file,
 * or Xen's blktap `vhd` differencing disk, in their simplest form).
 *
 * Layout:
 * - the **base** image is opened read-only and never written (its bytes and mtime
 *   stay as they were);
 * - the **overlay** (the disk's target path) is a sparse file of the disk's size:
 *   byte `b` of the overlay is byte `b` of the disk wherever the overlay holds it;
 * - the disk is cut into **clusters** of `clusterSize` bytes (default
 *   {@link COW_CLUSTER_SIZE}, 64 KiB as qcow2's default; a power of two,
 *   512 B..2 MiB, fixed when the overlay is made). An **allocation map**, one bit
 *   per cluster, says which clusters the overlay holds;
 * - the map is persisted beside the overlay in `<overlay>.map` (format below),
 *   rewritten — to a temporary file, fsynced, renamed over the old one — on flush,
 *   on resize and on close, only when it changed. Reopening an overlay loads its
 *   map, so writes made before a flush or close are kept.
 *
 * Requests:
 * - **read**: runs of allocated clusters come from the overlay, the others from
 *   the base (zeroes past the base's end, or past where a shrink cut it);
 * - **write**: a write that covers only part of an unallocated cluster first
 *   copies that cluster from the base into the overlay; then the data is written to
 *   the overlay in one `writev`, and the clusters are marked allocated;
 * - **discard**: whole clusters are marked allocated and zeroed in the overlay by
 *   punching a hole (file-io.ts `zeroFileRange`; zero writes without the addon);
 *   partial clusters are copied up and the range overwritten with zeroes. So a
 *   discarded range reads back as zeroes (`discardZeroes`), never as the base;
 * - **flush**: `fdatasync` of the overlay, then the map is written and fsynced —
 *   data first, so a map on disk never claims clusters whose data is not;
 * - **resize**: `ftruncate` of the overlay and a new map; after a shrink the base
 *   is visible only below the smallest size the disk has had (`baseLimit`), so
 *   space grown back reads as zeroes.
 *
 * Every request is answered synchronously (page-cache I/O, as RawFileStore's
 * synchronous mode). A read-only CowStore opens an existing overlay and map and
 * refuses writes, discards and resizes.
 *
 * The map file (`<overlay>.map`), little-endian, laid out by {@link COW_MAP}:
 * ```
 * struct pvio_cow_map {
 *   char     magic[8];      // "PVIOCOW1"
 *   uint32_t cluster_size;  // bytes
 *   uint32_t pad;           // 0
 *   uint64_t size;          // disk size in bytes (= overlay size)
 *   uint64_t base_limit;    // bytes of the base the disk still shows
 *   uint64_t base_size;     // base image size when the overlay was made
 *   uint8_t  bitmap[];      // ceil(size / cluster_size) bits; bit c % 8 of byte c / 8 = cluster c allocated
 * };
 * ```
 * u64 fields are two u32 halves (no BigInt), below 2^53.
 */

import {
  closeSync, constants, fdatasyncSync, fstatSync, fsyncSync, ftruncateSync, openSync, readFileSync, renameSync,
  writeSync,
} from 'node:fs';
import { readFullySync, sliceIov, writeFullySync, zeroFileRange, zeroIov } from './file-io.ts';
import {
  admitStorageRequest, checkResize, iovBytes, newStorageCounters, STORAGE_ERROR, STORAGE_OKAY, StorageError,
  type StorageBackend, type StorageCounters, type StorageRequest, type StorageStatus,
} from './storage.ts';

/** Default cluster size in bytes: 64 KiB (qcow2's default). */
export const COW_CLUSTER_SIZE = 65536;

/** Byte offsets of the map file's header fields and bitmap; see the module comment. */
export const COW_MAP = Object.freeze({
  magic: 0, clusterSize: 8, pad: 12, sizeBytes: 16, baseLimit: 24, baseSize: 32, bitmap: 40,
});

/** The map file's magic, `"PVIOCOW1"`. */
const MAGIC = 'PVIOCOW1';

/** Options of {@link CowStore.open}. */
export interface CowStoreOptions {
  /** Path of the read-only base image (a regular file; opened `'r'`). */
  readonly base: string;
  /**
   * Path of the overlay (the disk's target). Writable: created, sparse and of the
   * base's size, when it does not exist (or is empty) and has no map. Read-only:
   * the overlay and its map must exist.
   */
  readonly overlay: string;
  /** Refuse writes, discards and resizes (answered -1 / rejected); open the overlay `'r'`. */
  readonly readOnly: boolean;
  /** Cluster size in bytes for a new overlay: a power of two, 512..2 MiB. Default {@link COW_CLUSTER_SIZE}. */
  readonly clusterSize?: number;
}

/** A map file as read from disk. */
interface CowMap {
  clusterSize: number;
  sizeBytes: number;
  baseLimit: number;
  baseSize: number;
  bitmap: Uint8Array;
}

/** Bytes of bitmap for `sizeBytes` bytes of disk in clusters of `clusterSize`. */
function bitmapBytes(sizeBytes: number, clusterSize: number): number {
  return Math.ceil(Math.ceil(sizeBytes / clusterSize) / 8);
}

/** Reads a u64 stored as two u32 halves. */
function getU64(dv: DataView, offset: number): number {
  return dv.getUint32(offset, true) + dv.getUint32(offset + 4, true) * 2 ** 32;
}

/** Stores a safe integer as two u32 halves. */
function setU64(dv: DataView, offset: number, v: number): void {
  dv.setUint32(offset, v % 2 ** 32, true);
  dv.setUint32(offset + 4, Math.floor(v / 2 ** 32), true);
}

/** Parses a map file; undefined when it is malformed. */
function parseMap(bytes: Uint8Array): CowMap | undefined {
  if (bytes.byteLength < COW_MAP.bitmap) return undefined;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (Buffer.from(bytes.subarray(0, 8)).toString('latin1') !== MAGIC) return undefined;
  const map = {
    clusterSize: dv.getUint32(COW_MAP.clusterSize, true),
    sizeBytes: getU64(dv, COW_MAP.sizeBytes),
    baseLimit: getU64(dv, COW_MAP.baseLimit),
    baseSize: getU64(dv, COW_MAP.baseSize),
    bitmap: bytes.slice(COW_MAP.bitmap),
  };
  if (!validClusterSize(map.clusterSize) || !Number.isSafeInteger(map.sizeBytes) || !Number.isSafeInteger(map.baseSize)) {
    return undefined;
  }
  if (map.baseLimit > Math.min(map.sizeBytes, map.baseSize)) return undefined;
  if (map.bitmap.byteLength !== bitmapBytes(map.sizeBytes, map.clusterSize)) return undefined;
  return map;
}

/** A power of two from 512 to 2 MiB. */
function validClusterSize(n: number): boolean {
  return Number.isInteger(n) && n >= 512 && n <= 2 * 1024 * 1024 && (n & (n - 1)) === 0;
}

/** Opens `path` with `flags`, wrapping failures as StorageError. */
function openFile(path: string, flags: string | number): number {
  try {
    return openSync(path, flags);
  } catch (err) {
    throw StorageError.fromSystemError('open', path, err);
  }
}

/** A copy-on-write overlay over a read-only base image; see the module comment. Create with {@link CowStore.open}. */
export class CowStore implements StorageBackend {
  /** True when writes, discards and resizes are refused. */
  readonly readOnly: boolean;
  /** True unless read-only: flush is `fdatasync` of the overlay, then the map. */
  readonly canFlush: boolean;
  /** True unless read-only: discarded clusters are zeroed in the overlay. */
  readonly canDiscard: boolean;
  /** Equal to `canDiscard`: a discarded range reads back as zeroes, never as the base. */
  readonly discardZeroes: boolean;
  /** The cluster size in bytes: whole clusters are freed (punched), partial ones zeroed. */
  readonly discardGranularity: number;
  /** Cluster size in bytes. */
  readonly clusterSize: number;
  /** The overlay's path (the disk's target). */
  readonly path: string;
  /** The base image's path. */
  readonly basePath: string;
  /** The map's path: `<overlay>.map`. */
  readonly mapPath: string;
  /** Requests by op, bytes moved, errors; see `StorageCounters`. */
  readonly counters: StorageCounters = newStorageCounters();

  /** Base image descriptor (read-only); -1 once closed. */
  #base: number;
  /** Overlay descriptor; -1 once closed. */
  #overlay: number;
  /** The overlay file system's block size, for hole punching. */
  readonly #blockSize: number;
  readonly #baseSize: number;
  #sizeBytes: number;
  /** Bytes of the base still visible: reads of unallocated clusters at or past it are zeroes. */
  #baseLimit: number;
  /** Bit `c % 8` of byte `c / 8`: cluster `c` is held by the overlay. */
  #bitmap: Uint8Array;
  /** The map changed since it was last written. */
  #dirty: boolean;
  /** One cluster, for copying a cluster up from the base. */
  readonly #bounce: Uint8Array;
  #closed: Promise<void> | undefined;

  private constructor(opts: CowStoreOptions, base: number, overlay: number, blockSize: number, map: CowMap, dirty: boolean) {
    this.path = opts.overlay;
    this.basePath = opts.base;
    this.mapPath = `${opts.overlay}.map`;
    this.readOnly = opts.readOnly;
    this.canFlush = this.canDiscard = this.discardZeroes = !opts.readOnly;
    this.clusterSize = this.discardGranularity = map.clusterSize;
    this.#base = base;
    this.#overlay = overlay;
    this.#blockSize = blockSize;
    this.#baseSize = map.baseSize;
    this.#sizeBytes = map.sizeBytes;
    this.#baseLimit = map.baseLimit;
    this.#bitmap = map.bitmap;
    this.#dirty = dirty;
    this.#bounce = new Uint8Array(map.clusterSize);
  }

  /**
   * Opens (or, when writable, creates) a copy-on-write disk: opens `base` read-only,
   * loads `<overlay>.map` and opens the overlay; with no map, a missing or empty
   * (or wholly sparse) overlay becomes a new one of the base's size.
   * @throws {StorageError} when a file cannot be opened or created (`ENOENT`,
   *   `EACCES`, `EISDIR`...), the cluster size is invalid or the map malformed
   *   (`EINVAL`), the base changed size since the overlay was made (`EINVAL`), or
   *   an overlay that holds data has no map (`EEXIST`: it would be misread).
   */
  static open(opts: CowStoreOptions): CowStore {
    const clusterSize = opts.clusterSize ?? COW_CLUSTER_SIZE;
    const mapPath = `${opts.overlay}.map`;
    if (!validClusterSize(clusterSize)) {
      throw new StorageError(opts.overlay, 'EINVAL', `cannot open ${opts.overlay}: EINVAL (cluster size ${clusterSize} is not a power of two from 512 to 2 MiB)`);
    }
    const fds: number[] = [];
    try {
      const base = openFile(opts.base, 'r');
      fds.push(base);
      const baseStat = fstatSync(base);
      if (!baseStat.isFile()) throw new StorageError(opts.base, 'EINVAL', `cannot open ${opts.base}: EINVAL (the base image is not a regular file)`);

      let mapBytes: Uint8Array | undefined;
      try {
        mapBytes = readFileSync(mapPath);
      } catch (err) {
        if ((err as { code?: unknown }).code !== 'ENOENT' || opts.readOnly) throw StorageError.fromSystemError('open', mapPath, err);
      }
      // Without a map, create the overlay if missing, never truncating it (checked below).
      const overlay = openFile(opts.overlay, opts.readOnly ? 'r' : mapBytes ? 'r+' : constants.O_RDWR | constants.O_CREAT);
      fds.push(overlay);
      const st = fstatSync(overlay);
      if (!st.isFile()) throw new StorageError(opts.overlay, 'EINVAL', `cannot open ${opts.overlay}: EINVAL (the overlay is not a regular file)`);

      let map: CowMap;
      if (mapBytes) {
        const parsed = parseMap(mapBytes);
        if (!parsed) throw new StorageError(mapPath, 'EINVAL', `cannot open ${mapPath}: EINVAL (not a pvio copy-on-write map)`);
        if (parsed.baseSize !== baseStat.size) {
          throw new StorageError(opts.base, 'EINVAL', `cannot open ${opts.base}: EINVAL (the base image is ${baseStat.size} bytes; the overlay was made over ${parsed.baseSize})`);
        }
        map = parsed;
      } else {
        if (st.size > 0 && st.blocks > 0) {
          throw new StorageError(opts.overlay, 'EEXIST', `cannot open ${opts.overlay}: EEXIST (the overlay holds data but has no map ${mapPath})`);
        }
        const size = baseStat.size;
        map = { clusterSize, sizeBytes: size, baseLimit: size, baseSize: size, bitmap: new Uint8Array(bitmapBytes(size, clusterSize)) };
      }
      // The map is authoritative: a crash between a resize's ftruncate and its map write is repaired here.
      if (!opts.readOnly && st.size !== map.sizeBytes) ftruncateSync(overlay, map.sizeBytes);
      return new CowStore(opts, base, overlay, st.blksize, map, !mapBytes);
    } catch (err) {
      for (const fd of fds) closeSync(fd);
      throw err instanceof StorageError ? err : StorageError.fromSystemError('open', opts.overlay, err);
    }
  }

  /** Disk size in bytes (the overlay's size); the disk exposes `floor(sizeBytes / 512)` sectors. */
  get sizeBytes(): number {
    return this.#sizeBytes;
  }

  /** Number of clusters the overlay holds (written, copied up or discarded). */
  get allocatedClusters(): number {
    let n = 0;
    for (const byte of this.#bitmap) for (let b = byte; b !== 0; b &= b - 1) n++;
    return n;
  }

  /** True when the overlay holds the cluster containing byte `offset`. */
  isAllocated(offset: number): boolean {
    const c = Math.floor(offset / this.clusterSize);
    return ((this.#bitmap[Math.floor(c / 8)]! >> (c % 8)) & 1) === 1;
  }

  #setAllocated(c: number): void {
    const i = Math.floor(c / 8);
    const bit = 1 << (c % 8);
    if ((this.#bitmap[i]! & bit) === 0) {
      this.#bitmap[i]! |= bit;
      this.#dirty = true;
    }
  }

  /** Start and end (bytes, the end cut at the disk's size) of cluster `c`. */
  #cluster(c: number): [number, number] {
    const start = c * this.clusterSize;
    return [start, Math.min(start + this.clusterSize, this.#sizeBytes)];
  }

  /** Completion handler: never called (every request is answered synchronously). */
  setCompletionHandler(): void {}

  /**
   * Executes `req` and returns its status. Answers -1 for a request that fails
   * `checkStorageRequest`, a write or discard to a read-only store, an I/O error or
   * any submit after `close()`; -2 for an unknown op.
   */
  submit(req: StorageRequest): StorageStatus {
    const check = admitStorageRequest(req, this, this.#closed !== undefined);
    if (check !== STORAGE_OKAY) return this.#fail(check);
    try {
      if (req.op === 'read') {
        const len = iovBytes(req.iov);
        this.#read(req.offset, req.iov, len);
        this.counters.bytesRead += len;
      } else if (req.op === 'write') {
        const len = iovBytes(req.iov);
        this.#write(req.offset, req.iov, len);
        this.counters.bytesWritten += len;
      } else if (req.op === 'discard') {
        this.#discard(req.offset, req.length!);
        this.counters.bytesDiscarded += req.length!;
      } else if (!this.readOnly) {
        this.#flush();
      }
      return STORAGE_OKAY;
    } catch {
      return this.#fail(STORAGE_ERROR);
    }
  }

  /** Counts an error and returns its status. */
  #fail(status: StorageStatus): StorageStatus {
    this.counters.errors++;
    return status;
  }

  /** Reads `[offset, offset + len)` into `iov`, run by run of clusters with the same allocation. */
  #read(offset: number, iov: readonly Uint8Array[], len: number): void {
    const end = offset + len;
    let pos = offset;
    while (pos < end) {
      const fromOverlay = this.isAllocated(pos);
      let runEnd = Math.min(end, (Math.floor(pos / this.clusterSize) + 1) * this.clusterSize);
      while (runEnd < end && this.isAllocated(runEnd) === fromOverlay) runEnd = Math.min(end, runEnd + this.clusterSize);
      const part = pos === offset && runEnd === end ? iov : sliceIov(iov, pos - offset, runEnd - pos);
      if (fromOverlay) readFullySync(this.#overlay, part, pos, runEnd - pos);
      else this.#readBase(part, pos, runEnd - pos);
      pos = runEnd;
    }
  }

  /** Reads `len` bytes of the base at `pos` into `iov`: zeroes at and past `baseLimit`. */
  #readBase(iov: readonly Uint8Array[], pos: number, len: number): void {
    const n = Math.max(0, Math.min(len, this.#baseLimit - pos));
    if (n > 0) readFullySync(this.#base, n === len ? iov : sliceIov(iov, 0, n), pos, n);
    if (n < len) zeroIov(sliceIov(iov, n, len - n));
  }

  /** Copies cluster `c` from the base into the overlay, unless the overlay holds it already. */
  #copyUp(c: number): void {
    if (this.isAllocated(c * this.clusterSize)) return;
    const [start, end] = this.#cluster(c);
    const buf = this.#bounce.subarray(0, end - start);
    this.#readBase([buf], start, buf.byteLength);
    writeFullySync(this.#overlay, [buf], start, buf.byteLength);
    this.#setAllocated(c);
  }

  /**
   * Copies up the clusters at the ends of `[offset, end)` that the range covers
   * only in part; the range's other clusters are about to be wholly overwritten.
   */
  #copyUpEnds(offset: number, end: number): void {
    const first = Math.floor(offset / this.clusterSize);
    const last = Math.floor((end - 1) / this.clusterSize);
    const [firstStart, firstEnd] = this.#cluster(first);
    if (offset > firstStart || end < firstEnd) this.#copyUp(first);
    if (last !== first && end < this.#cluster(last)[1]) this.#copyUp(last);
  }

  /** Marks every cluster of `[offset, end)` as held by the overlay. */
  #allocate(offset: number, end: number): void {
    for (let c = Math.floor(offset / this.clusterSize); c * this.clusterSize < end; c++) this.#setAllocated(c);
  }

  /** Writes `iov` at `offset`, copying up partly covered clusters first. */
  #write(offset: number, iov: readonly Uint8Array[], len: number): void {
    if (len === 0) return;
    this.#copyUpEnds(offset, offset + len);
    writeFullySync(this.#overlay, iov, offset, len);
    this.#allocate(offset, offset + len);
  }

  /** Zeroes `[offset, offset + len)` in the overlay: partial clusters copied up, whole ones punched. */
  #discard(offset: number, len: number): void {
    if (len === 0) return;
    const end = offset + len;
    this.#copyUpEnds(offset, end);
    zeroFileRange(this.#overlay, offset, len, this.#blockSize);
    this.#allocate(offset, end);
  }

  /** `fdatasync` of the overlay, then the map if it changed. */
  #flush(): void {
    fdatasyncSync(this.#overlay);
    if (this.#dirty) this.#saveMap();
  }

  /** Writes the map to `<map>.tmp`, fsyncs it and renames it over `<overlay>.map`. */
  #saveMap(): void {
    const bytes = new Uint8Array(COW_MAP.bitmap + this.#bitmap.byteLength);
    const dv = new DataView(bytes.buffer);
    bytes.set(Buffer.from(MAGIC, 'latin1'), COW_MAP.magic);
    dv.setUint32(COW_MAP.clusterSize, this.clusterSize, true);
    setU64(dv, COW_MAP.sizeBytes, this.#sizeBytes);
    setU64(dv, COW_MAP.baseLimit, this.#baseLimit);
    setU64(dv, COW_MAP.baseSize, this.#baseSize);
    bytes.set(this.#bitmap, COW_MAP.bitmap);
    const tmp = `${this.mapPath}.tmp`;
    const fd = openSync(tmp, 'w');
    try {
      writeSync(fd, bytes);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.mapPath);
    this.#dirty = false;
  }

  /**
   * Sets the disk's size to `sizeBytes`: `ftruncate` of the overlay, a bitmap of the
   * new length (clusters past the end forgotten), the base cut at the smallest size
   * so far, and the map written at once.
   * @throws {StorageError} (as a rejection) `EINVAL` for a bad size, `EROFS` when
   *   read-only, `EBADF` after `close()`, or the system error of a failed operation.
   */
  async resize(sizeBytes: number): Promise<void> {
    checkResize(this.path, sizeBytes, this.readOnly, this.#closed !== undefined);
    try {
      ftruncateSync(this.#overlay, sizeBytes);
      const bitmap = new Uint8Array(bitmapBytes(sizeBytes, this.clusterSize));
      bitmap.set(this.#bitmap.subarray(0, bitmap.byteLength));
      const clusters = Math.ceil(sizeBytes / this.clusterSize);
      if (clusters % 8 !== 0) bitmap[bitmap.byteLength - 1]! &= (1 << (clusters % 8)) - 1;
      this.#bitmap = bitmap;
      this.#sizeBytes = sizeBytes;
      this.#baseLimit = Math.min(this.#baseLimit, sizeBytes);
      this.#saveMap();
    } catch (err) {
      throw err instanceof StorageError ? err : StorageError.fromSystemError('resize', this.path, err);
    }
  }

  /**
   * Refuses new requests (they answer -1), flushes a writable overlay (data, then
   * the map if it changed) and closes both files. Idempotent: every call returns
   * the same promise.
   * @throws {StorageError} (as a rejection) if the flush or a close fails.
   */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      const fds = [this.#overlay, this.#base];
      this.#overlay = this.#base = -1;
      try {
        if (!this.readOnly) {
          fdatasyncSync(fds[0]!);
          if (this.#dirty) this.#saveMap();
        }
      } catch (err) {
        throw StorageError.fromSystemError('close', this.path, err);
      } finally {
        for (const fd of fds) closeSync(fd);
      }
    })();
    return this.#closed;
  }
}
