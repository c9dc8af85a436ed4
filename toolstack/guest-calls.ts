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
  control.on('message', (m: CallMessage) => {
    if (m?.type === 'call') answerCall(control, ops, m);
  });
}

/** A `{type: 'call'}` message as {@link CallClient} posts it. */
export interface CallMessage {
  readonly type?: string;
  readonly id?: number;
  readonly op?: string;
  readonly args?: unknown;
}

/** Runs one call message's operation from `ops` and posts its reply on `port`. */
export function answerCall(port: MessagePort, ops: GuestOps, m: CallMessage): void {
  void (async () => {
    try {
      const f = ops[m.op!];
      if (!f) throw new Error(`unknown op ${m.op}`);
      port.postMessage({ type: 'reply', id: m.id, ok: true, value: await f(m.args ?? {}) });
    } catch (e) {
      port.postMessage({ type: 'reply', id: m.id, ok: false, error: (e as Error).message });
    }
  })();
}

/** A call made through a {@link CallClient} failed: the peer's operation threw, or no answer came in time. */
export class CallError extends Error {
  constructor(message: string, readonly timedOut = false) {
    super(message);
    this.name = 'CallError';
  }
}

/**
 * The calling side of {@link serveCalls}: posts `{type: 'call', id, op, args}` on
 * `port` and settles each call with its `reply`, or rejects it after a deadline.
 */
export class CallClient {
  private nextId = 0;
  private readonly pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void; timer: NodeJS.Timeout }>();

  /** @param name who is called, for error messages. */
  constructor(private readonly port: MessagePort, private readonly name: string) {
    port.on('message', (m: { type?: string; id?: number; ok?: boolean; value?: unknown; error?: string }) => {
      if (m?.type !== 'reply' || m.id === undefined) return;
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      clearTimeout(p.timer);
      if (m.ok) p.resolve(m.value);
      else p.reject(new CallError(`${this.name}: ${m.error ?? 'call failed'}`));
    });
  }

  /**
   * Calls `op` with `args` (structured clone).
   * @throws CallError when the operation throws on the other side or no reply comes within `timeoutMs`.
   */
  call(op: string, args: unknown, timeoutMs: number): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const id = ++this.nextId;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new CallError(`${this.name}: call ${op} got no answer within ${timeoutMs} ms`, true));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.port.postMessage({ type: 'call', id, op, args });
    });
  }

  /** Rejects every call still waiting (the peer is gone). */
  failAll(why: string): void {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new CallError(`${this.name}: ${why}`));
    }
    this.pending.clear();
  }
}
