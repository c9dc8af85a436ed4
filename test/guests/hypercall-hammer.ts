/**
 * Test guest for test/sched.test.ts: every vCPU issues `xen_version` hypercalls in a
 * loop (bursts of {@link BURST}, the event loop turning between bursts), so several
 * such guests keep the hypervisor's service loop contended. Operations
 * (`GuestHandle.call`, on vCPU 0):
 * - `start` → true: every vCPU starts hammering;
 * - `count` → the calls completed, summed over the vCPUs;
 * - `stop` → true, once every vCPU has stopped;
 * - `exit` → powers off.
 */
import type { Kernel } from '../../hypervisor/kernel.ts';
import { HYPERVISOR } from '../../hypervisor/abi.ts';
import { serveCalls } from '../../toolstack/guest-calls.ts';

/** Calls per burst. */
const BURST = 200;

/** This vCPU's hammer: `start`, `count`, `stop`. */
function hammer(k: Kernel): { start(): void; count(): number; stop(): void } {
  let calls = 0;
  let running = false;
  const loop = () => {
    if (!running) return;
    for (let i = 0; i < BURST; i++) k.hypercall.call(HYPERVISOR.xen_version, 0, 0);
    calls += BURST;
    setImmediate(loop);
  };
  return {
    start: () => {
      if (running) return;
      running = true;
      setImmediate(loop);
    },
    count: () => calls,
    stop: () => {
      running = false;
    },
  };
}

/** vCPUs other than 0: hammer when vCPU 0 says so. */
export function secondary(k: Kernel): void {
  const h = hammer(k);
  k.serveVcpuCalls({
    'hammer.start': () => (h.start(), true),
    'hammer.count': () => h.count(),
    'hammer.stop': () => (h.stop(), true),
  });
}

export default function main(k: Kernel): Promise<unknown> {
  const h = hammer(k);
  const others = Array.from({ length: k.nrVcpus - 1 }, (_, i) => i + 1);
  let finish!: (v: unknown) => void;
  const done = new Promise<unknown>((r) => (finish = r));
  serveCalls(k.control!, {
    start: async () => {
      h.start();
      await Promise.all(others.map((v) => k.callVcpu(v, 'hammer.start')));
      return true;
    },
    count: async () => h.count() + (await Promise.all(others.map((v) => k.callVcpu(v, 'hammer.count') as Promise<number>))).reduce((a, b) => a + b, 0),
    stop: async () => {
      h.stop();
      await Promise.all(others.map((v) => k.callVcpu(v, 'hammer.stop')));
      return true;
    },
    exit: () => {
      h.stop();
      setImmediate(() => finish(null));
      return true;
    },
  });
  return done;
}
