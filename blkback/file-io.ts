/**
 * File I/O shared by the file-backed stores (raw-file-store.ts, cow-store.ts):
 * I/O vectors, positional `readv`/`writev` carried through short transfers, and
 * zeroing a byte range by punching a hole.
 *
 * Every offset and length here is in **bytes**.
 *
 * Hole punching: Node's `fs` has no `fallocate` (node-facts.md, "Files"), so it
 * comes from pvio's own Node-API addon, `native/punch-hole` (`pvio-punch-hole`, an
 * optional dependency that `npm install` / `npm ci` builds with node-gyp). It is
 * loaded once, with `createRequire`, when this module loads; if it is missing (the
 * build failed, or not Linux) {@link punchHoleAvailable} is false and the stores
 * fall back: RawFileStore does not advertise discard, CowStore writes zeroes.
 *
 * @see fallocate(2) `FALLOC_FL_PUNCH_HOLE`, preadv(2)/pwritev(2)
 */

import { createRequire } from 'node:module';
import { readvSync, writeSync, writevSync } from 'node:fs';

/** The addon's one function: 0, or a negated errno (`-EOPNOTSUPP`...). */
type PunchHole = (fd: number, offset: number, length: number) => number;

const punchHole: PunchHole | undefined = (() => {
  try {
    return (createRequire(import.meta.url)('pvio-punch-hole') as { punchHole: PunchHole }).punchHole;
  } catch {
    return undefined;
  }
})();

/** True when the `pvio-punch-hole` addon loaded, so files can really be discarded. */
export const punchHoleAvailable: boolean = punchHole !== undefined;

/** Zeroes that writes copy from; never written. */
const ZEROES = new Uint8Array(64 * 1024);

/**
 * Returns the vector that is left after the first `n` bytes of `iov` have been
 * transferred (for continuing a short `readv`/`writev`). Views are trimmed with
 * `subarray`, never copied.
 */
export function advanceIov(iov: readonly Uint8Array[], n: number): Uint8Array[] {
  const rest: Uint8Array[] = [];
  for (const v of iov) {
    if (n >= v.byteLength) {
      n -= v.byteLength;
      continue;
    }
    rest.push(n > 0 ? v.subarray(n) : v);
    n = 0;
  }
  return rest;
}

/** The views covering bytes `[start, start + len)` of the vector `iov` (trimmed with `subarray`, never copied). */
export function sliceIov(iov: readonly Uint8Array[], start: number, len: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const v of iov) {
    if (len === 0) break;
    if (start >= v.byteLength) {
      start -= v.byteLength;
      continue;
    }
    const n = Math.min(len, v.byteLength - start);
    out.push(v.subarray(start, start + n));
    start = 0;
    len -= n;
  }
  return out;
}

/** Fills every view of `iov` with zeroes. */
export function zeroIov(iov: readonly Uint8Array[]): void {
  for (const v of iov) v.fill(0);
}

/**
 * Reads `len` bytes (the total of `iov`) at byte `pos` of `fd` into `iov`,
 * continuing short reads; the part past end of file is filled with zeroes.
 * @throws the `fs` error of a failed `readv`.
 */
export function readFullySync(fd: number, iov: readonly Uint8Array[], pos: number, len: number): void {
  let rest = iov;
  for (;;) {
    const n = readvSync(fd, rest, pos);
    if (n === 0) return zeroIov(rest);
    len -= n;
    if (len <= 0) return;
    pos += n;
    rest = advanceIov(rest, n);
  }
}

/**
 * Writes the `len` bytes of `iov` at byte `pos` of `fd`, continuing short writes.
 * @throws the `fs` error of a failed `writev`, or an Error when one makes no progress.
 */
export function writeFullySync(fd: number, iov: readonly Uint8Array[], pos: number, len: number): void {
  let rest = iov;
  for (;;) {
    const n = writevSync(fd, rest, pos);
    if (n === 0) throw new Error('writev wrote 0 bytes');
    len -= n;
    if (len <= 0) return;
    pos += n;
    rest = advanceIov(rest, n);
  }
}

/**
 * Writes `len` zero bytes at byte `pos` of `fd` (allocating them).
 * @throws the `fs` error of a failed write, or an Error when one makes no progress.
 */
function writeZeroesSync(fd: number, pos: number, len: number): void {
  while (len > 0) {
    const n = writeSync(fd, ZEROES, 0, Math.min(len, ZEROES.byteLength), pos);
    if (n === 0) throw new Error('write wrote 0 bytes');
    pos += n;
    len -= n;
  }
}

/**
 * True when holes can be punched in `fd`: the addon loaded and a punch of one block
 * just past end of file (`fileSize` rounded up to `blockSize`, with
 * `FALLOC_FL_KEEP_SIZE`, so no byte or size changes) succeeds. False for a
 * read-only descriptor or a file system without `FALLOC_FL_PUNCH_HOLE`.
 */
export function probePunchHole(fd: number, fileSize: number, blockSize: number): boolean {
  return punchHole !== undefined && punchHole(fd, Math.ceil(fileSize / blockSize) * blockSize, blockSize) === 0;
}

/**
 * Makes bytes `[offset, offset + length)` of `fd` read as zeroes, freeing what it
 * can: the whole `blockSize` blocks inside the range are punched out
 * (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`), and the partial blocks at its ends
 * are overwritten with zeroes. Without the addon, or when the punch fails, the whole
 * range is overwritten with zeroes instead. The file's size never changes.
 * @param blockSize the file system's block size in bytes (`fstat`'s `blksize`).
 * @throws the `fs` error of a failed zero write.
 */
export function zeroFileRange(fd: number, offset: number, length: number, blockSize: number): void {
  const end = offset + length;
  const a = Math.min(end, Math.ceil(offset / blockSize) * blockSize);
  const b = Math.max(a, Math.floor(end / blockSize) * blockSize);
  if (b > a && punchHole !== undefined && punchHole(fd, a, b - a) === 0) {
    writeZeroesSync(fd, offset, a - offset);
    writeZeroesSync(fd, b, end - b);
  } else {
    writeZeroesSync(fd, offset, length);
  }
}
