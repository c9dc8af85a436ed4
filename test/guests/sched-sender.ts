/**
 * Test guest for test/sched-net.test.ts: sends frames on `eth0` flat out — back to
 * back with `trySend` while the tx ring has room, `await send` when it is full — so
 * that dom0's netback, serving several such guests, is the bottleneck (with a bridge
 * port that costs CPU per frame) and its weighting between them shows. Operations
 * (`GuestHandle.call`):
 * - `info` → {mac};
 * - `start` {dst, bytes?} → true: floods frames of `bytes` (default 64) bytes to the
 *   MAC `dst` (`xx:xx:xx:xx:xx:xx`), ethertype 0x88b5, from its own MAC;
 * - `count` → {sent, errors, lastError};
 * - `stop` → the frames sent; the sender ends after its frame in flight;
 * - `exit` → powers off (main resolves with the count).
 */
import type { Kernel } from '../../hypervisor/kernel.ts';
import type { Netfront } from '../../netfront/xenbus.ts';
import { serveCalls } from '../../toolstack/guest-calls.ts';

const macBytes = (mac: string) => mac.split(':').map((x) => parseInt(x, 16));

export default function main(k: Kernel): Promise<unknown> {
  const nic = k.devices.get('eth0') as Netfront | undefined;
  if (!nic) throw new Error('no eth0: give the guest a vif');
  const c = { sent: 0, errors: 0, lastError: '', stop: false };
  let finish!: (v: unknown) => void;
  const done = new Promise<unknown>((r) => (finish = r));
  serveCalls(k.control!, {
    info: () => ({ mac: nic.mac }),
    start: (a: { dst: string; bytes?: number }) => {
      const f = new Uint8Array(a.bytes ?? 64);
      f.set(macBytes(a.dst), 0);
      f.set(macBytes(nic.mac), 6);
      f[12] = 0x88;
      f[13] = 0xb5;
      void (async () => {
        while (!c.stop) {
          try {
            // A burst without a promise per frame (trySend copies the frame), then wait for
            // room; after a long burst, let the event loop turn (control calls, events).
            let n = 0;
            while (n < 1024 && nic.trySend(f)) n++;
            c.sent += n;
            if (n === 1024) await new Promise((res) => setImmediate(res));
            else {
              await nic.send(f);
              c.sent++;
            }
          } catch (e) {
            c.errors++;
            c.lastError = (e as Error).message;
            await new Promise((res) => setTimeout(res, 10));
          }
        }
      })();
      return true;
    },
    count: () => ({ sent: c.sent, errors: c.errors, lastError: c.lastError }),
    stop: () => {
      c.stop = true;
      return c.sent;
    },
    exit: () => {
      c.stop = true;
      setImmediate(() => finish({ sent: c.sent }));
      return true;
    },
  });
  return done;
}
