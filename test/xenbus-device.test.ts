// The XenBus bases of the driver kit (xenstore/xenbus-device.ts), exercised by a
// made-up "echo" device written as a layout, a frontend class and a backend class —
// nothing else — in process: a real xenstored, two XenStore clients (dom0 and dom1)
// and pvio/testing's mock domains for the grants and event channels. Checked: the
// state walks of both ends, in order (backend InitWait → Connected → Closing →
// Closed; frontend Initialised → Connected → Closing → Closed), the keys each side
// wrote, requests answered through the ring, a close from the frontend, a detach
// from the backend (requestClose: the frontend closes itself and ends its grants), and
// a frontend that starts before the backend advertised (it waits for InitWait).
import { describe, expect, it } from 'vitest';
import { Xenstored } from '../xenstore/xenstored.ts';
import { connectLocal, type XenbusTransaction } from '../xenstore/client.ts';
import { XenbusBackend, XenbusFrontend, backendDir, frontendDir, type XenbusHost } from '../xenstore/xenbus-device.ts';
import { XenbusState } from '../xenstore/xenbus.ts';
import { BackRing, FrontRing } from '../rings/ring.ts';
import { defineLayout, field } from '../rings/layout.ts';
import { MockMachine, type MockDomain } from '../testing/index.ts';
import { PAGE_SIZE, type EvtchnPort, type GrantHandle, type GrantRef } from '../hypervisor/abi.ts';

/** The made-up device's ring entry: a request { id, value }, answered { id, value × 2 }. */
const ECHO = defineLayout('echo_entry', 'test', 8, { id: field(0, 'u32', 'either'), value: field(4, 'u32', 'either') });

class EchoBackend extends XenbusBackend {
  ring: BackRing | null = null;
  port: EvtchnPort | null = null;
  handle: GrantHandle | null = null;
  constructor(host: XenbusHost, private readonly dom: MockDomain, frontDomid: number, devid: number) {
    super(host, 'echo', frontDomid, devid);
  }
  protected async advertise(tx: XenbusTransaction): Promise<void> {
    await tx.write(`${this.backendDir}/feature-double`, '1');
  }
  protected async connectRings(): Promise<void> {
    const xb = this.host.xenbus;
    const ref = Number(await xb.read(`${this.frontendDir}/ring-ref`)) as GrantRef;
    const evt = Number(await xb.read(`${this.frontendDir}/event-channel`));
    const [m] = this.dom.gnttab.map([{ domid: this.frontDomid, ref, readonly: false }]);
    if (!m.page) throw new Error('ring does not map');
    this.handle = m.handle;
    this.ring = BackRing.attach(m.page.subarray(0, PAGE_SIZE), ECHO.size);
    this.port = this.dom.evtchn.bindInterdomain(this.frontDomid, evt);
    this.dom.evtchn.on(this.port, () => this.serve());
  }
  protected disconnectRings(): void {
    if (this.port !== null) this.dom.evtchn.close(this.port);
    if (this.handle !== null) this.dom.gnttab.unmap([this.handle]);
    this.port = null;
    this.handle = null;
    this.ring = null;
  }
  private serve(): void {
    const r = this.ring!;
    const b = new Uint8Array(ECHO.size);
    const d = new DataView(b.buffer);
    do {
      for (let n = r.unconsumedRequests(); n > 0; n--) {
        r.consumeRequest(b);
        d.setUint32(ECHO.fields.value.offset, d.getUint32(ECHO.fields.value.offset, true) * 2, true);
        r.produceResponseFrom(b);
      }
      if (r.pushResponsesAndCheckNotify()) this.dom.evtchn.notify(this.port!);
    } while (r.finalCheckForRequests()); // re-arm req_event, or the next request is never heard of
  }
}

class EchoFrontend extends XenbusFrontend {
  ring: FrontRing | null = null;
  ref: GrantRef | null = null;
  port: EvtchnPort | null = null;
  doubles = false;
  private waiting = new Map<number, (v: number) => void>();
  private nextId = 1;
  constructor(host: XenbusHost, private readonly dom: MockDomain, devid: number) {
    super(host, 'echo', devid);
  }
  protected async setupRings(tx: XenbusTransaction): Promise<void> {
    const page = this.dom.memory.allocPage();
    this.ring = FrontRing.init(page.bytes.subarray(0, PAGE_SIZE), ECHO.size);
    this.ref = this.dom.gnttab.grantAccess(this.backendId, page.mfn, false);
    this.port = this.dom.evtchn.allocUnbound(this.backendId);
    this.dom.evtchn.on(this.port, () => this.reap());
    await tx.write(`${this.dir}/ring-ref`, String(this.ref));
    await tx.write(`${this.dir}/event-channel`, String(this.port));
  }
  protected async backendConnected(): Promise<void> {
    this.doubles = (await this.host.xenbus.read(`${this.backendDir}/feature-double`)) === '1';
  }
  protected teardownRings(): void {
    if (this.ref !== null) this.dom.gnttab.endAccess(this.ref);
    this.ref = null;
  }
  echo(value: number): Promise<number> {
    const id = this.nextId++;
    const b = new Uint8Array(ECHO.size);
    new DataView(b.buffer).setUint32(0, id, true);
    new DataView(b.buffer).setUint32(4, value, true);
    this.ring!.produceRequestFrom(b);
    const p = new Promise<number>((r, rej) => {
      this.waiting.set(id, r);
      setTimeout(() => rej(new Error(`echo ${id}: no answer`)), 2000);
    });
    if (this.ring!.pushRequestsAndCheckNotify()) this.dom.evtchn.notify(this.port!);
    return p;
  }
  private reap(): void {
    const b = new Uint8Array(ECHO.size);
    const d = new DataView(b.buffer);
    do {
      for (let n = this.ring!.unconsumedResponses(); n > 0; n--) {
        this.ring!.consumeResponse(b, ECHO.size);
        this.waiting.get(d.getUint32(0, true))?.(d.getUint32(4, true));
      }
    } while (this.ring!.finalCheckForResponses());
  }
}

/** xenstored, the two domains' clients and mock domains; the toolstack's part: both directories, Initialising. */
async function machine(devid: number) {
  const xs = new Xenstored();
  xs.introduce(1);
  const dom0 = connectLocal(xs, 0, { timeoutMs: 2000 });
  const dom1 = connectLocal(xs, 1, { timeoutMs: 2000 });
  const mm = new MockMachine();
  const be = backendDir(0, 'echo', 1, devid);
  const fe = frontendDir(1, 'echo', devid);
  await dom0.transaction(async (tx) => {
    await tx.mkdir(be);
    await tx.setPerms(be, [{ domid: 0, perm: 'n' }, { domid: 1, perm: 'r' }]);
    await tx.mkdir(fe);
    await tx.setPerms(fe, [{ domid: 1, perm: 'n' }, { domid: 0, perm: 'r' }]);
    await tx.write(`${fe}/backend`, be);
    await tx.write(`${fe}/backend-id`, '0');
    await tx.write(`${fe}/state`, String(XenbusState.Initialising));
    await tx.write(`${be}/state`, String(XenbusState.Initialising));
  });
  const back = new EchoBackend({ domid: 0, xenbus: dom0 }, mm.dom(0), 1, devid);
  const front = new EchoFrontend({ domid: 1, xenbus: dom1 }, mm.dom(1), devid);
  return { xs, dom0, dom1, mm, back, front };
}

const eventually = async (f: () => boolean, ms = 2000) => {
  const t = Date.now();
  while (!f()) {
    if (Date.now() - t > ms) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
};

describe('a made-up device from the kit: a layout, a frontend class, a backend class', () => {
  it('connects, answers through the ring, and closes from the frontend, both walks in order', async () => {
    const { back, front, mm } = await machine(7);
    const connecting = front.connect(2000); // the frontend may start first: it waits for InitWait
    await new Promise((r) => setTimeout(r, 20));
    await back.start();
    await connecting;
    expect(front.doubles).toBe(true);
    expect(await Promise.all([front.echo(21), front.echo(1000)])).toEqual([42, 2000]);
    await front.close();
    await eventually(() => back.state === XenbusState.Closed);
    expect(back.history).toEqual([XenbusState.InitWait, XenbusState.Connected, XenbusState.Closing, XenbusState.Closed]);
    expect(front.history).toEqual([XenbusState.Initialised, XenbusState.Connected, XenbusState.Closing, XenbusState.Closed]);
    expect(mm.dom(0).counters.unmaps).toBe(1); // the backend let go of the ring...
    expect(mm.dom(1).counters.endAccess).toBe(1); // ...and the frontend ended its grant after
  });

  it('a detach from the backend (requestClose): the frontend closes itself, then the backend is destroyed', async () => {
    const { back, front, dom0 } = await machine(8);
    await back.start();
    await front.connect(2000);
    expect(await front.echo(5)).toBe(10);
    await back.requestClose();
    await eventually(() => front.isClosed && front.history.at(-1) === XenbusState.Closed);
    await eventually(() => back.state === XenbusState.Closed);
    await back.destroy();
    expect(await dom0.readOptional(`${back.backendDir}/state`)).toBeUndefined();
    expect(front.history).toEqual([XenbusState.Initialised, XenbusState.Connected, XenbusState.Closing, XenbusState.Closed]);
  });
});
