/**
 * The blkif features a backend offers for one disk, and their defaults.
 *
 * Every feature is on by default where both ends support it (as in Linux), and each
 * can be switched off per disk in the machine config (`toolstack/config.ts`, disk
 * spec keys) for experiments. blkback advertises them in XenStore; blkfront uses
 * what is advertised, so switching a feature off in the backend switches it off for
 * the pair.
 *
 * @see io/blkif.h (feature keys), Linux drivers/block/xen-blkback/xenbus.c
 */

/** What blkback advertises for one disk. */
export interface BlkbackFeatures {
  /**
   * `feature-max-indirect-segments`: most segments of one `BLKIF_OP_INDIRECT`
   * request (4 KiB pages; 256 = 1 MiB per request). 0 switches indirect requests
   * off (the key is not written). At most 8 indirect pages × 512 = 4096.
   */
  maxIndirectSegments: number;
  /** `feature-persistent`: grants stay mapped across requests (backend LRU cache). */
  persistent: boolean;
  /** `max-ring-page-order`: log2 of the most ring pages a frontend may use, 0..4. */
  maxRingPageOrder: number;
  /** `multi-queue-max-queues`: most rings (queues) per disk, 1..16. 1 = not written. */
  maxQueues: number;
  /** `feature-barrier`: `BLKIF_OP_WRITE_BARRIER`. */
  barrier: boolean;
  /** `feature-flush-cache`: `BLKIF_OP_FLUSH_DISKCACHE` (also needs a store that can flush). */
  flush: boolean;
  /** `feature-discard`: `BLKIF_OP_DISCARD` (also needs a store that can discard). */
  discard: boolean;
  /** `sector-size`: logical sector size in bytes, 512 or 4096. I/O must align to it. */
  sectorSize: 512 | 4096;
}

/** Linux blkback's numbers: 256 indirect segments, 16-page rings, 4 queues; everything on. */
export const DEFAULT_BLKBACK_FEATURES: Readonly<BlkbackFeatures> = Object.freeze({
  maxIndirectSegments: 256,
  persistent: true,
  maxRingPageOrder: 4,
  maxQueues: 4,
  barrier: true,
  flush: true,
  discard: true,
  sectorSize: 512,
});

/** Protocol ceiling of `feature-max-indirect-segments`: 8 indirect pages × 512 descriptors. */
export const MAX_INDIRECT_SEGMENTS_CEILING = 4096;
/** Linux's `XENBUS_MAX_RING_GRANT_ORDER`: 16-page rings. */
export const MAX_RING_PAGE_ORDER = 4;
/** Most queues pvio allows per disk. */
export const MAX_QUEUES = 16;

/** The defaults with `overrides` applied. */
export function blkbackFeatures(overrides: Partial<BlkbackFeatures> = {}): BlkbackFeatures {
  return { ...DEFAULT_BLKBACK_FEATURES, ...overrides };
}
