/**
 * A well-behaved guest on the virtual network for the adversarial suite
 * (test/net-hostile.test.ts), driven through `GuestHandle.call(op, args)`. It uses
 * the real netfront (`eth0`, connected at boot) and does three things at once:
 *
 * - answers echo requests: a frame of ethertype {@link ECHO_ETHERTYPE} to its MAC
 *   whose first payload byte is 0 goes back to its sender with that byte set to 1;
 * - on `pingLoop`, keeps echo requests going to a peer (one outstanding per worker),
 *   checking each reply's payload and counting round trips, so a test can watch the
 *   bridge keep forwarding between two guests while a third one misbehaves;
 * - keeps every frame of ethertype {@link CAPTURE_ETHERTYPE} it receives (at most
 *   4096), so a test can see exactly which frames a hostile guest got through.
 */
import type { Kernel } from '../../hypervisor/kernel.ts';
import type { Netfront } from '../../netfront/xenbus.ts';
import { serveCalls } from '../../toolstack/guest-calls.ts';

/** Ethertype of the echo frames (IEEE local experimental 2). */
export const ECHO_ETHERTYPE = 0x88b6;
/** Ethertype of the frames kept for the test (IEEE local experimental 1). */
export const CAPTURE_ETHERTYPE = 0x88b5;
const CAPTURE_MAX = 4096;
const HDR = 14;

type Args = Record<string, unknown> & { [k: string]: any };

/** The payload byte at `i` of echo `seq`. */
const pattern = (seq: number, i: number) => (seq * 13 + i * 7) & 0xff;
const macBytes = (mac: string) => mac.split(':').map((x) => parseInt(x, 16));
const sameMac = (f: Uint8Array, at: number, mac: number[]) => mac.every((b, i) => f[at + i] === b);

/** The guest's main: serves the operations below until `exit`. */
export default function main(k: Kernel): Promise<unknown> {
  const nic = k.devices.get('eth0') as Netfront | undefined;
  if (!nic) throw new Error('no eth0: give the guest a vif');
  const me = macBytes(nic.mac);
  const ctl = k.control!;
  let finish!: (v: unknown) => void;
  const done = new Promise<unknown>((res) => (finish = res));
  let stopped = false;
  const captured: Uint8Array[] = [];
  let capturedWaiter: (() => void) | null = null;
  const pending = new Map<number, (f: Uint8Array) => void>();
  const loop = { completed: 0, lost: 0, bad: 0, sendErrors: 0, lastError: '', stop: true, workers: 0 };
  const counts = { echoed: 0, captured: 0, other: 0, rxErrors: 0 };

  /** The receive loop: answers echo requests, hands replies to their pinger, keeps captured frames. */
  const rx = (async () => {
    while (!stopped) {
      let f: Uint8Array | null;
      try {
        f = await nic.receive(100);
      } catch (e) {
        counts.rxErrors++;
        loop.lastError = (e as Error).message;
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      if (!f || f.length < HDR) continue;
      const type = (f[12] << 8) | f[13];
      if (type === ECHO_ETHERTYPE && f.length >= HDR + 5 && sameMac(f, 0, me)) {
        if (f[HDR] === 0) {
          const reply = f.slice();
          reply.copyWithin(0, 6, 12);
          reply.set(me, 6);
          reply[HDR] = 1;
          counts.echoed++;
          nic.send(reply).catch((e) => {
            loop.sendErrors++;
            loop.lastError = (e as Error).message;
          });
        } else {
          const seq = new DataView(f.buffer, f.byteOffset + HDR + 1, 4).getUint32(0);
          pending.get(seq)?.(f);
        }
      } else if (type === CAPTURE_ETHERTYPE) {
        counts.captured++;
        if (captured.length < CAPTURE_MAX) captured.push(f);
        (capturedWaiter as (() => void) | null)?.();
      } else {
        counts.other++;
      }
    }
  })();

  let nextSeq = 1;
  /** One pinger: an echo request to `peer`, wait for its reply (up to `timeoutMs`), check it, again. */
  const pinger = async (peer: number[], bytes: number, timeoutMs: number, pauseMs: number) => {
    loop.workers++;
    try {
      while (!loop.stop && !stopped) {
        const seq = nextSeq++;
        const f = new Uint8Array(HDR + Math.max(5, bytes));
        f.set(peer, 0);
        f.set(me, 6);
        f[12] = ECHO_ETHERTYPE >> 8;
        f[13] = ECHO_ETHERTYPE & 0xff;
        f[HDR] = 0;
        new DataView(f.buffer, HDR + 1, 4).setUint32(0, seq);
        for (let i = HDR + 5; i < f.length; i++) f[i] = pattern(seq, i);
        const reply = new Promise<Uint8Array | null>((res) => {
          const t = setTimeout(() => {
            pending.delete(seq);
            res(null);
          }, timeoutMs);
          pending.set(seq, (r) => {
            clearTimeout(t);
            pending.delete(seq);
            res(r);
          });
        });
        try {
          await nic.send(f);
        } catch (e) {
          loop.sendErrors++;
          loop.lastError = (e as Error).message;
        }
        const r = await reply;
        if (!r) loop.lost++;
        else {
          let ok = r.length === f.length && r[HDR] === 1 && sameMac(r, 0, me) && sameMac(r, 6, peer);
          for (let i = HDR + 5; ok && i < f.length; i++) ok = r[i] === f[i];
          if (ok) loop.completed++;
          else loop.bad++;
        }
        if (pauseMs > 0) await new Promise((res) => setTimeout(res, pauseMs));
      }
    } finally {
      loop.workers--;
    }
  };

  const ops: Record<string, (a: Args) => unknown> = {
    info: () => ({ domid: k.domid, mac: nic.mac }),
    /** Starts `parallel` pingers to `peer` (a MAC), each with `bytes` of payload and a reply deadline of `timeoutMs`. */
    pingLoop: (a) => {
      loop.stop = false;
      const peer = macBytes(a.peer as string);
      for (let i = 0; i < ((a.parallel as number) ?? 2); i++) void pinger(peer, (a.bytes as number) ?? 200, (a.timeoutMs as number) ?? 2000, (a.pauseMs as number) ?? 1);
      return true;
    },
    /** The pingers' counters and the receive loop's. */
    loopCount: () => ({ ...loop, ...counts, broken: nic.isBroken }),
    /** Stops the pingers; resolves once they are done. */
    loopStop: async () => {
      loop.stop = true;
      const deadline = performance.now() + 5000;
      while (loop.workers > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      return { ...loop };
    },
    /** Sends each frame of `frames` (byte arrays) in order. */
    send: async (a) => {
      for (const f of a.frames as number[][]) await nic.send(Uint8Array.from(f));
      return (a.frames as unknown[]).length;
    },
    /**
     * Takes the captured frames: waits up to `timeoutMs` for `min` of them (default 0),
     * then `idleMs` (default 100) for more, and returns them all (byte arrays).
     */
    captured: async (a) => {
      const min = (a.min as number) ?? 0;
      const wait = (ms: number, until: () => boolean) => new Promise<void>((res) => {
        if (until()) return res();
        const t = setTimeout(() => {
          capturedWaiter = null;
          res();
        }, ms);
        capturedWaiter = () => {
          if (!until()) return;
          clearTimeout(t);
          capturedWaiter = null;
          res();
        };
      });
      await wait((a.timeoutMs as number) ?? 2000, () => captured.length >= min);
      for (;;) {
        const before = captured.length;
        await wait((a.idleMs as number) ?? 100, () => captured.length > before);
        if (captured.length === before) break;
      }
      return captured.splice(0).map((f) => [...f]);
    },
    nicCounters: () => ({ ...nic.counters, broken: nic.isBroken }),
    exit: async (a) => {
      loop.stop = true;
      stopped = true;
      await rx;
      finish(a.value ?? null);
    },
  };

  serveCalls(ctl, ops);
  return done;
}
