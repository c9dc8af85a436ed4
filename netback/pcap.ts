/**
 * A capture file writer (and a reader, for tests) in libpcap's classic savefile
 * format — not pcapng — so that Wireshark/tshark/tcpdump open what crossed a pvio
 * bridge.
 *
 * File layout: one {@link PCAP_GLOBAL_HEADER} (24 bytes), then per frame one
 * {@link PCAP_RECORD_HEADER} (16 bytes) followed by `incl_len` frame bytes. Every
 * field is written little-endian, as an x86 or Arm host writes it natively; a
 * reader tells the byte order from how the magic reads back (0xa1b2c3d4 or its
 * byte swap), so {@link readPcap} accepts both, and the nanosecond magic too.
 *
 * Timestamps are microseconds since the Unix epoch (`ts_sec`, `ts_usec`).
 *
 * @see https://wiki.wireshark.org/Development/LibpcapFileFormat
 */
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { PvioError } from '../rings/errors.ts';
import { defineLayout, field } from '../rings/layout.ts';

/** A capture file that cannot be read, or a writer used after close. `code` is `PVIO_ERR_PCAP`. */
export class PcapError extends PvioError {
  constructor(message: string) {
    super('PVIO_ERR_PCAP', message);
  }
}

/**
 * The file header.
 * ```c
 * typedef struct pcap_hdr_s {
 *     guint32 magic_number;   // @0, 0xa1b2c3d4 (µs timestamps) or 0xa1b23c4d (ns)
 *     guint16 version_major;  // @4, 2
 *     guint16 version_minor;  // @6, 4
 *     gint32  thiszone;       // @8, GMT to local correction; 0
 *     guint32 sigfigs;        // @12, accuracy of timestamps; 0
 *     guint32 snaplen;        // @16, max bytes kept per frame
 *     guint32 network;        // @20, LINKTYPE_*
 * } pcap_hdr_t;               // sizeof 24
 * ```
 * @see https://wiki.wireshark.org/Development/LibpcapFileFormat
 */
export const PCAP_GLOBAL_HEADER = defineLayout('pcap_hdr_s', 'libpcap savefile', 24, {
  magic: field(0, 'u32', 'private'),
  versionMajor: field(4, 'u16', 'private'),
  versionMinor: field(6, 'u16', 'private'),
  thiszone: field(8, 'i32', 'private'),
  sigfigs: field(12, 'u32', 'private'),
  snaplen: field(16, 'u32', 'private'),
  network: field(20, 'u32', 'private'),
});

/**
 * The header before each frame's bytes.
 * ```c
 * typedef struct pcaprec_hdr_s {
 *     guint32 ts_sec;    // @0, seconds since the epoch
 *     guint32 ts_usec;   // @4, microseconds (nanoseconds with the ns magic)
 *     guint32 incl_len;  // @8, bytes saved in the file (<= snaplen)
 *     guint32 orig_len;  // @12, bytes the frame had
 * } pcaprec_hdr_t;       // sizeof 16
 * ```
 * @see https://wiki.wireshark.org/Development/LibpcapFileFormat
 */
export const PCAP_RECORD_HEADER = defineLayout('pcaprec_hdr_s', 'libpcap savefile', 16, {
  tsSec: field(0, 'u32', 'private'),
  tsUsec: field(4, 'u32', 'private'),
  inclLen: field(8, 'u32', 'private'),
  origLen: field(12, 'u32', 'private'),
});

const G = PCAP_GLOBAL_HEADER.fields;
const R = PCAP_RECORD_HEADER.fields;

/** Magic of a savefile with microsecond timestamps. */
export const PCAP_MAGIC = 0xa1b2c3d4;
/** Magic of a savefile with nanosecond timestamps (read, never written). */
export const PCAP_MAGIC_NSEC = 0xa1b23c4d;
/** Savefile format version written, major part (2.4). */
export const PCAP_VERSION_MAJOR = 2;
/** Savefile format version written, minor part (2.4). */
export const PCAP_VERSION_MINOR = 4;
/** Bytes kept of each frame; longer frames are truncated (`incl_len` < `orig_len`). */
export const PCAP_SNAPLEN = 65535;
/** Link type of Ethernet II frames. @see https://www.tcpdump.org/linktypes.html */
export const LINKTYPE_ETHERNET = 1;
/** Buffered bytes above which {@link PcapWriter.write} flushes to the file. */
export const PCAP_FLUSH_BYTES = 64 * 1024;

/**
 * Wall-clock time in whole microseconds since the Unix epoch, from
 * `performance.timeOrigin + performance.now()`: the wall clock when this thread
 * started plus a monotonic clock since, so timestamps never go backwards within a
 * thread and keep sub-millisecond resolution (`Date.now()` has only milliseconds).
 */
export function wallClockUs(): number {
  return Math.floor((performance.timeOrigin + performance.now()) * 1000);
}

/** What a {@link PcapWriter} has done. */
export interface PcapCounters {
  /** Records written. */
  frames: number;
  /** Frame bytes given to {@link PcapWriter.write} (`orig_len` summed). */
  bytes: number;
  /** Frames longer than the snaplen, cut to it. */
  truncated: number;
  /** `writeSync` calls (the global header's included). */
  flushes: number;
}

/**
 * Writes a pcap savefile of Ethernet frames, synchronously.
 *
 * Records are batched in memory and written with `fs.writeSync` when more than
 * {@link PCAP_FLUSH_BYTES} (64 KiB) are pending, on {@link flush}, and at
 * {@link close}: frames are small and a capture is a debugging aid, so one blocking
 * write per 64 KiB is cheap enough, and no frame is written half. Until then the
 * file may lag behind (a process that dies without `close` loses up to 64 KiB).
 */
export class PcapWriter {
  readonly counters: PcapCounters = { frames: 0, bytes: 0, truncated: 0, flushes: 0 };
  /** Room for the flush threshold plus one whole record, so a record is never split. */
  private readonly buf = new Uint8Array(PCAP_FLUSH_BYTES + PCAP_RECORD_HEADER.size + PCAP_SNAPLEN);
  private readonly dv = new DataView(this.buf.buffer);
  private used = 0;
  private fd: number | null;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /**
   * Creates (or truncates) `path` and writes the global header: magic 0xa1b2c3d4,
   * version 2.4, thiszone 0, sigfigs 0, snaplen 65535, network 1 (Ethernet).
   * @throws the `fs` error when the file cannot be opened or written.
   */
  static open(path: string): PcapWriter {
    const w = new PcapWriter(openSync(path, 'w'));
    const dv = w.dv;
    dv.setUint32(G.magic.offset, PCAP_MAGIC, true);
    dv.setUint16(G.versionMajor.offset, PCAP_VERSION_MAJOR, true);
    dv.setUint16(G.versionMinor.offset, PCAP_VERSION_MINOR, true);
    dv.setInt32(G.thiszone.offset, 0, true);
    dv.setUint32(G.sigfigs.offset, 0, true);
    dv.setUint32(G.snaplen.offset, PCAP_SNAPLEN, true);
    dv.setUint32(G.network.offset, LINKTYPE_ETHERNET, true);
    w.used = PCAP_GLOBAL_HEADER.size;
    w.flush();
    return w;
  }

  /**
   * Appends one frame, truncated to 65535 bytes (`orig_len` keeps its length).
   * @param timeUs capture time in whole microseconds since the epoch, default
   *   {@link wallClockUs}().
   * @throws RangeError for a time that is not an integer in 0..2^32 s; PcapError
   *   after {@link close}; the `fs` error if a flush fails.
   */
  write(frame: Uint8Array, timeUs: number = wallClockUs()): void {
    if (this.fd === null) throw new PcapError('write on a closed PcapWriter');
    const sec = Math.floor(timeUs / 1e6);
    if (!Number.isSafeInteger(timeUs) || timeUs < 0 || sec > 0xffffffff) throw new RangeError(`timeUs ${timeUs} is not an integer in 0..2^32 s`);
    const incl = Math.min(frame.length, PCAP_SNAPLEN);
    const at = this.used;
    this.dv.setUint32(at + R.tsSec.offset, sec, true);
    this.dv.setUint32(at + R.tsUsec.offset, timeUs - sec * 1e6, true);
    this.dv.setUint32(at + R.inclLen.offset, incl, true);
    this.dv.setUint32(at + R.origLen.offset, frame.length, true);
    this.buf.set(frame.subarray(0, incl), at + PCAP_RECORD_HEADER.size);
    this.used = at + PCAP_RECORD_HEADER.size + incl;
    this.counters.frames++;
    this.counters.bytes += frame.length;
    if (incl < frame.length) this.counters.truncated++;
    if (this.used > PCAP_FLUSH_BYTES) this.flush();
  }

  /**
   * Writes the buffered records to the file now.
   * @throws PcapError after {@link close}; the `fs` error if the write fails.
   */
  flush(): void {
    if (this.fd === null) throw new PcapError('flush on a closed PcapWriter');
    let done = 0;
    while (done < this.used) done += writeSync(this.fd, this.buf, done, this.used - done);
    if (this.used > 0) this.counters.flushes++;
    this.used = 0;
  }

  /** Flushes and closes the file. Idempotent. @throws the `fs` error if the last write fails. */
  close(): void {
    if (this.fd === null) return;
    try {
      this.flush();
    } finally {
      closeSync(this.fd);
      this.fd = null;
    }
  }
}

/** One record of a savefile. */
export interface PcapRecord {
  /** Capture time in microseconds since the epoch (nanosecond files: rounded down). */
  timeUs: number;
  /** The `orig_len` field: the frame's length before truncation. */
  origLen: number;
  /** A copy of the `incl_len` saved bytes. */
  data: Uint8Array;
}

/** A whole savefile, as {@link readPcap} returns it. */
export interface PcapFile {
  /** `network`: `LINKTYPE_*` (1 = Ethernet). */
  linkType: number;
  snaplen: number;
  records: PcapRecord[];
}

/** Reads the magic and says how to read the rest: byte order and timestamp unit. */
function fileFormat(dv: DataView): { le: boolean; nsec: boolean } {
  for (const le of [true, false]) {
    const magic = dv.getUint32(G.magic.offset, le);
    if (magic === PCAP_MAGIC || magic === PCAP_MAGIC_NSEC) return { le, nsec: magic === PCAP_MAGIC_NSEC };
  }
  throw new PcapError(`not a pcap savefile (magic 0x${dv.getUint32(G.magic.offset).toString(16)})`);
}

/**
 * Reads a whole pcap savefile (either byte order; µs or ns timestamps). For tests
 * and tools: it loads the file into memory.
 * @throws PcapError for a file shorter than its header, an unknown magic, or a
 *   record running past the end of the file; the `fs` error if it cannot be read.
 * @see https://wiki.wireshark.org/Development/LibpcapFileFormat
 */
export function readPcap(path: string): PcapFile {
  const file = readFileSync(path);
  const bytes = new Uint8Array(file.buffer, file.byteOffset, file.byteLength);
  if (bytes.length < PCAP_GLOBAL_HEADER.size) throw new PcapError(`${path}: ${bytes.length} bytes is shorter than a pcap header`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const { le, nsec } = fileFormat(dv);
  const records: PcapRecord[] = [];
  for (let at = PCAP_GLOBAL_HEADER.size; at < bytes.length;) {
    if (at + PCAP_RECORD_HEADER.size > bytes.length) throw new PcapError(`${path}: record header at ${at} is truncated`);
    const incl = dv.getUint32(at + R.inclLen.offset, le);
    const data = at + PCAP_RECORD_HEADER.size;
    if (data + incl > bytes.length) throw new PcapError(`${path}: record at ${at} (${incl} bytes) runs past the end of the file`);
    const frac = dv.getUint32(at + R.tsUsec.offset, le);
    records.push({
      timeUs: dv.getUint32(at + R.tsSec.offset, le) * 1e6 + (nsec ? Math.floor(frac / 1000) : frac),
      origLen: dv.getUint32(at + R.origLen.offset, le),
      data: bytes.slice(data, data + incl),
    });
    at = data + incl;
  }
  return { linkType: dv.getUint32(G.network.offset, le), snaplen: dv.getUint32(G.snaplen.offset, le), records };
}
