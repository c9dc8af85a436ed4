// vchan (vchan/vchan.ts) between two domUs: the libxenvchan layout and handshake
// (a shared page with two byte rings, in the page or in their own granted pages,
// ring-ref and event-channel in the server's XenStore directory), and the stream API
// (Node Duplex) both ways. 100 MB from the client to the server arrive byte for byte
// (same SHA-256); a 1 KiB ring inside the shared page with odd write sizes wraps
// thousands of times without losing a byte; a slow reader holds a fast writer back
// (it waits for room) and gets everything; a writer that closes mid-stream gives the
// reader exactly what it sent, then EOF; a reader that goes away makes the writer's
// next writes fail instead of hang.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { Machine, type GuestHandle } from '../toolstack/machine.ts';
import { xorshift32 } from '../toolstack/xorshift.ts';
import { guestPath } from './helpers.ts';
import { VCHAN_INTERFACE } from '../vchan/vchan.ts';

let m: Machine;
const peer = (name: string) => m.createGuest({ name, memoryMiB: 48, vcpus: 1, kernel: guestPath('vchan-peer.ts') });

beforeAll(async () => {
  m = await Machine.boot({ onConsole: () => {} });
});
afterAll(async () => {
  await m?.shutdown();
});

/** SHA-256 of the first `n` bytes of the stream seeded with `seed`, as the guest makes it for one write size. */
function expectedSha(seed: number, n: number, chunk: number): string {
  const next = xorshift32(seed);
  const h = createHash('sha256');
  let left = n;
  while (left > 0) {
    const len = Math.min(chunk, left);
    const b = Buffer.alloc(len + ((4 - (len % 4)) % 4));
    for (let i = 0; i < b.length; i += 4) b.writeUInt32LE(next() >>> 0, i);
    h.update(b.subarray(0, len));
    left -= len;
  }
  return h.digest('hex');
}

type Sent = { sent: number; sha256?: string; error?: string };
type Got = { got: number; sha256: string; counters: { writeWaits: number } };

async function pair(name: string, leftOrder?: number, rightOrder?: number): Promise<{ srv: GuestHandle; cli: GuestHandle }> {
  const [srv, cli] = await Promise.all([peer(`${name}-s`), peer(`${name}-c`)]);
  await srv.call('serve', { peer: cli.domid, name, leftOrder, rightOrder });
  await cli.call('connect', { peer: srv.domid, name });
  await srv.call('connected');
  return { srv, cli };
}

describe('vchan between two domUs', () => {
  it('the layout is libxenvchan\'s', () => {
    expect(VCHAN_INTERFACE.size).toBe(24);
    expect(VCHAN_INTERFACE.fields.right_prod.offset).toBe(12);
    expect(VCHAN_INTERFACE.fields.srv_notify.offset).toBe(23);
  });

  it('100 MB from client to server, byte for byte (64 KiB rings in their own pages)', async () => {
    const { srv, cli } = await pair('big', 16, 16);
    const N = 100 * 1024 * 1024;
    const [sent, got] = await Promise.all([
      cli.call('send', { bytes: N, seed: 7, chunk: 256 * 1024, end: true }, 120_000) as Promise<Sent>,
      srv.call('recv', {}, 120_000) as Promise<Got>,
    ]);
    expect(sent.error).toBeUndefined();
    expect(sent.sent).toBe(N);
    expect(got.got).toBe(N);
    expect(got.sha256).toBe(sent.sha256);
    expect(got.sha256).toBe(expectedSha(7, N, 256 * 1024));
  }, 150_000);

  it('a 1 KiB ring in the shared page, odd write sizes: thousands of wrap-arounds, no byte lost (server to client)', async () => {
    const { srv, cli } = await pair('wrap', 16, 10);
    const N = 3 * 1024 * 1024 + 13;
    const [sent, got] = await Promise.all([
      srv.call('send', { bytes: N, seed: 11, chunk: 777, end: true }, 60_000) as Promise<Sent>,
      cli.call('recv', {}, 60_000) as Promise<Got>,
    ]);
    expect(got.got).toBe(N);
    expect(got.sha256).toBe(sent.sha256);
    expect(got.sha256).toBe(expectedSha(11, N, 777));
  }, 90_000);

  it('a slow reader holds the writer back, and gets every byte', async () => {
    const { srv, cli } = await pair('slow', 12, 16);
    const N = 2 * 1024 * 1024;
    const [sent, got] = await Promise.all([
      cli.call('send', { bytes: N, seed: 3, chunk: 65536, end: true }, 60_000) as Promise<Sent>,
      srv.call('recv', { slowEvery: 64 * 1024, slowMs: 5 }, 60_000) as Promise<Got>,
    ]);
    expect(got.got).toBe(N);
    expect(got.sha256).toBe(sent.sha256);
    const c = (await cli.call('counters')) as { writeWaits: number };
    expect(c.writeWaits).toBeGreaterThan(10); // the 4 KiB ring was full again and again: the writer waited
  }, 90_000);

  it('a writer that closes mid-stream: the reader gets exactly what was sent, then EOF', async () => {
    const { srv, cli } = await pair('close', 16, 16);
    const [sent, got] = await Promise.all([
      cli.call('send', { bytes: 123_457, seed: 5, chunk: 10_000, end: true }, 30_000) as Promise<Sent>,
      srv.call('recv', {}, 30_000) as Promise<Got>,
    ]);
    expect(got.got).toBe(123_457);
    expect(got.sha256).toBe(sent.sha256);
  });

  it('a reader that goes away mid-stream: the writer\'s writes fail, they do not hang', async () => {
    const { srv, cli } = await pair('gone', 12, 12);
    const sending = cli.call('send', { bytes: 50 * 1024 * 1024, seed: 9, chunk: 65536 }, 30_000) as Promise<Sent>;
    const got = (await srv.call('recv', { max: 50_000 }, 30_000)) as Got;
    expect(got.got).toBe(50_000);
    await srv.call('destroy');
    const t0 = Date.now();
    const sent = await sending;
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(sent.error).toMatch(/peer closed/);
    expect(sent.sent).toBeLessThan(50 * 1024 * 1024);
  });
});
