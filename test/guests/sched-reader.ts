/**
 * Test guest for test/sched.test.ts: reads its disk `xvda` flat out — `parallel`
 * readers, each reading `sectors` 512-byte sectors at a time, in a loop — so that
 * dom0's blkback, serving several such guests, is the bottleneck and its weighting
 * between them shows. Operations (`GuestHandle.call`):
 * - `start` {parallel?, sectors?} → true (default 32 readers of 64 sectors = 32 KiB);
 * - `count` → {completed, errors, lastError};
 * - `stop` → the reads completed; the readers end after their read in flight;
 * - `exit` → powers off (main resolves with the count).
 */
import type { Kernel } from '../../hypervisor/kernel.ts';
import type { Blkfront } from '../../blkfront/xenbus.ts';
import { serveCalls } from '../../toolstack/guest-calls.ts';

export default function main(k: Kernel): Promise<unknown> {
  const c = { completed: 0, errors: 0, lastError: '', stop: false };
  let finish!: (v: unknown) => void;
  const done = new Promise<unknown>((r) => (finish = r));
  serveCalls(k.control!, {
    start: (a: { parallel?: number; sectors?: number }) => {
      const d = k.devices.get('xvda') as Blkfront | undefined;
      if (!d) throw new Error('no disk xvda');
      const n = a.sectors ?? 64;
      const span = Math.max(1, Math.floor(d.sectors / n) - 1);
      const reader = async (r: number) => {
        for (let i = r; !c.stop; i += 7) {
          try {
            await d.read((i % span) * n, n);
            c.completed++;
          } catch (e) {
            c.errors++;
            c.lastError = (e as Error).message;
            await new Promise((res) => setTimeout(res, 10));
          }
        }
      };
      for (let r = 0; r < (a.parallel ?? 32); r++) void reader(r);
      return true;
    },
    count: () => ({ completed: c.completed, errors: c.errors, lastError: c.lastError }),
    stop: () => {
      c.stop = true;
      return c.completed;
    },
    exit: () => {
      c.stop = true;
      setImmediate(() => finish({ completed: c.completed }));
      return true;
    },
  });
  return done;
}
