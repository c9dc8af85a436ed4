/**
 * Entry of the hypervisor worker thread. It owns a {@link Hypervisor}, answers the
 * toolstack's domctl-style messages on `parentPort`, and runs the hypercall service
 * loop.
 *
 * Why the loop looks like this: the hypervisor must both serve hypercalls (a vCPU is
 * blocked on each) and keep its event loop turning (toolstack messages, worker exits).
 * So it scans the hypercall pages, and when none is pending it spins briefly if it
 * holds a spin token (a hypercall RTT then costs a few µs instead of ~70 µs), then
 * parks in `Atomics.waitAsync` on its single wake-up word, which every vCPU bumps
 * after it stores a call — for at most a second, and never past the earliest
 * `set_timer_op` alarm of a running domain, which it fires on waking ({@link
 * Hypervisor.runTimers}; arming an earlier one bumps the word). Under sustained load it yields to the event loop every
 * {@link YIELD_EVERY} passes so control messages are never starved. A call left
 * pending by a domain's scheduler cap shortens the wait to the next cap period
 * (hypervisor/sched-credit.ts).
 */
import { parentPort, type MessagePort } from 'node:worker_threads';
import { Hypervisor, type CreateDomainOptions } from './hypervisor.ts';
import { SpinTokens } from './spin.ts';
import type { XenDomctlSchedulerOp } from './abi.ts';

const YIELD_EVERY = 256;
const HV_SPIN_ITERATIONS = 4000;

/** A toolstack → hypervisor request. */
export type HvRequest =
  | { type: 'createDomain'; reqId: number; opts: CreateDomainOptions }
  | { type: 'unpause' | 'pause' | 'destroy'; reqId: number; domid: number }
  | { type: 'snapshot' | 'audit' | 'shutdown'; reqId: number }
  /** `XEN_DOMCTL_scheduler_op` on `domid`: answers `{ rc, op }` (getinfo fills `op.u.credit`). */
  | { type: 'schedulerOp'; reqId: number; domid: number; op: XenDomctlSchedulerOp }
  /** The credit scheduler's per-domain counters (hypervisor/sched-credit.ts `DomainSchedStats[]`). */
  | { type: 'schedStats'; reqId: number };

/** A hypervisor → toolstack message: a reply, or a lifecycle event. */
export type HvMessage =
  | { type: 'reply'; reqId: number; ok: true; value: unknown }
  | { type: 'reply'; reqId: number; ok: false; error: string }
  | { type: 'domainShutdown' | 'domainDestroyed'; domid: number; reason: number; error: string | null };

/** Worker entry: called by worker-bootstrap.mjs with the worker's data. */
export async function start(data: { spinTokens: SharedArrayBuffer }): Promise<void> {
  const port = parentPort as MessagePort;
  const post = (m: HvMessage) => port.postMessage(m);
  const hv = new Hypervisor(data.spinTokens, {
    onDomainShutdown: (domid, reason, error) => post({ type: 'domainShutdown', domid, reason, error }),
    onDomainDestroyed: (domid, reason, error) => post({ type: 'domainDestroyed', domid, reason, error }),
  });
  const tokens = new SpinTokens(data.spinTokens);
  let stopping = false;

  port.on('message', async (m: HvRequest) => {
    try {
      let value: unknown = null;
      switch (m.type) {
        case 'createDomain': {
          const d = hv.createDomain(m.opts);
          value = { domid: d.domid, store: d.store, console: d.console };
          break;
        }
        case 'unpause': hv.unpause(m.domid); break;
        case 'pause': hv.pause(m.domid); break;
        case 'destroy': hv.destroy(m.domid); break;
        case 'snapshot': value = hv.snapshot(); break;
        case 'schedulerOp': value = { rc: hv.domctlSchedulerOp(m.domid, m.op), op: m.op }; break;
        case 'schedStats': value = hv.sched.snapshot(); break;
        case 'audit': value = { ...hv.auditHandles(), log: hv.frames.log, counters: hv.snapshot() }; break;
        case 'shutdown':
          await hv.destroyAll();
          stopping = true;
          Atomics.add(hv.hvWake, 0, 1);
          Atomics.notify(hv.hvWake, 0);
          break;
      }
      post({ type: 'reply', reqId: m.reqId, ok: true, value });
      if (stopping) port.close();
    } catch (e) {
      post({ type: 'reply', reqId: m.reqId, ok: false, error: (e as Error).message });
    }
  });

  // The service loop.
  let passes = 0;
  while (!stopping) {
    const seen = Atomics.load(hv.hvWake, 0);
    hv.runTimers(); // set_timer_op alarms that fell due (cheap when none is armed)
    if (hv.serviceOnce() > 0) {
      if (++passes % YIELD_EVERY === 0) await new Promise((r) => setImmediate(r));
      continue;
    }
    if (tokens.spinWhileEqual(hv.hvWake, 0, seen, HV_SPIN_ITERATIONS)) {
      hv.counters.spins++;
      continue;
    }
    // A bounded wait: until the earliest armed alarm (hv.timerWaitMs) at the latest.
    const w = Atomics.waitAsync(hv.hvWake, 0, seen, Math.min(hv.serviceIdleWaitMs(1000), hv.timerWaitMs(1000)));
    if (w.async) await w.value;
    hv.counters.wakeups++;
    passes = 0;
  }
}
