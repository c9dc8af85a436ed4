/**
 * `pvio/testing`: the other side of a driver, in process, so a driver author can
 * unit-test one end without domains, workers or a hypervisor (what rust-vmm's
 * virtio-queue mocks offer device authors).
 *
 * - {@link MockMachine}: two mock domains' memory, grant tables and event channels
 *   over SharedArrayBuffer pages — grants, maps, unmaps, grant copies and
 *   notifications behave as the hypervisor's (statuses included: a ref never
 *   granted, granted to someone else, read-only for a writable map or a copy into
 *   it, all refused with Xen's `GNTST_*`), and every call is counted.
 * - {@link MockFrontend}: a frontend's end of a shared ring (it initialises it,
 *   as frontends do), to feed a backend raw requests and read its raw responses.
 * - {@link MockBackend}: a backend's end of a frontend's ring, answering each
 *   request with a function, to drive a frontend.
 *
 * Pass a mock domain's `gnttab`, `evtchn` and `memory` where a driver's data path
 * takes a `GrantTable`, `EventChannels` and `GuestMemory` (they provide the methods
 * a data path calls; `asGrantTable()` and friends give them those types).
 */
import { BackRing, FrontRing } from '../rings/ring.ts';
import { GNTST, PAGE_SIZE, type EvtchnPort, type GrantHandle, type GrantRef } from '../hypervisor/abi.ts';
import type { CopyRequest, CopySide, GrantTable, MapRequest, MapResult } from '../grant-table/gnttab.ts';
import type { EventChannels } from '../event-channel/evtchn.ts';
import type { GuestExtent, GuestMemory, GuestPage } from '../hypervisor/guest-memory.ts';

/** One grant entry of a mock domain. */
interface MockGrant {
  readonly to: number;
  readonly mfn: number;
  readonly readonly: boolean;
  maps: number;
}

/** A mock domain: its pages, its grant table, its event channels. */
export class MockDomain {
  /** Calls made, by kind. */
  readonly counters = { grants: 0, endAccess: 0, maps: 0, unmaps: 0, copies: 0, copyOps: 0, notifications: 0, events: 0 };
  private readonly grants = new Map<number, MockGrant>();
  private nextRef = 8; // refs 0..7 are reserved, as in Xen
  private readonly handles = new Map<number, { domid: number; ref: number }>();
  private nextHandle = 1;
  private readonly handlers = new Map<number, (port: EvtchnPort) => void>();
  /** Ports of this domain → the peer's port they are bound to. */
  readonly bindings = new Map<number, { domid: number; port: number }>();

  constructor(readonly domid: number, private readonly machine: MockMachine) {}

  /** The domain's memory: pages and extents of SharedArrayBuffers, numbered machine-wide. */
  readonly memory = {
    allocPage: (): GuestPage => {
      const e = this.machine.alloc(0);
      return { mfn: e.mfn, bytes: e.bytes, view: new DataView(e.bytes.buffer, e.bytes.byteOffset, PAGE_SIZE) };
    },
    allocPages: (n: number): GuestPage[] => Array.from({ length: n }, () => this.memory.allocPage()),
    allocExtent: (order: number): GuestExtent => this.machine.alloc(order),
    freePage: (_pg: GuestPage): void => undefined,
    release: (_mfn: number, _order: number): boolean => true,
  };

  /** The grant table: this domain's grants (granting side) and its map/copy calls (mapping side). */
  readonly gnttab = {
    grantAccess: (domid: number, mfn: number, readonly: boolean): GrantRef => {
      this.counters.grants++;
      const ref = this.nextRef++;
      this.grants.set(ref, { to: domid, mfn, readonly, maps: 0 });
      return ref as GrantRef;
    },
    endAccess: (ref: GrantRef): boolean => {
      this.counters.endAccess++;
      const g = this.grants.get(ref);
      if (!g) return true;
      if (g.maps > 0) return false;
      this.grants.delete(ref);
      return true;
    },
    map: (reqs: readonly MapRequest[]): MapResult[] => reqs.map((r) => {
      this.counters.maps++;
      const g = this.machine.domain(r.domid)?.grantFor(r.ref, this.domid, !r.readonly) ?? GNTST.bad_domain;
      if (typeof g === 'number') return { status: g, handle: 0 as GrantHandle, mfn: 0, page: null };
      g.maps++;
      const handle = this.nextHandle++;
      this.handles.set(handle, { domid: r.domid, ref: r.ref });
      return { status: GNTST.okay, handle: handle as GrantHandle, mfn: g.mfn, page: this.machine.page(g.mfn) };
    }),
    unmap: (handles: readonly GrantHandle[]): number[] => handles.map((h) => {
      this.counters.unmaps++;
      const m = this.handles.get(h);
      if (!m) return GNTST.bad_handle;
      this.handles.delete(h);
      const g = this.machine.domain(m.domid)?.grants.get(m.ref);
      if (g) g.maps--;
      return GNTST.okay;
    }),
    copy: (ops: readonly CopyRequest[]): number[] => {
      this.counters.copies++;
      return ops.map((op) => {
        this.counters.copyOps++;
        const src = this.side(op.source, false);
        const dst = this.side(op.dest, true);
        if (typeof src === 'number') return src;
        if (typeof dst === 'number') return dst;
        if (op.len < 0 || src.offset + op.len > PAGE_SIZE || dst.offset + op.len > PAGE_SIZE) return GNTST.bad_copy_arg;
        dst.page.set(src.page.subarray(src.offset, src.offset + op.len), dst.offset);
        return GNTST.okay;
      });
    },
  };

  /** Event channels: an unbound port for a peer, binding to one, notify, handlers. */
  readonly evtchn = {
    allocUnbound: (remoteDom: number): EvtchnPort => this.machine.allocUnbound(this, remoteDom),
    bindInterdomain: (remoteDom: number, remotePort: number): EvtchnPort => this.machine.bind(this, remoteDom, remotePort),
    notify: (port: EvtchnPort): void => {
      this.counters.notifications++;
      const b = this.bindings.get(port);
      if (b) this.machine.deliver(b.domid, b.port);
    },
    on: (port: EvtchnPort, fn: (port: EvtchnPort) => void): void => void this.handlers.set(port, fn),
    off: (port: EvtchnPort): void => void this.handlers.delete(port),
    close: (port: EvtchnPort): void => void this.bindings.delete(port),
  };

  /** Runs the handler of `port` (an event arrived). */
  deliverLocal(port: number): void {
    this.counters.events++;
    this.handlers.get(port)?.(port as EvtchnPort);
  }

  /** The grant `ref` of this domain for `mapper`, or the GNTST status refusing it. */
  grantFor(ref: number, mapper: number, write: boolean): MockGrant | number {
    const g = this.grants.get(ref);
    if (!g) return GNTST.bad_gntref;
    if (g.to !== mapper) return GNTST.permission_denied;
    if (write && g.readonly) return GNTST.permission_denied;
    return g;
  }

  private side(s: CopySide, write: boolean): { page: Uint8Array; offset: number } | number {
    if ('ref' in s) {
      const g = this.machine.domain(s.domid)?.grantFor(s.ref, this.domid, write);
      if (g === undefined) return GNTST.bad_domain;
      if (typeof g === 'number') return g;
      return { page: this.machine.page(g.mfn), offset: s.offset };
    }
    return { page: this.machine.page(s.mfn), offset: s.offset };
  }

  /** This domain's grant table, typed for a driver's data path. */
  asGrantTable(): GrantTable {
    return this.gnttab as unknown as GrantTable;
  }

  /** Its event channels, typed for a driver's data path. */
  asEventChannels(): EventChannels {
    return this.evtchn as unknown as EventChannels;
  }

  /** Its memory, typed for a driver's data path. */
  asMemory(): GuestMemory {
    return this.memory as unknown as GuestMemory;
  }
}

/**
 * Mock domains sharing one frame space: pages are numbered machine-wide, grants of
 * one domain can be mapped or copied by the domain they were granted to, event
 * channels connect ports of two domains (a notification runs the peer's handler at
 * once, synchronously, unless {@link deferEvents} is set).
 */
export class MockMachine {
  private readonly frames = new Map<number, Uint8Array>();
  private nextMfn = 0x1000;
  private readonly domains = new Map<number, MockDomain>();
  private readonly unbound = new Map<string, true>();
  private readonly nextPort = new Map<number, number>();
  private readonly queued: Array<[number, number]> = [];
  /** When true, notifications are queued until {@link runEvents} (to test what a side does between events). */
  deferEvents = false;

  /** The domain `domid`, created on first use. */
  dom(domid: number): MockDomain {
    let d = this.domains.get(domid);
    if (!d) this.domains.set(domid, (d = new MockDomain(domid, this)));
    return d;
  }

  /** @internal */
  domain(domid: number): MockDomain | undefined {
    return this.domains.get(domid);
  }

  /** @internal A new extent of 2^order zeroed pages. */
  alloc(order: number): GuestExtent {
    const pages = 1 << order;
    const sab = new SharedArrayBuffer(pages * PAGE_SIZE);
    const mfn = this.nextMfn;
    this.nextMfn += pages;
    for (let i = 0; i < pages; i++) this.frames.set(mfn + i, new Uint8Array(sab, i * PAGE_SIZE, PAGE_SIZE));
    return { mfn, order, bytes: new Uint8Array(sab) };
  }

  /** @internal The 4096 bytes of frame `mfn`. @throws Error for an unknown frame. */
  page(mfn: number): Uint8Array {
    const p = this.frames.get(mfn);
    if (!p) throw new Error(`mock: no frame ${mfn}`);
    return p;
  }

  /** @internal */
  allocUnbound(d: MockDomain, remote: number): EvtchnPort {
    const port = this.newPort(d.domid);
    this.unbound.set(`${d.domid}:${port}:${remote}`, true);
    return port as EvtchnPort;
  }

  /** @internal */
  bind(d: MockDomain, remoteDom: number, remotePort: number): EvtchnPort {
    const key = `${remoteDom}:${remotePort}:${d.domid}`;
    if (!this.unbound.delete(key)) throw new Error(`mock: dom${remoteDom} port ${remotePort} is not unbound for dom${d.domid}`);
    const port = this.newPort(d.domid);
    d.bindings.set(port, { domid: remoteDom, port: remotePort });
    this.dom(remoteDom).bindings.set(remotePort, { domid: d.domid, port });
    return port as EvtchnPort;
  }

  /** @internal */
  deliver(domid: number, port: number): void {
    if (this.deferEvents) this.queued.push([domid, port]);
    else this.dom(domid).deliverLocal(port);
  }

  /** Runs the notifications queued while {@link deferEvents} was set. @returns how many ran. */
  runEvents(): number {
    let n = 0;
    while (this.queued.length > 0) {
      const [d, p] = this.queued.shift()!;
      this.dom(d).deliverLocal(p);
      n++;
    }
    return n;
  }

  private newPort(domid: number): number {
    const p = (this.nextPort.get(domid) ?? 1);
    this.nextPort.set(domid, p + 1);
    return p;
  }
}

/**
 * A frontend's end of a one-page shared ring of `entrySize`-byte entries, in a mock
 * domain's page granted to the backend's domain: it initialises the ring (as
 * frontends do), writes raw requests, reads raw responses.
 */
export class MockFrontend {
  readonly ring: FrontRing;
  readonly page: GuestPage;
  /** The grant of the ring page, for the backend under test to map. */
  readonly ref: GrantRef;

  constructor(readonly dom: MockDomain, backendDomid: number, entrySize: number) {
    this.page = dom.memory.allocPage();
    this.ring = FrontRing.init(this.page.bytes.subarray(0, PAGE_SIZE), entrySize);
    this.ref = dom.gnttab.grantAccess(backendDomid, this.page.mfn, false);
  }

  /** Queues one request (raw entry bytes) and publishes it. @returns whether the backend asked to be notified. */
  request(entry: Uint8Array): boolean {
    this.ring.produceRequestFrom(entry);
    return this.ring.pushRequestsAndCheckNotify();
  }

  /** Every response published so far, raw (`size` bytes each), consumed. */
  responses(size: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (let n = this.ring.unconsumedResponses(); n > 0; n--) {
      const b = new Uint8Array(size);
      this.ring.consumeResponse(b, size);
      out.push(b);
    }
    return out;
  }
}

/**
 * A backend's end of a frontend's one-page ring (the bytes of a page the frontend
 * under test initialised): answers each request with `answer(request) → response`
 * (raw entries) when {@link serve} runs.
 */
export class MockBackend {
  readonly ring: BackRing;
  /** Requests served. */
  served = 0;

  constructor(ringBytes: Uint8Array, private readonly entrySize: number, private readonly answer: (req: Uint8Array) => Uint8Array) {
    this.ring = BackRing.attach(ringBytes, entrySize);
  }

  /** Answers every request published so far. @returns whether the frontend asked to be notified. */
  serve(): boolean {
    const buf = new Uint8Array(this.entrySize);
    for (let n = this.ring.unconsumedRequests(); n > 0; n--) {
      this.ring.consumeRequest(buf);
      this.ring.produceResponseFrom(this.answer(buf.slice()));
      this.served++;
    }
    return this.ring.pushResponsesAndCheckNotify();
  }
}
