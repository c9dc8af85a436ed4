/**
 * Bases for a new split driver's XenBus sides: a frontend class and a backend class
 * extend these and fill in what is theirs (which keys, which rings); the state walk,
 * its order and its races are done here once, as Linux's xenbus driver core and
 * blkfront/blkback do them:
 *
 * ```
 * backend:  Initialising ──start(): advertise()──▶ InitWait
 *           ──(frontend Initialised or Connected: connect())──▶ Connected
 *           frontend Closing ──disconnect()──▶ Closing;  frontend Closed ──▶ Closed
 *           frontend back to Initialising after Closed ──▶ InitWait (reconnectable)
 *           requestClose() (a detach): Closing first, then as above
 * frontend: Initialising ──connect(): (backend ≥ InitWait) setup(tx) in one
 *           transaction with Initialised──▶ Initialised
 *           ──(backend Connected: connected())──▶ Connected
 *           close() or backend Closing ──▶ Closing ──(backend ≥ Closing)──▶ Closed, teardown()
 * ```
 *
 * Directories: the backend's `/local/domain/<backend>/backend/<type>/<frontDomid>/<devid>`,
 * the frontend's `/local/domain/<frontDomid>/device/<type>/<devid>` (created with
 * their permissions by the toolstack, as xl does). Each side reacts to the state it
 * finds whenever it reads the other's (it tolerates a peer that moved ahead), and
 * runs its transitions one at a time.
 *
 * @see xen/include/public/io/xenbus.h, Linux drivers/xen/xenbus/xenbus_probe.c
 */
import { XenbusState, readState, switchState, waitForState } from './xenbus.ts';
import type { XenbusClient, XenbusTransaction, Unwatch } from './client.ts';

/** What a device side needs of its domain: its id and its XenStore client. */
export interface XenbusHost {
  readonly domid: number;
  readonly xenbus: XenbusClient;
  readonly console?: { log(...args: unknown[]): void };
}

/** The backend directory of a device. */
export function backendDir(backendDomid: number, type: string, frontDomid: number, devid: number): string {
  return `/local/domain/${backendDomid}/backend/${type}/${frontDomid}/${devid}`;
}

/** The frontend directory of a device. */
export function frontendDir(frontDomid: number, type: string, devid: number): string {
  return `/local/domain/${frontDomid}/device/${type}/${devid}`;
}

/**
 * A device's backend side: extend it, implement {@link advertise},
 * {@link connectRings} and {@link disconnectRings}, then call {@link start}.
 */
export abstract class XenbusBackend {
  readonly backendDir: string;
  readonly frontendDir: string;
  /** The state this side last wrote. */
  state: XenbusState = XenbusState.Initialising;
  /** Transitions so far, in order (for logs and tests). */
  readonly history: XenbusState[] = [];
  private busy: Promise<void> = Promise.resolve();
  private unwatch: Unwatch | null = null;
  private destroyed = false;

  constructor(protected readonly host: XenbusHost, readonly type: string, readonly frontDomid: number, readonly devid: number) {
    this.backendDir = backendDir(host.domid, type, frontDomid, devid);
    this.frontendDir = frontendDir(frontDomid, type, devid);
  }

  /** Writes the backend's feature keys (before InitWait: the frontend reads them first). */
  protected abstract advertise(tx: XenbusTransaction): Promise<void>;
  /** The frontend is ready: map its rings, bind its ports, write what the frontend reads at Connected. */
  protected abstract connectRings(): Promise<void>;
  /** Unmap and unbind what {@link connectRings} set up (called more than once: idempotent). */
  protected abstract disconnectRings(): Promise<void> | void;

  /** Advertises, goes InitWait and follows the frontend's state from then on. */
  async start(): Promise<void> {
    await this.host.xenbus.transaction(async (tx) => {
      await this.advertise(tx);
      await tx.write(`${this.backendDir}/state`, String(XenbusState.InitWait));
    });
    this.note(XenbusState.InitWait);
    this.unwatch = await this.host.xenbus.watch(`${this.frontendDir}/state`, () => this.serialize(() => this.frontendChanged()));
  }

  /** A detach while the frontend runs: Closing, which asks the frontend to close. */
  requestClose(): Promise<void> {
    return this.serialize(async () => {
      if (!this.destroyed && this.state !== XenbusState.Closing && this.state !== XenbusState.Closed) await this.setState(XenbusState.Closing);
    });
  }

  /** The end: stop following the frontend, disconnect, Closed, remove the backend directory. */
  destroy(): Promise<void> {
    return this.serialize(async () => {
      if (this.destroyed) return;
      this.destroyed = true;
      await this.unwatch?.().catch(() => undefined);
      await this.disconnectRings();
      await this.setState(XenbusState.Closed).catch(() => undefined);
      await this.host.xenbus.rm(this.backendDir).catch(() => undefined);
    });
  }

  private serialize(fn: () => Promise<void>): Promise<void> {
    const p = this.busy.then(fn);
    this.busy = p.catch((e: Error) => this.host.console?.log(`${this.type} backend ${this.frontDomid}/${this.devid}: ${e.message}`));
    return p;
  }

  private note(s: XenbusState): void {
    this.state = s;
    this.history.push(s);
  }

  private async setState(s: XenbusState): Promise<void> {
    await switchState(this.host.xenbus, this.backendDir, s);
    this.note(s);
  }

  private async frontendChanged(): Promise<void> {
    if (this.destroyed) return;
    const fs = await readState(this.host.xenbus, this.frontendDir);
    switch (fs) {
      case XenbusState.Initialised:
      case XenbusState.Connected:
        if (this.state === XenbusState.InitWait) {
          await this.connectRings();
          await this.setState(XenbusState.Connected);
        }
        break;
      case XenbusState.Closing:
        await this.disconnectRings();
        if (this.state !== XenbusState.Closed && this.state !== XenbusState.Closing) await this.setState(XenbusState.Closing);
        break;
      case XenbusState.Closed:
        await this.disconnectRings();
        if (this.state !== XenbusState.Closed) await this.setState(XenbusState.Closed);
        break;
      case XenbusState.Initialising:
        if (this.state === XenbusState.Closed) await this.setState(XenbusState.InitWait);
        break;
      default:
        break;
    }
  }
}

/**
 * A device's frontend side: extend it, implement {@link setupRings},
 * {@link backendConnected} and {@link teardownRings}, then call {@link connect}.
 */
export abstract class XenbusFrontend {
  readonly dir: string;
  /** Read from the frontend directory's `backend` key by {@link connect}. */
  backendDir = '';
  backendId = -1;
  /** Transitions so far, in order. */
  readonly history: XenbusState[] = [];
  private closed = false;
  private unwatch: Unwatch | null = null;

  constructor(protected readonly host: XenbusHost, readonly type: string, readonly devid: number) {
    this.dir = frontendDir(host.domid, type, devid);
  }

  /** Allocates, grants and binds what the device shares, and writes its keys in `tx` (the same transaction as Initialised). */
  protected abstract setupRings(tx: XenbusTransaction): Promise<void>;
  /** The backend is Connected: read its keys (sizes, features). */
  protected abstract backendConnected(): Promise<void>;
  /** Ends the grants and closes the ports {@link setupRings} made (after the backend let go). */
  protected abstract teardownRings(): Promise<void> | void;

  /** Whether {@link close} has begun. */
  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * The handshake: waits for the backend's InitWait, sets up and goes Initialised in
   * one transaction, waits for Connected, goes Connected; then follows the backend
   * (its Closing closes this side).
   * @throws TimeoutError (from waitForState) when the backend does not get there in
   *   `timeoutMs` (default 30 000); Error when it goes Closing instead.
   */
  async connect(timeoutMs = 30_000): Promise<void> {
    const xb = this.host.xenbus;
    this.backendDir = await xb.read(`${this.dir}/backend`);
    this.backendId = Number(await xb.read(`${this.dir}/backend-id`));
    await waitForState(xb, this.backendDir, (s) => s >= XenbusState.InitWait, { timeoutMs });
    await xb.transaction(async (tx) => {
      await this.setupRings(tx);
      await tx.write(`${this.dir}/state`, String(XenbusState.Initialised));
    });
    this.history.push(XenbusState.Initialised);
    const s = await waitForState(xb, this.backendDir, (x) => x === XenbusState.Connected || x >= XenbusState.Closing, { timeoutMs });
    if (s !== XenbusState.Connected) throw new Error(`${this.type}/${this.devid}: backend went ${XenbusState[s]}`);
    await this.backendConnected();
    await switchState(xb, this.dir, XenbusState.Connected);
    this.history.push(XenbusState.Connected);
    this.unwatch = await xb.watch(`${this.backendDir}/state`, () => {
      void readState(xb, this.backendDir).then((st) => {
        if ((st >= XenbusState.Closing || st === XenbusState.Unknown) && !this.closed) void this.close().catch(() => undefined);
      });
    });
  }

  /** Closing, waits for the backend to follow, Closed, then releases what was shared. Idempotent. */
  async close(timeoutMs = 5000): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const xb = this.host.xenbus;
    await this.unwatch?.().catch(() => undefined);
    await switchState(xb, this.dir, XenbusState.Closing);
    this.history.push(XenbusState.Closing);
    await waitForState(xb, this.backendDir, (s) => s >= XenbusState.Closing || s === XenbusState.Unknown, { timeoutMs }).catch(() => undefined);
    await switchState(xb, this.dir, XenbusState.Closed);
    this.history.push(XenbusState.Closed);
    await waitForState(xb, this.backendDir, (s) => s === XenbusState.Closed || s === XenbusState.Unknown, { timeoutMs }).catch(() => undefined);
    await this.teardownRings();
  }
}
