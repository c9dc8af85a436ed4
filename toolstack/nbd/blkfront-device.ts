/**
 * blkfront's virtual disk as an {@link NbdDevice}: byte offsets and lengths become
 * 512-byte sector numbers and counts (always 512-byte units, even when the disk's
 * `sector-size` is 4096; the NBD server then aligns I/O to 4096 bytes, since
 * `blockSize` is the disk's sector size).
 *
 * Flush and discard follow what was negotiated with the backend, read live from
 * blkfront's `features` (blkfront turns a feature off when the backend answers it
 * `BLKIF_RSP_EOPNOTSUPP`): `canFlush` when blkfront's `flush()` sends something
 * (`feature-flush-cache`, or `feature-barrier` as its fallback); `canDiscard` with
 * `feature-discard`; `discardZeroes` with pvio's `discard-zeroes` key. blkback needs
 * discards aligned to the sector size only (a store zeroes partial granules), which
 * the server's whole-block discards are.
 *
 * @see io/blkif.h (BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER, BLKIF_OP_DISCARD),
 *   NBD protocol doc/proto.md
 */
import type { Blkfront } from '../../blkfront/xenbus.ts';
import type { BlkfrontFeatures } from '../../blkfront/blkfront.ts';
import type { NbdDevice } from './server.ts';

/** 512-byte units of blkif sector numbers. */
const SECTOR = 512;

/** What the adapter uses of blkfront's {@link Blkfront}. */
export type BlkfrontDisk = Pick<Blkfront, 'sizeBytes' | 'sectorSize' | 'readOnly' | 'readInto' | 'write' | 'flush' | 'discard'> & {
  readonly features: Pick<BlkfrontFeatures, 'flush' | 'barrier' | 'discard' | 'discardZeroes'>;
};

/**
 * Wraps a connected blkfront disk.
 * @returns an NbdDevice whose operations reject with blkfront's BlkError when the
 *   backend answers an error or the device is gone.
 */
export function blkfrontNbdDevice(disk: BlkfrontDisk): NbdDevice {
  return {
    sizeBytes: disk.sizeBytes,
    blockSize: disk.sectorSize,
    readOnly: disk.readOnly,
    get canFlush() {
      return disk.features.flush || disk.features.barrier;
    },
    get canDiscard() {
      return disk.features.discard;
    },
    get discardZeroes() {
      return disk.features.discard && disk.features.discardZeroes;
    },
    read: (offset, into) => disk.readInto(offset / SECTOR, into),
    write: (offset, data) => disk.write(offset / SECTOR, data),
    flush: () => disk.flush(),
    discard: (offset, length) => disk.discard(offset / SECTOR, length / SECTOR),
  };
}
