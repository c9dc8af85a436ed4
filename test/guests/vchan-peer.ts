// Test guest for vchan (vchan/vchan.ts), driven through GuestHandle.call: one end of
// a channel — `serve` (the server end, in the background; `connected` waits for the
// client) or `connect` (the client end) — then `send` (a deterministic byte stream
// through the Duplex's write, with backpressure; optionally ending it) and `recv`
// (reads to EOF or a limit through async iteration, optionally slowly), each
// answering with the count and SHA-256 of the bytes; `destroy` closes mid-stream.
import { createHash } from 'node:crypto';
import type { Kernel } from '../../hypervisor/kernel.ts';
import { serveCalls } from '../../toolstack/guest-calls.ts';
import { xorshift32 } from '../../toolstack/xorshift.ts';
import { vchanClient, vchanServer, type Vchan } from '../../vchan/vchan.ts';

type Args = Record<string, number | string | boolean | undefined>;

/** `n` bytes of the stream seeded with `seed`, starting at byte `at` of it (whole u32 words). */
function fill(next: () => number, out: Uint8Array): void {
  for (let i = 0; i < out.length; i += 4) {
    const w = next();
    out[i] = w & 0xff;
    if (i + 1 < out.length) out[i + 1] = (w >>> 8) & 0xff;
    if (i + 2 < out.length) out[i + 2] = (w >>> 16) & 0xff;
    if (i + 3 < out.length) out[i + 3] = (w >>> 24) & 0xff;
  }
}

export default function main(k: Kernel): Promise<unknown> {
  let finish!: (v: unknown) => void;
  const done = new Promise<unknown>((r) => (finish = r));
  let v: Vchan | null = null;
  let serving: Promise<Vchan> | null = null;
  const chan = (): Vchan => {
    if (!v) throw new Error('no vchan');
    return v;
  };
  serveCalls(k.control!, {
    serve: (a: Args) => {
      serving = vchanServer(k, { peer: a.peer as number, name: a.name as string, leftOrder: a.leftOrder as number | undefined, rightOrder: a.rightOrder as number | undefined });
      serving.then((x) => (v = x), () => undefined);
      return null;
    },
    connected: async () => {
      v = await serving!;
      return true;
    },
    connect: async (a: Args) => {
      v = await vchanClient(k, { peer: a.peer as number, name: a.name as string });
      return true;
    },
    /** Writes `bytes` bytes in writes of `chunk` (honouring backpressure); `end` closes after. */
    send: async (a: Args) => {
      const c = chan();
      const next = xorshift32(a.seed as number);
      const h = createHash('sha256');
      let left = a.bytes as number;
      const size = a.chunk as number;
      let sent = 0;
      try {
        while (left > 0) {
          const b = Buffer.alloc(Math.min(size, left) + ((4 - (Math.min(size, left) % 4)) % 4));
          fill(next, b);
          const piece = b.subarray(0, Math.min(size, left));
          h.update(piece);
          left -= piece.length;
          sent += piece.length;
          if (!c.write(piece)) await new Promise<void>((r, rej) => {
            const onErr = (e: Error) => rej(e);
            c.once('error', onErr);
            c.once('drain', () => {
              c.off('error', onErr);
              r();
            });
          });
        }
        if (a.end) await new Promise<void>((r) => c.end(r));
        return { sent, sha256: h.digest('hex') };
      } catch (e) {
        return { sent, error: (e as Error).message };
      }
    },
    /** Reads to EOF (or `max` bytes), pausing `slowMs` every `slowEvery` bytes. */
    recv: async (a: Args) => {
      const c = chan();
      const h = createHash('sha256');
      let got = 0;
      let sinceSlow = 0;
      const max = (a.max as number | undefined) ?? Infinity;
      for await (const piece of c as AsyncIterable<Buffer>) {
        const take = piece.subarray(0, Math.min(piece.length, max - got));
        h.update(take);
        got += take.length;
        sinceSlow += take.length;
        if (a.slowEvery && sinceSlow >= (a.slowEvery as number)) {
          sinceSlow = 0;
          await new Promise((r) => setTimeout(r, a.slowMs as number));
        }
        if (got >= max) break;
      }
      return { got, sha256: h.digest('hex'), counters: { ...c.counters } };
    },
    destroy: () => {
      chan().destroy();
      return null;
    },
    release: () => {
      chan().release();
      return null;
    },
    counters: () => ({ ...chan().counters }),
    exit: () => void setImmediate(() => finish(null)),
  });
  return done;
}
