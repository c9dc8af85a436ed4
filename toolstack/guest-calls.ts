/**
 * The guest side of `GuestHandle.call(op, args)` (toolstack/machine.ts): a guest
 * program hands its operations to {@link serveCalls}, which answers every
 * `{type: 'call', id, op, args}` arriving on the domain's control port with
 * `{type: 'reply', id, ok: true, value}` — the operation's result, awaited — or
 * `{type: 'reply', id, ok: false, error}` when the operation is unknown or throws.
 */
import type { MessagePort } from 'node:worker_threads';

/** A guest's operations by name; each gets the call's `args` (an object, `{}` when none). */
export type GuestOps = Record<string, (args: any) => unknown>;

/**
 * Serves `ops` on `control` (the kernel's `k.control`, vCPU 0 only) until the domain
 * ends. Calls run concurrently; each reply goes out when its operation settles.
 */
export function serveCalls(control: MessagePort, ops: GuestOps): void {
  control.on('message', (m: { type?: string; id?: number; op?: string; args?: unknown }) => {
    if (m?.type !== 'call') return;
    void (async () => {
      try {
        const f = ops[m.op!];
        if (!f) throw new Error(`unknown op ${m.op}`);
        control.postMessage({ type: 'reply', id: m.id, ok: true, value: await f(m.args ?? {}) });
      } catch (e) {
        control.postMessage({ type: 'reply', id: m.id, ok: false, error: (e as Error).message });
      }
    })();
  });
}
