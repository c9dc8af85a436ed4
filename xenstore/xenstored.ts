/**
 * xenstored: the XenStore daemon's logic (it runs in dom0). Pure logic — it
 * knows nothing of rings, workers or event channels: a connection is fed raw
 * bytes with {@link XsConnection.receive} and answers through the `send`
 * callback it was given (see `ringServer` in `client.ts` for the ring side).
 *
 * What it keeps (docs/misc/xenstore.txt):
 * - a tree of nodes, each with a value (bytes), a permission list and an ordered
 *   list of children. Permissions are `n`/`r`/`w`/`b` plus a domid; the first
 *   entry names the owner and gives the default for every domain not listed.
 *   The owner, and dom0 (privileged), may do anything;
 * - per connection: watches and open transactions;
 * - per domain: quotas (nodes owned, watches, open transactions, entry size),
 *   see {@link XenstoredQuota}. dom0 is exempt.
 *
 * Every request runs against a copy-on-write *overlay* of the tree and is
 * applied only when it succeeds, so a request that fails half-way (a quota hit
 * while creating parents) changes nothing. A transaction is a long-lived
 * overlay that records the generation number of every node it read or wrote;
 * its commit fails with `EAGAIN` when any of them changed since (a node that did
 * not exist counts as generation -1). Watch events of a transaction fire only on
 * commit.
 *
 * Errors are replies of type `XS_ERROR` carrying the errno name. Which errno a
 * quota answers with is the table {@link QUOTA_ERRNO}.
 *
 * @see docs/misc/xenstore.txt, io/xs_wire.h, tools/xenstored/ (C xenstored)
 */
import { invariant, ProtocolError } from '../rings/errors.ts';
import {
  encodeMessage,
  MessageDecoder,
  nulTerminated,
  splitFirstNul,
  splitNul,
  XENSTORE_ABS_PATH_MAX,
  XENSTORE_PAYLOAD_MAX,
  XENSTORE_REL_PATH_MAX,
  XsdSockmsgType as T,
  type XsErrno,
  type XsMessage,
} from './wire.ts';

/** A permission letter: none, read, write, both (docs/misc/xenstore.txt). */
export type XsPermLetter = 'n' | 'r' | 'w' | 'b';

/**
 * One entry of a node's permission list. In a list, the first entry's `domid` is
 * the owner and its `perm` the default for domains not listed after it.
 */
export interface XsPerm {
  readonly domid: number;
  readonly perm: XsPermLetter;
}

/** Formats a permission as on the wire: `{domid: 1, perm: 'r'}` → `"r1"`. */
export function formatPerm(p: XsPerm): string {
  return `${p.perm}${p.domid}`;
}

/**
 * Parses a wire permission (`"r1"`, `"b0"`); `undefined` when it is not a letter
 * `n`/`r`/`w`/`b` followed by a decimal domid below 65536.
 */
export function parsePerm(s: string): XsPerm | undefined {
  const m = /^([nrwb])([0-9]{1,5})$/.exec(s);
  if (!m) return undefined;
  const domid = Number(m[2]);
  if (domid > 0xffff) return undefined;
  return { domid, perm: m[1] as XsPermLetter };
}

/** `/local/domain/<domid>`: a domain's home, against which relative paths resolve. */
export function domainPath(domid: number): string {
  return `/local/domain/${domid}`;
}

/** `DOMID_FIRST_RESERVED` (xen.h): domids from here up are not real domains. */
const DOMID_FIRST_RESERVED = 0x7ff0;

/**
 * Per-domain limits for unprivileged domains (dom0 is exempt). Defaults are C
 * xenstored's (`quota_nb_entry_per_domain` etc. in xenstored_core.c).
 */
export interface XenstoredQuota {
  /** Nodes a domain may own (`quota_nb_entry_per_domain`, 1000). */
  readonly nodes: number;
  /** Watches a domain may hold (`quota_nb_watch_per_domain`, 128). */
  readonly watches: number;
  /** Transactions a domain may have open (`quota_max_transaction`, 10). */
  readonly transactions: number;
  /** Largest value a domain may write, in bytes (`quota_max_entry_size`, 2048). */
  readonly entrySize: number;
  /** Entries in a permission list a domain may set (`quota_nb_perms_per_node`, 5). */
  readonly permsPerNode: number;
  /** Nodes one transaction may touch (`quota_trans_nodes`, 1024). */
  readonly transactionNodes: number;
}

/** C xenstored's default quotas. */
export const XENSTORED_DEFAULT_QUOTA: XenstoredQuota = Object.freeze({
  nodes: 1000,
  watches: 128,
  transactions: 10,
  entrySize: 2048,
  permsPerNode: 5,
  transactionNodes: 1024,
});

/**
 * The errno each quota answers with, as C xenstored answers it: an over-long
 * node is `ENOSPC` (write_node_raw), the watch quota `E2BIG` (do_watch), every
 * other count quota `ENOSPC`. (oxenstored answers an over-long value with
 * `E2BIG`.) Clients should treat both as "quota exceeded".
 */
export const QUOTA_ERRNO: Readonly<Record<keyof XenstoredQuota, XsErrno>> = Object.freeze({
  nodes: 'ENOSPC',
  watches: 'E2BIG',
  transactions: 'ENOSPC',
  entrySize: 'ENOSPC',
  permsPerNode: 'ENOSPC',
  transactionNodes: 'ENOSPC',
});

/** Construction options of {@link Xenstored}. */
export interface XenstoredOptions {
  /** Quota overrides; unspecified ones keep {@link XENSTORED_DEFAULT_QUOTA}. */
  readonly quota?: Partial<XenstoredQuota>;
  /**
   * Called for an `XS_INTRODUCE` from dom0 (before `@introduceDomain` fires),
   * with the ring page's MFN and the event-channel port, so the caller can map
   * the page and start a ring server for the new domain.
   */
  readonly onIntroduce?: (domid: number, mfn: number, port: number) => void;
  /** Called for an `XS_RELEASE` from dom0, after the domain was released. */
  readonly onRelease?: (domid: number) => void;
}

/** Counters of one daemon (STYLE.md, "count everything"). */
export interface XenstoredCounters {
  /** Requests handled (all types). */
  requests: number;
  /** Requests answered with `XS_ERROR`. */
  errors: number;
  /** Watch events sent. */
  watchEvents: number;
  /** Transactions committed. */
  commits: number;
  /** Transaction commits refused with `EAGAIN`. */
  conflicts: number;
  /** Connections killed for a protocol violation. */
  protocolErrors: number;
}

/** A snapshot of one node, for inspection by dom0 code and tests. */
export interface XsNodeInfo {
  /** The value (a copy). */
  readonly value: Uint8Array;
  readonly perms: readonly XsPerm[];
  /** Child names (not paths), in creation order. */
  readonly children: readonly string[];
}

// ---------------------------------------------------------------------------
// Internals

/** A node of the tree. Nodes are immutable: a change makes a new object. */
interface XsNode {
  readonly value: Uint8Array;
  readonly perms: readonly XsPerm[];
  readonly children: readonly string[];
  /** Generation number: set from the daemon's counter each time it is stored. */
  readonly gen: number;
}

/** Thrown inside a request handler; becomes an `XS_ERROR` reply. */
class XsOpError extends Error {
  constructor(readonly errno: XsErrno) {
    super(errno);
  }
}

function fail(errno: XsErrno): never {
  throw new XsOpError(errno);
}

/** One change a request made, for watch matching after it is applied. */
interface Change {
  readonly path: string;
  /** Only watches on exactly `path` match (descendants removed by an rm). */
  readonly exact: boolean;
  /** Permission lists a watcher must be able to read one of (old and/or new). */
  readonly perms: ReadonlyArray<readonly XsPerm[]>;
}

/**
 * A copy-on-write view of the tree: reads fall through to the parent overlay or
 * the store, writes stay here until merged or applied. It records the generation
 * of each store node it looks at (for transaction conflicts) and the change in
 * the number of nodes each domain owns (for the node quota).
 */
class Overlay {
  readonly writes = new Map<string, XsNode | null>();
  readonly seen = new Map<string, number>();
  readonly delta = new Map<number, number>();
  readonly changes: Change[] = [];

  constructor(
    private readonly store: ReadonlyMap<string, XsNode>,
    private readonly owners: ReadonlyMap<number, number>,
    private readonly parent?: Overlay,
  ) {}

  get(path: string): XsNode | undefined {
    if (this.writes.has(path)) return this.writes.get(path) ?? undefined;
    if (this.parent) return this.parent.get(path);
    const n = this.store.get(path);
    if (!this.seen.has(path)) this.seen.set(path, n ? n.gen : -1);
    return n;
  }

  put(path: string, node: XsNode): void {
    this.account(this.get(path), node);
    this.writes.set(path, node);
  }

  remove(path: string): void {
    this.account(this.get(path), undefined);
    this.writes.set(path, null);
  }

  /** Nodes `domid` owns as this overlay sees the tree. */
  owned(domid: number): number {
    const base = this.parent ? this.parent.owned(domid) : (this.owners.get(domid) ?? 0);
    return base + (this.delta.get(domid) ?? 0);
  }

  /** Store nodes looked at plus nodes written, through all levels. */
  touched(): number {
    return (this.parent ? this.parent.touched() : this.seen.size) + this.writes.size;
  }

  /** Moves this overlay's writes, quota deltas and changes into its parent. */
  mergeIntoParent(): void {
    const p = this.parent;
    invariant(p !== undefined, 'merge of a top-level overlay');
    for (const [k, v] of this.writes) p.writes.set(k, v);
    for (const [d, n] of this.delta) p.delta.set(d, (p.delta.get(d) ?? 0) + n);
    p.changes.push(...this.changes);
  }

  /** True when a store node this overlay depends on changed since. */
  conflicts(): boolean {
    for (const [path, gen] of this.seen) {
      if ((this.store.get(path)?.gen ?? -1) !== gen) return true;
    }
    return false;
  }

  private account(old: XsNode | undefined, next: XsNode | undefined): void {
    if (old) this.delta.set(old.perms[0].domid, (this.delta.get(old.perms[0].domid) ?? 0) - 1);
    if (next) this.delta.set(next.perms[0].domid, (this.delta.get(next.perms[0].domid) ?? 0) + 1);
  }
}

interface Watch {
  /** Absolute path, or a special `@name`. */
  readonly path: string;
  readonly token: string;
  /** Registered with a relative path: events strip the domain path. */
  readonly relative: boolean;
  readonly conn: ConnState;
}

interface Transaction {
  readonly id: number;
  readonly overlay: Overlay;
}

interface ConnState {
  readonly domid: number;
  readonly decoder: MessageDecoder;
  readonly watches: Watch[];
  readonly transactions: Map<number, Transaction>;
  sink: ((msg: Uint8Array) => void) | undefined;
  backlog: Uint8Array[];
  closed: boolean;
}

/** What a tree operation needs: who asks, and the overlay it works on. */
type TreeCtx = Pick<Ctx, 'domid' | 'priv' | 'ov'>;

/** What one request may touch. */
interface Ctx {
  readonly st: ConnState;
  readonly domid: number;
  readonly priv: boolean;
  readonly ov: Overlay;
  readonly tx: Transaction | undefined;
}

const PATH_CHARS = /^[A-Za-z0-9\-/_@]+$/;
const EMPTY = new Uint8Array(0);
const OK = nulTerminated('OK');
/** Requests whose `tx_id` selects a transaction; the others ignore it. */
const TX_TYPES: ReadonlySet<number> = new Set([
  T.READ, T.WRITE, T.MKDIR, T.RM, T.DIRECTORY, T.GET_PERMS, T.SET_PERMS, T.TRANSACTION_END,
]);

function parentOf(path: string): string | undefined {
  if (path === '/') return undefined;
  const i = path.lastIndexOf('/');
  return i === 0 ? '/' : path.slice(0, i);
}

function baseName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

function childPath(parent: string, name: string): string {
  return parent === '/' ? `/${name}` : `${parent}/${name}`;
}

/** True when `path` is `under` or one of its descendants. */
function isUnder(path: string, under: string): boolean {
  return path === under || under === '/' || path.startsWith(`${under}/`);
}

function permOf(domid: number, perms: readonly XsPerm[]): { read: boolean; write: boolean; owner: boolean } {
  if (domid === 0 || perms[0].domid === domid) return { read: true, write: true, owner: true };
  let letter = perms[0].perm;
  for (let i = 1; i < perms.length; i++) {
    if (perms[i].domid === domid) {
      letter = perms[i].perm;
      break;
    }
  }
  return { read: letter === 'r' || letter === 'b', write: letter === 'w' || letter === 'b', owner: false };
}

function parseDomid(s: string | undefined): number {
  if (s === undefined || !/^[0-9]{1,5}$/.test(s)) fail('EINVAL');
  const d = Number(s);
  if (d > 0xffff) fail('EINVAL');
  return d;
}

function parseU53(s: string | undefined): number {
  if (s === undefined || !/^[0-9]{1,16}$/.test(s)) fail('EINVAL');
  const n = Number(s);
  if (!Number.isSafeInteger(n)) fail('EINVAL');
  return n;
}

/** The single NUL-terminated string of a one-argument payload (C `onearg`). */
function oneArg(payload: Uint8Array): string {
  const i = payload.indexOf(0);
  if (i < 0 || i !== payload.byteLength - 1) fail('EINVAL');
  return splitNul(payload)[0] ?? '';
}

function checkValidPath(abs: string): void {
  if (abs.length > XENSTORE_ABS_PATH_MAX || !PATH_CHARS.test(abs) || abs.includes('//')) fail('EINVAL');
  if (abs.length > 1 && abs.endsWith('/')) fail('EINVAL');
}

// ---------------------------------------------------------------------------

/**
 * One client connection to xenstored (a guest's ring, or an in-process client
 * in dom0). Created by {@link Xenstored.connect}, never directly.
 */
export class XsConnection {
  /** @internal Use {@link Xenstored.connect}. */
  constructor(
    private readonly state: ConnState,
    private readonly onBytes: (st: ConnState, bytes: Uint8Array) => void,
    private readonly onClose: (st: ConnState) => void,
  ) {}

  /** The domain this connection speaks for. */
  get domid(): number {
    return this.state.domid;
  }

  /** True once closed (by {@link close}, a release, or a protocol violation). */
  get closed(): boolean {
    return this.state.closed;
  }

  /** Watches registered on this connection. */
  get watchCount(): number {
    return this.state.watches.length;
  }

  /** Transactions open on this connection. */
  get transactionCount(): number {
    return this.state.transactions.size;
  }

  /**
   * Feeds raw bytes from the client (any split of the stream). Each complete
   * request is handled at once; replies and watch events go to the sink.
   * Bytes arriving after close are ignored.
   *
   * @throws ProtocolError when the stream breaks the protocol (a payload over
   *   4096 bytes); the connection is closed first, as xenstored kills it.
   */
  receive(bytes: Uint8Array): void {
    this.onBytes(this.state, bytes);
  }

  /**
   * Sets where encoded replies and watch events go (replacing the `send` given
   * to `connect`); messages produced while there was no sink are delivered now,
   * in order.
   */
  setSink(send: (msg: Uint8Array) => void): void {
    this.state.sink = send;
    const backlog = this.state.backlog;
    this.state.backlog = [];
    for (const m of backlog) send(m);
  }

  /** Closes the connection: its watches are removed and transactions aborted. */
  close(): void {
    this.onClose(this.state);
  }
}

/**
 * The XenStore daemon. One instance holds the whole tree; each domain talks to
 * it through one or more {@link XsConnection}s.
 */
export class Xenstored {
  /** Effective quotas. */
  readonly quota: XenstoredQuota;
  /** Counters. */
  readonly counters: XenstoredCounters = {
    requests: 0, errors: 0, watchEvents: 0, commits: 0, conflicts: 0, protocolErrors: 0,
  };

  private readonly nodes = new Map<string, XsNode>();
  private readonly owners = new Map<number, number>();
  private readonly conns = new Set<ConnState>();
  private readonly introduced = new Set<number>();
  private generation = 0;
  private nextTxId = 1;
  private readonly onIntroduce: XenstoredOptions['onIntroduce'];
  private changeListener: ((paths: readonly string[]) => void) | null = null;
  private readonly onRelease: XenstoredOptions['onRelease'];

  /** Creates a daemon whose tree holds only `/`, owned by dom0 (`n0`). */
  constructor(options: XenstoredOptions = {}) {
    this.quota = Object.freeze({ ...XENSTORED_DEFAULT_QUOTA, ...options.quota });
    this.onIntroduce = options.onIntroduce;
    this.onRelease = options.onRelease;
    this.nodes.set('/', { value: EMPTY, perms: [{ domid: 0, perm: 'n' }], children: [], gen: ++this.generation });
    this.owners.set(0, 1);
  }

  /**
   * Opens a connection for `domid` (0 = dom0, privileged). Several connections
   * per domain are allowed; quotas count them together.
   *
   * @param send receives each encoded reply and watch event (one message per
   *   call). May be omitted and set later with {@link XsConnection.setSink}; what
   *   is produced before then is kept.
   * @throws InvariantError when `domid` is not in 0..65535.
   */
  connect(domid: number, send?: (msg: Uint8Array) => void): XsConnection {
    invariant(Number.isInteger(domid) && domid >= 0 && domid <= 0xffff, `connect: bad domid ${domid}`);
    const st: ConnState = {
      domid, decoder: new MessageDecoder(), watches: [], transactions: new Map(),
      sink: send, backlog: [], closed: false,
    };
    this.conns.add(st);
    return new XsConnection(st, (s, b) => this.receiveBytes(s, b), (s) => this.closeConn(s));
  }

  /**
   * Introduces a domain: creates `/local/domain/<domid>` (and its parents, owned
   * by dom0 with `n0`) owned by `domid` with perms `n<domid>` if missing, marks
   * it introduced and fires `@introduceDomain`.
   * @throws InvariantError when `domid` is not below DOMID_FIRST_RESERVED.
   */
  introduce(domid: number): void {
    invariant(Number.isInteger(domid) && domid >= 0 && domid < DOMID_FIRST_RESERVED, `introduce: bad domid ${domid}`);
    const ov = new Overlay(this.nodes, this.owners);
    const path = domainPath(domid);
    const ctx: TreeCtx = { domid: 0, priv: true, ov };
    if (!ov.get(path)) {
      this.create(ctx, path, EMPTY);
      const node = ov.get(path)!;
      ov.put(path, { ...node, perms: [{ domid, perm: 'n' }] });
      ov.changes.push({ path, exact: false, perms: [[{ domid, perm: 'n' }]] });
    }
    this.introduced.add(domid);
    this.fire(this.apply(ov));
    this.fireSpecial('@introduceDomain');
  }

  /**
   * Releases a domain: closes its connections (removing their watches and
   * aborting their transactions), forgets that it was introduced and fires
   * `@releaseDomain`. Its nodes stay: removing `/local/domain/<domid>` is the
   * toolstack's job, as with libxl.
   * @throws InvariantError for dom0 or a domid out of range.
   */
  release(domid: number): void {
    invariant(Number.isInteger(domid) && domid > 0 && domid <= 0xffff, `release: bad domid ${domid}`);
    for (const st of [...this.conns]) if (st.domid === domid) this.closeConn(st);
    this.introduced.delete(domid);
    this.fireSpecial('@releaseDomain');
  }

  /** True when `domid` was introduced and not released since. */
  isIntroduced(domid: number): boolean {
    return this.introduced.has(domid);
  }

  /**
   * Calls `fn` synchronously with the absolute paths (each once) of every committed
   * change (a write, a removal, a permission change; a transaction's at its commit), before any
   * watch event is sent, so {@link inspect} gives each path's value as committed; null
   * removes the listener. A listener that throws is ignored.
   */
  setChangeListener(fn: ((paths: readonly string[]) => void) | null): void {
    this.changeListener = fn;
  }

  /** A snapshot of the node at absolute `path`, or `undefined` (no permission check). */
  inspect(path: string): XsNodeInfo | undefined {
    const n = this.nodes.get(path);
    if (!n) return undefined;
    return { value: n.value.slice(), perms: n.perms, children: n.children };
  }

  /** Nodes owned by `domid` (what the node quota counts). */
  nodeCount(domid: number): number {
    return this.owners.get(domid) ?? 0;
  }

  /** Live connections (all domains). */
  get connectionCount(): number {
    return this.conns.size;
  }

  // ---- connections --------------------------------------------------------

  private receiveBytes(st: ConnState, bytes: Uint8Array): void {
    if (st.closed) return;
    let msgs: XsMessage[];
    try {
      msgs = st.decoder.push(bytes);
    } catch (e) {
      if (e instanceof ProtocolError) {
        this.counters.protocolErrors++;
        this.closeConn(st);
      }
      throw e;
    }
    for (const m of msgs) {
      if (st.closed) break;
      this.handle(st, m);
    }
  }

  private closeConn(st: ConnState): void {
    if (st.closed) return;
    st.closed = true;
    st.watches.length = 0;
    st.transactions.clear();
    st.backlog = [];
    this.conns.delete(st);
  }

  private emit(st: ConnState, msg: XsMessage): void {
    if (st.closed) return;
    const bytes = encodeMessage(msg);
    if (st.sink) st.sink(bytes);
    else st.backlog.push(bytes);
  }

  // ---- request dispatch ---------------------------------------------------

  private handle(st: ConnState, msg: XsMessage): void {
    this.counters.requests++;
    const reply = (payload: Uint8Array) => this.emit(st, { type: msg.type, reqId: msg.reqId, txId: msg.txId, payload });
    const priv = st.domid === 0;
    let changes: Change[] = [];
    let after: (() => void) | undefined;
    try {
      let tx: Transaction | undefined;
      if (msg.txId !== 0 && TX_TYPES.has(msg.type)) {
        tx = st.transactions.get(msg.txId);
        if (!tx) fail('ENOENT');
      }
      const ov = new Overlay(this.nodes, this.owners, tx?.overlay);
      const ctx: Ctx = { st, domid: st.domid, priv, ov, tx };
      const result = this.dispatch(ctx, msg);
      if (result.payload.byteLength > XENSTORE_PAYLOAD_MAX) fail('E2BIG');
      if (tx && msg.type !== T.TRANSACTION_END) {
        if (!priv && ov.touched() > this.quota.transactionNodes) fail(QUOTA_ERRNO.transactionNodes);
        if (ov.writes.size > 0) ov.mergeIntoParent();
      } else if (ov.writes.size > 0) {
        changes = this.apply(ov);
      }
      changes.push(...result.changes);
      after = result.after;
      reply(result.payload);
    } catch (e) {
      if (!(e instanceof XsOpError)) throw e;
      this.counters.errors++;
      this.emit(st, { type: T.ERROR, reqId: msg.reqId, txId: msg.txId, payload: nulTerminated(e.errno) });
      return;
    }
    this.fire(changes);
    after?.();
  }

  /**
   * Runs one request against `ctx.ov`. Returns the reply payload, changes of a
   * committed transaction (to fire after the reply) and an action to run after
   * the reply (a watch's first event).
   */
  private dispatch(ctx: Ctx, msg: XsMessage): { payload: Uint8Array; changes: Change[]; after?: () => void } {
    const none: Change[] = [];
    switch (msg.type) {
      case T.READ:
        return { payload: this.readable(ctx, this.path(ctx, oneArg(msg.payload))).value, changes: none };
      case T.WRITE:
        this.doWrite(ctx, msg.payload);
        return { payload: OK, changes: none };
      case T.MKDIR:
        this.doMkdir(ctx, this.path(ctx, oneArg(msg.payload)));
        return { payload: OK, changes: none };
      case T.RM:
        this.doRm(ctx, this.path(ctx, oneArg(msg.payload)));
        return { payload: OK, changes: none };
      case T.DIRECTORY:
        return { payload: nulTerminated(...this.readable(ctx, this.path(ctx, oneArg(msg.payload))).children), changes: none };
      case T.GET_PERMS:
        return { payload: nulTerminated(...this.readable(ctx, this.path(ctx, oneArg(msg.payload))).perms.map(formatPerm)), changes: none };
      case T.SET_PERMS:
        this.doSetPerms(ctx, msg.payload);
        return { payload: OK, changes: none };
      case T.WATCH:
        return { payload: OK, changes: none, after: this.doWatch(ctx, msg.payload) };
      case T.UNWATCH:
        this.doUnwatch(ctx, msg.payload);
        return { payload: OK, changes: none };
      case T.TRANSACTION_START:
        return { payload: nulTerminated(String(this.doTransactionStart(ctx, msg.txId))), changes: none };
      case T.TRANSACTION_END:
        return { payload: OK, changes: this.doTransactionEnd(ctx, oneArg(msg.payload)) };
      case T.GET_DOMAIN_PATH:
        return { payload: nulTerminated(domainPath(parseDomid(oneArg(msg.payload)))), changes: none };
      case T.INTRODUCE:
        return { payload: OK, changes: none, after: this.doIntroduce(ctx, msg.payload) };
      case T.RELEASE:
        return { payload: OK, changes: none, after: this.doRelease(ctx, oneArg(msg.payload)) };
      case T.IS_DOMAIN_INTRODUCED:
        if (!ctx.priv) fail('EACCES');
        return { payload: nulTerminated(this.introduced.has(parseDomid(oneArg(msg.payload))) ? 'T' : 'F'), changes: none };
      case T.RESET_WATCHES:
        ctx.st.watches.length = 0;
        ctx.st.transactions.clear();
        return { payload: OK, changes: none };
      case T.WATCH_EVENT:
      case T.ERROR:
        return fail('EINVAL');
      default:
        return fail('ENOSYS');
    }
  }

  // ---- paths and permissions ----------------------------------------------

  /** Canonical absolute path for a request's path argument. */
  private path(ctx: Ctx, p: string): string {
    if (p.length === 0) fail('EINVAL');
    let abs: string;
    if (p[0] === '/') {
      abs = p;
    } else {
      if (p.length > XENSTORE_REL_PATH_MAX) fail('EINVAL');
      abs = `${domainPath(ctx.domid)}/${p}`;
    }
    checkValidPath(abs);
    return abs;
  }

  /**
   * The errno for a missing node: `EACCES` when the nearest existing ancestor
   * does not grant `want` (so a domain cannot probe others' trees), else `ENOENT`.
   */
  private missing(ctx: TreeCtx, path: string, want: 'read' | 'write'): XsErrno {
    for (let p = parentOf(path); p !== undefined; p = parentOf(p)) {
      const n = ctx.ov.get(p);
      if (n) return permOf(ctx.domid, n.perms)[want] ? 'ENOENT' : 'EACCES';
    }
    return 'ENOENT';
  }

  private readable(ctx: TreeCtx, path: string): XsNode {
    const n = ctx.ov.get(path);
    if (!n) fail(this.missing(ctx, path, 'read'));
    if (!permOf(ctx.domid, n.perms).read) fail('EACCES');
    return n;
  }

  /**
   * Creates `path` (missing) with `value`, and any missing parents with empty
   * values. Needs write permission on the nearest existing ancestor. New nodes
   * inherit their parent's perms, but an unprivileged creator becomes the owner.
   */
  private create(ctx: TreeCtx, path: string, value: Uint8Array): void {
    const missing: string[] = [];
    let parentPath = path;
    let parent: XsNode | undefined;
    for (;;) {
      missing.push(parentPath);
      const pp = parentOf(parentPath);
      invariant(pp !== undefined, 'create: the root is missing');
      parentPath = pp;
      parent = ctx.ov.get(pp);
      if (parent) break;
    }
    if (!permOf(ctx.domid, parent.perms).write) fail('EACCES');
    for (let i = missing.length - 1; i >= 0; i--) {
      const p = missing[i];
      const perms: readonly XsPerm[] = ctx.priv
        ? parent.perms
        : [{ domid: ctx.domid, perm: parent.perms[0].perm }, ...parent.perms.slice(1)];
      if (!ctx.priv && ctx.ov.owned(ctx.domid) >= this.quota.nodes) fail(QUOTA_ERRNO.nodes);
      ctx.ov.put(parentPath, { ...parent, children: [...parent.children, baseName(p)] });
      const node: XsNode = { value: i === 0 ? value : EMPTY, perms, children: [], gen: 0 };
      ctx.ov.put(p, node);
      parent = node;
      parentPath = p;
    }
  }

  // ---- operations ---------------------------------------------------------

  private doWrite(ctx: Ctx, payload: Uint8Array): void {
    const split = splitFirstNul(payload);
    if (!split) fail('EINVAL');
    const path = this.path(ctx, split[0]);
    const value = split[1];
    if (!ctx.priv && value.byteLength > this.quota.entrySize) fail(QUOTA_ERRNO.entrySize);
    const node = ctx.ov.get(path);
    if (node) {
      if (!permOf(ctx.domid, node.perms).write) fail('EACCES');
      ctx.ov.put(path, { ...node, value });
    } else {
      this.create(ctx, path, value);
    }
    ctx.ov.changes.push({ path, exact: false, perms: [ctx.ov.get(path)!.perms] });
  }

  private doMkdir(ctx: Ctx, path: string): void {
    const node = ctx.ov.get(path);
    if (node) {
      if (!permOf(ctx.domid, node.perms).write) fail('EACCES');
      return;
    }
    this.create(ctx, path, EMPTY);
    ctx.ov.changes.push({ path, exact: false, perms: [ctx.ov.get(path)!.perms] });
  }

  private doRm(ctx: Ctx, path: string): void {
    const node = ctx.ov.get(path);
    if (!node) {
      // As C xenstored: removing a missing node is fine if its parent exists.
      const e = this.missing(ctx, path, 'write');
      if (e === 'EACCES') fail(e);
      const pp = parentOf(path);
      if (pp !== undefined && ctx.ov.get(pp)) return;
      fail('ENOENT');
    }
    if (path === '/') fail('EINVAL');
    if (!permOf(ctx.domid, node.perms).write) fail('EACCES');
    const stack = node.children.map((c) => childPath(path, c));
    while (stack.length > 0) {
      const p = stack.pop()!;
      const n = ctx.ov.get(p);
      invariant(n !== undefined, `rm: child ${p} is missing`);
      for (const c of n.children) stack.push(childPath(p, c));
      ctx.ov.remove(p);
      ctx.ov.changes.push({ path: p, exact: true, perms: [n.perms] });
    }
    ctx.ov.remove(path);
    const pp = parentOf(path)!;
    const parent = ctx.ov.get(pp);
    invariant(parent !== undefined, `rm: parent ${pp} is missing`);
    const name = baseName(path);
    ctx.ov.put(pp, { ...parent, children: parent.children.filter((c) => c !== name) });
    ctx.ov.changes.push({ path, exact: false, perms: [node.perms] });
  }

  private doSetPerms(ctx: Ctx, payload: Uint8Array): void {
    const parts = splitNul(payload);
    if (parts.length < 2) fail('EINVAL');
    const path = this.path(ctx, parts[0]);
    const perms: XsPerm[] = [];
    for (const s of parts.slice(1)) {
      const p = parsePerm(s);
      if (!p) fail('EINVAL');
      perms.push(p);
    }
    if (!ctx.priv && perms.length > this.quota.permsPerNode) fail(QUOTA_ERRNO.permsPerNode);
    const node = ctx.ov.get(path);
    if (!node) fail(this.missing(ctx, path, 'write'));
    if (!permOf(ctx.domid, node.perms).owner) fail('EACCES');
    if (!ctx.priv && perms[0].domid !== node.perms[0].domid) fail('EPERM');
    ctx.ov.put(path, { ...node, perms });
    ctx.ov.changes.push({ path, exact: false, perms: [node.perms, perms] });
  }

  /** Registers a watch; returns the action that sends its first event. */
  private doWatch(ctx: Ctx, payload: Uint8Array): () => void {
    const parts = splitNul(payload);
    if (parts.length !== 2) fail('EINVAL');
    const [given, token] = parts;
    let path: string;
    let relative = false;
    if (given.startsWith('@')) {
      if (given.length > XENSTORE_REL_PATH_MAX || !PATH_CHARS.test(given)) fail('EINVAL');
      path = given;
    } else {
      path = this.path(ctx, given);
      relative = !given.startsWith('/');
    }
    const st = ctx.st;
    if (st.watches.some((w) => w.path === path && w.token === token)) fail('EEXIST');
    if (!ctx.priv && this.countWatches(ctx.domid) >= this.quota.watches) fail(QUOTA_ERRNO.watches);
    st.watches.push({ path, token, relative, conn: st });
    // Fired once up front (C xenstored: "simplifies clients and restart").
    return () => this.sendEvent(st, given, token);
  }

  private doUnwatch(ctx: Ctx, payload: Uint8Array): void {
    const parts = splitNul(payload);
    if (parts.length !== 2) fail('EINVAL');
    const [given, token] = parts;
    const path = given.startsWith('@') ? given : this.path(ctx, given);
    const i = ctx.st.watches.findIndex((w) => w.path === path && w.token === token);
    if (i < 0) fail('ENOENT');
    ctx.st.watches.splice(i, 1);
  }

  private doTransactionStart(ctx: Ctx, txId: number): number {
    if (txId !== 0) fail('EBUSY');
    if (!ctx.priv && this.countTransactions(ctx.domid) >= this.quota.transactions) fail(QUOTA_ERRNO.transactions);
    let id = this.nextTxId;
    while (id === 0 || ctx.st.transactions.has(id)) id = (id + 1) >>> 0;
    this.nextTxId = (id + 1) >>> 0;
    ctx.st.transactions.set(id, { id, overlay: new Overlay(this.nodes, this.owners) });
    return id;
  }

  /** Ends `ctx.tx`; returns the changes to fire (after the reply) on commit. */
  private doTransactionEnd(ctx: Ctx, arg: string): Change[] {
    const tx = ctx.tx;
    if (!tx) fail('ENOENT');
    if (arg !== 'T' && arg !== 'F') fail('EINVAL');
    ctx.st.transactions.delete(tx.id);
    if (arg === 'F') return [];
    if (tx.overlay.conflicts()) {
      this.counters.conflicts++;
      fail('EAGAIN');
    }
    this.counters.commits++;
    return this.apply(tx.overlay);
  }

  private doIntroduce(ctx: Ctx, payload: Uint8Array): () => void {
    if (!ctx.priv) fail('EACCES');
    const parts = splitNul(payload);
    if (parts.length < 3) fail('EINVAL');
    const domid = parseDomid(parts[0]);
    const mfn = parseU53(parts[1]);
    const port = parseU53(parts[2]);
    if (domid === 0 || domid >= DOMID_FIRST_RESERVED || port > 0xffff_ffff) fail('EINVAL');
    return () => {
      this.onIntroduce?.(domid, mfn, port);
      this.introduce(domid);
    };
  }

  private doRelease(ctx: Ctx, arg: string): () => void {
    if (!ctx.priv) fail('EACCES');
    const domid = parseDomid(arg);
    if (domid === 0) fail('EINVAL');
    if (!this.introduced.has(domid)) fail('ENOENT');
    return () => {
      this.release(domid);
      this.onRelease?.(domid);
    };
  }

  // ---- store and watches --------------------------------------------------

  /** Applies a top-level overlay to the store; returns its changes. */
  private apply(ov: Overlay): Change[] {
    for (const [path, node] of ov.writes) {
      const old = this.nodes.get(path);
      if (old) this.addOwned(old.perms[0].domid, -1);
      if (node === null) {
        this.nodes.delete(path);
      } else {
        this.nodes.set(path, { ...node, gen: ++this.generation });
        this.addOwned(node.perms[0].domid, 1);
      }
    }
    return ov.changes;
  }

  private addOwned(domid: number, n: number): void {
    const v = (this.owners.get(domid) ?? 0) + n;
    if (v === 0) this.owners.delete(domid);
    else this.owners.set(domid, v);
  }

  private countWatches(domid: number): number {
    let n = 0;
    for (const st of this.conns) if (st.domid === domid) n += st.watches.length;
    return n;
  }

  private countTransactions(domid: number): number {
    let n = 0;
    for (const st of this.conns) if (st.domid === domid) n += st.transactions.size;
    return n;
  }

  /**
   * Sends one event per (watch, event path) for the changes: a watch matches a
   * change at or below its path (exact changes only at its path), when the
   * watcher may read the node under one of the change's permission lists.
   */
  private fire(changes: readonly Change[]): void {
    if (changes.length === 0) return;
    if (this.changeListener) {
      try {
        this.changeListener([...new Set(changes.map((c) => c.path))]);
      } catch {
        /* a listener's fault is its own: the store goes on */
      }
    }
    for (const st of [...this.conns]) {
      const sent = new Set<string>();
      for (const w of [...st.watches]) {
        if (w.path.startsWith('@')) continue;
        for (const ch of changes) {
          if (ch.exact ? ch.path !== w.path : !isUnder(ch.path, w.path)) continue;
          if (!ch.perms.some((p) => permOf(st.domid, p).read)) continue;
          let epath = ch.path;
          if (w.relative) {
            const prefix = `${domainPath(st.domid)}/`;
            if (epath.startsWith(prefix)) epath = epath.slice(prefix.length);
          }
          const key = `${epath}\0${w.token}`;
          if (sent.has(key)) continue;
          sent.add(key);
          this.sendEvent(st, epath, w.token);
        }
      }
    }
  }

  private fireSpecial(name: string): void {
    for (const st of [...this.conns]) {
      for (const w of [...st.watches]) if (w.path === name) this.sendEvent(st, name, w.token);
    }
  }

  private sendEvent(st: ConnState, path: string, token: string): void {
    if (st.closed) return;
    this.counters.watchEvents++;
    this.emit(st, { type: T.WATCH_EVENT, reqId: 0, txId: 0, payload: nulTerminated(path, token) });
  }
}
