/**
 * XenbusState: the state machine each end of a split driver publishes in its
 * XenStore directory as the decimal string in `<dir>/state`, and the helpers to
 * set, read and wait for it (Linux `xenbus_switch_state`,
 * `xenbus_read_driver_state`, and a watch-based wait).
 *
 * ```
 *  frontend                         backend
 *  Initialising                     Initialising
 *                                   InitWait      (features published)
 *  Initialised   (rings, evtchn)
 *                                   Connected     (device properties)
 *  Connected
 *  Closing → Closed                 Closing → Closed
 * ```
 *
 * @see io/xenbus.h, reference/xen-pv-abi.md §6.2
 */
import { TimeoutError, invariant } from '../rings/errors.ts';
import type { XenbusClient, XenbusOperations, Unwatch } from './client.ts';

/** `enum xenbus_state` (io/xenbus.h). */
export enum XenbusState {
  Unknown = 0,
  Initialising = 1,
  /** Finished early initialisation, waiting for the peer's information. */
  InitWait = 2,
  /** Initialised and waiting for a connection from the peer. */
  Initialised = 3,
  Connected = 4,
  /** The device is being closed due to an error or an unplug event. */
  Closing = 5,
  Closed = 6,
  /** Reconfiguring (netfront: XDP headroom changes). */
  Reconfiguring = 7,
  Reconfigured = 8,
}

/** `XenbusStateInitWait`-style name of a state, for logs (`"InitWait"`, or the number). */
export function xenbusStateName(state: number): string {
  return XenbusState[state] ?? String(state);
}

function statePath(dir: string): string {
  return dir.endsWith('/') ? `${dir}state` : `${dir}/state`;
}

/**
 * Writes `<dir>/state` as a decimal string (Linux `xenbus_switch_state`).
 * @throws XenStoreError / TimeoutError / XenbusClosedError from the write.
 */
export async function switchState(client: XenbusOperations, dir: string, state: XenbusState): Promise<void> {
  invariant(Number.isInteger(state) && state >= 0 && state <= XenbusState.Reconfigured, `switchState: bad state ${state}`);
  await client.write(statePath(dir), String(state));
}

/**
 * Reads `<dir>/state`. A missing node, or one that is not a decimal state
 * number, reads as `Unknown` (as Linux `xenbus_read_driver_state`); the peer's
 * value is never trusted beyond that.
 * @throws XenStoreError (other than ENOENT) / TimeoutError / XenbusClosedError.
 */
export async function readState(client: XenbusOperations, dir: string): Promise<XenbusState> {
  const v = await client.readOptional(statePath(dir));
  if (v === undefined || !/^[0-9]{1,2}$/.test(v)) return XenbusState.Unknown;
  const n = Number(v);
  return n <= XenbusState.Reconfigured ? (n as XenbusState) : XenbusState.Unknown;
}

/**
 * Reads an unsigned decimal key the peer wrote (Linux `xenbus_scanf(..., "%u")` with
 * a default): `dflt` when the node is missing; the value when it is all decimal
 * digits and below 2^53; otherwise throws `bad(raw)` — the caller's typed error, since the
 * value comes from the other end.
 * @throws what `bad` returns; XenStoreError (other than ENOENT) / TimeoutError / XenbusClosedError.
 */
export async function readUintKey(client: XenbusOperations, path: string, dflt: number, bad: (raw: string) => Error): Promise<number> {
  const v = await client.readOptional(path);
  if (v === undefined || v === null) return dflt;
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n)) throw bad(v);
  return n;
}

/** Options of {@link waitForState}. */
export interface WaitForStateOptions {
  /** Deadline in milliseconds (default 30 000). */
  readonly timeoutMs?: number;
}

/**
 * Waits until `<dir>/state` satisfies `predicate`, using a watch on the node
 * (which fires once at once, so a state already reached resolves immediately).
 * The watch is removed (in the background) when the promise settles.
 *
 * @returns the state that satisfied the predicate.
 * @throws TimeoutError when the deadline passes first; XenStoreError /
 *   XenbusClosedError when a read or the watch fails.
 */
export function waitForState(
  client: XenbusClient,
  dir: string,
  predicate: (state: XenbusState) => boolean,
  options: WaitForStateOptions = {},
): Promise<XenbusState> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const path = statePath(dir);
  return new Promise<XenbusState>((resolve, reject) => {
    let settled = false;
    let unwatch: Unwatch | undefined;
    let checking = false;
    let again = false;
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const u = unwatch;
      unwatch = undefined;
      u?.().catch(() => undefined);
      fn();
    };
    const timer = setTimeout(() => {
      finish(() => reject(new TimeoutError(`waitForState ${path}: no matching state in ${timeoutMs} ms`)));
    }, timeoutMs);
    // One read at a time; an event during a read triggers one more read.
    const check = async () => {
      if (checking) {
        again = true;
        return;
      }
      checking = true;
      try {
        do {
          again = false;
          const s = await readState(client, dir);
          if (settled) return;
          if (predicate(s)) {
            finish(() => resolve(s));
            return;
          }
        } while (again && !settled);
      } catch (e) {
        finish(() => reject(e));
      } finally {
        checking = false;
      }
    };
    client.watch(path, () => void check()).then(
      (u) => {
        if (settled) void u().catch(() => undefined);
        else unwatch = u;
      },
      (e) => finish(() => reject(e)),
    );
  });
}

/** What {@link watchFrontends} needs of a guest's kernel. */
export interface HotplugHost {
  readonly domid: number;
  readonly xenbus: XenbusClient;
  readonly console: { log(...args: unknown[]): void };
  addDevice(name: string, dev: unknown): void;
}

/**
 * Hot-plug for one device type, as Linux's xenbus probe watches `device/<type>`:
 * connects each device the toolstack adds after boot (`known`: the ids connected
 * already) with `connect(id)` and adds it to the kernel's devices; one whose
 * handshake fails is logged on the console. A device that closed (a detach) is
 * forgotten once its directory is gone, so its id may come again.
 * @returns the function that stops watching.
 */
export async function watchFrontends<D extends { readonly name: string; readonly isClosed: boolean }>(
  k: HotplugHost, type: string, known: Iterable<string>, connect: (id: string) => Promise<D>,
): Promise<() => Promise<void>> {
  const base = `/local/domain/${k.domid}/device/${type}`;
  const connected = new Map<string, D | null>();
  for (const id of known) connected.set(id, null);
  const scan = async () => {
    const ids = await k.xenbus.directory(base).catch(() => [] as string[]);
    for (const [id, dev] of connected) if (!ids.includes(id) && (dev === null || dev.isClosed)) connected.delete(id);
    for (const id of ids) {
      if (connected.has(id)) continue;
      connected.set(id, null);
      try {
        const dev = await connect(id);
        connected.set(id, dev);
        k.addDevice(dev.name, dev);
      } catch (e) {
        connected.delete(id);
        k.console.log(`hot-plugged ${type} ${id}: ${(e as Error).message}`);
      }
    }
  };
  let chain = Promise.resolve();
  return k.xenbus.watch(base, () => {
    chain = chain.then(scan, scan);
  });
}
