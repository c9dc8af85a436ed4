import { describe, expect, it } from 'vitest';
import { ProtocolError, TimeoutError } from '../rings/errors.ts';
import { XENSTORE_DOMAIN_INTERFACE, XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX } from '../rings/xenstore-ring.ts';
import {
  MessageDecoder,
  XsdSockmsgType as T,
  encodeMessage,
  nulTerminated,
  splitNul,
  type XsMessage,
} from '../xenstore/wire.ts';
import { Xenstored, type XenstoredOptions } from '../xenstore/xenstored.ts';
import {
  XenStoreError,
  XenbusClient,
  XenbusClosedError,
  connectLocal,
  ringServer,
  ringTransport,
} from '../xenstore/client.ts';
import { XenbusState, readState, switchState, waitForState } from '../xenstore/xenbus.ts';

const tick = () => new Promise<void>((r) => setImmediate(r));

function setup(options?: XenstoredOptions) {
  const xs = new Xenstored(options);
  xs.introduce(1);
  xs.introduce(2);
  const opts = { timeoutMs: 2000 };
  return { xs, dom0: connectLocal(xs, 0, opts), d1: connectLocal(xs, 1, opts), d2: connectLocal(xs, 2, opts) };
}

/** A raw connection: send any message, collect decoded replies. */
function raw(xs: Xenstored, domid: number) {
  const replies: XsMessage[] = [];
  const dec = new MessageDecoder();
  const conn = xs.connect(domid, (m) => replies.push(...dec.push(m)));
  let reqId = 100;
  return {
    conn,
    replies,
    /** Sends one request and returns the replies it produced (synchronously). */
    req(type: number, payload: Uint8Array, txId = 0): XsMessage[] {
      const before = replies.length;
      conn.receive(encodeMessage({ type, reqId: ++reqId, txId, payload }));
      return replies.slice(before);
    },
  };
}

function errnoOf(m: XsMessage): string | undefined {
  return m.type === T.ERROR ? splitNul(m.payload)[0] : undefined;
}

const xsErr = (errno: string) => ({ errno, code: 'PVIO_ERR_XENSTORE' });

describe('xenstored operations', () => {
  it('writes and reads, creating parents; relative paths resolve under /local/domain/<domid>', async () => {
    const { dom0, d1 } = setup();
    await d1.write('data/a/b', 'hello');
    expect(await d1.read('data/a/b')).toBe('hello');
    expect(await dom0.read('/local/domain/1/data/a/b')).toBe('hello');
    expect(await dom0.read('/local/domain/1/data/a')).toBe('');
    expect(await dom0.directory('/local/domain/1/data')).toEqual(['a']);
    await d1.write('data/a/c', new Uint8Array([1, 0, 2]));
    expect(await d1.readBytes('data/a/c')).toEqual(new Uint8Array([1, 0, 2]));
    expect(await d1.directory('data/a')).toEqual(['b', 'c']);
    expect(await d1.getDomainPath(1)).toBe('/local/domain/1');
    expect(await d1.getDomainPath(7)).toBe('/local/domain/7');
  });

  it('the change listener sees each committed change at once, a transaction at its commit, with its committed value', async () => {
    const { xs, dom0 } = setup();
    const seen: Array<[string, string | undefined]> = [];
    const value = (p: string) => {
      const n = xs.inspect(p);
      return n ? new TextDecoder().decode(n.value) : undefined;
    };
    xs.setChangeListener((paths) => {
      for (const p of paths) if (p.endsWith('/state')) seen.push([p, value(p)]);
    });
    await dom0.write('/local/domain/1/device/vbd/768/state', '1');
    await dom0.write('/local/domain/1/device/vbd/768/state', '3');
    await dom0.transaction(async (tx) => {
      await tx.write('/local/domain/1/device/vbd/768/state', '5');
      await tx.write('/local/domain/1/device/vbd/768/state', '4');
      expect(seen).toHaveLength(2); // nothing until the commit
    });
    await dom0.rm('/local/domain/1/device/vbd');
    xs.setChangeListener(null);
    await dom0.write('/local/domain/1/device/vbd/768/state', '6');
    const p = '/local/domain/1/device/vbd/768/state';
    expect(seen).toEqual([[p, '1'], [p, '3'], [p, '4'], [p, undefined]]);
  });

  it('reports ENOENT, readOptional gives undefined, mkdir is idempotent', async () => {
    const { d1 } = setup();
    await expect(d1.read('nope')).rejects.toMatchObject(xsErr('ENOENT'));
    await expect(d1.read('nope')).rejects.toBeInstanceOf(XenStoreError);
    expect(await d1.readOptional('nope')).toBeUndefined();
    await d1.mkdir('dir/sub');
    await d1.mkdir('dir/sub');
    expect(await d1.read('dir/sub')).toBe('');
    expect(await d1.directory('dir/sub')).toEqual([]);
  });

  it('removes recursively; rm of a missing node is fine if its parent exists', async () => {
    const { d1 } = setup();
    await d1.write('t/a/b/c', '1');
    await d1.write('t/a/x', '2');
    await d1.write('t/keep', '3');
    await d1.rm('t/a');
    expect(await d1.directory('t')).toEqual(['keep']);
    await expect(d1.read('t/a/b/c')).rejects.toMatchObject(xsErr('ENOENT'));
    await d1.rm('t/missing');
    await expect(d1.rm('t/missing/deeper')).rejects.toMatchObject(xsErr('ENOENT'));
  });

  it('validates paths (EINVAL) and refuses rm of /', async () => {
    const { dom0, d1 } = setup();
    for (const p of ['/a//b', '/a/', 'has space', 'bad!', '', '/' + 'x'.repeat(3072), 'y'.repeat(2049)]) {
      await expect(d1.write(p, 'v')).rejects.toMatchObject(xsErr('EINVAL'));
    }
    await d1.write('ok-_@chars/A9', 'v');
    await expect(dom0.rm('/')).rejects.toMatchObject(xsErr('EINVAL'));
  });

  it('answers unknown types with ENOSYS and malformed payloads with EINVAL', () => {
    const { xs } = setup();
    const r = raw(xs, 1);
    expect(errnoOf(r.req(99, nulTerminated('x'))[0])).toBe('ENOSYS');
    expect(errnoOf(r.req(T.SET_QUOTA, nulTerminated('x'))[0])).toBe('ENOSYS');
    expect(errnoOf(r.req(T.READ, new TextEncoder().encode('no-nul'))[0])).toBe('EINVAL');
    expect(errnoOf(r.req(T.WRITE, new TextEncoder().encode('no-nul'))[0])).toBe('EINVAL');
    expect(errnoOf(r.req(T.WATCH_EVENT, nulTerminated('a', 'b'))[0])).toBe('EINVAL');
    const ok = r.req(T.WRITE, new Uint8Array([...new TextEncoder().encode('k'), 0, 0x41]));
    expect(ok[0]).toMatchObject({ type: T.WRITE, reqId: r.replies.at(-1)!.reqId });
    expect(splitNul(ok[0].payload)).toEqual(['OK']);
  });

  it('gets and sets permissions', async () => {
    const { dom0, d1 } = setup();
    await d1.write('p', 'v');
    expect(await d1.getPerms('p')).toEqual([{ domid: 1, perm: 'n' }]);
    await d1.setPerms('p', [{ domid: 1, perm: 'r' }, { domid: 2, perm: 'b' }]);
    expect(await dom0.getPerms('/local/domain/1/p')).toEqual([{ domid: 1, perm: 'r' }, { domid: 2, perm: 'b' }]);
    expect(await dom0.getPerms('/')).toEqual([{ domid: 0, perm: 'n' }]);
  });
});

describe('xenstored permissions', () => {
  it('domU 1 cannot read or write domU 2 nodes (EACCES); dom0 can', async () => {
    const { dom0, d1, d2 } = setup();
    await d2.write('secret', 's');
    await expect(d1.read('/local/domain/2/secret')).rejects.toMatchObject(xsErr('EACCES'));
    await expect(d1.read('/local/domain/2/missing')).rejects.toMatchObject(xsErr('EACCES'));
    await expect(d1.write('/local/domain/2/secret', 'x')).rejects.toMatchObject(xsErr('EACCES'));
    await expect(d1.write('/local/domain/2/new/node', 'x')).rejects.toMatchObject(xsErr('EACCES'));
    await expect(d1.rm('/local/domain/2/secret')).rejects.toMatchObject(xsErr('EACCES'));
    await expect(d1.directory('/local/domain/2')).rejects.toMatchObject(xsErr('EACCES'));
    await expect(d1.directory('/local/domain')).rejects.toMatchObject(xsErr('EACCES'));
    await expect(d1.setPerms('/local/domain/2/secret', [{ domid: 1, perm: 'b' }])).rejects.toMatchObject(xsErr('EACCES'));
    expect(await dom0.read('/local/domain/2/secret')).toBe('s');
    await dom0.write('/local/domain/2/secret', 'changed by dom0');
    expect(await d2.read('secret')).toBe('changed by dom0');
  });

  it('nodes are owned by their creator; dom0-created nodes inherit the parent owner', async () => {
    const { xs, dom0, d1 } = setup();
    const before = xs.nodeCount(1);
    await d1.write('mine/x', '1');
    expect(xs.nodeCount(1)).toBe(before + 2);
    await dom0.write('/local/domain/1/device/vbd/768/state', '1');
    expect(await d1.getPerms('device/vbd/768/state')).toEqual([{ domid: 1, perm: 'n' }]);
    await dom0.write('/tool/x', '1');
    expect(await dom0.getPerms('/tool/x')).toEqual([{ domid: 0, perm: 'n' }]);
  });

  it('grants read to another domain; only the owner sets perms; a domU may not give a node away (EPERM)', async () => {
    const { d1, d2 } = setup();
    await d2.write('shared', 'v');
    await d2.setPerms('shared', [{ domid: 2, perm: 'n' }, { domid: 1, perm: 'r' }]);
    expect(await d1.read('/local/domain/2/shared')).toBe('v');
    await expect(d1.write('/local/domain/2/shared', 'x')).rejects.toMatchObject(xsErr('EACCES'));
    await d2.setPerms('shared', [{ domid: 2, perm: 'n' }, { domid: 1, perm: 'b' }]);
    await d1.write('/local/domain/2/shared', 'x');
    await expect(d1.setPerms('/local/domain/2/shared', [{ domid: 1, perm: 'b' }])).rejects.toMatchObject(xsErr('EACCES'));
    await expect(d2.setPerms('shared', [{ domid: 1, perm: 'n' }])).rejects.toMatchObject(xsErr('EPERM'));
  });
});

describe('xenstored quotas', () => {
  it('refuses a value over the 2048-byte default with ENOSPC as C xenstored does; dom0 is exempt', async () => {
    const { dom0, d1 } = setup();
    await d1.write('v', new Uint8Array(2048));
    await expect(d1.write('v', new Uint8Array(2049))).rejects.toMatchObject(xsErr('ENOSPC'));
    await dom0.write('/local/domain/1/big', new Uint8Array(4000));
    expect((await d1.readBytes('big')).length).toBe(4000);
  });

  it('refuses nodes beyond the node quota with ENOSPC, atomically', async () => {
    const { xs, dom0, d1 } = setup({ quota: { nodes: 5 } });
    expect(xs.nodeCount(1)).toBe(1); // /local/domain/1
    await d1.write('a', '1');
    await d1.write('b', '1');
    await expect(d1.write('p/q/r', '1')).rejects.toMatchObject(xsErr('ENOSPC'));
    expect(await d1.readOptional('p')).toBeUndefined();
    expect(xs.nodeCount(1)).toBe(3);
    await d1.write('c', '1');
    await d1.write('d', '1');
    await expect(d1.write('e', '1')).rejects.toMatchObject(xsErr('ENOSPC'));
    await d1.write('a', 'overwrite is fine');
    await d1.rm('a');
    await d1.write('e', '1');
    for (let i = 0; i < 10; i++) await dom0.write(`/tool/n${i}`, '1');
  });

  it('refuses watches beyond the watch quota with E2BIG as C xenstored does', async () => {
    const { dom0, d1 } = setup({ quota: { watches: 2 } });
    await d1.watch('a', () => {});
    const un = await d1.watch('b', () => {});
    await expect(d1.watch('c', () => {})).rejects.toMatchObject(xsErr('E2BIG'));
    await un();
    await d1.watch('c', () => {});
    for (let i = 0; i < 5; i++) await dom0.watch(`/w${i}`, () => {});
  });

  it('refuses transactions beyond the transaction quota with ENOSPC', async () => {
    const { d1 } = setup({ quota: { transactions: 2 } });
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const t1 = d1.transaction(async (tx) => { await tx.write('t1', '1'); await gate; });
    const t2 = d1.transaction(async (tx) => { await tx.write('t2', '1'); await gate; });
    await tick();
    await expect(d1.transaction(async () => {})).rejects.toMatchObject(xsErr('ENOSPC'));
    open();
    await Promise.all([t1, t2]);
    await d1.transaction(async (tx) => tx.write('t3', '1'));
    expect(await d1.read('t1')).toBe('1');
  });

  it('allows configuring the entry size', async () => {
    const { d1 } = setup({ quota: { entrySize: 8 } });
    await d1.write('x', '12345678');
    await expect(d1.write('x', '123456789')).rejects.toMatchObject(xsErr('ENOSPC'));
  });
});

describe('xenstored watches', () => {
  it('fire once at once, then on the node and its descendants, not on siblings', async () => {
    const { dom0, d1 } = setup();
    const ev: string[] = [];
    await d1.watch('/local/domain/1/dev', 'tok', (p, t) => ev.push(`${p} ${t}`));
    await tick();
    expect(ev).toEqual(['/local/domain/1/dev tok']);
    await dom0.write('/local/domain/1/dev/x/y', '1');
    await d1.write('dev', 'v');
    await d1.write('devices', 'not a child');
    await tick();
    expect(ev).toEqual(['/local/domain/1/dev tok', '/local/domain/1/dev/x/y tok', '/local/domain/1/dev tok']);
  });

  it('report relative paths for a relative watch', async () => {
    const { d1 } = setup();
    const ev: string[] = [];
    await d1.watch('device', (p) => ev.push(p));
    await d1.write('device/vif/0/state', '4');
    await tick();
    expect(ev).toEqual(['device', 'device/vif/0/state']);
  });

  it('fire on rm (for the removed node and watches below it) and on permission changes', async () => {
    const { dom0, d1 } = setup();
    await d1.write('a/b/c', '1');
    const top: string[] = [];
    const deep: string[] = [];
    await d1.watch('/local/domain/1/a', (p) => top.push(p));
    await d1.watch('/local/domain/1/a/b/c', (p) => deep.push(p));
    await tick();
    top.length = 0;
    deep.length = 0;
    await d1.setPerms('a', [{ domid: 1, perm: 'r' }]);
    await tick();
    expect(top).toEqual(['/local/domain/1/a']);
    await dom0.rm('/local/domain/1/a');
    await tick();
    expect(top).toEqual(['/local/domain/1/a', '/local/domain/1/a']);
    expect(deep).toEqual(['/local/domain/1/a/b/c']);
  });

  it('stop after unwatch', async () => {
    const { d1 } = setup();
    const ev: string[] = [];
    const un = await d1.watch('w', (p) => ev.push(p));
    await d1.write('w', '1');
    await un();
    await d1.write('w', '2');
    await tick();
    expect(ev).toEqual(['w', 'w']);
  });

  it('are not delivered for nodes the watcher may not read', async () => {
    const { d1, d2 } = setup();
    const ev: string[] = [];
    await d1.watch('/local/domain/2', (p) => ev.push(p));
    await d2.write('private', 'x');
    await tick();
    expect(ev).toEqual(['/local/domain/2']); // only the initial firing
  });

  it('of a transaction fire only on commit, and never on abort', async () => {
    const { dom0, d1 } = setup();
    const ev: string[] = [];
    await dom0.watch('/local/domain/1/txn', (p) => ev.push(p));
    await tick();
    ev.length = 0;
    await d1.transaction(async (tx) => {
      await tx.write('txn/a', '1');
      await tx.write('txn/b', '2');
      await tick();
      expect(ev).toEqual([]);
      expect(await dom0.readOptional('/local/domain/1/txn/a')).toBeUndefined();
      expect(await tx.read('txn/a')).toBe('1');
    });
    await tick();
    expect(ev.sort()).toEqual(['/local/domain/1/txn/a', '/local/domain/1/txn/b']);
    ev.length = 0;
    await expect(d1.transaction(async (tx) => {
      await tx.write('txn/c', '1');
      throw new Error('body failed');
    })).rejects.toThrow('body failed');
    await tick();
    expect(ev).toEqual([]);
    expect(await d1.readOptional('txn/c')).toBeUndefined();
  });

  it('fire @introduceDomain and @releaseDomain; release drops the connection and its watches', async () => {
    const { xs, dom0, d2 } = setup();
    const ev: string[] = [];
    await dom0.watch('@introduceDomain', (p) => ev.push(p));
    await dom0.watch('@releaseDomain', (p) => ev.push(p));
    await d2.watch('x', () => {});
    await tick();
    ev.length = 0;
    xs.introduce(3);
    expect(await dom0.getPerms('/local/domain/3')).toEqual([{ domid: 3, perm: 'n' }]);
    const before = xs.connectionCount;
    xs.release(2);
    await tick();
    expect(ev).toEqual(['@introduceDomain', '@releaseDomain']);
    expect(xs.isIntroduced(2)).toBe(false);
    expect(xs.isIntroduced(3)).toBe(true);
    expect(xs.connectionCount).toBe(before - 1);
    await expect(d2.read('x')).rejects.toBeInstanceOf(XenbusClosedError);
  });

  it('INTRODUCE and RELEASE are dom0-only requests', () => {
    const introduced: number[][] = [];
    const released: number[] = [];
    const xs = new Xenstored({ onIntroduce: (d, m, p) => introduced.push([d, m, p]), onRelease: (d) => released.push(d) });
    const d0 = raw(xs, 0);
    const dU = raw(xs, 4);
    expect(errnoOf(dU.req(T.INTRODUCE, nulTerminated('5', '1234', '7'))[0])).toBe('EACCES');
    expect(d0.req(T.WATCH, nulTerminated('@introduceDomain', 'i')).map((m) => m.type)).toEqual([T.WATCH, T.WATCH_EVENT]);
    const r = d0.req(T.INTRODUCE, nulTerminated('5', '1234', '7'));
    expect(r.map((m) => m.type)).toEqual([T.INTRODUCE, T.WATCH_EVENT]);
    expect(introduced).toEqual([[5, 1234, 7]]);
    expect(xs.inspect('/local/domain/5')?.perms).toEqual([{ domid: 5, perm: 'n' }]);
    expect(splitNul(d0.req(T.IS_DOMAIN_INTRODUCED, nulTerminated('5'))[0].payload)).toEqual(['T']);
    expect(errnoOf(dU.req(T.RELEASE, nulTerminated('5'))[0])).toBe('EACCES');
    expect(d0.req(T.RELEASE, nulTerminated('5'))[0].type).toBe(T.RELEASE);
    expect(released).toEqual([5]);
    expect(errnoOf(d0.req(T.RELEASE, nulTerminated('5'))[0])).toBe('ENOENT');
    expect(errnoOf(d0.req(T.RELEASE, nulTerminated('0'))[0])).toBe('EINVAL');
  });
});

describe('xenstored transactions', () => {
  it('commit with EAGAIN when something read changed, and the client retries the body', async () => {
    const { dom0, d1 } = setup();
    await d1.write('counter', '1');
    let attempts = 0;
    const seen = await d1.transaction(async (tx) => {
      attempts++;
      const v = await tx.read('counter');
      if (attempts === 1) await dom0.write('/local/domain/1/counter', '10');
      await tx.write('counter', String(Number(v) + 1));
      return v;
    });
    expect(attempts).toBe(2);
    expect(seen).toBe('10');
    expect(await d1.read('counter')).toBe('11');
    expect(d1.counters.transactionRetries).toBe(1);
  });

  it('gives up with EAGAIN after the configured attempts', async () => {
    const { xs, dom0 } = setup();
    const d1 = connectLocal(xs, 1, { transactionRetries: 3 });
    let n = 0;
    await expect(d1.transaction(async (tx) => {
      await tx.readOptional('k');
      await dom0.write('/local/domain/1/k', String(++n));
    })).rejects.toMatchObject(xsErr('EAGAIN'));
    expect(n).toBe(3);
  });

  it('conflicts on nodes created meanwhile, not on unrelated ones (raw protocol)', () => {
    const { xs } = setup();
    const r = raw(xs, 1);
    const other = raw(xs, 0);
    const start = () => Number(splitNul(r.req(T.TRANSACTION_START, nulTerminated(''))[0].payload)[0]);
    const end = (id: number, how: 'T' | 'F') => r.req(T.TRANSACTION_END, nulTerminated(how), id)[0];
    let id = start();
    expect(id).toBeGreaterThan(0);
    expect(errnoOf(r.req(T.READ, nulTerminated('fresh'), id)[0])).toBe('ENOENT');
    other.req(T.WRITE, new Uint8Array([...new TextEncoder().encode('/local/domain/1/fresh'), 0, 0x31]));
    expect(errnoOf(end(id, 'T'))).toBe('EAGAIN');
    id = start();
    r.req(T.READ, nulTerminated('fresh'), id);
    other.req(T.WRITE, new Uint8Array([...new TextEncoder().encode('/tool/unrelated'), 0, 0x31]));
    expect(end(id, 'T').type).toBe(T.TRANSACTION_END);
    expect(errnoOf(end(id, 'T'))).toBe('ENOENT'); // already ended
    expect(errnoOf(r.req(T.READ, nulTerminated('fresh'), 999)[0])).toBe('ENOENT');
    id = start();
    expect(errnoOf(r.req(T.TRANSACTION_START, nulTerminated(''), id)[0])).toBe('EBUSY');
    expect(errnoOf(end(id, 'X' as 'T'))).toBe('EINVAL');
    expect(end(id, 'F').type).toBe(T.TRANSACTION_END);
  });
});

describe('xenbus client', () => {
  it('times out with TimeoutError when xenstored never answers', async () => {
    const c = new XenbusClient({ send() {} }, { timeoutMs: 20 });
    await expect(c.read('x')).rejects.toBeInstanceOf(TimeoutError);
    expect(c.counters.timeouts).toBe(1);
    expect(c.pendingCount).toBe(0);
  });

  it('rejects pending operations on close, and later ones at once', async () => {
    const c = new XenbusClient({ send() {} });
    const p = c.read('x');
    c.close();
    await expect(p).rejects.toBeInstanceOf(XenbusClosedError);
    await expect(c.write('x', 'y')).rejects.toMatchObject({ code: 'PVIO_ERR_XENBUS_CLOSED' });
  });

  it('refuses payloads over 4096 bytes before sending (E2BIG)', async () => {
    const sent: Uint8Array[] = [];
    const c = new XenbusClient({ send: (b) => sent.push(b) });
    await expect(c.write('/x', new Uint8Array(4094))).rejects.toMatchObject(xsErr('E2BIG'));
    expect(sent).toHaveLength(0);
    c.close();
  });

  it('matches out-of-order replies by req_id and fails on a hostile stream', async () => {
    const sent: XsMessage[] = [];
    const dec = new MessageDecoder();
    const c = new XenbusClient({ send: (b) => sent.push(...dec.push(b)) });
    const a = c.read('a');
    const b = c.read('b');
    c.receive(encodeMessage({ type: T.READ, reqId: sent[1].reqId, txId: 0, payload: new TextEncoder().encode('B') }));
    c.receive(encodeMessage({ type: T.READ, reqId: sent[0].reqId, txId: 0, payload: new TextEncoder().encode('A') }));
    expect([await a, await b]).toEqual(['A', 'B']);
    const p = c.read('c');
    const bad = new Uint8Array(16);
    new DataView(bad.buffer).setUint32(12, 9999, true);
    c.receive(bad);
    await expect(p).rejects.toBeInstanceOf(XenbusClosedError);
    await expect(p).rejects.toMatchObject({ cause: expect.any(ProtocolError) });
    expect(c.closed).toBe(true);
  });
});

describe('XenbusState', () => {
  it('switches, reads and waits for states through a watch', async () => {
    const { dom0, d1 } = setup();
    const dir = '/local/domain/1/device/vbd/768';
    expect(await readState(d1, dir)).toBe(XenbusState.Unknown);
    await switchState(dom0, dir, XenbusState.Initialising);
    expect(await d1.read(`${dir}/state`)).toBe('1');
    const waiting = waitForState(d1, dir, (s) => s >= XenbusState.Connected, { timeoutMs: 2000 });
    await tick();
    await switchState(dom0, dir, XenbusState.InitWait);
    await tick();
    await switchState(dom0, dir, XenbusState.Connected);
    expect(await waiting).toBe(XenbusState.Connected);
    // Already there: resolves from the watch's first firing.
    expect(await waitForState(d1, dir, (s) => s === XenbusState.Connected, { timeoutMs: 2000 })).toBe(XenbusState.Connected);
    await dom0.write(`${dir}/state`, 'garbage');
    expect(await readState(d1, dir)).toBe(XenbusState.Unknown);
  });

  it('times out with TimeoutError', async () => {
    const { d1 } = setup();
    await switchState(d1, 'device/x', XenbusState.InitWait);
    await expect(waitForState(d1, 'device/x', (s) => s === XenbusState.Closed, { timeoutMs: 30 })).rejects.toBeInstanceOf(TimeoutError);
  });
});

describe('xenbus over a real 4096-byte shared XenStore page', () => {
  function ringPair(domid: number, start = 0xfffffff0) {
    const page = new Uint8Array(new SharedArrayBuffer(4096));
    const dv = new DataView(page.buffer);
    const f = XENSTORE_DOMAIN_INTERFACE.fields;
    for (const k of ['req_cons', 'req_prod', 'rsp_cons', 'rsp_prod'] as const) dv.setUint32(f[k].offset, start, true);
    const xs = new Xenstored();
    xs.introduce(1);
    const notified = { guest: 0, daemon: 0 };
    const server = ringServer(page, xs.connect(domid), () => notified.guest++);
    const transport = ringTransport(page, () => notified.daemon++);
    const client = new XenbusClient(transport, { timeoutMs: 5000 });
    const pump = () => {
      server.pump();
      transport.pump();
    };
    /** Pumps both ends by hand until `p` settles. */
    async function run<R>(p: Promise<R>): Promise<R> {
      let done = false;
      p.then(() => (done = true), () => (done = true));
      for (let i = 0; i < 5000 && !done; i++) {
        pump();
        await tick();
      }
      expect(done).toBe(true);
      return p;
    }
    return { page, dv, xs, server, transport, client, run, notified };
  }

  it('carries requests and replies larger than the 1024-byte rings, across index wrap', async () => {
    const { client, run, notified, transport, server, dv } = ringPair(1);
    const value = Uint8Array.from({ length: 2000 }, (_, i) => (i * 13) & 0xff);
    await run(client.write('data/big', value));
    expect(await run(client.readBytes('data/big'))).toEqual(value);
    expect(transport.counters.bytesOut).toBeGreaterThan(2000);
    expect(server.counters.bytesOut).toBeGreaterThan(2000);
    expect(notified.daemon).toBeGreaterThan(2);
    expect(notified.guest).toBeGreaterThan(2);
    // The indices wrapped past 2^32.
    expect(dv.getUint32(XENSTORE_DOMAIN_INTERFACE.fields.req_prod.offset, true)).toBeLessThan(0x10000);
  });

  it('carries 4000-byte values for dom0 and many requests in flight at once', async () => {
    const { client, run } = ringPair(0);
    const big = new TextEncoder().encode('z'.repeat(4000));
    await run(client.write('/tool/big', big));
    expect((await run(client.read('/tool/big'))).length).toBe(4000);
    const writes = Array.from({ length: 6 }, (_, i) => client.write(`/tool/k${i}`, 'v'.repeat(1500 + i)));
    await run(Promise.all(writes));
    const reads = await run(Promise.all(Array.from({ length: 6 }, (_, i) => client.read(`/tool/k${i}`))));
    expect(reads.map((r) => r.length)).toEqual([1500, 1501, 1502, 1503, 1504, 1505]);
  });

  it('delivers watch events and runs transactions over the ring', async () => {
    const { client, run, xs } = ringPair(1);
    const dom0 = connectLocal(xs, 0);
    const ev: string[] = [];
    await run(client.watch('device', (p) => ev.push(p)));
    await run(dom0.write('/local/domain/1/device/vbd/768/state', '1'));
    await run(client.transaction(async (tx) => {
      await tx.write('device/vbd/768/ring-ref', '8');
      await tx.write('device/vbd/768/event-channel', '5');
    }));
    await run(Promise.resolve());
    expect(ev).toContain('device');
    expect(ev).toContain('device/vbd/768/state');
    expect(ev).toContain('device/vbd/768/ring-ref');
    expect(await run(client.read('device/vbd/768/ring-ref'))).toBe('8');
  });

  it('kills the connection on a payload over 4096 bytes: error field PROTO, guest fails', async () => {
    const { page, dv, server, transport, client, run } = ringPair(1, 0);
    const pending = client.read('x');
    const bad = new Uint8Array(16);
    new DataView(bad.buffer).setUint32(12, 5000, true);
    // A hostile guest writes the bad header straight into the req ring.
    const f = XENSTORE_DOMAIN_INTERFACE.fields;
    const prod = dv.getUint32(f.req_prod.offset, true);
    page.set(bad, f.req.offset + (prod & 1023));
    dv.setUint32(f.req_prod.offset, prod + 16, true);
    await expect(run(pending)).rejects.toBeInstanceOf(XenbusClosedError);
    expect(server.error).toBeInstanceOf(ProtocolError);
    expect(dv.getUint32(f.error.offset, true)).toBe(XENSTORE_ERROR_PROTO);
    expect(transport.error).toBeInstanceOf(ProtocolError);
    server.pump(); // a no-op now, never throws
  });

  it('stops on an impossible ring index: error field RINGIDX', () => {
    const { dv, server } = ringPair(1, 0);
    const f = XENSTORE_DOMAIN_INTERFACE.fields;
    dv.setUint32(f.req_prod.offset, 5000, true);
    server.pump();
    expect(server.error).toBeInstanceOf(ProtocolError);
    expect(dv.getUint32(f.error.offset, true)).toBe(XENSTORE_ERROR_RINGIDX);
  });
});
