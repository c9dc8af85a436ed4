// The NBD server (toolstack/nbd/server.ts) against an in-memory device, through a
// client of our own that talks the protocol byte for byte: handshake and options,
// pipelined requests answered in completion order, frames split and coalesced,
// unaligned I/O (the device only ever sees whole blocks), TRIM / WRITE_ZEROES / FUA,
// bounds and flag checks with the spec's error values, hard disconnects.
import { afterEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NbdServer, type NbdDevice, type NbdListen, type NbdServerOptions } from '../toolstack/nbd/server.ts';
import { blkfrontNbdDevice } from '../toolstack/nbd/blkfront-device.ts';
import {
  NBD_CMD_DISC, NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_NO_HOLE, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES, NBD_EINVAL, NBD_EIO, NBD_ENOSPC, NBD_EPERM, NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_HAS_FLAGS, NBD_FLAG_NO_ZEROES, NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA, NBD_FLAG_SEND_TRIM, NBD_FLAG_SEND_WRITE_ZEROES, NBD_INFO_BLOCK_SIZE, NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME, NBD_OPT_ABORT, NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK,
  NBD_REP_ERR_INVALID, NBD_REP_ERR_UNKNOWN, NBD_REP_ERR_UNSUP, NBD_REP_INFO, NBD_REP_SERVER, NBD_REQUEST_MAGIC,
} from '../toolstack/nbd/protocol.ts';
import { NbdClient, type Reply } from './nbd-client.ts';
import { xorshift32 } from '../toolstack/xorshift.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Deterministic pseudo-random numbers in [0, 1). */
function rng(seed: number): () => number {
  const next = xorshift32(seed);
  return () => next() / 2 ** 32;
}

function pattern(n: number, seed: number): Buffer {
  const r = rng(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (r() * 256) | 0;
  return b;
}

/** Expects `actual` to hold exactly the bytes of `want` (vitest's deep equality is far too slow on big buffers). */
function expectBytes(actual: Uint8Array | undefined, want: Uint8Array): void {
  expect(actual, 'no data').toBeDefined();
  const a = Buffer.from(actual!.buffer, actual!.byteOffset, actual!.length);
  const i = a.equals(want) ? -1 : a.findIndex((b, k) => b !== want[k]);
  expect({ length: a.length, firstDifference: a.length === want.length ? i : 'n/a' }).toEqual({ length: want.length, firstDifference: -1 });
}

/**
 * An in-memory NbdDevice that refuses (rejects) any I/O not aligned to its block
 * size, logs every call, and can delay its operations to force concurrency.
 */
class MemDevice implements NbdDevice {
  readonly bytes: Uint8Array;
  readonly log: string[] = [];
  readonly unaligned: string[] = [];
  readOnly = false;
  canFlush = true;
  canDiscard = true;
  discardZeroes = true;
  /** Random delay of up to this many ms before each operation completes. */
  jitterMs = 0;
  /** Extra delay (ms) for a read at a given offset. */
  readonly readDelays = new Map<number, number>();
  private readonly rand = rng(7);

  constructor(readonly sizeBytes: number, readonly blockSize = 512) {
    this.bytes = pattern(sizeBytes, 1);
  }

  private async settle(what: string, offset: number, length: number): Promise<void> {
    if (offset % this.blockSize || length % this.blockSize || offset + length > this.sizeBytes) {
      this.unaligned.push(`${what} ${offset}+${length}`);
      throw new Error('unaligned device I/O');
    }
    if (this.jitterMs) await sleep(this.rand() * this.jitterMs);
    else await new Promise((r) => setImmediate(r));
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    await this.settle('read', offset, into.length);
    const extra = this.readDelays.get(offset);
    if (extra) await sleep(extra);
    into.set(this.bytes.subarray(offset, offset + into.length));
    this.log.push(`read ${offset} ${into.length}`);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    await this.settle('write', offset, data.length);
    this.bytes.set(data, offset);
    this.log.push(`write ${offset} ${data.length}`);
  }

  async flush(): Promise<void> {
    this.log.push('flush');
  }

  async discard(offset: number, length: number): Promise<void> {
    await this.settle('discard', offset, length);
    this.bytes.fill(0, offset, offset + length);
    this.log.push(`discard ${offset} ${length}`);
  }
}

const servers: NbdServer[] = [];
const clients: NbdClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function serve(dev: NbdDevice, opts: Partial<NbdServerOptions> = {}, at: NbdListen = { port: 0 }): Promise<{ server: NbdServer; at: NbdListen }> {
  const server = new NbdServer(dev, { name: 'mem', description: 'in-memory test disk', ...opts });
  servers.push(server);
  const where = await server.listen(at);
  return { server, at: where.startsWith('unix:') ? { path: where.slice(5) } : { port: Number(where.split(':')[1]) } };
}

async function client(at: NbdListen, flags?: number): Promise<NbdClient> {
  const c = await NbdClient.connect(at, flags);
  clients.push(c);
  return c;
}

/** A client in the transmission phase (after NBD_OPT_GO). */
async function transmitting(at: NbdListen): Promise<{ c: NbdClient; size: number; flags: number }> {
  const c = await client(at);
  const info = await c.go('');
  c.startTransmission();
  return { c, size: info.size, flags: info.flags };
}

describe('NBD server: handshake and options', () => {
  it('greets in fixed newstyle; NBD_OPT_GO gives size, flags and block sizes', async () => {
    const dev = new MemDevice(1 << 20);
    const { at } = await serve(dev);
    const c = await client(at);
    expect(c.handshakeFlags).toBe(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    const info = await c.go('', [NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME, NBD_INFO_DESCRIPTION]);
    expect(info.size).toBe(1 << 20);
    expect(info.flags).toBe(NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM |
      NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_CAN_MULTI_CONN);
    expect([info.minBlock, info.prefBlock, info.maxBlock]).toEqual([512, 4096, 32 * 1048576]);
    const texts = info.replies.filter((r) => r.type === NBD_REP_INFO && r.data.readUInt16BE(0) >= NBD_INFO_NAME && r.data.readUInt16BE(0) <= NBD_INFO_DESCRIPTION)
      .map((r) => r.data.subarray(2).toString());
    expect(texts).toEqual(['mem', 'in-memory test disk']);
  });

  it('answers LIST, INFO, unknown and unsupported options, unknown exports and bad GO data, and stays in negotiation', async () => {
    const { at } = await serve(new MemDevice(65536));
    const c = await client(at);
    c.sendOpt(NBD_OPT_LIST);
    const list = await c.optReplies(NBD_OPT_LIST);
    expect(list.map((r) => r.type)).toEqual([NBD_REP_SERVER, NBD_REP_ACK]);
    expect(list[0]!.data.readUInt32BE(0)).toBe(3);
    expect(list[0]!.data.subarray(4).toString()).toBe('memin-memory test disk');
    c.sendOpt(NBD_OPT_LIST, Buffer.from('x'));
    expect((await c.optReplies(NBD_OPT_LIST)).map((r) => r.type)).toEqual([NBD_REP_ERR_INVALID]);
    c.sendOpt(NBD_OPT_STRUCTURED_REPLY);
    expect((await c.optReplies(NBD_OPT_STRUCTURED_REPLY)).map((r) => r.type)).toEqual([NBD_REP_ERR_UNSUP]);
    c.sendOpt(4242, Buffer.alloc(100, 7));
    expect((await c.optReplies(4242)).map((r) => r.type)).toEqual([NBD_REP_ERR_UNSUP]);
    c.sendOpt(NBD_OPT_GO, NbdClient.infoData('nosuch'));
    expect((await c.optReplies(NBD_OPT_GO)).map((r) => r.type)).toEqual([NBD_REP_ERR_UNKNOWN]);
    const bad = NbdClient.infoData('mem');
    bad.writeUInt32BE(1000, 0); // name length past the data
    c.sendOpt(NBD_OPT_GO, bad);
    expect((await c.optReplies(NBD_OPT_GO)).map((r) => r.type)).toEqual([NBD_REP_ERR_INVALID]);
    c.sendOpt(NBD_OPT_INFO, NbdClient.infoData('mem'));
    expect((await c.optReplies(NBD_OPT_INFO)).map((r) => r.type)).toEqual([NBD_REP_INFO, NBD_REP_INFO, NBD_REP_ACK]);
    const info = await c.go('mem');
    expect(info.size).toBe(65536);
    c.startTransmission();
    expect((await c.request({ type: NBD_CMD_READ, offset: 0, length: 512 })).error).toBe(0);
  });

  it('NBD_OPT_EXPORT_NAME sends size and flags, then 124 zeroes unless NO_ZEROES was negotiated', async () => {
    const dev = new MemDevice(8192);
    const { at } = await serve(dev);
    const old = await client(at, NBD_FLAG_C_FIXED_NEWSTYLE);
    const r = await old.exportName('', false);
    expect(r.size).toBe(8192);
    expect(r.flags & NBD_FLAG_HAS_FLAGS).toBeTruthy();
    expect(r.zeroes.equals(Buffer.alloc(124))).toBe(true);
    old.startTransmission();
    expectBytes((await old.request({ type: NBD_CMD_READ, offset: 512, length: 512 })).data, Buffer.from(dev.bytes.subarray(512, 1024)));
    const modern = await client(at);
    expect((await modern.exportName('mem', true)).size).toBe(8192);
    modern.startTransmission();
    expectBytes((await modern.request({ type: NBD_CMD_READ, offset: 0, length: 512 })).data, Buffer.from(dev.bytes.subarray(0, 512)));
  });

  it('hangs up on unknown client flags, a bad option magic, EXPORT_NAME of an unknown export; ABORT gets an ACK', async () => {
    const { at } = await serve(new MemDevice(8192));
    await (await client(at, 0x80)).closed;
    const c = await client(at);
    c.sock.write(Buffer.alloc(16, 0x41));
    await c.closed;
    const e = await client(at);
    e.sendOpt(NBD_OPT_EXPORT_NAME, Buffer.from('nosuch'));
    await e.closed;
    const a = await client(at);
    a.sendOpt(NBD_OPT_ABORT);
    expect((await a.optReplies(NBD_OPT_ABORT)).map((r) => r.type)).toEqual([NBD_REP_ACK]);
    await a.closed;
  });

  it('listens on a Unix socket and removes it on close', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'pvio-nbd-'));
    try {
      const path = join(dir, 'nbd.sock');
      const { server, at } = await serve(new MemDevice(4096), {}, { path });
      expect(at).toEqual({ path });
      const { c, size } = await transmitting(at);
      expect(size).toBe(4096);
      expect((await c.request({ type: NBD_CMD_READ, offset: 0, length: 4096 })).error).toBe(0);
      await server.close();
      await c.closed;
      expect(existsSync(path)).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('NBD server: transmission', () => {
  it('reads and writes aligned data; FLUSH and FUA reach the device in order', async () => {
    const dev = new MemDevice(1 << 20);
    const { at } = await serve(dev);
    const { c } = await transmitting(at);
    const data = pattern(65536, 2);
    expect(await c.request({ type: NBD_CMD_WRITE, offset: 4096, data })).toEqual({ error: 0 });
    expectBytes((await c.request({ type: NBD_CMD_READ, offset: 4096, length: 65536 })).data, data);
    dev.log.length = 0;
    expect(await c.request({ type: NBD_CMD_WRITE, flags: NBD_CMD_FLAG_FUA, offset: 0, data: pattern(512, 3) })).toEqual({ error: 0 });
    expect(dev.log).toEqual(['write 0 512', 'flush']);
    expect(await c.request({ type: NBD_CMD_FLUSH, offset: 0, length: 0 })).toEqual({ error: 0 });
    expect(dev.log).toEqual(['write 0 512', 'flush', 'flush']);
    expect(dev.unaligned).toEqual([]);
  });

  it('serves unaligned I/O with whole-block device calls, pipelined, without losing bytes that share a block', async () => {
    const size = 65536;
    const dev = new MemDevice(size);
    dev.jitterMs = 2;
    const shadow = Buffer.from(dev.bytes);
    const { at } = await serve(dev);
    const { c } = await transmitting(at);
    const r = rng(42);
    for (let batch = 0; batch < 25; batch++) {
      // Non-overlapping byte ranges (many share blocks), each a write or a read, all in flight at once.
      const ranges: Array<[number, number]> = [];
      while (ranges.length < 12) {
        const off = Math.floor(r() * (size - 3000));
        const len = 1 + Math.floor(r() * 3000);
        if (ranges.every(([o, l]) => off + len <= o || o + l <= off)) ranges.push([off, len]);
      }
      const ops = ranges.map(([offset, length], i) => {
        if (r() < 0.6) {
          const data = pattern(length, batch * 100 + i);
          data.copy(shadow, offset);
          return c.request({ type: NBD_CMD_WRITE, offset, data }).then((rep) => expect(rep).toEqual({ error: 0 }));
        }
        const want = Buffer.from(shadow.subarray(offset, offset + length));
        return c.request({ type: NBD_CMD_READ, offset, length }).then((rep) => expectBytes(rep.data, want));
      });
      await Promise.all(ops);
    }
    expect(Buffer.from(dev.bytes).equals(shadow)).toBe(true);
    expect(dev.unaligned).toEqual([]);
  });

  it('parses requests split into small pieces and many coalesced into one write', async () => {
    const dev = new MemDevice(1 << 20);
    const initial = Buffer.from(dev.bytes);
    const { at } = await serve(dev);
    const { c } = await transmitting(at);
    const big = pattern(300_000, 9);
    const small = pattern(700, 10);
    // Requests in flight together may complete in any order: the reads here touch only bytes no write of the batch touches.
    const reqs = [
      c.encode({ type: NBD_CMD_WRITE, offset: 1000, data: small }),
      c.encode({ type: NBD_CMD_WRITE, offset: 8192, data: big }),
      c.encode({ type: NBD_CMD_READ, offset: 500_000, length: 5000 }),
      c.encode({ type: NBD_CMD_FLUSH, offset: 0 }),
      c.encode({ type: NBD_CMD_READ, offset: 600_000, length: 200_000 }),
      c.encode({ type: NBD_CMD_READ, offset: 0, length: 0 }),
    ];
    const all = Buffer.concat(reqs.map((q) => q.bytes));
    // The first header byte by byte, then random pieces with pauses between them.
    const r = rng(5);
    let sent = 0;
    for (; sent < 28; sent++) {
      c.sock.write(all.subarray(sent, sent + 1));
      await sleep(1);
    }
    while (sent < all.length) {
      const n = 1 + Math.floor(r() * 20000);
      c.sock.write(all.subarray(sent, sent + n));
      sent += n;
      if (r() < 0.3) await sleep(1);
    }
    const replies = await Promise.all(reqs.map((q) => q.reply));
    expect(replies.map((x) => x.error)).toEqual([0, 0, 0, 0, 0, 0]);
    expectBytes(replies[2]!.data, initial.subarray(500_000, 505_000));
    expectBytes(replies[4]!.data, initial.subarray(600_000, 800_000));
    expect(replies[5]!.data).toBeUndefined();
    expectBytes((await c.request({ type: NBD_CMD_READ, offset: 1000, length: 700 })).data, small);
    expectBytes((await c.request({ type: NBD_CMD_READ, offset: 8192, length: big.length })).data, big);
    // Coalesced: 25 writes and 25 reads of other bytes in one socket write.
    const batch = Array.from({ length: 50 }, (_, i) => c.encode(i % 2
      ? { type: NBD_CMD_READ, offset: 8192 + i * 4096, length: 4096 }
      : { type: NBD_CMD_WRITE, offset: 524_288 + i * 4096, data: pattern(4096, 100 + i) }));
    c.sock.write(Buffer.concat(batch.map((q) => q.bytes)));
    const got = await Promise.all(batch.map((q) => q.reply));
    for (let i = 0; i < 50; i++) {
      expect(got[i]!.error).toBe(0);
      if (i % 2) expectBytes(got[i]!.data, big.subarray(i * 4096, (i + 1) * 4096));
      else expectBytes(dev.bytes.subarray(524_288 + i * 4096, 524_288 + (i + 1) * 4096), pattern(4096, 100 + i));
    }
  });

  it('replies in completion order, by handle', async () => {
    const dev = new MemDevice(65536);
    dev.readDelays.set(0, 150);
    const { at } = await serve(dev);
    const { c } = await transmitting(at);
    const slow = c.encode({ type: NBD_CMD_READ, offset: 0, length: 4096 });
    const fast = c.encode({ type: NBD_CMD_READ, offset: 8192, length: 4096 });
    c.sock.write(Buffer.concat([slow.bytes, fast.bytes]));
    const [a, b] = await Promise.all([slow.reply, fast.reply]);
    expectBytes(a.data, Buffer.from(dev.bytes.subarray(0, 4096)));
    expectBytes(b.data, Buffer.from(dev.bytes.subarray(8192, 12288)));
    expect(c.replyOrder).toEqual([fast.handle, slow.handle]);
  });

  it('TRIM discards whole blocks rounded inward; WRITE_ZEROES discards or writes zeroes as the device and NO_HOLE say', async () => {
    const dev = new MemDevice(65536);
    const { at } = await serve(dev);
    const { c } = await transmitting(at);
    const zeroed = (from: number, to: number) => dev.bytes.subarray(from, to).every((b) => b === 0);
    const before = Buffer.from(dev.bytes);
    expect(await c.request({ type: NBD_CMD_TRIM, offset: 100, length: 5000 })).toEqual({ error: 0 });
    expect(dev.log).toEqual(['discard 512 4096']);
    expect(await c.request({ type: NBD_CMD_TRIM, offset: 10_000, length: 300 })).toEqual({ error: 0 });
    expect(dev.log).toHaveLength(1); // nothing whole to discard
    dev.log.length = 0;
    expect(await c.request({ type: NBD_CMD_WRITE_ZEROES, offset: 20_100, length: 5000 })).toEqual({ error: 0 });
    expect(dev.log.filter((l) => l.startsWith('discard'))).toEqual(['discard 20480 4608']);
    expect(zeroed(20_100, 25_100)).toBe(true);
    expect(dev.bytes[20_099]).toBe(before[20_099]);
    expect(dev.bytes[25_100]).toBe(before[25_100]);
    dev.log.length = 0;
    expect(await c.request({ type: NBD_CMD_WRITE_ZEROES, flags: NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FUA, offset: 30_000, length: 5000 })).toEqual({ error: 0 });
    expect(dev.log.some((l) => l.startsWith('discard'))).toBe(false);
    expect(dev.log[dev.log.length - 1]).toBe('flush');
    expect(zeroed(30_000, 35_000)).toBe(true);
    dev.discard = async () => { throw new Error('discard refused'); }; // WRITE_ZEROES then writes the zeroes
    dev.log.length = 0;
    expect(await c.request({ type: NBD_CMD_WRITE_ZEROES, offset: 36_864, length: 4096 })).toEqual({ error: 0 });
    expect(dev.log).toEqual(['write 36864 4096']);
    expect(zeroed(36_864, 40_960)).toBe(true);
    dev.discardZeroes = false;
    dev.log.length = 0;
    expect(await c.request({ type: NBD_CMD_WRITE_ZEROES, offset: 40_960, length: 8192 })).toEqual({ error: 0 });
    expect(dev.log).toEqual(['write 40960 8192']);
    expect(zeroed(40_960, 49_152)).toBe(true);
    expect(dev.unaligned).toEqual([]);
  });

  it('checks bounds and flags with the spec\'s errors; a WRITE refused still has its payload consumed', async () => {
    const size = 65536;
    const dev = new MemDevice(size);
    const { at } = await serve(dev);
    const { c } = await transmitting(at);
    const err = async (q: Parameters<NbdClient['request']>[0]) => (await c.request(q)).error;
    expect(await err({ type: NBD_CMD_READ, offset: size - 512, length: 1024 })).toBe(NBD_EINVAL);
    expect(await err({ type: NBD_CMD_WRITE, offset: size - 100, data: pattern(200, 1) })).toBe(NBD_ENOSPC);
    expect(await err({ type: NBD_CMD_TRIM, offset: size, length: 512 })).toBe(NBD_EINVAL);
    expect(await err({ type: NBD_CMD_WRITE_ZEROES, offset: 0, length: size + 1 })).toBe(NBD_ENOSPC);
    expect(await err({ type: NBD_CMD_READ, offset: 2 ** 60, length: 512 })).toBe(NBD_EINVAL);
    expect(await err({ type: NBD_CMD_READ, offset: 0, length: 2 ** 25 + 512 })).toBe(NBD_EINVAL);
    expect(await err({ type: 99, offset: 0, length: 0 })).toBe(NBD_EINVAL);
    expect(await err({ type: NBD_CMD_READ, flags: 1 << 7, offset: 0, length: 512 })).toBe(NBD_EINVAL);
    expect(await err({ type: NBD_CMD_WRITE, flags: NBD_CMD_FLAG_NO_HOLE, offset: 0, data: pattern(512, 2) })).toBe(NBD_EINVAL);
    expect(await err({ type: NBD_CMD_FLUSH, offset: 512, length: 0 })).toBe(NBD_EINVAL);
    expectBytes((await c.request({ type: NBD_CMD_READ, offset: size - 512, length: 512 })).data, Buffer.from(dev.bytes.subarray(size - 512)));
    dev.canDiscard = false; // the device stopped discarding: TRIM is only a hint, so nothing happens
    dev.log.length = 0;
    expect(await err({ type: NBD_CMD_TRIM, offset: 0, length: 512 })).toBe(0);
    expect(dev.log).toEqual([]);
    expect(dev.unaligned).toEqual([]);
  });

  it('a device error is NBD_EIO and the connection goes on', async () => {
    const dev = new MemDevice(65536);
    dev.read = async () => { throw new Error('disk on fire'); };
    const { at } = await serve(dev);
    const { c } = await transmitting(at);
    expect(await c.request({ type: NBD_CMD_READ, offset: 0, length: 512 })).toEqual({ error: NBD_EIO });
    expect(await c.request({ type: NBD_CMD_WRITE, offset: 0, data: pattern(512, 1) })).toEqual({ error: 0 });
  });

  it('a read-only export says so and refuses writes with EPERM', async () => {
    const dev = new MemDevice(65536);
    dev.readOnly = true;
    const { at } = await serve(dev);
    const { c, flags } = await transmitting(at);
    expect(flags).toBe(NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_CAN_MULTI_CONN);
    const copy = Buffer.from(dev.bytes);
    expect((await c.request({ type: NBD_CMD_WRITE, offset: 0, data: pattern(512, 1) })).error).toBe(NBD_EPERM);
    expect((await c.request({ type: NBD_CMD_TRIM, offset: 0, length: 512 })).error).toBe(NBD_EPERM);
    expect((await c.request({ type: NBD_CMD_WRITE_ZEROES, offset: 0, length: 512 })).error).toBe(NBD_EPERM);
    expectBytes((await c.request({ type: NBD_CMD_READ, offset: 0, length: 512 })).data, copy.subarray(0, 512));
    expect(Buffer.from(dev.bytes).equals(copy)).toBe(true);
  });

  it('4096-byte blocks: the minimum block size is 4096, the export whole blocks, and unaligned writes still work', async () => {
    const dev = new MemDevice(4 * 4096 + 512, 4096);
    const { at } = await serve(dev);
    const c = await client(at);
    const info = await c.go();
    expect([info.size, info.minBlock, info.prefBlock]).toEqual([4 * 4096, 4096, 4096]);
    c.startTransmission();
    const data = pattern(5000, 4);
    expect((await c.request({ type: NBD_CMD_WRITE, offset: 3000, data })).error).toBe(0);
    expectBytes((await c.request({ type: NBD_CMD_READ, offset: 3000, length: 5000 })).data, data);
    expect((await c.request({ type: NBD_CMD_READ, offset: 4 * 4096, length: 512 })).error).toBe(NBD_EINVAL);
    expect(dev.unaligned).toEqual([]);
  });

  it('hangs up on a bad request magic and on a WRITE payload over 32 MiB', async () => {
    const { at } = await serve(new MemDevice(65536));
    const { c } = await transmitting(at);
    expect((await c.request({ type: NBD_CMD_READ, offset: 0, length: 512 })).error).toBe(0);
    const bad = c.encode({ type: NBD_CMD_READ, offset: 0, length: 512 });
    bad.bytes.writeUInt32BE(NBD_REQUEST_MAGIC ^ 1, 0);
    c.sock.write(bad.bytes);
    await c.closed;
    await expect(bad.reply).rejects.toThrow(/closed/);
    const { c: d } = await transmitting(at);
    const huge = Buffer.alloc(28);
    huge.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    huge.writeUInt16BE(NBD_CMD_WRITE, 6);
    huge.writeUInt32BE(2 ** 25 + 1, 24);
    d.sock.write(huge);
    await d.closed;
  });

  it('DISC: requests sent before it are served, then the server closes', async () => {
    const dev = new MemDevice(65536);
    const { at } = await serve(dev);
    const { c } = await transmitting(at);
    const data = pattern(4096, 11);
    const w = c.encode({ type: NBD_CMD_WRITE, offset: 8192, data });
    const disc = Buffer.alloc(28);
    disc.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    disc.writeUInt16BE(NBD_CMD_DISC, 6);
    c.sock.end(Buffer.concat([w.bytes, disc]));
    await c.closed;
    await eventuallyEqual(() => Buffer.from(dev.bytes.subarray(8192, 12288)).equals(data));
  });

  it('serves several connections at once, a large write, and close() ends them all', async () => {
    const dev = new MemDevice(16 << 20);
    const { server, at } = await serve(dev);
    const conns = await Promise.all([0, 1, 2, 3].map(() => transmitting(at)));
    const region = 4 << 20;
    const datas = conns.map((_, i) => pattern(region, 50 + i));
    const w: Reply[] = await Promise.all(conns.map(({ c }, i) => c.request({ type: NBD_CMD_WRITE, offset: i * region, data: datas[i] })));
    expect(w.map((x) => x.error)).toEqual([0, 0, 0, 0]);
    const r = await Promise.all(conns.map(({ c }, i) => c.request({ type: NBD_CMD_READ, offset: ((i + 1) % 4) * region, length: region })));
    r.forEach((x, i) => expectBytes(x.data, datas[(i + 1) % 4]!));
    expect(server.counters.connections).toBe(4);
    expect(server.counters.bytesWritten).toBe(4 * region);
    await server.close();
    await Promise.all(conns.map(({ c }) => c.closed));
  });
});

async function eventuallyEqual(fn: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(10);
  }
}

describe('blkfrontNbdDevice', () => {
  it('turns byte offsets into 512-byte sectors and follows blkfront\'s negotiated features as they change', async () => {
    const calls: string[] = [];
    const features = { flush: false, barrier: false, discard: true, discardZeroes: true };
    const dev = blkfrontNbdDevice({
      sizeBytes: 1 << 20, sectorSize: 4096, readOnly: false, features,
      readInto: async (s: number, b: Uint8Array) => void calls.push(`readInto ${s} ${b.length}`),
      write: async (s: number, b: Uint8Array) => void calls.push(`write ${s} ${b.length}`),
      flush: async () => void calls.push('flush'),
      discard: async (s: number, n: number) => void calls.push(`discard ${s} ${n}`),
    });
    expect(dev).toMatchObject({ sizeBytes: 1 << 20, blockSize: 4096, readOnly: false, canFlush: false, canDiscard: true, discardZeroes: true });
    await dev.read(8192, new Uint8Array(4096));
    await dev.write(4096, new Uint8Array(8192));
    await dev.discard(12288, 4096);
    await dev.flush();
    expect(calls).toEqual(['readInto 16 4096', 'write 8 8192', 'discard 24 8', 'flush']);
    features.barrier = true; // flush() falls back to a barrier
    features.discard = false; // blkfront saw BLKIF_RSP_EOPNOTSUPP
    expect(dev).toMatchObject({ canFlush: true, canDiscard: false, discardZeroes: false });
  });
});
