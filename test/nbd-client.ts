// A small NBD client for tests (fixed newstyle, simple replies), written from the
// NBD protocol document (doc/proto.md of NetworkBlockDevice/nbd). It can also send
// raw bytes, so a test can split or coalesce frames as it likes.
import { connect, type Socket } from 'node:net';
import {
  IHAVEOPT, NBDMAGIC, NBD_CMD_READ, NBD_CMD_WRITE, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT, NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_REP_ACK, NBD_REP_INFO, NBD_REP_MAGIC, NBD_REP_SERVER, NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC, OPTION_REPLY, REQUEST, SIMPLE_REPLY,
} from '../toolstack/nbd/protocol.ts';
import type { NbdListen } from '../toolstack/nbd/server.ts';

/** One option reply. */
export interface OptReply {
  type: number;
  data: Buffer;
}

/** A transmission reply: the error and, for a successful READ, the data. */
export interface Reply {
  error: number;
  data?: Buffer;
}

/** One request, encoded by {@link NbdClient.encode}. */
export interface Req {
  type: number;
  flags?: number;
  offset: number;
  length?: number;
  data?: Uint8Array;
}

export class NbdClient {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiting: (() => void) | null = null;
  private ended = false;
  private nextHandle = 1;
  private readonly pending = new Map<number, { length: number; resolve(r: Reply): void; reject(e: Error): void }>();
  /** Handles in the order their replies arrived. */
  readonly replyOrder: number[] = [];
  /** Resolves when the server closes the connection. */
  readonly closed: Promise<void>;
  handshakeFlags = 0;

  private constructor(readonly sock: Socket) {
    sock.setNoDelay?.(true);
    sock.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.buffered += c.length;
      const w = this.waiting;
      this.waiting = null;
      w?.();
    });
    this.closed = new Promise((r) => sock.on('close', () => {
      this.ended = true;
      this.waiting?.();
      for (const p of this.pending.values()) p.reject(new Error('connection closed'));
      r();
    }));
    sock.on('error', () => undefined);
  }

  /** Connects and does the initial newstyle exchange (NBDMAGIC, IHAVEOPT, flags). */
  static async connect(at: NbdListen, clientFlags = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES): Promise<NbdClient> {
    const sock = 'path' in at ? connect(at.path) : connect(at.port, at.host ?? '127.0.0.1');
    await new Promise<void>((res, rej) => sock.once('connect', res).once('error', rej));
    const c = new NbdClient(sock);
    const hello = await c.read(18);
    if (hello.readBigUInt64BE(0) !== NBDMAGIC || hello.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('bad greeting');
    c.handshakeFlags = hello.readUInt16BE(16);
    const f = Buffer.alloc(4);
    f.writeUInt32BE(clientFlags >>> 0);
    sock.write(f);
    return c;
  }

  /** The next `n` bytes from the server. @throws when it closes first. */
  async read(n: number): Promise<Buffer> {
    while (this.buffered < n) {
      if (this.ended) throw new Error('connection closed');
      await new Promise<void>((r) => (this.waiting = r));
    }
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks = all.length > n ? [all.subarray(n)] : [];
    this.buffered -= n;
    return all.subarray(0, n);
  }

  /** Sends an option: IHAVEOPT, option, length, data. */
  sendOpt(option: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(IHAVEOPT, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(data.length, 12);
    this.sock.write(Buffer.concat([h, data]));
  }

  /** Reads option replies up to and including the final one (ACK or an error). */
  async optReplies(option: number): Promise<OptReply[]> {
    const out: OptReply[] = [];
    for (;;) {
      const h = await this.read(OPTION_REPLY.size);
      if (h.readBigUInt64BE(OPTION_REPLY.magic) !== NBD_REP_MAGIC) throw new Error('bad option reply magic');
      if (h.readUInt32BE(OPTION_REPLY.option) !== option) throw new Error('reply to another option');
      const type = h.readUInt32BE(OPTION_REPLY.type);
      const data = Buffer.from(await this.read(h.readUInt32BE(OPTION_REPLY.length)));
      out.push({ type, data });
      if (type !== NBD_REP_INFO && type !== NBD_REP_SERVER) return out;
    }
  }

  /** `NBD_OPT_INFO`/`NBD_OPT_GO` data: name and information requests. */
  static infoData(name: string, infos: number[] = [NBD_INFO_BLOCK_SIZE]): Buffer {
    const n = Buffer.from(name);
    const d = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
    d.writeUInt32BE(n.length, 0);
    n.copy(d, 4);
    d.writeUInt16BE(infos.length, 4 + n.length);
    infos.forEach((t, i) => d.writeUInt16BE(t, 6 + n.length + 2 * i));
    return d;
  }

  /**
   * `NBD_OPT_GO` for `name`. @returns the export's size, transmission flags and
   * block sizes, and every reply. @throws when the final reply is not ACK.
   */
  async go(name = '', infos?: number[]): Promise<{ size: number; flags: number; minBlock?: number; prefBlock?: number; maxBlock?: number; replies: OptReply[] }> {
    this.sendOpt(NBD_OPT_GO, NbdClient.infoData(name, infos));
    const replies = await this.optReplies(NBD_OPT_GO);
    const last = replies[replies.length - 1]!;
    if (last.type !== NBD_REP_ACK) throw new Error(`NBD_OPT_GO failed: reply type ${last.type}`);
    const out: { size: number; flags: number; minBlock?: number; prefBlock?: number; maxBlock?: number; replies: OptReply[] } = { size: -1, flags: 0, replies };
    for (const r of replies) {
      if (r.type !== NBD_REP_INFO) continue;
      const t = r.data.readUInt16BE(0);
      if (t === NBD_INFO_EXPORT) {
        out.size = Number(r.data.readBigUInt64BE(2));
        out.flags = r.data.readUInt16BE(10);
      } else if (t === NBD_INFO_BLOCK_SIZE) {
        out.minBlock = r.data.readUInt32BE(2);
        out.prefBlock = r.data.readUInt32BE(6);
        out.maxBlock = r.data.readUInt32BE(10);
      }
    }
    return out;
  }

  /** `NBD_OPT_EXPORT_NAME`. @returns size and flags (and skips 124 zeroes unless NO_ZEROES was negotiated). */
  async exportName(name: string, noZeroes: boolean): Promise<{ size: number; flags: number; zeroes: Buffer }> {
    this.sendOpt(NBD_OPT_EXPORT_NAME, Buffer.from(name));
    const r = await this.read(10);
    const zeroes = noZeroes ? Buffer.alloc(0) : Buffer.from(await this.read(124));
    return { size: Number(r.readBigUInt64BE(0)), flags: r.readUInt16BE(8), zeroes };
  }

  /**
   * Encodes a request (and registers its handle for the reply).
   * @returns the request's bytes and the promise of its reply.
   */
  encode(r: Req): { bytes: Buffer; reply: Promise<Reply>; handle: number } {
    const handle = this.nextHandle++;
    const length = r.length ?? r.data?.length ?? 0;
    const payload = r.type === NBD_CMD_WRITE ? r.data ?? Buffer.alloc(0) : Buffer.alloc(0);
    const b = Buffer.alloc(REQUEST.size + payload.length);
    b.writeUInt32BE(NBD_REQUEST_MAGIC, REQUEST.magic);
    b.writeUInt16BE(r.flags ?? 0, REQUEST.flags);
    b.writeUInt16BE(r.type, REQUEST.type);
    b.writeUInt32BE(0, REQUEST.handle);
    b.writeUInt32BE(handle, REQUEST.handle + 4);
    b.writeUInt32BE(Math.floor(r.offset / 2 ** 32), REQUEST.offset);
    b.writeUInt32BE(r.offset >>> 0, REQUEST.offset + 4);
    b.writeUInt32BE(length, REQUEST.length);
    Buffer.from(payload.buffer, payload.byteOffset, payload.length).copy(b, REQUEST.size);
    const reply = new Promise<Reply>((resolve, reject) => this.pending.set(handle, { length: r.type === NBD_CMD_READ ? length : 0, resolve, reject }));
    reply.catch(() => undefined);
    return { bytes: b, reply, handle };
  }

  /** Sends one request. @returns its reply. */
  request(r: Req): Promise<Reply> {
    const e = this.encode(r);
    this.sock.write(e.bytes);
    return e.reply;
  }

  /** Reads replies for as long as requests are pending (call once, after the handshake). */
  async readReplies(): Promise<void> {
    while (!this.ended) {
      let h: Buffer;
      try {
        h = await this.read(SIMPLE_REPLY.size);
      } catch {
        return;
      }
      if (h.readUInt32BE(SIMPLE_REPLY.magic) !== NBD_SIMPLE_REPLY_MAGIC) throw new Error('bad reply magic');
      const error = h.readUInt32BE(SIMPLE_REPLY.error);
      const handle = h.readUInt32BE(SIMPLE_REPLY.handle + 4);
      const p = this.pending.get(handle);
      if (!p) throw new Error(`reply for unknown handle ${handle}`);
      this.pending.delete(handle);
      this.replyOrder.push(handle);
      p.resolve(error || p.length === 0 ? { error } : { error, data: Buffer.from(await this.read(p.length)) });
    }
  }

  /** Starts the reply reader after a successful GO/EXPORT_NAME. */
  startTransmission(): void {
    void this.readReplies();
  }

  close(): void {
    this.sock.destroy();
  }
}
