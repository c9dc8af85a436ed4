/**
 * An NBD server for one export, written against an abstract block device
 * ({@link NbdDevice}), on 127.0.0.1 or a Unix socket.
 *
 * What it speaks (the baseline of the spec and a little more):
 * - handshake: fixed newstyle only (`NBD_FLAG_FIXED_NEWSTYLE`, `NBD_FLAG_NO_ZEROES`);
 *   options `NBD_OPT_EXPORT_NAME`, `NBD_OPT_ABORT`, `NBD_OPT_LIST`, `NBD_OPT_INFO` and
 *   `NBD_OPT_GO` (with `NBD_INFO_EXPORT`, `NBD_INFO_BLOCK_SIZE`, and the name and
 *   description when asked); anything else, `NBD_OPT_STRUCTURED_REPLY` included, is
 *   answered `NBD_REP_ERR_UNSUP`;
 * - transmission: simple replies to READ, WRITE, FLUSH, TRIM (a discard rounded
 *   inward to the block size, as the spec allows; nothing when the device cannot
 *   discard), WRITE_ZEROES (a discard where the device reads discarded blocks back as
 *   zeroes and the client did not say `NBD_CMD_FLAG_NO_HOLE`, else written zeroes),
 *   `NBD_CMD_FLAG_FUA` as the operation then a flush, and DISC.
 *
 * Requests are pipelined: a connection reads on while earlier requests are served
 * (up to {@link NbdServerOptions.maxInFlight} requests and 64 MiB of payload at once)
 * and replies in completion order, which simple replies allow since each carries
 * the request's handle. Requests may arrive split over many socket reads or many in
 * one; the reader hands out exact frames. Unaligned I/O works: reads are widened to
 * whole blocks, writes read-modify-write their partial edge blocks (one at a time
 * across every connection, so two writes to different bytes of one block do not
 * lose each other's bytes). Several connections may be open at once; they share the
 * device, so `NBD_FLAG_CAN_MULTI_CONN` holds.
 *
 * Every request is bounds-checked (`NBD_EINVAL` for a READ or TRIM past the end,
 * `NBD_ENOSPC` for a WRITE or WRITE_ZEROES past the end, `NBD_EPERM` for writes on a
 * read-only export, `NBD_EINVAL` for an unknown command or flag); a bad request magic,
 * a bad option magic, unknown client flags or a WRITE payload over 32 MiB close the
 * connection (a hard disconnect). A device error is answered `NBD_EIO`.
 *
 * @see NBD protocol, doc/proto.md of NetworkBlockDevice/nbd
 */
import { createServer, type Server, type Socket } from 'node:net';
import {
  HANDLE_SIZE, IHAVEOPT, NBDMAGIC, NBD_CMD_DISC, NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_NO_HOLE, NBD_CMD_FLUSH, NBD_CMD_READ,
  NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES, NBD_EINVAL, NBD_EIO, NBD_ENOSPC, NBD_EPERM, NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_HAS_FLAGS, NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA, NBD_FLAG_SEND_TRIM, NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE, NBD_INFO_DESCRIPTION, NBD_INFO_EXPORT, NBD_INFO_NAME, NBD_MAX_PAYLOAD, NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST, NBD_REP_ACK, NBD_REP_ERR_INVALID, NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP, NBD_REP_INFO, NBD_REP_MAGIC, NBD_REP_SERVER, NBD_REQUEST_MAGIC, NBD_SIMPLE_REPLY_MAGIC,
  OPTION_REPLY, OPTION_REQUEST, REQUEST, SIMPLE_REPLY,
} from './protocol.ts';

/**
 * The block device an {@link NbdServer} exports. Offsets and lengths are in bytes;
 * the server calls `read`, `write` and `discard` only with offsets and lengths that
 * are multiples of `blockSize`, and within `sizeBytes`. Methods may be called
 * concurrently. A rejected promise becomes `NBD_EIO` for the client.
 */
export interface NbdDevice {
  /** Size in bytes; the export is `floor(sizeBytes / blockSize)` blocks. */
  readonly sizeBytes: number;
  /** Logical block size in bytes (512 or 4096): the device's I/O granularity. */
  readonly blockSize: number;
  readonly readOnly: boolean;
  /**
   * Whether `flush` does something (the device has a write cache); advertised as
   * `NBD_FLAG_SEND_FLUSH`/`SEND_FUA`. This and the two below are read at each
   * handshake and each request, so they may change while the device is served.
   */
  readonly canFlush: boolean;
  /** Whether `discard` is offered; advertised as `NBD_FLAG_SEND_TRIM`. */
  readonly canDiscard: boolean;
  /** Whether a discarded range reads back as zeroes (then WRITE_ZEROES may discard). */
  readonly discardZeroes: boolean;
  /** Reads `into.length` bytes at byte `offset` into `into`. */
  read(offset: number, into: Uint8Array): Promise<void>;
  /** Writes `data` at byte `offset`; must not modify `data` (the server shares one zero buffer). */
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Makes every completed write durable. */
  flush(): Promise<void>;
  /** Discards `length` bytes at byte `offset` (only called when `canDiscard`). */
  discard(offset: number, length: number): Promise<void>;
}

/** Options of {@link NbdServer}. */
export interface NbdServerOptions {
  /** The export's name, listed by `NBD_OPT_LIST`; clients may also ask for the default export `""`. */
  readonly name: string;
  /** Text for `NBD_INFO_DESCRIPTION` and `NBD_OPT_LIST`. */
  readonly description?: string;
  /** Most requests one connection has in flight at once (default 32). */
  readonly maxInFlight?: number;
}

/** Where to listen: TCP on `host` (default 127.0.0.1) and `port` (0 picks a free one), or a Unix socket `path`. */
export type NbdListen = { readonly port: number; readonly host?: string } | { readonly path: string };

/** What a server has done, for reports. Bytes are payload bytes. */
export interface NbdServerCounters {
  connections: number;
  requests: number;
  bytesRead: number;
  bytesWritten: number;
  /** Replies with a non-zero error. */
  errors: number;
}

/** A connection broke the protocol in a way that allows no reply: the server hangs up. */
class HardDisconnect extends Error {}

/** Payload bytes one connection may hold in flight (reads being served, writes read but not yet written). */
const MAX_INFLIGHT_BYTES = 64 * 1048576;
/** Bytes buffered from a socket before it is paused. */
const HIGH_WATER = 4 * 1048576;
/** Largest option data accepted during the handshake (strings are at most 4096 bytes). */
const MAX_OPTION_DATA = 65536;
/** WRITE_ZEROES that is not a discard is written in pieces of this size, from one shared buffer. */
const ZERO_CHUNK = 1048576;
const ZEROES = new Uint8Array(ZERO_CHUNK);
/** How long {@link NbdServer.close} waits for requests in flight before it drops the connections (ms). */
const CLOSE_TIMEOUT_MS = 10_000;

/**
 * Buffers what a socket delivers and hands it out in exact-size frames, whatever
 * the split of the socket's reads. Pauses the socket when more than HIGH_WATER
 * bytes wait, resumes it when a frame needs more. After the peer's end of stream,
 * what is buffered is still handed out (a WRITE then DISC, then EOF, is served).
 */
class FrameReader {
  private readonly chunks: Buffer[] = [];
  private head = 0;
  private buffered = 0;
  private eof = false;
  private stopped = false;
  private wake: (() => void) | null = null;

  constructor(private readonly sock: Socket) {
    sock.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.buffered += c.length;
      if (this.buffered >= HIGH_WATER) sock.pause();
      this.poke();
    });
    const eof = () => {
      this.eof = true;
      this.poke();
    };
    sock.on('end', eof);
    sock.on('close', eof);
  }

  /** Hands out no more frames: pending and later reads resolve null (the server is closing). */
  stop(): void {
    this.stopped = true;
    this.poke();
  }

  private poke(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** The next `n` bytes, or null when the stream ends before `n` bytes arrive, or after {@link stop}. */
  async read(n: number): Promise<Buffer | null> {
    while (this.buffered < n && !this.eof && !this.stopped) {
      this.sock.resume();
      await new Promise<void>((r) => (this.wake = r));
    }
    return this.stopped || this.buffered < n ? null : this.take(n);
  }

  private take(n: number): Buffer {
    this.buffered -= n;
    const first = this.chunks[0];
    if (first && first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.head += n;
      if (this.head === first.length) {
        this.chunks.shift();
        this.head = 0;
      }
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    for (let got = 0; got < n;) {
      const c = this.chunks[0]!;
      const k = Math.min(n - got, c.length - this.head);
      c.copy(out, got, this.head, this.head + k);
      got += k;
      this.head += k;
      if (this.head === c.length) {
        this.chunks.shift();
        this.head = 0;
      }
    }
    return out;
  }
}

/** One client connection's state in the transmission phase. */
interface Conn {
  readonly sock: Socket;
  readonly reader: FrameReader;
  inFlight: number;
  inFlightBytes: number;
  /** Resolves the read loop's wait for a free slot or for the last reply. */
  slotFreed: (() => void) | null;
}

/** An NBD server exporting one {@link NbdDevice}. @see NBD protocol, doc/proto.md */
export class NbdServer {
  readonly counters: NbdServerCounters = { connections: 0, requests: 0, bytesRead: 0, bytesWritten: 0, errors: 0 };
  /** The export size in bytes: whole blocks of the device. */
  readonly exportSize: number;
  private readonly maxInFlight: number;
  private readonly conns = new Set<{ sock: Socket; reader: FrameReader; done: Promise<void> }>();
  private net: Server | null = null;
  /** Tail of the chain that runs read-modify-writes one at a time. */
  private rmwTail: Promise<unknown> = Promise.resolve();

  constructor(private readonly dev: NbdDevice, private readonly opts: NbdServerOptions) {
    this.exportSize = Math.floor(dev.sizeBytes / dev.blockSize) * dev.blockSize;
    this.maxInFlight = opts.maxInFlight ?? 32;
  }

  /** The transmission flags a client is sent now (they follow the device's current features). */
  get transmissionFlags(): number {
    const d = this.dev;
    if (d.readOnly) return NBD_FLAG_HAS_FLAGS | NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_READ_ONLY;
    return NBD_FLAG_HAS_FLAGS | NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_WRITE_ZEROES |
      (d.canFlush ? NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA : 0) | (d.canDiscard ? NBD_FLAG_SEND_TRIM : 0);
  }

  /**
   * Starts listening.
   * @returns where it listens: `127.0.0.1:PORT` (the real port when 0 was asked) or `unix:PATH`.
   * @throws the listen error (EADDRINUSE, EACCES...).
   */
  async listen(at: NbdListen): Promise<string> {
    const net = createServer((sock) => this.accept(sock));
    await new Promise<void>((res, rej) => {
      net.once('error', rej);
      if ('path' in at) net.listen(at.path, res);
      else net.listen(at.port, at.host ?? '127.0.0.1', res);
    });
    this.net = net;
    const a = net.address();
    return typeof a === 'string' ? `unix:${a}` : `${a!.address}:${a!.port}`;
  }

  /**
   * Stops listening and ends every connection after its requests in flight are
   * answered (up to 10 s; then the sockets are dropped). Idempotent.
   */
  async close(): Promise<void> {
    const net = this.net;
    this.net = null;
    const closed = net ? new Promise<void>((r) => net.close(() => r())) : Promise.resolve();
    for (const c of this.conns) c.reader.stop();
    const all = Promise.all([...this.conns].map((c) => c.done));
    let timer: NodeJS.Timeout | undefined;
    const late = await Promise.race([all.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), CLOSE_TIMEOUT_MS)))]);
    clearTimeout(timer);
    if (late) for (const c of this.conns) c.sock.destroy();
    await closed;
  }

  /** Serves one client on a connected socket. */
  private accept(sock: Socket): void {
    this.counters.connections++;
    sock.setNoDelay(true); // small replies must not wait for Nagle (a no-op on a Unix socket)
    const reader = new FrameReader(sock);
    sock.on('error', () => undefined); // a reset peer: the reader sees 'close'
    const entry = { sock, reader, done: Promise.resolve() };
    entry.done = this.serve(sock, reader).finally(() => this.conns.delete(entry));
    this.conns.add(entry);
  }

  private async serve(sock: Socket, reader: FrameReader): Promise<void> {
    try {
      if (await this.handshake(sock, reader)) await this.transmission({ sock, reader, inFlight: 0, inFlightBytes: 0, slotFreed: null });
      sock.end(() => sock.destroy());
    } catch {
      sock.destroy(); // a hard disconnect
    }
  }

  // ---------------------------------------------------------------------------
  // Handshake: fixed newstyle negotiation and option haggling

  /** @returns true when the client chose the export and transmission begins. */
  private async handshake(sock: Socket, reader: FrameReader): Promise<boolean> {
    const hello = Buffer.alloc(18);
    hello.writeBigUInt64BE(NBDMAGIC, 0);
    hello.writeBigUInt64BE(IHAVEOPT, 8);
    hello.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
    sock.write(hello);
    const cf = await reader.read(4);
    if (!cf) return false;
    const clientFlags = cf.readUInt32BE(0);
    if (clientFlags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) throw new HardDisconnect('unknown client flags');
    const noZeroes = (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0;
    for (;;) {
      const h = await reader.read(OPTION_REQUEST.size);
      if (!h) return false;
      if (h.readBigUInt64BE(OPTION_REQUEST.magic) !== IHAVEOPT) throw new HardDisconnect('bad option magic');
      const option = h.readUInt32BE(OPTION_REQUEST.option);
      const len = h.readUInt32BE(OPTION_REQUEST.length);
      if (len > MAX_OPTION_DATA) throw new HardDisconnect('option data too long');
      const data = await reader.read(len);
      if (!data) return false;
      const reply = (type: number, payload: Buffer = Buffer.alloc(0)) => {
        const r = Buffer.allocUnsafe(OPTION_REPLY.size + payload.length);
        r.writeBigUInt64BE(NBD_REP_MAGIC, OPTION_REPLY.magic);
        r.writeUInt32BE(option, OPTION_REPLY.option);
        r.writeUInt32BE(type, OPTION_REPLY.type);
        r.writeUInt32BE(payload.length, OPTION_REPLY.length);
        payload.copy(r, OPTION_REPLY.size);
        sock.write(r);
      };
      switch (option) {
        case NBD_OPT_EXPORT_NAME: {
          // No way to refuse here but hanging up.
          if (!this.knows(data.toString('utf8'))) throw new HardDisconnect('unknown export');
          const r = Buffer.alloc(10 + (noZeroes ? 0 : 124));
          this.writeSizeAndFlags(r, 0);
          sock.write(r);
          return true;
        }
        case NBD_OPT_ABORT:
          reply(NBD_REP_ACK);
          return false;
        case NBD_OPT_LIST: {
          if (len !== 0) {
            reply(NBD_REP_ERR_INVALID);
            break;
          }
          const name = Buffer.from(this.opts.name, 'utf8');
          const desc = Buffer.from(this.opts.description ?? '', 'utf8');
          const p = Buffer.allocUnsafe(4 + name.length + desc.length);
          p.writeUInt32BE(name.length, 0);
          name.copy(p, 4);
          desc.copy(p, 4 + name.length);
          reply(NBD_REP_SERVER, p);
          reply(NBD_REP_ACK);
          break;
        }
        case NBD_OPT_INFO:
        case NBD_OPT_GO: {
          // u32 name length; name; u16 number of requests; u16 × n information requests.
          const nameLen = len >= 6 ? data.readUInt32BE(0) : -1;
          const nReq = nameLen >= 0 && nameLen <= len - 6 ? data.readUInt16BE(4 + nameLen) : -1;
          if (nReq < 0 || len !== 4 + nameLen + 2 + 2 * nReq) {
            reply(NBD_REP_ERR_INVALID);
            break;
          }
          if (!this.knows(data.toString('utf8', 4, 4 + nameLen))) {
            reply(NBD_REP_ERR_UNKNOWN);
            break;
          }
          const asked = new Set<number>();
          for (let i = 0; i < nReq; i++) asked.add(data.readUInt16BE(6 + nameLen + 2 * i));
          const exp = Buffer.allocUnsafe(12);
          exp.writeUInt16BE(NBD_INFO_EXPORT, 0);
          this.writeSizeAndFlags(exp, 2);
          reply(NBD_REP_INFO, exp);
          const bs = Buffer.allocUnsafe(14);
          bs.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
          bs.writeUInt32BE(this.dev.blockSize, 2); // minimum
          bs.writeUInt32BE(Math.max(4096, this.dev.blockSize), 6); // preferred
          bs.writeUInt32BE(NBD_MAX_PAYLOAD, 10); // maximum
          reply(NBD_REP_INFO, bs);
          for (const [type, text] of [[NBD_INFO_NAME, this.opts.name], [NBD_INFO_DESCRIPTION, this.opts.description]] as const) {
            if (!asked.has(type) || text === undefined) continue;
            const s = Buffer.from(text, 'utf8');
            const p = Buffer.allocUnsafe(2 + s.length);
            p.writeUInt16BE(type, 0);
            s.copy(p, 2);
            reply(NBD_REP_INFO, p);
          }
          reply(NBD_REP_ACK);
          if (option === NBD_OPT_GO) return true;
          break;
        }
        default:
          reply(NBD_REP_ERR_UNSUP); // NBD_OPT_STRUCTURED_REPLY, NBD_OPT_STARTTLS, metadata contexts...
      }
    }
  }

  /** Whether `name` selects this export: its own name or the default export `""`. */
  private knows(name: string): boolean {
    return name === '' || name === this.opts.name;
  }

  /** Writes `u64 export size; u16 transmission flags` at `at`. */
  private writeSizeAndFlags(b: Buffer, at: number): void {
    b.writeUInt32BE(Math.floor(this.exportSize / 2 ** 32), at);
    b.writeUInt32BE(this.exportSize >>> 0, at + 4);
    b.writeUInt16BE(this.transmissionFlags, at + 8);
  }

  // ---------------------------------------------------------------------------
  // Transmission

  private async transmission(c: Conn): Promise<void> {
    const wait = () => new Promise<void>((r) => (c.slotFreed = r));
    for (;;) {
      const h = await c.reader.read(REQUEST.size);
      if (!h) break;
      if (h.readUInt32BE(REQUEST.magic) !== NBD_REQUEST_MAGIC) throw new HardDisconnect('bad request magic');
      const flags = h.readUInt16BE(REQUEST.flags);
      const type = h.readUInt16BE(REQUEST.type);
      const handle = Buffer.from(h.subarray(REQUEST.handle, REQUEST.handle + HANDLE_SIZE));
      // u64 offset as two halves; one past 2^53 is past any export, so Infinity will do.
      const hi = h.readUInt32BE(REQUEST.offset);
      const offset = hi < 2 ** 21 ? hi * 2 ** 32 + h.readUInt32BE(REQUEST.offset + 4) : Infinity;
      const length = h.readUInt32BE(REQUEST.length);
      if (type === NBD_CMD_DISC) break;
      if (type === NBD_CMD_WRITE && length > NBD_MAX_PAYLOAD) throw new HardDisconnect('write payload over 32 MiB');
      const bytes = type === NBD_CMD_WRITE || (type === NBD_CMD_READ && length <= NBD_MAX_PAYLOAD) ? length : 0;
      while (c.inFlight >= this.maxInFlight || (c.inFlight > 0 && c.inFlightBytes + bytes > MAX_INFLIGHT_BYTES)) await wait();
      const payload = type === NBD_CMD_WRITE ? await c.reader.read(length) : null;
      if (type === NBD_CMD_WRITE && !payload) break;
      c.inFlight++;
      c.inFlightBytes += bytes;
      this.counters.requests++;
      void this.execute(type, flags, offset, length, payload).then((r) => {
        const reply = r.data ?? Buffer.allocUnsafe(SIMPLE_REPLY.size);
        reply.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, SIMPLE_REPLY.magic);
        reply.writeUInt32BE(r.error, SIMPLE_REPLY.error);
        handle.copy(reply, SIMPLE_REPLY.handle);
        if (r.error) this.counters.errors++;
        if (!c.sock.destroyed && c.sock.writable) c.sock.write(reply);
        c.inFlight--;
        c.inFlightBytes -= bytes;
        const w = c.slotFreed;
        c.slotFreed = null;
        w?.();
      });
    }
    // NBD_CMD_DISC, end of stream or server close: answer everything in flight first.
    while (c.inFlight > 0) await wait();
  }

  /**
   * Serves one request.
   * @returns the reply's error (0 for success) and, for a successful READ, the
   *   whole reply buffer (header space, then the data).
   */
  private async execute(type: number, flags: number, offset: number, length: number, payload: Buffer | null): Promise<{ error: number; data?: Buffer }> {
    const allowed = NBD_CMD_FLAG_FUA | (type === NBD_CMD_WRITE_ZEROES ? NBD_CMD_FLAG_NO_HOLE : 0);
    if (flags & ~allowed) return { error: NBD_EINVAL };
    const past = offset + length > this.exportSize;
    const writes = type === NBD_CMD_WRITE || type === NBD_CMD_TRIM || type === NBD_CMD_WRITE_ZEROES;
    if (writes && this.dev.readOnly) return { error: NBD_EPERM };
    try {
      switch (type) {
        case NBD_CMD_READ: {
          if (past || length > NBD_MAX_PAYLOAD) return { error: NBD_EINVAL };
          const reply = Buffer.allocUnsafe(SIMPLE_REPLY.size + length);
          if (length > 0) await this.readAt(offset, reply.subarray(SIMPLE_REPLY.size));
          this.counters.bytesRead += length;
          return { error: 0, data: reply };
        }
        case NBD_CMD_WRITE:
          if (past) return { error: NBD_ENOSPC };
          if (length > 0) await this.writeAt(offset, payload!);
          this.counters.bytesWritten += length;
          break;
        case NBD_CMD_FLUSH:
          if (offset !== 0 || length !== 0) return { error: NBD_EINVAL };
          await this.dev.flush();
          return { error: 0 };
        case NBD_CMD_TRIM: {
          // A hint: with no discard (any more), doing nothing is a valid answer.
          if (past) return { error: NBD_EINVAL };
          const bs = this.dev.blockSize;
          const start = Math.ceil(offset / bs) * bs;
          const end = Math.floor((offset + length) / bs) * bs;
          if (end > start && this.dev.canDiscard) await this.dev.discard(start, end - start);
          break;
        }
        case NBD_CMD_WRITE_ZEROES:
          if (past) return { error: NBD_ENOSPC };
          await this.zero(offset, offset + length, (flags & NBD_CMD_FLAG_NO_HOLE) !== 0);
          break;
        default:
          return { error: NBD_EINVAL };
      }
      if (flags & NBD_CMD_FLAG_FUA && length > 0) await this.dev.flush();
      return { error: 0 };
    } catch {
      return { error: NBD_EIO };
    }
  }

  /** Reads `into.length` bytes at `offset`, widening an unaligned range to whole blocks. */
  private async readAt(offset: number, into: Uint8Array): Promise<void> {
    const bs = this.dev.blockSize;
    const end = offset + into.length;
    if (offset % bs === 0 && end % bs === 0) return this.dev.read(offset, into);
    const start = offset - (offset % bs);
    const wide = new Uint8Array(Math.ceil(end / bs) * bs - start);
    await this.dev.read(start, wide);
    into.set(wide.subarray(offset - start, end - start));
  }

  /**
   * Writes `data` at `offset`. An unaligned range is widened to whole blocks: its
   * partial first and last blocks are read, patched and written back with the rest,
   * under the server-wide read-modify-write chain.
   */
  private writeAt(offset: number, data: Uint8Array): Promise<void> {
    const bs = this.dev.blockSize;
    const end = offset + data.length;
    if (offset % bs === 0 && end % bs === 0) return this.dev.write(offset, data);
    const run = this.rmwTail.then(async () => {
      const start = offset - (offset % bs);
      const stop = Math.ceil(end / bs) * bs;
      const wide = new Uint8Array(stop - start);
      const head = offset !== start;
      if (head) await this.dev.read(start, wide.subarray(0, bs));
      if (end !== stop && !(head && stop - start === bs)) await this.dev.read(stop - bs, wide.subarray(wide.length - bs));
      wide.set(data, offset - start);
      await this.dev.write(start, wide);
    });
    this.rmwTail = run.catch(() => undefined);
    return run;
  }

  /**
   * Zeroes [from, to): the whole blocks inside by a discard when the device reads
   * discarded blocks back as zeroes and `noHole` is false (by writing them if that
   * discard fails), everything else by writing zeroes in pieces aligned to ZERO_CHUNK.
   */
  private async zero(from: number, to: number, noHole: boolean): Promise<void> {
    const bs = this.dev.blockSize;
    if (this.dev.canDiscard && this.dev.discardZeroes && !noHole) {
      const start = Math.ceil(from / bs) * bs;
      const end = Math.floor(to / bs) * bs;
      if (end > start) {
        await this.zero(from, start, true);
        const discarded = await this.dev.discard(start, end - start).then(() => true, () => false);
        from = discarded ? end : start;
      }
    }
    for (let o = from; o < to;) {
      const next = Math.min(to, (Math.floor(o / ZERO_CHUNK) + 1) * ZERO_CHUNK);
      await this.writeAt(o, ZEROES.subarray(0, next - o));
      o = next;
    }
  }
}
