/**
 * The xenbus client (the guest side of XenStore, Linux's `xenbus_xs.c`) and the
 * transports that carry its bytes:
 *
 * - {@link ringTransport}: a guest over its `xenstore_domain_interface` page
 *   (Linux `xenbus_comms.c`): requests are streamed into the `req` ring, replies
 *   and watch events read from `rsp`;
 * - {@link ringServer}: xenstored's end of the same page, feeding an
 *   {@link XsConnection};
 * - {@link directTransport} / {@link connectLocal}: an in-process client of a
 *   {@link Xenstored} (dom0 runs xenstored itself).
 *
 * All of it is pure logic: wherever the peer must be signalled, a `notify`
 * callback is called (the owner sends on the event channel), and whoever owns
 * the event channel calls `pump()` when it fires.
 *
 * Every request is matched to its reply by `req_id`; replies may come out of
 * order and interleave with watch events. Every request has a deadline
 * ({@link XenbusClientOptions.timeoutMs}), after which it rejects with
 * {@link TimeoutError}; {@link XenbusClient.close} rejects whatever is pending.
 *
 * @see io/xs_wire.h, docs/misc/xenstore.txt, docs/misc/xenstore-ring.txt
 */
import { PvioError, ProtocolError, TimeoutError, invariant } from '../rings/errors.ts';
import {
  XENSTORE_ERROR_NONE,
  XENSTORE_ERROR_PROTO,
  XENSTORE_ERROR_RINGIDX,
  XENSTORE_RING_SIZE,
  XENSTORE_SERVER_FEATURE_ERROR,
  xenstoreControlWord,
  xenstoreDaemonEnds,
  xenstoreGuestEnds,
  type XenstoreDaemonEnds,
  type XenstoreGuestEnds,
} from '../rings/xenstore-ring.ts';
import {
  encodeMessage,
  fromUtf8,
  MessageDecoder,
  nulTerminated,
  splitNul,
  writePayload,
  XENSTORE_PAYLOAD_MAX,
  XsdSockmsgType as T,
  xsTypeName,
  type XsErrno,
} from './wire.ts';
import { formatPerm, parsePerm, type Xenstored, type XsConnection, type XsPerm } from './xenstored.ts';

/**
 * xenstored answered a request with `XS_ERROR`. `errno` is the name it sent
 * (`ENOENT`, `EACCES`, `EAGAIN`, ... — see `XSD_ERRORS`), or a name the client
 * chose for a request it refused to send (`E2BIG` for a payload over 4096 bytes,
 * `EEXIST` for a watch token already in use).
 */
export class XenStoreError extends PvioError {
  /** The errno name, e.g. `ENOENT`. */
  readonly errno: XsErrno | string;
  constructor(errno: XsErrno | string, message: string) {
    super('PVIO_ERR_XENSTORE', message);
    this.errno = errno;
  }
}

/** The client was closed (or its transport failed) while a request was pending. */
export class XenbusClosedError extends PvioError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('PVIO_ERR_XENBUS_CLOSED', message, options);
  }
}

/** True when `e` is a {@link XenStoreError} with errno `errno`. */
export function isXenStoreErrno(e: unknown, errno: XsErrno): boolean {
  return e instanceof XenStoreError && e.errno === errno;
}

/**
 * How a {@link XenbusClient} sends bytes. `send` takes one whole encoded message
 * (the transport streams it if it must). A transport that delivers bytes by
 * itself implements `bind`, which the client calls once from its constructor
 * with its `receive` and a `fail` to call when the transport breaks.
 */
export interface XenbusTransport {
  send(bytes: Uint8Array): void;
  bind?(receive: (bytes: Uint8Array) => void, fail: (err: Error) => void): void;
}

/** Options of a {@link XenbusClient}. */
export interface XenbusClientOptions {
  /** Deadline of each request in milliseconds (default 30 000). */
  readonly timeoutMs?: number;
  /** Attempts of a transaction body before `EAGAIN` is thrown (default 20). */
  readonly transactionRetries?: number;
  /**
   * Receives what a watch callback throws. Default: rethrown from a microtask
   * (an uncaught error, as an EventEmitter without an `'error'` listener).
   */
  readonly onWatchError?: (err: unknown) => void;
}

/** Called for each watch event with the changed path (relative if the watch was) and the token. */
export type WatchCallback = (path: string, token: string) => void;

/** Removes a watch; resolves when xenstored acknowledged (at once if closed). */
export type Unwatch = () => Promise<void>;

/** Counters of one client. */
export interface XenbusClientCounters {
  requests: number;
  replies: number;
  errors: number;
  timeouts: number;
  watchEvents: number;
  /** Replies whose `req_id` matched nothing pending (late, after a timeout). */
  unmatched: number;
  transactionRetries: number;
}

type Rpc = (type: number, payload: Uint8Array, what: string) => Promise<Uint8Array>;

const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_TX_RETRIES = 20;

/**
 * The node operations, shared by the client (outside any transaction) and a
 * {@link XenbusTransaction}. Paths are absolute, or relative to the domain's
 * home `/local/domain/<domid>`. Every method rejects with {@link XenStoreError}
 * (xenstored's errno), {@link TimeoutError} or {@link XenbusClosedError}.
 */
export abstract class XenbusOperations {
  /** @param rpc sends one request in this context and resolves with the reply payload. */
  protected constructor(private readonly rpc: Rpc) {}

  /** Reads a node's value as UTF-8 text. `ENOENT` when missing, `EACCES` when not readable. */
  async read(path: string): Promise<string> {
    return fromUtf8(await this.readBytes(path));
  }

  /** Reads a node's value as bytes. */
  readBytes(path: string): Promise<Uint8Array> {
    return this.rpc(T.READ, nulTerminated(path), path);
  }

  /** Reads a node's value, or `undefined` when it does not exist. */
  async readOptional(path: string): Promise<string | undefined> {
    try {
      return await this.read(path);
    } catch (e) {
      if (isXenStoreErrno(e, 'ENOENT')) return undefined;
      throw e;
    }
  }

  /**
   * Writes a value (text as UTF-8, or bytes), creating the node and missing
   * parents. `E2BIG` when over the entry-size quota, `ENOSPC` at the node quota.
   */
  async write(path: string, value: string | Uint8Array): Promise<void> {
    await this.rpc(T.WRITE, writePayload(path, value), path);
  }

  /** Creates a node with an empty value (and missing parents); fine if it exists. */
  async mkdir(path: string): Promise<void> {
    await this.rpc(T.MKDIR, nulTerminated(path), path);
  }

  /** Removes a node and everything below it; fine if missing while its parent exists. */
  async rm(path: string): Promise<void> {
    await this.rpc(T.RM, nulTerminated(path), path);
  }

  /** The names (not paths) of a node's children. */
  async directory(path: string): Promise<string[]> {
    return splitNul(await this.rpc(T.DIRECTORY, nulTerminated(path), path));
  }

  /**
   * A node's permission list (first entry: owner and default).
   * @throws ProtocolError when xenstored sends an unparsable permission.
   */
  async getPerms(path: string): Promise<XsPerm[]> {
    const parts = splitNul(await this.rpc(T.GET_PERMS, nulTerminated(path), path));
    return parts.map((s) => {
      const p = parsePerm(s);
      if (!p) throw new ProtocolError(`GET_PERMS ${path}: bad permission ${JSON.stringify(s)}`);
      return p;
    });
  }

  /**
   * Replaces a node's permission list (owner only; an unprivileged domain may
   * not change the owner: `EPERM`).
   */
  async setPerms(path: string, perms: readonly XsPerm[]): Promise<void> {
    invariant(perms.length > 0, 'setPerms: empty permission list');
    await this.rpc(T.SET_PERMS, nulTerminated(path, ...perms.map(formatPerm)), path);
  }
}

/**
 * The operations of one open transaction (its `tx_id` goes in every request).
 * Obtained from {@link XenbusClient.transaction}, valid only inside its body.
 */
export class XenbusTransaction extends XenbusOperations {
  /** @internal Created by {@link XenbusClient.transaction}. */
  constructor(readonly id: number, rpc: Rpc) {
    super(rpc);
  }
}

interface Pending {
  readonly type: number;
  readonly what: string;
  readonly resolve: (payload: Uint8Array) => void;
  readonly reject: (err: Error) => void;
  readonly timer: NodeJS.Timeout;
}

/**
 * The xenbus client: promise-returning XenStore operations over a
 * {@link XenbusTransport}. The transport's owner calls {@link receive} with
 * bytes from xenstored (or the transport does it, through `bind`).
 */
export class XenbusClient extends XenbusOperations {
  /** Counters. */
  readonly counters: XenbusClientCounters = {
    requests: 0, replies: 0, errors: 0, timeouts: 0, watchEvents: 0, unmatched: 0, transactionRetries: 0,
  };
  private readonly decoder = new MessageDecoder();
  private readonly pending = new Map<number, Pending>();
  private readonly watches = new Map<string, { path: string; cb: WatchCallback }>();
  private readonly timeoutMs: number;
  private readonly txRetries: number;
  private readonly onWatchError: (err: unknown) => void;
  private nextReqId = 1;
  private tokenSeq = 0;
  private closedBy: Error | undefined;

  /**
   * @param transport carries encoded requests to xenstored.
   * @throws InvariantError for a non-positive timeout or retry count.
   */
  constructor(private readonly transport: XenbusTransport, options: XenbusClientOptions = {}) {
    super((type, payload, what) => this.call(type, payload, 0, what));
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.txRetries = options.transactionRetries ?? DEFAULT_TX_RETRIES;
    invariant(this.timeoutMs > 0 && this.txRetries > 0, 'XenbusClient: timeout and retries must be positive');
    this.onWatchError = options.onWatchError ?? ((err) => queueMicrotask(() => { throw err; }));
    transport.bind?.((bytes) => this.receive(bytes), (err) => this.fail(err));
  }

  /** True once closed (by {@link close} or a broken transport). */
  get closed(): boolean {
    return this.closedBy !== undefined;
  }

  /** Requests waiting for a reply. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /**
   * Feeds bytes from xenstored (any split of the stream): completes pending
   * requests and runs watch callbacks. A stream that breaks the protocol
   * (payload over 4096 bytes) closes the client: pending requests reject with
   * the {@link ProtocolError}. Ignored after close.
   */
  receive(bytes: Uint8Array): void {
    if (this.closedBy) return;
    let msgs;
    try {
      msgs = this.decoder.push(bytes);
    } catch (e) {
      if (e instanceof ProtocolError) {
        this.fail(e);
        return;
      }
      throw e;
    }
    for (const m of msgs) {
      if (this.closedBy) return;
      if (m.type === T.WATCH_EVENT) {
        this.dispatchEvent(m.payload);
        continue;
      }
      const p = this.pending.get(m.reqId);
      if (!p) {
        this.counters.unmatched++;
        continue;
      }
      this.pending.delete(m.reqId);
      clearTimeout(p.timer);
      this.counters.replies++;
      if (m.type === T.ERROR) {
        this.counters.errors++;
        const errno = splitNul(m.payload)[0] ?? 'EIO';
        p.reject(new XenStoreError(errno, `${xsTypeName(p.type)} ${p.what}: ${errno}`));
      } else if (m.type !== p.type) {
        p.reject(new ProtocolError(`${xsTypeName(p.type)} ${p.what}: reply of type ${xsTypeName(m.type)}`));
      } else {
        p.resolve(m.payload);
      }
    }
  }

  /**
   * Registers a watch on `path` (absolute, relative, or `@introduceDomain` /
   * `@releaseDomain`). xenstored fires it once at once, then on every change of
   * the path or below it (writes, removals, permission changes). Events may be
   * spurious; re-read what you need.
   *
   * @param token optional; a unique one is made up when omitted. Tokens must be
   *   unique within this client (`EEXIST` otherwise).
   * @returns the function that removes the watch.
   */
  watch(path: string, cb: WatchCallback): Promise<Unwatch>;
  watch(path: string, token: string | undefined, cb: WatchCallback): Promise<Unwatch>;
  async watch(path: string, a: string | undefined | WatchCallback, b?: WatchCallback): Promise<Unwatch> {
    const cb = typeof a === 'function' ? a : b;
    invariant(cb !== undefined, 'watch: no callback');
    const token = typeof a === 'string' ? a : `pvio-watch-${++this.tokenSeq}`;
    if (this.watches.has(token)) throw new XenStoreError('EEXIST', `WATCH ${path}: token ${token} is in use`);
    const entry = { path, cb };
    this.watches.set(token, entry);
    try {
      await this.call(T.WATCH, nulTerminated(path, token), 0, path);
    } catch (e) {
      if (this.watches.get(token) === entry) this.watches.delete(token);
      throw e;
    }
    let removed = false;
    return async () => {
      if (removed) return;
      removed = true;
      if (this.watches.get(token) === entry) this.watches.delete(token);
      if (this.closedBy) return;
      await this.call(T.UNWATCH, nulTerminated(path, token), 0, path);
    };
  }

  /** `/local/domain/<domid>`, as xenstored reports it. */
  async getDomainPath(domid: number): Promise<string> {
    return splitNul(await this.call(T.GET_DOMAIN_PATH, nulTerminated(String(domid)), 0, `domid ${domid}`))[0] ?? '';
  }

  /**
   * Runs `body` in a transaction and commits it. When the commit (or an
   * operation in the body) fails with `EAGAIN` — something the transaction read
   * or wrote changed meanwhile — the whole body runs again in a new transaction,
   * up to `transactionRetries` times. If the body throws anything else, the
   * transaction is aborted and the error rethrown.
   *
   * @returns what the body returned on the attempt that committed.
   * @throws XenStoreError `EAGAIN` when every attempt conflicted.
   */
  async transaction<R>(body: (tx: XenbusTransaction) => Promise<R>): Promise<R> {
    for (let attempt = 1; ; attempt++) {
      const reply = await this.call(T.TRANSACTION_START, nulTerminated(''), 0, 'start');
      const idText = splitNul(reply)[0] ?? '';
      if (!/^[0-9]{1,10}$/.test(idText) || Number(idText) === 0 || Number(idText) > 0xffff_ffff) {
        throw new ProtocolError(`TRANSACTION_START: bad transaction id ${JSON.stringify(idText)}`);
      }
      const id = Number(idText);
      const tx = new XenbusTransaction(id, (type, payload, what) => this.call(type, payload, id, what));
      let result: R;
      try {
        result = await body(tx);
      } catch (e) {
        await this.call(T.TRANSACTION_END, nulTerminated('F'), id, `abort ${id}`).catch(() => undefined);
        if (isXenStoreErrno(e, 'EAGAIN') && attempt < this.txRetries) {
          this.counters.transactionRetries++;
          continue;
        }
        throw e;
      }
      try {
        await this.call(T.TRANSACTION_END, nulTerminated('T'), id, `commit ${id}`);
        return result;
      } catch (e) {
        if (isXenStoreErrno(e, 'EAGAIN') && attempt < this.txRetries) {
          this.counters.transactionRetries++;
          continue;
        }
        throw e;
      }
    }
  }

  /** Closes the client: pending requests reject with {@link XenbusClosedError}; watches are dropped. */
  close(): void {
    this.fail(new XenbusClosedError('xenbus client closed'));
  }

  // ---- internals ----------------------------------------------------------

  private fail(err: Error): void {
    if (this.closedBy) return;
    this.closedBy = err;
    this.watches.clear();
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(err instanceof XenbusClosedError ? err : new XenbusClosedError(`xenbus closed: ${err.message}`, { cause: err }));
    }
  }

  private dispatchEvent(payload: Uint8Array): void {
    const parts = splitNul(payload);
    if (parts.length < 2) return; // malformed event: ignore (spurious events are allowed anyway)
    const [path, token] = parts;
    const w = this.watches.get(token);
    if (!w) return;
    this.counters.watchEvents++;
    try {
      w.cb(path, token);
    } catch (e) {
      this.onWatchError(e);
    }
  }

  private allocReqId(): number {
    let id = this.nextReqId;
    while (this.pending.has(id)) id = (id + 1) >>> 0;
    this.nextReqId = (id + 1) >>> 0;
    return id;
  }

  private call(type: number, payload: Uint8Array, txId: number, what: string): Promise<Uint8Array> {
    if (this.closedBy) {
      const err = this.closedBy instanceof XenbusClosedError ? this.closedBy : new XenbusClosedError(`xenbus closed: ${this.closedBy.message}`, { cause: this.closedBy });
      return Promise.reject(err);
    }
    if (payload.byteLength > XENSTORE_PAYLOAD_MAX) {
      return Promise.reject(new XenStoreError('E2BIG', `${xsTypeName(type)} ${what}: payload of ${payload.byteLength} bytes is over ${XENSTORE_PAYLOAD_MAX}`));
    }
    const reqId = this.allocReqId();
    this.counters.requests++;
    return new Promise<Uint8Array>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending.get(reqId)?.timer !== timer) return;
        this.pending.delete(reqId);
        this.counters.timeouts++;
        reject(new TimeoutError(`${xsTypeName(type)} ${what}: no reply from xenstored in ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.pending.set(reqId, { type, what, resolve, reject, timer });
      try {
        this.transport.send(encodeMessage({ type, reqId, txId, payload }));
      } catch (e) {
        clearTimeout(timer);
        this.pending.delete(reqId);
        reject(e as Error);
      }
    });
  }
}

// ---------------------------------------------------------------------------
// In-process transport (dom0 runs xenstored itself)

/**
 * Connects a client to an {@link XsConnection} in the same thread. Both
 * directions are delivered from microtasks, so no callback runs inside the call
 * that caused it. Sending on a closed connection fails the client.
 */
export function directTransport(conn: XsConnection): XenbusTransport {
  let fail: ((err: Error) => void) | undefined;
  return {
    send(bytes) {
      queueMicrotask(() => {
        if (conn.closed) {
          fail?.(new XenbusClosedError(`xenstored connection of domain ${conn.domid} is closed`));
          return;
        }
        try {
          conn.receive(bytes);
        } catch (e) {
          if (e instanceof ProtocolError) fail?.(e);
          else throw e;
        }
      });
    },
    bind(receive, onFail) {
      fail = onFail;
      conn.setSink((msg) => queueMicrotask(() => receive(msg)));
    },
  };
}

/**
 * A client for `domid` talking to `xenstored` in-process (dom0, or tests).
 * Opens a new connection.
 */
export function connectLocal(xenstored: Xenstored, domid: number, options?: XenbusClientOptions): XenbusClient {
  return new XenbusClient(directTransport(xenstored.connect(domid)), options);
}

// ---------------------------------------------------------------------------
// Ring transports

/** Most bytes one `pump()` reads before returning (the peer cannot keep us spinning). */
const PUMP_READ_BUDGET = 16 * XENSTORE_RING_SIZE;

/** Counters of a ring end (guest transport or xenstored server). */
export interface XenstoreRingCounters {
  /** Calls to `notify` (one per index update). */
  notifications: number;
  /** Bytes written into the outgoing ring. */
  bytesOut: number;
  /** Bytes read from the incoming ring. */
  bytesIn: number;
  /** Most bytes queued for the outgoing ring at once. */
  maxQueued: number;
}

/** A FIFO of byte chunks written into a byte ring as space allows. */
class OutQueue {
  private readonly chunks: Uint8Array[] = [];
  private head = 0;
  bytes = 0;

  push(b: Uint8Array): void {
    if (b.byteLength === 0) return;
    this.chunks.push(b);
    this.bytes += b.byteLength;
  }

  /** Writes what fits; calls `onWrite(n)` after each index update. */
  flush(write: (b: Uint8Array) => number, onWrite: (n: number) => void): void {
    while (this.chunks.length > 0) {
      const c = this.chunks[0];
      const n = write(c.subarray(this.head));
      if (n === 0) return;
      this.head += n;
      this.bytes -= n;
      onWrite(n);
      if (this.head === c.byteLength) {
        this.chunks.shift();
        this.head = 0;
      }
    }
  }

  clear(): void {
    this.chunks.length = 0;
    this.head = 0;
    this.bytes = 0;
  }
}

/**
 * A guest's transport over its XenStore page. `send` streams the message into
 * the `req` ring as space allows and queues the rest; {@link pump}, which the
 * owner calls whenever the XenStore event channel fires, reads the `rsp` ring
 * into the client and continues queued writes. `notify` is called after every
 * index update. A broken ring (impossible index, or xenstored's `error` field
 * set) fails the client with a {@link ProtocolError}, after which the transport
 * does nothing.
 */
export class XenbusRingTransport implements XenbusTransport {
  /** Counters. */
  readonly counters: XenstoreRingCounters = { notifications: 0, bytesOut: 0, bytesIn: 0, maxQueued: 0 };
  private readonly ends: XenstoreGuestEnds;
  private readonly errorWord: Uint32Array;
  private readonly out = new OutQueue();
  private readonly scratch = new Uint8Array(XENSTORE_RING_SIZE);
  private receiver: ((bytes: Uint8Array) => void) | undefined;
  private onFail: ((err: Error) => void) | undefined;
  private failure: Error | undefined;

  /**
   * @param page the guest's XenStore page (4096 bytes, normally a SharedArrayBuffer).
   * @param notify signals xenstored (event-channel send).
   */
  constructor(page: Uint8Array, private readonly notify: () => void) {
    this.ends = xenstoreGuestEnds(page);
    this.errorWord = xenstoreControlWord(page, 'error');
  }

  /** The error that stopped this transport, if any. */
  get error(): Error | undefined {
    return this.failure;
  }

  /** Bytes queued for the `req` ring. */
  get queuedBytes(): number {
    return this.out.bytes;
  }

  /** Called by the client's constructor. */
  bind(receive: (bytes: Uint8Array) => void, fail: (err: Error) => void): void {
    this.receiver = receive;
    this.onFail = fail;
  }

  /** Queues one encoded message and writes as much as fits now. */
  send(bytes: Uint8Array): void {
    if (this.failure) throw this.failure;
    this.out.push(bytes);
    this.counters.maxQueued = Math.max(this.counters.maxQueued, this.out.bytes);
    this.guard(() => this.flush());
  }

  /**
   * Reads available replies and events (at most 16 KiB per call) into the
   * client, then continues queued writes. Call when the event channel fires.
   * Never throws for a peer's fault.
   */
  pump(): void {
    if (this.failure) return;
    this.guard(() => {
      const e = Atomics.load(this.errorWord, 0);
      if (e !== XENSTORE_ERROR_NONE) throw new ProtocolError(`xenstored reported ring error ${e}`);
      let budget = PUMP_READ_BUDGET;
      while (budget > 0 && !this.failure) {
        const n = this.ends.rsp.read(this.scratch.subarray(0, Math.min(budget, this.scratch.byteLength)));
        if (n === 0) break;
        budget -= n;
        this.counters.bytesIn += n;
        this.signal();
        this.receiver?.(this.scratch.slice(0, n));
      }
      this.flush();
    });
  }

  private flush(): void {
    if (this.failure) return;
    this.out.flush((b) => this.ends.req.write(b), (n) => {
      this.counters.bytesOut += n;
      this.signal();
    });
  }

  private signal(): void {
    this.counters.notifications++;
    this.notify();
  }

  private guard(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      this.failure = e;
      this.out.clear();
      this.onFail?.(e);
    }
  }
}

/**
 * A guest's XenStore transport over its page; pass it to `new XenbusClient()`.
 * @see XenbusRingTransport
 */
export function ringTransport(page: Uint8Array, notify: () => void): XenbusRingTransport {
  return new XenbusRingTransport(page, notify);
}

/** Options of a {@link XenstoreRingServer}. */
export interface XenstoreRingServerOptions {
  /**
   * Stop reading requests while this many reply bytes wait for ring space
   * (back-pressure on a guest that does not read its replies). Default 64 KiB.
   */
  readonly maxQueuedBytes?: number;
  /** Called once when the server gives up on the ring (after `error` is set). */
  readonly onError?: (err: ProtocolError) => void;
}

/**
 * xenstored's end of a guest's XenStore page: {@link pump} reads requests from
 * the `req` ring into the connection, and replies and watch events are written
 * into the `rsp` ring as space allows (the rest waits for the next pump or the
 * next message). `notify` is called after every index update.
 *
 * A guest that writes an impossible index or a payload over 4096 bytes loses
 * its connection: the page's `error` field is set (`XENSTORE_ERROR_RINGIDX` /
 * `XENSTORE_ERROR_PROTO`), the guest is notified, and the server stops.
 */
export class XenstoreRingServer {
  /** Counters. */
  readonly counters: XenstoreRingCounters = { notifications: 0, bytesOut: 0, bytesIn: 0, maxQueued: 0 };
  private readonly ends: XenstoreDaemonEnds;
  private readonly errorWord: Uint32Array;
  private readonly out = new OutQueue();
  private readonly scratch = new Uint8Array(XENSTORE_RING_SIZE);
  private readonly maxQueued: number;
  private readonly onError: XenstoreRingServerOptions['onError'];
  private failure: ProtocolError | undefined;

  /**
   * @param page the guest's XenStore page, mapped by dom0.
   * @param conn the guest's connection (its sink is set to this server).
   * @param notify signals the guest (event-channel send).
   */
  constructor(page: Uint8Array, private readonly conn: XsConnection, private readonly notify: () => void, options: XenstoreRingServerOptions = {}) {
    this.ends = xenstoreDaemonEnds(page);
    this.errorWord = xenstoreControlWord(page, 'error');
    this.maxQueued = options.maxQueuedBytes ?? 64 * 1024;
    this.onError = options.onError;
    Atomics.or(xenstoreControlWord(page, 'server_features'), 0, XENSTORE_SERVER_FEATURE_ERROR);
    conn.setSink((msg) => {
      if (this.failure) return;
      this.out.push(msg);
      this.counters.maxQueued = Math.max(this.counters.maxQueued, this.out.bytes);
      this.flush();
    });
  }

  /** The protocol violation that stopped this server, if any. */
  get error(): ProtocolError | undefined {
    return this.failure;
  }

  /** Reply bytes waiting for ring space. */
  get queuedBytes(): number {
    return this.out.bytes;
  }

  /**
   * Reads pending requests (at most 16 KiB per call, none while the reply queue
   * is over its limit) into the connection, then writes queued replies. Call
   * when the guest's event channel fires. Never throws for a guest's fault.
   */
  pump(): void {
    if (this.failure || this.conn.closed) return;
    this.flush();
    let budget = PUMP_READ_BUDGET;
    while (budget > 0 && !this.failure && !this.conn.closed && this.out.bytes < this.maxQueued) {
      let n: number;
      try {
        n = this.ends.req.read(this.scratch.subarray(0, Math.min(budget, this.scratch.byteLength)));
      } catch (e) {
        if (e instanceof ProtocolError) return this.die(XENSTORE_ERROR_RINGIDX, e);
        throw e;
      }
      if (n === 0) break;
      budget -= n;
      this.counters.bytesIn += n;
      this.signal();
      try {
        this.conn.receive(this.scratch.subarray(0, n));
      } catch (e) {
        if (e instanceof ProtocolError) return this.die(XENSTORE_ERROR_PROTO, e);
        throw e;
      }
    }
    this.flush();
  }

  private flush(): void {
    if (this.failure) return;
    try {
      this.out.flush((b) => this.ends.rsp.write(b), (n) => {
        this.counters.bytesOut += n;
        this.signal();
      });
    } catch (e) {
      if (e instanceof ProtocolError) this.die(XENSTORE_ERROR_RINGIDX, e);
      else throw e;
    }
  }

  private signal(): void {
    this.counters.notifications++;
    this.notify();
  }

  private die(code: number, err: ProtocolError): void {
    if (this.failure) return;
    this.failure = err;
    this.out.clear();
    this.conn.close();
    Atomics.store(this.errorWord, 0, code);
    this.signal();
    this.onError?.(err);
  }
}

/**
 * xenstored's server for one guest's XenStore page.
 * @see XenstoreRingServer
 */
export function ringServer(page: Uint8Array, conn: XsConnection, notify: () => void, options?: XenstoreRingServerOptions): XenstoreRingServer {
  return new XenstoreRingServer(page, conn, notify, options);
}
